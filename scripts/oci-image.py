#!/usr/bin/env python3
"""Writes OCI image layouts without a container engine (`make images`).

    oci-image.py filter --wasm FILE --out DIR [--digest-file FILE]
    oci-image.py token-service --binary FILE --out DIR [--digest-file FILE]
        [--version V] [--revision R] [--source URL] [--ca-certificates FILE]

`filter` is the Wasm image Istio's WasmPlugin pulls (`url: oci://…`), the "compat" variant
Istio's image fetcher reads (istio/istio pkg/wasm/imagefetcher.go, extractOCIStandardImage):
one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, the manifest
annotated `module.wasm.image/variant: compat`. It carries no version or revision, so its
digest is a function of the wasm bytes alone (deploy/istio.yaml pins it).

`token-service` is the release binary at /usr/local/bin/warden-token-service on a
distroless/cc-equivalent base: the shared libraries `ldd` names (copied from this host, which
built the binary), CA certificates at /etc/ssl/certs/ca-certificates.crt (read by
rustls-platform-verifier through rustls-native-certs; SSL_CERT_FILE names it too), the
non-root user 65532 (nonroot) and /tmp.

Reproducible: entries sorted, mtime 0, owner 0:0 (or 65532), no user or group names, gzip
without a file name or time, canonical JSON (sorted keys, no spaces). The same inputs give the
same digest. Prints the manifest digest (`sha256:<hex>`) and writes it to --digest-file.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

NONROOT = 65532
BINARY_PATH = "usr/local/bin/warden-token-service"
CA_PATH = "etc/ssl/certs/ca-certificates.crt"


def fail(msg):
    sys.exit(f"oci-image: {msg}")


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Entry:
    """One tar entry: a regular file (data), a directory (data None) or a symlink (link)."""

    def __init__(self, path, mode, data=None, link=None, owner=0):
        self.path, self.mode, self.data, self.link, self.owner = path, mode, data, link, owner


def tar_bytes(entries):
    """A tar of the entries and their parent directories, sorted by path."""
    by_path = {e.path: e for e in entries}
    for e in entries:
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            by_path.setdefault("/".join(parts[:i]), Entry("/".join(parts[:i]), 0o755))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(by_path):
            e = by_path[path]
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = e.mode, 0
            info.uid = info.gid = e.owner
            info.uname = info.gname = ""
            if e.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(info)
            elif e.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    # filename "" and mtime 0: the gzip header holds neither the name nor the time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


class Layout:
    """An OCI image layout being written to a temporary directory beside `out`."""

    def __init__(self, out):
        self.out = os.path.abspath(out)
        self.tmp = self.out + ".tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(os.path.join(self.tmp, "blobs", "sha256"))

    def blob(self, data, media_type, annotations=None):
        digest = sha256(data)
        with open(os.path.join(self.tmp, "blobs", "sha256", digest[len("sha256:"):]), "wb") as f:
            f.write(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc

    def image(self, config, layers, annotations, ref_name):
        """Writes the layers, config, manifest and index; returns the manifest digest."""
        layer_descs, diff_ids = [], []
        for entries in layers:
            raw = tar_bytes(entries)
            diff_ids.append(sha256(raw))
            layer_descs.append(self.blob(gzip_bytes(raw), LAYER))
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": self.blob(canonical(config), CONFIG),
            "layers": layer_descs,
        }
        if annotations:
            manifest["annotations"] = annotations
        ref = {"org.opencontainers.image.ref.name": ref_name} if ref_name else None
        desc = self.blob(canonical(manifest), MANIFEST, ref)
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc]}
        with open(os.path.join(self.tmp, "index.json"), "wb") as f:
            f.write(canonical(index))
        with open(os.path.join(self.tmp, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))
        shutil.rmtree(self.out, ignore_errors=True)
        os.rename(self.tmp, self.out)
        return desc["digest"]


def read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        fail(f"cannot read {what} {path}: {e.strerror}")


def filter_image(args):
    wasm = read(args.wasm, "the filter wasm")
    if wasm[:4] != b"\0asm":
        fail(f"{args.wasm} is not a Wasm module")
    config = {"architecture": "wasm", "os": "wasip1", "config": {}}
    layers = [[Entry("plugin.wasm", 0o644, wasm)]]
    annotations = {"module.wasm.image/variant": "compat"}
    return Layout(args.out).image(config, layers, annotations, "latest")


def shared_libraries(binary):
    """(path in the image, host file) for every library and the loader `ldd` names."""
    try:
        out = subprocess.run(
            ["ldd", binary], check=False, capture_output=True, text=True
        ).stdout
    except OSError as e:
        fail(f"cannot run ldd: {e.strerror} (it comes with libc-bin)")
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            fail(f"{binary} needs a library this host lacks: {line}")
        if "=>" in line:
            path = line.split("=>", 1)[1].split("(")[0].strip()
        else:
            path = line.split("(")[0].strip()
        if path.startswith("/"):
            libs.append((path.lstrip("/"), path))
    return sorted(set(libs))


def token_service_image(args):
    binary = read(args.binary, "the token service binary")
    if binary[:4] != b"\x7fELF":
        fail(f"{args.binary} is not an ELF executable")
    base = []
    for image_path, host_path in shared_libraries(args.binary):
        # The file itself, not a symlink to it: the image has no other copy to point at.
        mode = 0o755 if os.stat(host_path).st_mode & 0o111 else 0o644
        base.append(Entry(image_path, mode, read(host_path, "shared library")))
    base += [
        Entry(CA_PATH, 0o644, read(args.ca_certificates, "CA certificates (package ca-certificates)")),
        Entry("etc/passwd", 0o644, (
            "root:x:0:0:root:/root:/sbin/nologin\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
            f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n").encode()),
        Entry("etc/group", 0o644, (
            "root:x:0:\nnobody:x:65534:\n" f"nonroot:x:{NONROOT}:\n").encode()),
        Entry("etc/nsswitch.conf", 0o644, b"passwd: files\ngroup: files\nhosts: files dns\n"),
        Entry("home/nonroot", 0o700, owner=NONROOT),
        Entry("tmp", 0o1777),
    ]
    app = [Entry(BINARY_PATH, 0o755, binary)]
    labels = {"org.opencontainers.image.title": "mcp-warden token service",
              "org.opencontainers.image.licenses": "Apache-2.0"}
    for key, value in (("version", args.version), ("revision", args.revision), ("source", args.source)):
        if value:
            labels[f"org.opencontainers.image.{key}"] = value
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": ["/" + BINARY_PATH, "serve"],
            "Cmd": ["--config", "/etc/warden/warden.yaml"],
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/" + CA_PATH,
            ],
            "WorkingDir": "/",
            "Labels": labels,
        },
    }
    return Layout(args.out).image(config, [base, app], None, args.version or "latest")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="image", required=True)
    f = sub.add_parser("filter", help="the Wasm filter, Istio's compat variant")
    f.add_argument("--wasm", required=True)
    t = sub.add_parser("token-service", help="the token service on a distroless-like base")
    t.add_argument("--binary", required=True)
    t.add_argument("--version", default="")
    t.add_argument("--revision", default="")
    t.add_argument("--source", default="")
    t.add_argument("--ca-certificates", default="/etc/ssl/certs/ca-certificates.crt")
    for p in (f, t):
        p.add_argument("--out", required=True, help="the layout directory (replaced)")
        p.add_argument("--digest-file", help="where to write the manifest digest")
    args = parser.parse_args()
    digest = filter_image(args) if args.image == "filter" else token_service_image(args)
    if args.digest_file:
        with open(args.digest_file, "w") as f:
            f.write(digest + "\n")
    print(digest)


if __name__ == "__main__":
    main()

//! The OCI image layouts `make images` writes (scripts/oci-image.py), read as a registry client
//! would: the filter image the way Istio's image fetcher does (istio/istio
//! pkg/wasm/imagefetcher.go: last layer, gzip tar, the entry `plugin.wasm`), loaded into the real
//! Envoy; the token service image unpacked into a root and started with its own loader and
//! libraries. The layouts come from `WARDEN_IMAGES_DIR` (the Makefile exports it and builds them
//! before the end-to-end tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde::Deserialize as _;
use serde_json::{json, Value};
use warden_e2e::images::{digest_file, images_dir, istio_extract_plugin, pull_filter, Image};
use warden_e2e::{
    call_tool_text, connect, free_port, jwt, operator_config, workspace_root, write_yaml, Binaries,
    ClientAuth, Era, Ports, Proc, Stack, StackOptions,
};

/// Runs scripts/oci-image.py and returns the digest it printed.
fn oci_image(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(workspace_root().join("scripts/oci-image.py"))
        .args(args)
        .output()
        .expect("run python3 scripts/oci-image.py");
    assert!(
        out.status.success(),
        "oci-image.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The module URL the committed deploy/istio.yaml's EnvoyFilter pins.
fn filter_url() -> String {
    let path = workspace_root().join("deploy/istio.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let o = Value::deserialize(doc).unwrap();
        if o["kind"] == "EnvoyFilter" {
            return o["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
                ["vm_config"]["code"]["remote"]["http_uri"]["uri"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }
    panic!("no EnvoyFilter in {}", path.display());
}

#[tokio::test]
async fn filter_image_is_istios_compat_variant_and_serves_a_signed_in_call() {
    let images = images_dir();
    let image = Image::open(&images.join("filter"));
    assert_eq!(digest_file(&images, "filter"), image.manifest_digest);

    assert_eq!(
        image.manifest["annotations"]["module.wasm.image/variant"], "compat",
        "{}",
        image.manifest
    );
    // Istio's fetcher has no reader for application/wasm; the OCI artifact variant's types
    // (application/vnd.module.wasm.*) would send it down another path.
    for text in &image.json_texts {
        assert!(!text.contains("application/wasm"), "{text}");
        assert!(!text.contains("vnd.module.wasm"), "{text}");
    }
    assert_eq!(image.layers.len(), 1, "{}", image.manifest);
    let entries = image.entries(0);
    assert_eq!(entries.len(), 1, "one file in the layer");
    let (path, header, _) = &entries[0];
    assert_eq!(path, "plugin.wasm");
    assert!(header.entry_type().is_file());

    let plugin = istio_extract_plugin(&image);
    assert_eq!(&plugin[..4], b"\0asm", "plugin.wasm is a Wasm module");
    assert!(
        plugin == std::fs::read(Binaries::wasm()).unwrap(),
        "the filter image holds another wasm than {}: run `make images`",
        Binaries::wasm().display()
    );

    // Envoy loads the module the committed EnvoyFilter pins, pulled from the layout as Istio's
    // agent would, not the build's.
    let dir = tempfile::tempdir().unwrap();
    let plugin_path = pull_filter(&filter_url(), dir.path());
    assert!(std::fs::read(&plugin_path).unwrap() == plugin);
    let stack = Stack::start_with(StackOptions {
        wasm: Some(plugin_path.clone()),
        ..Default::default()
    })
    .await;
    let bootstrap = std::fs::read_to_string(&stack.bootstrap_path).unwrap();
    assert!(
        bootstrap.contains(plugin_path.to_str().unwrap()),
        "Envoy's bootstrap loads {}",
        plugin_path.display()
    );
    let signed = stack.sign_in().await;
    let client = connect(
        &stack.mcp_url(),
        &Era::Stateless,
        ClientAuth::OAuth(signed.manager),
    )
    .await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "from the image"})).await,
        "from the image"
    );
}

#[test]
fn filter_image_digest_is_reproducible_from_the_wasm_alone() {
    let images = images_dir();
    let expected = digest_file(&images, "filter");
    let plugin = istio_extract_plugin(&Image::open(&images.join("filter")));
    // Twice, from copies at other paths: the digest depends on the wasm's bytes only.
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a.wasm", "elsewhere/warden_filter.wasm"]
        .iter()
        .enumerate()
    {
        let wasm = dir.path().join(name);
        std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        std::fs::write(&wasm, &plugin).unwrap();
        let out = dir.path().join(format!("layout-{i}"));
        let digest = oci_image(&[
            "filter",
            "--wasm",
            wasm.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(digest, expected, "build {i} from {}", wasm.display());
        assert_eq!(Image::open(&out).manifest_digest, expected);
    }
}

/// Unpacks the image's layers in order into `root`; returns every entry path with its header.
fn unpack(image: &Image, root: &Path) -> Vec<(String, tar::Header)> {
    let mut all = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        tar::Archive::new(&layer[..]).unpack(root).unwrap();
        all.extend(image.entries(i).into_iter().map(|(p, h, _)| (p, h)));
    }
    all
}

/// Every shared object the process has mapped.
fn mapped_libraries(pid: u32) -> BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn token_service_image_is_well_formed_and_its_binary_starts_ready() {
    let images = images_dir();
    let image = Image::open(&images.join("token-service"));
    assert_eq!(digest_file(&images, "token-service"), image.manifest_digest);

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(image.config["os"], "linux", "{}", image.config);
    assert_eq!(image.config["architecture"], arch, "{}", image.config);
    let run = &image.config["config"];
    assert_eq!(run["User"], "65532:65532", "non-root: {run}");
    assert_eq!(
        run["Entrypoint"],
        json!(["/usr/local/bin/warden-token-service", "serve"]),
        "{run}"
    );
    assert_eq!(
        run["Cmd"],
        json!(["--config", "/etc/warden/warden.yaml"]),
        "{run}"
    );
    let env: Vec<&str> = run["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "{run}"
    );

    let root = tempfile::tempdir().unwrap();
    let entries = unpack(&image, root.path());
    let header = |path: &str| {
        entries
            .iter()
            .find(|(p, _)| p.trim_end_matches('/') == path)
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("no {path} in the image"))
    };
    for (path, h) in &entries {
        assert_eq!(h.mtime().unwrap(), 0, "{path}: mtime 0");
        let owner = (h.uid().unwrap(), h.gid().unwrap());
        assert!(
            owner == (0, 0) || owner == (65532, 65532),
            "{path}: {owner:?}"
        );
    }
    assert_eq!(
        header("usr/local/bin/warden-token-service").mode().unwrap(),
        0o755
    );
    assert_eq!(
        header("tmp").mode().unwrap(),
        0o1777,
        "/tmp is world-writable, sticky"
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    // rustls-platform-verifier loads the system roots from this bundle (SSL_CERT_FILE).
    let cas =
        std::fs::read_to_string(root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        cas.matches("-----BEGIN CERTIFICATE-----").count() > 10,
        "the CA bundle holds the public roots"
    );

    // The image's own loader and libraries, never the host's (no ld.so.cache either).
    let (loader, _) = entries
        .iter()
        .find(|(p, h)| {
            h.entry_type().is_file()
                && Path::new(p)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
        })
        .expect("the dynamic loader is in the image");
    let lib_path = ["lib", "usr/lib", "lib64"]
        .iter()
        .flat_map(|d| {
            [
                root.path()
                    .join(d)
                    .join(format!("{}-linux-gnu", std::env::consts::ARCH)),
                root.path().join(d),
            ]
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");

    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        envoy: free_port(),
        envoy_admin: free_port(),
        token_service: free_port(),
        demo: free_port(),
    };
    jwt::write_key_file(&dir.path().join("signing-key.json"), "ES256");
    let config = operator_config(dir.path(), &ports, &StackOptions::default());
    let config_path = dir.path().join("warden.yaml");
    write_yaml(&config_path, &config);
    let ca_file = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let mut service = Proc::spawn(
        "token-service-image",
        dir.path(),
        &root.path().join(loader),
        &[
            "--inhibit-cache".into(),
            "--library-path".into(),
            lib_path.into(),
            root.path()
                .join("usr/local/bin/warden-token-service")
                .into(),
            "serve".into(),
            "--config".into(),
            config_path.into(),
        ],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );

    let base = format!("http://127.0.0.1:{}", ports.token_service);
    // Ready: the store open, its migrations applied, a signing key loaded.
    service.wait_http_ok(&format!("{base}/readyz")).await;

    let pid = service.pid().expect("running");
    let libs = mapped_libraries(pid);
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
    for lib in &libs {
        assert!(
            Path::new(lib).starts_with(root.path()),
            "{lib} was loaded from outside the image"
        );
    }

    // The layout is a function of its inputs: the same binary, labels and host files again
    // give the same digest.
    let labels = &run["Labels"];
    let label = |k: &str| {
        labels[format!("org.opencontainers.image.{k}")]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let out = dir.path().join("again");
    let digest = oci_image(&[
        "token-service",
        "--binary",
        root.path()
            .join("usr/local/bin/warden-token-service")
            .to_str()
            .unwrap(),
        "--version",
        &label("version"),
        "--revision",
        &label("revision"),
        "--source",
        &label("source"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        digest, image.manifest_digest,
        "rebuilt from the same inputs"
    );
}

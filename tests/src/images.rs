//! The OCI image layouts `make images` writes (scripts/oci-image.py), read as a registry client
//! would: [`Image::open`] checks the digest chain, [`istio_extract_plugin`] takes `plugin.wasm`
//! out of the filter image the way Istio's image fetcher does (istio/istio
//! pkg/wasm/imagefetcher.go: last layer, gzip tar, the entry `plugin.wasm`), and [`pull_filter`]
//! plays the Istio agent's pull of the filter's `oci://…@sha256:…` URL (the EnvoyFilter's) from the layout.
//! The layouts come from `WARDEN_IMAGES_DIR` (the Makefile exports it and builds them before the
//! end-to-end tests).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The only layer type Istio's fetcher reads as the "compat" variant (types.OCILayer).
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn images_dir() -> PathBuf {
    let dir = match std::env::var_os("WARDEN_IMAGES_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "WARDEN_IMAGES_DIR is not set: run `make images` (make test runs it before the \
             end-to-end tests) and point WARDEN_IMAGES_DIR at its target/images"
        ),
    };
    for image in ["filter", "token-service"] {
        assert!(
            dir.join(image).join("index.json").is_file(),
            "no image layout at {}: run `make images`",
            dir.join(image).display()
        );
    }
    dir
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An image layout whose digest chain has been checked: index → manifest → config and layers,
/// every blob's sha256 its name and its size the descriptor's, every layer's uncompressed
/// sha256 the config's `rootfs.diff_ids` entry, and no blob that nothing references.
pub struct Image {
    pub manifest_digest: String,
    pub manifest: Value,
    pub config: Value,
    /// The layers, uncompressed (tar), in manifest order.
    pub layers: Vec<Vec<u8>>,
    /// index.json, the manifest and the config as read, for media type searches.
    pub json_texts: Vec<String>,
}

impl Image {
    pub fn open(dir: &Path) -> Image {
        let what = dir.display();
        let oci_layout: Value = read_json(&dir.join("oci-layout"));
        assert_eq!(oci_layout, json!({"imageLayoutVersion": "1.0.0"}), "{what}");
        let index_text = std::fs::read_to_string(dir.join("index.json")).unwrap();
        let index: Value = serde_json::from_str(&index_text).unwrap();
        assert_eq!(index["schemaVersion"], 2, "{what}: {index}");
        assert_eq!(index["mediaType"], INDEX, "{what}: {index}");
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{what}: one image per layout: {index}");

        let mut referenced = BTreeSet::new();
        let manifest_bytes = blob(dir, &manifests[0], MANIFEST, &mut referenced);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["schemaVersion"], 2, "{what}: {manifest}");
        assert_eq!(manifest["mediaType"], MANIFEST, "{what}: {manifest}");
        let config_bytes = blob(dir, &manifest["config"], CONFIG, &mut referenced);
        let config: Value = serde_json::from_slice(&config_bytes).unwrap();
        assert_eq!(config["rootfs"]["type"], "layers", "{what}: {config}");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        let layer_descs = manifest["layers"].as_array().unwrap();
        assert!(!layer_descs.is_empty(), "{what}: no layer: {manifest}");
        assert_eq!(
            diff_ids.len(),
            layer_descs.len(),
            "{what}: one diff_id per layer: {config} vs {manifest}"
        );
        let mut layers = Vec::new();
        for (desc, diff_id) in layer_descs.iter().zip(diff_ids) {
            let compressed = blob(dir, desc, LAYER, &mut referenced);
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut tar)
                .unwrap_or_else(|e| panic!("{what}: layer {} is not gzip: {e}", desc["digest"]));
            assert_eq!(
                diff_id.as_str().unwrap(),
                format!("sha256:{}", sha256_hex(&tar)),
                "{what}: diff_id of layer {}",
                desc["digest"]
            );
            layers.push(tar);
        }

        let present: BTreeSet<String> = std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(present, referenced, "{what}: blobs nothing references");

        Image {
            manifest_digest: manifests[0]["digest"].as_str().unwrap().to_owned(),
            manifest,
            config,
            layers,
            json_texts: vec![
                index_text,
                String::from_utf8(manifest_bytes).unwrap(),
                String::from_utf8(config_bytes).unwrap(),
            ],
        }
    }

    /// The entries of a layer: (path, header, contents).
    pub fn entries(&self, layer: usize) -> Vec<(String, tar::Header, Vec<u8>)> {
        let mut archive = tar::Archive::new(&self.layers[layer][..]);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let header = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, header, data)
            })
            .collect()
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The blob a descriptor names, checked against it.
fn blob(dir: &Path, desc: &Value, media_type: &str, referenced: &mut BTreeSet<String>) -> Vec<u8> {
    assert_eq!(desc["mediaType"], media_type, "{}: {desc}", dir.display());
    let digest = desc["digest"].as_str().unwrap();
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{}: not a sha256 digest: {desc}", dir.display()));
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("{}: blob {digest}: {e}", dir.display()));
    assert_eq!(sha256_hex(&bytes), hex, "{}: blob {digest}", dir.display());
    assert_eq!(
        desc["size"].as_u64(),
        Some(bytes.len() as u64),
        "{}: size of {digest}",
        dir.display()
    );
    referenced.insert(hex.to_owned());
    bytes
}

pub fn digest_file(images: &Path, image: &str) -> String {
    let path = images.join(format!("{image}.digest"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make images`)", path.display()));
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{}: one line: {text:?}",
        path.display()
    );
    text.trim_end().to_owned()
}

/// Istio's extractWasmPluginBinary: the first entry whose base name is `plugin.wasm`.
pub fn istio_extract_plugin(image: &Image) -> Vec<u8> {
    let last = image.layers.len() - 1;
    image
        .entries(last)
        .into_iter()
        .find(|(path, _, _)| Path::new(path).file_name() == Some("plugin.wasm".as_ref()))
        .map(|(_, _, data)| data)
        .expect("plugin.wasm not found in the last layer")
}

/// The Istio agent's pull of a Wasm module URL (`oci://<repository>@sha256:<hex>`), served by
/// the filter layout `make images` wrote: the URL's digest must be the layout's manifest digest
/// (the image a registry would serve under it). Writes `plugin.wasm` into `dir`; returns its path.
pub fn pull_filter(url: &str, dir: &Path) -> PathBuf {
    let digest = url
        .strip_prefix("oci://")
        .and_then(|r| r.rsplit_once('@'))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("not an oci://…@sha256:… URL: {url}"));
    let image = Image::open(&images_dir().join("filter"));
    assert_eq!(
        digest, image.manifest_digest,
        "{url} names another image than target/images/filter (run `make images`, then \
         `make deploy-yaml` if the filter changed)"
    );
    let path = dir.join("plugin.wasm");
    std::fs::write(&path, istio_extract_plugin(&image)).expect("write plugin.wasm");
    path
}

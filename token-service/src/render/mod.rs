//! Renders what runs the gateway from the operator config: the Envoy bootstrap
//! (`render-envoy`), and the Kubernetes and Istio objects (`render --target`). The filter's
//! plugin configuration comes from one function (`plugin::plugin_config_for`) for all of them.

pub mod envoy;
pub mod istio;
pub mod kubernetes;
pub mod plugin;

pub use envoy::render;
pub use plugin::*;

/// What `render --target` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The token service's objects and an HTTPRoute for the issuer.
    Kubernetes,
    /// The token service's objects and the Istio gateway's (WasmPlugin included).
    Istio,
}

/// The image digests `render` pins (`sha256:<hex>`, as `make images` writes them).
#[derive(Debug, Clone, Default)]
pub struct Digests {
    pub filter: Option<String>,
    pub token_service: Option<String>,
}

/// Renders `target` from the text of an operator config. Secret files are not read (they
/// exist only in the pod); everything else is validated as `serve` would.
pub fn manifests(config_text: &str, target: Target, digests: &Digests) -> Result<String, String> {
    let config = crate::config::Config::from_yaml_without_secret_files(config_text)
        .map_err(|e| e.to_string())?;
    let raw: serde_json::Value = serde_yaml::from_str(config_text).map_err(|e| e.to_string())?;
    let plan = kubernetes::Plan::new(&config, &raw, digests.token_service.as_deref())?;
    match target {
        Target::Kubernetes => kubernetes::render(&plan),
        Target::Istio => {
            let digest = digests.filter.as_deref().ok_or(
                "--filter-digest sha256:<hex> is required with --target istio: the WasmPlugin pulls the filter by digest (`make images` writes it to target/images/filter.digest)",
            )?;
            istio::render(&plan, digest)
        }
    }
}

//! The shipped examples must load: a stale example is a bug users hit first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn deploy_istio_wasmplugin_config_is_accepted_by_the_filter() {
    // deploy/istio.yaml is rendered (`make deploy-yaml`, checked by `make check-deploy-yaml`);
    // this checks the committed file itself.
    let text = std::fs::read_to_string(root().join("deploy/istio.yaml")).unwrap();
    let plugin = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_json::Value>(d).unwrap())
        .find(|d| d["kind"] == "WasmPlugin")
        .expect("deploy/istio.yaml has a WasmPlugin");
    let config = plugin["spec"]["pluginConfig"].to_string();
    let compiled = warden_core::config::CompiledConfig::from_json(config.as_bytes())
        .unwrap_or_else(|e| panic!("deploy/istio.yaml: {e}"));
    assert_eq!(compiled.routes[0].resource, "https://mcp.example.com/crm");
}

#[test]
fn deploy_example_config_loads_without_its_secret_files() {
    let text = std::fs::read_to_string(root().join("deploy/warden.yaml")).unwrap();
    let config = warden_token_service::config::Config::from_yaml_without_secret_files(&text)
        .unwrap_or_else(|e| panic!("deploy/warden.yaml: {e}"));
    assert_eq!(config.kubernetes.unwrap().token_service.replicas, 2);
}

#[test]
fn readme_plugin_config_example_is_accepted_by_the_filter() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```json\n")
        .expect("README has a JSON plugin config example")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    warden_core::config::CompiledConfig::from_json(&readme.as_bytes()[start..end])
        .unwrap_or_else(|e| panic!("README plugin config example: {e}"));
}

/// The body of the first fenced block of `lang` after `heading` in the README.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("README lacks {heading}"))..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap() + fence.len();
    section[start..start + section[start..].find("```").unwrap()].to_string()
}

#[test]
fn readme_operator_config_example_loads() {
    let yaml = readme_block("### Operator configuration", "yaml");
    warden_token_service::config::Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("README warden.yaml example: {e}"));
}

#[test]
fn readme_policy_example_compiles() {
    let yaml = readme_block("## Policy", "yaml");
    let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    warden_core::policy::Policy::compile(&doc["policy"], "policy")
        .unwrap_or_else(|e| panic!("README policy example: {}: {}", e.path, e.message));
}

#[test]
fn readme_identity_assertion_example_loads() {
    let yaml = readme_block("## Identity assertion", "yaml");
    let config = warden_token_service::config::Config::from_yaml(&format!(
        "authorization_server:\n  issuer: https://auth.example.com\n{yaml}"
    ))
    .unwrap_or_else(|e| panic!("README identity assertion example: {e}"));
    let route = &config.routes[0];
    assert!(route.pass_identity_headers);
    // The `aud` the README's claims table names for it.
    assert_eq!(route.upstream_origin(), "http://crm-mcp.int:8080");
    assert!(config.uses_internal_listener());
}

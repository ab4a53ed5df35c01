//! The shipped examples must load: a stale example is a bug users hit first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn istio_wasmplugin_config_is_accepted_by_the_filter() {
    let text = std::fs::read_to_string(root().join("deploy/istio/wasmplugin.yaml")).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let plugin = doc["spec"]["pluginConfig"].to_string();
    let compiled = warden_core::config::CompiledConfig::from_json(plugin.as_bytes())
        .unwrap_or_else(|e| panic!("deploy/istio/wasmplugin.yaml: {e}"));
    assert_eq!(
        compiled.routes[0].resource,
        "https://mcp.example.com/github"
    );
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

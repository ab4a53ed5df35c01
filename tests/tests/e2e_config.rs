//! Envoy refuses an invalid warden plugin configuration, and its log names the field.
//!
//! `envoy --mode validate` does not run the Wasm plugin's `on_configure`, so the harness starts
//! Envoy for real with a bootstrap whose plugin configuration was broken after rendering, and
//! expects it to exit non-zero or never become ready, with
//! `invalid plugin configuration: <field.path>: <message>` (core/src/config.rs) in its log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use warden_e2e::{
    envoy_outcome, operator_config, render_envoy, spawn_envoy, write_yaml, Binaries, EnvoyOutcome,
    Ports, StackOptions, READY_TIMEOUT,
};

/// How long a broken Envoy gets to prove it will not become ready.
const BROKEN_GRACE: Duration = Duration::from_secs(20);

/// Calls `edit` on every warden plugin configuration in the bootstrap (the JSON string in a
/// `configuration: {"@type": …StringValue, value: "…"}` whose JSON has `routes`). Returns how
/// many were edited.
fn edit_plugin_configs(node: &mut serde_yaml::Value, edit: &dyn Fn(&mut Value)) -> usize {
    let mut edited = 0;
    match node {
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                if key.as_str() == Some("configuration") {
                    if let Some(serde_yaml::Value::String(text)) = value.get_mut("value") {
                        if let Ok(mut json) = serde_json::from_str::<Value>(text) {
                            if json.get("routes").is_some() {
                                edit(&mut json);
                                *text = json.to_string();
                                edited += 1;
                                continue;
                            }
                        }
                    }
                }
                edited += edit_plugin_configs(value, edit);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                edited += edit_plugin_configs(item, edit);
            }
        }
        serde_yaml::Value::Tagged(tagged) => edited += edit_plugin_configs(&mut tagged.value, edit),
        _ => {}
    }
    edited
}

/// Renders the bootstrap for a fresh config in `dir`.
async fn rendered_bootstrap(dir: &Path, ports: &Ports) -> serde_yaml::Value {
    let config = operator_config(dir, ports, &StackOptions::default());
    let config_path = dir.join("warden.yaml");
    write_yaml(&config_path, &config);
    let out = dir.join("envoy-rendered.yaml");
    render_envoy(&config_path, &Binaries::wasm(), &out).await;
    serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).expect("bootstrap is YAML/JSON")
}

/// Starts Envoy with `bootstrap` and asserts it refuses to run, naming `needles` in its log.
async fn assert_refused(
    dir: &Path,
    ports: &Ports,
    name: &str,
    bootstrap: &serde_yaml::Value,
    needles: &[&str],
) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(bootstrap).unwrap()).unwrap();
    let mut envoy = spawn_envoy(dir, name, &path, ports.envoy_admin);
    let outcome = envoy_outcome(&mut envoy, ports.envoy_admin, BROKEN_GRACE).await;
    match outcome {
        EnvoyOutcome::Exited(status) => {
            assert!(!status.success(), "{name}: envoy exited successfully")
        }
        EnvoyOutcome::NotReady => {}
        EnvoyOutcome::Ready => envoy.fail("became ready with an invalid plugin configuration"),
    }
    envoy.kill().await;
    let log = envoy.log();
    for needle in needles {
        if !log.contains(needle) {
            envoy.fail(&format!(
                "log does not mention {needle:?} (outcome {outcome:?})"
            ));
        }
    }
}

#[tokio::test]
async fn envoy_refuses_a_route_without_resource() {
    let dir = tempfile::Builder::new()
        .prefix("warden-cfg-")
        .tempdir()
        .unwrap();
    let ports = Ports::pick();
    let good = rendered_bootstrap(dir.path(), &ports).await;

    // Positive control: the rendered bootstrap itself is accepted.
    let good_path = dir.path().join("envoy-good.yaml");
    std::fs::write(&good_path, serde_yaml::to_string(&good).unwrap()).unwrap();
    let mut envoy = spawn_envoy(dir.path(), "envoy-good", &good_path, ports.envoy_admin);
    match envoy_outcome(&mut envoy, ports.envoy_admin, READY_TIMEOUT).await {
        EnvoyOutcome::Ready => {}
        other => envoy.fail(&format!("valid bootstrap not ready: {other:?}")),
    }
    envoy.kill().await;

    let mut bad = good.clone();
    let edited = edit_plugin_configs(&mut bad, &|cfg| {
        cfg["routes"][0].as_object_mut().unwrap().remove("resource");
    });
    assert!(
        edited > 0,
        "no warden plugin configuration found in the bootstrap"
    );
    // serde_path_to_error reports a missing field at its parent: `routes[0]: missing field `resource``.
    assert_refused(
        dir.path(),
        &ports,
        "envoy-no-resource",
        &bad,
        &["invalid plugin configuration", "routes[0]", "resource"],
    )
    .await;
}

#[tokio::test]
async fn envoy_refuses_an_invalid_resource_url() {
    let dir = tempfile::Builder::new()
        .prefix("warden-cfg-")
        .tempdir()
        .unwrap();
    let ports = Ports::pick();
    let mut bad = rendered_bootstrap(dir.path(), &ports).await;
    let edited = edit_plugin_configs(&mut bad, &|cfg| {
        cfg["routes"][0]["resource"] = Value::String("not a url".into());
    });
    assert!(
        edited > 0,
        "no warden plugin configuration found in the bootstrap"
    );
    assert_refused(
        dir.path(),
        &ports,
        "envoy-bad-resource",
        &bad,
        &["invalid plugin configuration", "routes[0].resource"],
    )
    .await;
}

#[tokio::test]
async fn envoy_refuses_an_unknown_field() {
    let dir = tempfile::Builder::new()
        .prefix("warden-cfg-")
        .tempdir()
        .unwrap();
    let ports = Ports::pick();
    let mut bad = rendered_bootstrap(dir.path(), &ports).await;
    let edited = edit_plugin_configs(&mut bad, &|cfg| {
        cfg["routes"][0]["resourse"] = Value::String("typo".into());
    });
    assert!(
        edited > 0,
        "no warden plugin configuration found in the bootstrap"
    );
    assert_refused(
        dir.path(),
        &ports,
        "envoy-unknown-field",
        &bad,
        &["invalid plugin configuration", "resourse"],
    )
    .await;
}

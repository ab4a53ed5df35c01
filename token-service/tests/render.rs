//! `render --target kubernetes|istio`: the objects, their names, the routing they give Istio
//! (compared with the Envoy bootstrap's), and that no secret value ever reaches them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use warden_token_service::config::Config;
use warden_token_service::render::{manifests, Digests, Target};

const FILTER_DIGEST: &str =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const FQDN: &str = "warden-token-service.mcp.svc.cluster.local";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn example() -> String {
    std::fs::read_to_string(root().join("deploy/warden.yaml")).unwrap()
}

fn digests() -> Digests {
    Digests {
        filter: Some(FILTER_DIGEST.into()),
        token_service: None,
    }
}

fn render(text: &str, target: Target) -> Result<String, String> {
    manifests(text, target, &digests())
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

fn one<'d>(docs: &'d [Value], kind: &str) -> &'d Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn all<'d>(docs: &'d [Value], kind: &str) -> Vec<&'d Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The example with its `kubernetes:` block replaced and `edit` applied to the rest.
fn config_with(edit: impl Fn(&mut Value)) -> String {
    let mut v: Value = serde_yaml::from_str(&example()).unwrap();
    edit(&mut v);
    serde_yaml::to_string(&v).unwrap()
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn objects_come_in_a_stable_order_and_render_the_same_twice() {
    let k = render(&example(), Target::Kubernetes).unwrap();
    assert_eq!(
        kinds(&parse_docs(&k)),
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HTTPRoute"
        ]
    );
    let i = render(&example(), Target::Istio).unwrap();
    assert_eq!(
        kinds(&parse_docs(&i)),
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "Gateway",
            "VirtualService",
            "VirtualService",
            "VirtualService",
            "ServiceEntry",
            "EnvoyFilter"
        ]
    );
    assert_eq!(k, render(&example(), Target::Kubernetes).unwrap());
    assert_eq!(i, render(&example(), Target::Istio).unwrap());
    assert!(k.starts_with("# Rendered by `warden-token-service render --target kubernetes`"));
}

#[test]
fn the_filter_reaches_the_token_service_through_istios_cluster_names() {
    let docs = parse_docs(&render(&example(), Target::Istio).unwrap());
    let plugin = &plugin_config(&docs);
    assert_eq!(
        plugin["jwks"]["cluster"],
        "outbound|80||warden-token-service.mcp.svc.cluster.local"
    );
    assert_eq!(plugin["jwks"]["authority"], "auth.example.com");
    assert_eq!(
        plugin["token_service"]["cluster"],
        "outbound|9101||warden-token-service.mcp.svc.cluster.local"
    );
    assert_eq!(
        plugin["token_service"]["authority"],
        "warden-token-service.mcp.svc.cluster.local:9101"
    );
    // Istio sets no route header: the filter reads `xds.route_name`.
    assert!(plugin.get("route_header").is_none(), "{plugin}");
    assert!(!plugin.to_string().contains("credential"), "{plugin}");
    // The filter's own compiler accepts it.
    let compiled =
        warden_core::config::CompiledConfig::from_json(plugin.to_string().as_bytes()).unwrap();
    assert_eq!(compiled.routes.len(), 3);
    assert!(compiled.route_header.is_none());
    // The names are those of the Service rendered beside it: `outbound|<port>||<name>.<ns>.svc.<domain>`.
    let service = one(&docs, "Service");
    assert_eq!(
        format!(
            "{}.{}.svc.cluster.local",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        ),
        FQDN
    );
    let ports: Vec<(String, u64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("http".into(), 80), ("internal".into(), 9101)]);
}

/// The Wasm filter's configuration: the EnvoyFilter's extension config.
fn wasm_config(docs: &[Value]) -> Value {
    let filter = one(docs, "EnvoyFilter");
    let patches = filter["spec"]["configPatches"].as_array().unwrap();
    let extension = patches
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap_or_else(|| panic!("no EXTENSION_CONFIG: {filter}"));
    assert_eq!(extension["patch"]["operation"], "ADD");
    let value = &extension["patch"]["value"];
    assert_eq!(value["name"], "mcp-warden");
    assert_eq!(
        value["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    value["typed_config"]["config"].clone()
}

/// The filter's plugin configuration, as the gateway's Wasm filter gets it.
fn plugin_config(docs: &[Value]) -> Value {
    let config = wasm_config(docs);
    assert_eq!(
        config["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap()
}

#[test]
fn the_gateway_pulls_the_filter_by_digest_holds_headers_for_the_body_and_fails_closed() {
    let docs = parse_docs(&render(&example(), Target::Istio).unwrap());
    let filter = one(&docs, "EnvoyFilter");
    assert_eq!(filter["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(filter["metadata"]["namespace"], "istio-system");
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        serde_json::json!({"istio": "ingressgateway"})
    );
    let config = wasm_config(&docs);
    let vm = &config["vm_config"];
    assert_eq!(
        vm["code"]["remote"]["http_uri"]["uri"],
        format!("oci://registry.example.com/mcp-warden/filter@{FILTER_DIGEST}")
    );
    assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    // What a WasmPlugin cannot say: the filter reads the body before the headers go on.
    assert_eq!(config["allow_on_headers_stop_iteration"], true);
    assert_eq!(config["root_id"], "mcp-warden");
    assert_eq!(
        vm["environment_variables"]["host_env_keys"],
        serde_json::json!(["MCP_WARDEN_SESSION_KEY", "MCP_WARDEN_INTERNAL_CREDENTIAL"])
    );
    // MCP streams may stay silent for an hour, as with the Envoy bootstrap.
    let merge = filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "NETWORK_FILTER")
        .unwrap();
    assert_eq!(merge["match"]["context"], "GATEWAY");
    assert_eq!(merge["patch"]["operation"], "MERGE");
    assert_eq!(
        merge["patch"]["value"]["typed_config"]["stream_idle_timeout"],
        "3600s"
    );
    // First in every gateway HTTP chain, loaded before the listener takes traffic.
    let insert = filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .unwrap();
    assert_eq!(insert["match"]["context"], "GATEWAY");
    assert_eq!(insert["patch"]["operation"], "INSERT_FIRST");
    let discovery = &insert["patch"]["value"]["config_discovery"];
    assert_eq!(insert["patch"]["value"]["name"], "mcp-warden");
    assert_eq!(discovery["config_source"]["initial_fetch_timeout"], "0s");
    assert_eq!(
        discovery["type_urls"],
        serde_json::json!(["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"])
    );
}

#[test]
fn the_plugin_config_is_the_envoy_bootstraps_but_for_the_clusters() {
    // A config the Envoy render can load too (no secret file).
    let text = plain_config();
    let docs = parse_docs(&render(&text, Target::Istio).unwrap());
    let mut istio = plugin_config(&docs);
    let config = Config::from_yaml(&text).unwrap();
    let input = warden_token_service::render::EnvoyInput::from_config(&config, "f.wasm");
    let mut envoy =
        serde_json::to_value(warden_token_service::render::plugin_config(&input)).unwrap();
    for v in [&mut istio, &mut envoy] {
        let o = v.as_object_mut().unwrap();
        o.remove("route_header");
        o["jwks"].as_object_mut().unwrap().remove("cluster");
        let ts = o["token_service"].as_object_mut().unwrap();
        ts.remove("cluster");
        ts.remove("authority");
    }
    assert_eq!(istio, envoy);
}

/// Writes `value` at `path` (creating the directory).
fn write(path: &Path, value: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, value).unwrap();
}

#[test]
fn no_secret_value_reaches_the_render_and_the_config_map_points_at_the_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let sentinel = |name: &str| format!("SENTINEL-{name}-7Qx9bZ");
    // Files at the paths the operator wrote, each holding a recognisable value.
    let files = [
        (
            "pg-url",
            "postgres://warden:SENTINEL-pg-7Qx9bZ@db.example.com/warden".to_string(),
        ),
        ("oidc", sentinel("oidc")),
        ("github", sentinel("github")),
        ("iat", sentinel("iat")),
        ("enc", sentinel("enc")),
        ("cred", sentinel("cred")),
        ("signing", sentinel("signing")),
        ("nightly", sentinel("nightly")),
    ];
    for (name, value) in &files {
        write(&dir.path().join(name), value);
    }
    let at = |name: &str| dir.path().join(name).display().to_string();
    let text = config_with(|v| {
        v["storage"]["postgres"]["url_file"] = at("pg-url").into();
        v["storage"]["encryption_key_file"] = at("enc").into();
        v["identity_provider"]["oidc"]["client_secret_file"] = at("oidc").into();
        v["routes"][1]["mcp"]["server"]["upstream_oauth2"]["client_secret_file"] =
            at("github").into();
        v["authorization_server"]["internal_credential_file"] = at("cred").into();
        v["authorization_server"]["registration"] = serde_json::json!({
            "mode": "initial_access_token",
            "initial_access_token_file": at("iat"),
        });
        v["authorization_server"]["signing_key"] = serde_json::json!({"file": at("signing")});
        v["kubernetes"]["secrets"]["signing_key"] = "warden-signing-key".into();
        v["outbound"] = serde_json::json!({"extra_ca_file": at("ca.pem")});
        v["kubernetes"]["secrets"]["outbound_ca"] = "warden-outbound-ca".into();
        v["clients"] = serde_json::json!([{
            "client_id": "nightly-report",
            "client_secret_file": at("nightly"),
            "grant_types": ["client_credentials"],
            "identity": {"email": "nightly-report@svc.example.com"},
        }]);
    });
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, &text).unwrap();
    for target in ["kubernetes", "istio"] {
        let (code, out, err) = run(&[
            "render",
            "--target",
            target,
            "--config",
            path.to_str().unwrap(),
            "--filter-digest",
            FILTER_DIGEST,
        ]);
        assert_eq!(code, Some(0), "{err}");
        assert!(!out.contains("SENTINEL"), "{target}:\n{out}");
        assert!(!err.contains("SENTINEL"), "{target}: {err}");
        // Nor the operator's paths: the pod reads the mounts.
        assert!(!out.contains(&dir.path().display().to_string()), "{out}");
        let docs = parse_docs(&out);
        let pod_config: Value = serde_yaml::from_str(
            one(&docs, "ConfigMap")["data"]["warden.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let m = "/var/run/secrets/warden";
        assert_eq!(
            pod_config["storage"]["postgres"]["url_file"],
            format!("{m}/warden-postgres/url")
        );
        assert_eq!(
            pod_config["storage"]["encryption_key_file"],
            format!("{m}/warden-encryption-key/key")
        );
        assert_eq!(
            pod_config["identity_provider"]["oidc"]["client_secret_file"],
            format!("{m}/warden-client-secrets/oidc")
        );
        assert_eq!(
            pod_config["routes"][1]["mcp"]["server"]["upstream_oauth2"]["client_secret_file"],
            format!("{m}/warden-client-secrets/route.github")
        );
        assert_eq!(
            pod_config["clients"][0]["client_secret_file"],
            format!("{m}/warden-client-secrets/client.nightly-report")
        );
        assert_eq!(
            pod_config["authorization_server"]["internal_credential_file"],
            format!("{m}/warden-internal-credential/credential")
        );
        assert_eq!(
            pod_config["authorization_server"]["registration"]["initial_access_token_file"],
            format!("{m}/warden-client-secrets/initial-access-token")
        );
        assert_eq!(
            pod_config["authorization_server"]["signing_key"]["file"],
            format!("{m}/warden-signing-key/key")
        );
        assert_eq!(
            pod_config["outbound"]["extra_ca_file"],
            format!("{m}/warden-outbound-ca/ca.pem")
        );
        assert!(pod_config.get("kubernetes").is_none());
        // Each mount is the Secret's volume, read-only.
        let deployment = one(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        for secret in [
            "warden-postgres",
            "warden-encryption-key",
            "warden-client-secrets",
            "warden-internal-credential",
            "warden-signing-key",
            "warden-outbound-ca",
        ] {
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["secret"]["secretName"] == secret)
                .unwrap_or_else(|| panic!("no volume for {secret}"));
            let mount = pod["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == volume["name"])
                .unwrap();
            assert_eq!(mount["mountPath"], format!("{m}/{secret}"));
            assert_eq!(mount["readOnly"], true);
        }
    }
}

#[test]
fn every_named_secret_is_referenced() {
    for target in [Target::Kubernetes, Target::Istio] {
        let out = render(&example(), target).unwrap();
        let docs = parse_docs(&out);
        let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        let mounted: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(
            mounted,
            [
                "warden-encryption-key",
                "warden-internal-credential",
                "warden-postgres",
                "warden-client-secrets"
            ]
        );
        // The gateway's: named in the heading comment (its Deployment is Istio's).
        for line in [
            "MCP_WARDEN_SESSION_KEY from Secret warden-session-key key `key`",
            "MCP_WARDEN_INTERNAL_CREDENTIAL from Secret warden-internal-credential key `credential`",
        ] {
            assert!(out.contains(line), "{out}");
        }
        if target == Target::Istio {
            let annotations = &one(&docs, "EnvoyFilter")["metadata"]["annotations"];
            assert_eq!(
                annotations["mcp-warden.dev/session-key-secret"],
                "warden-session-key"
            );
            assert_eq!(
                annotations["mcp-warden.dev/internal-credential-secret"],
                "warden-internal-credential"
            );
        }
    }
}

#[test]
fn inline_secrets_are_refused_naming_the_field() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                let pg = v["storage"]["postgres"].as_object_mut().unwrap();
                pg.remove("url_file");
                pg.insert("url".into(), "postgres://u:p@db/warden".into());
            }),
            "storage.postgres.url:",
        ),
        (
            Box::new(|v| {
                let o = v["identity_provider"]["oidc"].as_object_mut().unwrap();
                o.remove("client_secret_file");
                o.insert("client_secret".into(), "inline".into());
            }),
            "identity_provider.oidc.client_secret:",
        ),
        (
            Box::new(|v| {
                let u = v["routes"][1]["mcp"]["server"]["upstream_oauth2"]
                    .as_object_mut()
                    .unwrap();
                u.remove("client_secret_file");
                u.insert("client_secret".into(), "inline".into());
            }),
            "routes[1].mcp.server.upstream_oauth2.client_secret:",
        ),
        (
            Box::new(|v| {
                v["authorization_server"]["registration"] = serde_json::json!({
                    "mode": "initial_access_token",
                    "initial_access_token": "abcdefghijklmnopqrstuvwxyz",
                });
            }),
            "authorization_server.registration.initial_access_token:",
        ),
        (
            Box::new(|v| {
                v["clients"] = serde_json::json!([{
                    "client_id": "app", "client_secret": "inline",
                    "redirect_uris": ["https://app.example.com/cb"],
                }]);
            }),
            "clients[0].client_secret:",
        ),
    ];
    for (edit, field) in cases {
        let text = config_with(edit);
        // `serve` would take it: the config itself is valid.
        Config::from_yaml_without_secret_files(&text).unwrap();
        let e = render(&text, Target::Kubernetes).unwrap_err();
        assert!(e.starts_with(field), "{field}: {e}");
        assert!(e.contains("not a secret store"), "{e}");
        assert!(!e.contains("inline") && !e.contains("u:p@"), "{e}");
    }
}

#[test]
fn a_secret_file_without_its_secret_named_is_refused_naming_the_secret() {
    let cases: Vec<(&str, &str)> = vec![
        ("client_secrets", "kubernetes.secrets.client_secrets"),
        ("postgres_url", "kubernetes.secrets.postgres_url"),
        ("encryption_key", "kubernetes.secrets.encryption_key"),
    ];
    for (secret, field) in cases {
        let text = config_with(|v| {
            v["kubernetes"]["secrets"]
                .as_object_mut()
                .unwrap()
                .remove(secret);
        });
        let e = render(&text, Target::Kubernetes).unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
    let text = config_with(|v| {
        v["authorization_server"]["signing_key"] =
            serde_json::json!({"file": "/keys/signing.json"});
    });
    let e = render(&text, Target::Kubernetes).unwrap_err();
    assert!(e.starts_with("kubernetes.secrets.signing_key"), "{e}");
    // A CA file for outbound calls is read from its Secret's mount.
    let text = config_with(|v| {
        v["outbound"] = serde_json::json!({"extra_ca_file": "/etc/warden/ca.pem"});
    });
    let e = render(&text, Target::Kubernetes).unwrap_err();
    assert!(e.starts_with("kubernetes.secrets.outbound_ca"), "{e}");
    // The gateway's Secrets are always needed.
    for secret in ["session_key", "internal_credential"] {
        let text = config_with(|v| {
            v["kubernetes"]["secrets"]
                .as_object_mut()
                .unwrap()
                .remove(secret);
        });
        let e = Config::from_yaml_without_secret_files(&text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kubernetes.secrets"), "{e}");
        assert!(e.contains(secret), "{e}");
    }
}

#[test]
fn the_config_map_loads_once_its_files_exist() {
    let out = render(&example(), Target::Istio).unwrap();
    let docs = parse_docs(&out);
    let text = one(&docs, "ConfigMap")["data"]["warden.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    // What the Secrets hold, at temporary paths standing in for the mounts.
    let dir = tempfile::tempdir().unwrap();
    let mounts = dir.path().join("secrets");
    let key = "zBeZPpy8Obod9yzT34isNbgKwF6m_JevaZ2UFro94aw";
    for (path, value) in [
        ("warden-encryption-key/key", key),
        ("warden-internal-credential/credential", key),
        (
            "warden-postgres/url",
            "postgres://warden:pw@db.example.com/warden?sslmode=require",
        ),
        ("warden-client-secrets/oidc", "oidc-secret"),
        ("warden-client-secrets/route.github", "github-secret"),
    ] {
        write(&mounts.join(path), value);
    }
    let text = text.replace("/var/run/secrets/warden", &mounts.display().to_string());
    let config = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        config.authorization_server.listen.to_string(),
        "0.0.0.0:9100"
    );
    assert_eq!(
        config.authorization_server.internal_listen.to_string(),
        "0.0.0.0:9101"
    );
    assert!(config.kubernetes.is_none());
    assert_eq!(
        config.storage.postgres.as_ref().unwrap().url(),
        "postgres://warden:pw@db.example.com/warden?sslmode=require"
    );
    assert_eq!(
        config
            .identity_provider
            .oidc
            .as_ref()
            .unwrap()
            .client_secret
            .as_deref(),
        Some("oidc-secret")
    );
    assert_eq!(
        config.routes[1]
            .upstream_oauth2()
            .unwrap()
            .client_secret
            .as_deref(),
        Some("github-secret")
    );
    // The Deployment reads it where the ConfigMap is mounted.
    let deployment = one(&docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["--config", "/etc/warden/warden.yaml"])
    );
    let config_volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "warden-token-service-config")
        .unwrap();
    assert!(container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == config_volume["name"] && m["mountPath"] == "/etc/warden"));
}

#[test]
fn several_replicas_need_postgres() {
    let text = config_with(|v| {
        v["storage"] = serde_json::json!({"sqlite": "/data/warden.db"});
        v["kubernetes"]["secrets"]
            .as_object_mut()
            .unwrap()
            .remove("postgres_url");
        v["kubernetes"]["token_service"]["sqlite_claim"] = "warden-data".into();
    });
    let e = Config::from_yaml_without_secret_files(&text)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("kubernetes.token_service.replicas:"), "{e}");
    assert!(e.contains("storage.postgres"), "{e}");
    // `render` says so too (exit 2, naming the field).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, _, err) = run(&[
        "render",
        "--target",
        "kubernetes",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("kubernetes.token_service.replicas"), "{err}");
}

#[test]
fn one_sqlite_replica_keeps_its_database_on_the_claim() {
    let text = config_with(|v| {
        v["storage"] = serde_json::json!({"sqlite": "/data/warden.db"});
        let k = &mut v["kubernetes"];
        k["secrets"].as_object_mut().unwrap().remove("postgres_url");
        k["secrets"]
            .as_object_mut()
            .unwrap()
            .remove("encryption_key");
        k["token_service"]["replicas"] = 1.into();
        k["token_service"]["sqlite_claim"] = "warden-data".into();
        k["token_service"]
            .as_object_mut()
            .unwrap()
            .remove("min_available");
    });
    let docs = parse_docs(&render(&text, Target::Kubernetes).unwrap());
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    // Never two pods on one SQLite file.
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == "warden-data")
        .unwrap();
    assert!(pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == data["name"] && m["mountPath"] == "/var/lib/warden"));
    let pod_config: Value = serde_yaml::from_str(
        one(&docs, "ConfigMap")["data"]["warden.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pod_config["storage"]["sqlite"], "/var/lib/warden/warden.db");
    // One replica: a budget of 1 would block every drain.
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 0);
    // Without the claim, the field is named.
    let e = Config::from_yaml_without_secret_files(&text.replace("sqlite_claim: warden-data", ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("kubernetes.token_service.sqlite_claim"),
        "{e}"
    );
}

#[test]
fn the_pod_runs_locked_down_with_probes() {
    let docs = parse_docs(&render(&example(), Target::Kubernetes).unwrap());
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    // 5 s still serving while the endpoints drop the pod (preStop), the service's own drain
    // bound (20 s by default), then 10 s to exit.
    assert_eq!(
        pod["containers"][0]["lifecycle"]["preStop"],
        serde_json::json!({"sleep": {"seconds": 5}})
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 35);
    let longer = example().replace(
        "  internal_listen: 127.0.0.1:9101\n",
        "  internal_listen: 127.0.0.1:9101\n  shutdown_grace_seconds: 45\n",
    );
    let docs = parse_docs(&render(&longer, Target::Kubernetes).unwrap());
    assert_eq!(
        one(&docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        60
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "token-service");
    assert_eq!(
        c["image"],
        "registry.example.com/mcp-warden/token-service:0.1.0"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        serde_json::json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(
        c["ports"],
        serde_json::json!([
            {"name": "http", "containerPort": 9100, "protocol": "TCP"},
            {"name": "internal", "containerPort": 9101, "protocol": "TCP"},
        ])
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    // A read-only root still has a writable /tmp.
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/tmp"));
    let labels = serde_json::json!({
        "app.kubernetes.io/name": "warden-token-service",
        "app.kubernetes.io/instance": "warden-token-service",
    });
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    assert_eq!(one(&docs, "PodDisruptionBudget")["apiVersion"], "policy/v1");
    // Pinned by digest when given.
    let pinned = manifests(
        &example(),
        Target::Kubernetes,
        &Digests {
            filter: None,
            token_service: Some(FILTER_DIGEST.into()),
        },
    )
    .unwrap();
    let pinned = parse_docs(&pinned);
    assert_eq!(
        one(&pinned, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.example.com/mcp-warden/token-service:0.1.0@{FILTER_DIGEST}")
    );
}

#[test]
fn prometheus_finds_the_metrics_on_the_internal_port_unless_they_are_off() {
    let docs = parse_docs(&render(&example(), Target::Kubernetes).unwrap());
    let annotations = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9101");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The scraper is let in to the internal port beside the gateway.
    let scraper =
        serde_json::json!([{"namespace": "monitoring", "selector": {"app": "prometheus"}}]);
    let scraped = config_with(|v| v["kubernetes"]["metrics_scrapers"] = scraper.clone());
    let docs = parse_docs(&render(&scraped, Target::Kubernetes).unwrap());
    let from = &one(&docs, "NetworkPolicy")["spec"]["ingress"][1]["from"];
    assert_eq!(from.as_array().unwrap().len(), 2, "{from}");
    assert_eq!(
        from[1],
        serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        })
    );

    // Metrics off: no annotations, and no scraper let in.
    let off = config_with(|v| {
        v["telemetry"] = serde_json::json!({"metrics": false});
        v["kubernetes"]["metrics_scrapers"] = scraper.clone();
    });
    let docs = parse_docs(&render(&off, Target::Kubernetes).unwrap());
    let annotations = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations.get("prometheus.io/scrape").is_none(),
        "{annotations}"
    );
    assert!(annotations.get("mcp-warden.dev/config-sha256").is_some());
    let from = &one(&docs, "NetworkPolicy")["spec"]["ingress"][1]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1, "{from}");

    // A scraper's namespace must be one.
    let bad = config_with(|v| {
        v["kubernetes"]["metrics_scrapers"] = serde_json::json!([{"namespace": "Not A Namespace"}])
    });
    let e = render(&bad, Target::Kubernetes).unwrap_err();
    assert!(
        e.contains("kubernetes.metrics_scrapers[0].namespace"),
        "{e}"
    );
}

#[test]
fn only_the_gateway_reaches_the_internal_port() {
    let docs = parse_docs(&render(&example(), Target::Kubernetes).unwrap());
    let policy = one(&docs, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    // The public port from anywhere.
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": 9100, "protocol": "TCP"}])
    );
    assert!(ingress[0].get("from").is_none());
    // The internal one from the gateway's pods in the gateway's namespace only.
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": 9101, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[1]["from"],
        serde_json::json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
            "podSelector": {"matchLabels": {"istio": "ingressgateway"}},
        }])
    );
}

#[test]
fn service_entries_only_for_hosts_outside_the_cluster() {
    let docs = parse_docs(&render(&example(), Target::Istio).unwrap());
    let entries = all(&docs, "ServiceEntry");
    assert_eq!(entries.len(), 1);
    let spec = &entries[0]["spec"];
    assert_eq!(
        spec["hosts"],
        serde_json::json!(["github-mcp.partner.example.net"])
    );
    assert_eq!(spec["location"], "MESH_EXTERNAL");
    assert_eq!(spec["resolution"], "DNS");
    assert_eq!(spec["ports"][0]["number"], 80);
    // An address is no host Istio can make a cluster for.
    let text = config_with(|v| v["routes"][0]["to"] = "http://10.1.2.3:8080/mcp".into());
    let e = render(&text, Target::Istio).unwrap_err();
    assert!(e.starts_with("routes[0].to:"), "{e}");
    // Nor is a Service's short name an external host.
    for short in ["http://crm-mcp:8080/mcp", "http://crm-mcp.mcp.svc:8080/mcp"] {
        let text = config_with(|v| v["routes"][0]["to"] = short.into());
        let e = render(&text, Target::Istio).unwrap_err();
        assert!(
            e.starts_with("routes[0].to:") && e.contains("short Service name"),
            "{e}"
        );
    }
}

#[test]
fn the_kubernetes_target_routes_the_issuer_through_the_gateway_api() {
    let docs = parse_docs(&render(&example(), Target::Kubernetes).unwrap());
    let route = one(&docs, "HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(
        route["spec"]["hostnames"],
        serde_json::json!(["auth.example.com"])
    );
    assert_eq!(
        route["spec"]["parentRefs"],
        serde_json::json!([{"name": "mcp-gateway", "namespace": "istio-system"}])
    );
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"],
        serde_json::json!([{"name": "warden-token-service", "port": 80}])
    );
}

#[test]
fn the_gateway_serves_every_host_with_tls_where_https() {
    let docs = parse_docs(&render(&example(), Target::Istio).unwrap());
    let gateway = one(&docs, "Gateway");
    assert_eq!(gateway["metadata"]["name"], "mcp-gateway");
    assert_eq!(gateway["metadata"]["namespace"], "istio-system");
    let servers = gateway["spec"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["port"]["number"], 443);
    assert_eq!(
        servers[0]["tls"],
        serde_json::json!({"mode": "SIMPLE", "credentialName": "mcp-gateway-tls"})
    );
    assert_eq!(
        servers[0]["hosts"],
        serde_json::json!(["auth.example.com", "mcp.example.com", "chat.example.com"])
    );
    for vs in all(&docs, "VirtualService") {
        assert_eq!(
            vs["spec"]["gateways"],
            serde_json::json!(["istio-system/mcp-gateway"])
        );
        // No route timeout: Istio's default is none, and its validation refuses `0s`.
        for http in vs["spec"]["http"].as_array().unwrap() {
            assert!(http.get("timeout").is_none(), "{http}");
        }
    }
    // A root route on the issuer's host would hide the token service there.
    let text = config_with(|v| {
        v["routes"][2]["from"] = "https://auth.example.com".into();
    });
    let e = render(&text, Target::Istio).unwrap_err();
    assert!(e.starts_with("routes[2].prefix"), "{e}");
    // With a prefix it shares the host: the issuer's route comes last.
    let text = config_with(|v| {
        v["routes"][2]["from"] = "https://auth.example.com".into();
        v["routes"][2]["prefix"] = "/chat".into();
    });
    let shared = parse_docs(&render(&text, Target::Istio).unwrap());
    let vs = all(&shared, "VirtualService")
        .into_iter()
        .find(|v| v["spec"]["hosts"][0] == "auth.example.com")
        .unwrap();
    let names: Vec<&str> = vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "mcp-warden.token-service",
            "mcp-warden:chat",
            "mcp-warden:chat",
            "mcp-warden.issuer"
        ]
    );
    let text = config_with(|v| {
        v["kubernetes"]["gateway"]
            .as_object_mut()
            .unwrap()
            .remove("tls_secret");
    });
    let e = render(&text, Target::Istio).unwrap_err();
    assert!(e.starts_with("kubernetes.gateway.tls_secret"), "{e}");
}

#[test]
fn the_cli_needs_the_filter_digest_for_istio_and_checks_it() {
    let config = root().join("deploy/warden.yaml");
    let config = config.to_str().unwrap();
    let (code, out, err) = run(&["render", "--target", "istio", "--config", config]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty());
    assert!(err.contains("--filter-digest"), "{err}");
    assert!(
        err.contains("make images") && err.contains("target/images/filter.digest"),
        "{err}"
    );
    for bad in [
        "sha256:abc",
        "md5:0123456789abcdef0123456789abcdef",
        &FILTER_DIGEST.to_uppercase(),
    ] {
        let (code, _, err) = run(&[
            "render",
            "--target",
            "istio",
            "--config",
            config,
            "--filter-digest",
            bad,
        ]);
        assert_eq!(code, Some(2), "{bad}");
        assert!(err.contains("--filter-digest"), "{err}");
    }
    let (code, _, err) = run(&[
        "render",
        "--target",
        "kubernetes",
        "--config",
        config,
        "--token-service-digest",
        "latest",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--token-service-digest"), "{err}");
    // Without a `kubernetes:` block there is nothing to render from.
    let (code, _, err) = run(&["render", "--target", "kubernetes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("kubernetes: required"), "{err}");
    // `--target envoy` is `render-envoy`.
    let (_, envoy, _) = run(&["render-envoy"]);
    let (code, alias, _) = run(&["render", "--target", "envoy"]);
    assert_eq!(code, Some(0));
    assert_eq!(alias, envoy);
}

#[test]
fn the_render_reads_no_secret_file() {
    // deploy/warden.yaml names files that exist only in the pod: it renders, and the same
    // config is refused by the loader that reads them.
    let text = example();
    render(&text, Target::Istio).unwrap();
    let e = Config::from_yaml(&text).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
    // The rest is still validated.
    let bad = config_with(|v| v["routes"][0]["policy"] = Value::Null);
    let e = render(&bad, Target::Istio).unwrap_err();
    assert!(e.starts_with("routes[0].policy"), "{e}");
    let both = config_with(|v| v["storage"]["postgres"]["url"] = "postgres://db/w".into());
    let e = Config::from_yaml_without_secret_files(&both)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("storage.postgres.url_file"), "{e}");
}

// --- Istio's routing mirrors the Envoy bootstrap's ---

/// A config both renders load with `Config::from_yaml` (no secret file): two hosts, a root
/// route, nested prefixes, an upstream at a root path.
fn plain_config() -> String {
    r#"
authorization_server:
  issuer: https://auth.example.com
routes:
  - name: a
    from: https://mcp.example.com
    prefix: /a
    to: http://a.tools.svc.cluster.local:8080/mcp
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: a-deeper
    from: https://mcp.example.com
    prefix: /a/deeper
    to: http://deep.tools.svc.cluster.local/
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: app
    from: https://mcp.example.com
    prefix: /app
    to: http://app.example.net
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: root
    from: http://root.example.com
    to: http://root.tools.svc.cluster.local:9000/base
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: chat
    from: https://chat.example.com
    to: http://chat.apps.svc.cluster.local:3000
    mcp: {client: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
kubernetes:
  namespace: mcp
  images: {filter: registry.example.com/f, token_service: registry.example.com/t:1}
  token_service: {sqlite_claim: warden-data}
  gateway: {tls_secret: tls}
  secrets: {internal_credential: cred, session_key: session}
"#
    .to_string()
}

/// Where a request goes: (route name, upstream `host:port`, path upstream), or `None`
/// (no route: 404).
type Hop = Option<(String, String, String)>;

/// Envoy's choice for `path` on the virtual host serving `host`.
fn envoy_hop(bootstrap: &Value, host: &str, path: &str) -> Hop {
    let listener = &bootstrap["static_resources"]["listeners"][0];
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let vhost = hcm["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["domains"].as_array().unwrap().iter().any(|d| d == host))
        .unwrap_or_else(|| panic!("no virtual host for {host}"));
    for r in vhost["routes"].as_array().unwrap() {
        let m = &r["match"];
        let (matched, prefix) = if let Some(p) = m["path"].as_str() {
            (path == p, p)
        } else if let Some(p) = m["prefix"].as_str() {
            (path.starts_with(p), p)
        } else if let Some(p) = m["path_separated_prefix"].as_str() {
            (path == p || path.starts_with(&format!("{p}/")), p)
        } else {
            panic!("unknown match {m}")
        };
        if !matched {
            continue;
        }
        let action = r.get("route")?;
        let cluster = action["cluster"].as_str().unwrap();
        let upstream = if cluster == "warden_token_service" {
            "token-service".to_string()
        } else {
            let c = bootstrap["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == cluster)
                .unwrap();
            let a = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"];
            format!("{}:{}", a["address"].as_str().unwrap(), a["port_value"])
        };
        let rewritten = if let Some(to) = action["prefix_rewrite"].as_str() {
            format!("{to}{}", &path[prefix.len()..])
        } else if action.get("regex_rewrite").is_some() {
            // `^<prefix>/?` → `/`
            let rest = &path[prefix.len()..];
            format!("/{}", rest.strip_prefix('/').unwrap_or(rest))
        } else {
            path.to_string()
        };
        let name = r["name"].as_str().unwrap().to_string();
        return Some((name, upstream, rewritten));
    }
    None
}

/// Istio's choice for `path` on `host`, from the VirtualServices.
fn istio_hop(docs: &[Value], host: &str, path: &str) -> Hop {
    let vs = all(docs, "VirtualService")
        .into_iter()
        .find(|v| v["spec"]["hosts"][0] == host)
        .unwrap_or_else(|| panic!("no VirtualService for {host}"));
    for h in vs["spec"]["http"].as_array().unwrap() {
        for m in h["match"].as_array().unwrap() {
            let uri = &m["uri"];
            let (matched, matched_len) = if let Some(p) = uri["exact"].as_str() {
                (path == p, p.len())
            } else {
                let p = uri["prefix"].as_str().unwrap();
                (path.starts_with(p), p.len())
            };
            if !matched {
                continue;
            }
            let d = &h["route"][0]["destination"];
            let dest_host = d["host"].as_str().unwrap();
            let upstream = if dest_host == FQDN {
                assert_eq!(d["port"]["number"], 80);
                "token-service".to_string()
            } else {
                format!("{dest_host}:{}", d["port"]["number"])
            };
            let rewritten = match h["rewrite"]["uri"].as_str() {
                Some(to) => format!("{to}{}", &path[matched_len..]),
                None => path.to_string(),
            };
            if let Some(authority) = h["rewrite"]["authority"].as_str() {
                let expected = upstream.strip_suffix(":80").unwrap_or(&upstream);
                assert_eq!(authority, expected, "{h}");
            }
            assert_eq!(h["timeout"].as_str().unwrap_or("0s"), "0s");
            return Some((h["name"].as_str().unwrap().to_string(), upstream, rewritten));
        }
    }
    None
}

#[test]
fn istio_routes_requests_as_the_envoy_bootstrap_does() {
    let text = plain_config();
    let config = Config::from_yaml(&text).unwrap();
    let bootstrap = warden_token_service::render::render(
        &warden_token_service::render::EnvoyInput::from_config(&config, "f.wasm"),
    )
    .unwrap();
    let bootstrap: Value = serde_yaml::from_str(&bootstrap).unwrap();
    let docs = parse_docs(&render(&text, Target::Istio).unwrap());
    let paths = [
        "/",
        "/a",
        "/a/",
        "/a/x",
        "/ab",
        "/a/deeper",
        "/a/deeper/",
        "/a/deeper/x/y",
        "/a/deeperx",
        "/app",
        "/app/",
        "/app/z",
        "/base",
        "/x",
        "/.warden/mcp/routes",
        "/.pomerium/mcp/connect",
        "/.well-known/oauth-protected-resource/a",
    ];
    let mut compared = 0;
    for host in ["mcp.example.com", "root.example.com", "chat.example.com"] {
        for path in paths {
            let envoy = envoy_hop(&bootstrap, host, path);
            let istio = istio_hop(&docs, host, path);
            assert_eq!(istio, envoy, "{host}{path}");
            compared += usize::from(envoy.is_some());
        }
        // The route names come in the same order.
        let vhost_names: Vec<String> = bootstrap["static_resources"]["listeners"][0]
            ["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["domains"][0] == host)
            .unwrap()["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        let vs = all(&docs, "VirtualService")
            .into_iter()
            .find(|v| v["spec"]["hosts"][0] == host)
            .unwrap();
        let istio_names: Vec<String> = vs["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect();
        let dedup = |v: &[String]| {
            let mut v = v.to_vec();
            v.dedup();
            v
        };
        assert_eq!(dedup(&istio_names), dedup(&vhost_names), "{host}");
    }
    assert!(compared > 30, "{compared}");
    // The token service's paths on every routed host; the issuer's host to the token service.
    for vs in all(&docs, "VirtualService") {
        let http = vs["spec"]["http"].as_array().unwrap();
        if vs["spec"]["hosts"][0] == "auth.example.com" {
            assert_eq!(http.len(), 1);
            assert_eq!(http[0]["name"], "mcp-warden.issuer");
            assert_eq!(http[0]["route"][0]["destination"]["host"], FQDN);
        } else {
            assert_eq!(http[0]["name"], "mcp-warden.token-service");
        }
    }
    // Upstreams outside the cluster only: app.example.net.
    let entries = all(&docs, "ServiceEntry");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["spec"]["hosts"][0], "app.example.net");
    // http and https hosts on their ports.
    let servers = one(&docs, "Gateway")["spec"]["servers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(servers[0]["port"]["number"], 80);
    assert_eq!(servers[0]["hosts"], serde_json::json!(["root.example.com"]));
    assert_eq!(servers[1]["port"]["number"], 443);
}

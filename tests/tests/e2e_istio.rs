//! A pod of Istio's shape: the gateway's Envoy configured from the objects
//! `render --target istio` prints, as istiod would (`warden_e2e::istio`), with the filter pulled
//! from the image the `EnvoyFilter` names, and the token service started from the rendered
//! ConfigMap with the Secrets its Deployment mounts. A real MCP client signs in and calls
//! tools through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use warden_e2e::images;
use warden_e2e::istio::{outbound_cluster, GatewayPod, Objects};
use warden_e2e::*;

const NAMESPACE: &str = "mcp";
const TOKEN_SERVICE_HOST: &str = "warden-token-service.mcp.svc.cluster.local";
const UPSTREAM_HOST: &str = "demo-mcp.mcp.svc.cluster.local";
/// Where the rendered Deployment mounts its Secrets and volumes.
const SECRETS_MOUNT: &str = "/var/run/secrets/warden/";

fn gateway_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())])
}

/// The MCP host and the issuer's, both served by the gateway over HTTPS with a test CA's
/// certificate. The test's clients resolve them to the gateway's listener, as DNS would send
/// them to the ingress gateway.
const MCP_HOST: &str = "mcp.warden.test";
const ISSUER_HOST: &str = "auth.warden.test";
/// The TLS Secret of the gateway's HTTPS server.
const TLS_SECRET: &str = "mcp-gateway-tls";

/// One gateway at a time: the hosts' names lead to it (`resolve_to`, for the whole process).
static ONE_GATEWAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The operator's warden.yaml for a cluster.
fn cluster_config(mcp_host: &str, issuer_host: &str) -> Value {
    json!({
        "authorization_server": {
            "issuer": format!("https://{issuer_host}"),
            "listen": "127.0.0.1:9100",
            "internal_listen": "127.0.0.1:9101",
        },
        "storage": { "sqlite": "/var/lib/warden/warden.db" },
        "identity_provider": { "local": { "users": [{
            "email": DEMO_EMAIL,
            "name": DEMO_NAME,
            "password_hash": password_hash(DEMO_PASSWORD),
            "groups": ["demo"],
        }] } },
        "routes": [{
            "name": "demo",
            "from": format!("https://{mcp_host}"),
            "prefix": "/demo",
            "to": format!("http://{UPSTREAM_HOST}:8080/mcp"),
            "pass_identity_headers": true,
            "mcp": { "server": {} },
            "policy": [
                { "allow": { "and": [{ "authenticated_user": true }] } },
                { "deny": { "or": [{ "mcp_tool": { "is": "add" } }] } },
            ],
        }],
        "kubernetes": {
            "namespace": NAMESPACE,
            "images": {
                "filter": "registry.example.com/mcp-warden/filter",
                "token_service": "registry.example.com/mcp-warden/token-service:0.1.0",
            },
            "token_service": { "replicas": 1, "sqlite_claim": "warden-data" },
            "gateway": {
                "namespace": "istio-system",
                "name": "mcp-gateway",
                "selector": { "istio": "ingressgateway" },
                "tls_secret": TLS_SECRET,
            },
            "secrets": {
                "encryption_key": "warden-encryption-key",
                "internal_credential": "warden-internal-credential",
                "session_key": "warden-session-key",
            },
        },
    })
}

/// The Wasm filter's configuration in the rendered `EnvoyFilter`'s `EXTENSION_CONFIG`.
fn extension_config(objects: &Objects) -> Value {
    let filter = objects.one("EnvoyFilter");
    filter["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap_or_else(|| panic!("no EXTENSION_CONFIG patch: {filter}"))["patch"]["value"]
        ["typed_config"]["config"]
        .clone()
}

/// A test CA (trusted by this process's clients from now on) and the gateway's certificate for
/// both hosts: (certificate, key) files.
fn gateway_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = warden_e2e::tls::test_certificate(
        dir,
        "gateway",
        &[&format!("DNS:{MCP_HOST}"), &format!("DNS:{ISSUER_HOST}")],
    );
    trust_ca(&std::fs::read(&made.ca).unwrap());
    (made.cert, made.key)
}

async fn render_istio(config: &Path, filter_digest: &str) -> String {
    let out = tokio::process::Command::new(Binaries::token_service())
        .args(["render", "--target", "istio", "--config"])
        .arg(config)
        .args(["--filter-digest", filter_digest])
        .output()
        .await
        .expect("run render");
    assert!(
        out.status.success(),
        "render --target istio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 render")
}

/// The mount paths (`mountPath` → what is mounted there) of the token service's container.
fn mounts(deployment: &Value) -> BTreeMap<String, Value> {
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or_default(), v))
        .collect();
    let mut out = BTreeMap::new();
    for m in pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let volume = volumes
            .get(m["name"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("volumeMount {m} names no volume"));
        out.insert(
            m["mountPath"].as_str().expect("mountPath").to_owned(),
            (*volume).clone(),
        );
    }
    out
}

/// A random 32-byte secret as the token service's files hold it (base64url).
fn secret_value() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("random");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts the token service the way the rendered Deployment runs it: the ConfigMap's
/// warden.yaml, the Secrets at the paths it reads, its volumes under `pod`. Only the
/// addresses change: the pod's listeners (0.0.0.0) become free 127.0.0.1 ports.
/// Returns the process, the container port → local address map and the Secrets' values.
fn start_token_service(
    objects: &Objects,
    pod: &Path,
) -> (Proc, BTreeMap<u64, SocketAddr>, BTreeMap<String, String>) {
    let deployment = objects.one("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("container args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["--config", "/etc/warden/warden.yaml"], "{container}");
    let mounts = mounts(deployment);
    let config_map = objects.one("ConfigMap");
    assert_eq!(
        mounts["/etc/warden"]["configMap"]["name"], config_map["metadata"]["name"],
        "the ConfigMap is mounted at /etc/warden"
    );
    let mut config = config_map["data"]["warden.yaml"]
        .as_str()
        .expect("ConfigMap data warden.yaml")
        .to_owned();

    // Every Secret file the config reads must be in a Secret the Deployment mounts.
    let mut secrets = BTreeMap::new();
    for word in config.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        let Some(rest) = word.strip_prefix(SECRETS_MOUNT) else {
            continue;
        };
        let (secret, _key) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("{word}: not <secret>/<key>"));
        let mount = format!("{SECRETS_MOUNT}{secret}");
        assert_eq!(
            mounts
                .get(&mount)
                .unwrap_or_else(|| panic!("{word} is read but {mount} is not mounted"))["secret"]
                ["secretName"],
            secret,
            "{mount}"
        );
        let file = pod.join(word.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("secret dir");
        let value = secret_value();
        std::fs::write(&file, &value).expect("write secret");
        secrets.insert(secret.to_owned(), value);
    }
    // The volumes (the SQLite claim, /tmp) live under the pod's directory.
    for (path, volume) in &mounts {
        if volume.get("persistentVolumeClaim").is_some() || volume.get("emptyDir").is_some() {
            std::fs::create_dir_all(pod.join(path.trim_start_matches('/'))).expect("volume");
            config = config.replace(
                &format!("{path}/"),
                &format!("{}/", pod.join(path.trim_start_matches('/')).display()),
            );
        }
    }
    config = config.replace(
        SECRETS_MOUNT,
        &format!("{}/", pod.join(SECRETS_MOUNT.trim_matches('/')).display()),
    );
    let mut ports = BTreeMap::new();
    for p in container["ports"].as_array().expect("container ports") {
        let port = p["containerPort"].as_u64().expect("containerPort");
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let bound = format!("0.0.0.0:{port}");
        assert!(
            config.contains(&bound),
            "the pod listens on {bound}:\n{config}"
        );
        config = config.replace(&bound, &local.to_string());
        ports.insert(port, local);
    }
    let path = pod.join("warden.yaml");
    std::fs::write(&path, &config).expect("write config");
    let process = Proc::spawn(
        "token-service",
        pod,
        &Binaries::token_service(),
        &["serve".into(), "--config".into(), path.into()],
        &[],
    );
    (process, ports, secrets)
}

/// The rendered objects running: the token service as its Deployment says, the gateway pod
/// as istiod would configure it.
struct IstioPods {
    mcp_url: String,
    demo: DemoServer,
    _token_service: Proc,
    _envoy: Proc,
    _dir: tempfile::TempDir,
}

/// Renders the cluster config, starts the token service and the gateway. `adjust` may change
/// the rendered objects first (as an operator's edit would).
async fn start_pods(adjust: impl FnOnce(&mut Objects)) -> IstioPods {
    let dir = tempfile::Builder::new()
        .prefix("warden-istio-")
        .tempdir()
        .expect("temp dir");
    let gateway_port = free_port();
    let admin_port = free_port();
    // The server accepts the Host the VirtualService rewrites to, as a real one in the cluster.
    let demo =
        DemoServer::start_with(dir.path(), free_port(), &["--allowed-host", UPSTREAM_HOST]).await;
    let config_path = dir.path().join("warden.yaml");
    write_yaml(&config_path, &cluster_config(MCP_HOST, ISSUER_HOST));

    // The filter image `make images` wrote: the render pins it, the agent pulls it.
    let digest = images::digest_file(&images::images_dir(), "filter");
    let mut objects = Objects::parse(&render_istio(&config_path, &digest).await);

    // The filter, pulled by digest, finds the token service under the names Istio gives its
    // Service's ports.
    let wasm_config = extension_config(&objects);
    assert_eq!(
        wasm_config["vm_config"]["code"]["remote"]["http_uri"]["uri"],
        format!("oci://registry.example.com/mcp-warden/filter@{digest}")
    );
    let plugin_config: Value = serde_json::from_str(
        wasm_config["configuration"]["value"]
            .as_str()
            .expect("the plugin configuration, a JSON StringValue"),
    )
    .expect("plugin configuration JSON");
    assert_eq!(
        plugin_config["jwks"]["cluster"],
        outbound_cluster(80, TOKEN_SERVICE_HOST)
    );
    assert_eq!(
        plugin_config["token_service"]["cluster"],
        outbound_cluster(9101, TOKEN_SERVICE_HOST)
    );

    adjust(&mut objects);

    let pod = dir.path().join("token-service-pod");
    let (mut token_service, container_ports, secrets) = start_token_service(&objects, &pod);
    token_service
        .wait_http_ok(&format!("http://{}/readyz", container_ports[&9100]))
        .await;

    let mut endpoints = GatewayPod::service_endpoints(&objects, "cluster.local", &container_ports);
    endpoints.insert(
        (UPSTREAM_HOST.to_owned(), 8080),
        demo.url()
            .trim_start_matches("http://")
            .parse()
            .expect("demo address"),
    );
    let gateway = GatewayPod {
        objects: &objects,
        cluster_domain: "cluster.local",
        listeners: BTreeMap::from([(443, format!("127.0.0.1:{gateway_port}").parse().unwrap())]),
        tls_secrets: BTreeMap::from([(TLS_SECRET.to_owned(), gateway_certificate(dir.path()))]),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        pull: &|uri: &str| images::pull_filter(uri, dir.path()),
    };
    let bootstrap = gateway.bootstrap(&gateway_labels(), &endpoints);
    let bootstrap_path = dir.path().join("gateway.json");
    std::fs::write(
        &bootstrap_path,
        serde_json::to_vec_pretty(&bootstrap).unwrap(),
    )
    .unwrap();

    // The gateway pod's environment (the Wasm VM's `host_env_keys`), from the Secrets.
    let session_key = secret_value();
    let credential = secrets
        .get("warden-internal-credential")
        .expect("the internal credential Secret is read by the token service")
        .clone();
    let mut envoy = spawn_envoy_with(
        dir.path(),
        "gateway",
        &bootstrap_path,
        admin_port,
        2,
        &[
            ("MCP_WARDEN_SESSION_KEY", session_key.as_str()),
            ("MCP_WARDEN_INTERNAL_CREDENTIAL", credential.as_str()),
        ],
    );
    match envoy_outcome(&mut envoy, admin_port, std::time::Duration::from_secs(30)).await {
        EnvoyOutcome::Ready => {}
        other => envoy.fail(&format!("did not become ready: {other:?}")),
    }
    // The test's DNS: the issuer's and the MCP host's names lead to the gateway.
    let gateway_addr: SocketAddr = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    resolve_to(MCP_HOST, gateway_addr);
    resolve_to(ISSUER_HOST, gateway_addr);
    IstioPods {
        mcp_url: format!("https://{MCP_HOST}/demo"),
        demo,
        _token_service: token_service,
        _envoy: envoy,
        _dir: dir,
    }
}

/// A `2026-07-28` `tools/call` of `echo` with a bearer token, through the gateway.
fn echo_call(url: &str, token: &str) -> reqwest::RequestBuilder {
    http_client()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .json(&stateless_body(
            1,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_signs_in_and_calls_tools_through_a_gateway_configured_as_istio_would() {
    let _one = ONE_GATEWAY.lock().await;
    let pods = start_pods(|_| {}).await;
    let demo = &pods.demo;

    // Sign-in: discovery on the MCP host, the authorization server on the issuer's host, both
    // through the gateway.
    let mcp_url = pods.mcp_url.clone();
    let signed = sign_in(&mcp_url).await;
    demo.clear_recorded().await;
    let client = connect(&mcp_url, &Era::Stateless, ClientAuth::OAuth(signed.manager)).await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "through istio"})).await,
        "through istio"
    );
    let me = whoami(&client).await;
    assert_eq!(
        me["path"], "/mcp",
        "rewritten as the VirtualService says: {me}"
    );
    assert!(me["headers"].get("authorization").is_none(), "{me}");
    assert!(
        me["headers"].get("x-warden-jwt-assertion").is_some(),
        "the identity assertion, from the token service's internal port: {me}"
    );
    // The policy's deny, decided by the filter in the gateway.
    let denied = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("add")
                .with_arguments(json!({"a": 1, "b": 2}).as_object().unwrap().clone()),
        )
        .await;
    let denied_text = format!("{denied:?}");
    assert!(
        denied.is_err() || denied.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "tools/call add is denied: {denied_text}"
    );
    client.cancel().await.unwrap();
    let recorded = demo.recorded().await;
    assert!(
        !recorded
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains("\"add\""))),
        "the denied call never reached the server: {recorded:?}"
    );
}

/// Why the render writes an EnvoyFilter: the same pod with the Wasm configuration a WasmPlugin
/// gets (no `allow_on_headers_stop_iteration`) never hands the filter a POST's body, so a tool
/// call waits until a timeout while reads without a body go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allow_on_headers_stop_iteration_a_tool_call_stalls() {
    let _one = ONE_GATEWAY.lock().await;
    let pods = start_pods(|objects| {
        for o in objects.0.iter_mut().filter(|o| o["kind"] == "EnvoyFilter") {
            for patch in o["spec"]["configPatches"].as_array_mut().unwrap() {
                if patch["applyTo"] == "EXTENSION_CONFIG" {
                    let config = patch["patch"]["value"]["typed_config"]["config"]
                        .as_object_mut()
                        .unwrap();
                    assert!(config.remove("allow_on_headers_stop_iteration").is_some());
                }
            }
        }
    })
    .await;
    let mcp_url = pods.mcp_url.clone();
    let signed = sign_in(&mcp_url).await;
    let call = echo_call(&mcp_url, &signed.access_token)
        .timeout(std::time::Duration::from_secs(4))
        .send()
        .await;
    assert!(
        call.as_ref().is_err_and(|e| e.is_timeout()),
        "the call stalls without the option: {call:?}"
    );
    pods.demo
        .assert_nothing_recorded("a call whose body the filter never saw")
        .await;
}

/// Istio's routing decision is the filter's (`xds.route_name`, the VirtualService http route's
/// name): a request Istio routes to an MCP route the filter does not know is refused, even where
/// the filter's own URL matching would find `demo`. Only the route below `/demo/` is renamed, so
/// the sign-in and a call on `/demo` itself show the same token passes where the name is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_route_decides_even_where_the_url_names_a_known_route() {
    let _one = ONE_GATEWAY.lock().await;
    let pods = start_pods(|objects| {
        let mut renamed = 0;
        for o in objects
            .0
            .iter_mut()
            .filter(|o| o["kind"] == "VirtualService")
        {
            for http in o["spec"]["http"].as_array_mut().unwrap() {
                let below_demo = http["match"][0]["uri"]["prefix"] == "/demo/";
                if http["name"] == "mcp-warden:demo" && below_demo {
                    http["name"] = json!("mcp-warden:renamed");
                    renamed += 1;
                }
            }
        }
        assert_eq!(
            renamed, 1,
            "the rendered VirtualService routes /demo/ as demo"
        );
    })
    .await;
    let signed = sign_in(&pods.mcp_url).await;
    let call = |url: String| {
        let token = signed.access_token.clone();
        async move {
            let resp = echo_call(&url, &token)
                .send()
                .await
                .expect("the gateway answers");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = call(pods.mcp_url.clone()).await;
    assert_eq!(status, 200, "the route Istio names demo passes: {body}");

    pods.demo.clear_recorded().await;
    let (status, body) = call(format!("{}/", pods.mcp_url)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("does not know"),
        "refused as a route the filter does not know: {body}"
    );
    pods.demo
        .assert_nothing_recorded("a route the filter does not know")
        .await;
}

//! Discovered upstream OAuth (`upstream_oauth2.discover`): the config's shapes, discovery
//! against a real HTTP upstream and authorization server of the test's own, the client
//! identity choice on what was discovered, and the gateway's client metadata document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::*;
use warden_token_service::config_upstream_discovery::UpstreamDiscoveryConfig;
use warden_token_service::outbound::Outbound;
use warden_token_service::upstream_discovery::documents::{
    choose_client_identity, client_document_url, ClientIdentity,
};
use warden_token_service::upstream_discovery::{Discoverer, Step};
use warden_token_service::Config;

// ---------------------------------------------------------------- the upstream's side

/// What the test's upstream and its authorization servers publish; changed by the tests.
#[derive(Clone)]
struct Scenario {
    /// The protected resource metadata at its well-known URL; `false`: only via the `401`.
    well_known: bool,
    /// The `resource` the metadata states; `None`: the upstream's own URL.
    resource: Option<String>,
    /// The authorization servers it names, as paths under the server (`/as1`).
    servers: Vec<&'static str>,
    /// `Cache-Control` of the protected resource metadata.
    cache_control: Option<String>,
    s256: bool,
    cimd: bool,
    dcr: bool,
    /// Metadata larger than discovery reads.
    oversized: bool,
    /// Answers this late.
    delay: Duration,
    /// AS metadata only at OpenID Connect's URL.
    oidc_only: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            well_known: true,
            resource: None,
            servers: vec!["/as1"],
            cache_control: None,
            s256: true,
            cimd: false,
            dcr: true,
            oversized: false,
            delay: Duration::ZERO,
            oidc_only: false,
        }
    }
}

#[derive(Clone)]
struct Upstream {
    base: Arc<std::sync::OnceLock<String>>,
    scenario: Arc<Mutex<Scenario>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn new() -> Self {
        Upstream {
            base: Arc::default(),
            scenario: Arc::new(Mutex::new(Scenario::default())),
            hits: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn serve() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self::new();
        up.base
            .set(format!("http://{}", listener.local_addr().unwrap()))
            .unwrap();
        let app = axum::Router::new().fallback(answer).with_state(up.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        up
    }

    /// Over HTTPS with a test CA: the upstream and its servers, and the CA's file.
    async fn serve_https(dir: &std::path::Path) -> (Self, std::path::PathBuf) {
        let up = Self::new();
        let app = axum::Router::new().fallback(answer).with_state(up.clone());
        let (addr, ca) = common::tls::serve(app, dir).await;
        up.base.set(format!("https://{addr}")).unwrap();
        (up, ca)
    }

    fn base(&self) -> String {
        self.base.get().cloned().unwrap_or_default()
    }

    fn to(&self) -> String {
        format!("{}/mcp", self.base())
    }

    fn issuer(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn set(&self, f: impl FnOnce(&mut Scenario)) {
        f(&mut self.scenario.lock().unwrap());
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

fn json(v: serde_json::Value, cache_control: Option<&str>) -> Response {
    let mut r = axum::Json(v).into_response();
    if let Some(c) = cache_control {
        r.headers_mut()
            .insert(header::CACHE_CONTROL, c.parse().unwrap());
    }
    r
}

async fn answer(State(up): State<Upstream>, method: Method, uri: Uri) -> Response {
    let s = up.scenario.lock().unwrap().clone();
    up.hits
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    tokio::time::sleep(s.delay).await;
    let prm = || {
        let mut v = serde_json::json!({
            "resource": s.resource.clone().unwrap_or_else(|| up.to()),
            "authorization_servers": s.servers.iter().map(|p| up.issuer(p)).collect::<Vec<_>>(),
            "scopes_supported": ["read", "write"],
        });
        if s.oversized {
            v["padding"] = "x".repeat(70 * 1024).into();
        }
        json(v, s.cache_control.as_deref())
    };
    let path = uri.path();
    match (method.as_str(), path) {
        ("GET", "/.well-known/oauth-protected-resource/mcp") if s.well_known => prm(),
        ("GET", "/elsewhere/prm") => prm(),
        ("POST", "/mcp") => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(
                    r#"Bearer error="invalid_token", resource_metadata="{}/elsewhere/prm""#,
                    up.base()
                ),
            )],
        )
            .into_response(),
        ("GET", p) if p.ends_with("/as4") || p.starts_with("/as4/") => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("{}/.well-known/oauth-authorization-server/as1", up.base()),
            )],
        )
            .into_response(),
        ("GET", p) => {
            let as_path = if let Some(a) = p.strip_prefix("/.well-known/oauth-authorization-server")
            {
                (!s.oidc_only).then_some(a)
            } else {
                p.strip_suffix("/.well-known/openid-configuration")
            };
            let Some(a) = as_path.filter(|a| ["/as1", "/as2", "/as3"].contains(a)) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let iss = up.issuer(a);
            let mut v = serde_json::json!({
                "issuer": iss,
                "authorization_endpoint": format!("{iss}/authorize"),
                "token_endpoint": format!("{iss}/token"),
                "code_challenge_methods_supported": if s.s256 { vec!["S256"] } else { vec!["plain"] },
                "client_id_metadata_document_supported": s.cimd,
            });
            if s.dcr {
                v["registration_endpoint"] = format!("{iss}/register").into();
            }
            json(v, None)
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn discoverer(
    up: &Upstream,
    allowed: &[&str],
    cache_seconds: u64,
    timeout: Duration,
) -> Discoverer {
    let config = UpstreamDiscoveryConfig {
        allowed_authorization_servers: allowed.iter().map(|p| up.issuer(p)).collect(),
        cache_seconds,
    };
    Discoverer::new(&Outbound::default(), config, timeout).unwrap()
}

const NOW: i64 = 1_900_000_000;
const CALLBACK: &str = "https://gw.example/upstream/callback";
const DOCUMENT: &str = "https://gw.example/.well-known/warden-client.json";

// ---------------------------------------------------------------- discovery

#[tokio::test]
async fn discovery_finds_the_allowed_authorization_server_from_the_configured_upstream() {
    let up = Upstream::serve().await;
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let found = d.discover("tracker", &up.to(), NOW).await.unwrap();
    assert_eq!(found.resource, up.to());
    assert_eq!(found.authorization_server.issuer, up.issuer("/as1"));
    assert_eq!(
        found.authorization_server.token_endpoint,
        format!("{}/as1/token", up.base())
    );
    assert_eq!(found.protected_resource.scopes_supported, ["read", "write"]);
    assert_eq!(found.expires_at, NOW + 3600);
    assert_eq!(
        up.hits(),
        [
            "GET /.well-known/oauth-protected-resource/mcp",
            "GET /.well-known/oauth-authorization-server/as1",
        ]
    );
    // Cached: nothing is fetched again.
    d.discover("tracker", &up.to(), NOW + 10).await.unwrap();
    assert_eq!(up.hits().len(), 2);
}

#[tokio::test]
async fn without_the_well_known_document_the_401_challenge_names_it() {
    let up = Upstream::serve().await;
    up.set(|s| s.well_known = false);
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let found = d.discover("tracker", &up.to(), NOW).await.unwrap();
    assert_eq!(found.authorization_server.issuer, up.issuer("/as1"));
    assert_eq!(
        up.hits()[..3],
        [
            "GET /.well-known/oauth-protected-resource/mcp",
            "POST /mcp",
            "GET /elsewhere/prm",
        ]
    );
}

#[tokio::test]
async fn the_openid_configuration_is_the_fallback() {
    let up = Upstream::serve().await;
    up.set(|s| s.oidc_only = true);
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let found = d.discover("tracker", &up.to(), NOW).await.unwrap();
    assert_eq!(found.authorization_server.issuer, up.issuer("/as1"));
}

#[tokio::test]
async fn a_resource_that_is_not_the_upstream_is_refused() {
    let up = Upstream::serve().await;
    up.set(|s| s.resource = Some("https://other.example/mcp".into()));
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::ProtectedResource);
    let text = e.to_string();
    assert!(
        text.contains("route tracker") && text.contains("https://other.example/mcp"),
        "{text}"
    );
    // A trailing slash is the same resource.
    up.set(|s| s.resource = Some(format!("{}/", up.to())));
    assert!(d.discover("tracker", &up.to(), NOW).await.is_ok());
}

#[tokio::test]
async fn an_authorization_server_outside_the_allowlist_is_refused() {
    let up = Upstream::serve().await;
    up.set(|s| s.servers = vec!["/as2"]);
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::ProtectedResource);
    assert!(e.reason.contains("allowed_authorization_servers"), "{e}");
    // Its metadata was never fetched.
    assert!(
        !up.hits().iter().any(|h| h.contains("as2")),
        "{:?}",
        up.hits()
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let up = Upstream::serve().await;
    up.set(|s| s.servers = vec!["/as4"]);
    let d = discoverer(&up, &["/as4"], 3600, Duration::from_secs(5));
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::AuthorizationServer);
    assert!(e.reason.contains("HTTP 302"), "{e}");
    assert!(
        !up.hits().iter().any(|h| h.ends_with("/as1")),
        "{:?}",
        up.hits()
    );
}

#[tokio::test]
async fn an_authorization_server_without_s256_is_refused() {
    let up = Upstream::serve().await;
    up.set(|s| s.s256 = false);
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_secs(5));
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::AuthorizationServer);
    assert!(e.reason.contains("S256"), "{e}");
}

#[tokio::test]
async fn oversized_and_slow_documents_are_refused() {
    let up = Upstream::serve().await;
    up.set(|s| s.oversized = true);
    let d = discoverer(&up, &["/as1"], 3600, Duration::from_millis(500));
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::ProtectedResource);
    assert!(e.reason.contains("65536 bytes"), "{e}");
    up.set(|s| {
        s.oversized = false;
        s.delay = Duration::from_secs(2);
    });
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::ProtectedResource);
    assert!(e.reason.contains("timed out"), "{e}");
}

#[tokio::test]
async fn an_expired_result_is_discovered_again_and_finds_a_rotated_server() {
    let up = Upstream::serve().await;
    up.set(|s| s.cache_control = Some("max-age=60".into()));
    let d = discoverer(&up, &["/as1", "/as2"], 3600, Duration::from_secs(5));
    let first = d.discover("tracker", &up.to(), NOW).await.unwrap();
    // A shorter max-age wins over cache_seconds.
    assert_eq!(first.expires_at, NOW + 60);
    up.set(|s| s.servers = vec!["/as2"]);
    let still = d.discover("tracker", &up.to(), NOW + 59).await.unwrap();
    assert_eq!(still.authorization_server.issuer, up.issuer("/as1"));
    let rotated = d.discover("tracker", &up.to(), NOW + 60).await.unwrap();
    assert_eq!(rotated.authorization_server.issuer, up.issuer("/as2"));
    // A failure to discover again is an error, never the stale result.
    up.set(|s| s.servers = vec!["/as3"]);
    let e = d
        .discover("tracker", &up.to(), NOW + 200)
        .await
        .unwrap_err();
    assert!(e.reason.contains("allowed_authorization_servers"), "{e}");
}

#[tokio::test]
async fn the_client_identity_follows_what_the_server_supports() {
    let up = Upstream::serve().await;
    let d = discoverer(&up, &["/as1"], 1, Duration::from_secs(5));
    let mut at = NOW;
    let mut server = || {
        at += 10;
        let d = &d;
        let up = up.clone();
        async move {
            d.discover("tracker", &up.to(), at)
                .await
                .unwrap()
                .authorization_server
                .clone()
        }
    };
    up.set(|s| s.cimd = true);
    let s = server().await;
    assert_eq!(
        choose_client_identity(Some("pre"), &s, DOCUMENT, CALLBACK),
        Ok(ClientIdentity::Configured("pre".into()))
    );
    assert_eq!(
        choose_client_identity(None, &s, DOCUMENT, CALLBACK),
        Ok(ClientIdentity::MetadataDocument(DOCUMENT.into()))
    );
    up.set(|s| s.cimd = false);
    let s = server().await;
    assert_eq!(
        choose_client_identity(None, &s, DOCUMENT, CALLBACK),
        Ok(ClientIdentity::Register(format!(
            "{}/as1/register",
            up.base()
        )))
    );
    up.set(|s| s.dcr = false);
    let s = server().await;
    let e = choose_client_identity(None, &s, DOCUMENT, CALLBACK).unwrap_err();
    assert!(
        e.contains("pre-register") || e.contains("register a client"),
        "{e}"
    );
    assert!(e.contains(CALLBACK), "{e}");
}

#[tokio::test]
async fn discovery_over_https_trusts_the_extra_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (up, ca) = Upstream::serve_https(dir.path()).await;
    assert!(up.to().starts_with("https://"));
    let config = UpstreamDiscoveryConfig {
        allowed_authorization_servers: vec![up.issuer("/as1")],
        cache_seconds: 3600,
    };
    let with_ca = Outbound::load(&warden_token_service::outbound::OutboundConfig {
        extra_ca_file: Some(ca),
    })
    .unwrap();
    let d = Discoverer::new(&with_ca, config.clone(), Duration::from_secs(5)).unwrap();
    let found = d.discover("tracker", &up.to(), NOW).await.unwrap();
    assert_eq!(found.authorization_server.issuer, up.issuer("/as1"));
    // Without the CA the upstream's certificate is not trusted.
    let d = Discoverer::new(&Outbound::default(), config, Duration::from_secs(5)).unwrap();
    let e = d.discover("tracker", &up.to(), NOW).await.unwrap_err();
    assert_eq!(e.step, Step::ProtectedResource);
    assert!(e.reason.contains("no answer"), "{e}");
}

// ---------------------------------------------------------------- the configuration

fn discover_route(extra: &str) -> String {
    format!(
        r#"  - name: tracker
    from: http://127.0.0.1:9000
    prefix: /tracker
    to: http://127.0.0.1:9201/mcp
    mcp:
      server:
        upstream_oauth2:
          discover: true
          scopes: [read]
{extra}    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#
    )
}

const DISCOVERY_BLOCK: &str =
    "upstream_discovery:\n  allowed_authorization_servers: [https://auth.tracker.example]\n";

fn load(dir: &std::path::Path, routes: &str) -> Result<Config, String> {
    Config::from_yaml(&config_yaml(dir, routes, "ES256")).map_err(|e| e.to_string())
}

#[test]
fn a_discovering_route_loads_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let c = load(
        dir.path(),
        &format!("{}{DISCOVERY_BLOCK}", discover_route("")),
    )
    .unwrap();
    let r = c.routes.iter().find(|r| r.name == "tracker").unwrap();
    assert!(r.upstream_oauth2().is_none());
    let d = r.discovered_upstream_oauth2().unwrap();
    assert_eq!(d.scopes, ["read"]);
    assert_eq!(d.client_id, None);
    assert!(c.uses_upstream_discovery());
    assert_eq!(c.upstream_discovery.as_ref().unwrap().cache_seconds, 3600);
    let input = warden_token_service::render::EnvoyInput::from_config(&c, "f.wasm");
    warden_token_service::render::render(&input).unwrap();
}

#[test]
fn check_config_and_the_kubernetes_render_accept_a_discovering_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warden.yaml");
    let yaml = config_yaml(
        dir.path(),
        &format!("{}{DISCOVERY_BLOCK}", discover_route("")),
        "ES256",
    );
    std::fs::write(&file, &yaml).unwrap();
    let check = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
            .arg("check-config")
            .arg("--config")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = check(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, yaml.replace(DISCOVERY_BLOCK, "")).unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream_discovery: required"), "{stderr}");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut v: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("deploy/warden.yaml")).unwrap())
            .unwrap();
    v["routes"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "tracker",
        "from": "https://mcp.example.com",
        "prefix": "/tracker",
        "to": "http://tracker-mcp.tools.svc.cluster.local:8080/mcp",
        "mcp": {"server": {"upstream_oauth2": {"discover": true}}},
        "policy": {"allow": {"and": [{"authenticated_user": true}]}},
    }));
    v["upstream_discovery"] =
        serde_json::json!({"allowed_authorization_servers": ["https://auth.tracker.example"]});
    let text = serde_yaml::to_string(&v).unwrap();
    let digests = warden_token_service::render::Digests {
        filter: Some(
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        ),
        token_service: None,
    };
    for target in [
        warden_token_service::render::Target::Kubernetes,
        warden_token_service::render::Target::Istio,
    ] {
        let out = warden_token_service::render::manifests(&text, target, &digests).unwrap();
        assert!(out.contains("discover: true"), "{out}");
    }
}

#[test]
fn discovery_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let at = "routes[1].mcp.server.upstream_oauth2";
    let cases = [
        (
            format!(
                "{}{DISCOVERY_BLOCK}",
                discover_route("          endpoint: {auth_url: https://a.example/a, token_url: https://a.example/t}\n")
            ),
            at.to_owned(),
            "endpoint: not with discover",
        ),
        (
            format!(
                "{}{DISCOVERY_BLOCK}",
                discover_route("          client_secret: s\n")
            ),
            at.to_owned(),
            "client_secret: not with discover",
        ),
        (
            format!("{}{DISCOVERY_BLOCK}", discover_route("          client_id: ''\n")),
            format!("{at}.client_id"),
            "must not be empty",
        ),
        (
            discover_route(""),
            "upstream_discovery".to_owned(),
            "required",
        ),
        (
            format!(
                "{}upstream_discovery:\n  allowed_authorization_servers: []\n",
                discover_route("")
            ),
            "upstream_discovery.allowed_authorization_servers".to_owned(),
            "at least one",
        ),
        (
            format!(
                "{}upstream_discovery:\n  allowed_authorization_servers: [http://auth.example]\n",
                discover_route("")
            ),
            "upstream_discovery.allowed_authorization_servers[0]".to_owned(),
            "https",
        ),
        (
            format!(
                "{}{DISCOVERY_BLOCK}  cache_seconds: 0\n",
                discover_route("")
            ),
            "upstream_discovery.cache_seconds".to_owned(),
            "between",
        ),
        (
            discover_route("").replace("discover: true", "discover: false"),
            at.to_owned(),
            "client_id: missing",
        ),
    ];
    for (yaml, field, message) in cases {
        let e = load(dir.path(), &yaml).expect_err(&yaml);
        assert!(e.starts_with(&field), "{field}: {e}");
        assert!(e.contains(message), "{message}: {e}");
    }
}

/// The vault of a service whose `tracker` route discovers at `up` (the allowed servers
/// `/as1` and `/as2`).
fn discovering_service(up: &Upstream) -> TestEnv {
    let to = up.to();
    let allowed = format!("[{}, {}]", up.issuer("/as1"), up.issuer("/as2"));
    TestEnv::with(|dir| {
        let route = discover_route("").replace("http://127.0.0.1:9201/mcp", &to);
        let block = DISCOVERY_BLOCK.replace("[https://auth.tracker.example]", &allowed);
        config_yaml(dir, &format!("{route}{block}"), "ES256")
    })
}

/// The query of the authorization URL the route's provider sends users to.
fn consent_query(env: &TestEnv) -> std::collections::HashMap<String, String> {
    let provider = env.state.vault().provider("tracker").expect("a provider");
    let (url, _) = provider.authorization_url("st", &[]).unwrap();
    url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn the_service_makes_a_discovered_route_a_provider_with_the_chosen_identity() {
    let up = Upstream::serve().await;
    up.set(|s| s.cimd = true);
    let env = discovering_service(&up);
    let vault = env.state.vault();
    assert!(vault.has_provider("tracker"));
    assert!(
        vault.provider("tracker").is_none(),
        "nothing discovered before it is asked for"
    );
    vault.prepare(Some("tracker"), env.state.now()).await;
    assert_eq!(vault.upstream_unavailable("tracker"), None);
    let q = consent_query(&env);
    let issuer = env.state.config().authorization_server.issuer.clone();
    assert_eq!(
        q["client_id"],
        format!("{issuer}/.well-known/warden-client.json"),
        "an authorization server with CIMD knows the gateway by its document"
    );
    assert_eq!(q["resource"], up.to(), "RFC 8707: the upstream's resource");
    assert_eq!(q["scope"], "read");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], format!("{issuer}/upstream/callback"));
    assert!(q.contains_key("code_challenge"));
}

#[tokio::test]
async fn a_failed_discovery_is_kept_and_said_and_a_new_server_is_found_after_expiry() {
    let up = Upstream::serve().await;
    // Neither CIMD nor DCR: the operator must pre-register.
    up.set(|s| {
        s.dcr = false;
        s.cache_control = Some("max-age=1".into());
    });
    let env = discovering_service(&up);
    let vault = env.state.vault();
    let now = env.state.now();
    vault.prepare(Some("tracker"), now).await;
    let why = vault.upstream_unavailable("tracker").expect("a reason");
    assert!(
        why.contains("register a client there with the redirect URI")
            && why.contains("/upstream/callback"),
        "{why}"
    );
    // Kept for RETRY_AFTER: a second sign-in fetches nothing.
    let fetched = up.hits().len();
    vault.prepare(Some("tracker"), now + 1).await;
    assert_eq!(
        up.hits().len(),
        fetched,
        "the failure is answered from memory"
    );
    // The upstream moves to a server with CIMD; past the retry the new one is found.
    up.set(|s| {
        s.servers = vec!["/as2"];
        s.cimd = true;
    });
    let later = now + warden_token_service::upstream_discovery::providers::RETRY_AFTER;
    vault.prepare(Some("tracker"), later).await;
    assert_eq!(vault.upstream_unavailable("tracker"), None);
    let state = vault
        .token_state("alice@example.com", "tracker", later)
        .unwrap();
    assert_eq!(state.authorization_server, Some(up.issuer("/as2")));
    assert!(!state.connected);
}

// ---------------------------------------------------------------- the gateway's document

#[tokio::test]
async fn the_gateway_serves_its_client_metadata_document_when_a_route_discovers() {
    let env = TestEnv::with(|dir| {
        config_yaml(
            dir,
            &format!("{}{DISCOVERY_BLOCK}", discover_route("")),
            "ES256",
        )
    });
    let r = env.get("/.well-known/warden-client.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["client_id"], client_document_url(ISSUER));
    assert_eq!(
        doc["client_id"],
        format!("{ISSUER}/.well-known/warden-client.json")
    );
    assert_eq!(doc["client_name"], "mcp-warden");
    assert_eq!(
        doc["redirect_uris"],
        serde_json::json!([warden_token_service::vault::callback_url(
            env.state.config()
        )])
    );
    assert_eq!(
        doc["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(doc["token_endpoint_auth_method"], "none");

    let plain = TestEnv::new();
    assert_eq!(
        plain.get("/.well-known/warden-client.json").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_token_of_the_server_the_upstream_left_is_neither_used_nor_refreshed() {
    use warden_token_service::state::{AppState, Secrets};
    use warden_token_service::store::{SqliteStore, Store, UpstreamRecord};
    use warden_token_service::vault::seal::{Kind, Sealer};
    use warden_token_service::vault::Lookup;

    let up = Upstream::serve().await;
    up.set(|s| {
        s.cimd = true;
        s.cache_control = Some("max-age=1".into());
    });
    let (to, allowed) = (
        up.to(),
        format!("[{}, {}]", up.issuer("/as1"), up.issuer("/as2")),
    );
    let dir = tempfile::tempdir().unwrap();
    let route = discover_route("").replace("http://127.0.0.1:9201/mcp", &to);
    let block = DISCOVERY_BLOCK.replace("[https://auth.tracker.example]", &allowed);
    let config = Config::from_yaml(&config_yaml(
        dir.path(),
        &format!("{route}{block}"),
        "ES256",
    ))
    .unwrap();
    let secrets = Secrets::ephemeral();
    let sealer = Sealer::new(&secrets.encryption_key);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let state = AppState::with_secrets(config, store.clone(), secrets).unwrap();
    let vault = state.vault();
    let now = 1_900_000_000;
    // Alice holds a live token from /as1, the server the upstream names.
    let seal = |kind, v: &str| {
        Some(
            sealer
                .seal("alice@example.com", "tracker", kind, v)
                .unwrap(),
        )
    };
    store
        .put_upstream_token(&UpstreamRecord {
            user: "alice@example.com".into(),
            route: "tracker".into(),
            access_token: seal(Kind::Access, "as1-access"),
            refresh_token: seal(Kind::Refresh, "as1-refresh"),
            issued_at: now,
            expires_at: Some(now + 3600),
            granted_at: now,
            scope: "read".into(),
            authorization_server: up.issuer("/as1"),
            ..UpstreamRecord::default()
        })
        .unwrap();
    vault.prepare(Some("tracker"), now).await;
    assert!(vault
        .holds_usable("alice@example.com", "tracker", now)
        .unwrap());
    let Lookup::Token(t) = vault
        .token("alice@example.com", "tracker", now)
        .await
        .unwrap()
    else {
        panic!("the token of the server the upstream names is used");
    };
    assert_eq!(t.access_token, "as1-access");

    // The upstream moves to /as2: once discovery sees it, the /as1 token is not handed out,
    // and the listing names the new server.
    up.set(|s| s.servers = vec!["/as2"]);
    let later = now + 2;
    assert!(matches!(
        vault
            .token("alice@example.com", "tracker", later)
            .await
            .unwrap(),
        Lookup::NoToken
    ));
    assert!(!vault
        .holds_usable("alice@example.com", "tracker", later)
        .unwrap());
    let state = vault
        .token_state("alice@example.com", "tracker", later)
        .unwrap();
    assert!(!state.connected);
    assert_eq!(state.authorization_server, Some(up.issuer("/as2")));
    // Nothing was sent to either server's token endpoint.
    assert!(
        !up.hits().iter().any(|h| h.ends_with("/token")),
        "{:?}",
        up.hits()
    );
}

//! Discovered upstream OAuth end to end (issue 21), through the real Envoy and filter: a remote
//! MCP server that is itself OAuth-protected (`demo-mcp-server` with RFC 9728 metadata, checking
//! every bearer by introspection at its authorization server, and that the token was issued
//! for it: RFC 8707 `aud`), and in-repo authorization servers over HTTPS with a test CA
//! (`demo-oauth-provider`, one with DCR, one with client ID metadata documents). The gateway
//! is given only `to` and `discover: true`: it finds the server, gets a client there, runs the
//! user's consent inside its own sign-in, and sends the user's token upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use warden_e2e::tls::test_certificate;
use warden_e2e::*;

const PREFIX: &str = "/tracker";

const ALICE: UpstreamLogin<'static> = UpstreamLogin {
    user: PROVIDER_USER,
    password: PROVIDER_PASSWORD,
    approve: true,
};

struct Discovering {
    stack: Stack,
    /// The authorization server with DCR (the one the upstream names first).
    dcr: OAuthProvider,
    /// The authorization server with client ID metadata documents.
    cimd: OAuthProvider,
    /// An authorization server the operator did not allow.
    stranger: OAuthProvider,
    /// The OAuth-protected remote MCP server behind the route.
    upstream: DemoServer,
    _dir: tempfile::TempDir,
}

impl Discovering {
    /// `access_ttl`: seconds the servers' access tokens live; `cache_seconds`: the gateway's
    /// discovery cache.
    async fn start(access_ttl: u32, cache_seconds: u64) -> Discovering {
        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-discovery-")
            .tempdir()
            .unwrap();
        let certs = test_certificate(dir.path(), "as", &["DNS:localhost", "IP:127.0.0.1"]);
        trust_ca(&std::fs::read(&certs.ca).unwrap());
        let upstream_port = free_port();
        let resource = format!("http://127.0.0.1:{upstream_port}/mcp");
        let ttl = access_ttl.to_string();
        let start_as = |name: &'static str, mode: &'static str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let (cert, key, resource, ttl) = (
                certs.cert.clone(),
                certs.key.clone(),
                resource.clone(),
                ttl.clone(),
            );
            async move {
                OAuthProvider::start_https(
                    &d,
                    free_port(),
                    &cert,
                    &key,
                    &[mode, "--resource", &resource, "--access-ttl", &ttl],
                )
                .await
            }
        };
        let dcr = start_as("as-dcr", "--dcr").await;
        let cimd = start_as("as-cimd", "--cimd").await;
        let stranger = start_as("as-stranger", "--dcr").await;
        let up_dir = dir.path().join("upstream");
        std::fs::create_dir_all(&up_dir).unwrap();
        let ca = certs.ca.to_str().unwrap().to_owned();
        let upstream = DemoServer::start_with(
            &up_dir,
            upstream_port,
            &[
                "--require-bearer-introspect",
                &dcr.introspect_url(),
                "--introspect-ca",
                &ca,
                "--require-audience",
                "--resource-metadata-issuer",
                &dcr.url(),
            ],
        )
        .await;
        let allowed = json!([dcr.url(), cimd.url()]);
        let to = upstream.mcp_url();
        let opts = StackOptions {
            config_hook: Some(Box::new(move |c: &mut Value| {
                let from = c["routes"][0]["from"].clone();
                c["routes"].as_array_mut().unwrap().push(json!({
                    "name": "tracker",
                    "from": from,
                    "prefix": PREFIX,
                    "to": to,
                    "mcp": {"server": {"upstream_oauth2": {"discover": true}}},
                    "policy": {"allow": {"and": [{"authenticated_user": true}]}},
                }));
                c["upstream_discovery"] = json!({
                    "allowed_authorization_servers": allowed,
                    "cache_seconds": cache_seconds,
                });
                c["outbound"] = json!({"extra_ca_file": ca});
            })),
            ..StackOptions::default()
        };
        let stack = Stack::start_with(opts).await;
        Discovering {
            stack,
            dcr,
            cimd,
            stranger,
            upstream,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.stack.route_url(PREFIX)
    }

    /// The whole sign-in: the gateway's login and consent, then the upstream server's.
    async fn sign_in(&self) -> SignedIn {
        sign_in_with(&self.url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await
    }

    async fn whoami(&self, te: &str) -> RawResponse {
        mcp_post(
            &self.url(),
            &[("authorization", &format!("Bearer {te}"))],
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await
    }

    /// This server's entry in the gateway's listing.
    async fn listed(&self, te: &str) -> Value {
        let listing = raw_request(
            "GET",
            &format!("{}/.warden/mcp/routes", self.stack.envoy_url()),
            &[("authorization", &format!("Bearer {te}"))],
            None,
        )
        .await;
        assert_eq!(listing.status, 200, "{}", listing.body);
        listing.json()["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "tracker")
            .cloned()
            .unwrap_or_else(|| panic!("tracker not listed: {}", listing.body))
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.stack.envoy_log(),
            self.stack.token_service.log(),
            self.upstream.proc.log()
        )
    }
}

#[tokio::test]
async fn the_gateway_discovers_registers_by_dcr_and_carries_and_refreshes_the_users_token() {
    let d = Discovering::start(6, 3600).await;
    let signed = d.sign_in().await;
    let stats = d.dcr.stats().await;
    assert_eq!(stats["registrations"], 1, "registered once by DCR: {stats}");
    assert_eq!(stats["authorization_code"], 1, "one consent: {stats}");
    let resource = d.upstream.mcp_url();
    assert_eq!(
        stats["last_authorize_resource"], resource,
        "RFC 8707 at the authorization endpoint: {stats}"
    );
    assert_eq!(
        stats["last_token_resource"], resource,
        "and at the token endpoint: {stats}"
    );

    // The call carries the upstream server's token, which the server checked (introspection
    // at its server, `aud` its own resource), and never the gateway's.
    let first = d.whoami(&signed.access_token).await;
    let bearer = received_bearer(&first);
    assert!(bearer.starts_with("Bearer "), "{}", d.logs());
    assert!(!bearer.contains(&signed.access_token));
    let listed = d.listed(&signed.access_token).await;
    assert_eq!(listed["connected"], true, "{listed}");
    assert_eq!(listed["authorization_server"], json!(d.dcr.url()));
    assert_eq!(listed["refresh_token_available"], true);

    // Past the token's lifetime the gateway refreshes it at the discovered server, with the
    // resource again, once.
    let expires_at = listed["token_expires_at"].as_i64().unwrap();
    while unix_now() < expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let after = d.whoami(&signed.access_token).await;
    let refreshed = received_bearer(&after);
    assert_ne!(refreshed, bearer, "a new token after the refresh");
    let stats = d.dcr.stats().await;
    assert_eq!(stats["refresh_token"], 1, "one refresh: {stats}");
    assert_eq!(stats["last_token_resource"], resource, "{stats}");

    // Another sign-in finds the registration stored: no second DCR.
    let again = sign_in_with(&d.url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await;
    assert!(received_bearer(&d.whoami(&again.access_token).await).starts_with("Bearer "));
    assert_eq!(d.dcr.stats().await["registrations"], 1);
    assert_eq!(d.stranger.stats().await["registrations"], 0);
}

#[tokio::test]
async fn a_moved_authorization_server_and_a_refused_token_lead_to_consent_again() {
    let d = Discovering::start(300, 1).await;
    let signed = d.sign_in().await;
    assert_eq!(
        d.whoami(&signed.access_token).await.status,
        200,
        "{}",
        d.logs()
    );

    // The upstream moves to another authorization server (one with client ID metadata
    // documents). The gateway's discovery result lives `cache_seconds` (1); past it, the next
    // discovery finds the new server. The token of the old server is refused upstream and
    // dropped, the client is told to authorize again, and the user consents at the new
    // server, which knows the gateway by its metadata document.
    d.upstream
        .set_authorization_server(&d.cimd.url(), &d.cimd.introspect_url())
        .await;
    let moved_at = unix_now();
    while unix_now() <= moved_at + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = d.whoami(&signed.access_token).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let moved = d.sign_in().await;
    let stats = d.cimd.stats().await;
    assert_eq!(
        stats["authorization_code"], 1,
        "consent at the new server: {stats}"
    );
    assert_eq!(
        stats["cimd_fetches"], 1,
        "the gateway's document fetched: {stats}"
    );
    let document = format!("{}/.well-known/warden-client.json", d.stack.issuer());
    assert_eq!(
        stats["clients"][&document], 1,
        "the gateway is known by its document URL: {stats}"
    );
    assert_eq!(
        d.dcr.stats().await["authorization_code"],
        1,
        "not at the old one"
    );
    assert_eq!(
        d.whoami(&moved.access_token).await.status,
        200,
        "{}",
        d.logs()
    );
    let listed = d.listed(&moved.access_token).await;
    assert_eq!(listed["authorization_server"], json!(d.cimd.url()));

    // The new server revokes the grant: the upstream refuses the token, the gateway drops it,
    // and authorizing again runs the upstream consent again.
    d.cimd.hook("revoke-user", "user=alice").await;
    let refused = d.whoami(&moved.access_token).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let again = d.sign_in().await;
    assert_eq!(d.cimd.stats().await["authorization_code"], 2);
    assert_eq!(
        d.whoami(&again.access_token).await.status,
        200,
        "{}",
        d.logs()
    );
}

#[tokio::test]
async fn an_authorization_server_outside_the_allowlist_is_refused_with_the_reason() {
    let d = Discovering::start(300, 1).await;
    d.upstream
        .set_authorization_server(&d.stranger.url(), &d.stranger.introspect_url())
        .await;
    let back = authorization_outcome(&d.url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await;
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "temporarily_unavailable", "{back}");
    let why = &q["error_description"];
    assert!(
        why.contains("allowed_authorization_servers") && why.contains(&d.stranger.url()),
        "{why}"
    );
    let stats = d.stranger.stats().await;
    assert_eq!(stats["registrations"], 0, "never contacted: {stats}");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

//! Issue 21's guarantees that hold without discovery, through the real Envoy: a route without
//! upstream OAuth passes its MCP server's own `401` on unchanged (a remote server with OAuth
//! of its own); a downstream scheme or host (`X-Forwarded-Proto: https` from a TLS-terminating
//! proxy in front, `X-Forwarded-Host`, `Forwarded`) never changes the upstream URL nor the
//! URLs the gateway advertises; and the listing's token state and forced refresh on the
//! gateway's host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use warden_e2e::*;

/// The challenge of the remote MCP server behind `remote` (its own OAuth).
const CHALLENGE: &str = "Bearer resource_metadata=\"https://mcp.tracker.example/.well-known/oauth-protected-resource/mcp\", scope=\"read\"";
/// `demo-mcp-server --answer-401`'s body.
const OWN_OAUTH_BODY: &str =
    r#"{"error":"invalid_token","error_description":"this server runs OAuth of its own"}"#;

/// What a TLS-terminating proxy in front of Envoy adds (the config trusts one hop, so Envoy
/// keeps its `X-Forwarded-Proto`).
const DOWNSTREAM_HTTPS: [(&str, &str); 4] = [
    ("x-forwarded-proto", "https"),
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "proto=https;host=evil.example"),
];

const ALICE: UpstreamLogin<'static> = UpstreamLogin {
    user: PROVIDER_USER,
    password: PROVIDER_PASSWORD,
    approve: true,
};

struct Urls {
    stack: Stack,
    provider: OAuthProvider,
    /// Behind `gh` (static upstream OAuth): accepts tokens the provider calls live.
    gated: DemoServer,
    /// Behind `remote` (no upstream OAuth): answers every call `401` with [`CHALLENGE`].
    remote: DemoServer,
    _dir: tempfile::TempDir,
}

impl Urls {
    async fn start() -> Urls {
        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-urls-")
            .tempdir()
            .unwrap();
        let provider =
            OAuthProvider::start(dir.path(), free_port(), &["--access-ttl", "300"]).await;
        let (gated_dir, remote_dir) = (dir.path().join("gated"), dir.path().join("remote"));
        std::fs::create_dir_all(&gated_dir).unwrap();
        std::fs::create_dir_all(&remote_dir).unwrap();
        let introspect = provider.introspect_url();
        let gated = DemoServer::start_with(
            &gated_dir,
            free_port(),
            &["--require-bearer-introspect", &introspect],
        )
        .await;
        let remote =
            DemoServer::start_with(&remote_dir, free_port(), &["--answer-401", CHALLENGE]).await;
        let (provider_url, gated_url, remote_url) =
            (provider.url(), gated.mcp_url(), remote.mcp_url());
        let opts = StackOptions {
            config_hook: Some(Box::new(move |c: &mut Value| {
                // A TLS-terminating proxy in front of Envoy.
                c["envoy"]["xff_num_trusted_hops"] = json!(1);
                let from = c["routes"][0]["from"].clone();
                let routes = c["routes"].as_array_mut().unwrap();
                routes.push(json!({
                    "name": "gh",
                    "from": from,
                    "prefix": "/gh",
                    "to": gated_url,
                    "mcp": {"server": {"upstream_oauth2": {
                        "client_id": PROVIDER_CLIENT_ID,
                        "client_secret": PROVIDER_CLIENT_SECRET,
                        "scopes": ["repo"],
                        "endpoint": {
                            "auth_url": format!("{provider_url}/authorize"),
                            "token_url": format!("{provider_url}/token"),
                        },
                    }}},
                    "policy": {"allow": {"and": [{"authenticated_user": true}]}},
                }));
                routes.push(json!({
                    "name": "remote",
                    "from": from,
                    "prefix": "/remote",
                    "to": remote_url,
                    "mcp": {"server": {}},
                    "policy": {"allow": {"and": [{"authenticated_user": true}]}},
                }));
            })),
            ..StackOptions::default()
        };
        let stack = Stack::start_with(opts).await;
        Urls {
            stack,
            provider,
            gated,
            remote,
            _dir: dir,
        }
    }
}

/// A route without upstream OAuth whose MCP server runs OAuth of its own: the server's `401`
/// reaches the client as the server sent it (status, challenge, headers, body), not a `502`,
/// and the gateway drops nothing (there is no upstream token to drop).
#[tokio::test]
async fn a_route_without_upstream_oauth_passes_the_servers_401_on_unchanged() {
    let u = Urls::start().await;
    let url = u.stack.route_url("/remote");
    let signed_in = sign_in_with(&url, (DEMO_EMAIL, DEMO_PASSWORD), None).await;
    let te = signed_in.access_token;
    u.remote.clear_recorded().await;
    for _ in 0..2 {
        let r = mcp_post(
            &url,
            &[("authorization", &format!("Bearer {te}"))],
            "tools/list",
            json!({}),
        )
        .await;
        assert_eq!(r.status, 401, "{}\n{}", r.body, u.stack.envoy_log());
        assert_eq!(r.header_all("www-authenticate"), vec![CHALLENGE.to_owned()]);
        assert_eq!(r.header("x-demo-refusal").as_deref(), Some("own-oauth"));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.body, OWN_OAUTH_BODY);
    }
    // Both calls reached the server, without the gateway's token; the TE still works.
    let seen = u.remote.recorded().await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for call in &seen {
        assert_eq!(call["path"], "/mcp", "{call}");
        assert!(call["headers"].get("authorization").is_none(), "{call}");
    }
    let r = mcp_post(
        &url,
        &[("authorization", &format!("Bearer {te}"))],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, OWN_OAUTH_BODY);
}

/// `X-Forwarded-Proto: https` (and a forwarded host) from in front of Envoy: the MCP server is
/// still reached at the configured `to` (its host, its path, plain http), with the token the
/// token service got from the configured `token_url`; the gateway's challenge and metadata
/// still name the configured `from`; and the listing and forced refresh work on the gateway's
/// host.
#[tokio::test]
async fn a_downstream_https_scheme_changes_no_upstream_url() {
    let u = Urls::start().await;
    let url = u.stack.route_url("/gh");
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/gh",
        u.stack.envoy_url()
    );

    // Unauthenticated: the challenge names the configured resource's metadata.
    let r = mcp_post(&url, &DOWNSTREAM_HTTPS, "tools/list", json!({})).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let (_, params) = parse_www_authenticate(&r.header("www-authenticate").unwrap());
    assert_eq!(params["resource_metadata"], metadata_url);
    let r = raw_request("GET", &metadata_url, &DOWNSTREAM_HTTPS, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["resource"], url);

    let signed_in = sign_in_with(&url, (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await;
    let te = signed_in.access_token;
    let stats = u.provider.stats().await;
    assert_eq!(stats["authorization_code"], 1, "{stats}");

    let bearer = format!("Bearer {te}");
    let mut headers = DOWNSTREAM_HTTPS.to_vec();
    headers.push(("authorization", &bearer));
    let r = mcp_post(
        &url,
        &headers,
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, u.stack.envoy_log());
    let text = r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = serde_json::from_str(&text).unwrap();
    // The request really was https downstream as far as Envoy and the filter know…
    assert_eq!(me["headers"]["x-forwarded-proto"], json!(["https"]), "{me}");
    // … and went to the configured `to` all the same.
    assert_eq!(me["path"], "/mcp", "{me}");
    assert_eq!(
        me["headers"]["host"],
        json!([u.gated.addr.to_string()]),
        "{me}"
    );
    // The provider's token (the MCP server introspected it there), not the TE.
    let upstream_bearer = me["headers"]["authorization"][0].as_str().unwrap();
    assert!(upstream_bearer.starts_with("Bearer "), "{me}");
    assert_ne!(upstream_bearer, bearer);
    // The request reached the server as plain http at its own address: it answered, and the
    // recorder saw the configured path.
    let seen = u.gated.recorded().await;
    assert!(seen.iter().any(|c| c["path"] == "/mcp"), "{seen:?}");

    // The listing on the gateway's host: the configured URL and the token's state.
    let listing = raw_request(
        "GET",
        &format!("{}/.warden/mcp/routes", u.stack.envoy_url()),
        &[("authorization", &bearer), DOWNSTREAM_HTTPS[0]],
        None,
    )
    .await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    let servers = listing.json()["servers"].as_array().unwrap().clone();
    let gh = servers.iter().find(|s| s["name"] == "gh").unwrap();
    assert_eq!(gh["url"], url);
    assert_eq!(gh["connected"], true);
    assert_eq!(gh["refresh_token_available"], true);
    assert_eq!(gh["authorization_server"], json!(u.provider.url()));
    let expires_at = gh["token_expires_at"].as_i64().unwrap();

    // A forced refresh at the configured token_url. Right after the sign-in the token is
    // under 10 s old: answered without a provider call.
    let refresh = || async {
        let body = json!({"url": url}).to_string();
        raw_request(
            "POST",
            &format!("{}/.warden/mcp/refresh", u.stack.envoy_url()),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
                DOWNSTREAM_HTTPS[0],
            ],
            Some(&body),
        )
        .await
    };
    let refreshes = u.provider.stats().await["refresh_token"].as_u64().unwrap();
    let issued_at = expires_at - 300;
    let mut r = refresh().await;
    assert_eq!(r.status, 200, "{}", r.body);
    if r.json()["refreshed"] == false {
        assert_eq!(r.json()["token_expires_at"], expires_at);
        assert_eq!(
            u.provider.stats().await["refresh_token"].as_u64().unwrap(),
            refreshes
        );
        let wait = (issued_at + 11 - unix_now()).max(0);
        tokio::time::sleep(std::time::Duration::from_secs(wait.unsigned_abs())).await;
        r = refresh().await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(r.json()["refreshed"], true, "{}", r.body);
    assert!(r.json()["token_expires_at"].as_i64().unwrap() > expires_at);
    assert_eq!(
        u.provider.stats().await["refresh_token"].as_u64().unwrap(),
        refreshes + 1
    );
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

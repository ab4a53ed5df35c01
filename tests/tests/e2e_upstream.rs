//! Upstream OAuth end to end (issue 8): real Envoy with the filter, the token service, the
//! in-repo OAuth provider, and an MCP server that accepts only tokens the provider says are
//! live (it introspects every request). The MCP client signs in once; the gateway runs the
//! provider's consent, keeps the user's token (TI), and sends it upstream on every call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_e2e::*;

struct UpstreamStack {
    stack: Stack,
    provider: OAuthProvider,
    /// The MCP server behind the `gh` route (checks the bearer at the provider).
    gated: DemoServer,
    internal: String,
    _stranger: Option<OAuthProvider>,
    _dir: tempfile::TempDir,
}

/// What the MCP server behind the route accepts.
#[derive(Clone, Copy)]
enum Gate {
    /// Tokens the gateway's provider says are live.
    Introspect,
    /// … and that carry this scope (`403 insufficient_scope` otherwise).
    RequireScope(&'static str),
    /// Only tokens of another provider: it refuses every token the gateway sends.
    IntrospectElsewhere,
}

const PREFIX: &str = "/gh";

/// The provider's user approving.
const ALICE: UpstreamLogin<'static> = UpstreamLogin {
    user: PROVIDER_USER,
    password: PROVIDER_PASSWORD,
    approve: true,
};

impl UpstreamStack {
    /// `access_ttl`: seconds the provider's access tokens live.
    async fn start(access_ttl: u32) -> UpstreamStack {
        Self::start_with(access_ttl, "any", None, Gate::Introspect).await
    }

    /// `provider_style`: the only client authentication the provider accepts (`header`,
    /// `params`, `any`); `route_style`: the route's `auth_style` (absent: detected).
    async fn start_with(
        access_ttl: u32,
        provider_style: &str,
        route_style: Option<&'static str>,
        gate: Gate,
    ) -> UpstreamStack {
        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-upstream-")
            .tempdir()
            .unwrap();
        let ttl = access_ttl.to_string();
        let provider = OAuthProvider::start(
            dir.path(),
            free_port(),
            &["--access-ttl", &ttl, "--auth-style", provider_style],
        )
        .await;
        let gated_dir = dir.path().join("gated");
        std::fs::create_dir_all(&gated_dir).unwrap();
        // A provider the gateway does not know: its introspection calls every token inactive.
        let stranger = match gate {
            Gate::IntrospectElsewhere => {
                let d = dir.path().join("stranger");
                std::fs::create_dir_all(&d).unwrap();
                Some(OAuthProvider::start(&d, free_port(), &[]).await)
            }
            _ => None,
        };
        let introspect = stranger.as_ref().unwrap_or(&provider).introspect_url();
        let mut gated_args = vec!["--require-bearer-introspect", introspect.as_str()];
        if let Gate::RequireScope(scope) = gate {
            gated_args.extend(["--require-scope", scope]);
        }
        let gated = DemoServer::start_with(&gated_dir, free_port(), &gated_args).await;
        let internal = format!("127.0.0.1:{}", free_port());
        let (provider_url, gated_url, internal_listen) =
            (provider.url(), gated.mcp_url(), internal.clone());
        let opts = StackOptions {
            config_hook: Some(Box::new(move |c: &mut Value| {
                c["authorization_server"]["internal_listen"] = json!(internal_listen);
                let from = c["routes"][0]["from"].clone();
                let mut endpoint = json!({
                    "auth_url": format!("{provider_url}/authorize"),
                    "token_url": format!("{provider_url}/token"),
                });
                if let Some(style) = route_style {
                    endpoint["auth_style"] = json!(style);
                }
                c["routes"].as_array_mut().unwrap().push(json!({
                    "name": "gh",
                    "from": from,
                    "prefix": PREFIX,
                    "to": gated_url,
                    "mcp": {"server": {"upstream_oauth2": {
                        "client_id": PROVIDER_CLIENT_ID,
                        "client_secret": PROVIDER_CLIENT_SECRET,
                        "scopes": ["repo"],
                        "endpoint": endpoint,
                    }}},
                    "policy": {"allow": {"and": [{"authenticated_user": true}]}},
                }));
            })),
            ..StackOptions::default()
        };
        let stack = Stack::start_with(opts).await;
        UpstreamStack {
            stack,
            provider,
            gated,
            internal,
            _stranger: stranger,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.stack.route_url(PREFIX)
    }

    /// The whole sign-in: the gateway's login and consent, then the provider's (as alice).
    async fn sign_in(&self) -> SignedIn {
        sign_in_with(&self.url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await
    }

    /// Asks the internal listener for the user's token, as the filter does.
    async fn vault_lookup(&self) -> (u16, Value) {
        let credential = internal_credential(self.stack.dir.path()).unwrap();
        let path = "/internal/v1/upstream-token";
        let body = json!({"sub": DEMO_EMAIL, "route": "gh"}).to_string();
        let resp = http_client()
            .post(format!("http://{}{path}", self.internal))
            .header(
                "authorization",
                internal_authorization(&credential, path, body.as_bytes()),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A `whoami` tools/call with the TE as bearer.
    async fn whoami_raw(&self, te: &str) -> RawResponse {
        mcp_post(
            &self.url(),
            &[("authorization", &format!("Bearer {te}"))],
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.stack.envoy_log(),
            self.stack.token_service.log(),
            self.gated.proc.log()
        )
    }
}

#[tokio::test]
async fn sign_in_connects_the_upstream_account_and_calls_carry_the_ti() {
    let u = UpstreamStack::start(300).await;
    // Before anyone connected, the vault holds nothing.
    assert_eq!(u.vault_lookup().await.0, 404);
    // The internal listener answers only with the credential the renderer gave the filter.
    let anonymous = http_client()
        .post(format!("http://{}/internal/v1/upstream-token", u.internal))
        .json(&json!({"sub": DEMO_EMAIL, "route": "gh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let rendered = std::fs::read_to_string(&u.stack.bootstrap_path).unwrap();
    let credential = internal_credential(u.stack.dir.path()).unwrap();
    assert!(
        !rendered.contains(&credential),
        "the credential reaches the filter through Envoy's environment, never its configuration"
    );
    assert!(
        !rendered.contains(PROVIDER_CLIENT_SECRET),
        "the provider's client secret stays out of Envoy's configuration"
    );

    let mut te = String::new();
    for (n, era) in [Era::Stateless, Era::handshake()].into_iter().enumerate() {
        // A full sign-in per era; the second finds the account connected and skips the
        // provider.
        let signed = u.sign_in().await;
        let stats = u.provider.stats().await;
        assert_eq!(
            stats["authorization_code"], 1,
            "the upstream consent ran once: {stats}"
        );
        te = signed.access_token.clone();
        assert!(!te.starts_with("dat_"));
        let client = connect(&u.url(), &era, ClientAuth::OAuth(signed.manager)).await;
        let me = whoami(&client).await;
        let auth = me["headers"]["authorization"][0]
            .as_str()
            .unwrap_or_default();
        assert!(
            auth.starts_with("Bearer dat_"),
            "{era}: the TI reaches the server: {me}"
        );
        assert!(
            !me.to_string().contains(&te),
            "{era}: the TE never reaches the server: {me}"
        );
        assert_eq!(
            call_tool_text(&client, "echo", json!({"text": "as the user"})).await,
            "as the user",
            "sign-in {n}"
        );
        client.cancel().await.unwrap();
    }
    // Every request the clients made, whatever its HTTP method (the handshake era's GET
    // stream and DELETE included), reached the server with a TI and without the TE.
    let recorded = u.gated.recorded().await;
    let methods: std::collections::BTreeSet<&str> = recorded
        .iter()
        .filter_map(|r| r["method"].as_str())
        .collect();
    assert_eq!(
        methods,
        ["DELETE", "GET", "POST"].into_iter().collect(),
        "{recorded:?}"
    );
    for r in &recorded {
        let auth = recorded_header(r, "authorization").unwrap_or_default();
        assert!(auth.starts_with("Bearer dat_"), "{r}");
        assert!(!r.to_string().contains(&te), "{r}");
    }
    let ti = received_bearer(&u.whoami_raw(&te).await)
        .trim_start_matches("Bearer ")
        .to_owned();

    // The TI is in no log line and in nothing the client received but whoami's own echo.
    assert!(!u.logs().contains(&ti), "the TI is logged somewhere");
    let listing = mcp_post(
        &u.url(),
        &[("authorization", &format!("Bearer {te}"))],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(listing.status, 200);
    assert!(!listing.body.contains(&ti) && !format!("{:?}", listing.headers).contains(&ti));
    // Nor is it anywhere in the SQLite files in plain text.
    for entry in std::fs::read_dir(u.stack.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().contains("warden.db") {
            let raw = std::fs::read(&p).unwrap();
            assert!(
                !raw.windows(ti.len()).any(|w| w == ti.as_bytes()),
                "TI in plain text in {}",
                p.display()
            );
        }
    }

    // The token service restarts: the TI survives (sealed in SQLite) and calls go on.
    let mut u = u;
    u.stack.restart_token_service().await;
    let (status, answer) = u.vault_lookup().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], ti.as_str());
    assert_eq!(
        received_bearer(&u.whoami_raw(&te).await),
        format!("Bearer {ti}")
    );

    // Without a token the gateway still answers the usual challenge (nothing forwarded).
    u.gated.clear_recorded().await;
    let r = mcp_post(&u.url(), &[], "tools/call", json!({"name": "whoami"})).await;
    assert_eq!(r.status, 401);
    u.gated.assert_nothing_recorded("a call without a TE").await;
}

#[tokio::test]
async fn a_ti_revoked_at_the_provider_sends_the_client_back_through_authorization() {
    let u = UpstreamStack::start(300).await;
    let signed = u.sign_in().await;
    let te = signed.access_token.clone();
    assert_eq!(u.whoami_raw(&te).await.status, 200);

    // The user revokes the app at the provider: the server refuses the TI.
    u.provider
        .hook("revoke-user", &format!("user={PROVIDER_USER}"))
        .await;
    let r = u.whoami_raw(&te).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    // The refusal dropped the TI at the token service.
    let deadline = Instant::now() + Duration::from_secs(5);
    while u.vault_lookup().await.0 != 404 {
        assert!(Instant::now() < deadline, "the TI was not dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client's refresh is refused, so it runs authorization again.
    let refresh = signed.refresh_token.clone().unwrap();
    let resp = http_client()
        .post(&signed.token_endpoint)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", signed.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");

    let again = u.sign_in().await;
    assert_eq!(u.provider.stats().await["authorization_code"], 2);
    let bearer = received_bearer(&u.whoami_raw(&again.access_token).await);
    assert!(bearer.starts_with("Bearer dat_"));
}

#[tokio::test]
async fn an_expired_ti_is_refreshed_once_for_ten_concurrent_calls() {
    // Provider tokens live 3 s: the test waits for that expiry, which is what it tests.
    let u = UpstreamStack::start(3).await;
    let signed = u.sign_in().await;
    let te = signed.access_token.clone();
    let first = received_bearer(&u.whoami_raw(&te).await);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    // A slow provider, so the ten lookups overlap the refresh.
    u.provider.hook("delay-token", "ms=300").await;
    let calls = (0..10).map(|_| u.whoami_raw(&te));
    let answers = futures_util::future::join_all(calls).await;
    let bearers: std::collections::BTreeSet<String> = answers.iter().map(received_bearer).collect();
    assert_eq!(
        bearers.len(),
        1,
        "one refreshed TI for every call: {bearers:?}"
    );
    assert_ne!(bearers.iter().next().unwrap(), &first);
    let stats = u.provider.stats().await;
    assert_eq!(stats["refresh_token"], 1, "{stats}");
}

#[tokio::test]
async fn the_provider_refusing_consent_reaches_the_client_as_an_error() {
    let u = UpstreamStack::start(300).await;
    let denied = UpstreamLogin {
        approve: false,
        ..ALICE
    };
    let back = authorization_outcome(&u.url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(denied)).await;
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("access_denied"),
        "{back}"
    );
    assert!(q["error_description"].contains("refused"), "{back}");
    assert!(q.contains_key("state") && !q.contains_key("code"), "{back}");
    assert_eq!(q["iss"], u.stack.issuer());
    assert_eq!(u.vault_lookup().await.0, 404);
    assert_eq!(u.provider.stats().await["authorization_code"], 0);
}

#[tokio::test]
async fn each_auth_style_through_the_gateway() {
    for (provider_style, route_style, used) in [
        ("header", Some("header"), "header"),
        ("params", Some("params"), "params"),
        // Not configured: Basic first, then form parameters, which this provider takes.
        ("params", None, "params"),
    ] {
        let u = UpstreamStack::start_with(300, provider_style, route_style, Gate::Introspect).await;
        let signed = u.sign_in().await;
        let bearer = received_bearer(&u.whoami_raw(&signed.access_token).await);
        assert!(
            bearer.starts_with("Bearer dat_"),
            "{provider_style}/{route_style:?}"
        );
        let stats = u.provider.stats().await;
        assert_eq!(stats["authorization_code"], 1, "{stats}");
        assert_eq!(
            stats["auth_styles"][used], 1,
            "{provider_style}/{route_style:?}: {stats}"
        );
    }
}

#[tokio::test]
async fn with_the_token_service_down_a_warm_ti_serves_until_it_is_due() {
    // Provider tokens live 3 s: the test waits for that expiry, which is what it tests.
    let mut u = UpstreamStack::start(3).await;
    let signed = u.sign_in().await;
    let te = signed.access_token.clone();
    let ti = received_bearer(&u.whoami_raw(&te).await);
    u.stack.token_service.kill().await;
    // Warm: no call-out, the call goes through.
    assert_eq!(received_bearer(&u.whoami_raw(&te).await), ti);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    // Due, and nobody to ask: a clear JSON-RPC error, nothing forwarded.
    u.gated.clear_recorded().await;
    let r = u.whoami_raw(&te).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body = r.json();
    assert_eq!(
        body["error"]["message"], "the token service is unavailable",
        "{body}"
    );
    u.gated
        .assert_nothing_recorded("a call without its TI")
        .await;
}

impl UpstreamStack {
    /// Waits until the token service dropped the user's TI (the filter's drop is sent
    /// alongside its answer to the client).
    async fn wait_dropped(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _) = self.vault_lookup().await;
            if status != 200 {
                return;
            }
            assert!(Instant::now() < deadline, "the TI was not dropped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn insufficient_scope_asks_the_provider_for_the_missing_scope() {
    let u = UpstreamStack::start_with(300, "any", None, Gate::RequireScope("admin:org")).await;
    let signed = u.sign_in().await;
    // The server wants a scope the route did not ask for: the client is sent to authorize.
    let r = u.whoami_raw(&signed.access_token).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("invalid_token"));
    u.wait_dropped().await;
    // Authorization again: the provider is asked for the route's scopes and the missing one,
    // and the server accepts the new TI.
    let again = u.sign_in().await;
    let bearer = received_bearer(&u.whoami_raw(&again.access_token).await);
    assert!(bearer.starts_with("Bearer dat_"));
    assert_eq!(u.provider.stats().await["authorization_code"], 2);
}

#[tokio::test]
async fn a_server_refusing_every_token_ends_in_a_clear_error_not_a_loop() {
    let u = UpstreamStack::start_with(300, "any", None, Gate::IntrospectElsewhere).await;
    let signed = u.sign_in().await;
    // The first refusal sends the client through authorization (the TI may just be stale).
    assert_eq!(u.whoami_raw(&signed.access_token).await.status, 401);
    u.wait_dropped().await;
    let again = u.sign_in().await;
    // Refused again right after that consent: a clear error, no third round.
    let r = u.whoami_raw(&again.access_token).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("upstream_oauth2.scopes"), "{message}");
    u.wait_dropped().await;
    // And it stays an error (the token service holds the refusal) rather than a 401.
    let r = u.whoami_raw(&again.access_token).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(u.provider.stats().await["authorization_code"], 2);
}

#[tokio::test]
async fn a_provider_failing_a_refresh_keeps_the_ti_and_the_call_says_why() {
    // Provider tokens live 3 s: the test waits for that expiry, which is what it tests.
    let u = UpstreamStack::start(3).await;
    let signed = u.sign_in().await;
    let te = signed.access_token.clone();
    let first = received_bearer(&u.whoami_raw(&te).await);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    u.provider.hook("fail-token", "status=503&count=1").await;
    u.gated.clear_recorded().await;
    let r = u.whoami_raw(&te).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(message, "the upstream OAuth provider is unavailable");
    u.gated
        .assert_nothing_recorded("a call whose TI could not be refreshed")
        .await;
    // The TI was kept: the next call refreshes it and goes through, without a new consent.
    let next = received_bearer(&u.whoami_raw(&te).await);
    assert_ne!(next, first);
    let stats = u.provider.stats().await;
    assert_eq!(
        (
            stats["authorization_code"].as_u64(),
            stats["refresh_token"].as_u64()
        ),
        (Some(1), Some(1)),
        "{stats}"
    );
}

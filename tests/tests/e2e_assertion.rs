//! The identity assertion end to end (issue 9): real Envoy with the filter, the token service,
//! and an MCP server that accepts a call only with an `X-Warden-Jwt-Assertion` it verifies
//! with the token service's published JWKS (`demo-mcp-server --verify-assertion`). The route
//! `who` has `pass_identity_headers: true`; the stack's `demo` route does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use serde_json::{json, Value};
use warden_e2e::*;

const WHO: &str = "/who";
const INTERNAL_CLUSTER_CALLS: &str = "cluster.warden_token_service_internal.upstream_rq_total";
const ASSERTION_LOOKUPS: &str = "wasmcustom.mcp_warden.identity_assertion_lookups";
const POLLS_OK: &str = "wasmcustom.mcp_warden.revocation_poll_ok";
const POLLS_FAILED: &str = "wasmcustom.mcp_warden.revocation_poll_failed";
/// The strip filter `render-envoy` puts first in the chain (removed to test the filter alone).
const STRIP_FILTER: &str = "          - name: mcp-warden.strip-identity-assertion\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              mutations: { request_mutations: [ { remove: x-warden-jwt-assertion }, { remove: x-pomerium-jwt-assertion }, { remove: x-pomerium-assertion } ] }\n";
/// Envoy's refusal of header names with `_`, lifted to test the filter's own stripping of
/// `X_Pomerium_Jwt_Assertion` and the like (Istio lets such names through by default).
const UNDERSCORES_REJECTED: &str = "headers_with_underscores_action: REJECT_REQUEST";

struct AssertionStack {
    stack: Stack,
    /// The MCP server behind `who`: verifies the assertion (and the TI, with upstream OAuth).
    verifier: DemoServer,
    /// `scheme://host:port` of the verifier: the assertions' `aud`.
    origin: String,
    _provider: Option<OAuthProvider>,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// As rendered.
    Rendered,
    /// Without Envoy's strip filter, and with header names with `_` let through: the warden
    /// filter alone must remove client values, in every spelling.
    FilterAlone,
    /// `who` sends the assertion as Pomerium does (`identity_header_names`), and the server
    /// reads it there.
    Pomerium,
    /// `who` also has `upstream_oauth2`; the server checks the TI at the provider as well.
    WithUpstreamOAuth,
}

impl AssertionStack {
    async fn start(setup: Setup) -> AssertionStack {
        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-assertion-")
            .tempdir()
            .unwrap();
        let ports = Ports::pick();
        let issuer = format!("http://127.0.0.1:{}", ports.token_service);
        let provider = match setup {
            Setup::WithUpstreamOAuth => {
                let d = dir.path().join("provider");
                std::fs::create_dir_all(&d).unwrap();
                Some(OAuthProvider::start(&d, free_port(), &["--access-ttl", "300"]).await)
            }
            _ => None,
        };
        let port = free_port();
        let origin = format!("http://127.0.0.1:{port}");
        let jwks = format!("{issuer}/.well-known/jwks.json");
        let mut args = vec![
            "--assertion-header",
            if setup == Setup::Pomerium {
                POMERIUM_HEADER
            } else {
                WARDEN_HEADER
            },
            "--verify-assertion",
            jwks.as_str(),
            "--assertion-audience",
            origin.as_str(),
            "--assertion-issuer",
            issuer.as_str(),
        ];
        let introspect = provider.as_ref().map(OAuthProvider::introspect_url);
        if let Some(url) = introspect.as_deref() {
            args.extend(["--require-bearer-introspect", url]);
        }
        let verifier_dir = dir.path().join("verifier");
        std::fs::create_dir_all(&verifier_dir).unwrap();
        // The JWKS is fetched at the first call, once the token service is up.
        let verifier = DemoServer::start_with(&verifier_dir, port, &args).await;
        let (to, internal) = (verifier.mcp_url(), format!("127.0.0.1:{}", free_port()));
        let provider_url = provider.as_ref().map(OAuthProvider::url);
        let bootstrap_hook: Option<BootstrapHook> = (setup == Setup::FilterAlone).then(|| {
            Box::new(|yaml: &mut String| {
                assert!(yaml.contains(STRIP_FILTER), "{yaml}");
                assert!(yaml.contains(UNDERSCORES_REJECTED), "{yaml}");
                *yaml = yaml.replace(STRIP_FILTER, "").replace(
                    UNDERSCORES_REJECTED,
                    "headers_with_underscores_action: ALLOW",
                );
            }) as BootstrapHook
        });
        let opts = StackOptions {
            ports: Some(ports),
            bootstrap_hook,
            config_hook: Some(Box::new(move |c: &mut Value| {
                c["authorization_server"]["internal_listen"] = json!(internal);
                let mut server = json!({});
                if let Some(p) = provider_url {
                    server["upstream_oauth2"] = json!({
                        "client_id": PROVIDER_CLIENT_ID,
                        "client_secret": PROVIDER_CLIENT_SECRET,
                        "scopes": ["repo"],
                        "endpoint": {
                            "auth_url": format!("{p}/authorize"),
                            "token_url": format!("{p}/token"),
                        },
                    });
                }
                let from = c["routes"][0]["from"].clone();
                let mut who = json!({
                    "name": "who",
                    "from": from,
                    "prefix": WHO,
                    "to": to,
                    "pass_identity_headers": true,
                    "mcp": {"server": server},
                    "policy": {"allow": {"and": [{"authenticated_user": true}]}},
                });
                if setup == Setup::Pomerium {
                    who["identity_header_names"] = json!(["X-Pomerium-Jwt-Assertion"]);
                }
                c["routes"].as_array_mut().unwrap().push(who);
            })),
            ..StackOptions::default()
        };
        let stack = Stack::start_with(opts).await;
        assert_eq!(stack.issuer(), issuer);
        AssertionStack {
            stack,
            verifier,
            origin,
            _provider: provider,
            _dir: dir,
        }
    }

    fn who_url(&self) -> String {
        self.stack.route_url(WHO)
    }

    /// A TE for the demo user on `who`.
    async fn who_token(&self) -> String {
        self.stack.mint_token(&self.who_url()).await
    }

    /// Calls on the internal cluster besides the revocation feed's polls (one a second):
    /// read when no call is in flight, so a poll under way is not half counted.
    async fn internal_calls(&self) -> u64 {
        for _ in 0..200 {
            let calls = self.stat(INTERNAL_CLUSTER_CALLS).await;
            let polls = self.stat(POLLS_OK).await + self.stat(POLLS_FAILED).await;
            let active = self
                .stat("cluster.warden_token_service_internal.upstream_rq_active")
                .await;
            let (calls_after, polls_after) = (
                self.stat(INTERNAL_CLUSTER_CALLS).await,
                self.stat(POLLS_OK).await + self.stat(POLLS_FAILED).await,
            );
            if active == 0 && calls == calls_after && polls == polls_after {
                return calls - polls;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the internal cluster never settled");
    }

    async fn stat(&self, name: &str) -> u64 {
        self.stack
            .envoy_stats(name)
            .await
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// A `whoami` tools/call with `bearer` and extra headers.
async fn whoami_raw(url: &str, bearer: &str, extra: &[(&str, &str)]) -> RawResponse {
    let auth = format!("Bearer {bearer}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    mcp_post(
        url,
        &headers,
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await
}

/// The request headers the MCP server saw for a `whoami` call.
fn seen_headers(resp: &RawResponse) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.body);
    let text = resp.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool text: {}", resp.body))
        .to_owned();
    let me: Value = serde_json::from_str(&text).unwrap();
    me["headers"].clone()
}

/// Every value of `name` among the headers the server saw.
fn values(headers: &Value, name: &str) -> Vec<String> {
    headers[name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

const WARDEN_HEADER: &str = "x-warden-jwt-assertion";
const POMERIUM_HEADER: &str = "x-pomerium-jwt-assertion";

/// The one assertion the server received, and the claims it verified.
fn received_assertion(resp: &RawResponse) -> (String, Value) {
    received_assertion_in(resp, WARDEN_HEADER)
}

/// The one assertion the server received in `header`, and the claims it verified.
fn received_assertion_in(resp: &RawResponse, header: &str) -> (String, Value) {
    let headers = seen_headers(resp);
    let assertions = values(&headers, header);
    assert_eq!(assertions.len(), 1, "exactly one assertion: {headers}");
    let verified = values(&headers, "x-demo-verified-assertion");
    assert_eq!(verified.len(), 1, "the server verified it: {headers}");
    (
        assertions[0].clone(),
        serde_json::from_str(&verified[0]).unwrap(),
    )
}

fn jose_header(jwt: &str) -> Value {
    let part = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn the_upstream_verifies_the_assertion_and_warm_calls_make_one_call_out() {
    let a = AssertionStack::start(Setup::Rendered).await;
    let te = a.who_token().await;
    assert_eq!(a.internal_calls().await, 0);

    let first = whoami_raw(&a.who_url(), &te, &[]).await;
    let (assertion, claims) = received_assertion(&first);
    assert_eq!(claims["iss"], a.stack.issuer());
    assert_eq!(claims["aud"], a.origin.as_str());
    assert_eq!(claims["sub"], DEMO_EMAIL);
    assert_eq!(claims["email"], DEMO_EMAIL);
    assert_eq!(claims["name"], DEMO_NAME);
    assert_eq!(claims["groups"], json!(["demo"]));
    assert_eq!(claims["route"], "who");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 300, "{claims}");
    // Signed with the key and kid the token service publishes, typed as no access token.
    let header = jose_header(&assertion);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], a.stack.jwks().await["keys"][0]["kid"]);
    // The TE never reaches the server.
    assert!(values(&seen_headers(&first), "authorization").is_empty());

    // Warm: more calls from the same user reuse the assertion; nothing is asked or signed.
    for _ in 0..5 {
        let again = whoami_raw(&a.who_url(), &te, &[]).await;
        assert_eq!(received_assertion(&again).0, assertion);
    }
    assert_eq!(a.internal_calls().await, 1);
    assert_eq!(a.stat(ASSERTION_LOOKUPS).await, 1);

    // The server really checks: no assertion, or one it cannot verify, gets 401.
    let direct = format!("{}/mcp", a.verifier.url());
    let bare = mcp_post(
        &direct,
        &[],
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(bare.status, 401, "{}", bare.body);
    let (head, rest) = assertion.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let forged = format!("{head}.{payload}.AAAA");
    let forged_call = mcp_post(
        &direct,
        &[("x-warden-jwt-assertion", forged.as_str())],
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(forged_call.status, 401, "{}", forged_call.body);

    // The assertion is no access token: presented as a bearer, the filter refuses it.
    for url in [a.who_url(), a.stack.mcp_url()] {
        let r = whoami_raw(&url, &assertion, &[]).await;
        assert_eq!(r.status, 401, "{url}: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }

    // A user the token service no longer knows gets no assertion, and no call goes through.
    let key = a.stack.signing_key().await;
    let mut ghost = jwt::claims(&a.stack.issuer(), &a.who_url(), jwt::now(), 300);
    ghost["sub"] = json!("ghost@example.com");
    let r = whoami_raw(&a.who_url(), &key.sign(&ghost), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("invalid_token"));
    assert_eq!(a.stat(ASSERTION_LOOKUPS).await, 2);
}

/// Any request header a server could take for an identity assertion (ours or Pomerium's, in
/// any case, with `_` for `-`), with its values.
fn assertion_like_headers(recorded: &Value) -> Vec<(String, String)> {
    let Some(headers) = recorded["headers"].as_object() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase().replace('_', "-");
            [WARDEN_HEADER, POMERIUM_HEADER, "x-pomerium-assertion"].contains(&name.as_str())
        })
        .map(|(name, value)| (name.clone(), value.to_string()))
        .collect()
}

/// A client's own identity assertion, ours or Pomerium's, never reaches an upstream:
/// replaced on `who`, removed on `demo` (which passes no identity headers). With `_` let
/// through (`underscores`), the spellings with `_` are sent too.
async fn client_assertions_never_arrive(a: &AssertionStack, underscores: bool) {
    let te = a.who_token().await;
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbkBleGFtcGxlLmNvbSJ9.Zm9yZ2Vk";
    let mut forged_headers = vec![
        ("x-warden-jwt-assertion", forged),
        ("X-Warden-Jwt-Assertion", "second.forged.value"),
        ("X-Pomerium-Jwt-Assertion", "third.forged.value"),
        ("x-pomerium-assertion", "fourth.forged.value"),
    ];
    if underscores {
        forged_headers.extend([
            ("x_warden_jwt_assertion", "fifth.forged.value"),
            ("X_Pomerium_Jwt_Assertion", "sixth.forged.value"),
            ("x-pomerium_assertion", "seventh.forged.value"),
        ]);
    }
    a.verifier.clear_recorded().await;
    let r = whoami_raw(&a.who_url(), &te, &forged_headers).await;
    let (assertion, claims) = received_assertion(&r);
    assert_ne!(assertion, forged);
    assert_eq!(claims["sub"], DEMO_EMAIL);
    let recorded = a.verifier.recorded().await;
    assert!(!recorded.is_empty());
    for request in recorded {
        let arrived = assertion_like_headers(&request);
        assert!(
            arrived
                .iter()
                .all(|(name, value)| name == WARDEN_HEADER && !value.contains("forged")),
            "a client value reached the server: {arrived:?}"
        );
    }

    let demo_te = a.stack.mint_token(&a.stack.mcp_url()).await;
    let r = whoami_raw(&a.stack.mcp_url(), &demo_te, &forged_headers).await;
    let headers = seen_headers(&r);
    assert!(
        values(&headers, "x-warden-jwt-assertion").is_empty(),
        "{headers}"
    );
    // Nor on a request the filter refuses, nor on a path of no route.
    let _ = whoami_raw(&a.stack.mcp_url(), "not-a-token", &forged_headers).await;
    let _ = raw_request(
        "GET",
        &format!("{}/elsewhere", a.stack.envoy_url()),
        &forged_headers,
        None,
    )
    .await;
    let recorded = a.stack.demo.recorded().await;
    assert!(!recorded.is_empty());
    for request in recorded {
        assert_eq!(assertion_like_headers(&request), vec![], "{request}");
    }
}

#[tokio::test]
async fn a_client_sent_assertion_never_arrives_upstream() {
    let a = AssertionStack::start(Setup::Rendered).await;
    client_assertions_never_arrive(&a, false).await;
}

#[tokio::test]
async fn a_route_can_send_the_assertion_as_pomerium_does() {
    let a = AssertionStack::start(Setup::Pomerium).await;
    let te = a.who_token().await;
    let forged = [(POMERIUM_HEADER, "forged.by.client")];
    let r = whoami_raw(&a.who_url(), &te, &forged).await;
    let (assertion, claims) = received_assertion_in(&r, POMERIUM_HEADER);
    assert_ne!(assertion, "forged.by.client");
    assert_eq!(claims["sub"], DEMO_EMAIL);
    assert_eq!(claims["route"], "who");
    // Under that name only: the route asked for Pomerium's header alone.
    assert!(values(&seen_headers(&r), WARDEN_HEADER).is_empty());
}

#[tokio::test]
async fn the_filter_itself_removes_client_assertions_and_fails_closed_without_the_token_service() {
    let mut a = AssertionStack::start(Setup::FilterAlone).await;
    // The token service down and no assertion cached: the call does not go on without one.
    let te = a.who_token().await;
    // A call on `demo` first, so the filter holds the JWKS (and nothing for `who`).
    let demo_te = a.stack.mint_token(&a.stack.mcp_url()).await;
    seen_headers(&whoami_raw(&a.stack.mcp_url(), &demo_te, &[]).await);
    a.stack.token_service.kill().await;
    let r = whoami_raw(&a.who_url(), &te, &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "the token service is unavailable",
        "{}",
        r.body
    );
    assert!(a.verifier.recorded().await.is_empty());
    a.stack.restart_token_service().await;
    client_assertions_never_arrive(&a, true).await;
}

#[tokio::test]
async fn a_route_with_upstream_oauth_and_the_assertion_sends_both() {
    let a = AssertionStack::start(Setup::WithUpstreamOAuth).await;
    let alice = UpstreamLogin {
        user: PROVIDER_USER,
        password: PROVIDER_PASSWORD,
        approve: true,
    };
    let signed = sign_in_with(&a.who_url(), (DEMO_EMAIL, DEMO_PASSWORD), Some(alice)).await;
    let before = a.internal_calls().await;
    let mut seen = None;
    for _ in 0..4 {
        let r = whoami_raw(&a.who_url(), &signed.access_token, &[]).await;
        let headers = seen_headers(&r);
        let bearer = values(&headers, "authorization");
        assert_eq!(bearer.len(), 1, "{headers}");
        assert_ne!(bearer[0], format!("Bearer {}", signed.access_token));
        let (assertion, claims) = received_assertion(&r);
        assert_eq!(claims["sub"], DEMO_EMAIL);
        assert_eq!(claims["aud"], a.origin.as_str());
        let pair = (bearer[0].clone(), assertion);
        if let Some(previous) = &seen {
            assert_eq!(previous, &pair, "both reused while warm");
        }
        seen = Some(pair);
    }
    // One TI look-up and one assertion, however many calls.
    assert_eq!(a.internal_calls().await - before, 2);
    assert_eq!(a.stat(ASSERTION_LOOKUPS).await, 1);
    assert_eq!(
        a.stat("wasmcustom.mcp_warden.upstream_token_lookups").await,
        1
    );
}

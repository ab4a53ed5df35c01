//! Upstream OAuth (issue 8) through the token service: the upstream consent step during
//! sign-in, the vault behind the internal listener (lookups, one refresh per grant, drops),
//! and the refresh-token grant that follows the upstream account. The provider is the
//! in-repo demo provider over real HTTP; the token service's router runs in-process with a
//! clock the tests move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use demo_oauth_provider::{AuthStyle, ProviderConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warden_token_service::config::Config;
use warden_token_service::AppState;

const CLIENT_ID: &str = "warden-test";
const CLIENT_SECRET: &str = "warden-test-secret";

/// The demo provider on a real socket, as the `gh` route's upstream provider.
async fn start_provider(auth_style: AuthStyle) -> Provider {
    Provider::serve(ProviderConfig {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{ISSUER}/upstream/callback")],
        auth_style,
        access_ttl: Duration::from_secs(60),
        ..ProviderConfig::default()
    })
    .await
}

/// The operator config: the usual test config plus a route `gh` whose server needs the
/// user's account at `provider`.
fn upstream_yaml(dir: &std::path::Path, provider: &str, auth_style: Option<&str>) -> String {
    let style = auth_style
        .map(|s| format!("\n            auth_style: {s}"))
        .unwrap_or_default();
    let route = format!(
        r#"  - name: gh
    from: http://127.0.0.1:9000
    prefix: /gh
    to: http://127.0.0.1:9300/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: {CLIENT_ID}
          client_secret: {CLIENT_SECRET}
          scopes: [repo, read:user]
          endpoint:
            auth_url: {provider}/authorize
            token_url: {provider}/token{style}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#
    );
    config_yaml(dir, &route, "ES256")
}

const GH: &str = "http://127.0.0.1:9000/gh";

struct Upstream {
    env: TestEnv,
    provider: Provider,
    credential: String,
}

impl Upstream {
    async fn start(style: AuthStyle, configured: Option<&str>) -> Self {
        let provider = start_provider(style).await;
        let env = TestEnv::with(|dir| upstream_yaml(dir, &provider.url, configured));
        let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
            .unwrap()
            .trim()
            .to_owned();
        Self {
            env,
            provider,
            credential,
        }
    }

    /// A call on the internal listener's router, with the credential unless `credential`
    /// says otherwise.
    async fn internal(
        &self,
        path: &str,
        body: Value,
        credential: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        let body = body.to_string();
        if let Some(c) = credential
            .or(Some(self.credential.as_str()))
            .filter(|c| !c.is_empty())
        {
            let authorization = self.env.internal_authorization(c, path, body.as_bytes());
            req = req.header(header::AUTHORIZATION, authorization);
        }
        let resp = warden_token_service::internal::router(self.env.state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// What the filter sends when the MCP server refused `token`.
    async fn drop_ti(&self, token: &str, reason: &str, scope: &str) -> (StatusCode, Value) {
        self.internal(
            "/internal/v1/upstream-token/drop",
            json!({"sub": EMAIL, "route": "gh", "access_token": token, "reason": reason, "scope": scope}),
            None,
        )
        .await
    }

    async fn lookup(&self) -> (StatusCode, Value) {
        self.internal(
            "/internal/v1/upstream-token",
            json!({"sub": EMAIL, "route": "gh"}),
            None,
        )
        .await
    }

    /// Another replica of this deployment (`TestEnv::replica`): its own vault and refresh
    /// gates on the same database, keys and clock.
    fn replica(&self) -> AppState {
        self.env.replica().state
    }

    /// A look-up on `replica`'s internal listener.
    async fn lookup_on(&self, replica: &AppState) -> (StatusCode, Value) {
        let path = "/internal/v1/upstream-token";
        let body = json!({"sub": EMAIL, "route": "gh"}).to_string();
        let authorization =
            self.env
                .internal_authorization(&self.credential, path, body.as_bytes());
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, authorization)
            .body(Body::from(body))
            .unwrap();
        let resp = warden_token_service::internal::router(replica.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sign-in for the `gh` resource up to the redirect to the provider (consent approved);
    /// returns that redirect and the browser's cookies.
    async fn to_provider(&self) -> (Resp, String) {
        let form = self
            .env
            .get(&TestEnv::authorize_uri(
                "public-app",
                "http://127.0.0.1/callback",
                &[("resource", GH)],
            ))
            .await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let flow_cookie = form.cookie("warden_flow").unwrap();
        let consent = self.env.login(&form, EMAIL, PASSWORD).await;
        let session = consent.cookie("warden_session").unwrap();
        let cookies = format!("{flow_cookie}; {session}");
        if consent.status == StatusCode::FOUND {
            // This client was approved before: straight on to the provider.
            return (consent, cookies);
        }
        assert!(
            consent
                .body
                .contains("your own account at <strong>127.0.0.1</strong>"),
            "the consent page names the upstream provider: {}",
            consent.body
        );
        let r = self.env.decide(&consent, &cookies, "approve").await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        (r, cookies)
    }

    /// The whole sign-in: returns the MCP client's redirect query.
    async fn sign_in(&self, decision: &str) -> HashMap<String, String> {
        let (to_provider, cookies) = self.to_provider().await;
        let back = self
            .provider
            .answer(&to_provider.header("location"), decision)
            .await;
        let r = self
            .env
            .get_with_cookie(
                &format!("{}?{}", back.path(), back.query().unwrap()),
                &cookies,
            )
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        r.location_query()
    }
}

#[tokio::test]
async fn sign_in_runs_the_upstream_consent_and_the_vault_serves_the_token() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let (to_provider, _) = u.to_provider().await;
    let (base, q) = to_provider.location();
    assert_eq!(base, format!("{}/authorize", u.provider.url));
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], format!("{ISSUER}/upstream/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "repo read:user");
    assert!(q["state"].len() >= 32 && !q.contains_key("code_verifier"));

    // Before the upstream step the user holds nothing.
    assert_eq!(u.lookup().await.0, StatusCode::NOT_FOUND);

    let q = u.sign_in("approve").await;
    assert_eq!(q["state"], "xyz");
    let code = q["code"].clone();
    let t = u
        .env
        .exchange_public("public-app", &code, "http://127.0.0.1/callback")
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let te = t.json();
    assert!(
        !t.body.contains("dat_"),
        "the TI never reaches the client: {}",
        t.body
    );

    let (status, ti) = u.lookup().await;
    assert_eq!(status, StatusCode::OK, "{ti}");
    let access = ti["access_token"].as_str().unwrap();
    assert!(access.starts_with("dat_"), "{ti}");
    assert_eq!(
        ti["expires_at"].as_i64().unwrap() - ti["issued_at"].as_i64().unwrap(),
        60
    );
    assert_eq!(ti["granted_at"], ti["issued_at"]);
    assert_eq!(u.provider.stats().await["authorization_code"], 1);

    // At rest the tokens are sealed: neither appears in the database files.
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(u.env.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().contains("warden.db") {
            raw.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(!raw.is_empty());
    for needle in [access.as_bytes(), b"drt_".as_slice(), b"dat_".as_slice()] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "plaintext token in SQLite"
        );
    }

    // Signing in again skips the provider: the user holds a usable token.
    let (again, _) = u
        .env
        .sign_in("trusted-app", REDIRECT, &[("resource", GH)])
        .await;
    assert!(again.contains_key("code"), "{again:?}");
    assert_eq!(u.provider.stats().await["authorization_code"], 1);

    // The client's refresh works while the upstream account is connected.
    let r = u
        .env
        .refresh_public("public-app", te["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn the_internal_listener_wants_its_credential() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let body = json!({"sub": EMAIL, "route": "gh"});
    let mut other = u.credential.clone();
    other.replace_range(0..1, if other.starts_with('A') { "B" } else { "A" });
    for bad in ["", "wrong", &u.credential[1..], &other] {
        let (status, answer) = u
            .internal("/internal/v1/upstream-token", body.clone(), Some(bad))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(answer["error"], "unauthorized");
    }
    let (status, _) = u
        .internal("/internal/v1/upstream-token/drop", json!({}), Some("wrong"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The public router does not serve it at all.
    let r = u.env.post_json("/internal/v1/upstream-token", body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // With the credential: an unknown route is named as such.
    let (status, answer) = u
        .internal(
            "/internal/v1/upstream-token",
            json!({"sub": EMAIL, "route": "demo"}),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_route"))
    );
}

#[tokio::test]
async fn a_refusal_at_the_provider_reaches_the_client_as_an_error_redirect() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let q = u.sign_in("deny").await;
    assert_eq!(q["error"], "access_denied");
    assert!(
        q["error_description"].contains("127.0.0.1 refused"),
        "{q:?}"
    );
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], ISSUER);
    assert!(!q.contains_key("code"));
    assert_eq!(u.lookup().await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_callback_is_single_use_and_bound_to_the_browser() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let (to_provider, cookies) = u.to_provider().await;
    let back = u
        .provider
        .answer(&to_provider.header("location"), "approve")
        .await;
    let callback = format!("{}?{}", back.path(), back.query().unwrap());
    // Another browser (no flow cookie) cannot finish it.
    let r = u
        .env
        .get_with_cookie(
            &callback,
            "warden_flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // The flow was taken by that attempt: a replay finds nothing either.
    let r = u.env.get_with_cookie(&callback, &cookies).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // A made-up state is refused.
    let r = u
        .env
        .get_with_cookie("/upstream/callback?state=nope&code=x", &cookies)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn each_auth_style_against_a_provider_that_accepts_only_it() {
    for (style, configured) in [
        (AuthStyle::Header, Some("header")),
        (AuthStyle::Params, Some("params")),
        // Not configured: Basic is tried first, then form parameters, and the one that
        // worked is remembered.
        (AuthStyle::Params, None),
        (AuthStyle::Header, None),
    ] {
        let u = Upstream::start(style, configured).await;
        let q = u.sign_in("approve").await;
        assert!(q.contains_key("code"), "{style:?}/{configured:?}: {q:?}");
        assert_eq!(u.lookup().await.0, StatusCode::OK);
        // A refresh uses the same style.
        u.env.advance(61);
        let (status, ti) = u.lookup().await;
        assert_eq!(status, StatusCode::OK, "{style:?}/{configured:?}: {ti}");
        let stats = u.provider.stats().await;
        assert_eq!(stats["refresh_token"], 1, "{stats}");
        let (used, unused) = match style {
            AuthStyle::Header => ("header", "params"),
            _ => ("params", "header"),
        };
        assert_eq!(
            stats["auth_styles"][used], 2,
            "{style:?}/{configured:?}: {stats}"
        );
        assert_eq!(stats["auth_styles"][unused], 0, "{stats}");
    }
}

#[tokio::test]
async fn one_refresh_for_many_lookups_and_the_rotated_token_is_kept() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    let (_, first) = u.lookup().await;
    // Within min(30 s, a tenth of the lifetime) of expiry: 60 s lifetime → 6 s before.
    u.env.advance(53);
    assert_eq!(u.lookup().await.1["access_token"], first["access_token"]);
    assert_eq!(u.provider.stats().await["refresh_token"], 0);
    u.env.advance(1);
    // Slow provider: the lookups overlap the refresh.
    u.provider.hook("/_test/delay-token?ms=300").await;
    let lookups = (0..10).map(|_| u.lookup());
    let answers = futures_util::future::join_all(lookups).await;
    let tokens: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, StatusCode::OK, "{v}");
            v["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every lookup got the one refreshed token");
    assert_ne!(
        tokens.iter().next().unwrap(),
        first["access_token"].as_str().unwrap()
    );
    assert_eq!(u.provider.stats().await["refresh_token"], 1);
    u.provider.hook("/_test/delay-token?ms=0").await;
    // The rotated refresh token was stored: the next refresh works (the old one would be
    // refused as reused, and revoke the grant).
    u.env.advance(61);
    assert_eq!(u.lookup().await.0, StatusCode::OK);
    assert_eq!(u.provider.stats().await["refresh_token"], 2);
}

#[tokio::test]
async fn a_transient_failure_keeps_the_token_and_a_refused_refresh_drops_it() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let q = u.sign_in("approve").await;
    let t = u
        .env
        .exchange_public("public-app", &q["code"], "http://127.0.0.1/callback")
        .await;
    let refresh = t.json()["refresh_token"].as_str().unwrap().to_owned();
    let (_, first) = u.lookup().await;

    // Due but not expired: the current token still serves while the provider is down.
    u.env.advance(55);
    u.provider
        .hook("/_test/fail-token?status=503&count=2")
        .await;
    let (status, ti) = u.lookup().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ti["access_token"], first["access_token"]);
    // Expired and the provider still down: 503, and the token stays for later.
    u.env.advance(10);
    let (status, answer) = u.lookup().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "upstream_unavailable");
    let (status, ti) = u.lookup().await;
    assert_eq!(status, StatusCode::OK, "the provider is back: {ti}");
    assert_ne!(ti["access_token"], first["access_token"]);

    // The user revokes the app at the provider: the next refresh is refused for good.
    u.provider.hook("/_test/revoke-user?user=alice").await;
    u.env.advance(61);
    let (status, answer) = u.lookup().await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_token"))
    );
    // ... and the MCP client's refresh grant for that route now sends it to authorization.
    let r = u.env.refresh_public("public-app", &refresh).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_grant");
    // Authorization runs the upstream consent again, and the token is back.
    let q = u.sign_in("approve").await;
    assert!(q.contains_key("code"));
    assert_eq!(u.lookup().await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_token_the_server_refuses_is_dropped_and_a_fresh_refusal_is_held() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    let (_, ti) = u.lookup().await;
    assert_eq!(ti["after_refusal"], false, "{ti}");
    // A stale token (not the current one) drops nothing.
    let (status, answer) = u.drop_ti("dat_other", "invalid_token", "").await;
    assert_eq!(
        (status, answer["dropped"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert_eq!(u.lookup().await.0, StatusCode::OK);

    // Refused long after it was granted: dropped; the user must reconnect.
    u.env.advance(120);
    let (_, ti2) = u.lookup().await;
    let token = ti2["access_token"].as_str().unwrap().to_owned();
    assert_ne!(token, ti["access_token"].as_str().unwrap());
    let (_, answer) = u
        .drop_ti(&token, "insufficient_scope", "repo admin:org")
        .await;
    assert_eq!(answer["dropped"], true);
    let (status, answer) = u.lookup().await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_token"))
    );

    // Reconnecting asks the provider for the scope the server wanted.
    let (to_provider, _) = u.to_provider().await;
    assert_eq!(
        to_provider.location_query()["scope"],
        "repo read:user admin:org"
    );
    u.sign_in("approve").await;
    let (_, fresh) = u.lookup().await;
    assert_eq!(fresh["after_refusal"], true, "{fresh}");

    // Refused again right after the grant: held, so the client gets a clear error rather
    // than another round of authorization.
    let (_, answer) = u
        .drop_ti(fresh["access_token"].as_str().unwrap(), "invalid_token", "")
        .await;
    assert_eq!(answer["dropped"], true);
    let (status, answer) = u.lookup().await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::CONFLICT, Some("upstream_refused"))
    );
}

#[tokio::test]
async fn a_first_grant_refused_at_once_sends_the_user_through_consent_again() {
    // The user revokes the app at the provider a moment after connecting it: that is not a
    // loop, the next sign-in connects it again.
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    let (_, ti) = u.lookup().await;
    let (_, answer) = u
        .drop_ti(ti["access_token"].as_str().unwrap(), "invalid_token", "")
        .await;
    assert_eq!(answer["dropped"], true);
    let (status, answer) = u.lookup().await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_token"))
    );
}

#[tokio::test]
async fn tokens_survive_a_restart_and_do_not_open_under_another_key() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    let (_, before) = u.lookup().await;
    let Upstream {
        env,
        provider,
        credential,
    } = u;
    let config: Config = env.state.config().clone();
    let dir = env.dir;
    drop(env.state);
    let env = TestEnv::open(dir, config.clone());
    let u = Upstream {
        env,
        provider,
        credential,
    };
    let (status, after) = u.lookup().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["access_token"], before["access_token"]);

    // A new key (rotation without the old one): stored tokens count as absent.
    let Upstream {
        env,
        provider,
        credential,
    } = u;
    let dir = env.dir;
    drop(env.state);
    std::fs::remove_file(config.encryption_key_file()).unwrap();
    // The signing keys sealed with the lost key go too (else the service refuses to start).
    TestEnv::forget_signing_keys(&config);
    let env = TestEnv::open(dir, config);
    let u = Upstream {
        env,
        provider,
        credential,
    };
    assert_eq!(u.lookup().await.0, StatusCode::NOT_FOUND);
}

#[test]
fn upstream_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = upstream_yaml(dir.path(), "http://127.0.0.1:9301", None);
    assert!(Config::from_yaml(&good).is_ok());
    let cases = [
        (
            "client_id: warden-test",
            "client_id: ''",
            "upstream_oauth2.client_id",
        ),
        (
            "auth_url: http://127.0.0.1:9301/authorize",
            "auth_url: http://github.example/authorize",
            "upstream_oauth2.endpoint.auth_url",
        ),
        (
            "token_url: http://127.0.0.1:9301/token",
            "token_url: not a url",
            "upstream_oauth2.endpoint.token_url",
        ),
        (
            "scopes: [repo, read:user]",
            "scopes: ['a b']",
            "upstream_oauth2.scopes[0]",
        ),
        (
            "client_secret: warden-test-secret",
            "client_secret: warden-test-secret\n          client_secret_file: /nonexistent",
            "upstream_oauth2.client_secret_file",
        ),
        (
            "client_secret: warden-test-secret",
            "client_secret_file: /nonexistent/secret",
            "upstream_oauth2.client_secret_file",
        ),
        (
            "token_url: http://127.0.0.1:9301/token",
            "token_url: http://127.0.0.1:9301/token\n          auth_style: basic",
            "auth_style",
        ),
    ];
    for (from, to, field) in cases {
        assert!(good.contains(from), "{from}");
        let e = Config::from_yaml(&good.replacen(from, to, 1))
            .expect_err(to)
            .to_string();
        assert!(e.contains(field), "{to}: {e}");
    }
    // The secret from a file, and never in debug output.
    let secret = dir.path().join("gh-secret");
    std::fs::write(&secret, "from-file\n").unwrap();
    let c = Config::from_yaml(&good.replacen(
        "client_secret: warden-test-secret",
        &format!("client_secret_file: {}", secret.display()),
        1,
    ))
    .unwrap();
    let u = c.routes[1].upstream_oauth2().unwrap();
    assert_eq!(u.client_secret.as_deref(), Some("from-file"));
    assert!(!format!("{c:?}").contains("from-file"));
    assert!(!format!("{:?}", Config::from_yaml(&good).unwrap()).contains("warden-test-secret"));
}

/// A token endpoint in front of the demo provider's: it forwards each request at once (so the
/// provider acts on it: a refresh token rotates) and then holds the answer back for `delay`
/// milliseconds, like a provider slow to answer.
async fn slow_answering_token_endpoint(
    provider: &str,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = format!("{provider}/token");
    let http = reqwest::Client::new();
    let forward = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (http, target, delay) = (http.clone(), target.clone(), delay.clone());
        async move {
            let mut req = http.post(&target).body(body);
            for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
                if let Some(v) = headers.get(&name) {
                    req = req.header(name, v.clone());
                }
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let content_type = resp.headers()[header::CONTENT_TYPE].clone();
            let body = resp.bytes().await.unwrap();
            let ms = delay.load(std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (status, [(header::CONTENT_TYPE, content_type)], body)
        }
    };
    let app = axum::Router::new().route("/token", axum::routing::post(forward));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Review finding: a refresh is cut off when its caller goes away. The filter's call-out
/// gives up after `token_service.timeout_ms` (2 s as rendered) and Envoy resets the stream;
/// hyper then drops the internal handler's future (here: the caller's timeout drops it). If
/// the provider has already rotated the refresh token, the new one is never stored and the
/// lease stays taken: the next refresh presents the rotated-out token, the provider sees a
/// reuse and revokes the grant, and the user must go through consent again.
#[tokio::test]
async fn a_refresh_whose_caller_gives_up_still_stores_the_rotated_token() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let provider = start_provider(AuthStyle::Any).await;
    let delay = std::sync::Arc::new(AtomicU64::new(0));
    let slow = slow_answering_token_endpoint(&provider.url, delay.clone()).await;
    let env = TestEnv::with(|dir| {
        upstream_yaml(dir, &provider.url, Some("header")).replace(
            &format!("token_url: {}/token", provider.url),
            &format!("token_url: {slow}/token"),
        )
    });
    let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned();
    let u = Upstream {
        env,
        provider,
        credential,
    };
    u.sign_in("approve").await;
    let (status, first) = u.lookup().await;
    assert_eq!(status, StatusCode::OK, "{first}");

    // Due for a refresh; the provider rotates at once but answers after 500 ms, and the
    // caller gives up after 100 ms.
    u.env.advance(55);
    delay.store(500, Ordering::SeqCst);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), u.lookup())
            .await
            .is_err(),
        "the lookup was meant to outlast its caller"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(u.provider.stats().await["refresh_token"], 1);
    delay.store(0, Ordering::SeqCst);

    // Later (past any lease), the user's token is the refreshed one, and the grant stands.
    u.env.advance(31);
    let (status, ti) = u.lookup().await;
    let stats = u.provider.stats().await;
    assert_eq!(
        stats["reuse_detected"], 0,
        "rotated-out refresh token reused: {stats}"
    );
    assert_eq!(status, StatusCode::OK, "{ti}");
    assert_ne!(ti["access_token"], first["access_token"]);
}

/// Review finding: a provider that hangs (README: "the provider fails a refresh (5xx,
/// timeout) → the TI is kept; while it has not expired it is still used"). The vault waits
/// up to its provider timeout (10 s) before answering with the still-valid token, but the
/// filter gives up after `token_service.timeout_ms` (2 s as rendered) and answers `503`:
/// for the last min(30 s, a tenth of the lifetime) of every TI, a hanging provider fails
/// every call although the TI still works.
#[tokio::test]
async fn a_hanging_provider_does_not_hold_back_a_token_that_still_works() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    let (_, first) = u.lookup().await;
    // Due (6 s before expiry) but valid for 5 s more.
    u.env.advance(55);
    u.provider.hook("/_test/delay-token?ms=5000").await;
    // What the filter waits for a look-up, as `render-envoy` configures it.
    let answer = tokio::time::timeout(Duration::from_millis(2_000), u.lookup()).await;
    let (status, ti) = answer.expect("the look-up outlasted the filter's call-out timeout");
    assert_eq!(status, StatusCode::OK, "{ti}");
    assert_eq!(ti["access_token"], first["access_token"]);
}

/// Review finding: a refresh writes its row whatever happened to it meanwhile. An MCP server
/// refuses the current TI (`insufficient_scope`, asking for `admin:org`) while a refresh of
/// the same grant is at the provider: the drop goes through, then the refresh's write puts
/// a token back and the scope the server asked for is forgotten (the write copies the row
/// read before the drop), so the next consent does not ask for it.
#[tokio::test]
async fn a_drop_during_a_refresh_is_not_undone_by_the_refresh() {
    let u = std::sync::Arc::new(Upstream::start(AuthStyle::Any, None).await);
    u.sign_in("approve").await;
    let (_, first) = u.lookup().await;
    u.env.advance(55);
    u.provider.hook("/_test/delay-token?ms=500").await;
    let refreshing = {
        let u = u.clone();
        tokio::spawn(async move { u.lookup().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, answer) = u
        .internal(
            "/internal/v1/upstream-token/drop",
            json!({"sub": EMAIL, "route": "gh", "access_token": first["access_token"],
                   "reason": "insufficient_scope", "scope": "admin:org"}),
            None,
        )
        .await;
    assert_eq!(answer["dropped"], true);
    let _ = refreshing.await.unwrap();
    u.provider.hook("/_test/delay-token?ms=0").await;
    // The scope the server asked for is still remembered for the next consent.
    let row = u
        .env
        .state
        .store()
        .upstream_token(EMAIL, "gh")
        .unwrap()
        .unwrap();
    assert_eq!(row.extra_scope, "admin:org", "{row:?}");
}

#[tokio::test]
async fn the_pkce_verifier_is_not_stored_in_the_clear() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    let (to_provider, _) = u.to_provider().await;
    let q = to_provider.location_query();
    let flow = u
        .env
        .state
        .store()
        .take_upstream_flow(
            &warden_token_service::digest::hash_secret(&q["state"]),
            1_900_000_000,
        )
        .unwrap()
        .expect("the upstream flow is stored under the state's digest");
    assert_ne!(
        challenge(&flow.pkce_verifier),
        q["code_challenge"],
        "the stored value is the verifier itself"
    );
    assert!(!format!("{flow:?}").is_empty());
}

#[tokio::test]
async fn a_callback_after_the_sign_in_ended_stores_nothing() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    // A session from long ago (12 h is its lifetime), still valid for 5 minutes.
    let (q, session) = u
        .env
        .sign_in("trusted-app", REDIRECT, &[("resource", GH)])
        .await;
    assert!(
        !q.contains_key("code"),
        "the upstream step comes first: {q:?}"
    );
    u.env.advance(12 * 3600 - 300);
    // Another client's authorization in that session, on to the provider.
    let consent = u
        .env
        .get_with_cookie(
            &TestEnv::authorize_uri(
                "public-app",
                "http://127.0.0.1/callback",
                &[("resource", GH)],
            ),
            &session,
        )
        .await;
    let cookies = format!("{}; {session}", consent.cookie("warden_flow").unwrap());
    let to_provider = u.env.decide(&consent, &cookies, "approve").await;
    assert_eq!(
        to_provider.status,
        StatusCode::FOUND,
        "{}",
        to_provider.body
    );
    let back = u
        .provider
        .answer(&to_provider.header("location"), "approve")
        .await;
    // The session ends while the user is at the provider.
    u.env.advance(360);
    let r = u
        .env
        .get_with_cookie(
            &format!("{}?{}", back.path(), back.query().unwrap()),
            &cookies,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        u.lookup().await.0,
        StatusCode::NOT_FOUND,
        "no TI was stored"
    );
    assert_eq!(u.provider.stats().await["authorization_code"], 0);
}

#[tokio::test]
async fn a_slow_provider_gets_one_refresh_however_many_lookups_arrive() {
    let u = std::sync::Arc::new(Upstream::start(AuthStyle::Any, None).await);
    u.sign_in("approve").await;
    let (_, first) = u.lookup().await;
    u.env.advance(55);
    // The provider hangs, then fails the refresh.
    u.provider.hook("/_test/delay-token?ms=1500").await;
    u.provider
        .hook("/_test/fail-token?status=503&count=1")
        .await;
    let before = u.provider.stats().await["token_requests"].as_u64().unwrap();
    // Twenty look-ups while that refresh hangs: each answers in time with the current
    // token, and none queues a refresh of its own behind it.
    let lookups = (0..20).map(|_| {
        let u = u.clone();
        async move {
            tokio::time::timeout(Duration::from_millis(2_000), u.lookup())
                .await
                .expect("a look-up outlasted the filter's call-out timeout")
        }
    });
    for (status, ti) in futures_util::future::join_all(lookups).await {
        assert_eq!(status, StatusCode::OK, "{ti}");
        assert_eq!(ti["access_token"], first["access_token"]);
    }
    // Long enough for queued refreshes (1.5 s each) to have reached the provider.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let requests = u.provider.stats().await["token_requests"].as_u64().unwrap();
    assert_eq!(
        requests - before,
        1,
        "one token request for twenty look-ups"
    );
    // The next look-up tries again, and the provider is back.
    u.provider.hook("/_test/delay-token?ms=0").await;
    let (status, now) = u.lookup().await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_ne!(now["access_token"], first["access_token"]);
}

/// Issue 18: two replicas on one database, look-ups for one grant arriving on both in every
/// refresh window. Each window costs the provider exactly one refresh, and the provider never
/// sees a rotated-out refresh token. Before the claim was tied to the row's version, a
/// replica that read the row, waited, and claimed the lease the other had just released
/// refreshed a second time with the refresh token the first had rotated out (about every
/// other window).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_refresh_a_grant_once_per_window_and_never_with_a_rotated_out_token() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    assert_eq!(u.lookup().await.0, StatusCode::OK);
    let other = u.replica();
    // A provider that takes a while widens the window in which both replicas race.
    u.provider.hook("/_test/delay-token?ms=150").await;
    let mut previous = String::new();
    for window in 1..=8u64 {
        u.env.advance(if window % 2 == 0 { 61 } else { 55 });
        let here = (0..3).map(|_| u.lookup_on(&u.env.state));
        let there = (0..3).map(|_| u.lookup_on(&other));
        let answers = futures_util::future::join_all(here.chain(there)).await;
        let mut tokens = std::collections::BTreeSet::new();
        for (status, ti) in &answers {
            assert_eq!(*status, StatusCode::OK, "window {window}: {ti}");
            tokens.insert(ti["access_token"].as_str().unwrap().to_owned());
        }
        let stats = u.provider.stats().await;
        assert_eq!(
            stats["reuse_detected"], 0,
            "window {window}: a rotated-out refresh token reached the provider: {stats}"
        );
        assert_eq!(
            stats["refresh_token"], window,
            "window {window}: one refresh per window across both replicas: {stats}"
        );
        // Every look-up got the one refreshed token (or, in a window where the old one
        // still worked, possibly the old one), never an older one.
        assert!(!tokens.contains(&previous), "window {window}: {tokens:?}");
        previous = tokens.into_iter().next_back().unwrap_or_default();
    }
}

/// Issue 18: a look-up that waited for another replica's lease to run out refreshes with the
/// time of the provider's answer, not the time it started waiting (then the new TI would be
/// stored as already partly spent, and due again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_waiting_for_a_lease_is_stamped_with_the_time_it_was_issued() {
    let u = Upstream::start(AuthStyle::Any, None).await;
    u.sign_in("approve").await;
    assert_eq!(u.lookup().await.0, StatusCode::OK);
    u.env.advance(61);
    let start = u.env.state.now();
    // Another replica took the lease and died: it runs out 2 s from now.
    let store = u.env.state.store().clone();
    let row = store.upstream_token(EMAIL, "gh").unwrap().unwrap();
    assert!(store
        .claim_upstream_refresh(EMAIL, "gh", row.version, start, start + 2)
        .unwrap());
    let other = u.replica();
    let lookup = u.lookup_on(&other);
    let (status, ti) = tokio::time::timeout(Duration::from_secs(10), lookup)
        .await
        .unwrap_or((StatusCode::GATEWAY_TIMEOUT, Value::Null));
    // The caller may have given up (patience 1.5 s); the refresh goes on and is stored.
    if status != StatusCode::OK {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ti}");
    }
    let mut stored = store.upstream_token(EMAIL, "gh").unwrap().unwrap();
    for _ in 0..50 {
        if stored.version != row.version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = store.upstream_token(EMAIL, "gh").unwrap().unwrap();
    }
    assert_ne!(stored.version, row.version, "the waiting replica refreshed");
    assert!(
        stored.issued_at >= start + 2,
        "issued at {} although the refresh happened at least 2 s after {start}",
        stored.issued_at
    );
    assert_eq!(u.provider.stats().await["refresh_token"], 1);
}

//! Sign-in through the organisation's OpenID Connect provider (issue 9): the token service as
//! relying party of the in-repo demo provider over real HTTP (discovery, JWKS, authorize,
//! token, userinfo). The router runs in-process; the provider's page is answered as a user
//! would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use demo_oauth_provider::{oidc_subject, ProviderConfig};
use serde_json::{json, Value};
use warden_token_service::config::Config;

const CLIENT_ID: &str = "warden-sso";
const CLIENT_SECRET: &str = "warden-sso-secret";
const APP: &str = "public-app";
const APP_REDIRECT: &str = "http://127.0.0.1/callback";

/// The common test config with `identity_provider.oidc` at `provider` (plus `extra` lines
/// under it); `local: false` removes the local users.
fn oidc_yaml(dir: &std::path::Path, provider: &str, extra: &str, local: bool) -> String {
    let mut yaml = config_yaml(dir, "", "ES256");
    if !local {
        let start = yaml.find("  local:\n").unwrap();
        let end = yaml.find("clients:\n").unwrap();
        yaml.replace_range(start..end, "");
    }
    let oidc = format!(
        "  oidc:\n    issuer: {provider}\n    client_id: {CLIENT_ID}\n    client_secret: {CLIENT_SECRET}\n    display_name: Example SSO\n{extra}"
    );
    yaml.replace(
        "identity_provider:\n",
        &format!("identity_provider:\n{oidc}"),
    )
}

struct Sso {
    env: TestEnv,
    provider: Provider,
}

/// Where the provider sent the browser back, as a path on the token service.
fn back_path(url: &url::Url) -> String {
    assert!(url.as_str().starts_with(ISSUER), "{url}");
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

fn te_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

impl Sso {
    async fn start(extra: &str, local: bool) -> Self {
        Self::start_with(ProviderConfig::default(), extra, local).await
    }

    async fn start_with(config: ProviderConfig, extra: &str, local: bool) -> Self {
        let provider = Provider::serve(ProviderConfig {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![format!("{ISSUER}/login/callback")],
            ..config
        })
        .await;
        let env = TestEnv::with(|dir| oidc_yaml(dir, &provider.url, extra, local));
        // ID tokens are checked against the provider's clock, the real one.
        env.clock.store(
            warden_token_service::clock::now_unix(),
            std::sync::atomic::Ordering::SeqCst,
        );
        Self { env, provider }
    }

    /// `/authorize` for the app, answered with the redirect to the identity provider's sign-in
    /// start; returns it and the browser's flow cookie.
    async fn authorize(&self) -> (Resp, String) {
        let r = self
            .env
            .get(&TestEnv::authorize_uri(
                APP,
                APP_REDIRECT,
                &[("resource", RESOURCE)],
            ))
            .await;
        let cookie = r.cookie("warden_flow").expect("flow cookie");
        (r, cookie)
    }

    /// From `/authorize` to the provider's authorization URL (provider-only config).
    async fn to_provider(&self) -> (String, String) {
        let (r, cookie) = self.authorize().await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let start = r.header("location");
        let start = start
            .strip_prefix(ISSUER)
            .expect("start on the token service");
        let r = self.env.get_with_cookie(start, &cookie).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let to = r.header("location");
        assert!(to.starts_with(&self.provider.url), "{to}");
        (to, cookie)
    }

    /// The provider's answer, brought back to the callback in the browser holding `cookie`.
    async fn back(&self, provider_url: &str, decision: &str, cookie: &str) -> Resp {
        let back = self.provider.answer(provider_url, decision).await;
        self.env.get_with_cookie(&back_path(&back), cookie).await
    }

    /// After the callback: consent approved when asked, the code redeemed; the TE's claims.
    async fn finish(&self, r: Resp, flow_cookie: &str) -> Value {
        let session = r.cookie("warden_session").expect("session cookie");
        let r = if r.status == StatusCode::OK {
            self.env
                .decide(&r, &format!("{flow_cookie}; {session}"), "approve")
                .await
        } else {
            r
        };
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let code = r.location_query()["code"].clone();
        let t = self.env.exchange_public(APP, &code, APP_REDIRECT).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        let mut claims = te_claims(t.json()["access_token"].as_str().unwrap());
        claims["refresh_token"] = t.json()["refresh_token"].clone();
        claims
    }

    async fn sign_in(&self) -> Value {
        let (to, cookie) = self.to_provider().await;
        let r = self.back(&to, "approve", &cookie).await;
        self.finish(r, &cookie).await
    }

    /// A sign-in whose callback must fail: the page, and no session was started.
    async fn failed_sign_in(&self) -> Resp {
        let (to, cookie) = self.to_provider().await;
        let r = self.back(&to, "approve", &cookie).await;
        assert!(
            r.cookie("warden_session").is_none(),
            "no session on failure"
        );
        r
    }
}

#[tokio::test]
async fn only_the_provider_signs_in_and_the_te_carries_its_claims() {
    let sso = Sso::start("", false).await;
    let (r, _) = sso.authorize().await;
    assert_eq!(
        r.status,
        StatusCode::FOUND,
        "straight to the provider: {}",
        r.body
    );
    let claims = sso.sign_in().await;
    // The user is the provider's iss + sub, never the email.
    let key = format!("{}#{}", sso.provider.url, oidc_subject("alice"));
    assert_eq!(claims["sub"], key);
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], json!(["engineering"]));
    assert_eq!(claims["aud"], RESOURCE);

    // The refresh grant keeps the claims of the last sign-in.
    let t = sso
        .env
        .refresh_public(APP, claims["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let refreshed = te_claims(t.json()["access_token"].as_str().unwrap());
    assert_eq!(refreshed["sub"], key);
    assert_eq!(refreshed["groups"], json!(["engineering"]));
    let stats = sso.provider.stats().await;
    assert_eq!(
        stats["discovery_requests"], 1,
        "discovery is cached: {stats}"
    );
    assert_eq!(stats["jwks_requests"], 1, "{stats}");
    assert_eq!(
        stats["userinfo_requests"], 0,
        "the ID token had every claim: {stats}"
    );
    // What `/metrics` reports (README, "Token service metrics"): one sign-in, one call of
    // each kind the provider answered.
    assert_metrics(
        &sso.env.state,
        &[
            "warden_sign_ins_total{method=\"identity_provider\",result=\"success\"} 1",
            "warden_identity_provider_calls_total{call=\"discovery\",result=\"ok\"} 1",
            "warden_identity_provider_calls_total{call=\"jwks\",result=\"ok\"} 1",
            "warden_identity_provider_calls_total{call=\"token\",result=\"ok\"} 1",
        ],
    );
}

#[tokio::test]
async fn with_local_users_the_page_offers_both() {
    let sso = Sso::start("", true).await;
    let (page, cookie) = sso.authorize().await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Sign in with Example SSO"),
        "{}",
        page.body
    );
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    // The password still works beside the provider…
    let r = sso.env.login(&page, EMAIL, PASSWORD).await;
    assert!(r.cookie("warden_session").is_some(), "{}", r.body);
    // …and the page's link starts the provider's sign-in for the same flow.
    let (page, cookie2) = sso.authorize().await;
    let marker = "id=\"idp-sign-in\" href=\"";
    let start = page.body.find(marker).unwrap() + marker.len();
    let href =
        page.body[start..start + page.body[start..].find('"').unwrap()].replace("&amp;", "&");
    let r = sso
        .env
        .get_with_cookie(href.strip_prefix(ISSUER).unwrap(), &cookie2)
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let r = sso.back(&r.header("location"), "approve", &cookie2).await;
    let claims = sso.finish(r, &cookie2).await;
    assert_eq!(claims["email"], "alice@example.com");
    assert_ne!(
        claims["sub"], EMAIL,
        "the provider's alice is not the local alice"
    );
    drop(cookie);
}

#[tokio::test]
async fn claims_missing_from_the_id_token_come_from_userinfo() {
    let sso = Sso::start("    groups_claim: realm_access.roles\n", false).await;
    sso.provider
        .hook_with(
            "/_test/claims?user=alice&placement=userinfo",
            Some(
                json!({"email": "alice@corp.example", "preferred_username": "alice",
                        "realm_access": {"roles": ["admin", "ops"]}}),
            ),
        )
        .await;
    let claims = sso.sign_in().await;
    assert_eq!(claims["email"], "alice@corp.example");
    assert_eq!(claims["name"], "alice");
    assert_eq!(claims["groups"], json!(["admin", "ops"]));
    assert_eq!(sso.provider.stats().await["userinfo_requests"], 1);
    assert_metrics(
        &sso.env.state,
        &["warden_identity_provider_calls_total{call=\"userinfo\",result=\"ok\"} 1"],
    );
}

#[tokio::test]
async fn claims_are_refreshed_at_the_next_sign_in() {
    let sso = Sso::start("", false).await;
    let first = sso.sign_in().await;
    assert_eq!(first["groups"], json!(["engineering"]));
    sso.provider
        .hook_with(
            "/_test/claims?user=alice",
            Some(json!({"email": "alice@example.com", "name": "Alice", "groups": ["finance"]})),
        )
        .await;
    let second = sso.sign_in().await;
    assert_eq!(second["sub"], first["sub"], "the same user");
    assert_eq!(second["groups"], json!(["finance"]));
    assert_eq!(second["name"], "Alice");
}

#[tokio::test]
async fn an_unverified_email_is_refused_unless_allowed() {
    let unverified = json!({"email": "alice@example.com", "email_verified": false, "groups": []});
    let sso = Sso::start("", false).await;
    sso.provider
        .hook_with("/_test/claims?user=alice", Some(unverified.clone()))
        .await;
    let r = sso.failed_sign_in().await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.body.contains("not verified the email address"),
        "{}",
        r.body
    );
    assert_metrics(
        &sso.env.state,
        &["warden_sign_ins_total{method=\"identity_provider\",result=\"failure\"} 1"],
    );

    let allowing = Sso::start("    allow_unverified_email: true\n", false).await;
    allowing
        .provider
        .hook_with("/_test/claims?user=alice", Some(unverified))
        .await;
    assert_eq!(allowing.sign_in().await["email"], "alice@example.com");
}

#[tokio::test]
async fn id_tokens_that_fail_a_check_are_refused_with_a_page() {
    let sso = Sso::start("", false).await;
    for (mode, says) in [
        ("wrong-aud", "issued to another application"),
        ("azp-other", "issued to another application"),
        ("wrong-iss", "issued by another provider"),
        ("wrong-nonce", "nonce mismatch"),
        ("no-nonce", "nonce mismatch"),
        ("expired", "expired"),
        ("bad-signature", "signature does not verify"),
        ("unknown-kid", "key the provider does not publish"),
        ("alg-none", "algorithm none is not accepted"),
        ("hs256", "algorithm HS256 is not accepted"),
    ] {
        sso.provider
            .hook(&format!("/_test/id-token?mode={mode}"))
            .await;
        let r = sso.failed_sign_in().await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{mode}: {}", r.body);
        assert!(r.body.contains(says), "{mode}: {}", r.body);
        assert!(r.body.contains("Example SSO"), "{mode}: {}", r.body);
    }
    // Nothing was stuck: the next sign-in works.
    assert_eq!(sso.sign_in().await["email"], "alice@example.com");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_unknown_keys_do_not_flood_the_jwks() {
    let sso = Sso::start("", false).await;
    sso.sign_in().await;
    assert_eq!(sso.provider.stats().await["jwks_requests"], 1);
    sso.provider.hook("/_test/rotate-key").await;
    sso.sign_in().await;
    assert_eq!(
        sso.provider.stats().await["jwks_requests"],
        2,
        "one fetch for the new kid"
    );
    // A key the provider never publishes: one more fetch at most, however many sign-ins.
    sso.provider
        .hook("/_test/id-token?mode=unknown-kid&count=3")
        .await;
    for _ in 0..3 {
        assert_eq!(sso.failed_sign_in().await.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(sso.provider.stats().await["jwks_requests"], 2);
}

#[tokio::test]
async fn failures_are_clear_pages_never_hangs() {
    let sso = Sso::start("", false).await;

    // Refused consent at the provider.
    let (to, cookie) = sso.to_provider().await;
    let r = sso.back(&to, "deny", &cookie).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("declined at Example SSO"), "{}", r.body);

    // A callback whose state is unknown, replayed, or brought to another browser.
    let r = sso
        .env
        .get_with_cookie("/login/callback?code=x&state=forged", &cookie)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("state mismatch"), "{}", r.body);
    let (to, cookie) = sso.to_provider().await;
    let back = back_path(&sso.provider.answer(&to, "approve").await);
    let other = sso
        .env
        .get_with_cookie(&back, "warden_flow=another-browser")
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    let replay = sso.env.get_with_cookie(&back, &cookie).await;
    assert_eq!(
        replay.status,
        StatusCode::BAD_REQUEST,
        "single use: {}",
        replay.body
    );

    // The provider's token endpoint failing.
    sso.provider.hook("/_test/fail-token?status=503").await;
    let r = sso.failed_sign_in().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("Example SSO cannot be reached"),
        "{}",
        r.body
    );

    // Discovery failing before anything is cached: a page at the start, not a redirect.
    let fresh = Sso::start("", false).await;
    fresh
        .provider
        .hook("/_test/fail-discovery?status=503")
        .await;
    let (r, cookie) = fresh.authorize().await;
    let start = r.header("location");
    let r = fresh
        .env
        .get_with_cookie(start.strip_prefix(ISSUER).unwrap(), &cookie)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("Example SSO cannot be reached"),
        "{}",
        r.body
    );
    // Once the provider is back, sign-in works.
    assert_eq!(fresh.sign_in().await["email"], "alice@example.com");
}

#[tokio::test]
async fn a_provider_that_is_not_there_gets_a_page_quickly() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = TestEnv::with(|dir| oidc_yaml(dir, &url, "", false));
    let r = env
        .get(&TestEnv::authorize_uri(
            APP,
            APP_REDIRECT,
            &[("resource", RESOURCE)],
        ))
        .await;
    let cookie = r.cookie("warden_flow").unwrap();
    let started = std::time::Instant::now();
    let r = env
        .get_with_cookie(r.header("location").strip_prefix(ISSUER).unwrap(), &cookie)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn oidc_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, field) in [
        ("    scopes: [email]\n", "identity_provider.oidc.scopes"),
        (
            "    groups_claim: ''\n",
            "identity_provider.oidc.groups_claim",
        ),
    ] {
        let e = Config::from_yaml(&oidc_yaml(
            dir.path(),
            "https://idp.example.com",
            extra,
            false,
        ))
        .unwrap_err();
        assert_eq!(e.path, field, "{e}");
    }
    for (issuer, field) in [
        ("http://idp.example.com", "identity_provider.oidc.issuer"),
        ("https://idp.example.com/", "identity_provider.oidc.issuer"),
    ] {
        let e = Config::from_yaml(&oidc_yaml(dir.path(), issuer, "", false)).unwrap_err();
        assert_eq!(e.path, field, "{e}");
    }
    let e = Config::from_yaml(&oidc_yaml(
        dir.path(),
        "https://idp.example.com",
        "    client_secret_file: /nonexistent/secret\n",
        false,
    ))
    .unwrap_err();
    assert_eq!(e.path, "identity_provider.oidc.client_secret_file", "{e}");
    // The secret stays out of debug output.
    let c =
        Config::from_yaml(&oidc_yaml(dir.path(), "https://idp.example.com", "", false)).unwrap();
    assert!(!format!("{c:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn sign_ins_waiting_on_an_unresponsive_provider_share_one_timeout() {
    // A provider that accepts connections and never answers: every fetch runs into the 10 s
    // timeout. Sign-ins that started meanwhile must not each wait out another one in turn.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let env = TestEnv::with(|dir| oidc_yaml(dir, &url, "", false));
    let mut starts = Vec::new();
    for _ in 0..3 {
        let r = env
            .get(&TestEnv::authorize_uri(
                APP,
                APP_REDIRECT,
                &[("resource", RESOURCE)],
            ))
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let cookie = r.cookie("warden_flow").unwrap();
        let start = r
            .header("location")
            .strip_prefix(ISSUER)
            .unwrap()
            .to_owned();
        starts.push((start, cookie));
    }
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        env.get_with_cookie(&starts[0].0, &starts[0].1),
        env.get_with_cookie(&starts[1].0, &starts[1].1),
        env.get_with_cookie(&starts[2].0, &starts[2].1),
    );
    let elapsed = started.elapsed();
    for r in [a, b, c] {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    }
    assert!(
        elapsed < std::time::Duration::from_secs(19),
        "three sign-ins waited {elapsed:?}: one timeout each, in turn"
    );
    drop(silent);
}

//! Deprovisioning (issue 18): a user of the identity provider is checked again there every
//! `recheck_seconds`, and loses everything here when the provider refuses them; a local user
//! removed from the config loses everything at the next start. The router runs in-process
//! with a movable clock; the demo provider answers over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use demo_oauth_provider::{oidc_subject, ProviderConfig};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use warden_core::internal_api::RevokedKind;
use warden_token_service::config::Config;
use warden_token_service::recheck::{self, RoundOutcome, RETRY_SECONDS};

const CLIENT_ID: &str = "warden-sso";
const CLIENT_SECRET: &str = "warden-sso-secret";
const APP: &str = "public-app";
const APP_REDIRECT: &str = "http://127.0.0.1/callback";
/// `recheck_seconds` in these tests. The clock moves less than the provider's ID token
/// lifetime (300 s) in all, since refreshed ID tokens are checked against it.
const RECHECK: i64 = 120;

fn oidc_yaml(dir: &std::path::Path, provider: &str, extra: &str) -> String {
    let yaml = config_yaml(dir, "", "ES256");
    let oidc = format!(
        "  oidc:\n    issuer: {provider}\n    client_id: {CLIENT_ID}\n    client_secret: {CLIENT_SECRET}\n{extra}"
    );
    yaml.replace(
        "identity_provider:\n",
        &format!("identity_provider:\n{oidc}"),
    )
}

fn te_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

struct Sso {
    env: TestEnv,
    provider: Provider,
}

/// A user signed in through the provider: their key, MCP refresh token and TE claims.
struct Signed {
    key: String,
    refresh_token: String,
    te: Value,
}

impl Sso {
    async fn start() -> Self {
        let provider = Provider::serve(ProviderConfig {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![format!("{ISSUER}/login/callback")],
            users: vec![
                ("alice".into(), "alice-password".into()),
                ("bob".into(), "bob-password".into()),
            ],
            user_claims: [
                (
                    "alice".to_owned(),
                    json!({"email": "alice@example.com", "name": "Alice", "groups": ["engineering"]}),
                ),
                (
                    "bob".to_owned(),
                    json!({"email": "bob@example.com", "name": "Bob", "groups": ["sales"]}),
                ),
            ]
            .into(),
            ..ProviderConfig::default()
        })
        .await;
        let extra = format!("    recheck_seconds: {RECHECK}\n");
        let env = TestEnv::with(|dir| oidc_yaml(dir, &provider.url, &extra));
        // ID tokens are checked against the provider's clock, the real one.
        env.clock
            .store(warden_token_service::clock::now_unix(), Ordering::SeqCst);
        Self { env, provider }
    }

    /// `/authorize` → the provider's page, answered as `user` → consent → code → tokens.
    async fn sign_in(&self, user: &str) -> Signed {
        let env = &self.env;
        let r = env
            .get(&TestEnv::authorize_uri(
                APP,
                APP_REDIRECT,
                &[("resource", RESOURCE)],
            ))
            .await;
        let page_cookie = r.cookie("warden_flow").unwrap();
        // Local users exist too: the sign-in page links to the provider.
        let marker = "id=\"idp-sign-in\" href=\"";
        let start = r.body.find(marker).unwrap() + marker.len();
        let href = r.body[start..start + r.body[start..].find('"').unwrap()].replace("&amp;", "&");
        let r = env
            .get_with_cookie(href.strip_prefix(ISSUER).unwrap(), &page_cookie)
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let back = self
            .provider
            .answer_as(
                &r.header("location"),
                "approve",
                user,
                &format!("{user}-password"),
            )
            .await;
        let r = env
            .get_with_cookie(
                &format!("{}?{}", back.path(), back.query().unwrap()),
                &page_cookie,
            )
            .await;
        let session = r.cookie("warden_session").expect("session cookie");
        let r = env
            .decide(&r, &format!("{page_cookie}; {session}"), "approve")
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let t = env
            .exchange_public(APP, &r.location_query()["code"], APP_REDIRECT)
            .await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        let te = te_claims(t.json()["access_token"].as_str().unwrap());
        Signed {
            key: format!("{}#{}", self.provider.url, oidc_subject(user)),
            refresh_token: t.json()["refresh_token"].as_str().unwrap().to_owned(),
            te,
        }
    }

    /// The MCP client's refresh: the new TE's claims, keeping the rotated token.
    async fn refresh(&self, signed: &mut Signed) -> Result<Value, String> {
        let t = self.env.refresh_public(APP, &signed.refresh_token).await;
        if t.status != StatusCode::OK {
            return Err(t.json()["error"].as_str().unwrap_or_default().to_owned());
        }
        signed.refresh_token = t.json()["refresh_token"].as_str().unwrap().to_owned();
        Ok(te_claims(t.json()["access_token"].as_str().unwrap()))
    }

    async fn round(&self, holder: &str) -> RoundOutcome {
        recheck::round(&self.env.state, holder).await.unwrap()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.provider.stats().await[name].as_u64().unwrap()
    }
}

/// The revocation feed as a filter would read it at `now`.
fn feed_at(env: &TestEnv, now: i64) -> Vec<(RevokedKind, String)> {
    env.state
        .store()
        .revocations_after(0, 100, now)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.id))
        .collect()
}

fn outcome(checked: u64, revoked: u64, failed: u64) -> RoundOutcome {
    RoundOutcome {
        checked,
        revoked,
        failed,
    }
}

#[tokio::test]
async fn a_user_disabled_at_the_provider_loses_everything_at_the_next_check_and_not_before() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    let mut bob = sso.sign_in("bob").await;
    let sid = alice.te["sid"].as_str().unwrap().to_owned();
    let token_requests = sso.stat("token_requests").await;
    sso.provider.hook("/_test/disable-user?user=alice").await;

    // Within recheck_seconds of the sign-in: the provider is not asked, nothing changes.
    sso.env.advance(RECHECK / 2);
    assert_eq!(sso.round("replica-a").await, RoundOutcome::default());
    assert_eq!(sso.stat("token_requests").await, token_requests);
    sso.refresh(&mut alice).await.unwrap();

    // Past it: the refresh at the provider answers invalid_grant; alice loses it all.
    sso.env.advance(RECHECK / 2 + 1);
    assert_eq!(sso.round("replica-a").await, outcome(1, 1, 0));
    assert_eq!(sso.stat("refresh_failures").await, 1);
    assert_eq!(sso.refresh(&mut alice).await.unwrap_err(), "invalid_grant");
    let now = sso.env.state.now();
    assert!(!sso.env.state.store().session_live(&sid, now).unwrap());
    assert!(
        feed_at(&sso.env, now).contains(&(RevokedKind::User, alice.key.clone())),
        "the feed has the user: {:?}",
        feed_at(&sso.env, now)
    );
    let counters = sso.env.state.recheck_counters();
    assert_eq!(counters.revoked.load(Ordering::SeqCst), 1);
    assert_eq!(counters.checked.load(Ordering::SeqCst), 1);
    assert_metrics(
        &sso.env.state,
        &[
            "warden_identity_provider_calls_total{call=\"recheck\",result=\"refused\"} 1",
            "warden_identity_provider_calls_total{call=\"recheck\",result=\"ok\"} 1",
        ],
    );
    // Bob, checked in the same round, keeps his access.
    sso.refresh(&mut bob).await.unwrap();

    // Alice holds nothing now: later rounds leave her alone.
    sso.env.advance(RECHECK + 1);
    let requests = sso.stat("token_requests").await;
    assert_eq!(sso.round("replica-a").await, outcome(1, 0, 0), "bob only");
    assert_eq!(sso.stat("token_requests").await, requests + 1);
}

#[tokio::test]
async fn an_unreachable_provider_revokes_nothing_and_the_next_round_checks_again() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    sso.env.advance(RECHECK + 1);
    sso.provider.hook("/_test/fail-token?status=503").await;
    assert_eq!(sso.round("replica-a").await, outcome(0, 0, 1));
    let counters = sso.env.state.recheck_counters();
    assert_eq!(counters.failed.load(Ordering::SeqCst), 1);
    assert_metrics(
        &sso.env.state,
        &[
            "warden_identity_provider_calls_total{call=\"recheck\",result=\"unavailable\"} 1",
            "warden_identity_provider_calls_total{call=\"token\",result=\"unavailable\"} 1",
        ],
    );
    sso.refresh(&mut alice).await.unwrap();
    // Not again in the same breath: at a later round.
    assert_eq!(sso.round("replica-a").await, RoundOutcome::default());
    assert_eq!(sso.stat("refresh_failures").await, 1);

    // The provider is back: the next round checks alice, who keeps her access.
    sso.env.advance(RETRY_SECONDS);
    assert_eq!(sso.round("replica-a").await, outcome(1, 0, 0));
    assert_eq!(sso.stat("refresh_token").await, 1);
    sso.refresh(&mut alice).await.unwrap();
    assert!(feed_at(&sso.env, sso.env.state.now()).is_empty());
    // Checked: not due again until recheck_seconds have passed.
    sso.env.advance(RETRY_SECONDS);
    assert_eq!(sso.round("replica-a").await, RoundOutcome::default());
}

#[tokio::test]
async fn a_check_that_fails_after_the_refresh_keeps_the_rotated_refresh_token() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    // The refresh works (the provider rotates the token), its ID token fails the signature
    // check: no answer, so nothing is revoked, and the rotated token is what is kept.
    sso.provider
        .hook("/_test/id-token?mode=bad-signature")
        .await;
    sso.env.advance(RECHECK + 1);
    assert_eq!(sso.round("replica-a").await, outcome(0, 0, 1));
    assert_eq!(sso.stat("refresh_token").await, 1);
    sso.env.advance(RETRY_SECONDS);
    assert_eq!(sso.round("replica-a").await, outcome(1, 0, 0));
    let stats = sso.provider.stats().await;
    assert_eq!(stats["refresh_token"], 2, "{stats}");
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    sso.refresh(&mut alice).await.unwrap();
}

#[tokio::test]
async fn groups_changed_at_the_provider_show_in_the_next_te_after_the_check() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    assert_eq!(alice.te["groups"], json!(["engineering"]));
    sso.provider
        .hook_with(
            "/_test/claims?user=alice",
            Some(
                json!({"email": "alice@example.com", "name": "Alice Smith", "groups": ["finance"]}),
            ),
        )
        .await;
    // Before the check the TE keeps what the sign-in said.
    assert_eq!(
        sso.refresh(&mut alice).await.unwrap()["groups"],
        json!(["engineering"])
    );

    sso.env.advance(RECHECK + 1);
    assert_eq!(sso.round("replica-a").await, outcome(1, 0, 0));
    let te = sso.refresh(&mut alice).await.unwrap();
    assert_eq!(te["sub"], alice.key.as_str(), "the same user");
    assert_eq!(te["groups"], json!(["finance"]));
    assert_eq!(te["name"], "Alice Smith");
}

#[tokio::test]
async fn two_replicas_refresh_each_user_once_per_round_and_never_with_a_rotated_out_token() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    let mut bob = sso.sign_in("bob").await;
    let replica = sso.env.replica();
    // Refreshes take a while, so both replicas' rounds are in flight at once.
    sso.provider.hook("/_test/delay-token?ms=300").await;
    for round_no in 1..=2u64 {
        sso.env.advance(RECHECK + 1);
        let (a, b) = tokio::join!(
            recheck::round(&sso.env.state, "replica-a"),
            recheck::round(&replica.state, "replica-b"),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            (
                a.checked + b.checked,
                a.revoked + b.revoked,
                a.failed + b.failed
            ),
            (2, 0, 0),
            "round {round_no}: {a:?} {b:?}"
        );
        let stats = sso.provider.stats().await;
        // Once per user per round; the provider rotates refresh tokens and saw no used one
        // come back (it would have revoked the grant, and the second round would fail).
        assert_eq!(stats["refresh_token"], 2 * round_no, "{stats}");
        assert_eq!(stats["reuse_detected"], 0, "{stats}");
        assert_eq!(stats["refresh_failures"], 0, "{stats}");
    }
    sso.refresh(&mut alice).await.unwrap();
    sso.refresh(&mut bob).await.unwrap();
}

#[tokio::test]
async fn without_a_refresh_token_userinfo_checks_the_user_and_its_401_ends_access() {
    let sso = Sso::start().await;
    let mut alice = sso.sign_in("alice").await;
    // A provider that issued no refresh token (no offline_access): only the access token.
    let db = rusqlite::Connection::open(sso.env.state.config().storage.sqlite.as_ref().unwrap())
        .unwrap();
    db.execute("UPDATE idp_users SET refresh_token = NULL", [])
        .unwrap();
    sso.env.advance(RECHECK + 1);
    assert_eq!(sso.round("replica-a").await, outcome(1, 0, 0));
    assert_eq!(sso.stat("userinfo_requests").await, 1);
    assert_eq!(sso.stat("refresh_token").await, 0);

    sso.provider.hook("/_test/disable-user?user=alice").await;
    sso.env.advance(RECHECK + 1);
    assert_eq!(sso.round("replica-a").await, outcome(0, 1, 0));
    assert_eq!(sso.stat("userinfo_requests").await, 2);
    assert_eq!(sso.refresh(&mut alice).await.unwrap_err(), "invalid_grant");
}

#[tokio::test]
async fn the_provider_tokens_are_stored_sealed() {
    let sso = Sso::start().await;
    sso.sign_in("alice").await;
    let db = rusqlite::Connection::open(sso.env.state.config().storage.sqlite.as_ref().unwrap())
        .unwrap();
    let (refresh, access): (Vec<u8>, Vec<u8>) = db
        .query_row(
            "SELECT refresh_token, access_token FROM idp_users",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    for sealed in [refresh, access] {
        let text = String::from_utf8_lossy(&sealed);
        assert!(
            !text.contains("drt_") && !text.contains("dat_"),
            "a provider token in the clear"
        );
    }
}

#[tokio::test]
async fn a_local_user_removed_from_the_config_loses_their_grants_at_the_next_start() {
    let env = TestEnv::new();
    let (q, _) = env.sign_in(APP, APP_REDIRECT, &[]).await;
    let t = env.exchange_public(APP, &q["code"], APP_REDIRECT).await;
    let rt = t.json()["refresh_token"].as_str().unwrap().to_owned();
    let yaml = config_yaml(env.dir.path(), "", "ES256");
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop(app);
    drop(state);

    // Restarted with the same users: nothing is ended.
    let env = TestEnv::open(dir, Config::from_yaml(&yaml).unwrap());
    let r = env.refresh_public(APP, &rt).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rt = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop(app);
    drop(state);

    // Restarted without alice: her grant is gone, and the feed refuses her TEs.
    let without = yaml.replace(EMAIL, "bob@example.com");
    let env = TestEnv::open(dir, Config::from_yaml(&without).unwrap());
    let r = env.refresh_public(APP, &rt).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    // Ended at start, by the real clock.
    let now = warden_token_service::clock::now_unix();
    assert!(feed_at(&env, now).contains(&(RevokedKind::User, EMAIL.to_owned())));
}

#[test]
fn recheck_seconds_defaults_to_an_hour_and_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::from_yaml(&oidc_yaml(dir.path(), "https://idp.example.com", "")).unwrap();
    assert_eq!(
        c.identity_provider.oidc.as_ref().unwrap().recheck_seconds,
        3600
    );
    for bad in ["0", "59", "2592001", "-1", "soon"] {
        let e = Config::from_yaml(&oidc_yaml(
            dir.path(),
            "https://idp.example.com",
            &format!("    recheck_seconds: {bad}\n"),
        ))
        .unwrap_err();
        assert_eq!(
            e.path, "identity_provider.oidc.recheck_seconds",
            "{bad}: {e}"
        );
    }
}

//! Rotating `storage.encryption_key_file` (issue 16, item 6): with the old key listed under
//! `storage.previous_encryption_key_files`, every upstream token still opens, new values are
//! sealed with the new key, and the re-seal moves every row to it, under load, without losing
//! a refresh or bringing back a disconnected account. The provider is the demo OAuth provider
//! over real HTTP; the last test restarts the real binary as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use demo_oauth_provider::ProviderConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use warden_token_service::store::{
    AuthorizeGrant, PendingLimit, Reseal, SqliteStore, Store, UpstreamRecord, UpstreamTokens,
};
use warden_token_service::vault::Lookup;
use warden_token_service::{AppState, Config};

const ROUTE: &str = "gh";
const CLIENT_ID: &str = "warden-test";
const CLIENT_SECRET: &str = "warden-test-secret";

async fn start_provider() -> Provider {
    Provider::serve(ProviderConfig {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{ISSUER}/upstream/callback")],
        access_ttl: Duration::from_secs(60),
        ..ProviderConfig::default()
    })
    .await
}

/// The test config with a route `gh` whose server needs the user's account at `provider`,
/// the internal listener on a free port, and `previous` as the previous key files.
fn yaml(dir: &Path, provider: &str, previous: &[&Path]) -> String {
    let route = format!(
        r#"  - name: {ROUTE}
    from: http://127.0.0.1:9000
    prefix: /gh
    to: http://127.0.0.1:9300/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: {CLIENT_ID}
          client_secret: {CLIENT_SECRET}
          scopes: [repo]
          endpoint:
            auth_url: {provider}/authorize
            token_url: {provider}/token
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#
    );
    let list: Vec<String> = previous
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect();
    let db = format!("  sqlite: {}", dir.join("warden.db").display());
    config_yaml(dir, &route, "ES256")
        .replacen(
            &db,
            &format!(
                "{db}\n  previous_encryption_key_files: [{}]",
                list.join(", ")
            ),
            1,
        )
        .replacen(
            "  listen: 127.0.0.1:0\n",
            "  listen: 127.0.0.1:0\n  internal_listen: 127.0.0.1:0\n",
            1,
        )
}

fn current_key_file(dir: &Path) -> PathBuf {
    dir.join("encryption-key")
}

/// What an operator does first: keeps the current key file under another name (the service
/// creates a new current key on its next start). Returns where the old key now is.
fn set_aside_current_key(dir: &Path, name: &str) -> PathBuf {
    let old = dir.join(name);
    std::fs::rename(current_key_file(dir), &old).unwrap();
    old
}

/// How values sealed with the key in `file` start: format 2, then the key's id (SHA-256 of
/// the domain label and the key, first 8 bytes), computed here independently of the service.
fn sealed_prefix(file: &Path) -> Vec<u8> {
    let key = B64
        .decode(std::fs::read_to_string(file).unwrap().trim())
        .unwrap();
    let id = Sha256::new()
        .chain_update(b"mcp-warden vault key id\0")
        .chain_update(&key)
        .finalize();
    [&[2u8][..], &id[..8]].concat()
}

/// A stand-in for the MCP client's request the consent answers.
fn stand_in_request() -> AuthorizeGrant {
    AuthorizeGrant {
        client_id: "public-app".into(),
        redirect_uri: "http://127.0.0.1/callback".into(),
        redirect_uri_explicit: true,
        state: None,
        code_challenge: challenge(VERIFIER),
        resource: "http://127.0.0.1:9000/gh".into(),
        scope: String::new(),
    }
}

/// Starts `user`'s consent at the provider and has the user approve it there; returns the
/// `state` and `code` the provider sends back (the callback not yet taken).
async fn consent_at_provider(
    state: &AppState,
    provider: &Provider,
    user: &str,
) -> (String, String) {
    let url = state
        .vault()
        .begin(
            ROUTE,
            stand_in_request(),
            user,
            "sid",
            "browser",
            PendingLimit {
                max: 10_000,
                now: state.now(),
            },
            None,
        )
        .unwrap()
        .expect("room for the flow");
    let back = provider.answer(&url, "approve").await;
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    (q["state"].clone(), q["code"].clone())
}

/// The callback of a consent: the vault exchanges the code and stores the user's token.
async fn finish_consent(state: &AppState, callback: &(String, String)) {
    let flow = state
        .vault()
        .take_flow(&callback.0, state.now())
        .unwrap()
        .expect("the consent is still in progress");
    state
        .vault()
        .complete(&flow, &callback.1, state.now())
        .await
        .unwrap()
        .unwrap();
}

/// Connects `user`'s account at the provider through the vault, as the sign-in does.
async fn connect(state: &AppState, provider: &Provider, user: &str) {
    let callback = consent_at_provider(state, provider, user).await;
    finish_consent(state, &callback).await;
}

fn user(i: usize) -> String {
    format!("user{i}@example.com")
}

/// The user's token as the filter would get it, or what the look-up said instead.
async fn token(state: &AppState, user: &str) -> Result<String, String> {
    match state.vault().token(user, ROUTE, state.now()).await.unwrap() {
        Lookup::Token(t) => Ok(t.access_token),
        other => Err(format!("{other:?}")),
    }
}

/// Restarts the service state over the same files with `config`.
fn restart(env: TestEnv, config: Config) -> TestEnv {
    let now = env.state.now();
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop(app);
    drop(state);
    let env = TestEnv::open(dir, config);
    env.clock.store(now, std::sync::atomic::Ordering::SeqCst);
    env
}

/// `GET /internal/v1/vault/status` on the internal router, with `credential`.
async fn vault_status(state: &AppState, credential: Option<&str>) -> (StatusCode, Value) {
    let path = "/internal/v1/vault/status";
    let mut req = Request::get(path);
    if let Some(c) = credential {
        req = req.header(
            header::AUTHORIZATION,
            sign_internal(c, "GET", path, b"", state.now()),
        );
    }
    let resp = warden_token_service::internal::router(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn credential(state: &AppState) -> String {
    std::fs::read_to_string(state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned()
}

/// Every sealed value of every upstream-token row.
fn sealed_values(store: &Arc<dyn Store>, users: &[String]) -> Vec<Vec<u8>> {
    users
        .iter()
        .filter_map(|u| store.upstream_token(u, ROUTE).unwrap())
        .flat_map(|r| [r.access_token, r.refresh_token])
        .flatten()
        .collect()
}

#[tokio::test]
async fn after_a_rotation_every_token_opens_and_the_reseal_moves_them_to_the_new_key() {
    let provider = start_provider().await;
    let env = TestEnv::with(|dir| yaml(dir, &provider.url, &[]));
    let users: Vec<String> = (0..6).map(user).collect();
    for u in &users {
        connect(&env.state, &provider, u).await;
    }
    let mut before = Vec::new();
    for u in &users {
        before.push(token(&env.state, u).await.unwrap());
    }
    // Two consents in progress while the key changes: their verifiers are sealed with the
    // old key. One completes after the rotation, the other is abandoned.
    let completes = consent_at_provider(&env.state, &provider, "late@example.com").await;
    let _abandoned = consent_at_provider(&env.state, &provider, "gone@example.com").await;
    let dir = env.dir.path().to_owned();

    // Rotation without listing the old key: the service refuses to start, since its signing
    // keys do not open. With those forgotten (a lost key), nothing sealed opens (the bound),
    // and the re-seal leaves what it cannot open alone.
    let key_a = set_aside_current_key(&dir, "encryption-key.old");
    let config = Config::from_yaml(&yaml(&dir, &provider.url, &[])).unwrap();
    let err = warden_token_service::AppState::new(config.clone())
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("storage.encryption_key_file"),
        "{err:#}"
    );
    TestEnv::forget_signing_keys(&config);
    let env = restart(env, config);
    for u in &users {
        assert_eq!(token(&env.state, u).await, Err("NoToken".into()), "{u}");
    }
    let pass = env
        .state
        .vault()
        .reseal_pass(env.state.now())
        .await
        .unwrap();
    assert_eq!((pass.resealed, pass.unreadable_rows), (0, 6), "{pass:?}");
    let key_b = current_key_file(&dir);
    assert!(sealed_values(env.state.store(), &users)
        .iter()
        .all(|v| v.starts_with(&sealed_prefix(&key_a))));

    // The old key listed as previous: every token opens again, nobody consents again.
    let config = Config::from_yaml(&yaml(&dir, &provider.url, &[&key_a])).unwrap();
    let env = restart(env, config);
    let cred = credential(&env.state);
    let (status, s) = vault_status(&env.state, Some(&cred)).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["previous_keys"], 1, "{s}");
    assert_eq!(s["passes"], 0, "{s}");
    assert_eq!(
        s["rows_under_previous_keys"],
        Value::Null,
        "no gauge before a pass: {s}"
    );
    assert_eq!(s["previous_keys_needed"], true, "{s}");
    assert_eq!(
        vault_status(&env.state, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    for (u, t) in users.iter().zip(&before) {
        assert_eq!(token(&env.state, u).await.as_ref(), Ok(t), "{u}");
    }
    // New values are sealed with the new key: the consent that started under the old key
    // completes (its verifier opens with the previous key) and stores under the new one.
    finish_consent(&env.state, &completes).await;
    let late = env
        .state
        .store()
        .upstream_token("late@example.com", ROUTE)
        .unwrap()
        .unwrap();
    assert!(late
        .access_token
        .as_ref()
        .unwrap()
        .starts_with(&sealed_prefix(&key_b)));

    // The re-seal moves every row to the new key; the abandoned consent still needs the old
    // key until it expires.
    let pass = env
        .state
        .vault()
        .reseal_pass(env.state.now())
        .await
        .unwrap();
    assert_eq!(
        (
            pass.resealed,
            pass.rows_under_previous_keys,
            pass.flows_under_previous_keys,
            pass.unreadable_rows
        ),
        (6, 0, 1, 0),
        "{pass:?}"
    );
    let values = sealed_values(env.state.store(), &users);
    assert_eq!(values.len(), 12, "an access and a refresh token per user");
    assert!(values.iter().all(|v| v.starts_with(&sealed_prefix(&key_b))));
    for (u, t) in users.iter().zip(&before) {
        assert_eq!(token(&env.state, u).await.as_ref(), Ok(t), "{u}");
    }
    let (_, s) = vault_status(&env.state, Some(&cred)).await;
    assert_eq!(
        (
            &s["rows_under_previous_keys"],
            &s["flows_under_previous_keys"],
            &s["resealed_total"],
            &s["previous_keys_needed"]
        ),
        (&json!(0), &json!(1), &json!(6), &json!(true)),
        "{s}"
    );

    // Ten minutes on, the consent has expired: no sealed value needs the old key.
    env.advance(601);
    let pass = env
        .state
        .vault()
        .reseal_pass(env.state.now())
        .await
        .unwrap();
    assert_eq!(
        (pass.resealed, pass.flows_under_previous_keys),
        (0, 0),
        "{pass:?}"
    );
    let (_, s) = vault_status(&env.state, Some(&cred)).await;
    assert_eq!(
        (
            &s["passes"],
            &s["rows_under_previous_keys"],
            &s["flows_under_previous_keys"],
            &s["resealed_total"],
            &s["previous_keys_needed"]
        ),
        (&json!(2), &json!(0), &json!(0), &json!(6), &json!(false)),
        "{s}"
    );

    // The old key removed: every token still works, refreshed with the refresh token the
    // re-seal stored (the provider rotates them; a stale one would revoke the grant).
    let config = Config::from_yaml(&yaml(&dir, &provider.url, &[])).unwrap();
    let env = restart(env, config);
    for (u, t) in users.iter().zip(&before) {
        let now = token(&env.state, u).await.unwrap();
        assert_ne!(&now, t, "{u}: expired, so refreshed");
    }
    let stats = provider.stats().await;
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(stats["refresh_token"], 6, "{stats}");
    assert_eq!(
        stats["authorization_code"], 7,
        "the six users and the consent that completed: nobody consented again: {stats}"
    );
}

/// A row as the vault writes it, with opaque values standing for sealed tokens.
fn row(user: &str, access: &[u8], refresh: &[u8]) -> UpstreamRecord {
    UpstreamRecord {
        user: user.into(),
        route: ROUTE.into(),
        access_token: Some(access.to_vec()),
        refresh_token: Some(refresh.to_vec()),
        issued_at: 1,
        expires_at: Some(61),
        granted_at: 1,
        scope: "repo".into(),
        ..UpstreamRecord::default()
    }
}

/// The re-seal of `read`: the same row with its values replaced by `to`.
fn reseal_of(read: &UpstreamRecord, to: &[u8]) -> Reseal {
    Reseal {
        user: read.user.clone(),
        route: read.route.clone(),
        version: read.version,
        old_access_token: read.access_token.clone(),
        old_refresh_token: read.refresh_token.clone(),
        access_token: Some([to, b"-a"].concat()),
        refresh_token: Some([to, b"-r"].concat()),
    }
}

#[test]
fn the_reseal_writes_only_over_the_values_it_read_and_a_refresh_in_flight_still_lands() {
    let store = SqliteStore::in_memory().unwrap();
    let prefix = b"NEW:";
    for u in ["a", "b", "c", "d", "e"] {
        store
            .put_upstream_token(&row(u, b"OLD:access", b"OLD:refresh"))
            .unwrap();
    }
    store
        .put_upstream_token(&row("f", b"NEW:access", b"NEW:refresh"))
        .unwrap();
    let stale = |after: Option<(&str, &str)>, limit| {
        store
            .upstream_tokens_not_sealed_with(prefix, after, limit)
            .unwrap()
    };
    // Batches in (user, route) order; rows already under the prefix are not work.
    let first = stale(None, 2);
    assert_eq!(
        first.iter().map(|r| r.user.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let rest = stale(Some(("b", ROUTE)), 10);
    assert_eq!(
        rest.iter().map(|r| r.user.as_str()).collect::<Vec<_>>(),
        ["c", "d", "e"]
    );
    let read: std::collections::HashMap<String, UpstreamRecord> = first
        .into_iter()
        .chain(rest)
        .map(|r| (r.user.clone(), r))
        .collect();

    // a: a refresh stored between the re-seal's read and its write wins.
    let mut refreshed = row("a", b"NEW:access2", b"NEW:refresh2");
    refreshed.issued_at = 50;
    assert!(store
        .put_refreshed_upstream_token(&refreshed, read["a"].version)
        .unwrap());
    // b: disconnected meanwhile; c: disconnected and connected again (the same version
    // number as the row read, other values).
    assert!(store.delete_upstream_token("b", ROUTE).unwrap());
    assert!(store.delete_upstream_token("c", ROUTE).unwrap());
    store
        .put_upstream_token(&row("c", b"NEW:access3", b"NEW:refresh3"))
        .unwrap();
    assert_eq!(
        store.upstream_token("c", ROUTE).unwrap().unwrap().version,
        read["c"].version,
        "the case a version alone does not catch"
    );
    // d: dropped (refused by the server) meanwhile.
    assert!(store
        .drop_upstream_token("d", ROUTE, read["d"].version, "admin:org", None, Some(5))
        .unwrap());

    let moves: Vec<Reseal> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|u| reseal_of(&read[*u], b"NEW:resealed"))
        .collect();
    assert_eq!(
        store.reseal_upstream_tokens(&moves).unwrap(),
        [false, false, false, false, true]
    );
    let now = |u: &str| store.upstream_token(u, ROUTE).unwrap();
    assert_eq!(
        now("a").unwrap().access_token.as_deref(),
        Some(&b"NEW:access2"[..])
    );
    assert_eq!(now("b"), None, "a disconnected account stays disconnected");
    assert_eq!(
        now("c").unwrap().refresh_token.as_deref(),
        Some(&b"NEW:refresh3"[..])
    );
    assert_eq!(now("d").unwrap().access_token, None, "a drop stands");
    let e = now("e").unwrap();
    assert_eq!(e.access_token.as_deref(), Some(&b"NEW:resealed-a"[..]));
    assert_eq!(
        e.version, read["e"].version,
        "the re-seal leaves the version alone"
    );

    // The other order: a refresh read the row before the re-seal wrote it, and stores its
    // result after. It lands (its rotated refresh token is not lost).
    let mut refreshed = row("e", b"NEW:access5", b"NEW:refresh5");
    refreshed.issued_at = 60;
    assert!(store
        .put_refreshed_upstream_token(&refreshed, read["e"].version)
        .unwrap());
    assert_eq!(
        now("e").unwrap().refresh_token.as_deref(),
        Some(&b"NEW:refresh5"[..])
    );
    assert!(stale(None, 10).is_empty(), "nothing left to re-seal");
}

#[test]
fn previous_key_file_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, byte: u8| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{}\n", B64.encode([byte; 32]))).unwrap();
        p
    };
    let (a, b) = (key("a", 1), key("b", 2));
    let short = dir.path().join("short");
    std::fs::write(&short, "c2hvcnQ").unwrap();
    let missing = dir.path().join("missing");
    let load =
        |previous: &[&Path]| Config::from_yaml(&yaml(dir.path(), "http://127.0.0.1:9", previous));
    let ok = load(&[&a, &b]).unwrap();
    assert_eq!(ok.storage.previous_encryption_key_files.len(), 2);
    assert!(
        !format!("{ok:?}").contains(&B64.encode([1u8; 32])),
        "no key in debug output"
    );
    let cases: [(&[&Path], &str); 4] = [
        (&[&a, &missing], "storage.previous_encryption_key_files[1]: cannot read"),
        (&[&short], "storage.previous_encryption_key_files[0]: "),
        (&[&a, &b, &a], "storage.previous_encryption_key_files[2]: holds the same key as storage.previous_encryption_key_files[0]"),
        (&[Path::new("")], "storage.previous_encryption_key_files[0]: must not be empty"),
    ];
    for (previous, want) in cases {
        let e = load(previous).unwrap_err().to_string();
        assert!(e.starts_with(want), "{previous:?}: {e}");
        assert!(!e.contains(&B64.encode([1u8; 32])), "{e}");
    }
    assert!(load(&[&short])
        .unwrap_err()
        .to_string()
        .contains("malformed"));

    // The current key listed as previous: refused at load once it exists, and at start.
    let config = load(&[&a]).unwrap();
    let _ = AppState::new(config).unwrap();
    let current = current_key_file(dir.path());
    let e = load(&[&a, &current]).unwrap_err().to_string();
    assert!(
        e.starts_with("storage.previous_encryption_key_files[1]: holds the current key"),
        "{e}"
    );
    let copy = dir.path().join("copy-of-current");
    std::fs::copy(&current, &copy).unwrap();
    std::fs::remove_file(&current).unwrap();
    let config = load(&[&copy]).unwrap();
    std::fs::copy(&copy, &current).unwrap();
    let e = format!("{:#}", AppState::new(config).err().unwrap());
    assert!(
        e.contains("storage.previous_encryption_key_files[0]: holds the current key"),
        "{e}"
    );
}

/// Polls the provider's stats until `done` holds (bounded).
async fn until_provider(provider: &Provider, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = provider.stats().await;
        if done(&stats) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 20 s for {what}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_under_load_loses_no_upstream_token_and_brings_back_no_disconnected_one() {
    const USERS: usize = 24;
    const LOOKUPS_PER_USER: usize = 3;
    let provider = start_provider().await;
    let env = TestEnv::with(|dir| yaml(dir, &provider.url, &[]));
    let users: Vec<String> = (0..USERS).map(user).collect();
    for u in &users {
        connect(&env.state, &provider, u).await;
    }
    let dir = env.dir.path().to_owned();
    let key_a = set_aside_current_key(&dir, "encryption-key.old");
    let config = Config::from_yaml(&yaml(&dir, &provider.url, &[&key_a])).unwrap();
    let env = restart(env, config);
    let state = env.state.clone();

    // Every token is due for a refresh (6 s before it expires) and the provider is slow:
    // the refreshes have read their rows (sealed with the old key) and are at the provider
    // when the re-seal starts, and store their results while it runs.
    env.advance(55);
    provider.hook("/_test/delay-token?ms=500").await;
    let base = provider.stats().await["token_requests"].as_u64().unwrap();
    let mut lookups = tokio::task::JoinSet::new();
    for u in &users {
        for _ in 0..LOOKUPS_PER_USER {
            let (state, u) = (state.clone(), u.clone());
            lookups.spawn(async move { (u.clone(), token(&state, &u).await) });
        }
    }
    until_provider(&provider, "every refresh at the provider", |s| {
        s["token_requests"].as_u64().unwrap() >= base + USERS as u64
    })
    .await;
    let first = state.vault().reseal_pass(state.now()).await.unwrap();
    let stats = provider.stats().await;
    assert_eq!(
        stats["refresh_token"], 0,
        "the first pass ran while every refresh was at the provider: {stats}"
    );
    assert_eq!(first.resealed, USERS as u64, "{first:?}");
    // More passes while the refreshes land.
    let resealing = {
        let state = state.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                state.vault().reseal_pass(state.now()).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    // Every sixth user disconnects while the re-seal runs and their refresh is in flight.
    let gone: Vec<String> = users.iter().step_by(6).cloned().collect();
    let disconnects = gone.iter().map(|u| state.vault().disconnect(u, ROUTE));
    for d in futures_util::future::join_all(disconnects).await {
        assert!(d.unwrap());
    }
    let mut answers: std::collections::HashMap<String, Vec<Result<String, String>>> =
        std::collections::HashMap::new();
    while let Some(joined) = lookups.join_next().await {
        let (u, answer) = joined.unwrap();
        answers.entry(u).or_default().push(answer);
    }
    resealing.await.unwrap();
    provider.hook("/_test/delay-token?ms=0").await;

    for u in &users {
        if gone.contains(u) {
            assert_eq!(
                state.store().upstream_token(u, ROUTE).unwrap(),
                None,
                "{u} disconnected and stays so"
            );
            continue;
        }
        let got = &answers[u];
        assert!(got.iter().all(|a| a.is_ok()), "{u}: {got:?}");
    }
    let stats = provider.stats().await;
    assert_eq!(stats["refresh_token"], USERS, "{stats}");
    let kept: Vec<String> = users
        .iter()
        .filter(|u| !gone.contains(u))
        .cloned()
        .collect();
    let key_b = current_key_file(&dir);
    let pass = state.vault().reseal_pass(state.now()).await.unwrap();
    assert_eq!(pass.rows_under_previous_keys, 0, "{pass:?}");
    assert!(sealed_values(state.store(), &kept)
        .iter()
        .all(|v| v.starts_with(&sealed_prefix(&key_b))));

    // The old key removed: every kept user's token works, and refreshes again with the
    // refresh token stored during the load (a lost one would be a reuse at the provider,
    // which revokes the grant and sends the user through consent).
    drop(state);
    let config = Config::from_yaml(&yaml(&dir, &provider.url, &[])).unwrap();
    let env = restart(env, config);
    env.advance(61);
    for u in &kept {
        assert!(token(&env.state, u).await.is_ok(), "{u}");
    }
    for u in &gone {
        assert_eq!(token(&env.state, u).await, Err("NoToken".into()), "{u}");
    }
    let stats = provider.stats().await;
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(stats["refresh_token"], USERS + kept.len(), "{stats}");
    assert_eq!(
        stats["authorization_code"], USERS,
        "nobody consented again: {stats}"
    );
}

/// `warden-token-service serve` with `config`, its JSON log lines read as they come.
struct Service {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    internal: String,
}

impl Service {
    fn start(config: &Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
            .arg("serve")
            .env("WARDEN_CONFIG", config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            // Start-up errors reach the test's output.
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v: Value = serde_json::from_str(&line).expect("log lines are JSON");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            lines,
            internal: String::new(),
        };
        // Ready once both listeners are up (their lines come in either order).
        let mut public = false;
        while !public || s.internal.is_empty() {
            let line = s.wait_for("listen");
            let message = line["fields"]["message"].as_str().unwrap();
            match message.strip_prefix("internal listener on ") {
                Some(url) => s.internal = url.to_owned(),
                None => public = message.starts_with("listening on http://"),
            }
        }
        s
    }

    /// The next log line whose message contains `text` (bounded wait).
    fn wait_for(&self, text: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("no log line with {text:?} within 30 s ({e}); seen: {seen:#?}")
            });
            seen.push(line["fields"]["message"].clone());
            if line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
            {
                return line;
            }
        }
    }

    /// A look-up on the internal listener, as the filter makes it.
    async fn lookup(&self, http: &reqwest::Client, credential: &str, user: &str) -> (u16, Value) {
        let path = "/internal/v1/upstream-token";
        let body = json!({"sub": user, "route": ROUTE}).to_string();
        let r = http
            .post(format!("{}{path}", self.internal))
            .header(
                "authorization",
                sign_internal(
                    credential,
                    "POST",
                    path,
                    body.as_bytes(),
                    warden_token_service::clock::now_unix(),
                ),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn status(&self, http: &reqwest::Client, credential: &str) -> Value {
        let path = "/internal/v1/vault/status";
        let r = http
            .get(format!("{}{path}", self.internal))
            .header(
                "authorization",
                sign_internal(
                    credential,
                    "GET",
                    path,
                    b"",
                    warden_token_service::clock::now_unix(),
                ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's procedure with the real binary: new key file, the old one listed as
/// previous, restart; every user's token keeps working (refreshed through the provider
/// meanwhile), the log and the status say when the old key can go; then restart without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_service_restarted_with_a_new_key_keeps_every_token_and_says_when_the_old_key_can_go(
) {
    const USERS: usize = 16;
    let provider = start_provider().await;
    let env = TestEnv::with(|dir| yaml(dir, &provider.url, &[]));
    // Tokens obtained two minutes ago: expired by now, so the first look-ups refresh them.
    env.clock.store(
        warden_token_service::clock::now_unix() - 120,
        std::sync::atomic::Ordering::SeqCst,
    );
    let users: Vec<String> = (0..USERS).map(user).collect();
    for u in &users {
        connect(&env.state, &provider, u).await;
    }
    let credential = credential(&env.state);
    let dir = env.dir.path().to_owned();
    let TestEnv {
        dir: _keep,
        state,
        app,
        ..
    } = env;
    drop(app);
    drop(state);

    let key_a = set_aside_current_key(&dir, "encryption-key.old");
    let config = dir.join("warden.yaml");
    std::fs::write(&config, yaml(&dir, &provider.url, &[&key_a])).unwrap();
    let service = Service::start(&config);
    let http = reqwest::Client::new();
    // Half the users call their MCP server right after the restart (two look-ups each, one
    // refresh at the provider); the other half stay idle, so only the re-seal moves their
    // rows.
    let (active, idle): (Vec<String>, Vec<String>) = users
        .iter()
        .cloned()
        .partition(|u| users.iter().position(|x| x == u).unwrap() % 2 == 0);
    let lookups = active
        .iter()
        .flat_map(|u| [u, u])
        .map(|u| service.lookup(&http, &credential, u));
    let answers = futures_util::future::join_all(lookups).await;
    let mut tokens = std::collections::BTreeMap::new();
    for (u, (status, body)) in active.iter().flat_map(|u| [u, u]).zip(answers) {
        assert_eq!(status, 200, "{u}: {body}");
        let t = body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(tokens.entry(u.clone()).or_insert_with(|| t.clone()), &t);
    }
    let done = service.wait_for("previous keys can be removed");
    assert_eq!(done["level"], "INFO", "{done}");
    assert_eq!(done["fields"]["previous_keys"], 1, "{done}");
    let s = service.status(&http, &credential).await;
    assert_eq!(s["rows_under_previous_keys"], 0, "{s}");
    assert_eq!(s["flows_under_previous_keys"], 0, "{s}");
    assert_eq!(s["unreadable_rows"], 0, "{s}");
    assert_eq!(s["previous_keys_needed"], false, "{s}");
    // Each active row was moved by the re-seal or by its refresh; the idle ones only by the
    // re-seal.
    let resealed = s["resealed_total"].as_u64().unwrap();
    assert!(
        (idle.len() as u64..=USERS as u64).contains(&resealed),
        "{s}"
    );
    drop(service);

    // The old key removed, as the log line said it may be. The active users' tokens are the
    // ones refreshed after the restart; the idle users' expired tokens refresh now, with the
    // refresh tokens the re-seal moved.
    std::fs::remove_file(&key_a).unwrap();
    std::fs::write(&config, yaml(&dir, &provider.url, &[])).unwrap();
    let service = Service::start(&config);
    for u in &users {
        let (status, body) = service.lookup(&http, &credential, u).await;
        assert_eq!(status, 200, "{u}: {body}");
        if let Some(t) = tokens.get(u) {
            assert_eq!(&body["access_token"], t, "{u}");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = service.status(&http, &credential).await;
        if s["passes"].as_u64().unwrap() > 0 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no re-seal pass: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (
            &s["previous_keys"],
            &s["unreadable_rows"],
            &s["rows_under_previous_keys"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{s}"
    );
    drop(service);

    let stats = provider.stats().await;
    assert_eq!(
        stats["refresh_token"], USERS,
        "one refresh per user: {stats}"
    );
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(
        stats["authorization_code"], USERS,
        "nobody consented again: {stats}"
    );
}

//! TE signing keys shared through the store: replicas publish one JWKS and sign with one key,
//! a first start imports the key file, and `rotate-signing-key` publishes the new key before
//! it signs and retires the old one once its tokens have expired.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warden_token_service::store::SigningKeys;
use warden_token_service::{app, AppState, Config, SigningKey, SqliteStore};

const JWKS: &str = "/.well-known/jwks.json";

/// Another replica of `env`'s deployment: its own process state on the same files and clock.
fn replica(env: &TestEnv) -> AppState {
    let clock = env.clock.clone();
    AppState::new(env.state.config().clone())
        .unwrap()
        .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)))
}

async fn jwks_of(state: &AppState) -> Value {
    let resp = app(state.clone())
        .oneshot(Request::get(JWKS).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The `kid` in a compact JWS's header.
fn kid_of(jws: &str) -> String {
    let header = jws.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// A fresh TE from `env` (a refresh-token grant), and its refresh token for the next one.
async fn fresh_te(env: &TestEnv, client: &str, rt: &str) -> (String, String) {
    let r = env.refresh_public(client, rt).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t = r.json();
    (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// Whether `te` verifies against `jwks` as the filter checks it.
fn verifies(env: &TestEnv, jwks: &Value, te: &str) -> bool {
    let set = warden_core::keys::KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    let rules = warden_core::token::TokenRules {
        issuer: ISSUER.into(),
        leeway_seconds: 30,
    };
    warden_core::token::verify(te, &set, &rules, env.state.now()).is_ok()
}

#[tokio::test]
async fn replicas_on_one_store_publish_the_same_jwks_and_sign_with_the_same_key() {
    let env = TestEnv::new();
    let other = replica(&env);
    let jwks = jwks_of(&env.state).await;
    assert_eq!(kids(&jwks).len(), 1, "{jwks}");
    assert_eq!(jwks, jwks_of(&other).await);
    let now = env.state.now();
    assert_eq!(
        env.state.keys().signing_key(now).unwrap().kid(),
        other.keys().signing_key(now).unwrap().kid()
    );
    // A second start on the same files keeps the key.
    let again = AppState::new(env.state.config().clone()).unwrap();
    assert_eq!(jwks_of(&again).await, jwks);
}

#[test]
fn replicas_starting_together_on_an_empty_store_store_one_key() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_yaml(&config_yaml(dir.path(), "", "ES256")).unwrap();
        let barrier = std::sync::Barrier::new(4);
        let published: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let state = AppState::new(config.clone()).unwrap();
                        let now = state.now();
                        state
                            .keys()
                            .published(now)
                            .iter()
                            .map(|k| k.kid().to_owned())
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(published[0].len(), 1, "{published:?}");
        assert!(
            published.iter().all(|p| *p == published[0]),
            "{published:?}"
        );
        let store = SqliteStore::open(config.storage.sqlite.as_ref().unwrap()).unwrap();
        assert_eq!(store.signing_keys().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_key_file_is_imported_once_with_its_kid_and_sealed_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing-key.json");
    let key = SigningKey::generate(Default::default()).unwrap();
    key.write_file(&file).unwrap();
    let d = serde_json::from_str::<Value>(&std::fs::read_to_string(&file).unwrap()).unwrap()["d"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = Config::from_yaml(&config_yaml(dir.path(), "", "ES256")).unwrap();
    let env = TestEnv::open(dir, config.clone());

    // Same kid: TEs the key signed before the upgrade still verify.
    assert_eq!(kids(&jwks_of(&env.state).await), vec![key.kid().to_owned()]);
    let client = env.register_public(REDIRECT).await;
    let (q, _) = env.sign_in(&client, REDIRECT, &[]).await;
    let t = env
        .exchange_public(&client, &q["code"], REDIRECT)
        .await
        .json();
    assert_eq!(kid_of(t["access_token"].as_str().unwrap()), key.kid());

    // Sealed: neither the raw private scalar nor its base64url is anywhere in the database.
    let raw = URL_SAFE_NO_PAD.decode(&d).unwrap();
    let mut bytes = Vec::new();
    for name in ["warden.db", "warden.db-wal"] {
        if let Ok(b) = std::fs::read(env.dir.path().join(name)) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(bytes.len() > 4096);
    assert!(!bytes.windows(raw.len()).any(|w| w == raw.as_slice()));
    assert!(!bytes.windows(d.len()).any(|w| w == d.as_bytes()));
    assert!(!format!("{:?}", env.state.keys()).contains(&d));
    let stored = SqliteStore::open(config.storage.sqlite.as_ref().unwrap())
        .unwrap()
        .signing_keys()
        .unwrap();
    assert!(!format!("{stored:?}").contains(&d));

    // Read once: another key file later changes nothing, and neither does none.
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop((state, app));
    std::fs::remove_file(&file).unwrap();
    SigningKey::generate(Default::default())
        .unwrap()
        .write_file(&file)
        .unwrap();
    let env = TestEnv::open(dir, config.clone());
    assert_eq!(kids(&jwks_of(&env.state).await), vec![key.kid().to_owned()]);
    std::fs::remove_file(&file).unwrap();
    let env = TestEnv::open(env.dir, config);
    assert_eq!(kids(&jwks_of(&env.state).await), vec![key.kid().to_owned()]);
}

#[tokio::test]
async fn a_key_file_with_another_alg_than_configured_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    SigningKey::generate(Default::default())
        .unwrap()
        .write_file(&dir.path().join("signing-key.json"))
        .unwrap();
    let config = Config::from_yaml(&config_yaml(dir.path(), "", "EdDSA")).unwrap();
    let err = AppState::new(config).err().unwrap();
    assert!(format!("{err:#}").contains("signing_key.alg"), "{err:#}");
}

#[tokio::test]
async fn a_rotated_key_is_published_first_signs_from_its_time_and_the_old_one_retires() {
    let env = TestEnv::new();
    let other = replica(&env);
    let config = env.state.config().clone();
    let client = env.register_public(REDIRECT).await;
    let (q, _) = env.sign_in(&client, REDIRECT, &[]).await;
    let t = env
        .exchange_public(&client, &q["code"], REDIRECT)
        .await
        .json();
    let old_te = t["access_token"].as_str().unwrap().to_owned();
    let mut rt = t["refresh_token"].as_str().unwrap().to_owned();
    let old = kid_of(&old_te);

    let start = env.state.now();
    let r = warden_token_service::keyring::rotate_configured(&config, start).unwrap();
    // Defaults: published twice the filter's JWKS refresh (2 × 300 s) ahead; the old key
    // stays for the access-token lifetime (300 s) and the filter's leeway (30 s) after that.
    assert_eq!(config.rotation_publish_seconds(), 600);
    assert_eq!(r.signs_from, start + 600);
    assert_eq!(r.previous_retire_at, r.signs_from + 300 + 30);
    assert_ne!(r.kid, old);

    // Both replicas publish it after their reload, before it signs anything.
    for state in [&env.state, &other] {
        state.reload_keys().unwrap();
        assert_eq!(
            kids(&jwks_of(state).await),
            vec![old.clone(), r.kid.clone()]
        );
    }
    assert_eq!(jwks_of(&env.state).await, jwks_of(&other).await);

    // Until signs_from the old key signs, on every replica.
    env.advance(599);
    let (te, next) = fresh_te(&env, &client, &rt).await;
    rt = next;
    assert_eq!(kid_of(&te), old);
    assert_eq!(other.keys().signing_key(other.now()).unwrap().kid(), old);

    // From signs_from the new one does, and both kinds of TE verify against the JWKS.
    env.advance(1);
    let (new_te, next) = fresh_te(&env, &client, &rt).await;
    rt = next;
    assert_eq!(kid_of(&new_te), r.kid);
    assert_eq!(other.keys().signing_key(other.now()).unwrap().kid(), r.kid);
    let jwks = jwks_of(&other).await;
    assert!(verifies(&env, &jwks, &te) && verifies(&env, &jwks, &new_te));

    // The old key leaves the JWKS at its retire_at (no reload needed), and the sweep
    // deletes it from the store.
    env.advance(r.previous_retire_at - env.state.now() - 1);
    assert_eq!(kids(&jwks_of(&other).await).len(), 2);
    env.advance(1);
    for state in [&env.state, &other] {
        assert_eq!(kids(&jwks_of(state).await), vec![r.kid.clone()]);
    }
    env.state.sweep().unwrap();
    let store = SqliteStore::open(config.storage.sqlite.as_ref().unwrap()).unwrap();
    let left = store.signing_keys().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kid, r.kid);
    other.reload_keys().unwrap();
    let (te, _) = fresh_te(&env, &client, &rt).await;
    assert_eq!(kid_of(&te), r.kid);
}

#[tokio::test]
async fn a_rotation_may_change_the_algorithm_and_needs_the_replicas_encryption_key() {
    let env = TestEnv::new();
    let old = env
        .state
        .keys()
        .signing_key(env.state.now())
        .unwrap()
        .kid()
        .to_owned();
    let dir = env.dir.path().to_owned();
    let eddsa = Config::from_yaml(&config_yaml(&dir, "", "EdDSA")).unwrap();
    let r = warden_token_service::keyring::rotate_configured(&eddsa, env.state.now()).unwrap();
    env.state.reload_keys().unwrap();
    let jwks = jwks_of(&env.state).await;
    assert_eq!(kids(&jwks), vec![old, r.kid]);
    assert_eq!(jwks["keys"][1]["alg"], "EdDSA");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");

    // Another encryption key than the replicas' is refused before anything is written.
    let stranger = dir.join("other-key");
    let config = Config::from_yaml(&config_yaml(&dir, "", "ES256").replace(
        "storage:\n",
        &format!("storage:\n  encryption_key_file: {}\n", stranger.display()),
    ))
    .unwrap();
    warden_token_service::secrets::load_or_create(&stranger, "test key").unwrap();
    let err =
        warden_token_service::keyring::rotate_configured(&config, env.state.now()).unwrap_err();
    assert!(
        format!("{err:#}").contains("encryption_key_file"),
        "{err:#}"
    );
    assert_eq!(kids(&jwks_of(&env.state).await).len(), 2);
    // A replica started with it refuses to start rather than publish keys it cannot use.
    assert!(AppState::new(config).is_err());
}

#[test]
fn rotation_publish_seconds_is_validated_and_defaults_to_twice_the_jwks_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(dir.path(), "", "ES256");
    for bad in ["0", "100000000"] {
        let y = yaml.replace(
            "    alg: ES256\n",
            &format!("    alg: ES256\n    rotation_publish_seconds: {bad}\n"),
        );
        let err = Config::from_yaml(&y).unwrap_err().to_string();
        assert!(
            err.contains("authorization_server.signing_key.rotation_publish_seconds"),
            "{err}"
        );
    }
    let y = yaml.replace(
        "    alg: ES256\n",
        "    alg: ES256\n    rotation_publish_seconds: 45\n",
    );
    assert_eq!(
        Config::from_yaml(&y).unwrap().rotation_publish_seconds(),
        45
    );
    let y = yaml.replace(
        "envoy:\n  listen: 127.0.0.1:9000\n",
        "envoy:\n  listen: 127.0.0.1:9000\n  jwks_refresh_seconds: 20\n",
    );
    assert_eq!(
        Config::from_yaml(&y).unwrap().rotation_publish_seconds(),
        40
    );
}

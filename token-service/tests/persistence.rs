#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use warden_token_service::{Config, SqliteStore};

#[tokio::test]
async fn state_survives_a_restart() {
    let env = TestEnv::new();
    let client = env.register_public(REDIRECT).await;
    let (q, cookie) = env.sign_in(&client, REDIRECT, &[]).await;
    let t = env
        .exchange_public(&client, &q["code"], REDIRECT)
        .await
        .json();
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    let kid = env.state.keys().kid().to_owned();
    let pending_code = env.code(&client, REDIRECT).await;
    let config = env.state.config().clone();
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop(app);
    drop(state);

    // Same files, new process state.
    let env = TestEnv::open(dir, config);
    assert_eq!(env.state.keys().kid(), kid, "signing key persisted");
    assert!(env.dir.path().join("signing-key.json").exists());

    // DCR client, refresh token, code and session all survived.
    let r = env.refresh_public(&client, &rt).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = env.exchange_public(&client, &pending_code, REDIRECT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = env
        .get_with_cookie(&TestEnv::authorize_uri(&client, REDIRECT, &[]), &cookie)
        .await;
    assert_eq!(
        r.status,
        StatusCode::FOUND,
        "session cookie still valid: {}",
        r.body
    );
    // The rotated-out token is still recognised as a replay after the restart.
    let r = env.refresh_public(&client, &rt).await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn migrations_are_recorded_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/warden.db");
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_versions().unwrap(), vec![1, 2]);
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_versions().unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn key_file_with_other_alg_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(dir.path(), "", "ES256");
    let config = Config::from_yaml(&yaml).unwrap();
    let _ = warden_token_service::AppState::new(config).unwrap();
    let config = Config::from_yaml(&config_yaml(dir.path(), "", "EdDSA")).unwrap();
    let err = warden_token_service::AppState::new(config).err().unwrap();
    assert!(format!("{err:#}").contains("signing_key.alg"), "{err:#}");
}

#[cfg(unix)]
#[tokio::test]
async fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let meta = std::fs::metadata(env.dir.path().join("signing-key.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o077, 0);
}

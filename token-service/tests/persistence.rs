#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use warden_token_service::SqliteStore;

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
    let kid = env
        .state
        .keys()
        .signing_key(env.state.now())
        .unwrap()
        .kid()
        .to_owned();
    let pending_code = env.code(&client, REDIRECT).await;
    let config = env.state.config().clone();
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop(app);
    drop(state);

    // Same files, new process state.
    let env = TestEnv::open(dir, config);
    assert_eq!(
        env.state.keys().signing_key(env.state.now()).unwrap().kid(),
        kid,
        "signing key persisted"
    );
    // In the store, sealed: no key file is written.
    assert!(!env.dir.path().join("signing-key.json").exists());

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
    assert_eq!(s.schema_versions().unwrap(), (1..=16).collect::<Vec<i64>>());
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_versions().unwrap(), (1..=16).collect::<Vec<i64>>());
}

fn sample_code() -> warden_token_service::store::AuthCode {
    warden_token_service::store::AuthCode {
        request: warden_token_service::flows::authorize::AuthorizeGrant {
            client_id: "c".into(),
            redirect_uri: REDIRECT.into(),
            redirect_uri_explicit: true,
            state: None,
            code_challenge: challenge(VERIFIER),
            resource: RESOURCE.into(),
            scope: String::new(),
        },
        user: EMAIL.into(),
        sid: "sid".into(),
        expires_at: 160,
    }
}

fn sample_grant(id: &str) -> warden_token_service::store::Grant {
    warden_token_service::store::Grant {
        id: id.into(),
        client_id: "c".into(),
        user: EMAIL.into(),
        sid: "sid".into(),
        resource: RESOURCE.into(),
        scope: String::new(),
        created_at: 100,
        revoked: false,
    }
}

fn sample_refresh(hash: &str, grant: &str) -> warden_token_service::store::RefreshToken {
    warden_token_service::store::RefreshToken {
        token_hash: hash.into(),
        grant_id: grant.into(),
        created_at: 100,
        expires_at: 10_000,
        used: false,
    }
}

#[test]
fn a_second_redemption_of_a_code_revokes_the_first_ones_grant_in_the_same_step() {
    use warden_token_service::store::{CodeLookup, Codes, Redemption, Sessions};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    s.insert_code("h", &sample_code()).unwrap();
    assert!(matches!(s.code("h").unwrap(), CodeLookup::Fresh(_)));
    let (g1, r1) = (sample_grant("g1"), sample_refresh("r1", "g1"));
    assert_eq!(
        s.redeem_code("h", Some((&g1, Some(&r1))), 110, 440)
            .unwrap(),
        Redemption::Redeemed
    );
    // Both racers read "fresh"; the second to redeem issues nothing and kills the first.
    let (g2, r2) = (sample_grant("g2"), sample_refresh("r2", "g2"));
    assert_eq!(
        s.redeem_code("h", Some((&g2, Some(&r2))), 111, 441)
            .unwrap(),
        Redemption::Replayed
    );
    assert!(s.grant("g1").unwrap().unwrap().revoked);
    assert!(s.grant("g2").unwrap().is_none());
    assert!(s.refresh_token("r2").unwrap().is_none());
    assert_eq!(
        s.code("h").unwrap(),
        CodeLookup::Reused {
            grant_id: Some("g1".into())
        }
    );
    assert_eq!(
        s.redeem_code("missing", None, 111, 441).unwrap(),
        Redemption::Missing
    );
}

#[test]
fn a_refresh_token_of_a_revoked_grant_does_not_rotate() {
    use warden_token_service::store::{Codes, Sessions};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    s.insert_code("h", &sample_code()).unwrap();
    let (g, r) = (sample_grant("g"), sample_refresh("r", "g"));
    s.redeem_code("h", Some((&g, Some(&r))), 110, 440).unwrap();
    // Revoked between the refresh's checks and its rotation.
    s.revoke_grant("g", 120, 450).unwrap();
    assert!(!s
        .rotate_refresh_token("r", &sample_refresh("r-next", "g"), 121)
        .unwrap());
    assert!(s.refresh_token("r-next").unwrap().is_none());
}

//! The revocation feed (`/internal/v1/revocations`): what revoking appends, how the feed is
//! paged and signed, and the sweep of entries no valid TE needs any more.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warden_core::internal_api::{RevocationPage, RevokedKind, REVOCATIONS_PATH};
use warden_token_service::store::{Maintenance, Retention, Revocations, Session, Sessions};
use warden_token_service::SqliteStore;

const REDIRECT: &str = "http://127.0.0.1:7777/callback";

fn credential(env: &TestEnv) -> String {
    std::fs::read_to_string(env.state.config().internal_credential_file())
        .expect("the token service makes the credential file for the revocation feed")
        .trim()
        .to_owned()
}

/// `GET` the feed after `after`, signed as the filter signs it (`None`: unsigned).
async fn feed(env: &TestEnv, query: &str, signed: bool) -> (StatusCode, Value) {
    let path = format!("{REVOCATIONS_PATH}?{query}");
    let mut req = Request::get(&path);
    if signed {
        let authorization = sign_internal(&credential(env), "GET", &path, b"", env.state.now());
        req = req.header(header::AUTHORIZATION, authorization);
    }
    let resp = warden_token_service::internal::router(env.state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn revoking_a_refresh_token_puts_its_grant_in_the_feed_for_the_tes_lifetime() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let tokens = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    let te = claims_of(tokens["access_token"].as_str().unwrap());
    let gid = te["gid"]
        .as_str()
        .expect("every TE names its grant")
        .to_owned();
    assert!(!gid.is_empty());
    let (status, empty) = feed(&env, "after=0", true).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(
        empty,
        serde_json::json!({"cursor": 0, "entries": [], "more": false})
    );

    let r = env
        .post_form(
            "/revoke",
            &[
                ("client_id", "public-app"),
                ("token", tokens["refresh_token"].as_str().unwrap()),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (status, body) = feed(&env, "after=0", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: RevocationPage = serde_json::from_value(body).unwrap();
    assert_eq!(page.entries.len(), 1, "{page:?}");
    let entry = &page.entries[0];
    assert_eq!(
        (entry.kind, entry.id.as_str()),
        (RevokedKind::Grant, gid.as_str())
    );
    assert_eq!(entry.at, env.state.now());
    // The TE lives 300 s (the test config), the filter's leeway is 30 s.
    assert_eq!(entry.expires_at, entry.at + 300 + 30);
    assert_eq!(page.cursor, entry.seq);
    // The cursor: nothing after it; revoking again adds nothing.
    env.post_form(
        "/revoke",
        &[
            ("client_id", "public-app"),
            ("token", tokens["refresh_token"].as_str().unwrap()),
        ],
        None,
    )
    .await;
    let (_, after) = feed(&env, &format!("after={}", page.cursor), true).await;
    assert_eq!(after["entries"], serde_json::json!([]));
    assert_eq!(after["cursor"], page.cursor);
    // Once every TE it covers has expired, the feed no longer shows it.
    env.advance(331);
    let (_, later) = feed(&env, "after=0", true).await;
    assert_eq!(later["entries"], serde_json::json!([]));
}

#[tokio::test]
async fn a_replayed_refresh_token_revokes_its_grant_in_the_feed() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let tokens = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    let gid = claims_of(tokens["access_token"].as_str().unwrap())["gid"].clone();
    let rt = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(
        env.refresh_public("public-app", rt).await.status,
        StatusCode::OK
    );
    assert_ne!(
        env.refresh_public("public-app", rt).await.status,
        StatusCode::OK
    );
    let (_, body) = feed(&env, "after=0", true).await;
    assert_eq!(body["entries"][0]["kind"], "grant", "{body}");
    assert_eq!(body["entries"][0]["id"], gid);
}

#[tokio::test]
async fn the_feed_is_signed_and_takes_exactly_a_cursor() {
    let env = TestEnv::new();
    let (status, body) = feed(&env, "after=0", false).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &"unauthorized".into())
    );
    for bad in ["", "after=", "after=-1", "after=1&more=2", "cursor=1"] {
        let (status, body) = feed(&env, bad, true).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &"invalid_request".into()),
            "{bad:?}"
        );
    }
}

#[test]
fn the_store_pages_after_the_cursor_and_the_sweep_drops_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    s.record_revocation(RevokedKind::Grant, "g1", 100, 200)
        .unwrap();
    s.record_revocation(RevokedKind::Session, "s1", 110, 500)
        .unwrap();
    s.record_revocation(RevokedKind::User, "alice", 120, 520)
        .unwrap();
    let all = s.revocations_after(0, 10, 150).unwrap();
    let ids: Vec<_> = all.iter().map(|e| (e.kind, e.id.as_str())).collect();
    assert_eq!(
        ids,
        [
            (RevokedKind::Grant, "g1"),
            (RevokedKind::Session, "s1"),
            (RevokedKind::User, "alice")
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let first = s.revocations_after(0, 1, 150).unwrap();
    assert_eq!(first.len(), 1);
    let rest = s.revocations_after(first[0].seq, 10, 150).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].id, "s1");
    // Past its expires_at an entry is no longer served, and the sweep deletes it.
    assert_eq!(s.revocations_after(0, 10, 200).unwrap().len(), 2);
    let retention = Retention {
        unused_client_ttl: 86_400,
        idle_client_ttl: 86_400,
    };
    s.sweep(200, &retention).unwrap();
    s.sweep(600, &retention).unwrap();
    assert!(s.revocations_after(0, 10, 0).unwrap().is_empty());
    // Sequence numbers are never reused after a sweep: a cursor stays valid.
    s.record_revocation(RevokedKind::Grant, "g2", 700, 900)
        .unwrap();
    let next = s.revocations_after(rest[1].seq, 10, 700).unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].seq > rest[1].seq);
}

#[test]
fn signing_out_puts_the_session_in_the_feed_in_the_same_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    // No live session: nothing revoked, nothing in the feed.
    assert!(!s.revoke_sid("s-none", 100, 430).unwrap());
    assert_eq!(s.revoke_session("h-none", 100, 430).unwrap(), None);
    assert!(s.revocations_after(0, 10, 100).unwrap().is_empty());
    let session = |sid: &str| Session {
        sid: sid.into(),
        user: "alice@example.com".into(),
        created_at: 90,
        expires_at: 10_000,
    };
    // Sign-out with the cookie, and with the app's ticket (by sid).
    s.insert_session("h1", &session("sid-1")).unwrap();
    s.insert_session("h2", &session("sid-2")).unwrap();
    assert_eq!(
        s.revoke_session("h1", 100, 430).unwrap().as_deref(),
        Some("sid-1")
    );
    assert!(s.revoke_sid("sid-2", 101, 431).unwrap());
    let feed: Vec<_> = s
        .revocations_after(0, 10, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.id, e.at, e.expires_at))
        .collect();
    assert_eq!(
        feed,
        [
            (RevokedKind::Session, "sid-1".to_owned(), 100, 430),
            (RevokedKind::Session, "sid-2".to_owned(), 101, 431)
        ]
    );
}

//! Health and shutdown of the real binary: `/healthz` and `/readyz` while the store's
//! migrations wait (another process holding SQLite's write lock), and SIGTERM: the listeners
//! close, requests in progress are answered, `/readyz` says so, and the process exits within
//! `shutdown_grace_seconds`. (PostgreSQL's cases are in `postgres_service.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::served::{get, read_answer, wait_readyz, wait_refused, with_grace, Served};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request whose body the test sends later: `POST /token`, `Expect: 100-continue`, read
/// up to the `100 Continue` (the handler is reading the body: the request is in progress),
/// then the body's first half sent.
struct SlowPost {
    conn: tokio::net::TcpStream,
    rest: &'static [u8],
}

const BODY: &[u8] = b"grant_type=nonsense&client_id=public-app";

impl SlowPost {
    async fn start(addr: std::net::SocketAddr) -> Self {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            format!(
                "POST /token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                BODY.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
                .await
                .expect("no 100 Continue within 10 s")
                .unwrap();
            assert_eq!(
                n,
                1,
                "closed before 100 Continue: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let (first, rest) = BODY.split_at(BODY.len() / 2);
        conn.write_all(first).await.unwrap();
        Self { conn, rest }
    }
}

fn config_file(dir: &std::path::Path, grace: u64) -> std::path::PathBuf {
    let path = dir.join("warden.yaml");
    std::fs::write(&path, with_grace(&config_yaml(dir, "", "ES256"), grace)).unwrap();
    path
}

#[tokio::test]
async fn readyz_is_503_while_migrations_wait_for_the_sqlite_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), 20);
    // Another process migrating the same file: it holds the write lock (BEGIN IMMEDIATE, as
    // the migrations take it) on an empty database.
    let db = rusqlite::Connection::open(dir.path().join("warden.db")).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut served = Served::spawn(&config);
    let addr = served.wait_addr("starting on ");
    let health = get(addr, "/healthz").await.unwrap();
    assert_eq!(health.status(), 200, "{}", health.raw);
    let ready = get(addr, "/readyz").await.unwrap();
    assert_eq!(ready.status(), 503, "{}", ready.raw);
    assert_eq!(
        ready.header("cache-control").as_deref(),
        Some("no-store"),
        "{}",
        ready.raw
    );
    let why: serde_json::Value = serde_json::from_str(ready.body()).unwrap();
    assert_eq!(why["ready"], false, "{}", ready.raw);
    assert!(
        why["reason"].as_str().unwrap().starts_with("starting: "),
        "{}",
        ready.raw
    );
    // Everything else waits for start-up, and says when to come back.
    let meta = get(addr, "/.well-known/oauth-authorization-server")
        .await
        .unwrap();
    assert_eq!(meta.status(), 503, "{}", meta.raw);
    assert_eq!(
        meta.header("retry-after").as_deref(),
        Some("1"),
        "{}",
        meta.raw
    );
    // Still waiting: the schema is not there, so start-up cannot have gone past it.
    let tables: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);

    db.execute_batch("COMMIT").unwrap();
    let ready = wait_readyz(&mut served, addr, 200, Duration::from_secs(30)).await;
    assert_eq!(
        ready.header("cache-control").as_deref(),
        Some("no-store"),
        "{}",
        ready.raw
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(ready.body()).unwrap(),
        serde_json::json!({"ready": true})
    );
    let meta = get(addr, "/.well-known/oauth-authorization-server")
        .await
        .unwrap();
    assert_eq!(meta.status(), 200, "{}", meta.raw);
}

#[tokio::test]
async fn sigterm_refuses_new_connections_and_answers_requests_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::spawn(&config_file(dir.path(), 20));
    let addr = served.wait_addr("starting on ");
    let internal = served.wait_addr("internal listener starting on ");
    wait_readyz(&mut served, addr, 200, Duration::from_secs(30)).await;

    // A request whose head has begun (read before the signal: it was sent before the POST
    // below was accepted), and a POST whose body is half sent.
    let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
    probe
        .write_all(format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    let mut post = SlowPost::start(addr).await;

    served.sigterm();
    let signalled = Instant::now();
    wait_refused(addr, Duration::from_secs(10)).await;
    wait_refused(internal, Duration::from_secs(10)).await;

    // During the drain: not ready, and the requests in progress are answered.
    probe.write_all(b"\r\n").await.unwrap();
    let ready = read_answer(&mut probe).await;
    assert_eq!(ready.status(), 503, "{}", ready.raw);
    assert!(ready.body().contains("shutting down"), "{}", ready.raw);
    assert_eq!(
        ready.header("cache-control").as_deref(),
        Some("no-store"),
        "{}",
        ready.raw
    );
    assert!(
        served.wait_exit(Duration::ZERO).await.is_none(),
        "exited with the POST in progress"
    );
    post.conn.write_all(post.rest).await.unwrap();
    let answer = read_answer(&mut post.conn).await;
    assert_eq!(answer.status(), 400, "{}", answer.raw);
    assert!(
        answer.body().contains("unsupported_grant_type"),
        "{}",
        answer.raw
    );

    let status = served
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 20 s after SIGTERM; log:\n{}",
                served.log_text()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", served.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn a_request_that_never_ends_is_cut_at_the_shutdown_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::spawn(&config_file(dir.path(), 2));
    let addr = served.wait_addr("starting on ");
    wait_readyz(&mut served, addr, 200, Duration::from_secs(30)).await;
    let mut post = SlowPost::start(addr).await;

    served.sigterm();
    let signalled = Instant::now();
    wait_refused(addr, Duration::from_secs(10)).await;
    let status = served
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 15 s after SIGTERM; log:\n{}",
                served.log_text()
            )
        });
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", served.log_text());
    // It waited for the request (the grace, 2 s), and no longer than the grace allows.
    assert!(took >= Duration::from_millis(1500), "exited after {took:?}");
    assert!(took < Duration::from_secs(6), "exited after {took:?}");
    let log = served.log_text();
    assert!(log.contains("shutdown grace over"), "{log}");
    // The connection was cut without an answer.
    let cut = read_answer(&mut post.conn).await;
    assert!(cut.raw.is_empty(), "{}", cut.raw);
}

#[tokio::test]
async fn sigterm_while_migrations_wait_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), 20);
    let db = rusqlite::Connection::open(dir.path().join("warden.db")).unwrap();
    let _: String = db
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut served = Served::spawn(&config);
    let addr = served.wait_addr("starting on ");
    let ready = get(addr, "/readyz").await.unwrap();
    assert_eq!(ready.status(), 503, "{}", ready.raw);
    served.sigterm();
    let signalled = Instant::now();
    // Start-up is abandoned (the migration's wait for the lock too): out in about a second,
    // not after the database's busy timeout and a retry.
    let status = served
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 10 s after SIGTERM; log:\n{}",
                served.log_text()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", served.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "{:?}",
        signalled.elapsed()
    );
    db.execute_batch("COMMIT").unwrap();
}

#[test]
fn shutdown_grace_is_validated_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |grace: u64| with_grace(&config_yaml(dir.path(), "", "ES256"), grace);
    let config = warden_token_service::Config::from_yaml(&yaml(7)).unwrap();
    assert_eq!(config.authorization_server.shutdown_grace_seconds, 7);
    let default =
        warden_token_service::Config::from_yaml(&config_yaml(dir.path(), "", "ES256")).unwrap();
    assert_eq!(default.authorization_server.shutdown_grace_seconds, 20);
    for bad in [0, 301] {
        let e = warden_token_service::Config::from_yaml(&yaml(bad)).unwrap_err();
        assert!(
            e.to_string()
                .contains("authorization_server.shutdown_grace_seconds"),
            "{bad}: {e}"
        );
    }
}

#[tokio::test]
async fn readyz_in_process_is_200_until_shutdown_begins() {
    let env = TestEnv::new();
    let r = env.get("/readyz").await;
    assert_eq!(r.status, axum::http::StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.json(), serde_json::json!({"ready": true}));
    env.state.health().begin_shutdown();
    let r = env.get("/readyz").await;
    assert_eq!(
        r.status,
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.body
    );
    assert_eq!(r.json()["reason"], "shutting down");
    // Alive all the same.
    assert_eq!(env.get("/healthz").await.status, axum::http::StatusCode::OK);
}

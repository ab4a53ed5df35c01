#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The real server on a bound socket (port 0), spoken to with raw HTTP/1.1.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use warden_token_service::listener::Limits;
use warden_token_service::{serve_on, serve_on_with, AppState, Config};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serves_on_a_bound_listener_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml(&config_yaml(dir.path(), "", "ES256")).unwrap();
    let state = AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(listener, state, async {
        let _ = rx.await;
    }));

    let health = http_get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    let meta = http_get(addr, "/.well-known/oauth-authorization-server").await;
    assert!(meta.contains(&format!("\"issuer\":\"{ISSUER}\"")), "{meta}");
    let missing = http_get(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// How long until the server closes `s` (reading and discarding what it sends), and what it sent.
async fn closed_after(s: &mut tokio::net::TcpStream, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    started.elapsed(),
                    String::from_utf8_lossy(&out).into_owned(),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn slow_idle_and_excess_connections_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml(&config_yaml(dir.path(), "", "ES256")).unwrap();
    let state = AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_connections: 3,
        ..Limits::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on_with(listener, state, limits, async {
        let _ = rx.await;
    }));

    // Headers that never end, a connection that sends nothing, and one left idle after a
    // request: each is closed at the header timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        .await
        .unwrap();
    let (after, _) = closed_after(&mut slow, Duration::from_secs(5)).await;
    assert!(
        after < Duration::from_secs(3),
        "slow headers lived {after:?}"
    );
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (after, _) = closed_after(&mut idle, Duration::from_secs(5)).await;
    assert!(
        after < Duration::from_secs(3),
        "idle connection lived {after:?}"
    );
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (after, said) = closed_after(&mut kept, Duration::from_secs(5)).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(
        after < Duration::from_secs(3),
        "idle keep-alive lived {after:?}"
    );

    // A body that never completes: 408 at the request timeout.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=")
        .await
        .unwrap();
    let (after, said) = closed_after(&mut trickle, Duration::from_secs(6)).await;
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(after < Duration::from_secs(4), "slow body lived {after:?}");

    // Three connections at once; a fourth is closed at accept, and served again once one ends.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut excess = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = excess
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (after, said) = closed_after(&mut excess, Duration::from_secs(2)).await;
    assert!(said.is_empty(), "served over the cap: {said}");
    assert!(after < Duration::from_millis(500), "{after:?}");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let (_, health) = closed_after(&mut s, Duration::from_secs(2)).await;
        if health.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// `POST /register` over a connection from `local` (a loopback address of the test's choice).
async fn register_over_socket(addr: std::net::SocketAddr, local: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let body =
        r#"{"redirect_uris":["http://127.0.0.1:4000/cb"],"token_endpoint_auth_method":"none"}"#;
    s.write_all(
        format!(
            "POST /register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn registrations_over_real_connections_are_limited_per_peer_address() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(dir.path(), "", "ES256").replace(
        "  refresh_token_ttl_seconds: 3600\n",
        "  refresh_token_ttl_seconds: 3600\n  registration: {rate_limit_per_minute: 3}\n",
    );
    let state = AppState::new(Config::from_yaml(&yaml).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(listener, state, async {
        let _ = rx.await;
    }));

    for i in 0..3 {
        let r = register_over_socket(addr, "127.0.0.1").await;
        assert!(r.starts_with("HTTP/1.1 201"), "{i}: {r}");
    }
    let r = register_over_socket(addr, "127.0.0.1").await;
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    // One registration comes back every 20 s (3 a minute); less is left when the three
    // above took a while on a loaded machine.
    let retry_after: u64 = r
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .map(str::trim)
                .map(str::to_owned)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {r}"));
    assert!((10..=20).contains(&retry_after), "{r}");
    // Another peer address has its own budget.
    let r = register_over_socket(addr, "127.0.0.2").await;
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");

    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

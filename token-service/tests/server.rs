#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The real server on a bound socket (port 0), spoken to with raw HTTP/1.1.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_token_service::{serve_on, AppState, Config};

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

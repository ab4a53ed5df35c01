//! The token service's accept loop, with the limits a public-facing HTTP server needs and that
//! `axum::serve` does not set: a deadline for request headers (slow-header clients, and idle
//! keep-alive connections, which wait for headers too), a deadline for each whole request (a
//! body trickled in byte by byte), and a cap on open connections. Each request carries the
//! peer address as axum's `ConnectInfo`.
//!
//! Shutdown: the listening socket closes at once (new connections are refused); requests in
//! progress, and connections accepted but not yet read, are answered (with
//! `Connection: close`); idle keep-alive connections close. What is still running after
//! `shutdown_grace` is cut.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Limits of the token service's HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time for a client to send request headers; also how long an idle keep-alive connection
    /// waits for its next request.
    pub header_timeout: Duration,
    /// Time to answer one request, body reading included.
    pub request_timeout: Duration,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Once shutdown begins, how long requests in progress may take to finish
    /// (`authorization_server.shutdown_grace_seconds`).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in progress
/// finish for at most `limits.shutdown_grace` and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Owned here, so that what outlives the grace is cut when this returns.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; connection closed"
            );
            drop(stream);
            continue;
        };
        // Answers go out as written (no Nagle delay behind Envoy's delayed ACKs).
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let answer = router.oneshot(req.map(axum::body::Body::new));
                    Ok::<Response, Infallible>(
                        match tokio::time::timeout(limits.request_timeout, answer).await {
                            Ok(Ok(resp)) => resp,
                            Ok(Err(never)) => match never {},
                            Err(_) => {
                                (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response()
                            }
                        },
                    )
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopping => {
                    // Closes the connection if idle; else after the answer in progress.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(%addr, open, grace_seconds = limits.shutdown_grace.as_secs(), "shutting down: finishing requests in progress");
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            %addr,
            cut = connections.len(),
            grace_seconds = limits.shutdown_grace.as_secs(),
            "shutdown grace over: cutting connections still in progress"
        );
        connections.shutdown().await;
    }
    Ok(())
}

//! The token service's accept loop, with the limits a public-facing HTTP server needs and that
//! `axum::serve` does not set: a deadline for request headers (slow-header clients, and idle
//! keep-alive connections, which wait for headers too), a deadline for each whole request (a
//! body trickled in byte by byte), and a cap on open connections. Each request carries the
//! peer address as axum's `ConnectInfo`.

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in progress
/// finish (for at most the request timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
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
        tokio::spawn(async move {
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
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.request_timeout, conn).await;
                }
            }
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Wait for connections to wind down: every slot back, or the request timeout.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.request_timeout, slots.acquire_many(all)).await;
    Ok(())
}

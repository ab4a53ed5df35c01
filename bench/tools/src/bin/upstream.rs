//! `bench-upstream --listen 127.0.0.1:PORT --call FILE --list FILE`: the benchmark's "real
//! upstream". It answers every request with `200 application/json`: the contents of the
//! `--list` file when the path ends in `/list`, else the `--call` file. The request body is read
//! and dropped. It also stands in for the token service's internal listener, so the filter's
//! upstream-token path can be measured: `POST /internal/v1/upstream-token` answers a token that
//! never expires (after the first call per worker the filter serves it from its cache, which is
//! what is measured). `GET /internal/v1/revocations?after=C` is the revocation feed: from 0, a
//! page of `REVOKED` grant entries and a few users (none of them the benchmark's token), then
//! empty pages at the same cursor, so the filter runs with the feed on and a revoked set of
//! realistic size, as users will. One thread (Tokio current-thread runtime), HTTP/1.1 keep-alive: it shares a
//! core with wrk and must stay far cheaper than the Envoy under test.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{bail, Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const UPSTREAM_TOKEN_PATH: &str = "/internal/v1/upstream-token";
const REVOCATIONS_PATH: &str = "/internal/v1/revocations";
/// Revoked grants the feed holds (plus `REVOKED / 10` users).
const REVOKED: i64 = 400;
/// Year 2100: the entries outlive the benchmark.
const FOREVER: i64 = 4_102_444_800;

/// The feed's page after `after`: everything from 0, nothing new afterwards.
fn revocation_page(after: i64) -> Bytes {
    let last = REVOKED + REVOKED / 10;
    if after >= last {
        return Bytes::from(format!(r#"{{"cursor":{after},"entries":[],"more":false}}"#));
    }
    let entries: Vec<String> = (after + 1..=last)
        .map(|seq| {
            let (kind, id) = if seq <= REVOKED {
                ("grant", format!("revoked-grant-{seq}"))
            } else {
                ("user", format!("revoked-user-{seq}@example.com"))
            };
            format!(r#"{{"seq":{seq},"kind":"{kind}","id":"{id}","at":0,"expires_at":{FOREVER}}}"#)
        })
        .collect();
    Bytes::from(format!(
        r#"{{"cursor":{last},"entries":[{}],"more":false}}"#,
        entries.join(",")
    ))
}
const UPSTREAM_TOKEN: &[u8] =
    br#"{"access_token":"bench-upstream-token","issued_at":0,"expires_at":null,"granted_at":0}"#;

async fn answer(
    req: Request<Incoming>,
    call: Bytes,
    list: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == UPSTREAM_TOKEN_PATH {
        Bytes::from_static(UPSTREAM_TOKEN)
    } else if req.uri().path() == REVOCATIONS_PATH {
        let after = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("after="))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        revocation_page(after)
    } else if req.uri().path().ends_with("/list") {
        list
    } else {
        call
    };
    // Read the whole request so the connection stays reusable.
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn main() -> Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let (mut call, mut list) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--call" => call = Some(std::fs::read(value()?).context("--call file")?),
            "--list" => list = Some(std::fs::read(value()?).context("--list file")?),
            other => bail!("unknown argument {other:?}; usage: bench-upstream --listen ADDR --call FILE --list FILE"),
        }
    }
    let listen = listen.context("--listen is required")?;
    let call = Bytes::from(call.context("--call is required")?);
    let list = Bytes::from(list.context("--list is required")?);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind {listen}"))?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (call, list) = (call.clone(), list.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, call.clone(), list.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

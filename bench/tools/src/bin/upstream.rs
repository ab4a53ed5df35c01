//! `bench-upstream --listen 127.0.0.1:PORT --call FILE --list FILE`: the benchmark's "real
//! upstream". It answers every request with `200 application/json`: the contents of the
//! `--list` file when the path ends in `/list`, else the `--call` file. The request body is read
//! and dropped. It also stands in for the token service's internal listener, so the filter's
//! upstream-token path can be measured: `POST /internal/v1/upstream-token` answers a token that
//! never expires (after the first call per worker the filter serves it from its cache, which is
//! what is measured). One thread (Tokio current-thread runtime), HTTP/1.1 keep-alive: it shares a
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
const UPSTREAM_TOKEN: &[u8] =
    br#"{"access_token":"bench-upstream-token","issued_at":0,"expires_at":null,"granted_at":0}"#;

async fn answer(
    req: Request<Incoming>,
    call: Bytes,
    list: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == UPSTREAM_TOKEN_PATH {
        Bytes::from_static(UPSTREAM_TOKEN)
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

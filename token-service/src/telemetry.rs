//! Traces over OTLP/HTTP (`telemetry.otlp_endpoint`): the exporter and its `tracing` layer,
//! the server span of each HTTP request (parented on the caller's W3C `traceparent`), and the
//! client span of each outbound call (with `traceparent` injected, so the provider sees the
//! trace).
//!
//! Span attributes are names, routes, methods, statuses and URLs without their query: never
//! a token, code, secret, password or assertion. The spans exist whether or not an exporter
//! is installed (the JSON log leaves them out); without one nothing is exported.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config_telemetry::TelemetryConfig;

/// Time one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed exporter: [`Traces::shutdown`] flushes what the batch still holds.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter when `telemetry.otlp_endpoint` is set; an https collector is
    /// trusted as every outbound call is (`outbound`). `runtime` runs its HTTP posts (the
    /// batch processor exports from a thread of its own).
    pub fn build(
        config: &TelemetryConfig,
        outbound: &crate::outbound::OutboundConfig,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Self>> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let http = crate::outbound::Outbound::load(outbound)?.client(EXPORT_TIMEOUT)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(ExportClient { http, runtime })
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name().to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("warden-token-service"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            // Spans only: log events stay in the log, where they always were.
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("warden_token_service")
            }))
    }

    /// Exports what is still batched; called once serving has stopped.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces: {e}");
        }
    }
}

/// The exporter's HTTP client: the reqwest the service already builds, on the service's
/// runtime (the batch processor's thread has none).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let resp = http.execute(request).await?;
            let mut out = Response::builder().status(resp.status());
            let body = resp.bytes().await?;
            out = out.header("content-length", body.len());
            Ok::<_, HttpError>(out.body(body)?)
        });
        sent.await?
    }
}

/// W3C trace context: what `traceparent`/`tracestate` carry in and out.
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The server span of each request: `HTTP <method> <route template>`, a child of the
/// caller's span when the request carries `traceparent`.
pub fn http_layer() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    ServerSpan,
    (),
    RecordStatus,
> {
    TraceLayer::new_for_http()
        .make_span_with(ServerSpan)
        .on_request(())
        .on_response(RecordStatus)
}

#[derive(Clone, Copy, Debug)]
pub struct ServerSpan;

impl<B> MakeSpan<B> for ServerSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let method = request.method().as_str();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let host = request
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
            .unwrap_or("");
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = %format!("HTTP {method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            server.address = %host,
            http.response.status_code = Empty,
        );
        let parent = propagator().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
        span
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &Span) {
        span.record("http.response.status_code", response.status().as_u16());
    }
}

/// Sends `request` inside a client span `HTTP <method>` (`url.full` without its query or
/// credentials), with the span's `traceparent`/`tracestate` added to the request.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let (client, request) = request.build_split();
    execute(&client, request?).await
}

/// [`send`] for a built request.
pub async fn execute(
    client: &reqwest::Client,
    mut request: reqwest::Request,
) -> reqwest::Result<reqwest::Response> {
    use tracing::Instrument as _;
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "HTTP client",
        otel.name = %format!("HTTP {method}"),
        otel.kind = "client",
        http.request.method = %method,
        url.full = %url_without_query(request.url()),
        http.response.status_code = Empty,
    );
    propagator().inject_context(&span.context(), &mut HeaderInjector(request.headers_mut()));
    let answered = client.execute(request).instrument(span.clone()).await;
    if let Ok(resp) = &answered {
        span.record("http.response.status_code", resp.status().as_u16());
    }
    answered
}

/// Records `result` (`ok` or `error`) on the current span.
pub fn record_result<T, E>(r: &Result<T, E>) {
    Span::current().record("result", if r.is_ok() { "ok" } else { "error" });
}

/// A grant type as a span shows it: the ones the token endpoint knows, else `other`.
pub fn grant_type_name(grant_type: &str) -> &'static str {
    match grant_type {
        "authorization_code" => "authorization_code",
        "refresh_token" => "refresh_token",
        "client_credentials" => "client_credentials",
        crate::config_id_jag::JWT_BEARER_GRANT => crate::config_id_jag::JWT_BEARER_GRANT,
        _ => "other",
    }
}

/// A name from a request (client id, route), cut to 128 bytes at a character boundary.
pub fn bounded(name: &str) -> &str {
    let mut end = name.len().min(128);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// `url` without query, fragment or credentials: what a span may show of it.
pub fn url_without_query(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_in_a_span_has_no_query_or_credentials() {
        let url = url::Url::parse("https://u:p@idp.example/token?code=secret#x").unwrap();
        assert_eq!(url_without_query(&url), "https://idp.example/token");
    }
}

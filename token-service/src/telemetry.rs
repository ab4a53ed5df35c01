//! Traces over OTLP/HTTP (`telemetry.otlp_endpoint`): the exporter and its `tracing` layer,
//! and the server span of each HTTP request (parented on the caller's W3C `traceparent`). The
//! client span of each outbound call (with `traceparent` injected, so the provider sees the
//! trace) is `outbound::send`.
//!
//! Span attributes are names, routes, methods, statuses and URLs without their query: never
//! a token, code, secret, password or assertion. The spans exist whether or not an exporter
//! is installed (the JSON log leaves them out); without one nothing is exported.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HeaderExtractor, HttpClient, HttpError};
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

/// W3C trace context: what `traceparent`/`tracestate` carry in.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_types_outside_the_known_ones_are_other() {
        assert_eq!(grant_type_name("refresh_token"), "refresh_token");
        assert_eq!(grant_type_name("eyJhbGciOi.secret"), "other");
        assert_eq!(bounded(&"x".repeat(300)).len(), 128);
    }
}

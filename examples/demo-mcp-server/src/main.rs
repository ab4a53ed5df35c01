//! Demo MCP server for mcp-warden (`make run` and the end-to-end tests).
//!
//! Built on the official Rust SDK (`rmcp`) and served with axum over streamable HTTP at `/mcp`.
//!
//! # Serving both protocol eras at once
//!
//! rmcp 3.9's [`StreamableHttpService`] decides per request which era a POST belongs to
//! (`is_legacy_request` in `rmcp::transport::streamable_http_server::tower`):
//!
//! * `StreamableHttpServerConfig::legacy_session_mode` (default `true`) enables sessions, but only
//!   for the revisions before `2026-07-28`: an `initialize` request always takes the handshake path
//!   (the server answers with `Mcp-Session-Id`, accepts `GET` for the SSE stream and `DELETE` to end
//!   the session), whatever version it names.
//! * A request that carries the complete `2026-07-28` per-request `_meta`
//!   (`io.modelcontextprotocol/protocolVersion`, `clientInfo`, `clientCapabilities`) together
//!   with the `MCP-Protocol-Version`/`Mcp-Method`/`Mcp-Name` headers is served statelessly (no
//!   session), also when `legacy_session_mode` is on ("Per SEP-2567 … requests negotiating
//!   that version are always served statelessly regardless of this setting"). `server/discover`
//!   is answered without a session too.
//! * `ServerHandler::supported_protocol_versions` defaults to `ProtocolVersion::KNOWN_VERSIONS`
//!   (`2026-07-28`, `2025-11-25`, `2025-06-18`, `2025-03-26`, `2024-11-05`), so both a
//!   `server/discover` client and an `initialize` client find a version they speak.
//! * `stateless_protocol_metadata_required` stays `false`: with it on, handshake-era clients
//!   (which send no per-request `_meta`) would be rejected.
//!
//! So the defaults (`legacy_session_mode: true`, `LocalSessionManager`) are exactly what a
//! server that speaks both eras needs; nothing else is switched on.
//!
//! # Test hooks
//!
//! * Every HTTP request the server receives (except `/_recorded` and `/healthz` themselves) is
//!   recorded in memory: method, path (with query), headers, and the body (first 64 KiB).
//!   `GET /_recorded` returns them as a JSON array, `DELETE /_recorded` clears the list.
//! * `GET /healthz` answers `200 ok`.
//! * The `whoami` tool returns the HTTP request the server received for that very call
//!   (method, path, headers) as JSON text, read from the `http::request::Parts` that rmcp's
//!   streamable HTTP service inserts into the request context extensions.
//! * `POST /split-sse` answers a JSON-RPC `tools/list` (any other body: 400) with a hand-written
//!   SSE event listing `whoami` (description [`SPLIT_SSE_DESCRIPTION`], multi-byte UTF-8) and
//!   `get_time`, sent as several body chunks whose boundaries fall inside multi-byte
//!   characters, flushed one by one, so a gateway must reassemble events and characters.
//! * `POST /json-tools` answers a JSON-RPC `tools/list` with the same list as one
//!   `application/json` body (rmcp itself answers POSTs as SSE in both eras).
//! * `GET /silent-sse?seconds=N` opens an SSE stream that stays silent for N seconds, then sends
//!   one event and ends; the `sleep` tool answers after N seconds. Both stand in for long MCP
//!   streams that a gateway's timeouts must not cut.
//!
//! # Bearer checking (upstream OAuth)
//!
//! With `--require-bearer-introspect URL` (the `/introspect` endpoint of
//! `demo-oauth-provider`), every request to `/mcp` must carry `Authorization: Bearer <token>`
//! that the provider's RFC 7662 introspection reports as active (asked on every request, nothing
//! cached); otherwise `401` with `WWW-Authenticate: Bearer error="invalid_token"`. With
//! `--require-scope SCOPE` as well, an active token whose scope lacks SCOPE gets `403` with
//! `WWW-Authenticate: Bearer error="insufficient_scope", scope="SCOPE"`. An unreachable or
//! unparsable introspection endpoint gives `503`. `/healthz`, `/_recorded` and the other test
//! routes stay open; rejected requests are still recorded.
//!
//! With `--resource-metadata-issuer ISSUER` as well the server is an RFC 9728 protected
//! resource: `GET /.well-known/oauth-protected-resource/mcp` answers `{"resource":
//! "http://ADDR/mcp", "authorization_servers": [ISSUER], "bearer_methods_supported": ["header"]}`
//! (and `scopes_supported` with `--require-scope`; `Cache-Control: max-age=N` with
//! `--metadata-max-age N`), and every `401` carries `WWW-Authenticate: Bearer
//! error="invalid_token", resource_metadata="…"` (no `error` when the request had no
//! `Authorization`; a `403 insufficient_scope` names it too), as remote MCP servers with OAuth
//! of their own answer. `POST
//! /_test/authorization-server?issuer=URL&introspect=URL` switches the authorization server the
//! metadata names and the introspection endpoint (an upstream rotating its AS). With
//! `--require-audience` an active token must also have `aud` equal to `http://ADDR/mcp` (RFC
//! 8707). `--introspect-ca FILE` trusts a PEM CA (besides the system's) for an https
//! introspection endpoint.
//!
//! With `--answer-401 CHALLENGE` every request to `/mcp` gets `401` with `WWW-Authenticate:
//! CHALLENGE`, `x-demo-refusal: own-oauth` and the JSON body [`OWN_OAUTH_BODY`]: a remote MCP
//! server that runs OAuth of its own (its challenge names its resource metadata), for tests of
//! a gateway route that passes such an answer on unchanged. Such requests are recorded too.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use axum::{
    body::Body,
    extract::{OriginalUri, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use rmcp::{
    handler::server::{router::tool::ToolRouter, tool::Extension, wrapper::Parameters},
    model::{Implementation, ServerCapabilities, ServerConfig},
    schemars, tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    },
    ServerHandler,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Bodies are recorded up to this many bytes.
const RECORD_BODY_LIMIT: usize = 64 * 1024;
/// Largest request body the recorder reads (rmcp's own POST limit is 4 MiB).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const DEFAULT_LISTEN: &str = "127.0.0.1:9200";

// ---------------------------------------------------------------------------------------------
// MCP tools
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to send back.
    text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    /// Seconds to wait before answering (at most 600).
    seconds: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AddArgs {
    /// Left operand.
    a: i64,
    /// Right operand.
    b: i64,
}

#[derive(Debug, Clone)]
struct DemoServer {
    tool_router: ToolRouter<Self>,
}

impl DemoServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

/// Headers as a JSON object: lower-case name → array of values (non-UTF-8 values lossily).
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for (name, value) in headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match out.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            _ => {
                out.insert(name.as_str().to_owned(), Value::Array(vec![value]));
            }
        }
    }
    Value::Object(out)
}

#[tool_router]
impl DemoServer {
    /// Returns the HTTP request this call arrived in, so tests can see exactly what the gateway
    /// forwarded (e.g. that no `authorization` header reached the upstream).
    #[tool(
        description = "Return the HTTP request headers the MCP server received for this call, as JSON: {\"method\", \"path\", \"headers\": {name: [values]}}"
    )]
    fn whoami(&self, Extension(parts): Extension<Parts>) -> String {
        json!({
            "method": parts.method.as_str(),
            // `nest_service("/mcp", …)` strips the prefix from `parts.uri`; axum keeps the
            // request's original URI as an extension.
            "path": parts
                .extensions
                .get::<OriginalUri>()
                .map_or_else(|| parts.uri.to_string(), |original| original.0.to_string()),
            "headers": headers_json(&parts.headers),
        })
        .to_string()
    }

    #[tool(description = "Echo the given text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Return the server's current time (RFC 3339, UTC)")]
    fn get_time(&self) -> String {
        chrono::Utc::now().to_rfc3339()
    }

    /// A long tool call: the response comes after `seconds` of silence.
    #[tool(description = "Wait the given number of seconds (at most 600), then answer")]
    async fn sleep(&self, Parameters(SleepArgs { seconds }): Parameters<SleepArgs>) -> String {
        let seconds = seconds.min(600);
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        format!("slept {seconds} s")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "demo-mcp-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("mcp-warden demo server: whoami, echo, add, get_time, sleep")
    }
}

// ---------------------------------------------------------------------------------------------
// Request recording
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct RecordedRequest {
    method: String,
    path: String,
    headers: Value,
    /// Body (lossy UTF-8), at most 64 KiB.
    body: String,
    body_len: usize,
    body_truncated: bool,
}

#[derive(Debug, Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl Recorder {
    fn push(&self, request: RecordedRequest) {
        // A poisoned lock only means another handler panicked mid-push; keep recording.
        let mut guard = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.push(request);
    }

    fn snapshot(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn clear(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

async fn record_requests(
    State(recorder): State<Recorder>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/_recorded" || path == "/healthz" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            recorder.push(RecordedRequest {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                headers: headers_json(&parts.headers),
                body: format!("<body not read: {error}>"),
                body_len: 0,
                body_truncated: true,
            });
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
        }
    };
    let shown = bytes.get(..RECORD_BODY_LIMIT).unwrap_or(&bytes);
    recorder.push(RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: headers_json(&parts.headers),
        body: String::from_utf8_lossy(shown).into_owned(),
        body_len: bytes.len(),
        body_truncated: bytes.len() > RECORD_BODY_LIMIT,
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn get_recorded(State(recorder): State<Recorder>) -> Json<Vec<RecordedRequest>> {
    Json(recorder.snapshot())
}

async fn delete_recorded(State(recorder): State<Recorder>) -> StatusCode {
    recorder.clear();
    StatusCode::NO_CONTENT
}

async fn healthz() -> &'static str {
    "ok"
}

/// The `whoami` description `/split-sse` sends, cut inside its multi-byte characters.
const SPLIT_SSE_DESCRIPTION: &str = "héllo ✓ 日本";

/// The canned `tools/list` result for a JSON-RPC request body, if it is one.
fn canned_tools_list(body: &[u8]) -> Option<Value> {
    let request: Value = serde_json::from_slice(body).ok()?;
    if request.get("method").and_then(Value::as_str) != Some("tools/list") {
        return None;
    }
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let schema = json!({ "type": "object", "properties": {} });
    Some(json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": { "tools": [
            { "name": "whoami", "description": SPLIT_SSE_DESCRIPTION, "inputSchema": schema },
            { "name": "get_time", "description": "Return the time", "inputSchema": schema },
        ] },
    }))
}

async fn json_tools(body: axum::body::Bytes) -> Response {
    match canned_tools_list(&body) {
        Some(message) => Json(message).into_response(),
        None => (StatusCode::BAD_REQUEST, "only tools/list is answered here").into_response(),
    }
}

async fn split_sse(body: axum::body::Bytes) -> Response {
    let Some(message) = canned_tools_list(&body) else {
        return (StatusCode::BAD_REQUEST, "only tools/list is answered here").into_response();
    };
    let event = format!("event: message\ndata: {message}\n\n").into_bytes();
    // Cut one byte into "é" (2 bytes), "✓" (3 bytes) and two bytes into "日" (3 bytes).
    let mut cuts = Vec::new();
    for (needle, into) in [("é", 1), ("✓", 1), ("日", 2)] {
        if let Some(at) = find(&event, needle.as_bytes()) {
            cuts.push(at + into);
        }
    }
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(axum::body::Bytes::copy_from_slice(&event[start..cut]));
        start = cut;
    }
    chunks.push(axum::body::Bytes::copy_from_slice(&event[start..]));
    let stream = futures_util::StreamExt::then(futures_util::stream::iter(chunks), |chunk| async {
        // Each chunk goes out on its own.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        Ok::<_, std::convert::Infallible>(chunk)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /silent-sse?seconds=N`: an SSE stream that stays silent for N seconds (at most 3600),
/// then sends one event and ends. Stands in for an idle MCP GET stream.
async fn silent_sse(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let seconds = query
        .as_deref()
        .and_then(|q| q.strip_prefix("seconds="))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1)
        .min(3600);
    let stream = futures_util::stream::once(async move {
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(format!(
            "event: message\ndata: {{\"silent_seconds\":{seconds}}}\n\n"
        )))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Bearer checking (--require-bearer-introspect)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct BearerCheck {
    /// Switched at runtime by `/_test/authorization-server`.
    introspect_url: Mutex<String>,
    required_scope: Option<String>,
    http: reqwest::Client,
    /// `http://ADDR/mcp`: this server's resource (RFC 8707 audience, RFC 9728 `resource`).
    resource: String,
    /// `--require-audience`.
    require_audience: bool,
    /// `--resource-metadata-issuer`: the RFC 9728 metadata.
    metadata: Option<ResourceMetadata>,
}

#[derive(Debug)]
struct ResourceMetadata {
    /// `http://ADDR/.well-known/oauth-protected-resource/mcp`.
    url: String,
    /// The authorization server it names; switched by `/_test/authorization-server`.
    issuer: Mutex<String>,
    max_age: Option<u64>,
}

/// What introspection says of an active token.
struct Active {
    scope: String,
    /// `aud`: a string or a list (RFC 7662 §2.2).
    audiences: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bearer_reject(status: StatusCode, challenge: &str, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    resp
}

fn invalid_token(check: &BearerCheck, description: &str) -> Response {
    let challenge = match &check.metadata {
        Some(m) => format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{}\"",
            m.url
        ),
        None => "Bearer error=\"invalid_token\"".to_owned(),
    };
    bearer_reject(
        StatusCode::UNAUTHORIZED,
        &challenge,
        "invalid_token",
        description,
    )
}

/// `401` to a request without credentials: with metadata, only where to find the AS (RFC 6750
/// §3.1: no error code when the request had no authentication).
fn no_token(check: &BearerCheck) -> Response {
    match &check.metadata {
        Some(m) => bearer_reject(
            StatusCode::UNAUTHORIZED,
            &format!("Bearer resource_metadata=\"{}\"", m.url),
            "invalid_token",
            "missing bearer token",
        ),
        None => invalid_token(check, "missing bearer token"),
    }
}

/// `GET /.well-known/oauth-protected-resource/mcp` (RFC 9728).
async fn resource_metadata(State(check): State<Arc<BearerCheck>>) -> Response {
    let Some(m) = &check.metadata else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut doc = json!({
        "resource": check.resource,
        "authorization_servers": [lock(&m.issuer).clone()],
        "bearer_methods_supported": ["header"],
    });
    if let Some(scope) = &check.required_scope {
        doc["scopes_supported"] = json!([scope]);
    }
    let mut resp = Json(doc).into_response();
    if let Some(age) = m.max_age {
        if let Ok(value) = HeaderValue::from_str(&format!("max-age={age}")) {
            resp.headers_mut().insert(header::CACHE_CONTROL, value);
        }
    }
    resp
}

/// `POST /_test/authorization-server?issuer=URL&introspect=URL`: the upstream rotates its AS.
async fn set_authorization_server(
    State(check): State<Arc<BearerCheck>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let Some(m) = &check.metadata else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if params.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "give issuer and/or introspect" })),
        )
            .into_response();
    }
    if let Some(issuer) = params.get("issuer") {
        *lock(&m.issuer) = issuer.clone();
    }
    if let Some(introspect) = params.get("introspect") {
        *lock(&check.introspect_url) = introspect.clone();
    }
    let answer = json!({
        "issuer": lock(&m.issuer).clone(),
        "introspect": lock(&check.introspect_url).clone(),
    });
    Json(answer).into_response()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Asks the provider's `/introspect` about `token`: `Ok(Some(..))` if active.
async fn introspect(check: &BearerCheck, token: &str) -> anyhow::Result<Option<Active>> {
    let url = lock(&check.introspect_url).clone();
    let resp = check
        .http
        .post(&url)
        .form(&[("token", token)])
        .send()
        .await?
        .error_for_status()?;
    let body: Value = resp.json().await?;
    if body.get("active").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let audiences = match body.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(Active {
        scope: body
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        audiences,
    }))
}

async fn require_bearer(
    State(check): State<Arc<BearerCheck>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path != "/mcp" && !path.starts_with("/mcp/") {
        return next.run(request).await;
    }
    if !request.headers().contains_key(header::AUTHORIZATION) {
        return no_token(&check);
    }
    let Some(token) = bearer_token(request.headers()) else {
        return invalid_token(&check, "missing bearer token");
    };
    let active = match introspect(&check, token).await {
        Ok(Some(active)) => active,
        Ok(None) => return invalid_token(&check, "the token is not active"),
        Err(error) => {
            eprintln!(
                "introspection at {} failed: {error:#}",
                lock(&check.introspect_url)
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "introspection_failed" })),
            )
                .into_response();
        }
    };
    if check.require_audience && !active.audiences.contains(&check.resource) {
        return invalid_token(&check, "the token is not for this resource (aud)");
    }
    if let Some(required) = &check.required_scope {
        if !active.scope.split_whitespace().any(|s| s == required) {
            // As MCP servers answer it: where to get a token with more scope, when known.
            let metadata = check
                .metadata
                .as_ref()
                .map(|m| format!(", resource_metadata=\"{}\"", m.url))
                .unwrap_or_default();
            return bearer_reject(
                StatusCode::FORBIDDEN,
                &format!("Bearer error=\"insufficient_scope\", scope=\"{required}\"{metadata}"),
                "insufficient_scope",
                &format!("the token lacks scope {required}"),
            );
        }
    }
    next.run(request).await
}

/// The body of `--answer-401`'s refusals.
const OWN_OAUTH_BODY: &str =
    r#"{"error":"invalid_token","error_description":"this server runs OAuth of its own"}"#;

async fn answer_401(
    State(challenge): State<Arc<HeaderValue>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path != "/mcp" && !path.starts_with("/mcp/") {
        return next.run(request).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        OWN_OAUTH_BODY,
    )
        .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, (*challenge).clone());
    resp.headers_mut()
        .insert("x-demo-refusal", HeaderValue::from_static("own-oauth"));
    resp
}

// ---------------------------------------------------------------------------------------------
// Identity assertion checking (--verify-assertion)
// ---------------------------------------------------------------------------------------------

/// The header mcp-warden adds on routes with `pass_identity_headers`.
const ASSERTION_HEADER: &str = "x-warden-jwt-assertion";
/// The header this server sets, after verifying the assertion, to its claims (JSON), so the
/// `whoami` tool shows who the gateway said the caller is. A client's own value is removed.
const VERIFIED_HEADER: &str = "x-demo-verified-assertion";

#[derive(Debug)]
struct AssertionCheck {
    /// The request header holding the assertion (lower case).
    header: String,
    jwks_url: String,
    audience: String,
    issuer: Option<String>,
    http: reqwest::Client,
    /// The JWKS as last fetched (fetched again when a `kid` is not in it).
    jwks: tokio::sync::Mutex<Option<Value>>,
}

fn assertion_reject(description: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "invalid_assertion", "error_description": description })),
    )
        .into_response()
}

impl AssertionCheck {
    async fn fetch_jwks(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(&self.jwks_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The JWK named `kid`, from the cached JWKS or a fresh one.
    async fn key(&self, kid: &str) -> anyhow::Result<Option<Value>> {
        let find = |jwks: &Value| {
            jwks["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["kid"] == kid).cloned())
        };
        let mut cached = self.jwks.lock().await;
        if let Some(key) = cached.as_ref().and_then(find) {
            return Ok(Some(key));
        }
        let fresh = self.fetch_jwks().await?;
        let key = find(&fresh);
        *cached = Some(fresh);
        Ok(key)
    }

    /// The verified claims, or why the assertion is refused.
    async fn verify(&self, jwt: &str) -> Result<Value, String> {
        use jwt_compact::alg::{Ed25519, Es256};
        use jwt_compact::jwk::JsonWebKey;
        use jwt_compact::{Algorithm, AlgorithmExt, TimeOptions, UntrustedToken};

        let untrusted = UntrustedToken::new(jwt).map_err(|e| format!("malformed: {e}"))?;
        if untrusted.header().token_type.as_deref() != Some("JWT") {
            return Err("typ must be JWT".into());
        }
        let kid = untrusted.header().key_id.clone().ok_or("no kid")?;
        let jwk = match self.key(&kid).await {
            Ok(Some(jwk)) => jwk,
            Ok(None) => return Err(format!("kid {kid} is not in the JWKS")),
            Err(e) => return Err(format!("cannot fetch the JWKS: {e:#}")),
        };
        let parsed: JsonWebKey<'_> =
            serde_json::from_value(jwk.clone()).map_err(|e| format!("bad JWK: {e}"))?;
        // The key fixes the algorithm; the token's `alg` must be it.
        let token = match (jwk["kty"].as_str(), untrusted.algorithm()) {
            (Some("EC"), "ES256") => {
                let key = <Es256 as Algorithm>::VerifyingKey::try_from(&parsed)
                    .map_err(|e| format!("bad JWK: {e}"))?;
                Es256.validator::<Value>(&key).validate(&untrusted)
            }
            (Some("OKP"), "EdDSA") => {
                let key = <Ed25519 as Algorithm>::VerifyingKey::try_from(&parsed)
                    .map_err(|e| format!("bad JWK: {e}"))?;
                Ed25519.validator::<Value>(&key).validate(&untrusted)
            }
            (kty, alg) => return Err(format!("alg {alg} does not fit the key ({kty:?})")),
        }
        .map_err(|e| format!("bad signature: {e}"))?;
        let claims = token.claims();
        claims
            .validate_expiration(&TimeOptions::new(
                chrono::Duration::seconds(30),
                chrono::Utc::now,
            ))
            .map_err(|e| format!("expired: {e}"))?;
        let custom = &claims.custom;
        if custom["aud"] != self.audience.as_str() {
            return Err(format!("aud {} is not {}", custom["aud"], self.audience));
        }
        if let Some(issuer) = &self.issuer {
            if custom["iss"] != issuer.as_str() {
                return Err(format!("iss {} is not {issuer}", custom["iss"]));
            }
        }
        let mut shown = custom.clone();
        if let Some(obj) = shown.as_object_mut() {
            if let Some(exp) = claims.expiration {
                obj.insert("exp".into(), exp.timestamp().into());
            }
            if let Some(iat) = claims.issued_at {
                obj.insert("iat".into(), iat.timestamp().into());
            }
        }
        Ok(shown)
    }
}

async fn require_assertion(
    State(check): State<Arc<AssertionCheck>>,
    mut request: Request,
    next: Next,
) -> Response {
    request.headers_mut().remove(VERIFIED_HEADER);
    let path = request.uri().path();
    if path != "/mcp" && !path.starts_with("/mcp/") {
        return next.run(request).await;
    }
    let values: Vec<&HeaderValue> = request.headers().get_all(&check.header).iter().collect();
    let [value] = values.as_slice() else {
        return assertion_reject(&format!("exactly one {} header is required", check.header));
    };
    let Ok(jwt) = value.to_str() else {
        return assertion_reject("the assertion is not text");
    };
    let claims = match check.verify(jwt).await {
        Ok(claims) => claims,
        Err(why) => return assertion_reject(&why),
    };
    if let Ok(v) = HeaderValue::from_str(&claims.to_string()) {
        request.headers_mut().insert(VERIFIED_HEADER, v);
    }
    next.run(request).await
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

struct Args {
    listen: SocketAddr,
    allowed_hosts: Vec<String>,
    require_bearer_introspect: Option<String>,
    require_scope: Option<String>,
    verify_assertion: Option<String>,
    assertion_audience: Option<String>,
    assertion_issuer: Option<String>,
    assertion_header: Option<String>,
    answer_401: Option<String>,
    resource_metadata_issuer: Option<String>,
    metadata_max_age: Option<u64>,
    introspect_ca: Option<String>,
    require_audience: bool,
}

const USAGE: &str = "usage: demo-mcp-server [--listen 127.0.0.1:9200] [--allowed-host HOST]...\n\
  [--require-bearer-introspect URL [--require-scope SCOPE]]\n\
  [--verify-assertion JWKS_URL --assertion-audience ORIGIN [--assertion-issuer ISSUER] [--assertion-header NAME]]\n\
  [--answer-401 CHALLENGE]\n\
  [--resource-metadata-issuer ISSUER [--metadata-max-age N]] [--require-audience] [--introspect-ca FILE]\n\
  --listen ADDR                    loopback address to bind (default 127.0.0.1:9200)\n\
  --allowed-host HOST              extra Host header value accepted besides localhost/127.0.0.1/::1\n\
  --require-bearer-introspect URL  /mcp needs a bearer token this RFC 7662 endpoint calls active\n\
  --require-scope SCOPE            ... whose scope includes SCOPE (else 403 insufficient_scope)\n\
  --verify-assertion JWKS_URL      /mcp needs an X-Warden-Jwt-Assertion signed by a key of this JWKS (else 401);\n\
                                   whoami shows its verified claims in the x-demo-verified-assertion header\n\
  --assertion-audience ORIGIN      ... whose aud is ORIGIN (this server's scheme://host:port)\n\
  --assertion-issuer ISSUER        ... and whose iss is ISSUER\n\
  --assertion-header NAME          ... in this header (default x-warden-jwt-assertion)\n\
  --answer-401 CHALLENGE           /mcp answers every request 401 with WWW-Authenticate: CHALLENGE\n\
  --resource-metadata-issuer ISSUER  (with --require-bearer-introspect) RFC 9728 metadata naming this AS;\n\
                                   401s carry WWW-Authenticate: Bearer resource_metadata=\"…\"\n\
  --metadata-max-age N             ... served with Cache-Control: max-age=N\n\
  --require-audience               (with --require-bearer-introspect) the token's aud must be http://ADDR/mcp\n\
  --introspect-ca FILE             a PEM CA trusted (besides the system's) by the introspection client";

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut allowed_hosts = Vec::new();
    let mut require_bearer_introspect = None;
    let mut require_scope = None;
    let mut verify_assertion = None;
    let mut assertion_audience = None;
    let mut assertion_issuer = None;
    let mut assertion_header = None;
    let mut answer_401 = None;
    let mut resource_metadata_issuer = None;
    let mut metadata_max_age = None;
    let mut introspect_ca = None;
    let mut require_audience = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--require-audience" => require_audience = true,
            "--resource-metadata-issuer"
            | "--metadata-max-age"
            | "--introspect-ca"
            | "--listen"
            | "--allowed-host"
            | "--require-bearer-introspect"
            | "--require-scope"
            | "--verify-assertion"
            | "--assertion-audience"
            | "--assertion-issuer"
            | "--assertion-header"
            | "--answer-401" => {
                let value = match inline.or_else(|| args.next()) {
                    Some(value) => value,
                    None => bail!("{flag} needs a value\n{USAGE}"),
                };
                match flag.as_str() {
                    "--listen" => listen = value,
                    "--allowed-host" => allowed_hosts.push(value),
                    "--require-bearer-introspect" => require_bearer_introspect = Some(value),
                    "--verify-assertion" => verify_assertion = Some(value),
                    "--assertion-audience" => assertion_audience = Some(value),
                    "--assertion-issuer" => assertion_issuer = Some(value),
                    "--assertion-header" => assertion_header = Some(value.to_ascii_lowercase()),
                    "--answer-401" => answer_401 = Some(value),
                    "--resource-metadata-issuer" => resource_metadata_issuer = Some(value),
                    "--introspect-ca" => introspect_ca = Some(value),
                    "--metadata-max-age" => {
                        metadata_max_age = Some(value.parse::<u64>().with_context(|| {
                            format!("--metadata-max-age {value:?} is not a number of seconds")
                        })?);
                    }
                    _ => require_scope = Some(value),
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an IP:port address"))?;
    if !listen.ip().is_loopback() {
        bail!("--listen must be a loopback address (the demo server is unauthenticated), got {listen}");
    }
    if require_scope.is_some() && require_bearer_introspect.is_none() {
        bail!("--require-scope needs --require-bearer-introspect\n{USAGE}");
    }
    if (resource_metadata_issuer.is_some() || require_audience)
        && require_bearer_introspect.is_none()
    {
        bail!("--resource-metadata-issuer and --require-audience need --require-bearer-introspect\n{USAGE}");
    }
    if metadata_max_age.is_some() && resource_metadata_issuer.is_none() {
        bail!("--metadata-max-age needs --resource-metadata-issuer\n{USAGE}");
    }
    if verify_assertion.is_some() != assertion_audience.is_some()
        || ((assertion_issuer.is_some() || assertion_header.is_some())
            && verify_assertion.is_none())
    {
        bail!("--verify-assertion and --assertion-audience go together (--assertion-issuer needs them)\n{USAGE}");
    }
    Ok(Some(Args {
        listen,
        allowed_hosts,
        require_bearer_introspect,
        require_scope,
        verify_assertion,
        assertion_audience,
        assertion_issuer,
        assertion_header,
        answer_401,
        resource_metadata_issuer,
        metadata_max_age,
        introspect_ca,
        require_audience,
    }))
}

fn app(
    recorder: Recorder,
    extra_hosts: Vec<String>,
    bearer: Option<BearerCheck>,
    assertion: Option<AssertionCheck>,
    answer_401_with: Option<HeaderValue>,
) -> Router {
    let mut allowed_hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    allowed_hosts.extend(extra_hosts);
    // Defaults otherwise: legacy_session_mode = true serves the handshake era with sessions and
    // 2026-07-28 requests statelessly (see the module docs).
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts);
    let mcp: StreamableHttpService<DemoServer, LocalSessionManager> = StreamableHttpService::new(
        || Ok(DemoServer::new()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mut router = Router::new()
        .nest_service("/mcp", mcp)
        .route("/healthz", get(healthz))
        .route("/split-sse", axum::routing::post(split_sse))
        .route("/json-tools", axum::routing::post(json_tools))
        .route("/silent-sse", get(silent_sse))
        .route("/_recorded", get(get_recorded).delete(delete_recorded));
    if let Some(check) = bearer {
        let check = Arc::new(check);
        if check.metadata.is_some() {
            router = router.merge(
                Router::new()
                    .route(
                        "/.well-known/oauth-protected-resource/mcp",
                        get(resource_metadata),
                    )
                    .route(
                        "/_test/authorization-server",
                        axum::routing::post(set_authorization_server),
                    )
                    .with_state(check.clone()),
            );
        }
        // Inside the recorder: rejected requests are recorded too.
        router = router.layer(middleware::from_fn_with_state(check, require_bearer));
    }
    if let Some(check) = assertion {
        // Inside the recorder too: the recorder shows the assertion as it arrived.
        router = router.layer(middleware::from_fn_with_state(
            Arc::new(check),
            require_assertion,
        ));
    }
    if let Some(challenge) = answer_401_with {
        router = router.layer(middleware::from_fn_with_state(
            Arc::new(challenge),
            answer_401,
        ));
    }
    router
        .layer(middleware::from_fn_with_state(
            recorder.clone(),
            record_requests,
        ))
        .with_state(recorder)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}");
    let bearer = match args.require_bearer_introspect {
        Some(introspect_url) => {
            let mut http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10));
            if let Some(file) = &args.introspect_ca {
                let pem = std::fs::read(file)
                    .with_context(|| format!("reading --introspect-ca {file}"))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("--introspect-ca {file} is not PEM"))?;
                http = http.tls_certs_merge(certs);
            }
            Some(BearerCheck {
                introspect_url: Mutex::new(introspect_url),
                required_scope: args.require_scope,
                http: http
                    .build()
                    .context("building the introspection HTTP client")?,
                resource: format!("http://{addr}/mcp"),
                require_audience: args.require_audience,
                metadata: args
                    .resource_metadata_issuer
                    .map(|issuer| ResourceMetadata {
                        url: format!("http://{addr}/.well-known/oauth-protected-resource/mcp"),
                        issuer: Mutex::new(issuer),
                        max_age: args.metadata_max_age,
                    }),
            })
        }
        None => None,
    };
    let assertion = match (args.verify_assertion, args.assertion_audience) {
        (Some(jwks_url), Some(audience)) => Some(AssertionCheck {
            header: args
                .assertion_header
                .unwrap_or_else(|| ASSERTION_HEADER.to_owned()),
            jwks_url,
            audience,
            issuer: args.assertion_issuer,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the JWKS HTTP client")?,
            jwks: tokio::sync::Mutex::new(None),
        }),
        _ => None,
    };
    let answer_401_with = args
        .answer_401
        .map(|c| HeaderValue::from_str(&c).context("--answer-401 is not a header value"))
        .transpose()?;
    let router = app(
        Recorder::default(),
        args.allowed_hosts,
        bearer,
        assertion,
        answer_401_with,
    );
    // Streamed answers (SSE events) go out as they are written: with Nagle's algorithm on,
    // an event written behind an unacknowledged one waits for Envoy's delayed ACK (~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    Ok(())
}

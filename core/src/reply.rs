//! Responses the filter answers itself, described as data so they are tested natively, and
//! the builders the decisions share (a leaf: it imports nothing else of the crate).

use serde_json::{json, Value};

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Short machine-readable reason for the log line.
    pub reason: &'static str,
}

pub const CORS_ALLOW_HEADERS: &str =
    "Authorization, Content-Type, Accept, MCP-Protocol-Version, Mcp-Session-Id, Last-Event-ID, Mcp-Method, Mcp-Name";
pub const CORS_EXPOSE_HEADERS: &str = "WWW-Authenticate, Mcp-Session-Id";
pub const CORS_ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";

impl LocalReply {
    pub fn json(status: u32, reason: &'static str, body: String) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
            ],
            body,
            reason,
        }
    }

    /// An OAuth-style error body (`{"error": ..., "error_description": ...}`).
    pub fn oauth_error(status: u32, reason: &'static str, error: &str, description: &str) -> Self {
        Self::json(
            status,
            reason,
            serde_json::json!({ "error": error, "error_description": description }).to_string(),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Lets a browser client on an allowed origin read the reply (and its challenge).
    pub fn with_cors(self, origin: Option<&str>) -> Self {
        match origin {
            Some(origin) => self
                .with_header("access-control-allow-origin", origin)
                .with_header("access-control-expose-headers", CORS_EXPOSE_HEADERS)
                .with_header("vary", "Origin"),
            None => self,
        }
    }
}

/// Answer to a CORS preflight from an allowed origin.
pub fn preflight(origin: &str) -> LocalReply {
    LocalReply {
        status: 204,
        headers: vec![
            ("access-control-allow-origin", origin.to_string()),
            ("access-control-allow-methods", CORS_ALLOW_METHODS.into()),
            ("access-control-allow-headers", CORS_ALLOW_HEADERS.into()),
            ("access-control-expose-headers", CORS_EXPOSE_HEADERS.into()),
            ("access-control-max-age", "600".into()),
            ("vary", "Origin".into()),
        ],
        body: String::new(),
        reason: "cors-preflight",
    }
}

/// A JSON-RPC error response body for `id`, carrying the request id to look up in the log.
pub fn jsonrpc_error(id: Option<&Value>, code: i64, message: &str, request_id: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": { "code": code, "message": message, "data": { "request-id": request_id } },
    })
}

/// The `401` with `WWW-Authenticate: <challenge>` (a route's `error="invalid_token"`
/// challenge) that sends an MCP client back through authorization (a bad TE, or a TI to
/// obtain again).
pub fn invalid_token(
    challenge: &str,
    reason: &'static str,
    description: &str,
    cors: Option<&str>,
) -> LocalReply {
    LocalReply::oauth_error(401, reason, "invalid_token", description)
        .with_header("www-authenticate", challenge.to_owned())
        .with_cors(cors)
}

/// JSON-RPC "internal error": the gateway could not get the call to the server.
pub const GATEWAY_ERROR: i64 = -32603;

/// The request being answered, for the replies' JSON-RPC error and CORS headers.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo<'a> {
    pub request_id: &'a str,
    pub cors: Option<&'a str>,
}

/// A JSON-RPC `GATEWAY_ERROR` with `status`.
pub fn gateway_error(
    status: u32,
    reason: &'static str,
    message: &str,
    to: ReplyTo<'_>,
) -> LocalReply {
    LocalReply::json(
        status,
        reason,
        jsonrpc_error(None, GATEWAY_ERROR, message, to.request_id).to_string(),
    )
    .with_cors(to.cors)
}

/// The token service did not answer usefully (or the worker has too many look-ups in flight:
/// `reason` tells them apart in the log).
pub fn token_service_unavailable(reason: &'static str, to: ReplyTo<'_>) -> LocalReply {
    gateway_error(503, reason, "the token service is unavailable", to)
        .with_header("retry-after", "5")
}

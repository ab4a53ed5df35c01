//! Responses the filter answers itself, described as data so they are tested natively.

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

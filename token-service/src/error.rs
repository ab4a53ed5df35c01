//! One error type for every handler. Clients get a safe message (OAuth JSON or a plain HTML
//! page); internal details go to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::metrics::StoreErrorKind;
use crate::store::StoreError;

#[derive(Debug)]
pub enum Error {
    /// An OAuth error answered as JSON `{error, error_description}` (RFC 6749 §5.2, RFC 7591 §3.2.2).
    OAuth {
        status: StatusCode,
        error: &'static str,
        description: String,
    },
    /// `invalid_client` (401). `basic` adds `WWW-Authenticate: Basic` (RFC 6749 §5.2).
    InvalidClient {
        description: String,
        basic: bool,
    },
    /// A bearer token (here: the initial access token) missing or wrong: `401` with
    /// `WWW-Authenticate: Bearer`, plus `error="invalid_token"` when one was presented
    /// (RFC 6750 §3.1).
    InvalidToken {
        description: String,
        presented: bool,
    },
    /// An error page for the browser; used when redirecting back would be unsafe.
    Page {
        status: StatusCode,
        message: String,
    },
    /// Refused for now (`429`, `503`) with `Retry-After`: OAuth JSON, or a page for a browser.
    RetryLater {
        status: StatusCode,
        error: &'static str,
        description: String,
        retry_after: u64,
        page: bool,
    },
    Internal(anyhow::Error),
}

impl Error {
    pub fn oauth(error: &'static str, description: impl Into<String>) -> Self {
        Error::OAuth {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::oauth("invalid_request", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::oauth("invalid_grant", description)
    }

    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::oauth("invalid_target", description)
    }

    pub fn invalid_client(description: impl Into<String>, basic: bool) -> Self {
        Error::InvalidClient {
            description: description.into(),
            basic,
        }
    }

    pub fn page(status: StatusCode, message: impl Into<String>) -> Self {
        Error::Page {
            status,
            message: message.into(),
        }
    }

    /// The error code the answer carries: the OAuth one, else `temporarily_unavailable` (a
    /// store that cannot be reached) or `server_error` (the metrics' grant result).
    pub fn grant_error_code(&self) -> &'static str {
        match self {
            Error::Internal(e) if StoreError::find(e).is_some_and(StoreError::is_unavailable) => {
                "temporarily_unavailable"
            }
            _ => self.code().unwrap_or("server_error"),
        }
    }

    /// The store error this carries, if any (`warden_store_errors_total`).
    pub fn store_error_kind(&self) -> Option<StoreErrorKind> {
        match self {
            Error::Internal(e) => store_error_kind(e),
            _ => None,
        }
    }

    /// The OAuth error code, if this is an OAuth error (for tests and logs).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Error::OAuth { error, .. } => Some(error),
            Error::InvalidClient { .. } => Some("invalid_client"),
            Error::InvalidToken { .. } => Some("invalid_token"),
            Error::RetryLater { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(e)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Error::Internal(e.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::OAuth {
                error, description, ..
            } => write!(f, "{error}: {description}"),
            Error::InvalidClient { description, .. } => write!(f, "invalid_client: {description}"),
            Error::InvalidToken { description, .. } => write!(f, "invalid_token: {description}"),
            Error::Page { message, .. } => write!(f, "{message}"),
            Error::RetryLater {
                error, description, ..
            } => write!(f, "{error}: {description}"),
            Error::Internal(e) => write!(f, "internal error: {e:#}"),
        }
    }
}

/// The kind of the store error somewhere in `e`'s chain, if there is one.
pub fn store_error_kind(e: &anyhow::Error) -> Option<StoreErrorKind> {
    StoreError::find(e).map(|s| {
        if s.is_unavailable() {
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Other
        }
    })
}

fn oauth_json(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // The metrics middleware counts it from the answer (`metrics::track`).
        let store_error = self.store_error_kind();
        let mut resp = self.answer();
        if let Some(kind) = store_error {
            resp.extensions_mut().insert(kind);
        }
        resp
    }
}

impl Error {
    fn answer(self) -> Response {
        match self {
            Error::OAuth {
                status,
                error,
                description,
            } => {
                tracing::info!(error, description = %description, "oauth error");
                oauth_json(status, error, &description)
            }
            Error::InvalidClient { description, basic } => {
                tracing::info!(description = %description, "client authentication failed");
                let mut resp = oauth_json(StatusCode::UNAUTHORIZED, "invalid_client", &description);
                if basic {
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"token\", charset=\"UTF-8\""),
                    );
                }
                resp
            }
            Error::InvalidToken {
                description,
                presented,
            } => {
                tracing::info!(description = %description, "bearer token refused");
                let mut resp = oauth_json(StatusCode::UNAUTHORIZED, "invalid_token", &description);
                let challenge = if presented {
                    "Bearer error=\"invalid_token\""
                } else {
                    "Bearer"
                };
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                resp
            }
            Error::Page { status, message } => {
                tracing::info!(status = status.as_u16(), message = %message, "error page");
                crate::html::error_page(status, &message)
            }
            Error::RetryLater {
                status,
                error,
                description,
                retry_after,
                page,
            } => {
                tracing::info!(status = status.as_u16(), error, description = %description, "refused for now");
                let mut resp = if page {
                    crate::html::error_page(status, &description)
                } else {
                    oauth_json(status, error, &description)
                };
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                resp
            }
            Error::Internal(e) if StoreError::find(&e).is_some_and(StoreError::is_unavailable) => {
                // Nothing the client did: a database that is down is a retry, not a bug.
                tracing::warn!(error = %format!("{e:#}"), "store unavailable");
                let mut resp = oauth_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the service cannot reach its storage; try again in a moment",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            Error::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                oauth_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the server could not complete the request",
                )
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

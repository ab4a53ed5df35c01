//! How every internal endpoint answers: `200` with the contract's answer type, or a refusal
//! `{"error", "error_description"}` with the contract's `ErrorCode`; never cached. A leaf the
//! router and each endpoint share.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use warden_core::internal_api::{ErrorAnswer, ErrorCode};

use crate::metrics::StoreErrorKind;

/// `200` with `body`.
pub fn answer<T: Serialize>(body: &T) -> Response {
    no_store(Json(body).into_response())
}

/// The refusal `code` names, with the status the contract gives it.
pub fn refuse(code: ErrorCode, description: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    refuse_with(status, code, description)
}

/// A refusal under another status than the code's own (an oversized body is `413`).
pub fn refuse_with(status: StatusCode, code: ErrorCode, description: &str) -> Response {
    let body = ErrorAnswer {
        error: code.as_str().to_owned(),
        error_description: description.to_owned(),
    };
    no_store((status, Json(body)).into_response())
}

/// The `500` for a failure of ours; the log says what failed, the answer does not. A store
/// error is marked for the metrics (`metrics::track`).
pub fn server_error(
    e: &dyn std::fmt::Display,
    what: &str,
    store: Option<StoreErrorKind>,
) -> Response {
    tracing::error!(error = %e, "{what} failed");
    let mut resp = refuse(ErrorCode::ServerError, "the token service failed");
    if let Some(kind) = store {
        resp.extensions_mut().insert(kind);
    }
    resp
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The request's JSON body, or the `400 invalid_request` naming what was expected. Public
/// for the fuzz targets (`fuzz/`).
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    // An object only: serde would also read a struct from an array of its values.
    warden_core::raw::object(body)
        .ok_or_else(|| Box::new(refuse(ErrorCode::InvalidRequest, expected)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use warden_core::internal_api::UpstreamTokenRequest;

    #[test]
    fn a_body_is_an_object_of_exactly_the_endpoints_fields() {
        let q: UpstreamTokenRequest = json_body(br#" {"sub": "a", "route": "demo"}"#, "x").unwrap();
        assert_eq!((q.sub.as_str(), q.route.as_str()), ("a", "demo"));
        // Found by the fuzz target `internal_api_bodies`: serde reads a struct from an array
        // of its values, so `["a", "demo"]` was taken as {"sub": "a", "route": "demo"}.
        for bad in [
            &br#"["a", "demo"]"#[..],
            br#"{"sub": "a", "route": "demo", "extra": 1}"#,
            br#"{"sub": "a", "sub": "b", "route": "demo"}"#,
            br#"{"sub": "a"}"#,
            b"",
        ] {
            let refused = json_body::<UpstreamTokenRequest>(bad, "x").err().unwrap();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}

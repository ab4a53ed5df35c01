//! The internal listener (`authorization_server.internal_listen`): what the filter asks the
//! token service, never reachable on the public issuer URL. Every request is signed with the
//! internal credential (`warden_core::internal_api`: a MAC over the call with a time and a
//! single-use nonce; the credential itself never travels, so Envoy's debug log of the
//! call-out's headers gives nothing away).
//!
//! The paths, bodies, answers and error codes are `warden_core::internal_api`'s, the ones the
//! filter calls with; one file per endpoint family:
//!
//! * `upstream.rs`: `UPSTREAM_TOKEN_PATH` (the user's upstream token) and
//!   `UPSTREAM_TOKEN_DROP_PATH` (a token the MCP server refused).
//! * `assertion.rs`: `IDENTITY_ASSERTION_PATH` (a route's identity assertion).
//! * `app.rs`: `APP_SESSION_PATH`, `APP_TOKEN_PATH`, `APP_SESSION_END_PATH` (`mcp: client`
//!   routes' app sessions).
//! * `vault_status.rs`: `VAULT_STATUS_PATH` (the encryption-key re-seal's counters).
//! * `revocations.rs`: `REVOCATIONS_PATH` (the revocation feed the filter polls).
//! * `scrape.rs`: `/metrics` for Prometheus, with `telemetry.metrics`: the one path outside
//!   the signature check (a scraper has no credential).
//! * `nonce.rs`: the replay guard; `answer.rs`: how every endpoint answers and refuses.

mod answer;
mod app;
mod assertion;
pub mod nonce;
mod revocations;
mod scrape;
mod upstream;
mod vault_status;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use warden_core::internal_api::{self as api, ErrorCode};

use crate::metrics::{Listener, METRICS_PATH};
use crate::state::AppState;

pub use answer::json_body;
pub use assertion::{assertion_claims, ASSERTION_TTL_SECONDS, ASSERTION_TYP};
pub use nonce::NonceGuard;

const BODY_LIMIT: usize = 16 * 1024;

pub fn router(state: AppState) -> Router {
    let signed = Router::new()
        .route(api::UPSTREAM_TOKEN_PATH, post(upstream::upstream_token))
        .route(
            api::UPSTREAM_TOKEN_DROP_PATH,
            post(upstream::drop_upstream_token),
        )
        .route(
            api::IDENTITY_ASSERTION_PATH,
            post(assertion::identity_assertion),
        )
        .route(api::APP_SESSION_PATH, post(app::app_session))
        .route(api::APP_TOKEN_PATH, post(app::app_token))
        .route(api::APP_SESSION_END_PATH, post(app::end_app_session))
        .route(api::VAULT_STATUS_PATH, get(vault_status::vault_status))
        .route(api::REVOCATIONS_PATH, get(revocations::revocations))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Added after the signature check's layer, so outside it.
    let router = if state.config().telemetry.metrics {
        signed.route(METRICS_PATH, get(scrape::metrics))
    } else {
        signed
    };
    router
        .layer(middleware::from_fn_with_state(
            (state.metrics().clone(), Listener::Internal),
            crate::metrics::track,
        ))
        .layer(crate::telemetry::http_layer())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Only the filter, holding the credential, gets past here: a call signed with it, within the
/// clock window, with a nonce never seen before.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return answer::refuse_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest,
            "the request body is too large",
        );
    };
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let now = s.now();
    let checked = s
        .internal_key()
        .check(presented, parts.method.as_str(), path, &body, now)
        .map_err(|e| e.reason())
        .and_then(|call| s.internal_nonces().first_use(&call.nonce, now));
    if let Err(why) = checked {
        tracing::warn!(path = %parts.uri.path(), why, "internal request refused");
        let mut resp = answer::refuse(
            ErrorCode::Unauthorized,
            "the call is not signed with the internal credential",
        );
        let challenge = format!("{} realm=\"mcp-warden internal\"", api::SCHEME);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        return resp;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

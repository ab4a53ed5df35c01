//! Discovery: the authorization server's metadata (RFC 8414), its JWKS, and health
//! (`/healthz`, `/readyz`; the decision is `health`'s).

use axum::extract::State;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::RegistrationMode;
use crate::health::{Health, Readiness};
use crate::state::AppState;

/// The process is alive: nothing else is looked at (a liveness probe must not fail because
/// the database did).
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// `200` when the service should get traffic; else `503` saying why (`health`).
pub(super) async fn readyz(State(s): State<AppState>) -> Response {
    let keys = s.keys();
    readiness_answer(s.health().readiness(s.store(), &keys, s.now()).await)
}

/// `/readyz` while the service starts (`serve`'s start-up router).
pub(super) async fn readyz_starting(State(h): State<Arc<Health>>) -> Response {
    readiness_answer(h.while_starting())
}

fn readiness_answer(r: Readiness) -> Response {
    let (status, body) = match r {
        Readiness::Ready => (StatusCode::OK, serde_json::json!({"ready": true})),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reason": reason}),
        ),
    };
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) async fn metadata(State(s): State<AppState>) -> Response {
    let c = s.config();
    let iss = &c.authorization_server.issuer;
    let mut metadata = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "registration_endpoint": format!("{iss}/register"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": crate::jws::ASSERTION_ALGS,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": c.grant_types_supported(),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": crate::jws::ASSERTION_ALGS,
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": c.scopes_supported(),
        "client_id_metadata_document_supported": c.authorization_server.client_id_metadata_documents.enabled,
    });
    // Closed registration is not advertised (RFC 8414: the endpoint is optional); whether
    // metadata documents are accepted is a switch of its own.
    if c.authorization_server.registration.mode == RegistrationMode::Closed {
        if let Some(m) = metadata.as_object_mut() {
            m.remove("registration_endpoint");
        }
    }
    Json(metadata).into_response()
}

pub(super) async fn jwks(State(s): State<AppState>) -> Response {
    let mut resp = Json(s.keys().jwks(s.now())).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

/// The gateway's client ID metadata document, its `client_id` at upstream authorization
/// servers that support CIMD; served only when a route discovers its upstream's OAuth.
pub(super) async fn warden_client(State(s): State<AppState>) -> Response {
    let c = s.config();
    if !c.uses_upstream_discovery() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let doc = crate::upstream_discovery::documents::client_document(
        &c.authorization_server.issuer,
        &crate::vault::callback_url(c),
    );
    let mut resp = Json(doc).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    resp
}

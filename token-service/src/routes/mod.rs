//! The token service's HTTP surface. A handler gathers what the request carries (cookies,
//! form, query, client address), calls into `flows`, and turns the answer into a response;
//! no OAuth decisions are made here.
//!
//! * `metadata`: discovery (RFC 8414), the JWKS, health (`/healthz`, `/readyz`).
//! * `register`: dynamic client registration.
//! * `authorize`: `/authorize`, the sign-in form, the consent form.
//! * `idp`: sign-in at the organisation's identity provider.
//! * `upstream`: the upstream provider's callback.
//! * `token`: `/token` and `/revoke`.
//! * `app`: `mcp: client` routes (app sign-in, connect, servers list, sign-out).
//! * `answer`: a browser flow's answer as a response (pages, redirects, cookies).
//! * `http`: what the handlers share (client address, cookies, parameters, CORS).

mod answer;
mod app;
mod authorize;
mod http;
mod idp;
mod metadata;
mod register;
mod token;
mod upstream;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use tower::ServiceExt;

use crate::health::Health;
use crate::state::AppState;

const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let base = http::issuer_path(&state.config().authorization_server.issuer);
    // Endpoints browser-based MCP clients call from script: CORS without credentials.
    let api = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::metadata),
        )
        .route("/.well-known/openid-configuration", get(metadata::metadata))
        .route("/.well-known/jwks.json", get(metadata::jwks))
        .route(
            crate::upstream_discovery::documents::CLIENT_DOCUMENT_PATH,
            get(metadata::warden_client),
        )
        .route("/register", post(register::register))
        .route("/token", post(token::token))
        .route("/revoke", post(token::revoke))
        .layer(middleware::from_fn(http::cors));
    // Browser navigation only: no CORS.
    let endpoints = Router::new()
        .route("/healthz", get(metadata::healthz))
        .route("/readyz", get(metadata::readyz))
        .route("/authorize", get(authorize::authorize))
        .route("/login", post(authorize::login))
        .route("/consent", post(authorize::consent))
        .route(crate::vault::CALLBACK_PATH, get(upstream::callback))
        .route(answer::IDP_START_PATH, get(idp::start))
        .route(crate::oidc::CALLBACK_PATH, get(idp::callback))
        .route(app::SIGN_IN_PATH, get(app::sign_in))
        .route(app::CONNECT_PATH, get(app::connect))
        .route(
            app::SIGNED_OUT_PATH,
            get(app::signed_out).post(app::signed_out_post),
        )
        .route(
            app::SIGN_OUT_PATH,
            get(app::sign_out).post(app::sign_out_post),
        )
        .merge(api);
    let router = if base.is_empty() {
        endpoints
    } else {
        // Issuer with a path: endpoints live under it, and RFC 8414 §3 puts the metadata at
        // the path-inserted well-known URL.
        Router::new()
            .route("/healthz", get(metadata::healthz))
            .route("/readyz", get(metadata::readyz))
            .route(
                &format!("/.well-known/oauth-authorization-server{base}"),
                get(metadata::metadata).layer(middleware::from_fn(http::cors)),
            )
            .nest(&base, endpoints)
    };
    let metrics = (state.metrics().clone(), crate::metrics::Listener::Public);
    router
        .merge(app::gateway_paths())
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .layer(crate::telemetry::http_layer())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// What the public listener serves from the moment it is bound (`serve`): `/healthz`,
/// `/readyz` (`503` saying where start-up is) and `503` with `Retry-After` for everything
/// else, until `app` is set; from then on `app`, on every connection, old or new.
pub fn starting(health: Arc<Health>, app: Arc<OnceLock<Router>>) -> Router {
    let booting = Router::new()
        .route("/healthz", get(metadata::healthz))
        .route("/readyz", get(metadata::readyz_starting))
        .fallback(not_yet)
        .with_state(health);
    switch(booting, app)
}

/// The internal listener's [`starting`]: `503` with `Retry-After` until `app` is set.
pub fn starting_internal(app: Arc<OnceLock<Router>>) -> Router {
    switch(Router::new().fallback(not_yet), app)
}

fn switch(booting: Router, app: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let router = app.get().unwrap_or(&booting).clone();
        router.oneshot(req)
    }))
}

async fn not_yet() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, "1"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "starting\n",
    )
        .into_response()
}

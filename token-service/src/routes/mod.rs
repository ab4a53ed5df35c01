//! The token service's HTTP surface. A handler gathers what the request carries (cookies,
//! form, query, client address), calls into `flows`, and turns the answer into a response;
//! no OAuth decisions are made here.
//!
//! * `metadata`: discovery (RFC 8414), the JWKS, health.
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

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

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
        .route("/register", post(register::register))
        .route("/token", post(token::token))
        .route("/revoke", post(token::revoke))
        .layer(middleware::from_fn(http::cors));
    // Browser navigation only: no CORS.
    let endpoints = Router::new()
        .route("/healthz", get(metadata::healthz))
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
            .route(
                &format!("/.well-known/oauth-authorization-server{base}"),
                get(metadata::metadata).layer(middleware::from_fn(http::cors)),
            )
            .nest(&base, endpoints)
    };
    router
        .merge(app::gateway_paths())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

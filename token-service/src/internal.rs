//! The internal listener (`authorization_server.internal_listen`): what the filter asks the
//! token service, never reachable on the public issuer URL. Every request is signed with the
//! internal credential (`warden_core::internal_api`: a MAC over the call with a time and a
//! single-use nonce; the credential itself never travels, so Envoy's debug log of the
//! call-out's headers gives nothing away).
//!
//! * `POST /internal/v1/upstream-token` `{"sub", "route"}` → `200 {"access_token",
//!   "issued_at", "expires_at", "granted_at", "after_refusal"}`, `404 no_token`, `409 upstream_refused`,
//!   `503 upstream_unavailable`.
//! * `POST /internal/v1/upstream-token/drop` `{"sub", "route", "access_token", "reason",
//!   "scope"}` → `200 {"dropped"}`.
//! * `POST /internal/v1/identity-assertion` `{"sub", "route"}` → `200 {"assertion",
//!   "issued_at", "expires_at"}`, `404 unknown_user`, `404 unknown_route`,
//!   `400 identity_headers_off` (the route does not pass identity headers).
//! * `POST /internal/v1/app-session` `{"route", "code", "nonce"}` → `200 {"session", "max_age",
//!   "return_to"}`, `400 invalid_code` (an `mcp: client` route's one-time app code).
//! * `POST /internal/v1/app-token` `{"route", "session"}` → `200 {"access_token",
//!   "expires_at"}`, `401 session_expired`, `403 access_denied`.
//! * `POST /internal/v1/app-session/end` `{"route", "session"}` → `200 {"ended", "ticket"}`
//!   (`ticket`: for `{issuer}/app/signed-out?ticket=`, ending the sign-in session too).
//! * `GET /internal/v1/vault/status` → `200` the encryption-key re-seal's counters
//!   (`vault::reseal::ResealStatus`).

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::RouteConfig;
use crate::vault::Lookup;
use crate::AppState;

const BODY_LIMIT: usize = 16 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/internal/v1/upstream-token", post(upstream_token))
        .route(
            "/internal/v1/upstream-token/drop",
            post(drop_upstream_token),
        )
        .route("/internal/v1/identity-assertion", post(identity_assertion))
        .route("/internal/v1/app-session", post(app_session))
        .route("/internal/v1/app-token", post(app_token))
        .route("/internal/v1/app-session/end", post(end_app_session))
        .route("/internal/v1/vault/status", get(vault_status))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response(),
    )
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Only the filter, holding the credential, gets past here: a call signed with it, within the
/// clock window, with a nonce never seen before.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
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
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the call is not signed with the internal credential",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("WardenMAC realm=\"mcp-warden internal\""),
        );
        return resp;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// Nonces of accepted internal calls, kept until their time has left the clock window, so a
/// call seen once (in a log, on the wire) is refused when it comes again.
pub struct NonceGuard {
    seen: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// Nonces remembered at most: far above what the filter sends (call-outs happen on cache
/// misses only); past it, calls are refused rather than remembered less.
const MAX_NONCES: usize = 200_000;

impl NonceGuard {
    pub fn new() -> Self {
        Self {
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Records `nonce`; `Err` when it was seen within the window, or no room is left.
    pub fn first_use(&self, nonce: &str, now: i64) -> Result<(), &'static str> {
        let window = warden_core::internal_api::MAX_SKEW_SECONDS;
        let Ok(mut seen) = self.seen.lock() else {
            return Err("nonce table unavailable");
        };
        if seen.len() >= MAX_NONCES {
            // A call is accepted only within the window of its time, so a nonce older than
            // twice the window can never be accepted again.
            seen.retain(|_, at| now - *at <= 2 * window);
            if seen.len() >= MAX_NONCES {
                return Err("too many internal calls in the clock window");
            }
        }
        match seen.entry(nonce.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => Err("the nonce was used before"),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                Ok(())
            }
        }
    }
}

impl Default for NonceGuard {
    fn default() -> Self {
        Self::new()
    }
}

/// The body of `upstream-token` and `identity-assertion`: whose token, for which route.
/// Public, like the other bodies and `json_body`, for the fuzz targets (`fuzz/`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub sub: String,
    pub route: String,
}

async fn upstream_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: TokenQuery = match json_body(&body, "expected {\"sub\", \"route\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    if s.vault().provider(&q.route).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "no route of that name uses upstream_oauth2",
        );
    }
    match s.vault().token(&q.sub, &q.route, s.now()).await {
        Ok(Lookup::Token(t)) => no_store(
            Json(json!({
                "access_token": t.access_token,
                "issued_at": t.issued_at,
                "expires_at": t.expires_at,
                "granted_at": t.granted_at,
                "after_refusal": t.after_refusal,
            }))
            .into_response(),
        ),
        Ok(Lookup::NoToken) => error(
            StatusCode::NOT_FOUND,
            "no_token",
            "the user has not connected an account for this server",
        ),
        Ok(Lookup::Refused) => error(
            StatusCode::CONFLICT,
            "upstream_refused",
            "the MCP server refused the token the user had just granted; check the route's upstream_oauth2 scopes",
        ),
        Ok(Lookup::Unavailable(why)) => {
            tracing::warn!(route = %q.route, reason = %why, "upstream provider unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "the upstream OAuth provider is unavailable",
            )
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "upstream token lookup failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token service failed",
            )
        }
    }
}

/// Whether values sealed with previous encryption keys remain (key rotation).
async fn vault_status(State(s): State<AppState>) -> Response {
    no_store(Json(s.vault().reseal_counters().snapshot()).into_response())
}

/// The body of `upstream-token/drop`: a TI the MCP server refused, and why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRequest {
    pub sub: String,
    pub route: String,
    pub access_token: String,
    pub reason: String,
    #[serde(default)]
    pub scope: String,
}

async fn drop_upstream_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let d: DropRequest = match json_body(
        &body,
        "expected {\"sub\", \"route\", \"access_token\", \"reason\", \"scope\"}",
    ) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let scope = match d.reason.as_str() {
        "insufficient_scope" => d.scope.as_str(),
        "invalid_token" => "",
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "reason must be invalid_token or insufficient_scope",
            )
        }
    };
    match s
        .vault()
        .refuse(&d.sub, &d.route, &d.access_token, scope, s.now())
        .await
    {
        Ok(dropped) => no_store(Json(json!({ "dropped": dropped })).into_response()),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "dropping an upstream token failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token service failed",
            )
        }
    }
}

/// How long an identity assertion lives. The filter reuses one per user and route until
/// shortly before it expires (`min(30 s, lifetime / 10)`), so a server sees a fresh one at
/// least every four and a half minutes.
pub const ASSERTION_TTL_SECONDS: i64 = 300;

/// The JOSE `typ` of identity assertions: a plain JWT, never an access token (`at+jwt`), so the
/// filter refuses one presented as a bearer.
pub const ASSERTION_TYP: &str = "JWT";

/// The claims of a route's identity assertion for `identity`, issued at `now`.
pub fn assertion_claims(
    issuer: &str,
    route: &RouteConfig,
    identity: &crate::identity::Identity,
    now: i64,
) -> serde_json::Value {
    json!({
        "iss": issuer,
        "aud": route.upstream_origin(),
        "sub": identity.sub,
        "email": identity.email,
        "name": identity.name,
        "groups": identity.groups,
        "iat": now,
        "exp": now + ASSERTION_TTL_SECONDS,
        "route": route.name,
    })
}

async fn identity_assertion(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: TokenQuery = match json_body(&body, "expected {\"sub\", \"route\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let Some(route) = s.config().route_by_name(&q.route) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "no route of that name",
        );
    };
    if !route.pass_identity_headers {
        return error(
            StatusCode::BAD_REQUEST,
            "identity_headers_off",
            "the route does not pass identity headers",
        );
    }
    let sub = q.sub.clone();
    let resolved = s
        .blocking(move |s| {
            crate::identity::resolve(s.config(), s.store().as_ref(), &sub)
                .map_err(crate::error::Error::Internal)
        })
        .await;
    let identity = match resolved {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_user",
                "the user no longer exists",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "resolving a user for an identity assertion failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token service failed",
            );
        }
    };
    let now = s.now();
    let claims = assertion_claims(
        &s.config().authorization_server.issuer,
        route,
        &identity,
        now,
    );
    match s.keys().sign_jwt(ASSERTION_TYP, &claims) {
        Ok(assertion) => no_store(
            Json(json!({
                "assertion": assertion,
                "issued_at": now,
                "expires_at": now + ASSERTION_TTL_SECONDS,
            }))
            .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "signing an identity assertion failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token service failed",
            )
        }
    }
}

/// The body of `app-session`: an app's one-time code, traded for an app session.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCodeRequest {
    pub route: String,
    pub code: String,
    /// SHA-256 (hex) of the browser's sign-in nonce cookie, as the filter read it.
    pub nonce: String,
}

/// The body of `app-token` and `app-session/end`: an app session.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSessionRequest {
    pub route: String,
    pub session: String,
}

/// The request's JSON body, or the `400 invalid_request` naming what was expected.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    // An object only: serde would also read a struct from an array of its values.
    warden_core::raw::object(body)
        .ok_or_else(|| Box::new(error(StatusCode::BAD_REQUEST, "invalid_request", expected)))
}

fn server_error(e: &crate::error::Error, what: &str) -> Response {
    tracing::error!(error = %e, "{what} failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the token service failed",
    )
}

async fn app_session(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppCodeRequest = match json_body(&body, "expected {\"route\", \"code\", \"nonce\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let opened = s
        .blocking(move |st| {
            Ok(crate::flows::app::open_session(
                st.config(),
                st.store().as_ref(),
                &q.route,
                &q.code,
                &q.nonce,
                st.now(),
            )?)
        })
        .await;
    match opened {
        Ok(Some(o)) => no_store(
            Json(json!({
                "session": o.secret,
                "max_age": o.max_age,
                "return_to": o.return_to,
            }))
            .into_response(),
        ),
        Ok(None) => error(
            StatusCode::BAD_REQUEST,
            "invalid_code",
            "the sign-in code is unknown, used, expired, or for another route",
        ),
        Err(e) => server_error(&e, "opening an app session"),
    }
}

async fn app_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppSessionRequest = match json_body(&body, "expected {\"route\", \"session\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let minted = s
        .blocking(move |st| {
            Ok(crate::flows::app::app_token(
                st.config(),
                st.keys(),
                st.store().as_ref(),
                &q.route,
                &q.session,
                st.now(),
            )?)
        })
        .await;
    match minted {
        Ok(Ok((token, expires_at))) => no_store(
            Json(json!({ "access_token": token, "expires_at": expires_at })).into_response(),
        ),
        Ok(Err(crate::flows::app::AppTokenError::SessionExpired)) => error(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "the app session has ended: sign in again",
        ),
        Ok(Err(crate::flows::app::AppTokenError::AccessDenied)) => error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the route's policy does not let this user use the app",
        ),
        Err(e) => server_error(&e, "minting an app token"),
    }
}

async fn end_app_session(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppSessionRequest = match json_body(&body, "expected {\"route\", \"session\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let ended = s
        .blocking(move |st| {
            Ok(crate::flows::app::end_session(
                st.store().as_ref(),
                &q.route,
                &q.session,
                st.now(),
            )?)
        })
        .await;
    match ended {
        // The ticket lets the browser end the sign-in session at the issuer without a second
        // question: the filter hands it out only for a same-origin sign-out `POST`.
        Ok(Some(sid)) => no_store(
            Json(json!({ "ended": true, "ticket": s.sign_out_key().ticket(&sid, s.now()) }))
                .into_response(),
        ),
        Ok(None) => no_store(Json(json!({ "ended": false, "ticket": null })).into_response()),
        Err(e) => server_error(&e, "ending an app session"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_body_is_an_object_of_exactly_the_endpoints_fields() {
        let q: TokenQuery = json_body(br#" {"sub": "a", "route": "demo"}"#, "x").unwrap();
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
            let refused = json_body::<TokenQuery>(bad, "x").err().unwrap();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}

//! `IDENTITY_ASSERTION_PATH`: a short-lived signed statement of who the user is, for a route
//! that passes identity headers to its MCP server.

use axum::extract::State;
use axum::response::Response;
use serde_json::json;
use warden_core::internal_api::{AssertionAnswer, ErrorCode, UpstreamTokenRequest};

use super::answer::{answer, json_body, refuse, server_error};
use crate::config::RouteConfig;
use crate::identity::Identity;
use crate::state::AppState;

/// How long an identity assertion lives. The filter reuses one per user and route until
/// shortly before it expires (`min(30 s, lifetime / 10)`), so a server sees a fresh one at
/// least every four and a half minutes.
pub use crate::keys::ASSERTION_TTL_SECONDS;

/// The JOSE `typ` of identity assertions: a plain JWT, never an access token (`at+jwt`), so the
/// filter refuses one presented as a bearer.
pub const ASSERTION_TYP: &str = "JWT";

/// The claims of a route's identity assertion for `identity`, issued at `now`.
pub fn assertion_claims(
    issuer: &str,
    route: &RouteConfig,
    identity: &Identity,
    now: i64,
) -> serde_json::Value {
    let mut claims = json!({
        "iss": issuer,
        "aud": route.upstream_origin(),
        "sub": identity.sub,
        "email": identity.email,
        "name": identity.name,
        "groups": identity.groups,
        "iat": now,
        "exp": now + ASSERTION_TTL_SECONDS,
        "route": route.name,
    });
    // As in the TE: the server can tell a client acting for itself from a user.
    if identity.is_service_client() {
        claims["sub_kind"] = warden_core::token::SubjectKind::Client.as_str().into();
    }
    claims
}

#[tracing::instrument(name = "identity assertion", skip_all)]
pub async fn identity_assertion(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: UpstreamTokenRequest = match json_body(&body, "expected {\"sub\", \"route\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let Some(route) = s.config().route_by_name(&q.route) else {
        return refuse(ErrorCode::UnknownRoute, "no route of that name");
    };
    if !route.pass_identity_headers {
        return refuse(
            ErrorCode::IdentityHeadersOff,
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
        Ok(None) => return refuse(ErrorCode::UnknownUser, "the user no longer exists"),
        Err(e) => {
            return server_error(
                &e,
                "resolving a user for an identity assertion",
                e.store_error_kind(),
            )
        }
    };
    let now = s.now();
    let claims = assertion_claims(
        &s.config().authorization_server.issuer,
        route,
        &identity,
        now,
    );
    match s.keys().sign_jwt(now, ASSERTION_TYP, &claims) {
        Ok(assertion) => answer(&AssertionAnswer {
            assertion,
            issued_at: now,
            expires_at: now + ASSERTION_TTL_SECONDS,
        }),
        Err(e) => server_error(
            &format!("{e:#}"),
            "signing an identity assertion",
            crate::error::store_error_kind(&e),
        ),
    }
}

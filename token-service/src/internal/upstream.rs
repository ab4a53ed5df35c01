//! `UPSTREAM_TOKEN_PATH`: the user's upstream token for a route, from the vault (refreshed
//! when due); `UPSTREAM_TOKEN_DROP_PATH`: a token the MCP server refused, dropped so the next
//! look-up refreshes or asks the user again.

use axum::extract::State;
use axum::response::Response;
use tracing::Instrument as _;
use warden_core::internal_api::{
    DropAnswer, DropRequest, ErrorCode, UpstreamTokenAnswer, UpstreamTokenRequest,
};
use warden_core::upstream::DropReason;

use super::answer::{answer, json_body, refuse, server_error};
use crate::metrics::UpstreamLookupResult;
use crate::state::AppState;
use crate::vault::Lookup;

pub async fn upstream_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: UpstreamTokenRequest = match json_body(&body, "expected {\"sub\", \"route\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    if !s.vault().has_provider(&q.route) {
        return refuse(
            ErrorCode::UnknownRoute,
            "no route of that name uses upstream_oauth2",
        );
    }
    let span = tracing::info_span!(
        "upstream token look-up",
        route = %crate::telemetry::bounded(&q.route),
        result = tracing::field::Empty,
    );
    let found = s
        .vault()
        .token(&q.sub, &q.route, s.now())
        .instrument(span.clone())
        .await;
    span.record(
        "result",
        match &found {
            Ok(Lookup::Token(_)) => "token",
            Ok(Lookup::NoToken) => "no_token",
            Ok(Lookup::Refused) => "refused",
            Ok(Lookup::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        },
    );
    if let Ok(lookup) = &found {
        s.metrics().upstream_token_lookup(match lookup {
            Lookup::Token(t) if t.refreshed => UpstreamLookupResult::Refreshed,
            Lookup::Token(_) => UpstreamLookupResult::Hit,
            Lookup::NoToken => UpstreamLookupResult::NoToken,
            Lookup::Refused => UpstreamLookupResult::Refused,
            Lookup::Unavailable(_) => UpstreamLookupResult::Unavailable,
        });
    }
    match found {
        Ok(Lookup::Token(t)) => answer(&UpstreamTokenAnswer {
            access_token: t.access_token,
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            granted_at: t.granted_at,
            after_refusal: t.after_refusal,
        }),
        Ok(Lookup::NoToken) => refuse(
            ErrorCode::NoToken,
            "the user has not connected an account for this server",
        ),
        Ok(Lookup::Refused) => refuse(
            ErrorCode::UpstreamRefused,
            "the MCP server refused the token the user had just granted; check the route's upstream_oauth2 scopes",
        ),
        Ok(Lookup::Unavailable(why)) => {
            tracing::warn!(route = %q.route, reason = %why, "upstream provider unavailable");
            refuse(
                ErrorCode::UpstreamUnavailable,
                "the upstream OAuth provider is unavailable",
            )
        }
        Err(e) => server_error(&format!("{e:#}"), "upstream token lookup", crate::error::store_error_kind(&e)),
    }
}

pub async fn drop_upstream_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let d: DropRequest = match json_body(
        &body,
        "expected {\"sub\", \"route\", \"access_token\", \"reason\", \"scope\"}",
    ) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    // The reasons as the filter names them (`warden_core::upstream::DropReason`).
    let reasons = [DropReason::InvalidToken, DropReason::InsufficientScope];
    let scope = match reasons.into_iter().find(|r| r.as_str() == d.reason) {
        Some(DropReason::InsufficientScope) => d.scope.as_str(),
        Some(DropReason::InvalidToken) => "",
        None => {
            return refuse(
                ErrorCode::InvalidRequest,
                &format!(
                    "reason must be {} or {}",
                    DropReason::InvalidToken.as_str(),
                    DropReason::InsufficientScope.as_str()
                ),
            )
        }
    };
    match s
        .vault()
        .refuse(&d.sub, &d.route, &d.access_token, scope, s.now())
        .await
    {
        Ok(dropped) => answer(&DropAnswer { dropped }),
        Err(e) => server_error(
            &format!("{e:#}"),
            "dropping an upstream token",
            crate::error::store_error_kind(&e),
        ),
    }
}

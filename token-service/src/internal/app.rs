//! `APP_SESSION_PATH`, `APP_TOKEN_PATH`, `APP_SESSION_END_PATH`: an `mcp: client` route's app
//! sessions — a one-time app code traded for a session, the user's TE for a session, and the
//! session's end (the app's sign-out).

use axum::extract::State;
use axum::response::Response;
use warden_core::internal_api::{
    AppSessionAnswer, AppSessionEndAnswer, AppSessionRequest, AppTokenAnswer, AppTokenRequest,
    ErrorCode,
};

use super::answer::{answer, json_body, refuse, server_error};
use crate::flows::app::AppTokenError;
use crate::state::AppState;

pub async fn app_session(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppSessionRequest = match json_body(&body, "expected {\"route\", \"code\", \"nonce\"}") {
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
        Ok(Some(o)) => answer(&AppSessionAnswer {
            session: o.secret,
            max_age: o.max_age,
            return_to: o.return_to,
        }),
        Ok(None) => refuse(
            ErrorCode::InvalidCode,
            "the sign-in code is unknown, used, expired, or for another route",
        ),
        Err(e) => server_error(&e, "opening an app session", e.store_error_kind()),
    }
}

pub async fn app_token(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppTokenRequest = match json_body(&body, "expected {\"route\", \"session\"}") {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let minted = s
        .blocking(move |st| {
            Ok(crate::flows::app::app_token(
                st.config(),
                &st.keys(),
                st.store().as_ref(),
                &q.route,
                &q.session,
                st.now(),
            )?)
        })
        .await;
    match minted {
        Ok(Ok((access_token, expires_at))) => answer(&AppTokenAnswer {
            access_token,
            expires_at,
        }),
        Ok(Err(AppTokenError::SessionExpired)) => refuse(
            ErrorCode::SessionExpired,
            "the app session has ended: sign in again",
        ),
        Ok(Err(AppTokenError::AccessDenied)) => refuse(
            ErrorCode::AccessDenied,
            "the route's policy does not let this user use the app",
        ),
        Err(e) => server_error(&e, "minting an app token", e.store_error_kind()),
    }
}

pub async fn end_app_session(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let q: AppTokenRequest = match json_body(&body, "expected {\"route\", \"session\"}") {
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
        Ok(Some(sid)) => answer(&AppSessionEndAnswer {
            ended: true,
            ticket: Some(s.sign_out_key().ticket(&sid, s.now())),
        }),
        Ok(None) => answer(&AppSessionEndAnswer {
            ended: false,
            ticket: None,
        }),
        Err(e) => server_error(&e, "ending an app session", e.store_error_kind()),
    }
}

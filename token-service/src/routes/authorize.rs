//! The MCP client's front channel, in the browser: `GET /authorize`, the sign-in form
//! (`POST /login`) and the consent form (`POST /consent`). The decisions are
//! `flows::sign_in`'s.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::answer::{error_as_json, prepare_upstream, respond, respond_to, run};
use super::http::{
    admit_new_flow, browser, browser_cookies, form_params, prefers_json, query_params,
    resolve_document_client, ClientAddr,
};
use crate::error::{Error, Result};
use crate::flows::browser::{Answer, Outcome, Refusal, Step};
use crate::flows::{login, sign_in};
use crate::state::AppState;

/// `GET /authorize`. Errors that may not go to the redirect URI are a page for a browser and
/// OAuth JSON for a program that asks for JSON (`prefers_json`).
pub(super) async fn authorize(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let json = prefers_json(&headers);
    if let Err(e) = admit_new_flow(&s, client).await {
        return Err(if json { error_as_json(e) } else { e });
    }
    let params = query_params(query);
    if let Err(e) = resolve_document_client(&s, params.get("client_id")).await {
        tracing::info!(reason = %e, "client metadata document refused");
        let refusal = match e.code() {
            "invalid_client" => Refusal::InvalidClient(e.to_string()),
            _ => Refusal::BadRequest(e.to_string()),
        };
        return Ok(respond_to(&s, Answer::new(Outcome::Refused(refusal)), json));
    }
    prepare_upstream(&s, &params).await;
    let cookies = browser_cookies(&s, &headers);
    let answer = s
        .blocking(move |st| Ok(sign_in::authorize(&browser(st), &params, cookies)?))
        .await?;
    Ok(respond_to(&s, answer, json))
}

#[tracing::instrument(name = "sign-in", skip_all, fields(method = "password"))]
pub(super) async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let form = form_params(&body);
    let cookies = browser_cookies(&s, &headers);
    let attempt = match s
        .blocking(move |st| Ok(sign_in::login_begin(&browser(st), &form, cookies)?))
        .await?
    {
        Step::Answer(answer) => return Ok(respond(&s, answer)),
        Step::Next(attempt) => attempt,
    };
    // The check and its bookkeeping run to the end even if the browser goes away, so a
    // reservation never outlives its attempt.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let password = attempt.password.clone();
        match s.authenticate(attempt.email.clone(), password).await {
            Ok(user) => {
                s.vault().prepare(None, s.now()).await;
                let answer = s
                    .blocking(move |st| Ok(sign_in::login_finish(&browser(st), attempt, user)?))
                    .await?;
                Ok(respond(&s, answer))
            }
            Err(e) => {
                let r = attempt.reservation;
                s.blocking(move |st| Ok(login::abandoned(st.store().as_ref(), &r)?))
                    .await?;
                Err(e)
            }
        }
    }));
    task.await
        .map_err(|e| Error::Internal(anyhow::anyhow!("sign-in task failed: {e}")))?
}

#[tracing::instrument(name = "consent", skip_all)]
pub(super) async fn consent(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    run(s, &headers, form_params(&body), sign_in::consent).await
}

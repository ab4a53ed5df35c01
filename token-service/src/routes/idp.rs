//! Sign-in at the organisation's identity provider: `GET /login/idp` sends the browser
//! there, `GET /login/callback` takes its answer. The provider is called between the two
//! steps of each `flows::idp` flow, off the blocking pool.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::answer::respond;
use super::http::{admit_new_flow, browser, browser_cookies, query_params, ClientAddr};
use crate::error::{Error, Result};
use crate::flows::browser::Step;
use crate::flows::idp;
use crate::state::AppState;

/// Both endpoints exist only with an identity provider.
fn no_identity_provider() -> Error {
    Error::page(StatusCode::NOT_FOUND, "No identity provider is configured.")
}

/// Sends the browser to the identity provider for a pending flow, with a fresh `state`,
/// `nonce` and PKCE verifier bound to this browser.
pub(super) async fn start(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let oidc = s.oidc().cloned().ok_or_else(no_identity_provider)?;
    // Each start stores a sign-in of its own, so it is a new pending record like a flow.
    admit_new_flow(&s, client).await?;
    let query = query_params(query);
    let cookies = browser_cookies(&s, &headers);
    let begin = match s
        .blocking(move |st| Ok(idp::start(&browser(st), &query, cookies)?))
        .await?
    {
        Step::Answer(answer) => return Ok(respond(&s, answer)),
        Step::Next(begin) => begin,
    };
    let url = oidc
        .authorization_url(&begin.state, &begin.nonce, &begin.code_challenge())
        .await;
    let answer = s
        .blocking(move |st| Ok(idp::started(&browser(st), begin, oidc.display_name(), url)?))
        .await?;
    Ok(respond(&s, answer))
}

/// The identity provider sends the browser back here (`{issuer}/login/callback`): check its
/// answer, record the user's claims, then continue the pending flow as after a password.
#[tracing::instrument(name = "sign-in", skip_all, fields(method = "identity provider"))]
pub(super) async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let oidc = s.oidc().cloned().ok_or_else(no_identity_provider)?;
    let query = query_params(query);
    let cookies = browser_cookies(&s, &headers);
    let provider = oidc.clone();
    let answer = match s
        .blocking(move |st| {
            Ok(idp::callback(
                &browser(st),
                &query,
                cookies,
                provider.display_name(),
            )?)
        })
        .await?
    {
        Step::Answer(answer) => return Ok(respond(&s, answer)),
        Step::Next(answer) => answer,
    };
    let user = oidc
        .sign_in(&answer.code, &answer.verifier, answer.nonce(), s.now())
        .await;
    s.metrics()
        .sign_in(crate::metrics::SignInMethod::IdentityProvider, user.is_ok());
    s.vault().prepare(None, s.now()).await;
    let answer = s
        .blocking(move |st| {
            Ok(idp::signed_in_at_provider(
                &browser(st),
                answer,
                oidc.display_name(),
                user,
            )?)
        })
        .await?;
    Ok(respond(&s, answer))
}

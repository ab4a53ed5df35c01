//! A browser flow's answer as a response: the pages (sign-in, consent, errors, in the words
//! shown to users), the redirects, and the cookies.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use url::Url;

use super::http::{
    browser, browser_cookies, endpoint, redirect, set_cookie, DEVICE_COOKIE, FLOW_COOKIE,
    SESSION_COOKIE,
};
use crate::error::{Error, Result};
use crate::flows::authorize::Params;
use crate::flows::browser::{
    Answer, Browser, ConsentPrompt, Cookies, Outcome, Refusal, SetCookie, SignInPrompt, FLOW_TTL,
    SESSION_TTL,
};
use crate::flows::login::DEVICE_TTL;
use crate::html;
use crate::oidc::IdpError;
use crate::state::AppState;

/// A pending flow's sign-in at the identity provider starts here (the sign-in page links it).
pub(super) const IDP_START_PATH: &str = "/login/idp";

/// A browser flow that needs nothing but the request's parameters and cookies.
pub(super) type BrowserFlow = fn(&Browser<'_>, &Params, Cookies) -> anyhow::Result<Answer>;

/// Runs a browser flow on the blocking pool (it reads and writes the store), and answers.
pub(super) async fn run(
    s: AppState,
    headers: &HeaderMap,
    params: Params,
    flow: BrowserFlow,
) -> Result<Response> {
    prepare_upstream(&s, &params).await;
    let cookies = browser_cookies(&s, headers);
    let answer = s
        .blocking(move |st| Ok(flow(&browser(st), &params, cookies)?))
        .await?;
    Ok(respond(&s, answer))
}

/// Before a blocking flow that may start an upstream consent: the discovered upstream OAuth
/// of the server the request names (`route=` or `resource=`) is made fresh, and any this
/// replica has not discovered yet is discovered (`Vault::prepare`).
pub(super) async fn prepare_upstream(s: &AppState, params: &Params) {
    let route = params.get("route").map(str::to_owned).or_else(|| {
        let resource = params.get("resource")?;
        Some(s.config().route_by_resource(resource)?.name.clone())
    });
    s.vault().prepare(route.as_deref(), s.now()).await;
}

/// [`respond`], except that a refusal goes as OAuth JSON to a request that prefers JSON
/// (`prefers_json`: `mcp-remote` probing `/authorize`); browsers get the page.
pub(super) fn respond_to(s: &AppState, answer: Answer, json: bool) -> Response {
    match answer.outcome {
        Outcome::Refused(r) if json => refusal_json(r).into_response(),
        outcome => respond(
            s,
            Answer {
                outcome,
                cookies: answer.cookies,
            },
        ),
    }
}

/// A refusal as the OAuth error a program reads: `400 invalid_client` for a client we do not
/// know or cannot verify, `400 invalid_request` for the rest.
pub(super) fn refusal_json(r: Refusal) -> Error {
    match r {
        Refusal::InvalidClient(description) => Error::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_client",
            description,
        },
        other => error_as_json(refusal(other)),
    }
}

/// An error meant as a page, as OAuth JSON (`invalid_request`, or the wait it asks for).
pub(super) fn error_as_json(e: Error) -> Error {
    match e {
        Error::RetryLater {
            status,
            error,
            description,
            retry_after,
            ..
        } => Error::RetryLater {
            status,
            error,
            description,
            retry_after,
            page: false,
        },
        Error::Page { status, message } => Error::OAuth {
            status,
            error: "invalid_request",
            description: message,
        },
        e => e,
    }
}

pub(super) fn respond(s: &AppState, answer: Answer) -> Response {
    let mut resp = match answer.outcome {
        Outcome::SignInPage(p) => sign_in_page(s, &p),
        Outcome::IdpStart { flow_id } => redirect(&idp_start_url(s, &flow_id)),
        Outcome::ConsentPage(p) => consent_page(s, &p),
        Outcome::IdpAuthorize(url)
        | Outcome::CodeToClient(url)
        | Outcome::ErrorToClient(url)
        | Outcome::UpstreamConnect(url)
        | Outcome::BackToApp(url) => redirect(&url),
        Outcome::Refused(r) => refusal(r).into_response(),
        Outcome::Failed(e) => Error::Internal(e).into_response(),
    };
    for cookie in answer.cookies {
        let value = match cookie {
            SetCookie::Binding(v) => set_cookie(s, FLOW_COOKIE, &v, FLOW_TTL),
            SetCookie::Session(v) => set_cookie(s, SESSION_COOKIE, &v, SESSION_TTL),
            SetCookie::Device(v) => set_cookie(s, DEVICE_COOKIE, &v, DEVICE_TTL),
        };
        if let Some(v) = value {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The page for a refusal.
pub(super) fn refusal(r: Refusal) -> Error {
    match r {
        Refusal::BadRequest(message) | Refusal::InvalidClient(message) => {
            Error::page(StatusCode::BAD_REQUEST, message)
        }
        Refusal::Expired => Error::page(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired. Return to the application and start again.",
        ),
        Refusal::OtherBrowser => Error::page(
            StatusCode::FORBIDDEN,
            "This sign-in was started in another browser, or the browser did not send its sign-in cookie. Return to the application and start again.",
        ),
        Refusal::PendingFull => Error::RetryLater {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "temporarily_unavailable",
            description: "Too many sign-ins are in progress. Wait a minute, then return to the application and start again.".into(),
            retry_after: 60,
            page: true,
        },
        Refusal::SignInForged => Error::page(
            StatusCode::FORBIDDEN,
            "The sign-in form is invalid (CSRF check failed).",
        ),
        Refusal::TooManyAttempts => Error::page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-in attempts. Wait a few minutes, then return to the application and start again.",
        ),
        Refusal::ConsentForged => Error::page(
            StatusCode::FORBIDDEN,
            "The consent form is invalid (CSRF check failed). Return to the application and start again.",
        ),
        Refusal::NoDecision => Error::page(StatusCode::BAD_REQUEST, "Choose Approve or Deny."),
        Refusal::IdpUnknown => Error::page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, was already used, or has expired (state mismatch). Return to the application and start again.",
        ),
        Refusal::IdpDeclined { provider } => Error::page(
            StatusCode::FORBIDDEN,
            format!("The sign-in was declined at {provider}. Return to the application to try again."),
        ),
        Refusal::IdpError { provider, code } => Error::page(
            StatusCode::BAD_GATEWAY,
            format!("{provider} could not sign you in ({code}). Return to the application and start again."),
        ),
        Refusal::IdpNoCode { provider } => Error::page(
            StatusCode::BAD_GATEWAY,
            format!("{provider} sent no authorization code. Return to the application and start again."),
        ),
        Refusal::IdpFailed { provider, error } => idp_failure_page(&provider, &error),
        Refusal::UnknownApp => Error::page(
            StatusCode::BAD_REQUEST,
            "This application is not known to the gateway.",
        ),
        Refusal::ForeignReturnTo => Error::page(
            StatusCode::BAD_REQUEST,
            "The page to return to does not belong to this application.",
        ),
        Refusal::IncompleteLink => Error::page(
            StatusCode::BAD_REQUEST,
            "This sign-in link is incomplete. Reload the application to sign in again.",
        ),
        Refusal::NotAnAppPage => Error::page(
            StatusCode::BAD_REQUEST,
            "redirect_url must be a page of an application behind the gateway.",
        ),
        Refusal::ReturnNotAllowed => {
            Error::page(StatusCode::BAD_REQUEST, "The page to return to is not allowed.")
        }
        Refusal::UnknownServer => Error::page(
            StatusCode::BAD_REQUEST,
            "This MCP server is not known to the gateway.",
        ),
        Refusal::AppDenied { email, app } => Error::page(
            StatusCode::FORBIDDEN,
            format!("You are signed in as {email}, but you are not allowed to use {app}. Ask your administrator for access."),
        ),
        Refusal::ServerDenied { email, server } => Error::page(
            StatusCode::FORBIDDEN,
            format!("You are signed in as {email}, but you are not allowed to use {server}."),
        ),
        Refusal::UpstreamUnavailable { server, reason } => Error::page(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{server} signs in at an authorization server the gateway cannot use right now: {reason}. Wait a moment, then try again."),
        ),
    }
}

/// The page for a sign-in the identity provider could not complete. The provider's own words
/// are logged, not shown beyond a short error code.
fn idp_failure_page(name: &str, e: &IdpError) -> Error {
    match e {
        IdpError::Unavailable(_) => Error::page(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name} cannot be reached right now. Wait a moment, then return to the application and start again."),
        ),
        IdpError::Refused(_) => Error::page(
            StatusCode::BAD_GATEWAY,
            format!("{name} did not complete the sign-in. Return to the application and start again."),
        ),
        IdpError::Invalid(why) => Error::page(
            StatusCode::FORBIDDEN,
            format!("The answer from {name} failed a security check: {why}. Return to the application and start again."),
        ),
        IdpError::Claims(why) => Error::page(
            StatusCode::FORBIDDEN,
            format!("You cannot sign in: {why}."),
        ),
    }
}

fn redirect_host(uri: &str) -> String {
    Url::parse(uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The sign-in page: the password form, and the identity provider's button when there is one.
fn sign_in_page(s: &AppState, p: &SignInPrompt) -> Response {
    let idp_href = idp_start_url(s, &p.flow_id);
    let (status, error) = if p.wrong_password {
        (
            StatusCode::UNAUTHORIZED,
            Some("Incorrect email or password."),
        )
    } else {
        (StatusCode::OK, None)
    };
    html::login_form(
        status,
        &html::LoginForm {
            action: &endpoint(s, "/login"),
            flow_id: &p.flow_id,
            csrf: &p.csrf,
            client_name: &p.client_name,
            redirect_host: &redirect_host(&p.redirect_uri),
            email: &p.email,
            error,
            idp: s.oidc().map(|o| (o.display_name(), idp_href.as_str())),
            sign_out: &endpoint(s, "/sign-out"),
        },
    )
}

/// The consent page for a flow waiting on the user's decision.
fn consent_page(s: &AppState, p: &ConsentPrompt) -> Response {
    html::consent_form(
        StatusCode::OK,
        &html::ConsentForm {
            action: &endpoint(s, "/consent"),
            flow_id: &p.flow_id,
            csrf: &p.csrf,
            client_name: &p.client_name,
            client_id: &p.client_id,
            verified: p.verified,
            document_host: p.document_host.as_deref(),
            redirect_host: &redirect_host(&p.redirect_uri),
            resource: &p.resource,
            scopes: &p.scopes,
            email: &p.email,
            upstream: p.upstream.as_deref(),
            sign_out: &endpoint(s, "/sign-out"),
        },
    )
}

/// Where a flow's sign-in at the identity provider starts (the flow id is bound to the
/// browser's cookie, so the link is useless elsewhere).
fn idp_start_url(s: &AppState, flow_id: &str) -> String {
    format!(
        "{}{IDP_START_PATH}?flow={flow_id}",
        s.config().authorization_server.issuer,
    )
}

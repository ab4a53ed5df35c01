//! `mcp: client` routes, browser side and the app's API (README, "MCP-enabled applications"):
//!
//! * `GET {issuer}/app/sign-in?route=&return_to=`: the filter sends a browser without an app
//!   session here; after sign-in (or at once with a session) the route's policy is checked
//!   and a one-time app code goes back to the filter's callback on the app's origin.
//! * `GET {issuer}/mcp/connect?route=&redirect_url=`: connects the user's upstream account
//!   for a server, then back to the app.
//! * On every host the gateway fronts (Envoy routes them here): `GET /.warden/mcp/routes`,
//!   `POST /.warden/mcp/disconnect` and `POST /.warden/mcp/refresh` (bearer TE),
//!   `GET /.warden/mcp/connect` (redirects to the issuer's), and the same under
//!   `/.pomerium/mcp/`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use url::Url;

use super::answer::run;
use super::http::{
    admit_new_flow, cookie_value, cors, issuer_path, no_store, query_params, redirect, set_cookie,
    with_cookie, ClientAddr, SESSION_COOKIE,
};
use crate::error::{Error, Result};
use crate::flows::app as flow;
use crate::flows::app_sign_in::{self, SignOut};
use crate::flows::authorize::Params;
use crate::flows::sign_out;
use crate::html;
use crate::state::AppState;
use crate::vault::{Forced, TokenState};

pub(super) const SIGN_IN_PATH: &str = "/app/sign-in";
pub(super) const CONNECT_PATH: &str = "/mcp/connect";
/// Where the filter sends the browser after an app's sign-out.
pub(super) const SIGNED_OUT_PATH: &str = "/app/signed-out";
/// The issuer's own sign-out: ends everything the user holds.
pub(super) const SIGN_OUT_PATH: &str = "/sign-out";

/// The paths served on every host (no issuer path in front).
pub(super) fn gateway_paths() -> Router<AppState> {
    let mut r = Router::new();
    for base in ["/.warden/mcp", "/.pomerium/mcp"] {
        r = r
            .route(&format!("{base}/routes"), get(list_servers))
            .route(&format!("{base}/disconnect"), post(disconnect))
            .route(&format!("{base}/refresh"), post(refresh))
            .route(&format!("{base}/connect"), get(connect_elsewhere));
    }
    // Called from the app's backend or its pages' scripts with a bearer TE: no cookies.
    r.layer(middleware::from_fn(cors))
}

/// `GET /app/sign-in?route=&return_to=&nonce=` (`flows::app_sign_in::sign_in`).
pub(super) async fn sign_in(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    admit_new_flow(&s, client).await?;
    run(s, &headers, query_params(query), app_sign_in::sign_in).await
}

/// `GET /mcp/connect?route=&redirect_url=` (`flows::app_sign_in::connect`).
pub(super) async fn connect(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    admit_new_flow(&s, client).await?;
    run(s, &headers, query_params(query), app_sign_in::connect).await
}

/// `/.warden/mcp/connect` on any host: the issuer's connect, same query. Without `route`
/// (the reference's form, on the MCP server's own host) the server is the one route on the
/// request's host, when there is exactly one.
async fn connect_elsewhere(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let config = s.config();
    let issuer = &config.authorization_server.issuer;
    let mut query = query.unwrap_or_default();
    let has_route = url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "route");
    if !has_route {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let mut on_host = config.server_routes().filter(|r| same_host(&r.from, host));
        if let (Some(only), None) = (on_host.next(), on_host.next()) {
            let route = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("route", &only.name)
                .finish();
            query = if query.is_empty() {
                route
            } else {
                format!("{route}&{query}")
            };
        }
    }
    redirect(&format!("{issuer}{CONNECT_PATH}?{query}"))
}

/// Whether a `Host` header names the authority of `from` (the scheme's default port may be
/// left out).
fn same_host(from: &str, host: &str) -> bool {
    let (Ok(from), Ok(asked)) = (
        Url::parse(from),
        Url::parse(&format!(
            "{}://{host}",
            from.split("://").next().unwrap_or("http")
        )),
    ) else {
        return false;
    };
    !host.is_empty()
        && asked.path() == "/"
        && from.host_str().map(str::to_ascii_lowercase)
            == asked.host_str().map(str::to_ascii_lowercase)
        && from.port_or_known_default() == asked.port_or_known_default()
}

/// The caller's TE (exactly one `Authorization: Bearer`), verified with our own key.
fn bearer(s: &AppState, headers: &HeaderMap) -> Result<warden_core::token::Identity> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Error::InvalidToken {
            description: "a bearer token is required".into(),
            presented: false,
        });
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let invalid = || Error::InvalidToken {
        description: "the bearer token is invalid or expired".into(),
        presented: true,
    };
    let token = token.ok_or_else(invalid)?;
    flow::verify_te(s.config(), &s.keys(), token, s.now()).ok_or_else(invalid)
}

async fn list_servers(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let te = bearer(&s, &headers)?;
    // Discovered servers name the authorization server they were discovered at.
    s.vault().prepare(None, s.now()).await;
    let body = s
        .blocking(move |st| {
            let config = st.config();
            let issuer = &config.authorization_server.issuer;
            let now = st.now();
            let mut servers = Vec::new();
            for r in flow::usable_servers(config, &te.claims) {
                let upstream = r.has_upstream_oauth();
                let state = if upstream {
                    Some(st.vault().token_state(&te.claims.sub, &r.name, now)?)
                } else {
                    None
                };
                let connected = state.as_ref().is_none_or(|s| s.connected);
                let connect_url = upstream.then(|| {
                    let query = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("route", &r.name)
                        .finish();
                    format!("{issuer}{CONNECT_PATH}?{query}")
                });
                let mut server = json!({
                    "name": r.name,
                    "description": r.description.clone().unwrap_or_default(),
                    "url": r.resource(),
                    "connected": connected,
                    "connect_url": connect_url,
                });
                if let Some(state) = state {
                    add_token_state(&mut server, state);
                }
                servers.push(server);
            }
            Ok(json!({ "servers": servers }))
        })
        .await?;
    Ok(no_store(Json(body).into_response()))
}

/// The upstream token's state in a listing entry (a server with upstream OAuth):
/// `token_expires_at` (unix seconds, `null` without a token or a lifetime),
/// `refresh_token_available`, and `authorization_server`: a discovered server's issuer, or
/// the origin of a configured provider's `token_url` (`Vault::token_state`).
fn add_token_state(server: &mut serde_json::Value, state: TokenState) {
    server["token_expires_at"] = json!(state.expires_at);
    server["refresh_token_available"] = json!(state.refresh_token_available);
    server["authorization_server"] = json!(state.authorization_server);
}

/// The server a `disconnect` or `refresh` body names: JSON `{"url"}` or form `url=`.
fn named_server(
    s: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<crate::config::RouteConfig> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let url = if json_body {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Disconnect {
            url: String,
        }
        serde_json::from_slice::<Disconnect>(body)
            .map(|d| d.url)
            .map_err(|_| Error::invalid_request("expected {\"url\": <the server's url>}"))?
    } else {
        let params = Params::new(url::form_urlencoded::parse(body).into_owned().collect());
        params
            .get("url")
            .map(str::to_owned)
            .ok_or_else(|| Error::invalid_request("the form needs url=<the server's url>"))?
    };
    let Some(route) = s.config().route_by_resource(&url) else {
        return Err(Error::OAuth {
            status: StatusCode::NOT_FOUND,
            error: "unknown_server",
            description: "no MCP server has this url".into(),
        });
    };
    Ok(route.clone())
}

async fn disconnect(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let te = bearer(&s, &headers)?;
    let route = named_server(&s, &headers, &body)?;
    let disconnected = if route.has_upstream_oauth() {
        s.vault().disconnect(&te.claims.sub, &route.name).await?
    } else {
        false
    };
    Ok(no_store(
        Json(json!({ "disconnected": disconnected })).into_response(),
    ))
}

/// `POST /.warden/mcp/refresh {"url"}`: refreshes the user's upstream token for that server
/// now (`Vault::force_refresh`: once per grant) and answers the listing's entry for it.
async fn refresh(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let te = bearer(&s, &headers)?;
    let route = named_server(&s, &headers, &body)?;
    let conflict = |error: &'static str, description: &str| Error::OAuth {
        status: StatusCode::CONFLICT,
        error,
        description: description.to_owned(),
    };
    if !route.has_upstream_oauth() {
        return Err(conflict(
            "no_upstream_oauth",
            "this server has no upstream OAuth: there is no token to refresh",
        ));
    }
    let outcome = s
        .vault()
        .force_refresh(&te.claims.sub, &route.name, s.now())
        .await?;
    let (state, refreshed) = match outcome {
        Forced::Refreshed(state) => (state, true),
        Forced::Fresh(state) => (state, false),
        Forced::NotConnected => return Err(conflict(
            "not_connected",
            "the gateway holds no token for this server: connect it (the listing's connect_url)",
        )),
        Forced::NoRefreshToken => {
            return Err(conflict(
                "no_refresh_token",
                "the provider issued no refresh token: connect again to renew the token",
            ))
        }
        Forced::Refused(why) => {
            return Err(conflict(
                "refresh_refused",
                &format!(
                    "the provider refused the refresh ({}); the token was dropped: connect again",
                    bounded(&why)
                ),
            ))
        }
        Forced::Unavailable(why) => {
            return Err(Error::OAuth {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: format!(
                    "the upstream OAuth provider is unavailable ({}); the token is kept",
                    bounded(&why)
                ),
            })
        }
    };
    let mut server = json!({
        "name": route.name,
        "url": route.resource(),
        "connected": state.connected,
        "refreshed": refreshed,
    });
    add_token_state(&mut server, state);
    Ok(no_store(Json(server).into_response()))
}

/// A provider's reason, cut to 200 characters.
fn bounded(why: &str) -> String {
    why.chars().take(200).collect()
}

/// After an app's sign-out (`flows::app_sign_in::signed_out`): with the filter's ticket
/// the sign-in session ends; without, the browser is only asked, with a form
/// (`signed_out_post`).
pub(super) async fn signed_out(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let ticket = query
        .as_deref()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ticket"))
        .map(|(_, v)| v.into_owned());
    let session = cookie_value(&s, &headers, SESSION_COOKIE);
    let out = s
        .blocking(move |st| {
            Ok(app_sign_in::signed_out(
                st.store().as_ref(),
                st.sign_out_key(),
                ticket.as_deref(),
                session,
                st.now(),
                st.config().revocation_expires_at(st.now()),
            )?)
        })
        .await?;
    Ok(sign_out_page(&s, out))
}

#[derive(serde::Deserialize)]
pub(super) struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// The issuer's sign-out form (`flows::app_sign_in::sign_out_confirmed`). No other site can
/// show the CSRF token, and none can send the cookie cross-site with a `POST` anyway.
pub(super) async fn signed_out_post(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignOutForm>,
) -> Result<Response> {
    let out = confirmed_sign_out(&s, &headers, form, app_sign_in::sign_out_confirmed).await?;
    Ok(sign_out_page(&s, out))
}

/// `GET {issuer}/sign-out`: the issuer's sign-out page (`flows::sign_out::page`).
pub(super) async fn sign_out(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let session = cookie_value(&s, &headers, SESSION_COOKIE);
    let out = s
        .blocking(move |st| {
            Ok(sign_out::page(
                st.store().as_ref(),
                st.sign_out_key(),
                session,
                st.now(),
            )?)
        })
        .await?;
    Ok(issuer_sign_out_page(&s, out))
}

/// `POST {issuer}/sign-out` from that page (`flows::sign_out::confirmed`): the user's every
/// session, app session and grant ends.
pub(super) async fn sign_out_post(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignOutForm>,
) -> Result<Response> {
    let out = confirmed_sign_out(&s, &headers, form, sign_out::confirmed).await?;
    Ok(issuer_sign_out_page(&s, out))
}

/// The flow a sign-out form's `POST` runs: its CSRF token, session cookie and origin.
type ConfirmedFlow = fn(
    &dyn crate::store::Store,
    &crate::flows::app::SignOutKey,
    &str,
    Option<String>,
    bool,
    i64,
    i64,
) -> anyhow::Result<SignOut>;

/// Runs `flow` on a sign-out form's `POST` (the two forms differ in what they end).
async fn confirmed_sign_out(
    s: &AppState,
    headers: &HeaderMap,
    form: SignOutForm,
    flow: ConfirmedFlow,
) -> Result<SignOut> {
    let same_origin = same_origin(s, headers);
    let session = cookie_value(s, headers, SESSION_COOKIE);
    s.blocking(move |st| {
        Ok(flow(
            st.store().as_ref(),
            st.sign_out_key(),
            &form.csrf,
            session,
            same_origin,
            st.now(),
            st.config().revocation_expires_at(st.now()),
        )?)
    })
    .await
}

/// Whether a form came from the issuer's own origin (or says nothing: same-origin
/// navigation without `Origin`, which browsers send on cross-site `POST`s).
fn same_origin(s: &AppState, headers: &HeaderMap) -> bool {
    let issuer_origin = {
        let issuer = &s.config().authorization_server.issuer;
        issuer[..issuer.len() - issuer_path(issuer).len()].to_owned()
    };
    headers
        .get(header::ORIGIN)
        .is_none_or(|o| o.as_bytes() == issuer_origin.as_bytes())
}

fn issuer_sign_out_page(s: &AppState, out: SignOut) -> Response {
    let action = format!(
        "{}{SIGN_OUT_PATH}",
        issuer_path(&s.config().authorization_server.issuer)
    );
    match out {
        SignOut::Confirm { csrf } => html::sign_out_everywhere_form(&action, &csrf),
        SignOut::SignedOut => with_cookie(
            html::info_page(
                StatusCode::OK,
                "Signed out",
                "You are signed out of the MCP gateway everywhere: every application and MCP client you signed in to must sign in again.",
            ),
            set_cookie(s, SESSION_COOKIE, "", 0),
        ),
        other => sign_out_page(s, other),
    }
}

fn sign_out_page(s: &AppState, out: SignOut) -> Response {
    let signed_out = || {
        html::info_page(
            StatusCode::OK,
            "Signed out",
            "You are signed out. Close this window, or return to the application to sign in again.",
        )
    };
    match out {
        // The browser forgets the session cookie.
        SignOut::SignedOut => with_cookie(signed_out(), set_cookie(s, SESSION_COOKIE, "", 0)),
        SignOut::Confirm { csrf } => html::sign_out_form(
            &format!(
                "{}{SIGNED_OUT_PATH}",
                issuer_path(&s.config().authorization_server.issuer)
            ),
            &csrf,
        ),
        SignOut::NotSignedIn => signed_out(),
        SignOut::NotConfirmed => html::info_page(
            StatusCode::FORBIDDEN,
            "Not signed out",
            "This sign-out did not come from this sign-out page. Open it again and use its button.",
        ),
    }
}

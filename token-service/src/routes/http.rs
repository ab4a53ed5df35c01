//! What the handlers share: the client address, the browser's cookies, query and form
//! parameters, redirects, CORS and cache headers. A leaf, so handler files never import each
//! other through `routes/mod.rs`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::Url;
use warden_core::internal_api::HOST_PREFIX;

use crate::client_address::TrustedProxies;
use crate::client_documents::{is_document_url, DocumentError};
use crate::error::{Error, Result};
use crate::flows::authorize::Params;
use crate::flows::browser::{Browser, Cookies};
use crate::ratelimit::ClientKey;
use crate::state::{AppState, Limit};

/// The sign-in session cookie (base name; `__Host-` is prefixed for an https issuer).
pub(super) const SESSION_COOKIE: &str = "warden_session";
/// The browser-binding cookie pending flows are tied to (login CSRF protection).
pub(super) const FLOW_COOKIE: &str = "warden_flow";
/// Marks a browser that signed in to an account before (`flows::login`).
pub(super) const DEVICE_COOKIE: &str = "warden_device";

/// Answers CORS preflights and marks responses readable from any origin. No credentials are
/// ever allowed cross-origin, so cookies never ride along.
pub(super) async fn cors(req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, MCP-Protocol-Version"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}

/// The issuer's path without a trailing slash ("" for a bare origin).
pub(super) fn issuer_path(issuer: &str) -> String {
    Url::parse(issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// One of our endpoints, as a path on the issuer's origin.
pub(super) fn endpoint(s: &AppState, path: &str) -> String {
    format!(
        "{}{path}",
        issuer_path(&s.config().authorization_server.issuer)
    )
}

pub(super) fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub(super) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = StatusCode::FOUND.into_response();
            resp.headers_mut().insert(header::LOCATION, v);
            crate::html::secure_headers(&mut resp);
            resp
        }
        Err(_) => Error::page(StatusCode::BAD_REQUEST, "invalid redirect").into_response(),
    }
}

/// The client a request's per-address limits count it against (README, "Client addresses
/// behind proxies"): the TCP peer, or, when the peer is a trusted proxy, the client it
/// forwards for. Requests without a peer address (the router driven in-process) share one.
pub(super) struct ClientAddr(pub(super) ClientKey);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let trusted = TrustedProxies(&s.config().authorization_server.trusted_proxies);
        let forwarded_for = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes);
        Ok(ClientAddr(ClientKey::of(
            peer.map(|p| trusted.client_address(p, forwarded_for)),
        )))
    }
}

/// A request that may start a sign-in (leave a pending record behind) draws one from its
/// client's budget (`pending_flows.rate_limit_per_minute`); spent: `429` with a page.
pub(super) async fn admit_new_flow(s: &AppState, client: ClientKey) -> Result<()> {
    s.admit(Limit::NewFlows, client)
        .await?
        .map_err(|retry_after| {
            tracing::warn!(?client, "sign-in refused: rate limit for this address");
            Error::RetryLater {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "temporarily_unavailable",
                description: "Too many sign-ins were started from your network. Wait a minute, then return to the application and start again.".into(),
                retry_after,
                page: true,
            }
        })
}

/// A request's query parameters (repeats detected).
pub(super) fn query_params(query: Option<String>) -> Params {
    Params::new(
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
    )
}

/// A form body's fields (repeats detected).
pub(super) fn form_params(body: &[u8]) -> Params {
    Params::new(url::form_urlencoded::parse(body).into_owned().collect())
}

/// What the browser flows see of the service, now.
pub(super) fn browser(s: &AppState) -> Browser<'_> {
    Browser {
        config: s.config(),
        store: s.store().as_ref(),
        vault: s.vault().as_ref(),
        documents: s.client_documents(),
        identity_provider: s.oidc().is_some(),
        now: s.now(),
        pending: s.pending_limit(),
    }
}

fn https_issuer(s: &AppState) -> bool {
    s.config()
        .authorization_server
        .issuer
        .starts_with("https://")
}

fn cookie_name(s: &AppState, base: &str) -> String {
    // `__Host-` pins the cookie to this origin; browsers accept it only with `Secure`.
    if https_issuer(s) {
        format!("{HOST_PREFIX}{base}")
    } else {
        base.to_owned()
    }
}

pub(super) fn cookie_value(s: &AppState, headers: &HeaderMap, base: &str) -> Option<String> {
    let name = cookie_name(s, base);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

pub(super) fn set_cookie(
    s: &AppState,
    base: &str,
    value: &str,
    max_age: i64,
) -> Option<HeaderValue> {
    let secure = if https_issuer(s) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(s, base)
    ))
    .ok()
}

pub(super) fn with_cookie(mut resp: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The cookies of the browser driving a flow.
pub(super) fn browser_cookies(s: &AppState, headers: &HeaderMap) -> Cookies {
    Cookies {
        session: cookie_value(s, headers, SESSION_COOKIE),
        binding: cookie_value(s, headers, FLOW_COOKIE),
        device: cookie_value(s, headers, DEVICE_COOKIE),
    }
}

/// Whether a request prefers a JSON answer to an HTML page: `Accept` ranks `application/json`
/// above `text/html`, by quality, then by how specifically it names each (so `application/json,
/// */*` is JSON). No `Accept`, or a tie, is a browser: the page. `mcp-remote` probes
/// `/authorize` this way before opening a browser.
pub(super) fn prefers_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return false;
    }
    let (json, json_specificity) = quality(&accept, "application", "json");
    let (html, html_specificity) = quality(&accept, "text", "html");
    json > html || (json == html && json > 0.0 && json_specificity > html_specificity)
}

/// The quality `accept` gives `kind/sub` and how specific the range that gave it is: the
/// most specific range that matches (RFC 9110 §12.5.1); `(0, 0)` when none does.
fn quality(accept: &str, kind: &str, sub: &str) -> (f32, u8) {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((k, s)) = media.split_once('/') else {
            continue;
        };
        let specificity = match (k, s) {
            (k, s) if k == kind && s == sub => 2,
            (k, "*") if k == kind => 1,
            ("*", "*") => 0,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
            .next()
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(sp, _)| specificity > sp) {
            best = Some((specificity, q));
        }
    }
    best.map_or((0.0, 0), |(sp, q)| (q, sp))
}

/// Fetches (or finds cached) the metadata document of `client_id` when it names one and the
/// server accepts them, before a blocking flow looks the client up: the failure's reason
/// reaches the answer, and the flow reads the cache.
pub(super) async fn resolve_document_client(
    s: &AppState,
    client_id: Option<&str>,
) -> std::result::Result<(), DocumentError> {
    let Some(id) = client_id else {
        return Ok(());
    };
    let documents = s.client_documents();
    if !documents.enabled() || !is_document_url(id) || s.config().client(id).is_some() {
        return Ok(());
    }
    documents.resolve(id, s.now()).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            v.parse().unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn json_is_preferred_only_when_ranked_above_html() {
        assert!(prefers_json(&accept("application/json")));
        assert!(prefers_json(&accept("application/json, text/plain, */*")));
        assert!(prefers_json(&accept("text/html;q=0.5, application/json")));
        assert!(!prefers_json(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!prefers_json(&accept("*/*")));
        assert!(!prefers_json(&HeaderMap::new()));
        assert!(!prefers_json(&accept("application/json;q=0, text/html")));
    }
}

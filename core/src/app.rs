//! `kind: client` routes (the reference's `mcp: client`): a web app whose browser users sign in
//! through the token service and carry an app session cookie; the filter swaps the cookie for
//! the user's TE on every request to the app. This module decides, without I/O: the cookie's
//! name, finding it among the `Cookie` headers (and removing it before the app sees them), the
//! sign-in redirect, `Set-Cookie`, the callback, and what the internal API's answers mean.
//!
//! A session secret or a TE never appears in a reply body, a log line or a `Debug` output.

use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::cache::{refresh_due, Renewable, RouteUserCache};
use crate::config::{CompiledConfig, Route};
use crate::internal_api::{
    AppSessionAnswer, AppSessionEndAnswer, AppSessionRequest, AppTokenAnswer, AppTokenRequest,
    ErrorAnswer, ErrorCode,
};
use crate::keys::KeySet;
use crate::policy::{McpCall, Names, PolicyInput};
use crate::reply::LocalReply;
use crate::token::{verify, Identity, TokenRules};
use crate::upstream::MAX_TOKEN_BYTES;

/// Where the token service sends the browser back with a one-time code (any client route's
/// host, whatever its path prefix).
pub use crate::internal_api::APP_CALLBACK_PATH as CALLBACK_PATH;
/// Appended to a client route's path prefix: ends the app session.
pub const SIGN_OUT_SUFFIX: &str = "/.warden/sign-out";
/// The internal API's app paths, and the cookie names (the contract, `internal_api`).
pub use crate::internal_api::{
    app_cookie_name as cookie_name, APP_COOKIE_PREFIX as COOKIE_PREFIX,
    APP_SESSION_END_PATH as END_PATH, APP_SESSION_PATH as SESSION_PATH,
    APP_TOKEN_PATH as TOKEN_PATH, HOST_PREFIX,
};
/// `Max-Age` is clamped to this (the token service's sessions live 12 h at most).
pub const MAX_COOKIE_AGE_SECONDS: i64 = 24 * 3600;
/// A session secret is base64url of this many characters at least / at most.
const MIN_SESSION_LEN: usize = 16;
const MAX_SESSION_LEN: usize = 128;
/// Longest `code` / `state` the callback accepts.
const MAX_PARAM_LEN: usize = 512;

/// The paths Envoy routes to the token service on every host (server listing, connect,
/// disconnect): the filter leaves them alone. Exactly Envoy's prefixes (`/.warden/mcp/`, with
/// the slash): the bare `/.warden/mcp` goes to whatever route serves the host's root, and
/// must be checked like any request there.
pub fn is_token_service_path(path: &str) -> bool {
    ["/.warden/mcp/", "/.pomerium/mcp/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The per-worker cache key of a session: SHA-256 of the cookie value, hex (the secret itself
/// is never kept as a key).
pub fn session_key(session: &str) -> String {
    Sha256::digest(session.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A session secret as the cookie carried it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Session(String);

impl Session {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session([redacted])")
    }
}

fn valid_session(value: &[u8]) -> bool {
    (MIN_SESSION_LEN..=MAX_SESSION_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// What the `Cookie` headers say about our cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieLookup {
    Missing,
    Found(Session),
    /// Several different values under our name (a cookie planted from a sibling domain, say):
    /// none of them can be trusted to be the one we set.
    Conflict,
}

/// The `name=value` pairs of all `Cookie` headers, trimmed (RFC 6265 §5.4 serialisation, read
/// leniently: any whitespace around `;` and `=`).
fn pairs<'a>(headers: &'a [&'a [u8]]) -> impl Iterator<Item = (&'a [u8], &'a [u8], &'a [u8])> {
    headers
        .iter()
        .flat_map(|h| h.split(|b| *b == b';'))
        .map(trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(i) => (
                trim(pair.get(..i).unwrap_or_default()),
                trim(pair.get(i + 1..).unwrap_or_default()),
                pair,
            ),
            None => (pair, &[][..], pair),
        })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Finds our cookie in every `Cookie` header. A quoted value (`"..."`) is unquoted; a value
/// that is not a session's syntax is not ours; the same value twice is one cookie.
pub fn find_cookie(headers: &[&[u8]], name: &str) -> CookieLookup {
    let mut found: Option<&[u8]> = None;
    for (n, value, _) in pairs(headers) {
        if n != name.as_bytes() {
            continue;
        }
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        if !valid_session(value) {
            continue;
        }
        match found {
            Some(seen) if seen != value => return CookieLookup::Conflict,
            _ => found = Some(value),
        }
    }
    match found.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(v) => CookieLookup::Found(Session(v.to_string())),
        None => CookieLookup::Missing,
    }
}

/// Whether a cookie name is one the gateway sets: `warden_app_` + 8 lower-case hex (an app
/// session), optionally `_n` (its sign-in nonce), optionally `__Host-` in front.
pub fn is_gateway_cookie(name: &[u8]) -> bool {
    let name = name.strip_prefix(HOST_PREFIX.as_bytes()).unwrap_or(name);
    let Some(rest) = name.strip_prefix(COOKIE_PREFIX.as_bytes()) else {
        return false;
    };
    let rest = rest.strip_suffix(b"_n").unwrap_or(rest);
    rest.len() == 8
        && rest
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The `Cookie` header an upstream gets: every pair but the gateway's own (every client
/// route's session and sign-in nonce: with `Path=/`, a browser sends them to every app and
/// server on the host), in order. `None`: nothing to remove, leave the header as it is;
/// `Some(None)`: nothing is left (the header is removed).
pub fn strip_cookie(headers: &[&[u8]]) -> Option<Option<Vec<u8>>> {
    if !pairs(headers).any(|(n, _, _)| is_gateway_cookie(n)) {
        return None;
    }
    let mut out: Vec<u8> = Vec::new();
    for (n, _, pair) in pairs(headers) {
        if is_gateway_cookie(n) {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    Some((!out.is_empty()).then_some(out))
}

/// RFC 3986 percent-encoding of everything but unreserved characters (for query values).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` and `+` (form encoding) in a query value; `None` for bad escapes or bytes
/// that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The sign-in page for a client route, coming back to `return_to`; `nonce` is the SHA-256
/// (hex) of the browser's sign-in nonce cookie, which the callback must present again.
pub fn sign_in_url(issuer: &str, route: &Route, return_to: &str, nonce: &str) -> String {
    format!(
        "{}/app/sign-in?route={}&return_to={}&nonce={}",
        issuer.trim_end_matches('/'),
        percent_encode(&route.name),
        percent_encode(return_to),
        percent_encode(nonce)
    )
}

/// The cookie binding a sign-in to the browser that started it (login CSRF: without it, a
/// callback URL carrying someone else's code would sign this browser in as them).
pub fn nonce_cookie_name(route: &Route) -> String {
    format!("{}_n", route.cookie_name)
}

/// How long a sign-in may take before its nonce cookie is gone.
pub const NONCE_COOKIE_AGE_SECONDS: i64 = 600;

fn set_nonce_cookie(route: &Route, nonce: &str) -> String {
    format!(
        "{}={nonce}; Path=/; Max-Age={NONCE_COOKIE_AGE_SECONDS}; HttpOnly; SameSite=Lax{}",
        nonce_cookie_name(route),
        secure(route)
    )
}

fn clear_nonce_cookie(route: &Route) -> String {
    format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        nonce_cookie_name(route),
        secure(route)
    )
}

/// Where the browser lands after signing out.
pub fn signed_out_url(issuer: &str) -> String {
    format!("{}/app/signed-out", issuer.trim_end_matches('/'))
}

/// The absolute URL the browser asked for, from `:scheme`, `:authority` and `:path`.
pub fn request_url(scheme: &str, authority: &str, path: &str) -> String {
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else {
        "http"
    };
    let path = if path.starts_with('/') { path } else { "/" };
    format!("{scheme}://{authority}{path}")
}

fn secure(route: &Route) -> &'static str {
    if route.url.scheme == "https" {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a new app session.
pub fn set_cookie(route: &Route, session: &Session, max_age: i64) -> String {
    format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        route.cookie_name,
        session.secret(),
        max_age.clamp(0, MAX_COOKIE_AGE_SECONDS),
        secure(route)
    )
}

/// `Set-Cookie` that removes the app session cookie.
pub fn clear_cookie(route: &Route) -> String {
    format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        route.cookie_name,
        secure(route)
    )
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small HTML page for a person in a browser.
pub fn page(status: u32, reason: &'static str, title: &str, message: &str) -> LocalReply {
    html_page(status, reason, title, &escape_html(message))
}

/// A page with `body_html` (already escaped) under `title`; no script, no framing, forms
/// only to this origin.
fn html_page(status: u32, reason: &'static str, title: &str, body_html: &str) -> LocalReply {
    let title = escape_html(title);
    LocalReply {
        status,
        headers: vec![
            ("content-type", "text/html; charset=utf-8".into()),
            ("cache-control", "no-store".into()),
            (
                "content-security-policy",
                "default-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
                    .into(),
            ),
            ("x-frame-options", "DENY".into()),
        ],
        body: format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body><h1>{title}</h1><p>{body_html}</p></body></html>\n"
        ),
        reason,
    }
}

/// `GET {prefix}/.warden/sign-out`: a page with a button. Any site can send a browser to a
/// URL, so the sign-out itself is the button's same-origin `POST`.
pub fn sign_out_page(path: &str) -> LocalReply {
    html_page(
        200,
        "app-sign-out-page",
        "Sign out?",
        &format!(
            "Signing out ends your session in this application and your sign-in at the gateway.</p>\
             <form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form><p>",
            escape_html(path)
        ),
    )
}

/// Whether a sign-out `POST` comes from the app's own pages: its `Origin` is the route's.
/// Browsers send `Origin` with every `POST`; a request without one is refused too.
fn same_origin(route: &Route, origin: Option<&[u8]>) -> bool {
    origin.is_some_and(|o| {
        std::str::from_utf8(o)
            .is_ok_and(|o| crate::config::normalize_origin(o) == route.url.origin())
    })
}

/// The route's policy denies the user.
pub fn access_denied_page() -> LocalReply {
    page(
        403,
        "app-access-denied",
        "You may not use this application",
        "Your account is not allowed to use this application. Ask its owner for access.",
    )
}

/// The token service cannot be reached (or answered nonsense).
pub fn unavailable_page(reason: &'static str) -> LocalReply {
    page(
        503,
        reason,
        "Sign-in is unavailable",
        "The gateway cannot reach its sign-in service right now. Try again in a moment.",
    )
    .with_header("retry-after", "5")
}

/// The callback's code was refused (expired, used, or made up).
pub fn sign_in_expired_page(reason: &'static str) -> LocalReply {
    page(
        400,
        reason,
        "Sign-in expired",
        "This sign-in link has expired or was already used. Reload the application to sign in again.",
    )
}

/// A request on a client route without a usable session: browsers (GET/HEAD) go to the
/// sign-in page, anything else gets a `401` naming it. `clear`: also remove the cookie.
/// `nonce` (fresh random text) goes into the browser's nonce cookie, its digest into the URL.
pub fn sign_in_required(
    route: &Route,
    issuer: &str,
    method: &[u8],
    return_to: &str,
    clear: bool,
    nonce: &str,
) -> LocalReply {
    let url = sign_in_url(issuer, route, return_to, &session_key(nonce));
    let mut reply = if method == b"GET" || method == b"HEAD" {
        LocalReply {
            status: 302,
            headers: vec![("cache-control", "no-store".into())],
            body: String::new(),
            reason: "app-sign-in",
        }
        .with_header("location", url)
    } else {
        LocalReply::json(
            401,
            "app-sign-in-required",
            serde_json::json!({"error": "sign_in_required", "sign_in_url": url}).to_string(),
        )
    };
    if clear {
        reply = reply.with_header("set-cookie", clear_cookie(route));
    }
    reply.with_header("set-cookie", set_nonce_cookie(route, nonce))
}

/// Sign-out: the cookie goes, the browser lands on the token service's signed-out page, with
/// the ticket that ends the sign-in there too (when the app session was live).
pub fn signed_out(route: &Route, issuer: &str, ticket: Option<&str>) -> LocalReply {
    let url = match ticket {
        Some(t) => format!("{}?ticket={}", signed_out_url(issuer), percent_encode(t)),
        None => signed_out_url(issuer),
    };
    LocalReply {
        status: 303,
        headers: vec![("cache-control", "no-store".into())],
        body: String::new(),
        reason: "app-signed-out",
    }
    .with_header("location", url)
    .with_header("set-cookie", clear_cookie(route))
}

/// The token service's answer to the end of an app session: the sign-out reply (with the
/// ticket when there is one), or the page to answer when the session could not be ended.
pub fn classify_end(status: Option<u32>, body: &[u8], route: &Route, issuer: &str) -> LocalReply {
    match status {
        Some(200) => match crate::raw::object::<AppSessionEndAnswer>(body) {
            Some(ended) => {
                let ticket = ended.ticket.filter(|t| {
                    !t.is_empty()
                        && t.len() <= MAX_PARAM_LEN
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
                signed_out(route, issuer, ticket.as_deref())
            }
            None => unavailable_page("app-sign-out-bad-answer"),
        },
        // The session stays as it was: the user may try again.
        _ => unavailable_page("app-sign-out-unavailable"),
    }
}

/// The request head fields the client-route decision reads.
pub struct AppHead<'a> {
    pub method: &'a [u8],
    /// The `Origin` header (a sign-out must come from the app's own pages).
    pub origin: Option<&'a [u8]>,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// `:path` with its query.
    pub path: &'a str,
    pub cookies: &'a [&'a [u8]],
    /// Fresh random text for a sign-in nonce, should this request need to sign in.
    pub nonce: String,
}

/// What the filter does with a request on a client route (or the sign-in callback).
#[derive(Debug)]
pub enum AppStep {
    /// Answer locally and stop.
    Reply(LocalReply),
    /// The sign-in callback: `POST SESSION_PATH` with `body`, then `classify_session`.
    Callback { route: usize, body: String },
    /// Sign-out (a same-origin `POST`): forget the session's TE (`cache_key`), end the session
    /// (`POST END_PATH` with `body`), and answer with `classify_end`.
    SignOut {
        route: usize,
        body: Secret,
        cache_key: String,
    },
    /// A request with a session cookie: the TE from the cache (`cache_key`) or from
    /// `POST TOKEN_PATH` with `body`; `expired` is the reply when the session has ended.
    Session {
        route: usize,
        cache_key: String,
        body: Secret,
        expired: LocalReply,
    },
}

/// A request body that carries a secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

fn session_body(route: &Route, session: &Session) -> Secret {
    let body = AppTokenRequest {
        route: route.name.clone(),
        session: session.secret().into(),
    };
    Secret(serde_json::to_string(&body).unwrap_or_default())
}

/// The query parameter `name` (exactly once), decoded.
fn query_param(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        if found.is_some() || v.len() > MAX_PARAM_LEN {
            return Err(());
        }
        found = Some(percent_decode(v).ok_or(())?);
    }
    Ok(found)
}

/// `/.warden/app/callback?code=C&state=S` on a client route's host: `state` names the route.
pub fn callback(config: &CompiledConfig, head: &AppHead<'_>) -> AppStep {
    let query = head
        .path
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    let query = query.split('#').next().unwrap_or_default();
    let (Ok(Some(code)), Ok(Some(state))) =
        (query_param(query, "code"), query_param(query, "state"))
    else {
        return AppStep::Reply(sign_in_expired_page("app-callback-malformed"));
    };
    if code.is_empty() {
        return AppStep::Reply(sign_in_expired_page("app-callback-malformed"));
    }
    let Some((index, route)) = config.client_route(&state, head.authority) else {
        return AppStep::Reply(sign_in_expired_page("app-callback-unknown-route"));
    };
    // The digest of this browser's nonce cookie: the token service issued the code for the
    // browser whose cookie matches ("" matches nothing).
    let nonce = match find_cookie(head.cookies, &nonce_cookie_name(route)) {
        CookieLookup::Found(n) => session_key(n.secret()),
        _ => String::new(),
    };
    AppStep::Callback {
        route: index,
        body: serde_json::to_string(&AppSessionRequest {
            route: route.name.clone(),
            code,
            nonce,
        })
        .unwrap_or_default(),
    }
}

/// A request on client route `index`, located by `access::decide`: it draws the sign-in
/// nonce itself (only client routes pay for randomness; none to be had fails closed).
pub fn on_client_route(
    config: &CompiledConfig,
    index: usize,
    route: &Route,
    mut head: AppHead<'_>,
    random: fn() -> Option<[u8; 32]>,
) -> AppStep {
    use base64::Engine as _;
    let Some(bytes) = random() else {
        return AppStep::Reply(unavailable_page("app-no-randomness"));
    };
    head.nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    on_route(config, index, route, &head)
}

/// A request on client route `index` (matched by host and path prefix).
pub fn on_route(
    config: &CompiledConfig,
    index: usize,
    route: &Route,
    head: &AppHead<'_>,
) -> AppStep {
    let issuer = config.rules.issuer.as_str();
    let path_only = head.path.split(['?', '#']).next().unwrap_or_default();
    let cookie = find_cookie(head.cookies, &route.cookie_name);
    if path_only.strip_prefix(route.url.path.as_str()) == Some(SIGN_OUT_SUFFIX) {
        return match head.method {
            b"GET" | b"HEAD" => AppStep::Reply(sign_out_page(path_only)),
            b"POST" if !same_origin(route, head.origin) => AppStep::Reply(page(
                403,
                "app-sign-out-cross-site",
                "Not signed out",
                "Sign-out must be asked for on this application's own page. Open it again and use its button.",
            )),
            b"POST" => match &cookie {
                CookieLookup::Found(session) => AppStep::SignOut {
                    route: index,
                    body: session_body(route, session),
                    cache_key: session_key(session.secret()),
                },
                // No session here: nothing to end, the cookie goes anyway.
                _ => AppStep::Reply(signed_out(route, issuer, None)),
            },
            _ => AppStep::Reply(
                page(
                    405,
                    "app-sign-out-method",
                    "Method not allowed",
                    "Sign out with the button on this page.",
                )
                .with_header("allow", "GET, HEAD, POST"),
            ),
        };
    }
    let return_to = request_url(head.scheme, head.authority, head.path);
    match cookie {
        CookieLookup::Missing => AppStep::Reply(sign_in_required(
            route,
            issuer,
            head.method,
            &return_to,
            false,
            &head.nonce,
        )),
        CookieLookup::Conflict => AppStep::Reply(page(
            400,
            "app-cookie-conflict",
            "Conflicting sign-in cookies",
            "Your browser sent several different sign-in cookies for this application. Clear this site's cookies and reload.",
        )),
        CookieLookup::Found(session) => AppStep::Session {
            route: index,
            cache_key: session_key(session.secret()),
            body: session_body(route, &session),
            expired: sign_in_required(route, issuer, head.method, &return_to, true, &head.nonce),
        },
    }
}

/// Whether `url` is an absolute URL on the route's host under its path prefix (where the
/// callback may send the browser).
pub fn under_route(route: &Route, url: &str) -> bool {
    // A browser reads `\` as `/` in an http(s) URL: `/admin/..\x` is `/x` to it.
    if url.bytes().any(|b| !b.is_ascii_graphic() || b == b'\\') {
        return false;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    // The route's own scheme: `http://` on an https route's host is another origin.
    if scheme != route.url.scheme {
        return false;
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (
            rest.get(..i).unwrap_or_default(),
            rest.get(i..).unwrap_or_default(),
        ),
        None => (rest, ""),
    };
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    if !route.url.matches_host(authority) {
        return false;
    }
    if path_only.is_empty() {
        return route.url.path.is_empty();
    }
    // A browser resolves dot segments, escaped or not: they could leave the prefix.
    let dotted = path_only
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .split('/')
        .any(|seg| seg == "." || seg == "..");
    path_only.starts_with('/') && !dotted && route.url.covers_path(path_only)
}

/// The internal API's answer to the callback's code: `302 return_to` with the cookie, a `400`
/// page for a refused code, a `503` page when the token service cannot be reached.
pub fn classify_session(status: Option<u32>, body: &[u8], route: &Route) -> LocalReply {
    match status {
        Some(200) => {
            let granted = crate::raw::object::<AppSessionAnswer>(body).filter(|g| {
                valid_session(g.session.as_bytes())
                    && g.max_age > 0
                    && under_route(route, &g.return_to)
            });
            match granted {
                Some(g) => LocalReply {
                    status: 302,
                    headers: vec![("cache-control", "no-store".into())],
                    body: String::new(),
                    reason: "app-signed-in",
                }
                .with_header("location", g.return_to)
                .with_header(
                    "set-cookie",
                    set_cookie(route, &Session(g.session), g.max_age),
                )
                .with_header("set-cookie", clear_nonce_cookie(route)),
                None => sign_in_expired_page("app-session-bad-answer"),
            }
        }
        Some(status) if (400..500).contains(&status) => sign_in_expired_page("app-code-invalid"),
        _ => unavailable_page("app-token-service-unavailable"),
    }
}

/// The user's TE for an app session, as the filter caches it.
#[derive(Clone, PartialEq)]
pub struct AppToken {
    /// `Bearer <TE>`.
    header: Box<str>,
    pub identity: Rc<Identity>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl AppToken {
    /// The app's `authorization` header value.
    pub fn authorization(&self) -> &str {
        &self.header
    }

    pub fn usable(&self, now: i64) -> bool {
        !refresh_due(self.issued_at, Some(self.expires_at), now)
    }
}

impl Renewable for AppToken {
    fn usable(&self, now: i64) -> bool {
        AppToken::usable(self, now)
    }
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppToken")
            .field("access_token", &"[redacted]")
            .field("sub", &self.identity.claims.sub)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The per-worker cache of app TEs, by route and `session_key`.
pub type AppTokenCache = RouteUserCache<AppToken>;

/// What the internal API said about an app session.
#[derive(Debug)]
pub enum TokenAnswer {
    /// A TE (not yet verified: see `accept_token`).
    Token(Secret, i64),
    /// The session has ended: sign in again.
    SessionExpired,
    /// The route's policy denies the user.
    AccessDenied,
    /// No usable answer.
    Unavailable(&'static str),
}

/// Reads the internal API's answer to `POST TOKEN_PATH`; `status` `None` is no answer at all.
pub fn classify_token(status: Option<u32>, body: &[u8]) -> TokenAnswer {
    let error = || {
        crate::raw::object::<ErrorAnswer>(body)
            .and_then(|r| ErrorCode::parse(&r.error))
            .filter(|code| status == Some(u32::from(code.status())))
    };
    match status {
        Some(200) => match crate::raw::object::<AppTokenAnswer>(body) {
            Some(g) => TokenAnswer::Token(Secret(g.access_token), g.expires_at),
            None => TokenAnswer::Unavailable("app-token-bad-answer"),
        },
        Some(401) if error() == Some(ErrorCode::SessionExpired) => TokenAnswer::SessionExpired,
        Some(403) if error() == Some(ErrorCode::AccessDenied) => TokenAnswer::AccessDenied,
        _ => TokenAnswer::Unavailable("app-token-service-unavailable"),
    }
}

/// Verifies a TE the token service minted for the app like any TE (signature, issuer, type,
/// expiry), and that it is this route's (`client_id = warden-app:<route>`): a bad answer can
/// never put another token in front of the app. `Err` is the reason (a key the filter does
/// not have yet included: the caller may fetch keys and try again).
pub fn accept_token(
    token: &str,
    expires_at: i64,
    route: &Route,
    keys: &KeySet,
    rules: &TokenRules,
    now: i64,
) -> Result<AppToken, crate::token::TokenError> {
    use crate::token::TokenError;
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(TokenError::Malformed);
    }
    let identity = verify(token, keys, rules, now)?;
    if identity.claims.client_id != format!("warden-app:{}", route.name) {
        return Err(TokenError::Malformed);
    }
    let expires_at = identity.expires_at.min(expires_at.max(now));
    Ok(AppToken {
        header: format!("Bearer {token}").into(),
        identity: Rc::new(identity),
        issued_at: now,
        expires_at,
    })
}

/// The route's policy for this user now (no MCP method): a policy change applies at once,
/// whatever TE is cached.
pub fn permits(route: &Route, identity: &Identity) -> bool {
    route
        .policy
        .evaluate_quiet(
            &PolicyInput {
                claims: &identity.claims,
                call: &McpCall::default(),
            },
            Names::Exact,
        )
        .permitted()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::testkeys::*;
    use crate::token::Audience;

    fn config() -> CompiledConfig {
        let (_, jwks) = es256_pair();
        let v = serde_json::json!({
            "version": 1,
            "issuer": "http://issuer",
            "jwks_static": serde_json::from_str::<serde_json::Value>(&jwks).unwrap(),
            "token_service": {"cluster": "ts", "authority": "ts"},
            "routes": [
                {"name": "demo", "resource": "http://127.0.0.1:9000/mcp", "policy": {"allow": {"and": [{"accept": true}]}}},
                {"name": "chat", "kind": "client", "resource": "https://chat.example", "policy": {"allow": {"and": [{"email": {"is": "demo@example.com"}}]}}},
                {"name": "admin-app", "kind": "client", "resource": "http://apps.example/admin", "pass_identity_headers": true, "policy": {"allow": {"and": [{"accept": true}]}}}
            ]
        });
        CompiledConfig::from_json(v.to_string().as_bytes()).unwrap()
    }

    const SESSION: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";

    fn header<'a>(r: &'a LocalReply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn cookie_name_is_prefix_and_eight_hex_of_the_route_hash() {
        let name = cookie_name("chat");
        // SHA-256("chat") = 31e06f7d... (sha256sum agrees)
        assert_eq!(name, "warden_app_31e06f7d");
        assert_ne!(cookie_name("chat"), cookie_name("chat2"));
        let c = config();
        // routes[1] is https: `__Host-` in front.
        assert_eq!(c.routes[1].cookie_name, format!("__Host-{name}"));
        assert_eq!(c.routes[2].cookie_name, cookie_name("admin-app"));
    }

    #[test]
    fn finds_the_cookie_among_headers_pairs_and_quotes() {
        let name = "warden_app_31e06f7d";
        let found = |headers: &[&[u8]]| find_cookie(headers, name);
        let ours = format!("{name}={SESSION}");
        let expect = CookieLookup::Found(Session(SESSION.into()));
        assert_eq!(found(&[ours.as_bytes()]), expect);
        let several = format!("a=1; {name}={SESSION};b=2");
        assert_eq!(found(&[b"x=y", several.as_bytes()]), expect);
        let quoted = format!("a=1;  {name} = \"{SESSION}\" ");
        assert_eq!(found(&[quoted.as_bytes()]), expect);
        // The same value twice (two headers) is one cookie.
        assert_eq!(found(&[ours.as_bytes(), ours.as_bytes()]), expect);
        // Two different values: neither is trusted.
        let other = format!("{name}=ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!(
            found(&[ours.as_bytes(), other.as_bytes()]),
            CookieLookup::Conflict
        );
        // Not ours: other names, a prefix of our name, a value without the session's syntax.
        assert_eq!(found(&[]), CookieLookup::Missing);
        assert_eq!(
            found(&[b"warden_app_31e06f7=abcdefghijklmnopqrstuvwxyz"]),
            CookieLookup::Missing
        );
        let bad = format!("{name}=short; {name}=has spaces in it ok; {name}=");
        assert_eq!(found(&[bad.as_bytes()]), CookieLookup::Missing);
        let bad_with_good = format!("{name}=bad!value!here!!!!; {ours}");
        assert_eq!(found(&[bad_with_good.as_bytes()]), expect);
        assert_eq!(found(&[b"\xff\xfe; ;;=;"]), CookieLookup::Missing);
        // The secret never shows in Debug.
        assert!(!format!("{expect:?}").contains(SESSION));
    }

    #[test]
    fn strips_every_gateway_cookie_and_nothing_else() {
        let name = "warden_app_31e06f7d";
        let h1 = format!("a=1; {name}={SESSION}; b=\"two\"");
        let kept = strip_cookie(&[h1.as_bytes(), b"c=3"]).unwrap();
        assert_eq!(kept, Some(b"a=1; b=\"two\"; c=3".to_vec()));
        let only = format!("{name}={SESSION}");
        assert_eq!(strip_cookie(&[only.as_bytes()]), Some(None));
        // Nothing of ours: the header is left as it is.
        assert_eq!(strip_cookie(&[b"x=1"]), None);
        assert_eq!(
            strip_cookie(&[b"warden_app_x=1; warden_app_31e06f7dx=2"]),
            None
        );
        // Another client route's session on the same host (Path=/ reaches every app there)
        // and the sign-in nonces go too: no upstream gets a secret of the gateway's.
        let two = format!(
            "{name}={SESSION}; warden_app_0badf00d={SESSION}; warden_app_0badf00d_n=n; z=9"
        );
        assert_eq!(strip_cookie(&[two.as_bytes()]), Some(Some(b"z=9".to_vec())));
        assert!(is_gateway_cookie(b"warden_app_0badf00d_n"));
        assert!(!is_gateway_cookie(b"warden_app_0BADF00D"));
    }

    #[test]
    fn percent_encoding_round_trips() {
        let url = "https://chat.example/a b/ü?x=1&y=%2F#f";
        let enc = percent_encode(url);
        assert_eq!(
            enc,
            "https%3A%2F%2Fchat.example%2Fa%20b%2F%C3%BC%3Fx%3D1%26y%3D%252F%23f"
        );
        assert_eq!(percent_decode(&enc).unwrap(), url);
        assert_eq!(percent_decode("a+b").unwrap(), "a b");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn cookies_on_https_are_host_only_by_name() {
        // `__Host-`: a browser takes such a cookie only from this very host, Secure, Path=/
        // and without Domain, so a sibling subdomain cannot plant a session or a sign-in
        // nonce (login CSRF by cookie tossing).
        let c = config();
        let (https, http) = (&c.routes[1], &c.routes[2]);
        assert_eq!(https.cookie_name, format!("__Host-{}", cookie_name("chat")));
        assert_eq!(
            nonce_cookie_name(https),
            format!("__Host-{}_n", cookie_name("chat"))
        );
        assert_eq!(http.cookie_name, cookie_name("admin-app"));
        let s = Session(SESSION.into());
        assert!(set_cookie(https, &s, 60).starts_with("__Host-warden_app_"));
        assert!(is_gateway_cookie(https.cookie_name.as_bytes()));
        assert!(is_gateway_cookie(nonce_cookie_name(https).as_bytes()));
        let h = format!(
            "a=1; {}={SESSION}; {}=x",
            https.cookie_name,
            nonce_cookie_name(https)
        );
        assert_eq!(strip_cookie(&[h.as_bytes()]), Some(Some(b"a=1".to_vec())));
    }

    #[test]
    fn set_cookie_is_http_only_lax_and_secure_on_https() {
        let c = config();
        let (https, http) = (&c.routes[1], &c.routes[2]);
        let s = Session(SESSION.into());
        assert_eq!(
            set_cookie(https, &s, 3600),
            format!(
                "{}={SESSION}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure",
                https.cookie_name
            )
        );
        assert_eq!(
            set_cookie(http, &s, 10 * 24 * 3600),
            format!(
                "{}={SESSION}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax",
                http.cookie_name
            )
        );
        assert_eq!(
            clear_cookie(https),
            format!(
                "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
                https.cookie_name
            )
        );
    }

    #[test]
    fn sign_in_redirect_for_browsers_and_json_for_the_rest() {
        let c = config();
        let route = &c.routes[1];
        let return_to = request_url("https", "chat.example", "/c/1?q=a b&r=1");
        assert_eq!(return_to, "https://chat.example/c/1?q=a b&r=1");
        let get = sign_in_required(route, "http://issuer/", b"GET", &return_to, false, "n1");
        assert_eq!(get.status, 302);
        assert_eq!(
            header(&get, "location").unwrap(),
            format!("http://issuer/app/sign-in?route=chat&return_to=https%3A%2F%2Fchat.example%2Fc%2F1%3Fq%3Da%20b%26r%3D1&nonce={}", session_key("n1"))
        );
        // The nonce itself only goes into the browser's cookie; the URL carries its digest.
        let cookies: Vec<&str> = get
            .headers
            .iter()
            .filter(|(k, _)| *k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        assert!(cookies[0].starts_with(&format!("{}_n=n1;", route.cookie_name)));
        assert!(cookies[0].contains("HttpOnly") && cookies[0].contains("Secure"));
        let head = sign_in_required(route, "http://issuer", b"HEAD", &return_to, true, "n2");
        assert_eq!(head.status, 302);
        assert!(header(&head, "set-cookie").unwrap().contains("Max-Age=0"));
        let post = sign_in_required(route, "http://issuer", b"POST", &return_to, false, "n1");
        assert_eq!(post.status, 401);
        let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
        assert_eq!(body["error"], "sign_in_required");
        assert_eq!(body["sign_in_url"], header(&get, "location").unwrap());
        assert_eq!(request_url("HTTPS", "h", "x"), "https://h/");
    }

    #[test]
    fn token_service_paths_pass() {
        for p in [
            "/.warden/mcp/routes",
            "/.pomerium/mcp/routes",
            "/.warden/mcp/connect",
            "/.pomerium/mcp/disconnect",
        ] {
            assert!(is_token_service_path(p), "{p}");
        }
        for p in [
            "/.warden/mcp",
            "/.pomerium/mcp",
            "/.warden/mcpx",
            "/mcp/.warden/mcp/routes",
            "/.warden/app/callback",
        ] {
            assert!(!is_token_service_path(p), "{p}");
        }
    }

    fn head<'a>(
        method: &'a [u8],
        authority: &'a str,
        path: &'a str,
        cookies: &'a [&'a [u8]],
    ) -> AppHead<'a> {
        AppHead {
            method,
            origin: Some(b"http://apps.example"),
            scheme: "https",
            authority,
            path,
            cookies,
            nonce: "fresh".into(),
        }
    }

    #[test]
    fn callback_names_the_route_in_state() {
        let c = config();
        match callback(
            &c,
            &head(
                b"GET",
                "chat.example",
                "/.warden/app/callback?code=a%2Bb&state=chat",
                &[],
            ),
        ) {
            AppStep::Callback { route, body } => {
                assert_eq!(route, 1);
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                // No nonce cookie: an empty nonce, which matches no code.
                assert_eq!(
                    v,
                    serde_json::json!({"route": "chat", "code": "a+b", "nonce": ""})
                );
            }
            other => panic!("{other:?}"),
        }
        // The browser's nonce cookie goes to the token service as its digest.
        let nonce = "N".repeat(43);
        let nonce_cookie = format!("{}_n={nonce}", c.routes[1].cookie_name);
        let cookies: [&[u8]; 1] = [nonce_cookie.as_bytes()];
        match callback(
            &c,
            &head(
                b"GET",
                "chat.example",
                "/.warden/app/callback?code=x&state=chat",
                &cookies,
            ),
        ) {
            AppStep::Callback { body, .. } => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["nonce"], session_key(&nonce));
            }
            other => panic!("{other:?}"),
        }
        // A client route with a path prefix takes its callback at the host's root.
        assert!(matches!(
            callback(
                &c,
                &head(
                    b"GET",
                    "apps.example",
                    "/.warden/app/callback?state=admin-app&code=x",
                    &[]
                )
            ),
            AppStep::Callback { route: 2, .. }
        ));
        for bad in [
            "/.warden/app/callback?code=x&state=demo",
            "/.warden/app/callback?code=x&state=admin-app",
            "/.warden/app/callback?code=x",
            "/.warden/app/callback?state=chat",
            "/.warden/app/callback?code=&state=chat",
            "/.warden/app/callback?code=x&code=y&state=chat",
            "/.warden/app/callback?code=%zz&state=chat",
        ] {
            match callback(&c, &head(b"GET", "chat.example", bad, &[])) {
                AppStep::Reply(r) => {
                    assert_eq!(r.status, 400, "{bad}");
                    assert!(header(&r, "content-type").unwrap().starts_with("text/html"));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_on_a_client_route() {
        let c = config();
        let route = &c.routes[1];
        let step = on_route(&c, 1, route, &head(b"GET", "chat.example", "/page", &[]));
        match step {
            AppStep::Reply(r) => {
                assert_eq!(r.status, 302);
                assert_eq!(
                    header(&r, "location").unwrap(),
                    format!("http://issuer/app/sign-in?route=chat&return_to=https%3A%2F%2Fchat.example%2Fpage&nonce={}", session_key("fresh"))
                );
            }
            other => panic!("{other:?}"),
        }
        let cookie = format!("{}={SESSION}", route.cookie_name);
        let cookies = [cookie.as_bytes()];
        match on_route(
            &c,
            1,
            route,
            &head(b"POST", "chat.example", "/api", &cookies),
        ) {
            AppStep::Session {
                route,
                cache_key,
                body,
                expired,
            } => {
                assert_eq!(route, 1);
                assert_eq!(cache_key, session_key(SESSION));
                assert_ne!(cache_key, SESSION);
                let v: serde_json::Value = serde_json::from_str(&body.0).unwrap();
                assert_eq!(v, serde_json::json!({"route": "chat", "session": SESSION}));
                assert!(!format!("{body:?}").contains(SESSION));
                assert_eq!(expired.status, 401);
                assert!(header(&expired, "set-cookie")
                    .unwrap()
                    .contains("Max-Age=0"));
            }
            other => panic!("{other:?}"),
        }
        let two = format!("{cookie}; {}=ZZZZZZZZZZZZZZZZZZZZZZZZZZ", route.cookie_name);
        let conflict = [two.as_bytes()];
        match on_route(&c, 1, route, &head(b"GET", "chat.example", "/", &conflict)) {
            AppStep::Reply(r) => assert_eq!(r.status, 400),
            other => panic!("{other:?}"),
        }
        // Sign-out under the route's prefix: a same-origin POST ends the session.
        let admin = &c.routes[2];
        let cookie = format!("{}={SESSION}", admin.cookie_name);
        let cookies = [cookie.as_bytes()];
        let sign_out = "/admin/.warden/sign-out";
        match on_route(
            &c,
            2,
            admin,
            &head(b"POST", "apps.example", sign_out, &cookies),
        ) {
            AppStep::SignOut {
                route,
                body,
                cache_key,
            } => {
                assert_eq!(route, 2);
                assert!(body.0.contains("\"route\":\"admin-app\""));
                assert_eq!(cache_key, session_key(SESSION));
            }
            other => panic!("{other:?}"),
        }
        // Without a session: straight to the signed-out page, the cookie cleared.
        match on_route(&c, 2, admin, &head(b"POST", "apps.example", sign_out, &[])) {
            AppStep::Reply(r) => {
                assert_eq!((r.status, r.reason), (303, "app-signed-out"));
                assert_eq!(
                    header(&r, "location").unwrap(),
                    "http://issuer/app/signed-out"
                );
                assert!(header(&r, "set-cookie").unwrap().contains("Max-Age=0"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_site_cannot_sign_a_user_out_of_an_app() {
        let c = config();
        let admin = &c.routes[2];
        let cookie = format!("{}={SESSION}", admin.cookie_name);
        let cookies = [cookie.as_bytes()];
        let sign_out = "/admin/.warden/sign-out";
        // A GET (a link, an image, a redirect from anywhere): a page with a button, no
        // cookie cleared, nothing ended.
        for method in [b"GET".as_slice(), b"HEAD"] {
            match on_route(
                &c,
                2,
                admin,
                &head(method, "apps.example", sign_out, &cookies),
            ) {
                AppStep::Reply(r) => {
                    assert_eq!((r.status, r.reason), (200, "app-sign-out-page"));
                    assert!(r.body.contains("method=\"post\""), "{}", r.body);
                    assert!(r.body.contains("action=\"/admin/.warden/sign-out\""));
                    assert!(header(&r, "set-cookie").is_none());
                    assert!(header(&r, "content-security-policy")
                        .unwrap()
                        .contains("frame-ancestors 'none'"));
                }
                other => panic!("{other:?}"),
            }
        }
        // A POST from another origin, with the Origin of a sibling, or with none: refused.
        for origin in [
            Some(b"https://evil.example".as_slice()),
            Some(b"https://other.apps.example"),
            Some(b"https://apps.example"),
            Some(b"null"),
            None,
        ] {
            let mut h = head(b"POST", "apps.example", sign_out, &cookies);
            h.origin = origin;
            match on_route(&c, 2, admin, &h) {
                AppStep::Reply(r) => {
                    assert_eq!((r.status, r.reason), (403, "app-sign-out-cross-site"));
                    assert!(header(&r, "set-cookie").is_none());
                }
                other => panic!("{origin:?}: {other:?}"),
            }
        }
        for method in [b"PUT".as_slice(), b"DELETE"] {
            match on_route(
                &c,
                2,
                admin,
                &head(method, "apps.example", sign_out, &cookies),
            ) {
                AppStep::Reply(r) => assert_eq!(r.status, 405),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_end_of_a_session_sends_the_browser_on_with_its_ticket() {
        let c = config();
        let admin = &c.routes[2];
        let ok = br#"{"ended":true,"ticket":"1900000120.c2lk.QFO-ore_N64"}"#;
        let r = classify_end(Some(200), ok, admin, "http://issuer");
        assert_eq!(r.status, 303);
        assert_eq!(
            header(&r, "location").unwrap(),
            "http://issuer/app/signed-out?ticket=1900000120.c2lk.QFO-ore_N64"
        );
        assert!(header(&r, "set-cookie").unwrap().contains("Max-Age=0"));
        let gone = br#"{"ended":false,"ticket":null}"#;
        let r = classify_end(Some(200), gone, admin, "http://issuer");
        assert_eq!(
            header(&r, "location").unwrap(),
            "http://issuer/app/signed-out"
        );
        // A ticket that is not plain text goes nowhere near the URL.
        let odd = br#"{"ended":true,"ticket":"a&b=c"}"#;
        let r = classify_end(Some(200), odd, admin, "http://issuer");
        assert_eq!(
            header(&r, "location").unwrap(),
            "http://issuer/app/signed-out"
        );
        // The token service unreachable: the session stays, the cookie too, try again.
        for (status, body) in [
            (None, b"".as_slice()),
            (Some(500), b"{}"),
            (Some(200), b"nope"),
        ] {
            let r = classify_end(status, body, admin, "http://issuer");
            assert_eq!(r.status, 503);
            assert!(header(&r, "set-cookie").is_none());
        }
    }

    #[test]
    fn session_answers() {
        let c = config();
        let route = &c.routes[1];
        let ok = serde_json::json!({"session": SESSION, "max_age": 43200, "return_to": "https://chat.example/c?x=1"});
        let r = classify_session(Some(200), ok.to_string().as_bytes(), route);
        assert_eq!(r.status, 302);
        assert_eq!(
            header(&r, "location").unwrap(),
            "https://chat.example/c?x=1"
        );
        assert_eq!(
            header(&r, "set-cookie").unwrap(),
            set_cookie(route, &Session(SESSION.into()), 43200)
        );
        // A return_to off the route (an open redirect) or a bad session is a bad answer.
        for (session, return_to) in [
            (SESSION, "https://evil.example/"),
            (SESSION, "https://chat.example.evil.example/"),
            (SESSION, "javascript:alert(1)"),
            (SESSION, "https://chat.example/a\r\nx: y"),
            ("short", "https://chat.example/"),
            ("has;semicolon;in;it;1234567", "https://chat.example/"),
        ] {
            let body =
                serde_json::json!({"session": session, "max_age": 60, "return_to": return_to});
            let r = classify_session(Some(200), body.to_string().as_bytes(), route);
            assert_eq!(r.status, 400, "{return_to}");
            assert!(header(&r, "set-cookie").is_none());
        }
        let r = classify_session(Some(400), br#"{"error":"invalid_code"}"#, route);
        assert_eq!((r.status, r.reason), (400, "app-code-invalid"));
        assert!(r.body.contains("Sign-in expired"));
        assert_eq!(classify_session(None, b"", route).status, 503);
        assert_eq!(classify_session(Some(503), b"", route).status, 503);
    }

    #[test]
    fn return_to_must_stay_under_the_route() {
        let c = config();
        let admin = &c.routes[2];
        assert!(under_route(admin, "http://apps.example/admin"));
        assert!(under_route(admin, "http://apps.example/admin/x?y=1"));
        assert!(under_route(admin, "http://apps.example:80/admin/x"));
        assert!(!under_route(admin, "http://apps.example/adminx"));
        assert!(!under_route(admin, "http://apps.example/"));
        assert!(!under_route(admin, "http://apps.example"));
        assert!(!under_route(admin, "http://apps.example/admin/../x"));
        assert!(!under_route(admin, "http://apps.example/admin/%2E%2e/x"));
        assert!(!under_route(admin, "http://other.example/admin"));
        assert!(under_route(&c.routes[1], "https://chat.example"));
    }

    #[test]
    fn return_to_is_read_as_a_browser_reads_it() {
        // Found by the fuzz target `return_to_and_redirect_url`: a browser turns `\` into `/`
        // (so `..\x` climbs out of the prefix), and `http://` on an https route's host (or
        // its port 443) is another origin.
        let c = config();
        let (chat, admin) = (&c.routes[1], &c.routes[2]);
        assert!(!under_route(admin, "http://apps.example/admin/..\\x"));
        assert!(!under_route(admin, "http://apps.example/admin\\x"));
        assert!(!under_route(chat, "http://chat.example/"));
        assert!(!under_route(chat, "http://chat.example:443/"));
        assert!(!under_route(admin, "https://apps.example/admin"));
        assert!(under_route(chat, "https://chat.example/c?x=1"));
    }

    #[test]
    fn token_answers() {
        let ok = serde_json::json!({"access_token": "t", "expires_at": 5});
        assert!(matches!(
            classify_token(Some(200), ok.to_string().as_bytes()),
            TokenAnswer::Token(Secret(t), 5) if t == "t"
        ));
        assert!(matches!(
            classify_token(Some(401), br#"{"error":"session_expired"}"#),
            TokenAnswer::SessionExpired
        ));
        assert!(matches!(
            classify_token(Some(403), br#"{"error":"access_denied"}"#),
            TokenAnswer::AccessDenied
        ));
        for (status, body) in [
            (Some(200), &b"{}"[..]),
            (Some(401), b"{}"),
            (Some(403), b""),
            (Some(503), b""),
            (None, b""),
        ] {
            assert!(
                matches!(classify_token(status, body), TokenAnswer::Unavailable(_)),
                "{status:?}"
            );
        }
    }

    #[test]
    fn answers_that_are_not_objects_are_bad_answers() {
        // Found by the fuzz target `internal_api_bodies`: serde reads a struct from an array
        // of its values, so `[session, max_age, return_to]` signed the browser in.
        let c = config();
        let array = format!(r#"["{SESSION}", 60, "https://chat.example/"]"#);
        let r = classify_session(Some(200), array.as_bytes(), &c.routes[1]);
        assert_eq!((r.status, r.reason), (400, "app-session-bad-answer"));
        assert!(matches!(
            classify_token(Some(200), br#"["t", 5]"#),
            TokenAnswer::Unavailable("app-token-bad-answer")
        ));
        assert!(matches!(
            classify_token(Some(401), br#"["session_expired"]"#),
            TokenAnswer::Unavailable(_)
        ));
    }

    fn app_te(client_id: &str, aud: Audience, iss: &str) -> String {
        let (key, _) = es256_pair();
        let mut c = claims("x", 1000, 1300);
        c.custom.client_id = client_id.into();
        c.custom.aud = aud;
        c.custom.iss = iss.into();
        sign(&key, &c)
    }

    #[test]
    fn the_app_te_is_verified_and_must_be_the_routes() {
        let c = config();
        let route = &c.routes[1];
        let keys = c.static_keys.clone().unwrap();
        let aud = Audience::Many(vec!["http://127.0.0.1:9000/mcp".into()]);
        let good = app_te("warden-app:chat", aud.clone(), "http://issuer");
        let token = accept_token(&good, 1250, route, &keys, &c.rules, 1100).unwrap();
        assert_eq!(token.authorization(), format!("Bearer {good}"));
        assert_eq!(token.expires_at, 1250);
        assert_eq!(token.identity.claims.sub, "demo@example.com");
        assert!(token.usable(1100));
        // Renewed early, as TIs are: 150 s lifetime, margin 15 s.
        assert!(token.usable(1234));
        assert!(!token.usable(1235));
        assert!(!format!("{token:?}").contains(&good));
        assert!(permits(route, &token.identity));
        let mut other = (*token.identity).clone();
        other.claims.email = "eve@example.com".into();
        assert!(!permits(route, &other));
        for bad in [
            app_te("warden-app:admin-app", aud.clone(), "http://issuer"),
            app_te("some-client", aud.clone(), "http://issuer"),
            app_te("warden-app:chat", aud.clone(), "http://evil"),
            "not a token".into(),
            String::new(),
        ] {
            assert!(accept_token(&bad, 1250, route, &keys, &c.rules, 1100).is_err());
        }
        // Expired at verification.
        assert!(accept_token(&good, 1250, route, &keys, &c.rules, 2000).is_err());
    }
}

//! Where the gateway sends a browser: the filter's `app::under_route` (the `return_to` of a
//! token service answer), the token service's `valid_return_to` (app sign-in),
//! `connect_redirect_route` (a connect's `redirect_url`), and `validate_redirect_uri` /
//! `matches_registered` (OAuth clients' redirect URIs). Each is judged against the WHATWG URL
//! parser (the `url` crate), which reads a URL the way a browser follows it.
//!
//! * An accepted `return_to` lands, in a browser, on the route's origin (scheme, host, port)
//!   and under its path prefix at a segment boundary, without credentials.
//! * A connect's `redirect_url` is accepted exactly when it is an http(s) URL without
//!   credentials, at most 4096 bytes, on some client route's origin, and the route named is
//!   one of those.
//! * A redirect URI is registered exactly when it has no fragment and no credentials and is
//!   https with a host or http on a loopback host; a requested one matches only a registered
//!   one byte for byte, or a loopback one on another port.
//!
//! Input: the URL (all of it).

use url::{Host, Url};
use warden_core::app::under_route;
use warden_token_service::flows::app::{connect_redirect_route, valid_return_to};
use warden_token_service::redirect_uri::{matches_registered, validate_redirect_uri};

use crate::fixtures::{config, token_service_config, ADMIN_APP, CHAT};

/// What `run` can decide: whether the filter takes the URL as a `return_to` of a client route.
pub const OUTCOMES: &[&str] = &["under-route", "off-route"];

pub fn run(data: &[u8]) -> &'static str {
    let url = String::from_utf8_lossy(data);
    let parsed = Url::parse(&url).ok();

    let mut outcome = "off-route";
    for route in [&config().routes[CHAT], &config().routes[ADMIN_APP]] {
        if under_route(route, &url) {
            outcome = "under-route";
            assert!(
                lands_under(parsed.as_ref(), &route.url.origin(), &route.url.path),
                "the filter sends a browser off route {}: {url:?}",
                route.name
            );
            assert!(url.bytes().all(|b| b.is_ascii_graphic()), "{url:?}");
        }
    }

    let ts = token_service_config();
    for route in ts.client_routes() {
        if valid_return_to(route, &url) {
            assert!(url.len() <= 4096);
            assert!(
                lands_under(parsed.as_ref(), &route.from, &route.prefix),
                "the token service accepts a return_to off route {}: {url:?}",
                route.name
            );
        }
    }

    let on_origin_of = |from: &str| match (&parsed, Url::parse(from)) {
        (Some(u), Ok(f)) => u.origin() == f.origin(),
        _ => false,
    };
    let acceptable = parsed.as_ref().is_some_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.username().is_empty()
            && u.password().is_none()
            && url.len() <= 4096
    });
    match connect_redirect_route(ts, &url) {
        Some(route) => {
            assert!(
                route.is_client() && acceptable && on_origin_of(&route.from),
                "{url:?}"
            );
        }
        None => assert!(
            !acceptable || !ts.client_routes().any(|r| on_origin_of(&r.from)),
            "a connect to a client route's origin refused: {url:?}"
        ),
    }

    let registrable = parsed.as_ref().is_some_and(|u| {
        !url.contains('#')
            && u.username().is_empty()
            && u.password().is_none()
            && match u.scheme() {
                "https" => u.host().is_some(),
                "http" => loopback(u),
                _ => false,
            }
    });
    match validate_redirect_uri(&url) {
        Ok(_) => assert!(registrable, "registered {url:?}"),
        Err(message) => {
            assert!(!registrable, "refused {url:?}: {message}");
            assert!(!message.is_empty());
        }
    }

    let registered = registered();
    if matches_registered(&registered, &url) && !registered.contains(&url.to_string()) {
        let u = parsed.as_ref().expect("a match parses");
        assert!(u.scheme() == "http" && loopback(u) && u.fragment().is_none());
        assert!(
            registered.iter().any(|r| Url::parse(r).is_ok_and(|r| {
                r.scheme() == "http"
                    && r.host() == u.host()
                    && r.path() == u.path()
                    && r.query() == u.query()
            })),
            "{url:?} matched no registered loopback URI"
        );
    }
    outcome
}

fn loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a browser following `url` lands on `origin` under `prefix` (at a segment boundary).
fn lands_under(url: Option<&Url>, origin: &str, prefix: &str) -> bool {
    let (Some(url), Ok(origin)) = (url, Url::parse(origin)) else {
        return false;
    };
    let path = url.path();
    url.origin() == origin.origin()
        && url.username().is_empty()
        && url.password().is_none()
        && (prefix.is_empty()
            || path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/') || prefix.ends_with('/')))
}

fn registered() -> Vec<String> {
    [
        "http://127.0.0.1/callback",
        "http://localhost:8080/cb?x=1",
        "https://app.example.com/cb",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The unit tests' URLs: return_to under and off the routes (other hosts and schemes, dot
/// segments, escapes, backslashes, CRLF, `javascript:`), connect targets, and redirect URIs.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "https://chat.example",
        "https://chat.example/c?x=1",
        "http://apps.example/admin",
        "http://apps.example/admin/x?y=1",
        "http://apps.example:80/admin/x",
        "http://apps.example/adminx",
        "http://apps.example/admin/../x",
        "http://apps.example/admin/%2E%2e/x",
        "http://apps.example/admin/..\\x",
        "http://chat.example:443/",
        "https://chat.example.evil.example/",
        "https://chat.example/a\r\nx: y",
        "javascript:alert(1)",
        "javascript://app.example.com/%0aalert(1)",
        "HTTPS://CHAT.example/ui/x",
        "https://u:p@chat.example/",
        "http://127.0.0.1:53123/callback",
        "http://[::1]:9/cb",
        "http://localhost:1/cb?x=1",
        "https://app.example.com/cb#x",
        "/relative",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

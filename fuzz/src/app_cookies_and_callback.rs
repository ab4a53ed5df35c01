//! Client routes (`app`): the `Cookie` headers (`find_cookie`, `strip_cookie`), the sign-in
//! callback's query (`callback`), and the decision for a request on a client route
//! (`on_route`).
//!
//! * `find_cookie` agrees with a plain reading of RFC 6265 pairs: `Found` only for a value of
//!   session syntax presented under the name, `Conflict` only for two different such values.
//! * `strip_cookie` removes exactly the gateway's cookies and keeps every other pair, in
//!   order; what it leaves has nothing more to remove.
//! * `callback` is a `400` page, or a call for the client route that `state` names on this
//!   host, with the `code` the query carries once, and the digest of the browser's nonce
//!   cookie (or nothing).
//! * `on_route` is a sign-out only on the route's sign-out path, a session only with our
//!   cookie, a sign-in (302 for GET/HEAD, 401 otherwise) without one, a 400 for a conflict.
//! * Every reply's headers can go on the wire as they are (no CR/LF).
//!
//! Input: the authority line, the `:path` line (with its query), the method line, then the
//! `Cookie` header values, one a line.

use serde_json::Value;
use warden_core::app::{
    callback, cookie_name, find_cookie, is_gateway_cookie, nonce_cookie_name, on_route,
    percent_decode, percent_encode, session_key, strip_cookie, AppHead, AppStep, CookieLookup,
    CALLBACK_PATH, SIGN_OUT_SUFFIX,
};
use warden_core::config::RouteKind;

use crate::assert_sane_headers;
use crate::fixtures::{config, ADMIN_APP, CHAT, ISSUER};
use crate::input::{join, Fields};

const NONCE: &str = "fresh-nonce-0123456789";

/// What `run` can decide: the callback's step on the callback path, elsewhere the client
/// route's (or none).
pub const OUTCOMES: &[&str] = &[
    "callback",
    "callback-refused",
    "sign-in",
    "session",
    "sign-out",
    "sign-out-page",
    "sign-out-refused",
    "signed-out",
    "conflict",
    "no-client-route",
];

/// A cookie line that makes the request cross-site: its `Origin` another site's.
const CROSS_SITE: &[u8] = b"cross-site";

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let authority = f.text().into_owned();
    let path = f.text().into_owned();
    let method = f.line();
    let cookies = f.lines();

    let config = config();
    for route in [&config.routes[CHAT], &config.routes[ADMIN_APP]] {
        for name in [route.cookie_name.clone(), nonce_cookie_name(route)] {
            lookup_agrees(&cookies, &name);
        }
    }
    strip_agrees(&cookies);
    assert_eq!(
        percent_decode(&percent_encode(&path)).as_deref(),
        Some(path.as_str())
    );

    // The browser's `Origin`: the matched route's own, unless the input asks for a foreign one.
    let origin = match config.route_for(&authority, path.split(['?', '#']).next().unwrap_or("")) {
        _ if cookies.contains(&CROSS_SITE) => "https://evil.example".to_owned(),
        Some((_, route)) => format!("{}://{authority}", route.url.scheme),
        None => format!("https://{authority}"),
    };
    let head = AppHead {
        method,
        origin: Some(origin.as_bytes()),
        scheme: "https",
        authority: &authority,
        path: &path,
        cookies: &cookies,
        nonce: NONCE.into(),
    };
    let callback = callback_agrees(&head);
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    let on_route = match config.route_for(&authority, path_only) {
        Some((index, route)) if route.kind == RouteKind::Client => {
            on_route_agrees(index, &head, path_only)
        }
        _ => "no-client-route",
    };
    if path_only == CALLBACK_PATH {
        callback
    } else {
        on_route
    }
}

/// The values of session syntax under `name`, read plainly: pairs split at `;`, name and value
/// at the first `=`, whitespace trimmed, one pair of quotes removed.
fn session_values(headers: &[&[u8]], name: &str) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for header in headers {
        for pair in header.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let (n, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
                None => (pair, &[][..]),
            };
            if n != name.as_bytes() {
                continue;
            }
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            let session_syntax = (16..=128).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
            if session_syntax {
                values.push(v.to_vec());
            }
        }
    }
    values
}

fn lookup_agrees(headers: &[&[u8]], name: &str) {
    let values = session_values(headers, name);
    match find_cookie(headers, name) {
        CookieLookup::Missing => assert!(values.is_empty(), "{name}: {values:?} missed"),
        CookieLookup::Found(session) => {
            assert!(!values.is_empty());
            assert!(
                values.iter().all(|v| v == session.secret().as_bytes()),
                "{name}: found one of several values"
            );
        }
        CookieLookup::Conflict => assert!(
            values.iter().any(|v| *v != values[0]),
            "{name}: a conflict without two values"
        ),
    }
}

fn strip_agrees(headers: &[&[u8]]) {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .flat_map(|h| h.split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name = match p.iter().position(|b| *b == b'=') {
                Some(i) => p[..i].trim_ascii(),
                None => p,
            };
            (name, p)
        })
        .collect();
    let ours = |name: &[u8]| {
        config().routes.iter().any(|r| {
            let plain = cookie_name(&r.name);
            [
                plain.clone(),
                format!("{plain}_n"),
                format!("__Host-{plain}"),
                format!("__Host-{plain}_n"),
            ]
            .iter()
            .any(|n| n.as_bytes() == name)
        })
    };
    for (name, _) in &pairs {
        if ours(name) {
            assert!(
                is_gateway_cookie(name),
                "{:?} not seen as the gateway's",
                String::from_utf8_lossy(name)
            );
        }
    }
    let kept: Vec<&[u8]> = pairs
        .iter()
        .filter(|(n, _)| !is_gateway_cookie(n))
        .map(|(_, p)| *p)
        .collect();
    match strip_cookie(headers) {
        None => assert_eq!(kept.len(), pairs.len(), "a gateway cookie was left"),
        Some(out) => {
            assert!(
                kept.len() < pairs.len(),
                "stripped without a gateway cookie"
            );
            let expected = (!kept.is_empty()).then(|| kept.join(&b"; "[..]));
            assert_eq!(out, expected);
            if let Some(out) = out {
                assert_eq!(strip_cookie(&[&out]), None, "stripping twice removed more");
            }
        }
    }
}

/// The decoded value of `name` when the query has it exactly once (at most 512 bytes).
fn query_param(query: &str, name: &str) -> Option<String> {
    let values: Vec<&str> = query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
        .collect();
    match values.as_slice() {
        [one] if one.len() <= 512 => percent_decode(one),
        _ => None,
    }
}

fn callback_agrees(head: &AppHead<'_>) -> &'static str {
    let config = config();
    match callback(config, head) {
        AppStep::Reply(reply) => {
            assert_eq!(reply.status, 400);
            assert!(
                reply.reason.starts_with("app-callback-"),
                "{}",
                reply.reason
            );
            assert!(!reply.headers.iter().any(|(n, _)| *n == "set-cookie"));
            assert_sane_headers(&reply);
            "callback-refused"
        }
        AppStep::Callback { route, body } => {
            let route = &config.routes[route];
            assert_eq!(route.kind, RouteKind::Client);
            assert!(route.url.matches_host(head.authority));
            let query = head
                .path
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or_default();
            let query = query.split('#').next().unwrap_or_default();
            assert_eq!(
                query_param(query, "state").as_deref(),
                Some(route.name.as_str())
            );
            let body: Value = serde_json::from_str(&body).unwrap();
            let code = query_param(query, "code").expect("the code, once");
            assert!(!code.is_empty());
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["route"], route.name.as_str());
            let nonces = session_values(head.cookies, &nonce_cookie_name(route));
            let expected = match nonces.first() {
                Some(n) if nonces.iter().all(|v| v == n) => {
                    session_key(std::str::from_utf8(n).unwrap())
                }
                _ => String::new(),
            };
            assert_eq!(body["nonce"], expected.as_str());
            "callback"
        }
        other => panic!("the callback decided {other:?}"),
    }
}

fn on_route_agrees(index: usize, head: &AppHead<'_>, path_only: &str) -> &'static str {
    let config = config();
    let route = &config.routes[index];
    let sessions = session_values(head.cookies, &route.cookie_name);
    let one_session = sessions
        .first()
        .filter(|s| sessions.iter().all(|v| v == *s));
    let sign_out = path_only.strip_prefix(route.url.path.as_str()) == Some(SIGN_OUT_SUFFIX);
    match on_route(config, index, route, head) {
        AppStep::SignOut {
            route: i,
            body,
            cache_key,
        } => {
            // Only a same-origin POST with this route's session ends it.
            assert!(sign_out && i == index && head.method == b"POST");
            assert!(!head.cookies.contains(&CROSS_SITE));
            let session = one_session.expect("a sign-out without our cookie");
            let session = std::str::from_utf8(session).unwrap();
            assert_eq!(cache_key, session_key(session));
            let body: Value = serde_json::from_str(&body.0).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"route": route.name, "session": session})
            );
            "sign-out"
        }
        AppStep::Reply(reply) if sign_out => {
            assert_sane_headers(&reply);
            let clears = reply
                .headers
                .iter()
                .any(|(n, v)| *n == "set-cookie" && v.contains("Max-Age=0"));
            match reply.status {
                200 => {
                    assert!(matches!(head.method, b"GET" | b"HEAD") && !clears);
                    "sign-out-page"
                }
                303 => {
                    // Nothing to end: straight to the signed-out page, the cookie cleared.
                    assert!(head.method == b"POST" && one_session.is_none() && clears);
                    assert!(reply
                        .headers
                        .contains(&("location", format!("{ISSUER}/app/signed-out"))));
                    "signed-out"
                }
                403 | 405 => {
                    assert!(!clears);
                    assert!(
                        head.method != b"POST" || head.cookies.contains(&CROSS_SITE),
                        "a same-origin POST refused"
                    );
                    "sign-out-refused"
                }
                other => panic!("sign-out answered {other}"),
            }
        }
        AppStep::Session {
            route: i,
            cache_key,
            body,
            expired,
        } => {
            assert!(!sign_out && i == index);
            let session = one_session.expect("a session step without our cookie");
            let session = std::str::from_utf8(session).unwrap();
            assert_eq!(cache_key, session_key(session));
            let body: Value = serde_json::from_str(&body.0).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"route": route.name, "session": session})
            );
            assert!(
                head.path.contains(session) || !format!("{expired:?}").contains(session),
                "the session in a reply"
            );
            assert_sane_headers(&expired);
            "session"
        }
        AppStep::Reply(reply) => {
            assert!(!sign_out);
            assert_sane_headers(&reply);
            match reply.status {
                302 | 401 => {
                    assert!(sessions.is_empty(), "a sign-in with our cookie present");
                    let get = head.method == b"GET" || head.method == b"HEAD";
                    assert_eq!(reply.status == 302, get);
                    let sign_in = format!(
                        "{ISSUER}/app/sign-in?route={}&return_to=",
                        percent_encode(&route.name)
                    );
                    let location = reply.headers.iter().find(|(n, _)| *n == "location");
                    if let Some((_, url)) = location {
                        assert!(url.starts_with(&sign_in), "{url}");
                    } else {
                        let body: Value = serde_json::from_str(&reply.body).unwrap();
                        assert!(body["sign_in_url"].as_str().unwrap().starts_with(&sign_in));
                    }
                    "sign-in"
                }
                400 => {
                    assert!(one_session.is_none() && !sessions.is_empty(), "conflict");
                    "conflict"
                }
                other => panic!("a client route answered {other}"),
            }
        }
        AppStep::Callback { .. } => panic!("a request on a route became a callback"),
    }
}

/// The unit tests' cookie headers (pairs, quotes, other routes' cookies, conflicts, junk),
/// callbacks (good, missing or repeated parameters, bad escapes, another host's route) and
/// requests on the client routes (sign-in, session, sign-out).
pub fn seeds() -> Vec<Vec<u8>> {
    let chat = &config().routes[CHAT].cookie_name;
    let admin = &config().routes[ADMIN_APP].cookie_name;
    let session = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
    let nonce = "N".repeat(43);
    let seed = |authority: &str, path: &str, method: &str, cookies: &[String]| {
        let mut fields = vec![authority.as_bytes(), path.as_bytes(), method.as_bytes()];
        fields.extend(cookies.iter().map(|c| c.as_bytes()));
        join(&fields)
    };
    let cb = CALLBACK_PATH;
    vec![
        seed("chat.example", "/page", "GET", &[]),
        seed(
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            &[format!("{chat}={session}")],
        ),
        seed(
            "chat.example",
            "/api",
            "POST",
            &[format!("{chat}={session}")],
        ),
        seed(
            "chat.example",
            "/",
            "GET",
            &[format!("a=1;  {chat} = \"{session}\" "), "x=y".into()],
        ),
        seed(
            "chat.example",
            "/",
            "GET",
            &[format!(
                "{chat}={session}; {chat}=ZZZZZZZZZZZZZZZZZZZZZZZZZZ"
            )],
        ),
        seed(
            "apps.example",
            "/admin/.warden/sign-out",
            "POST",
            &[format!("{admin}={session}; b=\"two\""), "c=3".into()],
        ),
        seed(
            "apps.example",
            "/admin/.warden/sign-out",
            "GET",
            &[format!("{admin}={session}")],
        ),
        seed(
            "apps.example",
            "/admin/.warden/sign-out",
            "POST",
            &[format!("{admin}={session}"), "cross-site".into()],
        ),
        seed("apps.example", "/admin/.warden/sign-out", "POST", &[]),
        seed(
            "apps.example:80",
            "/admin/x?y=1",
            "HEAD",
            &[format!(
                "warden_app_0badf00d={session}; warden_app_0badf00d_n=n; z=9"
            )],
        ),
        seed(
            "chat.example",
            &format!("{cb}?code=a%2Bb&state=chat"),
            "GET",
            &[format!("{chat}_n={nonce}")],
        ),
        seed(
            "apps.example",
            &format!("{cb}?state=admin-app&code=x"),
            "GET",
            &[],
        ),
        seed(
            "chat.example",
            &format!("{cb}?code=x&code=y&state=chat"),
            "GET",
            &[],
        ),
        seed(
            "chat.example",
            &format!("{cb}?code=%zz&state=chat"),
            "GET",
            &[],
        ),
        seed(
            "chat.example",
            &format!("{cb}?code=x&state=admin-app"),
            "GET",
            &[],
        ),
        seed(
            "chat.example",
            &format!("{cb}?code=&state=chat#frag"),
            "GET",
            &[],
        ),
        seed(
            "chat.example",
            "/a b/\u{fc}?x=1&y=%2F#f",
            "GET",
            &["\u{ff}\u{fe}; ;;=;".into()],
        ),
        seed(
            "CHAT.example:443",
            "/c/1?q=a b&r=1",
            "PUT",
            &[format!(
                "warden_app_31e06f7=abcdefghijklmnopqrstuvwxyz; {chat}=short"
            )],
        ),
    ]
}

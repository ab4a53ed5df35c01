//! The internal API's JSON bodies, both ends: the token service reading the filter's requests
//! (`internal::json_body` into each endpoint's body type), and the filter reading the token
//! service's answers (`upstream::classify_lookup`, `assertion::classify`,
//! `app::classify_session`, `app::classify_token`).
//!
//! * A request body is taken only when it is a JSON object of exactly the endpoint's fields,
//!   each a string, and its fields are those a lenient reader sees; anything else is the
//!   `400 invalid_request` (`no-store`).
//! * An answer is used only with status 200 and the fields a lenient reader sees: a TI that
//!   fits in a header, an assertion of three base64url parts with a positive lifetime, a
//!   session of session syntax with a `return_to` under the route; every other answer is one
//!   of the documented refusals, with headers that can go on the wire. A TI or an assertion
//!   never shows in a `Debug` output.
//!
//! Input: a mode line (`request <endpoint>`, or `answer lookup|assertion|session|token
//! <status>`; no status is no answer), then the body (the rest).

use serde_json::{json, Value};
use warden_core::app::{classify_session, classify_token, under_route, TokenAnswer};
use warden_core::assertion::{classify, Fetched};
use warden_core::internal_api::{
    AppSessionRequest, AppTokenRequest, DropRequest, UpstreamTokenRequest,
};
use warden_core::upstream::{classify_lookup, Lookup, ReplyTo, MAX_TOKEN_BYTES};
use warden_token_service::internal::json_body;

use crate::assert_sane_headers;
use crate::fixtures::{config, ADMIN_APP, CHAT, DEMO};
use crate::input::{join, Fields, Words};

/// What `run` can decide: a request body taken or refused, an answer used (a token, an
/// assertion, a session) or refused.
pub const OUTCOMES: &[&str] = &[
    "request-taken",
    "request-refused",
    "answer-used",
    "answer-refused",
];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let mode = f.text().into_owned();
    let words = Words::new(&mode);
    let body = f.rest();
    match words.first() {
        "answer" => {
            let status = words
                .after("answer")
                .and_then(|kind| words.number_after(kind))
                .and_then(|s| u32::try_from(s).ok());
            let used = match words.after("answer") {
                Some("assertion") => assertion(status, body),
                Some("session") => session(status, body),
                Some("token") => app_token(status, body),
                _ => lookup(status, body),
            };
            if used {
                "answer-used"
            } else {
                "answer-refused"
            }
        }
        _ => {
            if request(words.after("request").unwrap_or_default(), body) {
                "request-taken"
            } else {
                "request-refused"
            }
        }
    }
}

/// The object a lenient reader makes of `body`, if it is one.
fn lenient(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Checks a parse of an endpoint's body: taken ⇒ exactly `fields` (the optional ones
/// `optional`) as strings with these values; refused ⇒ the `400`.
fn request_agrees<T, B>(
    body: &[u8],
    parsed: Result<T, Box<http::Response<B>>>,
    fields: &[&str],
    optional: &[&str],
    values: impl Fn(&T) -> Vec<(&'static str, String)>,
) -> bool {
    match parsed {
        Ok(t) => {
            let object = lenient(body).expect("a taken body is a JSON object");
            for key in object.keys() {
                assert!(
                    fields.contains(&key.as_str()) || optional.contains(&key.as_str()),
                    "unknown field {key} taken"
                );
            }
            for (name, value) in values(&t) {
                match object.get(name) {
                    Some(v) => assert_eq!(v, &Value::String(value), "{name}"),
                    None => {
                        assert!(optional.contains(&name), "{name} missing but taken");
                        assert_eq!(value, "");
                    }
                }
            }
            true
        }
        Err(response) => {
            assert_eq!(response.status().as_u16(), 400);
            assert_eq!(
                response
                    .headers()
                    .get("cache-control")
                    .map(|v| v.as_bytes()),
                Some(&b"no-store"[..])
            );
            false
        }
    }
}

fn request(endpoint: &str, body: &[u8]) -> bool {
    match endpoint {
        "drop" => request_agrees(
            body,
            json_body::<DropRequest>(body, "expected a drop"),
            &["sub", "route", "access_token", "reason"],
            &["scope"],
            |d| {
                vec![
                    ("sub", d.sub.clone()),
                    ("route", d.route.clone()),
                    ("access_token", d.access_token.clone()),
                    ("reason", d.reason.clone()),
                    ("scope", d.scope.clone()),
                ]
            },
        ),
        "app-session" => request_agrees(
            body,
            json_body::<AppSessionRequest>(body, "expected a code"),
            &["route", "code", "nonce"],
            &[],
            |r| {
                vec![
                    ("route", r.route.clone()),
                    ("code", r.code.clone()),
                    ("nonce", r.nonce.clone()),
                ]
            },
        ),
        "app-token" | "app-session/end" => request_agrees(
            body,
            json_body::<AppTokenRequest>(body, "expected a session"),
            &["route", "session"],
            &[],
            |r| vec![("route", r.route.clone()), ("session", r.session.clone())],
        ),
        // upstream-token, identity-assertion
        _ => request_agrees(
            body,
            json_body::<UpstreamTokenRequest>(body, "expected a query"),
            &["sub", "route"],
            &[],
            |q| vec![("sub", q.sub.clone()), ("route", q.route.clone())],
        ),
    }
}

const TO: ReplyTo<'static> = ReplyTo {
    request_id: "7",
    cors: Some("http://app.example"),
};

/// A secret long enough, and without spaces, that it cannot be part of a redacted `Debug`.
fn secret_of(object: &Option<serde_json::Map<String, Value>>, field: &str) -> Option<String> {
    let s = object.as_ref()?.get(field)?.as_str()?;
    (s.len() >= 16 && !s.contains(' ')).then(|| s.to_owned())
}

fn lookup(status: Option<u32>, body: &[u8]) -> bool {
    let object = lenient(body);
    match classify_lookup(status, body, &config().routes[DEMO], TO) {
        Lookup::Use(token) => {
            assert_eq!(status, Some(200));
            let object = object.as_ref().expect("a token from a JSON object");
            assert_eq!(object["access_token"], token.access_token());
            assert_eq!(
                token.authorization(),
                format!("Bearer {}", token.access_token())
            );
            let t = token.access_token();
            assert!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
            assert!(t.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(object["issued_at"], token.issued_at);
            assert_eq!(object["granted_at"], token.granted_at);
            assert_eq!(
                object.get("expires_at").and_then(Value::as_i64),
                token.expires_at
            );
            let shown = format!("{token:?}");
            assert!(t.len() < 16 || !shown.contains(t), "a TI in Debug: {shown}");
            true
        }
        Lookup::Refuse(reply) => {
            assert!([401, 502, 503].contains(&reply.status), "{}", reply.status);
            assert_sane_headers(&reply);
            if let Some(secret) = secret_of(&object, "access_token") {
                assert!(!format!("{reply:?}").contains(&secret), "a TI in a reply");
            }
            false
        }
    }
}

fn assertion(status: Option<u32>, body: &[u8]) -> bool {
    let object = lenient(body);
    match classify(status, body, &config().routes[ADMIN_APP], TO) {
        Fetched::Use(a) => {
            assert_eq!(status, Some(200));
            let object = object.as_ref().expect("an assertion from a JSON object");
            assert_eq!(object["assertion"], a.value());
            let parts: Vec<&str> = a.value().split('.').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts.iter().all(|p| !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));
            assert!(a.expires_at > a.issued_at);
            assert_eq!(object["issued_at"], a.issued_at);
            assert_eq!(object["expires_at"], a.expires_at);
            if a.value().len() >= 16 {
                assert!(
                    !format!("{a:?}").contains(a.value()),
                    "an assertion in Debug"
                );
            }
            true
        }
        Fetched::Refuse(reply) => {
            assert!([401, 503].contains(&reply.status), "{}", reply.status);
            assert_sane_headers(&reply);
            if let Some(secret) = secret_of(&object, "assertion") {
                assert!(
                    !format!("{reply:?}").contains(&secret),
                    "an assertion in a reply"
                );
            }
            false
        }
    }
}

fn session(status: Option<u32>, body: &[u8]) -> bool {
    let object = lenient(body);
    let mut used = false;
    for route in [&config().routes[CHAT], &config().routes[ADMIN_APP]] {
        let reply = classify_session(status, body, route);
        assert_sane_headers(&reply);
        let header = |name: &str| {
            reply
                .headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        match reply.status {
            302 => {
                assert_eq!(status, Some(200));
                let object = object.as_ref().expect("a session from a JSON object");
                let location = header("location");
                assert_eq!(location.len(), 1);
                assert_eq!(object["return_to"], location[0]);
                assert!(under_route(route, location[0]));
                let session = object["session"].as_str().unwrap();
                assert!((16..=128).contains(&session.len()));
                assert!(session
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                assert!(object["max_age"].as_i64().unwrap() > 0);
                let cookies = header("set-cookie");
                assert!(cookies[0].starts_with(&format!("{}={session};", route.cookie_name)));
                assert!(reply.body.is_empty());
                used = true;
            }
            400 | 503 => assert!(header("set-cookie").is_empty()),
            other => panic!("a session answer became {other}"),
        }
    }
    used
}

fn app_token(status: Option<u32>, body: &[u8]) -> bool {
    let object = lenient(body);
    let error = object
        .as_ref()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_str);
    match classify_token(status, body) {
        TokenAnswer::Token(secret, expires_at) => {
            assert_eq!(status, Some(200));
            let object = object.as_ref().expect("a token from a JSON object");
            assert_eq!(object["access_token"], secret.0.as_str());
            assert_eq!(object["expires_at"], expires_at);
            if secret.0.len() >= 16 {
                assert!(!format!("{secret:?}").contains(&secret.0), "a TE in Debug");
            }
            true
        }
        TokenAnswer::SessionExpired => {
            assert_eq!((status, error), (Some(401), Some("session_expired")));
            false
        }
        TokenAnswer::AccessDenied => {
            assert_eq!((status, error), (Some(403), Some("access_denied")));
            false
        }
        TokenAnswer::Unavailable(reason) => {
            assert!(reason.starts_with("app-token-"));
            false
        }
    }
}

/// Bodies as the filter sends them and answers as the token service gives them (the unit
/// tests' good and bad answers, refusals, an Envoy `503`, no answer).
pub fn seeds() -> Vec<Vec<u8>> {
    let seed = |mode: &str, body: Value| join(&[mode.as_bytes(), body.to_string().as_bytes()]);
    let session = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
    let assertion = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    vec![
        seed(
            "request upstream-token",
            json!({"sub": "demo@example.com", "route": "demo"}),
        ),
        seed(
            "request identity-assertion",
            json!({"sub": "a", "route": "admin-app", "x": 1}),
        ),
        seed(
            "request drop",
            json!({"sub": "a", "route": "demo", "access_token": "ti-1", "reason": "insufficient_scope", "scope": "repo"}),
        ),
        seed(
            "request drop",
            json!({"sub": "a", "route": "demo", "access_token": "ti-1", "reason": "invalid_token"}),
        ),
        seed(
            "request app-session",
            json!({"route": "chat", "code": "c", "nonce": "ab".repeat(32)}),
        ),
        seed(
            "request app-token",
            json!({"route": "chat", "session": session}),
        ),
        join(&[
            b"request app-session/end",
            br#"{"route":"chat","route":"admin-app","session":"s"}"#,
        ]),
        seed(
            "answer lookup 200",
            json!({"access_token": "upstream-token-0123456789", "issued_at": 1000, "expires_at": 4600,
                   "granted_at": 1000, "after_refusal": false}),
        ),
        seed(
            "answer lookup 200",
            json!({"access_token": "has space", "issued_at": 1, "granted_at": 1}),
        ),
        seed("answer lookup 404", json!({"error": "no_token"})),
        seed("answer lookup 409", json!({"error": "upstream_refused"})),
        seed(
            "answer lookup 503",
            json!({"error": "upstream_unavailable"}),
        ),
        join(&[b"answer lookup 503", b"no healthy upstream"]),
        join(&[b"answer lookup", b""]),
        join(&[
            b"answer lookup 200",
            br#"["upstream-token-0123456789", 1000, 4600, 1000, false]"#,
        ]),
        join(&[b"answer assertion 200", br#"["a.b.c", 1000, 1300]"#]),
        join(&[
            b"answer session 200",
            br#"["AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde", 60, "https://chat.example/"]"#,
        ]),
        join(&[b"answer token 200", br#"["t", 5]"#]),
        join(&[
            b"request upstream-token",
            br#"["demo@example.com", "demo"]"#,
        ]),
        seed(
            "answer assertion 200",
            json!({"assertion": assertion, "issued_at": 1000, "expires_at": 1300}),
        ),
        seed(
            "answer assertion 200",
            json!({"assertion": "a.b", "issued_at": 1000, "expires_at": 1300}),
        ),
        seed("answer assertion 404", json!({"error": "unknown_user"})),
        seed(
            "answer session 200",
            json!({"session": session, "max_age": 43200, "return_to": "https://chat.example/c?x=1"}),
        ),
        seed(
            "answer session 200",
            json!({"session": session, "max_age": 60, "return_to": "http://apps.example/admin/x"}),
        ),
        seed(
            "answer session 200",
            json!({"session": session, "max_age": 60, "return_to": "https://evil.example/"}),
        ),
        seed("answer session 400", json!({"error": "invalid_code"})),
        seed(
            "answer token 200",
            json!({"access_token": "t", "expires_at": 5}),
        ),
        seed("answer token 401", json!({"error": "session_expired"})),
        seed("answer token 403", json!({"error": "access_denied"})),
        seed("answer token 200", json!({})),
    ]
}

//! The identity assertion: on routes with `pass_identity_headers`, the filter adds
//! `X-Warden-Jwt-Assertion`, a short-lived JWT the token service signs with its TE key, that
//! tells the MCP server who the user is (`sub`, `email`, `name`, `groups`). The server checks
//! it with the token service's JWKS. This module decides, without I/O: which header it is, when
//! a cached assertion is still usable (the TI rule, `upstream::refresh_due`), and what an answer
//! of the internal API means (`classify`).
//!
//! A client never sets the header: the filter removes any value a request arrives with, on
//! every route. An assertion never appears in a reply, a log line or a `Debug` output.

use crate::cache::{refresh_due, Renewable, RouteUserCache};
use crate::config::Route;
use crate::internal_api::{AssertionAnswer, ErrorAnswer, ErrorCode, UpstreamTokenRequest};
use crate::reply::{invalid_token, token_service_unavailable, LocalReply, ReplyTo};

/// The internal API's issuance: `{"sub", "route"}` → `{"assertion", "issued_at", "expires_at"}`.
pub use crate::internal_api::IDENTITY_ASSERTION_PATH as PATH;
pub use crate::internal_api::{
    assertion_header_names as header_names, is_client_assertion, ASSERTION_HEADER as HEADER,
    CLIENT_ASSERTION_HEADERS as CLIENT_HEADERS, POMERIUM_ASSERTION_HEADER as POMERIUM_HEADER,
    SENDABLE_ASSERTION_HEADERS as SENDABLE_HEADERS,
};
/// Larger assertions are refused as a bad answer (they go into a request header).
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;

/// A signed assertion as the internal API gave it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityAssertion {
    jwt: Box<str>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl IdentityAssertion {
    /// `None` unless `jwt` looks like a compact JWS (three base64url parts) of bounded size
    /// and the lifetime is positive: anything else cannot go into a header as it is.
    pub fn new(jwt: &str, issued_at: i64, expires_at: i64) -> Option<Self> {
        let compact = !jwt.is_empty()
            && jwt.len() <= MAX_ASSERTION_BYTES
            && jwt.split('.').count() == 3
            && jwt.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        (compact && expires_at > issued_at).then(|| Self {
            jwt: jwt.into(),
            issued_at,
            expires_at,
        })
    }

    /// The header value.
    pub fn value(&self) -> &str {
        &self.jwt
    }

    /// Still good to send: not yet within `min(30 s, lifetime / 10)` of its expiry.
    pub fn usable(&self, now: i64) -> bool {
        !refresh_due(self.issued_at, Some(self.expires_at), now)
    }
}

impl Renewable for IdentityAssertion {
    fn usable(&self, now: i64) -> bool {
        IdentityAssertion::usable(self, now)
    }
}

impl std::fmt::Debug for IdentityAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityAssertion")
            .field("jwt", &"[redacted]")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The per-worker cache of assertions, by route and user.
pub type AssertionCache = RouteUserCache<IdentityAssertion>;

/// The body of an issuance request.
pub fn request_body(sub: &str, route: &str) -> String {
    let body = UpstreamTokenRequest {
        sub: sub.into(),
        route: route.into(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// What to do with a request after the issuance call.
#[derive(Debug)]
pub enum Fetched {
    /// Send this assertion upstream (and cache it).
    Use(IdentityAssertion),
    /// Answer the client with this instead.
    Refuse(LocalReply),
}

/// Reads the internal API's answer: `status` is `None` when no answer came (transport
/// failure, timeout). A user who no longer exists gets the `401` that sends them through
/// sign-in; anything but the documented answers is the token service being unavailable, and
/// the request does not go upstream without its assertion (fail closed).
pub fn classify(status: Option<u32>, body: &[u8], route: &Route, to: ReplyTo<'_>) -> Fetched {
    match status {
        Some(200) => match crate::raw::object::<AssertionAnswer>(body)
            .and_then(|i| IdentityAssertion::new(&i.assertion, i.issued_at, i.expires_at))
        {
            Some(assertion) => Fetched::Use(assertion),
            None => Fetched::Refuse(token_service_unavailable("token-service-bad-answer", to)),
        },
        Some(404)
            if crate::raw::object::<ErrorAnswer>(body)
                .is_some_and(|r| ErrorCode::parse(&r.error) == Some(ErrorCode::UnknownUser)) =>
        {
            Fetched::Refuse(invalid_token(
                &route.challenge_invalid_token,
                "identity-unknown-user",
                "the user this token was issued to no longer exists: sign in again",
                to.cors,
            ))
        }
        _ => Fetched::Refuse(token_service_unavailable("token-service-unavailable", to)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompiledConfig;
    use std::rc::Rc;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    fn route() -> Route {
        let c = serde_json::json!({
            "version": 1,
            "issuer": "http://i",
            "jwks_static": {"keys": [{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
            "token_service": {"cluster": "ts", "authority": "127.0.0.1:9101"},
            "routes": [{
                "name": "who",
                "resource": "http://h/mcp",
                "pass_identity_headers": true,
                "policy": {"allow": {"and": [{"accept": true}]}}
            }]
        });
        let mut compiled = CompiledConfig::from_json(c.to_string().as_bytes()).unwrap();
        compiled.routes.remove(0)
    }

    const TO: ReplyTo<'static> = ReplyTo {
        request_id: "req-1",
        cors: Some("http://app"),
    };

    fn refused(status: Option<u32>, body: &[u8]) -> LocalReply {
        match classify(status, body, &route(), TO) {
            Fetched::Refuse(reply) => reply,
            Fetched::Use(a) => panic!("{a:?}"),
        }
    }

    #[test]
    fn client_assertions_are_recognised_in_every_spelling() {
        for name in [
            "x-warden-jwt-assertion",
            "x-pomerium-jwt-assertion",
            "x-pomerium-assertion",
            "X-Pomerium-Jwt-Assertion",
            "x_pomerium_jwt_assertion",
            "X_Warden_Jwt_Assertion",
            "x-pomerium_assertion",
        ] {
            assert!(is_client_assertion(name.as_bytes()), "{name}");
        }
        for name in [
            "x-pomerium-jwt-assertions",
            "x-pomerium-jwt",
            "authorization",
            "x-warden-jwt-assertion ",
        ] {
            assert!(!is_client_assertion(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_route_sends_the_assertion_under_known_names_only() {
        let names = |v: &[&str]| header_names(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(names(&["x-warden-jwt-assertion"]), Ok(vec![HEADER]));
        assert_eq!(
            names(&["X-Pomerium-Jwt-Assertion", "x-warden-jwt-assertion"]),
            Ok(vec![POMERIUM_HEADER, HEADER])
        );
        assert_eq!(names(&[]).unwrap_err().0, None);
        assert_eq!(names(&["x-user"]).unwrap_err().0, Some(0));
        assert_eq!(
            names(&[HEADER, "X-WARDEN-JWT-ASSERTION"]).unwrap_err().0,
            Some(1)
        );
        // Pomerium's other name is only ever removed, never sent.
        assert_eq!(names(&["x-pomerium-assertion"]).unwrap_err().0, Some(0));
    }

    #[test]
    fn an_issued_assertion_is_used_until_shortly_before_it_expires() {
        let answer = format!(r#"{{"assertion": "{JWT}", "issued_at": 1000, "expires_at": 1300}}"#);
        let Fetched::Use(a) = classify(Some(200), answer.as_bytes(), &route(), TO) else {
            panic!()
        };
        assert_eq!(a.value(), JWT);
        assert_eq!((a.issued_at, a.expires_at), (1000, 1300));
        // Five minutes: renewed from 30 s before the expiry on.
        assert!(a.usable(1000));
        assert!(a.usable(1269));
        assert!(!a.usable(1270));
        assert!(!a.usable(1400));
    }

    #[test]
    fn an_answer_that_is_not_an_object_is_a_bad_answer() {
        // Found by the fuzz target `internal_api_bodies`: serde reads a struct from an array
        // of its values, so `["a.b.c", 1000, 1300]` was used as an assertion.
        let r = refused(Some(200), format!(r#"["{JWT}", 1000, 1300]"#).as_bytes());
        assert_eq!((r.status, r.reason), (503, "token-service-bad-answer"));
        assert_eq!(refused(Some(404), br#"["unknown_user"]"#).status, 503);
    }

    #[test]
    fn only_compact_jws_of_bounded_size_goes_into_the_header() {
        assert!(IdentityAssertion::new(JWT, 0, 300).is_some());
        for bad in [
            "", "a.b", "a.b.c.d", "a..c", "a.b.c\n", "a.b.c d", "a.b.c+", "a.b.=",
        ] {
            assert!(IdentityAssertion::new(bad, 0, 300).is_none(), "{bad:?}");
        }
        let huge = format!("a.{}.c", "b".repeat(MAX_ASSERTION_BYTES));
        assert!(IdentityAssertion::new(&huge, 0, 300).is_none());
        // No lifetime: refused, it could never be cached or trusted.
        assert!(IdentityAssertion::new(JWT, 300, 300).is_none());
    }

    #[test]
    fn an_unknown_user_signs_in_again() {
        let reply = refused(Some(404), br#"{"error": "unknown_user"}"#);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.reason, "identity-unknown-user");
        let challenge = reply
            .headers
            .iter()
            .find(|(n, _)| *n == "www-authenticate")
            .map(|(_, v)| v.clone());
        assert_eq!(challenge, Some(route().challenge_invalid_token));
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| *n == "access-control-allow-origin" && v == "http://app"));
    }

    #[test]
    fn anything_else_fails_closed_with_a_503() {
        let cases: Vec<(Option<u32>, &[u8])> = vec![
            (None, b""),
            (Some(404), br#"{"error": "unknown_route"}"#),
            (Some(404), b"not found"),
            (Some(400), br#"{"error": "identity_headers_off"}"#),
            (Some(401), br#"{"error": "unauthorized"}"#),
            (Some(500), b""),
            (Some(503), b"no healthy upstream"),
            (Some(200), b"{"),
            (
                Some(200),
                br#"{"assertion": "x", "issued_at": 1, "expires_at": 2}"#,
            ),
            (Some(200), br#"{"assertion": "a.b.c", "expires_at": 2}"#),
        ];
        for (status, body) in cases {
            let reply = refused(status, body);
            assert_eq!(reply.status, 503, "{status:?}");
            let b: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(
                b["error"]["message"], "the token service is unavailable",
                "{status:?}"
            );
            assert_eq!(b["error"]["data"]["request-id"], "req-1");
        }
    }

    #[test]
    fn the_request_body_is_json() {
        let v: serde_json::Value = serde_json::from_str(&request_body("a\"b", "who")).unwrap();
        assert_eq!(v, serde_json::json!({"sub": "a\"b", "route": "who"}));
    }

    #[test]
    fn the_cache_serves_each_user_and_route_until_renewal_and_never_shows_the_jwt() {
        let mut cache = AssertionCache::new(4, 2);
        let a = |iat: i64| Rc::new(IdentityAssertion::new(JWT, iat, iat + 300).unwrap());
        cache.put(0, "alice", a(1000), 1000);
        assert!(cache.get(0, "alice", 1100).is_some());
        assert!(cache.get(1, "alice", 1100).is_none());
        assert!(cache.get(0, "bob", 1100).is_none());
        // Due: forgotten, so the next request asks for a fresh one.
        assert!(cache.get(0, "alice", 1270).is_none());
        assert!(cache.is_empty());
        for (i, who) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            cache.put(i % 2, who, a(1000), 1000);
            assert!(cache.len() <= 4);
        }
        assert!(!format!("{cache:?}").contains(JWT));
    }
}

//! Upstream tokens (TI): the user's own token from an upstream OAuth provider, which routes
//! with `upstream_oauth` send to their MCP server. The token service keeps and refreshes
//! them; the filter asks its internal API on a cache miss. This module decides, without I/O:
//! when a cached TI is still usable (`refresh_due`, shared with the token service), what an
//! answer of the internal API means (`classify_lookup`), whether the MCP server refused the TI
//! (`refused_by_upstream`), and what the client gets then (`refused_reply`).
//!
//! A TI never appears in a reply, a log line or a `Debug` output.

pub use crate::cache::{refresh_due, Renewable, RouteUserCache};
use crate::config::Route;
use crate::internal_api::{
    DropRequest, ErrorAnswer, ErrorCode, UpstreamTokenAnswer, UpstreamTokenRequest,
};
use crate::reply::{gateway_error, invalid_token, LocalReply};
pub use crate::reply::{token_service_unavailable, ReplyTo, GATEWAY_ERROR};

pub use crate::cache::REFRESH_MARGIN_SECONDS;
pub use crate::internal_api::{
    UPSTREAM_TOKEN_DROP_PATH as DROP_PATH, UPSTREAM_TOKEN_PATH as LOOKUP_PATH,
};
/// A TI refused within this long of the user's consent is not sent back to consent again.
pub const FRESH_GRANT_SECONDS: i64 = 60;
/// Larger TIs are refused as a bad answer (they go into a request header).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Internal API answers larger than this are not read (a bad answer).
pub use crate::internal_api::MAX_ANSWER_BYTES;

/// Whether a TI the MCP server refused was granted so recently (`granted_at`, the user's last
/// consent upstream) that sending the user through consent again would only loop.
pub fn refused_right_after_grant(granted_at: i64, now: i64) -> bool {
    now.saturating_sub(granted_at) < FRESH_GRANT_SECONDS
}

/// A TI as the internal API gave it. The header value is kept whole, so the warm path sets it
/// without formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    /// `Bearer <TI>`.
    header: Box<str>,
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    pub granted_at: i64,
    /// The grant re-ran consent because the server had refused the previous token: a refusal
    /// right after it means consent cannot fix it.
    pub after_refusal: bool,
}

const BEARER: &str = "Bearer ";

impl UpstreamToken {
    /// `None` when the token cannot go into a header (empty, too long, not visible ASCII).
    pub fn new(
        access_token: &str,
        issued_at: i64,
        expires_at: Option<i64>,
        granted_at: i64,
    ) -> Option<Self> {
        let fits = !access_token.is_empty()
            && access_token.len() <= MAX_TOKEN_BYTES
            && access_token.bytes().all(|b| b.is_ascii_graphic());
        fits.then(|| Self {
            header: format!("{BEARER}{access_token}").into(),
            issued_at,
            expires_at,
            granted_at,
            after_refusal: false,
        })
    }

    /// Marks a token granted after the server refused the previous one.
    pub fn after_refusal(mut self, after_refusal: bool) -> Self {
        self.after_refusal = after_refusal;
        self
    }

    /// The request's `authorization` header value upstream.
    pub fn authorization(&self) -> &str {
        &self.header
    }

    pub fn access_token(&self) -> &str {
        self.header.get(BEARER.len()..).unwrap_or_default()
    }

    /// Still good to send (not yet due for renewal).
    pub fn usable(&self, now: i64) -> bool {
        !refresh_due(self.issued_at, self.expires_at, now)
    }
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("access_token", &"[redacted]")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("granted_at", &self.granted_at)
            .field("after_refusal", &self.after_refusal)
            .finish()
    }
}

/// The body of a look-up.
pub fn lookup_body(sub: &str, route: &str) -> String {
    let body = UpstreamTokenRequest {
        sub: sub.into(),
        route: route.into(),
    };
    // Serializing strings cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// The body of a drop: the TI the server refused, and why.
pub fn drop_body(sub: &str, route: &str, token: &UpstreamToken, refusal: &Refusal) -> String {
    let body = DropRequest {
        sub: sub.into(),
        route: route.into(),
        access_token: token.access_token().into(),
        reason: refusal.reason.as_str().into(),
        scope: refusal.scope.clone(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// What to do with a request after the look-up.
#[derive(Debug)]
pub enum Lookup {
    /// Send this TI upstream (and cache it).
    Use(UpstreamToken),
    /// Answer the client with this instead.
    Refuse(LocalReply),
}

/// Reads the internal API's answer to a look-up: `status` is `None` when no answer came
/// (transport failure, timeout). Anything but the documented answers is the token service
/// being unavailable: an Envoy `503` for an unreachable cluster must not read as the
/// provider's.
pub fn classify_lookup(status: Option<u32>, body: &[u8], route: &Route, to: ReplyTo<'_>) -> Lookup {
    match status {
        Some(200) => match crate::raw::object::<UpstreamTokenAnswer>(body).and_then(|g| {
            UpstreamToken::new(&g.access_token, g.issued_at, g.expires_at, g.granted_at)
                .map(|t| t.after_refusal(g.after_refusal))
        }) {
            Some(token) => Lookup::Use(token),
            None => Lookup::Refuse(token_service_unavailable("token-service-bad-answer", to)),
        },
        Some(status @ (404 | 409 | 503)) => {
            let error = crate::raw::object::<ErrorAnswer>(body)
                .and_then(|r| ErrorCode::parse(&r.error))
                .filter(|code| u32::from(code.status()) == status);
            Lookup::Refuse(match error {
                Some(ErrorCode::NoToken) => no_token(route, to),
                Some(ErrorCode::UpstreamRefused) => refused_after_grant(None, to),
                Some(ErrorCode::UpstreamUnavailable) => provider_unavailable(to),
                _ => token_service_unavailable("token-service-unavailable", to),
            })
        }
        _ => Lookup::Refuse(token_service_unavailable("token-service-unavailable", to)),
    }
}

/// No usable TI: the client signs in again, and the token service runs upstream consent.
fn no_token(route: &Route, to: ReplyTo<'_>) -> LocalReply {
    invalid_token(
        &route.challenge_invalid_token,
        "upstream-token-missing",
        "this MCP server needs your account at its upstream provider: authorize again to connect it",
        to.cors,
    )
}

/// A TI the user had just granted was refused: consent again would loop, so the client gets
/// an error for a person (the route's scopes are probably wrong).
fn refused_after_grant(scope: Option<&str>, to: ReplyTo<'_>) -> LocalReply {
    let mut message = String::from(
        "the upstream MCP server refused the token the user just granted; check this route's upstream_oauth2.scopes",
    );
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        message.push_str(&format!(" (the server asks for scope \"{scope}\")"));
    }
    gateway_error(502, "upstream-token-refused-after-grant", &message, to)
}

fn provider_unavailable(to: ReplyTo<'_>) -> LocalReply {
    gateway_error(
        503,
        "upstream-provider-unavailable",
        "the upstream OAuth provider is unavailable",
        to,
    )
    .with_header("retry-after", "5")
}

/// Why the MCP server refused a TI, as the drop call names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    InvalidToken,
    InsufficientScope,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidToken => "invalid_token",
            DropReason::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The MCP server refused the TI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DropReason,
    /// The `scope` parameter of the server's Bearer challenge, or empty.
    pub scope: String,
}

/// Whether an upstream response refuses the TI it was sent: any `401`, or a `403` whose
/// Bearer challenge says `error="insufficient_scope"`. Any other `403` is the server's own
/// refusal of the call and passes through. `www_authenticate`: every such header's value.
pub fn refused_by_upstream(status: u32, www_authenticate: &[&[u8]]) -> Option<Refusal> {
    if status != 401 && status != 403 {
        return None;
    }
    let bearer = bearer_challenge(www_authenticate);
    let param = |name: &str| {
        bearer.as_ref().and_then(|params| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    };
    let scope = param("scope").unwrap_or_default();
    if status == 401 {
        return Some(Refusal {
            reason: DropReason::InvalidToken,
            scope,
        });
    }
    (param("error").as_deref() == Some("insufficient_scope")).then_some(Refusal {
        reason: DropReason::InsufficientScope,
        scope,
    })
}

/// What the client gets instead of the server's refusal: normally the `401` challenge that
/// re-runs authorization (and upstream consent); a TI granted moments ago, by a consent that
/// followed a refusal, gets a `502`, so a server that refuses every token the user grants
/// cannot set off a loop.
pub fn refused_reply(
    route: &Route,
    refusal: &Refusal,
    token: &UpstreamToken,
    now: i64,
    to: ReplyTo<'_>,
) -> LocalReply {
    if token.after_refusal && refused_right_after_grant(token.granted_at, now) {
        return refused_after_grant(Some(&refusal.scope), to);
    }
    invalid_token(
        &route.challenge_invalid_token,
        "upstream-token-refused",
        "the upstream MCP server refused your upstream account's token: authorize again to renew it",
        to.cors,
    )
}

/// The parameters of the first `Bearer` challenge among `WWW-Authenticate` values (RFC 9110
/// §11.6.1: challenges separated by commas, parameters `name=token` or `name="quoted"`).
pub fn bearer_challenge(values: &[&[u8]]) -> Option<Vec<(String, String)>> {
    values.iter().find_map(|value| {
        parse_challenges(&String::from_utf8_lossy(value))
            .into_iter()
            .find(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, params)| params)
    })
}

type Challenge = (String, Vec<(String, String)>);

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)
}

/// Every challenge in one header value, leniently: what cannot be read is skipped.
fn parse_challenges(value: &str) -> Vec<Challenge> {
    let chars: Vec<char> = value.chars().collect();
    let mut at = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |at: &mut usize| {
        while chars.get(*at).is_some_and(|c| *c == ' ' || *c == '\t') {
            *at += 1;
        }
    };
    while at < chars.len() {
        skip_ws(&mut at);
        if chars.get(at) == Some(&',') {
            at += 1;
            continue;
        }
        let start = at;
        while chars.get(at).is_some_and(|c| is_tchar(*c)) {
            at += 1;
        }
        if at == start {
            // Not a token: skip the character.
            at += 1;
            continue;
        }
        let word: String = chars[start..at].iter().collect();
        let mut after = at;
        skip_ws(&mut after);
        if chars.get(after) == Some(&'=') {
            let mut value_at = after + 1;
            skip_ws(&mut value_at);
            match chars.get(value_at) {
                // token68 padding (`abc==`) or an empty value: nothing to keep.
                None | Some('=') | Some(',') => {
                    at = value_at;
                    while chars.get(at) == Some(&'=') {
                        at += 1;
                    }
                }
                Some('"') => {
                    let mut text = String::new();
                    at = value_at + 1;
                    while let Some(c) = chars.get(at) {
                        at += 1;
                        match c {
                            '"' => break,
                            '\\' => {
                                if let Some(escaped) = chars.get(at) {
                                    text.push(*escaped);
                                    at += 1;
                                }
                            }
                            c => text.push(*c),
                        }
                    }
                    if let Some((_, params)) = out.last_mut() {
                        params.push((word, text));
                    }
                }
                Some(_) => {
                    at = value_at;
                    let begin = at;
                    while chars.get(at).is_some_and(|c| is_tchar(*c)) {
                        at += 1;
                    }
                    let text: String = chars[begin..at].iter().collect();
                    if let Some((_, params)) = out.last_mut() {
                        params.push((word, text));
                    }
                }
            }
        } else if out.last().is_some_and(|(_, params)| params.is_empty())
            && chars.get(start.wrapping_sub(1)) == Some(&' ')
            && chars.get(after).is_none_or(|c| *c == ',')
            && !last_was_comma(&chars, start)
        {
            // A token68 credential after the scheme (`Negotiate abc`): not a scheme.
            at = after;
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// Whether the last non-blank character before `at` is a comma (a new challenge may start).
fn last_was_comma(chars: &[char], at: usize) -> bool {
    chars[..at]
        .iter()
        .rev()
        .find(|c| **c != ' ' && **c != '\t')
        .is_none_or(|c| *c == ',')
}

impl Renewable for UpstreamToken {
    fn usable(&self, now: i64) -> bool {
        UpstreamToken::usable(self, now)
    }
}

/// The per-worker cache of TIs.
pub type UpstreamTokenCache = RouteUserCache<UpstreamToken>;

impl RouteUserCache<UpstreamToken> {
    /// Forgets the TI the server refused, unless another request already cached a newer one.
    pub fn remove(&mut self, route: usize, sub: &str, refused: &UpstreamToken) -> bool {
        self.remove_if(route, sub, |t| t.access_token() == refused.access_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompiledConfig;
    use serde_json::Value;
    use std::rc::Rc;

    fn route() -> Route {
        let c = serde_json::json!({
            "version": 1,
            "issuer": "http://i",
            "jwks_static": {"keys": [{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
            "token_service": {"cluster": "ts", "authority": "127.0.0.1:9101"},
            "routes": [{
                "name": "gh",
                "resource": "http://h/mcp",
                "scopes": ["mcp"],
                "upstream_oauth": true,
                "policy": {"allow": {"and": [{"accept": true}]}}
            }]
        });
        let mut compiled = CompiledConfig::from_json(c.to_string().as_bytes()).unwrap();
        compiled.routes.remove(0)
    }

    const TO: ReplyTo<'static> = ReplyTo {
        request_id: "req-1",
        cors: None,
    };

    fn body(reply: &LocalReply) -> Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn refresh_is_due_thirty_seconds_before_expiry_for_long_lived_tokens() {
        // One hour: the margin is 30 s.
        assert!(!refresh_due(0, Some(3600), 3569));
        assert!(refresh_due(0, Some(3600), 3570));
        assert!(refresh_due(0, Some(3600), 3600));
        assert!(refresh_due(0, Some(3600), 9999));
    }

    #[test]
    fn refresh_is_due_at_nine_tenths_of_a_short_lifetime() {
        // 100 s: the margin is 10 s.
        assert!(!refresh_due(1000, Some(1100), 1089));
        assert!(refresh_due(1000, Some(1100), 1090));
        // 300 s is where the two rules meet.
        assert!(!refresh_due(0, Some(300), 269));
        assert!(refresh_due(0, Some(300), 270));
        // Under 10 s the tenth rounds up to a second: due before expiry, never only at it.
        assert!(!refresh_due(0, Some(5), 3));
        assert!(refresh_due(0, Some(5), 4));
        assert!(!refresh_due(0, Some(9), 7));
        assert!(refresh_due(0, Some(9), 8));
        // 101 s: 10.1 rounds up to 11.
        assert!(!refresh_due(0, Some(101), 89));
        assert!(refresh_due(0, Some(101), 90));
    }

    #[test]
    fn a_token_without_expiry_is_never_due_and_a_backwards_one_is_due_at_expiry() {
        assert!(!refresh_due(0, None, i64::MAX));
        assert!(refresh_due(100, Some(50), 50));
        assert!(!refresh_due(100, Some(50), 49));
        assert!(!refresh_due(i64::MIN, Some(i64::MAX), 0));
    }

    #[test]
    fn an_answer_that_is_not_an_object_is_a_bad_answer() {
        // Found by the fuzz target `internal_api_bodies`: serde reads a struct from an array
        // of its values, so `["ti", 1000, 4600, 1000, false]` was used as a TI.
        let refused = |status, body: &[u8]| match classify_lookup(status, body, &route(), TO) {
            Lookup::Refuse(r) => (r.status, r.reason),
            Lookup::Use(t) => panic!("{t:?}"),
        };
        assert_eq!(
            refused(Some(200), br#"["upstream-ti", 1000, 4600, 1000, false]"#),
            (503, "token-service-bad-answer")
        );
        assert_eq!(
            refused(Some(404), br#"["no_token"]"#),
            (503, "token-service-unavailable")
        );
        assert!(matches!(
            classify_lookup(
                Some(200),
                br#" {"access_token": "ti", "issued_at": 1, "granted_at": 1}"#,
                &route(),
                TO
            ),
            Lookup::Use(_)
        ));
    }

    #[test]
    fn usable_is_the_opposite_of_refresh_due() {
        let t = UpstreamToken::new("ti", 0, Some(3600), 0).unwrap();
        assert!(t.usable(3569));
        assert!(!t.usable(3570));
        assert!(UpstreamToken::new("ti", 0, None, 0)
            .unwrap()
            .usable(i64::MAX));
    }

    #[test]
    fn a_refusal_within_a_minute_of_consent_is_right_after_the_grant() {
        assert!(refused_right_after_grant(1000, 1000));
        assert!(refused_right_after_grant(1000, 1059));
        assert!(!refused_right_after_grant(1000, 1060));
        // A grant "from the future" (clock skew) is fresh.
        assert!(refused_right_after_grant(2000, 1000));
        assert!(!refused_right_after_grant(i64::MIN, i64::MAX));
    }

    #[test]
    fn tokens_that_cannot_be_a_header_value_are_refused() {
        assert!(UpstreamToken::new("", 0, None, 0).is_none());
        assert!(UpstreamToken::new("a b", 0, None, 0).is_none());
        assert!(UpstreamToken::new("a\r\nx-evil: 1", 0, None, 0).is_none());
        assert!(UpstreamToken::new("tök", 0, None, 0).is_none());
        assert!(UpstreamToken::new(&"x".repeat(MAX_TOKEN_BYTES + 1), 0, None, 0).is_none());
        let t = UpstreamToken::new("gho_abc.DEF-1~+/=", 0, None, 0).unwrap();
        assert_eq!(t.authorization(), "Bearer gho_abc.DEF-1~+/=");
        assert_eq!(t.access_token(), "gho_abc.DEF-1~+/=");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let t = UpstreamToken::new("gho_secret", 1, Some(2), 3).unwrap();
        let shown = format!("{t:?} {:?}", Lookup::Use(t.clone()));
        assert!(!shown.contains("gho_secret"), "{shown}");
        let mut cache = UpstreamTokenCache::new(4, 1);
        cache.put(0, "alice", Rc::new(t), 0);
        let shown = format!("{cache:?}");
        assert!(!shown.contains("gho_secret"), "{shown}");
    }

    #[test]
    fn request_bodies_are_json() {
        let v: Value = serde_json::from_str(&lookup_body("alice\"", "gh")).unwrap();
        assert_eq!(v, serde_json::json!({"sub": "alice\"", "route": "gh"}));
        let t = UpstreamToken::new("gho_1", 0, None, 0).unwrap();
        let refusal = Refusal {
            reason: DropReason::InsufficientScope,
            scope: "repo read:org".into(),
        };
        let v: Value = serde_json::from_str(&drop_body("alice", "gh", &t, &refusal)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sub": "alice", "route": "gh", "access_token": "gho_1", "reason": "insufficient_scope", "scope": "repo read:org"})
        );
    }

    #[test]
    fn a_granted_token_is_used() {
        let answer =
            br#"{"access_token": "gho_1", "issued_at": 10, "expires_at": 3610, "granted_at": 5}"#;
        match classify_lookup(Some(200), answer, &route(), TO) {
            Lookup::Use(t) => {
                assert_eq!(t.access_token(), "gho_1");
                assert_eq!(
                    (t.issued_at, t.expires_at, t.granted_at),
                    (10, Some(3610), 5)
                );
            }
            other => panic!("{other:?}"),
        }
        let no_expiry = br#"{"access_token": "gho_1", "issued_at": 10, "expires_at": null, "granted_at": 5, "extra": 1}"#;
        assert!(matches!(
            classify_lookup(Some(200), no_expiry, &route(), TO),
            Lookup::Use(UpstreamToken {
                expires_at: None,
                ..
            })
        ));
    }

    fn refusal(status: Option<u32>, body: &[u8]) -> LocalReply {
        match classify_lookup(status, body, &route(), TO) {
            Lookup::Refuse(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_token_sends_the_client_back_through_authorization() {
        let reply = refusal(
            Some(404),
            br#"{"error": "no_token", "error_description": "x"}"#,
        );
        assert_eq!(reply.status, 401);
        assert_eq!(reply.reason, "upstream-token-missing");
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some(route().challenge_invalid_token.as_str())
        );
        assert_eq!(body(&reply)["error"], "invalid_token");
    }

    #[test]
    fn a_token_refused_right_after_consent_is_a_502_not_a_loop() {
        let reply = refusal(Some(409), br#"{"error": "upstream_refused"}"#);
        assert_eq!(reply.status, 502);
        assert_eq!(header(&reply, "www-authenticate"), None);
        let b = body(&reply);
        assert_eq!(b["error"]["code"], GATEWAY_ERROR);
        assert_eq!(b["error"]["data"]["request-id"], "req-1");
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_oauth2.scopes"));
    }

    #[test]
    fn a_provider_outage_is_a_503_naming_the_provider() {
        let reply = refusal(Some(503), br#"{"error": "upstream_unavailable"}"#);
        assert_eq!(reply.status, 503);
        assert_eq!(reply.reason, "upstream-provider-unavailable");
        assert_eq!(
            body(&reply)["error"]["message"],
            "the upstream OAuth provider is unavailable"
        );
        assert_eq!(header(&reply, "retry-after"), Some("5"));
    }

    #[test]
    fn anything_else_is_the_token_service_being_unavailable() {
        let cases: Vec<(Option<u32>, &[u8])> = vec![
            (None, b""),
            (Some(500), br#"{"error": "no_token"}"#),
            (Some(401), br#"{"error": "invalid_credential"}"#),
            // Envoy's own 503 for an unreachable cluster is not the provider's.
            (Some(503), b"no healthy upstream"),
            (Some(404), b"not found"),
            (Some(409), br#"{"error": "no_token"}"#),
            (Some(200), b"{"),
            (Some(200), br#"{"access_token": "gho_1"}"#),
            (
                Some(200),
                br#"{"access_token": "", "issued_at": 1, "granted_at": 1}"#,
            ),
            (
                Some(200),
                br#"{"access_token": "a\nb", "issued_at": 1, "granted_at": 1}"#,
            ),
        ];
        for (status, answer) in cases {
            let reply = refusal(status, answer);
            assert_eq!(reply.status, 503, "{status:?}");
            assert_eq!(
                body(&reply)["error"]["message"],
                "the token service is unavailable",
                "{status:?}"
            );
        }
    }

    #[test]
    fn replies_carry_cors_for_browser_clients_and_never_the_token() {
        let to = ReplyTo {
            request_id: "r",
            cors: Some("http://app"),
        };
        for reply in [
            classify_lookup(Some(404), br#"{"error": "no_token"}"#, &route(), to),
            classify_lookup(Some(409), br#"{"error": "upstream_refused"}"#, &route(), to),
            classify_lookup(None, b"", &route(), to),
        ] {
            let Lookup::Refuse(reply) = reply else {
                panic!()
            };
            assert_eq!(
                header(&reply, "access-control-allow-origin"),
                Some("http://app")
            );
        }
    }

    fn upstream(status: u32, challenges: &[&str]) -> Option<Refusal> {
        let values: Vec<&[u8]> = challenges.iter().map(|c| c.as_bytes()).collect();
        refused_by_upstream(status, &values)
    }

    #[test]
    fn any_upstream_401_refuses_the_token() {
        assert_eq!(
            upstream(401, &[]),
            Some(Refusal {
                reason: DropReason::InvalidToken,
                scope: String::new()
            })
        );
        assert_eq!(
            upstream(401, &["Basic realm=\"x\""]).map(|r| r.reason),
            Some(DropReason::InvalidToken)
        );
        assert_eq!(
            upstream(401, &["Bearer error=\"invalid_token\", scope=\"repo\""]),
            Some(Refusal {
                reason: DropReason::InvalidToken,
                scope: "repo".into()
            })
        );
    }

    #[test]
    fn a_403_for_insufficient_scope_refuses_the_token_with_its_scope() {
        assert_eq!(
            upstream(
                403,
                &["Bearer realm=\"gh\", error=\"insufficient_scope\", scope=\"repo read:org\""]
            ),
            Some(Refusal {
                reason: DropReason::InsufficientScope,
                scope: "repo read:org".into()
            })
        );
        // Case-insensitive scheme and names, token values, spaces around '='.
        assert_eq!(
            upstream(403, &["bearer ERROR = insufficient_scope, Scope=repo"]),
            Some(Refusal {
                reason: DropReason::InsufficientScope,
                scope: "repo".into()
            })
        );
        // Another challenge first, in the same header or in another.
        assert_eq!(
            upstream(
                403,
                &["Basic realm=\"a, b\", Bearer error=\"insufficient_scope\", scope=\"a b\""]
            )
            .map(|r| r.scope),
            Some("a b".into())
        );
        assert_eq!(
            upstream(
                403,
                &[
                    "Negotiate abc==",
                    "Bearer error=\"insufficient_scope\", scope=\"x\\\"y\""
                ]
            )
            .map(|r| r.scope),
            Some("x\"y".into())
        );
        // No scope parameter: an empty scope.
        assert_eq!(
            upstream(403, &["Bearer error=\"insufficient_scope\""]).map(|r| r.scope),
            Some(String::new())
        );
    }

    #[test]
    fn other_403s_and_other_statuses_pass_through() {
        assert_eq!(upstream(403, &[]), None);
        assert_eq!(upstream(403, &["Bearer error=\"invalid_request\""]), None);
        assert_eq!(
            upstream(403, &["Bearer realm=\"insufficient_scope\""]),
            None
        );
        // The error of another scheme's challenge is not the Bearer one.
        assert_eq!(
            upstream(403, &["Custom error=\"insufficient_scope\""]),
            None
        );
        assert_eq!(
            upstream(403, &["Bearer error=\"insufficient_scopes\""]),
            None
        );
        for status in [200, 400, 404, 500, 502] {
            assert_eq!(
                upstream(status, &["Bearer error=\"insufficient_scope\""]),
                None
            );
        }
    }

    #[test]
    fn challenges_are_parsed_leniently() {
        let parsed = parse_challenges("Basic abc, Bearer a=1, b=\"two, 2\",c=3, Digest x=\"y\"");
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert_eq!(parsed[0], ("Basic".into(), vec![]));
        assert_eq!(
            parsed[1],
            (
                "Bearer".into(),
                vec![
                    ("a".into(), "1".into()),
                    ("b".into(), "two, 2".into()),
                    ("c".into(), "3".into())
                ]
            )
        );
        assert_eq!(parsed[2], ("Digest".into(), vec![("x".into(), "y".into())]));
        // Garbage never panics and never invents a challenge parameter.
        for junk in [
            "",
            ",,,",
            "=",
            "\"",
            "Bearer \"unterminated",
            "Bearer a=",
            "Bearer a=\"\\",
            "é=é",
        ] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(
            bearer_challenge(&[b"Bearer scope=\"unterminated"]),
            Some(vec![("scope".into(), "unterminated".into())])
        );
    }

    #[test]
    fn a_refused_token_sends_the_client_through_authorization_again() {
        let r = Refusal {
            reason: DropReason::InvalidToken,
            scope: String::new(),
        };
        let reply = refused_reply(&route(), &r, &granted(1000, true), 1060, TO);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.reason, "upstream-token-refused");
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some(route().challenge_invalid_token.as_str())
        );
    }

    fn granted(at: i64, after_refusal: bool) -> UpstreamToken {
        UpstreamToken::new("ti", at, Some(at + 3600), at)
            .unwrap()
            .after_refusal(after_refusal)
    }

    #[test]
    fn a_full_cache_frees_a_batch_rather_than_scanning_on_every_miss() {
        let mut cache = UpstreamTokenCache::new(16, 2);
        let token = |n: i64| Rc::new(UpstreamToken::new(&format!("ti{n}"), 0, None, 0).unwrap());
        for n in 0..16 {
            cache.put((n % 2) as usize, &format!("u{n}"), token(n), 10);
        }
        assert_eq!(cache.len(), 16);
        // Full of usable tokens: one insert frees capacity / 8 = 2 entries, then adds itself.
        cache.put(0, "new", token(99), 10);
        assert_eq!(cache.len(), 15);
        assert!(cache.get(0, "new", 10).is_some());
        // The next insert finds room without evicting.
        cache.put(1, "another", token(100), 10);
        assert_eq!(cache.len(), 16);
    }

    #[test]
    fn a_first_grant_refused_at_once_still_goes_through_authorization() {
        // A user who revokes the app at the provider a moment after connecting it is sent
        // through consent again: only a consent that followed a refusal can loop.
        let r = Refusal {
            reason: DropReason::InvalidToken,
            scope: String::new(),
        };
        let reply = refused_reply(&route(), &r, &granted(1000, false), 1001, TO);
        assert_eq!(reply.status, 401);
        // The lookup answer carries the mark.
        let answer = br#"{"access_token":"t","issued_at":1,"granted_at":1,"after_refusal":true}"#;
        match classify_lookup(Some(200), answer, &route(), TO) {
            Lookup::Use(t) => assert!(t.after_refusal),
            Lookup::Refuse(r) => panic!("{}", r.status),
        }
    }

    #[test]
    fn a_token_refused_within_a_minute_of_consent_breaks_the_loop() {
        let r = Refusal {
            reason: DropReason::InsufficientScope,
            scope: "repo".into(),
        };
        let reply = refused_reply(&route(), &r, &granted(1000, true), 1059, TO);
        assert_eq!(reply.status, 502);
        assert_eq!(reply.reason, "upstream-token-refused-after-grant");
        assert_eq!(header(&reply, "www-authenticate"), None);
        let message = body(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("just granted"), "{message}");
        assert!(message.contains("\"repo\""), "{message}");
    }

    fn token(name: &str, expires_at: Option<i64>) -> Rc<UpstreamToken> {
        Rc::new(UpstreamToken::new(name, 0, expires_at, 0).unwrap())
    }

    #[test]
    fn the_cache_serves_usable_tokens_by_route_and_user() {
        let mut cache = UpstreamTokenCache::new(10, 2);
        cache.put(0, "alice", token("a0", Some(3600)), 0);
        cache.put(1, "alice", token("a1", None), 0);
        assert_eq!(cache.get(0, "alice", 100).unwrap().access_token(), "a0");
        assert_eq!(cache.get(1, "alice", 100).unwrap().access_token(), "a1");
        assert!(cache.get(0, "bob", 100).is_none());
        assert!(cache.get(7, "alice", 100).is_none());
        // Due for renewal: forgotten, the next request looks it up again.
        assert!(cache.get(0, "alice", 3570).is_none());
        assert_eq!(cache.len(), 1);
        // A token already due is not kept at all.
        cache.put(0, "bob", token("b", Some(10)), 10);
        assert!(cache.get(0, "bob", 10).is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut cache = UpstreamTokenCache::new(3, 1);
        cache.put(0, "stale", token("s", Some(100)), 0);
        for (i, who) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            cache.put(0, who, token(who, None), 95 + i as i64);
            assert!(cache.len() <= 3);
            assert!(cache.get(0, who, 95).is_some());
        }
        // Replacing a user's token does not grow the cache.
        cache.put(0, "e", token("e2", None), 0);
        assert!(cache.len() <= 3);
        assert_eq!(cache.get(0, "e", 0).unwrap().access_token(), "e2");
    }

    #[test]
    fn a_refused_token_is_dropped_but_a_newer_one_is_kept() {
        let mut cache = UpstreamTokenCache::new(10, 1);
        let old = token("old", None);
        cache.put(0, "alice", Rc::clone(&old), 0);
        assert!(cache.remove(0, "alice", &old));
        assert!(cache.get(0, "alice", 0).is_none());
        assert!(cache.is_empty());
        cache.put(0, "alice", token("new", None), 0);
        assert!(!cache.remove(0, "alice", &old));
        assert_eq!(cache.get(0, "alice", 0).unwrap().access_token(), "new");
        assert!(!cache.remove(3, "alice", &old));
    }
}

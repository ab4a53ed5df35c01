//! The headers-phase decision: where a request goes. Metadata is answered here; a request
//! on an MCP server route is decided by `server_route`, one on a client route (a web app
//! behind browser sign-in) by `app`. The adapter gathers a `RequestHead`, calls `decide`,
//! and executes the returned `Step`.

use std::borrow::Cow;

use crate::app::{self, AppHead};
use crate::config::{CompiledConfig, Route, RouteKind, ENVOY_ROUTE_PREFIX};
use crate::reply::{preflight, LocalReply};
use crate::server_route;
use crate::short_text::lossy;

pub use crate::server_route::{keys_unavailable, SESSION_NOT_FOUND};
pub use crate::step::{Context, Grant, RequestHead, Step};

/// Where a request goes, before anything about its credentials is known.
enum Destination<'c> {
    /// Not an MCP route, a metadata path or a client route: leave it alone.
    Elsewhere,
    /// Envoy named a route that cannot serve it.
    Refused(LocalReply),
    /// A route's protected resource metadata.
    Metadata(&'c Route),
    /// The browser sign-in callback on a client route's host.
    AppCallback,
    Server(usize, &'c Route),
    Client(usize, &'c Route),
}

/// The authority in lower case, copied only when it has an upper-case letter (Envoy passes
/// the client's spelling; most are lower case already).
fn lower_case(authority: Cow<'_, str>) -> Cow<'_, str> {
    if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(authority.to_ascii_lowercase())
    } else {
        authority
    }
}

pub fn decide(head: &RequestHead<'_>, ctx: Context<'_>) -> Step {
    // Bytes that are not UTF-8 are decoded lossily, never waved through: a request must not
    // escape its route by being malformed.
    let authority = lower_case(lossy(head.authority));
    let path = lossy(head.path);
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    let scheme = lossy(head.scheme);
    let app_head = || AppHead {
        method: head.method,
        origin: head.origin,
        scheme: &scheme,
        authority: &authority,
        path: &path,
        cookies: &head.cookies,
        nonce: String::new(),
    };
    match locate(head, ctx.config, &authority, path_only) {
        Destination::Elsewhere => Step::PassThrough,
        Destination::Refused(reply) => Step::Reply(reply),
        Destination::Metadata(route) => Step::Reply(metadata_reply(route, head)),
        Destination::AppCallback => Step::App(app::callback(ctx.config, &app_head())),
        Destination::Client(index, route) => Step::App(app::on_client_route(
            ctx.config,
            index,
            route,
            app_head(),
            ctx.random,
        )),
        Destination::Server(index, route) => server_route::decide(head, ctx, index, route),
    }
}

/// The MCP server route a request is on, for a refusal's metrics: the refusal path locates
/// the request again (never the warm path, which has its route in the `Grant`).
pub fn server_route_of(head: &RequestHead<'_>, config: &CompiledConfig) -> Option<usize> {
    let authority = lower_case(lossy(head.authority));
    let path = lossy(head.path);
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    match locate(head, config, &authority, path_only) {
        Destination::Server(index, _) => Some(index),
        _ => None,
    }
}

fn locate<'c>(
    head: &RequestHead<'_>,
    config: &'c CompiledConfig,
    authority: &str,
    path_only: &str,
) -> Destination<'c> {
    // Server listing, connect and disconnect: Envoy sends them to the token service on every
    // host, and they are nobody's route here. Unless Envoy says it sent the request to one of
    // our routes: then it goes there, and is checked as that route's.
    let envoy_chose_ours = head
        .envoy_route
        .is_some_and(|r| r.starts_with(ENVOY_ROUTE_PREFIX.as_bytes()));
    if !envoy_chose_ours && app::is_token_service_path(path_only) {
        return Destination::Elsewhere;
    }
    if path_only == app::CALLBACK_PATH && config.has_client_route_on(authority) {
        return Destination::AppCallback;
    }
    if let Some(route) = config.metadata_route(authority, path_only) {
        return Destination::Metadata(route);
    }
    let envoy_route = head.envoy_route.map(lossy);
    let matched = match envoy_route.as_deref() {
        Some(name) if name.starts_with(ENVOY_ROUTE_PREFIX) => match config.route_named(name) {
            Some(found) if !head.envoy_route_in_header || found.1.url.matches_host(authority) => {
                Some(found)
            }
            _ => {
                return Destination::Refused(LocalReply::oauth_error(
                    403,
                    "route-unknown",
                    "forbidden",
                    "Envoy routed this request to an MCP route the filter does not know",
                ))
            }
        },
        _ => config.route_for(authority, path_only),
    };
    match matched {
        None => Destination::Elsewhere,
        Some((index, route)) if route.kind == RouteKind::Client => {
            Destination::Client(index, route)
        }
        Some((index, route)) => Destination::Server(index, route),
    }
}

fn metadata_reply(route: &Route, head: &RequestHead<'_>) -> LocalReply {
    // Metadata is public: any origin may read it.
    if head.method == b"OPTIONS" {
        return preflight("*");
    }
    LocalReply::json(200, "resource-metadata", route.metadata_document.clone())
        .with_header("access-control-allow-origin", "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::TokenCache;
    use crate::internal_api::{RevocationEntry, RevocationPage, RevokedKind};
    use crate::keys::KeySet;
    use crate::revocation::{FeedRules, Revocations};
    use crate::session::SessionKey;
    use crate::signature_budget::SignatureBudget;
    use crate::token::testkeys::*;
    use crate::transport::ALLOWED_METHODS;

    fn config() -> CompiledConfig {
        let (_, jwks) = es256_pair();
        let v = serde_json::json!({
            "version": 1,
            "issuer": "http://issuer",
            "jwks_static": serde_json::from_str::<serde_json::Value>(&jwks).unwrap(),
            "routes": [
                {"name": "demo", "resource": "http://127.0.0.1:9000/mcp", "policy": {"allow": {"and": [{"accept": true}]}}},
                {"name": "other", "resource": "http://127.0.0.1:9000/other", "allowed_origins": ["http://app.example"], "policy": {"allow": {"and": [{"accept": true}]}}}
            ]
        });
        CompiledConfig::from_json(v.to_string().as_bytes()).unwrap()
    }

    struct Run {
        config: CompiledConfig,
        cache: TokenCache,
        keys: Option<KeySet>,
        session_key: SessionKey,
        budget: SignatureBudget,
        revocations: Revocations,
    }

    impl Run {
        fn new() -> Self {
            let config = config();
            let keys = config.static_keys.clone();
            Self {
                config,
                cache: TokenCache::new(100, 30),
                keys,
                session_key: SessionKey::from_random([3; 32]),
                budget: SignatureBudget::new(8),
                revocations: Revocations::new(FeedRules::default(), true, 1_090),
            }
        }
        fn decide(&mut self, head: &RequestHead<'_>) -> Step {
            self.decide_from(head, || Some(b"192.0.2.7:4000".to_vec()))
        }
        fn decide_from(
            &mut self,
            head: &RequestHead<'_>,
            client_address: fn() -> Option<Vec<u8>>,
        ) -> Step {
            decide(
                head,
                Context {
                    config: &self.config,
                    keys: self.keys.as_ref(),
                    cache: &mut self.cache,
                    session_key: &self.session_key,
                    now: 1100,
                    fresh_now: || 1100,
                    may_fetch_keys: true,
                    random: || Some([7; 32]),
                    budget: &mut self.budget,
                    client_address,
                    revocations: &self.revocations,
                },
            )
        }
    }

    fn bearer() -> String {
        let (key, _) = es256_pair();
        format!(
            "Bearer {}",
            sign(&key, &claims("http://127.0.0.1:9000/mcp", 1000, 1300))
        )
    }

    fn head<'a>(path: &'a [u8], auth: Vec<&'a [u8]>) -> RequestHead<'a> {
        RequestHead {
            method: b"POST",
            authority: b"127.0.0.1:9000",
            scheme: b"http",
            path,
            envoy_route: None,
            origin: None,
            authorization: auth.into(),
            is_preflight: false,
            ..RequestHead::default()
        }
    }

    /// A token for `/mcp` with `exp`, signed by the test key, its signature changed when
    /// `tampered`.
    fn token_with(exp: i64, tampered: bool) -> String {
        let (key, _) = es256_pair();
        let token = sign(&key, &claims("http://127.0.0.1:9000/mcp", 1000, exp));
        if !tampered {
            return token;
        }
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
        format!("{rest}.{}", String::from_utf8(sig).unwrap())
    }

    #[test]
    fn revoked_tokens_are_refused_even_from_the_cache_and_a_stale_feed_fails_closed() {
        let mut run = Run::new();
        let good = bearer();
        let h = head(b"/mcp", vec![good.as_bytes()]);
        assert!(matches!(run.decide(&h), Step::Forward(_)));
        // The test TE has grant "g", session "s", sub demo@example.com, iat 1000.
        for (kind, id) in [
            (RevokedKind::Grant, "g"),
            (RevokedKind::Session, "s"),
            (RevokedKind::User, "demo@example.com"),
        ] {
            let mut revocations = Revocations::new(FeedRules::default(), true, 1_090);
            revocations.last_success = Some(1_099);
            revocations
                .set
                .apply(
                    &RevocationPage {
                        cursor: 1,
                        entries: vec![RevocationEntry {
                            seq: 1,
                            kind,
                            id: id.into(),
                            at: 1_050,
                            expires_at: 1_400,
                        }],
                        more: false,
                    },
                    1_100,
                )
                .unwrap();
            run.revocations = revocations;
            // A cache hit: the token was verified above.
            let r = reply(run.decide(&h));
            assert_eq!((r.status, r.reason), (401, "token-revoked"), "{kind:?}");
            assert!(header(&r, "www-authenticate")
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""));
        }
        // No good poll for longer than the grace: every TE gets the 503 that names the feed.
        run.revocations = Revocations::new(FeedRules::default(), true, 1_000);
        let r = reply(run.decide(&h));
        assert_eq!((r.status, r.reason), (503, "revocation-feed-stale"));
        assert!(r.body.contains("revocation feed"), "{}", r.body);
        run.revocations.last_success = Some(1_090);
        assert!(matches!(run.decide(&h), Step::Forward(_)));
    }

    #[test]
    fn bad_signatures_cost_checks_only_within_the_budget_and_cached_tokens_never_wait() {
        let mut run = Run::new(); // 8 failed checks a second, 2 per client address
        let good = format!("Bearer {}", token_with(1300, false));
        assert!(matches!(
            run.decide(&head(b"/mcp", vec![good.as_bytes()])),
            Step::Forward(_)
        ));
        // Junk failing a cheap check (another issuer, expired, another audience) is
        // refused without a signature check and spends nothing.
        let expired = format!("Bearer {}", token_with(1000, true));
        for _ in 0..50 {
            let r = reply(run.decide(&head(b"/mcp", vec![expired.as_bytes()])));
            assert_eq!((r.status, r.reason), (401, "token-expired"));
        }
        assert_eq!((run.budget.checks, run.budget.failures), (1, 0));
        // Bad signatures from one address: two are checked, then that address gets 401
        // without a check, even for a good token it has not used yet.
        let mut reasons = Vec::new();
        for exp in 1301..1311 {
            let junk = format!("Bearer {}", token_with(exp, true));
            reasons.push(reply(run.decide(&head(b"/mcp", vec![junk.as_bytes()]))).reason);
        }
        assert_eq!(reasons[..2], ["token-bad-signature"; 2]);
        assert!(
            reasons[2..]
                .iter()
                .all(|r| *r == "token-check-budget-spent"),
            "{reasons:?}"
        );
        assert_eq!(run.budget.failures, 2);
        let fresh = format!("Bearer {}", token_with(1299, false));
        let r = reply(run.decide(&head(b"/mcp", vec![fresh.as_bytes()])));
        assert_eq!(r.reason, "token-check-budget-spent");
        // The cached token is unaffected.
        assert!(matches!(
            run.decide(&head(b"/mcp", vec![good.as_bytes()])),
            Step::Forward(_)
        ));
        // Another address still gets its checks.
        assert!(matches!(
            run.decide_from(&head(b"/mcp", vec![fresh.as_bytes()]), || Some(
                b"198.51.100.9:1".to_vec()
            )),
            Step::Forward(_)
        ));
    }

    fn reply(step: Step) -> LocalReply {
        match step {
            Step::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn header<'a>(r: &'a LocalReply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_route_named_in_a_header_must_serve_the_host() {
        let mut run = Run::new();
        let bearer = bearer();
        let mut h = head(b"/mcp", vec![bearer.as_bytes()]);
        h.envoy_route = Some(b"mcp-warden:demo");
        h.envoy_route_in_header = true;
        // The request's own host: the named route applies.
        assert!(!matches!(run.decide(&h), Step::Reply(_)));
        // Another host naming this route (a header Envoy did not overwrite): refused.
        h.authority = b"elsewhere.example:9000";
        assert_eq!(reply(run.decide(&h)).reason, "route-unknown");
        // From `xds.route_name`, Envoy's own decision, the name is followed as before.
        h.envoy_route_in_header = false;
        assert!(!matches!(run.decide(&h), Step::Reply(_)));
    }

    #[test]
    fn passes_unrelated_requests() {
        let mut run = Run::new();
        assert!(matches!(
            run.decide(&head(b"/elsewhere", vec![])),
            Step::PassThrough
        ));
        let mut h = head(b"/mcp", vec![]);
        h.authority = b"other-host";
        assert!(matches!(run.decide(&h), Step::PassThrough));
    }

    #[test]
    fn envoy_route_name_is_authoritative() {
        let mut run = Run::new();
        // Envoy routed to our "demo" route although the Host would not match it.
        let mut h = head(b"/mcp", vec![]);
        h.authority = b"127.0.0.1";
        h.envoy_route = Some(b"mcp-warden:demo");
        assert_eq!(reply(run.decide(&h)).status, 401);
        h.envoy_route = Some(b"mcp-warden:gone");
        assert_eq!(reply(run.decide(&h)).status, 403);
        // Another filter's route name: fall back to our own matching.
        h.envoy_route = Some(b"other-route");
        assert!(matches!(run.decide(&h), Step::PassThrough));
        // Non-UTF-8 bytes do not escape the route.
        let h = head(b"/mcp/\xff", vec![]);
        assert_eq!(reply(run.decide(&h)).status, 401);
    }

    #[test]
    fn missing_token_gets_challenge_without_error() {
        let mut run = Run::new();
        let r = reply(run.decide(&head(b"/mcp?x=1", vec![])));
        assert_eq!(r.status, 401);
        let challenge = header(&r, "www-authenticate").unwrap();
        assert_eq!(
            challenge,
            "Bearer resource_metadata=\"http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp\""
        );
    }

    #[test]
    fn valid_token_forwards_and_is_cached() {
        let mut run = Run::new();
        let (key, _) = es256_pair();
        let token = format!(
            "Bearer {}",
            sign(&key, &claims("http://127.0.0.1:9000/mcp", 1000, 1300))
        );
        match run.decide(&head(b"/mcp", vec![token.as_bytes()])) {
            Step::Forward(g) => assert_eq!(g.identity.claims.email, "demo@example.com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(run.cache.len(), 1);
        // Second request: served from the cache even with the keys gone.
        run.keys = None;
        assert!(matches!(
            run.decide(&head(b"/mcp/x", vec![token.as_bytes()])),
            Step::Forward(_)
        ));
    }

    #[test]
    fn wrong_audience_and_bad_tokens_are_invalid_token() {
        let mut run = Run::new();
        let (key, _) = es256_pair();
        let other = format!(
            "Bearer {}",
            sign(&key, &claims("http://127.0.0.1:9000/other", 1000, 1300))
        );
        let r = reply(run.decide(&head(b"/mcp", vec![other.as_bytes()])));
        assert_eq!((r.status, r.reason), (401, "token-wrong-audience"));
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\""));
        let r = reply(run.decide(&head(b"/mcp", vec![b"Bearer abc.def.ghi"])));
        assert_eq!(r.status, 401);
    }

    #[test]
    fn repeated_authorization_is_invalid_request_other_schemes_are_no_credentials() {
        let mut run = Run::new();
        let (key, _) = es256_pair();
        let token = format!(
            "Bearer {}",
            sign(&key, &claims("http://127.0.0.1:9000/mcp", 1000, 1300))
        );
        let r = reply(run.decide(&head(b"/mcp", vec![token.as_bytes(), token.as_bytes()])));
        assert_eq!((r.status, r.reason), (400, "authorization-repeated"));
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_request\""));
        for other in [b"Basic dXNlcjpwdw==".as_slice(), b"Bearer", b"Bearer  "] {
            let r = reply(run.decide(&head(b"/mcp", vec![other])));
            assert_eq!((r.status, r.reason), (401, "token-missing"));
            assert!(!header(&r, "www-authenticate").unwrap().contains("error="));
        }
    }

    #[test]
    fn unknown_key_asks_for_fetch_then_fails_closed() {
        let mut run = Run::new();
        run.keys = None;
        let (key, _) = es256_pair();
        let token = format!(
            "Bearer {}",
            sign(&key, &claims("http://127.0.0.1:9000/mcp", 1000, 1300))
        );
        let h = head(b"/mcp", vec![token.as_bytes()]);
        assert!(matches!(run.decide(&h), Step::FetchKeys));
        let step = decide(
            &h,
            Context {
                config: &run.config,
                keys: None,
                cache: &mut run.cache,
                session_key: &run.session_key,
                now: 1100,
                fresh_now: || 1100,
                may_fetch_keys: false,
                random: || Some([7; 32]),
                budget: &mut run.budget,
                client_address: || None,
                revocations: &run.revocations,
            },
        );
        assert_eq!(reply(step).status, 503);
    }

    #[test]
    fn only_post_get_delete_and_options_are_served() {
        let mut run = Run::new();
        let token = bearer();
        for method in [
            b"PUT".as_slice(),
            b"PATCH",
            b"HEAD",
            b"TRACE",
            b"post",
            b"FOO",
        ] {
            let mut h = head(b"/mcp", vec![token.as_bytes()]);
            h.method = method;
            let r = reply(run.decide(&h));
            assert_eq!(
                (r.status, r.reason),
                (405, "method-not-allowed"),
                "{method:?}"
            );
            assert_eq!(header(&r, "allow"), Some(ALLOWED_METHODS));
        }
        // A plain OPTIONS is answered, never forwarded.
        let mut h = head(b"/mcp", vec![]);
        h.method = b"OPTIONS";
        let r = reply(run.decide(&h));
        assert_eq!(
            (r.status, header(&r, "allow")),
            (204, Some(ALLOWED_METHODS))
        );
        for method in [b"GET".as_slice(), b"DELETE", b"POST"] {
            let mut h = head(b"/mcp", vec![token.as_bytes()]);
            h.method = method;
            assert!(matches!(run.decide(&h), Step::Forward(_)), "{method:?}");
        }
    }

    #[test]
    fn get_and_delete_with_an_announced_body_are_refused() {
        let mut run = Run::new();
        let token = bearer();
        for method in [b"GET".as_slice(), b"DELETE"] {
            for (length, chunked) in [(Some(b"12".as_slice()), false), (None, true)] {
                let mut h = head(b"/mcp", vec![token.as_bytes()]);
                h.method = method;
                h.content_length = length;
                h.transfer_encoding = chunked;
                let r = reply(run.decide(&h));
                assert_eq!((r.status, r.reason), (400, "mcp-body-not-allowed"));
            }
            let mut h = head(b"/mcp", vec![token.as_bytes()]);
            h.method = method;
            h.content_length = Some(b"0");
            assert!(matches!(run.decide(&h), Step::Forward(_)));
        }
        // POST bodies are for the inspector.
        let mut h = head(b"/mcp", vec![token.as_bytes()]);
        h.content_length = Some(b"12");
        assert!(matches!(run.decide(&h), Step::Forward(_)));
    }

    #[test]
    fn session_ids_in_the_query_are_refused() {
        let mut run = Run::new();
        let token = bearer();
        let h = head(b"/mcp/messages?sessionId=abc", vec![token.as_bytes()]);
        let r = reply(run.decide(&h));
        assert_eq!((r.status, r.reason), (400, "mcp-session-in-query"));
    }

    #[test]
    fn method_overrides_are_refused() {
        let mut run = Run::new();
        let token = bearer();
        let mut h = head(b"/mcp", vec![token.as_bytes()]);
        h.method_override = true;
        let r = reply(run.decide(&h));
        assert_eq!((r.status, r.reason), (400, "method-override"));
    }

    #[test]
    fn disguised_headers_are_refused() {
        let mut run = Run::new();
        let token = bearer();
        let mut h = head(b"/mcp", vec![token.as_bytes()]);
        h.disguised_header = Some("mcp-session-id");
        assert_eq!(reply(run.decide(&h)).status, 400);
    }

    #[test]
    fn session_ids_are_unwrapped_for_their_owner_only() {
        let mut run = Run::new();
        let token = bearer();
        let wrap = |route, sub, id: &[u8]| run.session_key.wrap(route, sub, id).unwrap();
        let mine = wrap("demo", "demo@example.com", b"upstream-1");
        let theirs = wrap("demo", "someone@example.com", b"upstream-2");
        let other_route = wrap("other", "demo@example.com", b"upstream-1");
        let mut h = head(b"/mcp", vec![token.as_bytes()]);
        h.session_ids = vec![mine.as_bytes()];
        match run.decide(&h) {
            Step::Forward(g) => assert_eq!(
                g.upstream_session_id.as_deref(),
                Some(b"upstream-1".as_slice())
            ),
            other => panic!("{other:?}"),
        }
        for foreign in [
            theirs.as_bytes(),
            other_route.as_bytes(),
            b"upstream-1".as_slice(),
        ] {
            h.session_ids = vec![foreign];
            let r = reply(run.decide(&h));
            assert_eq!((r.status, r.reason), (404, "mcp-session-unknown"));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["error"]["code"], SESSION_NOT_FOUND);
        }
        h.session_ids = vec![mine.as_bytes(), mine.as_bytes()];
        assert_eq!(reply(run.decide(&h)).status, 400);
    }

    #[test]
    fn metadata_and_cors() {
        let mut run = Run::new();
        let mut h = head(b"/.well-known/oauth-protected-resource/mcp", vec![]);
        h.method = b"GET";
        let r = reply(run.decide(&h));
        assert_eq!(r.status, 200);
        let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(doc["resource"], "http://127.0.0.1:9000/mcp");

        let mut pre = head(b"/other", vec![]);
        pre.method = b"OPTIONS";
        pre.is_preflight = true;
        pre.origin = Some(b"http://APP.example:80");
        let r = reply(run.decide(&pre));
        assert_eq!(r.status, 204);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some("http://app.example")
        );
        assert!(header(&r, "access-control-allow-headers")
            .unwrap()
            .contains("Mcp-Session-Id"));

        let mut foreign = head(b"/mcp", vec![]);
        foreign.origin = Some(b"http://evil.example");
        assert_eq!(reply(run.decide(&foreign)).status, 403);
        let mut same = head(b"/mcp", vec![]);
        same.origin = Some(b"http://127.0.0.1:9000");
        let r = reply(run.decide(&same));
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "access-control-expose-headers"),
            Some(crate::reply::CORS_EXPOSE_HEADERS)
        );
    }

    #[test]
    fn a_te_for_several_audiences_passes_each_and_nothing_else() {
        let mut run = Run::new();
        let (key, _) = es256_pair();
        let mut c = claims("x", 1000, 1300);
        c.custom.aud = crate::token::Audience::Many(vec![
            "http://127.0.0.1:9000/mcp".into(),
            "http://127.0.0.1:9000/elsewhere".into(),
        ]);
        let bearer = format!("Bearer {}", sign(&key, &c));
        let step = run.decide(&head(b"/mcp", vec![bearer.as_bytes()]));
        assert!(
            matches!(step, Step::Forward(ref g) if g.route == 0),
            "{step:?}"
        );
        let r = reply(run.decide(&head(b"/other", vec![bearer.as_bytes()])));
        assert_eq!((r.status, r.reason), (401, "token-wrong-audience"));
    }

    fn with_client_routes() -> CompiledConfig {
        let (_, jwks) = es256_pair();
        let v = serde_json::json!({
            "version": 1,
            "issuer": "http://issuer",
            "jwks_static": serde_json::from_str::<serde_json::Value>(&jwks).unwrap(),
            "token_service": {"cluster": "ts", "authority": "ts"},
            "routes": [
                {"name": "demo", "resource": "http://127.0.0.1:9000/mcp", "policy": {"allow": {"and": [{"accept": true}]}}},
                {"name": "root", "resource": "http://127.0.0.1:9000", "policy": {"allow": {"and": [{"accept": true}]}}},
                {"name": "chat", "kind": "client", "resource": "http://chat.example", "policy": {"allow": {"and": [{"accept": true}]}}}
            ]
        });
        CompiledConfig::from_json(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn client_routes_and_token_service_paths() {
        let mut run = Run::new();
        run.config = with_client_routes();
        let at =
            |authority: &'static [u8], method: &'static [u8], path: &'static [u8]| RequestHead {
                method,
                authority,
                scheme: b"http",
                path,
                ..RequestHead::default()
            };
        // Listing, connect, disconnect: untouched on any host, even under a server route at
        // the root (no bearer check here: the token service checks).
        for path in [
            &b"/.warden/mcp/routes"[..],
            b"/.pomerium/mcp/routes",
            b"/.warden/mcp/disconnect",
            b"/.pomerium/mcp/connect?route=x",
        ] {
            for host in [&b"127.0.0.1:9000"[..], b"chat.example", b"unknown.example"] {
                let step = run.decide(&at(host, b"GET", path));
                assert!(matches!(step, Step::PassThrough), "{step:?}");
            }
        }
        // A page of the app without a cookie: sign in.
        match run.decide(&at(b"chat.example", b"GET", b"/c/1")) {
            Step::App(crate::app::AppStep::Reply(r)) => assert_eq!(r.status, 302),
            other => panic!("{other:?}"),
        }
        // The callback only on a client route's host.
        assert!(matches!(
            run.decide(&at(
                b"chat.example",
                b"GET",
                b"/.warden/app/callback?code=c&state=chat"
            )),
            Step::App(crate::app::AppStep::Callback { route: 2, .. })
        ));
        let step = run.decide(&at(
            b"127.0.0.1:9000",
            b"GET",
            b"/.warden/app/callback?code=c&state=chat",
        ));
        assert!(!matches!(step, Step::App(_)), "{step:?}");
        // Server routes are as before.
        let r = reply(run.decide(&at(b"127.0.0.1:9000", b"POST", b"/mcp")));
        assert_eq!(r.status, 401);
    }

    #[test]
    fn only_what_envoy_sends_to_the_token_service_passes() {
        let mut run = Run::new();
        run.config = with_client_routes();
        let at = |authority: &'static [u8], path: &'static [u8]| RequestHead {
            method: b"GET",
            authority,
            scheme: b"http",
            path,
            ..RequestHead::default()
        };
        // Envoy's token-service routes match `/.warden/mcp/` and `/.pomerium/mcp/`: the bare
        // `/.warden/mcp` goes to the route at the host's root, and must not pass unchecked.
        for path in [&b"/.warden/mcp"[..], b"/.pomerium/mcp", b"/.warden/mcp?x=1"] {
            let step = run.decide(&at(b"chat.example", path));
            assert!(
                matches!(step, Step::App(crate::app::AppStep::Reply(ref r)) if r.status == 302),
                "{step:?}"
            );
            let step = run.decide(&at(b"127.0.0.1:9000", path));
            assert!(
                matches!(step, Step::Reply(ref r) if r.status == 401),
                "{step:?}"
            );
        }
        // When Envoy names one of our routes, it sent the request there, whatever the path.
        let mut h = at(b"chat.example", b"/.warden/mcp/routes");
        h.envoy_route = Some(b"mcp-warden:chat");
        let step = run.decide(&h);
        assert!(
            matches!(step, Step::App(crate::app::AppStep::Reply(ref r)) if r.status == 302),
            "{step:?}"
        );
        let mut h = at(b"127.0.0.1:9000", b"/.pomerium/mcp/routes");
        h.envoy_route = Some(b"mcp-warden:root");
        let step = run.decide(&h);
        assert!(
            matches!(step, Step::Reply(ref r) if r.status == 401),
            "{step:?}"
        );
        // Envoy's token-service route (not ours): passed.
        let mut h = at(b"chat.example", b"/.warden/mcp/routes");
        h.envoy_route = Some(b"mcp-warden.token-service");
        assert!(matches!(run.decide(&h), Step::PassThrough));
    }
}

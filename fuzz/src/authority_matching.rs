//! Matching a request to a route: `ResourceUrl::parse` / `matches_host` / `covers_path`,
//! `CompiledConfig::route_for`, and the whole headers-phase decision `access::decide` over a
//! fuzzed `RequestHead` (authority, path, method, origin, `Authorization`, `Mcp-Session-Id`,
//! Envoy's route name).
//!
//! * A parsed resource is normalized (lower-case authority without the default port, a path
//!   without trailing or empty segments) and parses again to itself from its own parts.
//! * `matches_host` holds exactly for the authority itself or with the scheme's default port,
//!   in any case.
//! * `route_for` names a route that serves the host and covers the path, with the longest
//!   prefix of those that do; `None` only when none does.
//! * `decide` forwards only a request on a server route that serves its host (the one Envoy
//!   named, or the longest prefix) with exactly one bearer that verifies for that route's
//!   resource; its session id is the one the client's `Mcp-Session-Id` wraps for that route
//!   and user; its CORS origin one the route allows. It passes through only what is no route's,
//!   asks for keys only for a `kid` the set lacks, and every local reply has a known status and
//!   headers that can go on the wire.
//!
//! Input: a resource URL line, then the request's authority, path, method and `Origin` lines,
//! an options line (`bearer good|other|app|rogue|stranger|raw`, `twice`, `wrap`, `origin`, `preflight`,
//! `envoy <route name>`, `header`, `length <n>`, `chunked`), an `Authorization` line (for
//! `bearer raw`), and the `Mcp-Session-Id` values, one a line.

use serde_json::json;
use warden_core::access::{decide, Context, RequestHead, Step};
use warden_core::app::{is_token_service_path, AppStep, CALLBACK_PATH};
use warden_core::cache::TokenCache;
use warden_core::config::{normalize_origin, Route, RouteKind, ENVOY_ROUTE_PREFIX};
use warden_core::token::{verify, TokenError};
use warden_core::transport::{method_rule, MethodRule};
use warden_core::url::ResourceUrl;

use crate::assert_sane_headers;
use crate::fixtures::{self, config, key_set, rules, session_key, te_claims, te_keys, NOW};
use crate::input::{join, Fields, Words};

/// What `run` can decide (`access::Step`).
pub const OUTCOMES: &[&str] = &["forward", "reply", "pass-through", "app", "fetch-keys"];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let resource = f.text().into_owned();
    let authority = f.line();
    let path = f.line();
    let method = f.line();
    let origin = f.line();
    let options = f.text().into_owned();
    let raw_authorization = f.line();
    let session_ids = f.lines();

    let host = String::from_utf8_lossy(authority);
    let request_path = String::from_utf8_lossy(path);
    resource_url(&resource, &host, &request_path);

    let words = Words::new(&options);
    let authorization = match words.after("bearer") {
        Some("good") => Some(format!(
            "Bearer {}",
            fixtures::te("http://127.0.0.1:9000/mcp")
        )),
        Some("other") => Some(format!(
            "Bearer {}",
            fixtures::te("https://mcp.example/mcp/admin")
        )),
        Some("app") => Some(format!(
            "Bearer {}",
            te_keys()[1].jwt(
                "at+jwt",
                &te_claims(
                    json!(["https://mcp.example", "http://127.0.0.1:9000/mcp"]),
                    "warden-app:chat"
                )
            )
        )),
        Some("stranger") => Some(format!(
            "Bearer {}",
            fixtures::stranger_te_key().jwt(
                "at+jwt",
                &te_claims(json!("http://127.0.0.1:9000/mcp"), "c1")
            )
        )),
        Some("rogue") => Some(format!(
            "Bearer {}",
            fixtures::rogue_te_key().jwt(
                "at+jwt",
                &te_claims(json!("http://127.0.0.1:9000/mcp"), "c1")
            )
        )),
        _ => None,
    };
    let mut authorizations: Vec<&[u8]> = match (&authorization, words.after("bearer")) {
        (Some(a), _) => vec![a.as_bytes()],
        (None, Some("raw")) => vec![raw_authorization],
        _ => vec![],
    };
    if words.has("twice") {
        authorizations.extend(authorizations.clone());
    }
    // A session id wrapped for the demo route and the fixture user, in front of the others.
    let wrapped = session_key()
        .wrap("demo", "demo@example.com", b"upstream-1")
        .unwrap();
    let mut session_ids = session_ids;
    if words.has("wrap") {
        session_ids.insert(0, wrapped.as_bytes());
    }
    let envoy_route = words.after("envoy").map(str::as_bytes);
    let length = words.after("length").map(str::as_bytes);
    let head = RequestHead {
        method,
        authority,
        scheme: b"https",
        path,
        envoy_route,
        envoy_route_in_header: words.has("header"),
        origin: words.has("origin").then_some(origin),
        authorization: authorizations.clone().into(),
        is_preflight: words.has("preflight"),
        content_length: length,
        transfer_encoding: words.has("chunked"),
        session_ids: session_ids.clone(),
        disguised_header: None,
        method_override: words.has("override"),
        cookies: Vec::new(),
    };
    let mut cache = TokenCache::new(16, fixtures::LEEWAY);
    let mut budget = warden_core::signature_budget::SignatureBudget::new(1000);
    let key = session_key();
    let step = decide(
        &head,
        Context {
            config: config(),
            keys: Some(key_set()),
            cache: &mut cache,
            session_key: &key,
            now: NOW,
            fresh_now: || NOW,
            may_fetch_keys: true,
            random: || Some([7; 32]),
            budget: &mut budget,
            client_address: || Some(b"192.0.2.1:1234".to_vec()),
            revocations: &warden_core::revocation::Revocations::default(),
        },
    );
    judge(&head, step)
}

fn resource_url(resource: &str, host: &str, path: &str) {
    let Ok(url) = ResourceUrl::parse(resource) else {
        return;
    };
    assert!(url.scheme == "http" || url.scheme == "https");
    assert_eq!(url.authority, url.authority.to_ascii_lowercase());
    let default_port = if url.scheme == "https" { ":443" } else { ":80" };
    assert!(!url.authority.ends_with(default_port) || url.authority == default_port);
    assert!(url.path.is_empty() || (url.path.starts_with('/') && !url.path.ends_with('/')));
    assert!(!url.path.contains("//"));
    assert_eq!(
        ResourceUrl::parse(&format!("{}{}", url.origin(), url.path)).as_ref(),
        Ok(&url),
        "a resource parses to itself from its own parts"
    );
    let lower = host.to_ascii_lowercase();
    assert_eq!(
        url.matches_host(host),
        lower == url.authority || lower == format!("{}{default_port}", url.authority),
        "{host:?} against {:?}",
        url.authority
    );
    assert!(url.matches_host(&url.authority.to_ascii_uppercase()));
    let covers =
        url.path.is_empty() || path == url.path || path.starts_with(&format!("{}/", url.path));
    assert_eq!(
        url.covers_path(path),
        covers,
        "{path:?} under {:?}",
        url.path
    );
}

/// Whether `route` serves `host` (lower case), judged from the route's own parts.
fn serves(route: &Route, host: &str) -> bool {
    let default_port = if route.url.scheme == "https" {
        ":443"
    } else {
        ":80"
    };
    host == route.url.authority || host == format!("{}{default_port}", route.url.authority)
}

fn covers(route: &Route, path: &str) -> bool {
    let prefix = route.url.path.as_str();
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn judge(head: &RequestHead<'_>, step: Step) -> &'static str {
    let config = config();
    let host = String::from_utf8_lossy(head.authority).to_ascii_lowercase();
    let path = String::from_utf8_lossy(head.path);
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    let envoy_name = head.envoy_route.map(String::from_utf8_lossy);
    let envoy_named = envoy_name
        .as_deref()
        .and_then(|n| n.strip_prefix(ENVOY_ROUTE_PREFIX));

    // The longest-prefix route, checked against every route.
    let matched = config.route_for(&host, path_only);
    let serving: Vec<(usize, &Route)> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| serves(r, &host) && covers(r, path_only))
        .collect();
    match matched {
        Some((i, r)) => {
            assert!(std::ptr::eq(r, &config.routes[i]));
            assert!(
                serving.iter().any(|(j, _)| *j == i),
                "route_for chose a route that does not serve {host:?}{path_only:?}"
            );
            assert!(serving
                .iter()
                .all(|(_, s)| s.url.path.len() <= r.url.path.len()));
        }
        None => assert!(serving.is_empty(), "route_for found none of {serving:?}"),
    }

    match step {
        Step::PassThrough => {
            assert!(
                envoy_named.is_none() && (is_token_service_path(path_only) || matched.is_none()),
                "passed through a request on a route"
            );
            "pass-through"
        }
        Step::FetchKeys => {
            let [value] = head.authorization.as_slice() else {
                panic!("fetched keys without one bearer");
            };
            let token = std::str::from_utf8(value).unwrap().trim()[7..].trim();
            assert!(matches!(
                verify(token, key_set(), &rules(), NOW),
                Err(TokenError::UnknownKey(_))
            ));
            "fetch-keys"
        }
        Step::Reply(reply) => {
            assert!(
                [200, 204, 400, 401, 403, 404, 405, 503].contains(&reply.status),
                "status {}",
                reply.status
            );
            assert_sane_headers(&reply);
            "reply"
        }
        Step::App(app) => {
            let on_client = |r: &Route| r.kind == RouteKind::Client && serves(r, &host);
            match app {
                AppStep::Callback { route, .. } => {
                    assert_eq!(path_only, CALLBACK_PATH);
                    assert!(on_client(&config.routes[route]));
                }
                AppStep::Reply(reply) if path_only == CALLBACK_PATH => {
                    assert!(config.routes.iter().any(on_client));
                    assert_sane_headers(&reply);
                }
                AppStep::Reply(reply) => assert_sane_headers(&reply),
                AppStep::SignOut { route, .. } => {
                    // Only a same-origin POST (the `origin` word sets an allowed one).
                    assert!(on_client(&config.routes[route]));
                    assert_eq!(head.method, b"POST");
                    assert!(head.origin.is_some());
                }
                AppStep::Session { route, expired, .. } => {
                    assert!(on_client(&config.routes[route]));
                    assert_sane_headers(&expired);
                }
            }
            "app"
        }
        Step::Forward(grant) => {
            let route = &config.routes[grant.route];
            assert_eq!(route.kind, RouteKind::Server);
            match envoy_named {
                Some(name) => {
                    assert_eq!(route.name, name, "not the route Envoy chose");
                    assert!(!head.envoy_route_in_header || serves(route, &host));
                }
                None => assert_eq!(
                    matched.map(|(i, _)| i),
                    Some(grant.route),
                    "forwarded {host:?}{path_only:?} on another route"
                ),
            }
            assert!(grant.identity.allows_resource(&route.resource));
            let [value] = head.authorization.as_slice() else {
                panic!("forwarded without exactly one Authorization");
            };
            let value = std::str::from_utf8(value).unwrap().trim();
            assert!(value[..7].eq_ignore_ascii_case("bearer "));
            let identity = verify(value[7..].trim(), key_set(), &rules(), NOW)
                .expect("forwarded with a bearer that does not verify");
            assert_eq!(*grant.identity, identity);
            assert!(matches!(
                method_rule(head.method),
                MethodRule::InspectBody | MethodRule::Bodiless
            ));
            match (&grant.upstream_session_id, head.session_ids.as_slice()) {
                (None, []) => {}
                (Some(id), [presented]) => assert_eq!(
                    session_key()
                        .wrap(&route.name, &identity.claims.sub, id)
                        .as_deref()
                        .map(str::as_bytes),
                    Some(*presented)
                ),
                (id, presented) => panic!("session {id:?} from {} headers", presented.len()),
            }
            match (head.origin, &grant.cors_origin) {
                (None, None) => {}
                (Some(origin), Some(allowed)) => {
                    let origin = normalize_origin(std::str::from_utf8(origin).unwrap());
                    assert_eq!(&origin, allowed);
                    assert!(
                        origin == route.url.origin() || route.allowed_origins.contains(&origin)
                    );
                }
                (o, c) => panic!("origin {o:?} became CORS origin {c:?}"),
            }
            "forward"
        }
    }
}

/// Requests of the access unit tests: a good bearer on its route, other routes, nested and
/// root prefixes, hosts with default ports and case, metadata, Envoy's route names, origins,
/// preflights, methods, bodies on GET, session ids, and a client route.
pub fn seeds() -> Vec<Vec<u8>> {
    let seed = |resource: &str,
                authority: &str,
                path: &str,
                method: &str,
                origin: &str,
                options: &str,
                raw: &str,
                ids: &[&str]| {
        let mut fields: Vec<&[u8]> = [resource, authority, path, method, origin, options, raw]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        fields.extend(ids.iter().map(|s| s.as_bytes()));
        join(&fields)
    };
    let demo = "http://127.0.0.1:9000/mcp";
    vec![
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer good",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp/x?y=1",
            "GET",
            "",
            "bearer good wrap",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer good wrap",
            "",
            &["w1.AAAA.BBBB"],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/other",
            "POST",
            "http://App.example:80",
            "bearer good origin",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "OPTIONS",
            "http://127.0.0.1:9000",
            "origin preflight",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "GET",
            "",
            "bearer good length 5",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "PATCH",
            "",
            "bearer good",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp?sessionId=1",
            "POST",
            "",
            "bearer good",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer raw twice",
            "Bearer a",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer raw",
            "Basic dXNlcjpwdw==",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer raw",
            "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6Ims5In0.e30.AAAA",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer rogue",
            "",
            &[],
        ),
        // A key not published yet: the filter fetches the JWKS (only for a token that passes
        // every other check).
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer stranger",
            "",
            &[],
        ),
        seed(
            "https://MCP.example:443/mcp",
            "MCP.EXAMPLE:443",
            "/mcp/admin/tools",
            "POST",
            "",
            "bearer other",
            "",
            &[],
        ),
        seed(
            "https://mcp.example",
            "mcp.example",
            "/mcp/adminx",
            "POST",
            "",
            "bearer app",
            "",
            &[],
        ),
        seed(
            "https://mcp.example",
            "mcp.example",
            "/.well-known/oauth-protected-resource/mcp/admin",
            "GET",
            "",
            "",
            "",
            &[],
        ),
        seed(
            demo,
            "evil.example",
            "/mcp",
            "POST",
            "",
            "bearer good envoy mcp-warden:demo header",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/anything",
            "POST",
            "",
            "bearer good envoy mcp-warden:demo",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/mcp",
            "POST",
            "",
            "bearer good envoy mcp-warden:nope",
            "",
            &[],
        ),
        seed(
            demo,
            "127.0.0.1:9000",
            "/.warden/mcp/routes",
            "GET",
            "",
            "",
            "",
            &[],
        ),
        seed(
            "https://chat.example",
            "chat.example",
            "/page",
            "GET",
            "",
            "",
            "",
            &[],
        ),
        seed(
            "https://chat.example",
            "chat.example",
            "/.warden/app/callback?code=x&state=chat",
            "GET",
            "",
            "",
            "",
            &[],
        ),
        seed("http://h//mcp", "h", "/", "POST", "", "", "", &[]),
        seed(
            "http://a:80:80/mcp",
            "a:80",
            "/mcp",
            "POST",
            "",
            "",
            "",
            &[],
        ),
        seed(
            "http://[::1]:80/mcp",
            "[::1]",
            "/mcp/",
            "GET",
            "",
            "",
            "",
            &[],
        ),
        seed(
            "http://u@h/mcp",
            "chat.exampl\u{fffd}:",
            "/",
            "POST",
            "",
            "",
            "",
            &[],
        ),
    ]
}

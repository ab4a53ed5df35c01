//! The decision for a request on an MCP server route: origin and CORS, the transport rules,
//! the bearer token (cached; its signature within the worker's budget), the session id.

use std::rc::Rc;

use crate::config::{normalize_origin, Route};
use crate::reply::{preflight, LocalReply};
use crate::revocation::{stale_reply, FeedVerdict};
use crate::session::{self, Inbound};
use crate::signature_budget::Client;
use crate::step::{Context, Grant, RequestHead, Step};
use crate::token::{precheck, Identity, TokenError};
use crate::transport::{
    announces_body, method_rule, names_session_in_query, MethodRule, ALLOWED_METHODS,
};

/// Request `head` on server route `index` (`route`), located by `access::decide`.
pub fn decide(head: &RequestHead<'_>, mut ctx: Context<'_>, index: usize, route: &Route) -> Step {
    let cors_origin = match cors_origin(head, route) {
        Ok(origin) => origin,
        Err(reply) => return Step::Reply(reply),
    };
    let cors = cors_origin.as_deref();
    let method = match transport(head, cors) {
        Ok(method) => method,
        Err(reply) => return Step::Reply(reply),
    };
    let identity = match identity(head, &mut ctx, route, cors) {
        Ok(identity) => identity,
        Err(NoIdentity::Reply(reply)) => return Step::Reply(reply),
        Err(NoIdentity::FetchKeys) => return Step::FetchKeys,
    };
    let upstream_session_id = match upstream_session(head, &ctx, route, &identity, cors) {
        Ok(id) => id,
        Err(reply) => return Step::Reply(reply),
    };
    Step::Forward(Grant {
        route: index,
        identity,
        cors_origin,
        method,
        upstream_session_id,
    })
}

/// The origin to reflect in CORS headers (none without an `Origin`); a preflight is answered.
fn cors_origin(head: &RequestHead<'_>, route: &Route) -> Result<Option<String>, LocalReply> {
    let cors_origin = match head.origin {
        None => None,
        Some(origin) => match allowed_origin(route, origin) {
            Some(origin) => Some(origin),
            None => {
                return Err(LocalReply::oauth_error(
                    403,
                    "origin-not-allowed",
                    "forbidden",
                    "the request's Origin is not allowed for this MCP server",
                ))
            }
        },
    };
    let cors = cors_origin.as_deref();
    if head.is_preflight && head.method == b"OPTIONS" {
        return Err(match cors {
            Some(origin) => preflight(origin),
            None => LocalReply::oauth_error(
                400,
                "cors-preflight-without-origin",
                "invalid_request",
                "a CORS preflight needs an Origin header",
            ),
        });
    }

    Ok(cors_origin)
}

/// The Streamable HTTP transport's rules: methods, bodies, where the session id goes, and no
/// header that a server could read differently from us.
fn transport(head: &RequestHead<'_>, cors: Option<&str>) -> Result<MethodRule, LocalReply> {
    let method = method_rule(head.method);
    match method {
        MethodRule::NotAllowed => {
            let shown = String::from_utf8_lossy(head.method);
            return Err(transport_error(
                405,
                "method-not-allowed",
                &format!("HTTP method {shown:?} is not allowed on an MCP endpoint"),
            )
            .with_header("allow", ALLOWED_METHODS)
            .with_cors(cors));
        }
        MethodRule::Options => {
            // Not a preflight: answer what the endpoint allows; OPTIONS is never forwarded.
            return Err(LocalReply {
                status: 204,
                headers: vec![("allow", ALLOWED_METHODS.into())],
                body: String::new(),
                reason: "options",
            }
            .with_cors(cors));
        }
        MethodRule::Bodiless if announces_body(head.content_length, head.transfer_encoding) => {
            return Err(transport_error(
                400,
                "mcp-body-not-allowed",
                "GET and DELETE requests on an MCP endpoint carry no body",
            )
            .with_cors(cors));
        }
        MethodRule::InspectBody | MethodRule::Bodiless => {}
    }
    if names_session_in_query(head.path) {
        return Err(
            transport_error(
                400,
                "mcp-session-in-query",
                "session ids in the query (the HTTP+SSE transport of 2024-11-05) are not accepted; use the Streamable HTTP transport and Mcp-Session-Id",
            )
            .with_cors(cors),
        );
    }
    if head.method_override {
        return Err(transport_error(
            400,
            "method-override",
            "HTTP method override headers are not accepted on an MCP endpoint",
        )
        .with_cors(cors));
    }
    if let Some(name) = head.disguised_header {
        return Err(transport_error(
            400,
            "header-disguised",
            &format!("a header spelled like {name} with '_' for '-' is not accepted"),
        )
        .with_cors(cors));
    }

    Ok(method)
}

/// The bearer token's identity: from the cache, else checked (cheap checks first, the
/// signature only within the worker's budget of failed checks, see `signature_budget`).
fn identity(
    head: &RequestHead<'_>,
    ctx: &mut Context<'_>,
    route: &Route,
    cors: Option<&str>,
) -> Result<Rc<Identity>, NoIdentity> {
    // The warm path: one `Authorization: Bearer <token>` whose bytes are a token this worker
    // verified. Those bytes passed every check of `verified` (UTF-8, no space, the scheme),
    // so they are not run again over the token's few hundred bytes.
    let warm = match head.authorization.as_slice() {
        [value] => value
            .strip_prefix(b"Bearer ")
            .and_then(|token| ctx.cache.get_bytes(token, ctx.now)),
        _ => None,
    };
    let identity = match warm {
        Some(identity) => identity,
        None => verified(head, ctx, route, cors)?,
    };
    // Before anything else is decided, on cache hits too: the cache knows nothing of
    // revocations made after it verified the token.
    match ctx.revocations.check(&identity, ctx.now) {
        FeedVerdict::Pass => {}
        FeedVerdict::Revoked => {
            return Err(NoIdentity::Reply(invalid_token(
                route,
                "token-revoked",
                cors,
            )))
        }
        FeedVerdict::Stale => return Err(NoIdentity::Reply(stale_reply(cors))),
    }
    if !identity.allows_resource(&route.resource) {
        return Err(NoIdentity::Reply(invalid_token(
            route,
            "token-wrong-audience",
            cors,
        )));
    }
    Ok(identity)
}

/// The identity of the one bearer token of the request, from the cache or checked.
fn verified(
    head: &RequestHead<'_>,
    ctx: &mut Context<'_>,
    route: &Route,
    cors: Option<&str>,
) -> Result<Rc<Identity>, NoIdentity> {
    let token = match bearer_token(head.authorization.as_slice()) {
        Ok(token) => token,
        Err(BearerProblem::Missing) => {
            return Err(NoIdentity::Reply(
                LocalReply::oauth_error(
                    401,
                    "token-missing",
                    "unauthorized",
                    "this MCP server needs a bearer token",
                )
                .with_header("www-authenticate", route.challenge.clone())
                .with_cors(cors),
            ))
        }
        Err(BearerProblem::Malformed(reason, description)) => {
            return Err(NoIdentity::Reply(
                LocalReply::oauth_error(400, reason, "invalid_request", description)
                    .with_header(
                        "www-authenticate",
                        route.challenge_invalid_token.replacen(
                            "invalid_token",
                            "invalid_request",
                            1,
                        ),
                    )
                    .with_cors(cors),
            ))
        }
    };

    let identity = match ctx.cache.get(token, ctx.now) {
        Some(identity) => identity,
        None => {
            let Some(keys) = ctx.keys else {
                return Err(if ctx.may_fetch_keys {
                    NoIdentity::FetchKeys
                } else {
                    NoIdentity::Reply(keys_unavailable_reply(cors))
                });
            };
            // A new token is checked against the clock read now (`fresh_now`).
            let now = (ctx.fresh_now)();
            // The cheap checks first; the signature only within the worker's budget of
            // failed checks (see `signature_budget`).
            let checked = precheck(token, keys, &ctx.config.rules, now, Some(&route.resource))
                .and_then(|unverified| {
                    let client = Client::from_address((ctx.client_address)().as_deref());
                    if !ctx.budget.may_check(client, now) {
                        return Err(TokenError::CheckBudgetSpent);
                    }
                    let checked = unverified.check_signature();
                    if checked == Err(TokenError::BadSignature) {
                        ctx.budget.failed(client, now);
                    }
                    checked
                });
            match checked {
                Ok(identity) => ctx.cache.insert(token, identity, now),
                Err(TokenError::UnknownKey(_)) if ctx.may_fetch_keys => {
                    return Err(NoIdentity::FetchKeys)
                }
                Err(e) => return Err(NoIdentity::Reply(invalid_token(route, e.reason(), cors))),
            }
        }
    };
    Ok(identity)
}

/// The upstream's own session id, unwrapped from the client's `Mcp-Session-Id`.
/// Why a request has no identity (yet).
enum NoIdentity {
    Reply(LocalReply),
    /// The key set lacks the token's `kid`: fetch the JWKS and decide again.
    FetchKeys,
}

fn upstream_session(
    head: &RequestHead<'_>,
    ctx: &Context<'_>,
    route: &Route,
    identity: &Identity,
    cors: Option<&str>,
) -> Result<Option<Vec<u8>>, LocalReply> {
    let upstream_session_id = match session::inbound(
        ctx.session_key,
        &route.name,
        &identity.claims.sub,
        &head.session_ids,
    ) {
        Inbound::None => None,
        Inbound::Upstream(id) => Some(id),
        // As for a session the server does not know: the client starts a new one.
        Inbound::Unknown => {
            return Err(
                transport_error(404, "mcp-session-unknown", "Session not found").with_cors(cors),
            )
        }
        Inbound::Repeated => {
            return Err(transport_error(
                400,
                "mcp-session-repeated",
                "send at most one Mcp-Session-Id header",
            )
            .with_cors(cors))
        }
    };
    Ok(upstream_session_id)
}

/// A refusal at the transport level, as a JSON-RPC error (MCP clients read those).
fn transport_error(status: u32, reason: &'static str, message: &str) -> LocalReply {
    let code = if status == 404 {
        SESSION_NOT_FOUND
    } else {
        crate::mcp::INVALID_REQUEST
    };
    LocalReply::json(
        status,
        reason,
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": code, "message": message },
        })
        .to_string(),
    )
}

/// The JSON-RPC code MCP servers use for an unknown session.
pub const SESSION_NOT_FOUND: i64 = -32001;

fn invalid_token(route: &Route, reason: &'static str, cors: Option<&str>) -> LocalReply {
    crate::reply::invalid_token(
        &route.challenge_invalid_token,
        reason,
        "the bearer token is not valid for this MCP server",
        cors,
    )
}

/// Fail closed when no key set can be had: the token cannot be checked, so nothing passes.
pub fn keys_unavailable(cors: Option<&str>) -> Step {
    Step::Reply(keys_unavailable_reply(cors))
}

fn keys_unavailable_reply(cors: Option<&str>) -> LocalReply {
    LocalReply::oauth_error(
        503,
        "jwks-unavailable",
        "temporarily_unavailable",
        "mcp-warden cannot verify tokens: the token service's signing keys (JWKS) are unavailable",
    )
    .with_header("retry-after", "5")
    .with_cors(cors)
}

fn allowed_origin(route: &Route, origin: &[u8]) -> Option<String> {
    let origin = normalize_origin(std::str::from_utf8(origin).ok()?);
    (origin == route.url.origin() || route.allowed_origins.contains(&origin)).then_some(origin)
}

enum BearerProblem {
    Missing,
    Malformed(&'static str, &'static str),
}

/// Exactly one `Authorization: Bearer <token>` (RFC 6750 §2.1); anything else is refused.
fn bearer_token<'a>(values: &[&'a [u8]]) -> Result<&'a str, BearerProblem> {
    let value = match values {
        [] => return Err(BearerProblem::Missing),
        [one] => *one,
        _ => {
            return Err(BearerProblem::Malformed(
                "authorization-repeated",
                "send exactly one Authorization header",
            ))
        }
    };
    // RFC 6750 §3.1: another scheme (or a bare "Bearer") is no bearer credential at all, so it
    // gets the plain challenge that starts the client's sign-in.
    let Ok(value) = std::str::from_utf8(value) else {
        return Err(BearerProblem::Missing);
    };
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerProblem::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(BearerProblem::Missing);
    }
    if token.contains(' ') {
        return Err(BearerProblem::Malformed(
            "authorization-malformed",
            "malformed bearer token",
        ));
    }
    Ok(token)
}

//! The response path of a request the filter let through: CORS headers for browser clients,
//! the upstream's `Mcp-Session-Id` wrapped for this user (see `warden_core::session`), a
//! `tools/list` result filtered down to the tools the caller may call, and an upstream token
//! (TI) the server refused dropped and answered for. It knows the request only through
//! `Forwarded`, what the request path hands it; a reply it makes goes back to be sent.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};
use serde_json::Value;
use warden_core::access::Grant;
use warden_core::internal_api::DropRequest;
use warden_core::mcp::may_call_tool;
use warden_core::reply::{LocalReply, ReplyTo, CORS_EXPOSE_HEADERS};
use warden_core::session::MAX_UPSTREAM_ID_BYTES;
use warden_core::toolslist::{filter_message, SseToolsFilter};
use warden_core::upstream::{self, UpstreamToken};

use crate::metrics::Counter;
use crate::worker::{now_seconds, Worker};

/// Largest `tools/list` JSON result (or single SSE event) held back for filtering.
const MAX_TOOLS_LIST_BYTES: usize = 4 * 1024 * 1024;

/// What the response path keeps of a request: set while the request is carried out.
pub struct ResponsePath {
    /// What a `tools/list` result goes through.
    pub filter: ResponseFilter,
    /// Whether `filter` removes tools the caller may not call; `false`: it only reads the
    /// answer's tool names (the tool-call labels) and passes the answer on unchanged.
    pub filtering: bool,
    /// The TI sent upstream with this request, checked against the server's answer.
    pub upstream_sent: Option<Rc<UpstreamToken>>,
}

/// The request a response answers, as the response path reads it.
pub struct Forwarded<'a> {
    /// The stream's context.
    pub id: u32,
    pub worker: &'a RefCell<Worker>,
    /// What the access decision granted (none: not an MCP call).
    pub grant: Option<&'a Grant>,
    /// The request's `x-request-id`, which JSON-RPC errors carry for the log.
    pub request_id: &'a str,
    /// The client's trace context, for the call-outs.
    pub trace: &'a warden_core::trace_context::TraceContext,
}

pub enum ResponseFilter {
    None,
    /// A `tools/list` JSON result: buffered whole, then filtered.
    Json(Value),
    /// A `tools/list` answered as SSE: filtered event by event.
    Sse(SseToolsFilter),
}

fn set_header(name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value);
}

impl ResponsePath {
    pub fn new() -> Self {
        Self {
            filter: ResponseFilter::None,
            filtering: false,
            upstream_sent: None,
        }
    }

    /// The response headers: `Some` is the reply to send in the server's place.
    pub fn on_headers(&mut self, request: &Forwarded<'_>) -> Option<LocalReply> {
        if self.upstream_sent.is_some() {
            if let Some(reply) = self.check_upstream_refusal(request) {
                return Some(reply);
            }
        }
        let grant = request.grant?;
        if let Some(origin) = &grant.cors_origin {
            set_header("access-control-allow-origin", Some(origin.as_bytes()));
            set_header(
                "access-control-expose-headers",
                Some(CORS_EXPOSE_HEADERS.as_bytes()),
            );
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "vary", "Origin");
        }
        if let Ok(Some(upstream_id)) =
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "mcp-session-id")
        {
            // The client only ever sees the id bound to this user and route. An id too long
            // to come back is dropped: the client could not use it anyway.
            let w = request.worker.borrow();
            let wrapped = w.config.routes.get(grant.route).and_then(|route| {
                w.session_key
                    .wrap(&route.name, &grant.identity.claims.sub, &upstream_id)
            });
            if wrapped.is_none() {
                log::warn!(
                    "mcp-warden: upstream Mcp-Session-Id of {} bytes exceeds {MAX_UPSTREAM_ID_BYTES}; dropped",
                    upstream_id.len()
                );
            }
            set_header("mcp-session-id", wrapped.as_deref().map(str::as_bytes));
        }
        if let ResponseFilter::Json(id) = &self.filter {
            let content_type =
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "content-type")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
            let content_type = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
            if content_type.starts_with("text/event-stream") {
                self.filter =
                    ResponseFilter::Sse(SseToolsFilter::new(id.clone(), MAX_TOOLS_LIST_BYTES));
            } else if !content_type.starts_with("application/json") {
                self.filter = ResponseFilter::None;
            }
            // The filtered body has another length.
            if self.filtering {
                set_header("content-length", None);
            }
        }
        None
    }

    pub fn on_body(
        &mut self,
        request: &Forwarded<'_>,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let body = |size| {
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        match &mut self.filter {
            ResponseFilter::None => Action::Continue,
            ResponseFilter::Json(id) => {
                if !end_of_stream {
                    if body_size > MAX_TOOLS_LIST_BYTES {
                        // Too large to hold: it streams as is (unfiltered, logged).
                        log::warn!("mcp-warden: tools/list result over {MAX_TOOLS_LIST_BYTES} bytes not filtered");
                        self.filter = ResponseFilter::None;
                        return Action::Continue;
                    }
                    return Action::Pause;
                }
                let id = id.clone();
                let full = body(body_size);
                let Some(grant) = request.grant else {
                    return Action::Continue;
                };
                let (route, identity) = (grant.route, Rc::clone(&grant.identity));
                if !self.filtering {
                    learn_tools(request, &full, &id);
                    return Action::Continue;
                }
                let known = {
                    let w = request.worker.borrow();
                    w.lists
                        .get(route, &identity, &id, &full)
                        .map(|(filtered, removed)| {
                            let _ = hostcalls::set_buffer(
                                BufferType::HttpResponseBody,
                                0,
                                body_size,
                                filtered,
                            );
                            removed
                        })
                };
                if let Some(removed) = known {
                    count_filtered(request, removed);
                    return Action::Continue;
                }
                if let Some(visible) = tool_visibility(request) {
                    let visible = learning(request, visible);
                    if let Some((filtered, removed)) = filter_message(&full, &id, &visible) {
                        let _ = hostcalls::set_buffer(
                            BufferType::HttpResponseBody,
                            0,
                            body_size,
                            &filtered,
                        );
                        request
                            .worker
                            .borrow_mut()
                            .lists
                            .put(route, &identity, &id, &full, &filtered, removed);
                        count_filtered(request, removed);
                    }
                }
                Action::Continue
            }
            ResponseFilter::Sse(_) => {
                let chunk = body(body_size);
                let visible: Box<dyn Fn(&str) -> bool> = if self.filtering {
                    match tool_visibility(request) {
                        Some(visible) => Box::new(learning(request, visible)),
                        None => return Action::Continue,
                    }
                } else {
                    Box::new(learning(request, |_: &str| true))
                };
                let ResponseFilter::Sse(sse) = &mut self.filter else {
                    return Action::Continue;
                };
                let before = sse.removed;
                match sse.push(&chunk, end_of_stream, &*visible) {
                    Ok(out) => {
                        let removed = sse.removed - before;
                        let _ =
                            hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
                        count_filtered(request, removed);
                        Action::Continue
                    }
                    Err(_) => {
                        // An event too large to judge: end the stream rather than leak it.
                        log::warn!(
                            "mcp-warden: SSE event over {MAX_TOOLS_LIST_BYTES} bytes; stream reset"
                        );
                        let _ = hostcalls::reset_http_request();
                        Action::Pause
                    }
                }
            }
        }
    }

    /// When the MCP server refused the TI this request carried (`401`, or `403` for
    /// `insufficient_scope`): forget it, tell the token service, and answer the client in the
    /// server's place (the reply). `None`: the response goes on. Only requests that carried a
    /// TI get here, so other routes' `401`s pass untouched.
    fn check_upstream_refusal(&mut self, request: &Forwarded<'_>) -> Option<LocalReply> {
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok())?;
        if status != 401 && status != 403 {
            return None;
        }
        let headers = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        let challenges: Vec<&[u8]> = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, value)| value.as_slice())
            .collect();
        let refusal = upstream::refused_by_upstream(status, &challenges)?;
        // Taken: the reply below passes this callback again and must not be judged.
        let sent = self.upstream_sent.take()?;
        let grant = request.grant?;
        let worker = request.worker;
        let config = Rc::clone(&worker.borrow().config);
        let route = config.routes.get(grant.route)?;
        let sub = grant.identity.claims.sub.as_str();
        {
            let mut w = worker.borrow_mut();
            w.upstream_tokens.remove(grant.route, sub, &sent);
            let drop = DropRequest {
                sub: sub.into(),
                route: route.name.clone(),
                access_token: sent.access_token().into(),
                reason: refusal.reason.as_str().into(),
                scope: refusal.scope.clone(),
            };
            // Serializing strings cannot fail.
            w.dispatch_drop(
                request.id,
                &serde_json::to_string(&drop).unwrap_or_default(),
                request.trace,
            );
            w.metrics.inc(Counter::UpstreamTokenRefused);
        }
        let reply = upstream::refused_reply(
            route,
            &refusal,
            &sent,
            now_seconds(),
            ReplyTo {
                request_id: request.request_id,
                cors: grant.cors_origin.as_deref(),
            },
        );
        log::info!(
            "mcp-warden: the MCP server of route {} refused the upstream token ({status}, {}); dropped it, answering {} {}",
            route.name,
            refusal.reason.as_str(),
            reply.status,
            reply.reason
        );
        self.filter = ResponseFilter::None;
        Some(reply)
    }
}

/// Reads the tool names of a `tools/list` JSON answer for the tool-call labels, leaving the
/// answer as it is.
fn learn_tools(request: &Forwarded<'_>, answer: &[u8], id: &Value) {
    let learn = learning(request, |_: &str| true);
    let _ = filter_message(answer, id, &learn);
}

/// `visible`, telling the metrics each tool name it is asked about (a name the route's server
/// listed; when filtering, the names hidden from this caller too).
fn learning<'a>(
    request: &Forwarded<'a>,
    visible: impl Fn(&str) -> bool + 'a,
) -> impl Fn(&str) -> bool + 'a {
    let worker = request.worker;
    let route = request.grant.map(|g| g.route);
    move |tool: &str| {
        if let Some(route) = route {
            worker.borrow().metrics.learn_tool(route, tool);
        }
        visible(tool)
    }
}

/// Whether a tools/list result was removed anything from (for the counter).
fn count_filtered(request: &Forwarded<'_>, removed: usize) {
    if removed > 0 {
        request
            .worker
            .borrow()
            .metrics
            .inc(Counter::ToolsListFiltered);
    }
}

/// The caller's view of a tool: could they call it?
fn tool_visibility(request: &Forwarded<'_>) -> Option<impl Fn(&str) -> bool> {
    let grant = request.grant?;
    let config = Rc::clone(&request.worker.borrow().config);
    let route_index = grant.route;
    let identity = Rc::clone(&grant.identity);
    Some(move |tool: &str| {
        config
            .routes
            .get(route_index)
            .is_some_and(|route| may_call_tool(route, &identity.claims, tool))
    })
}

//! The request path of one HTTP stream: read the head, ask the core for the access decision,
//! buffer and judge the body, carry the verdict out, and on routes with `upstream_oauth` send
//! the user's upstream token (TI) instead of theirs. The state lives behind an `Rc` so the
//! root context can finish a request that waited for the JWKS (`wake`) or a look-up
//! (`deliver_lookup`).

use std::cell::RefCell;
use std::ops::Range;
use std::rc::{Rc, Weak};
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use warden_core::access::{self, Grant, RequestHead, Step};
use warden_core::app::{self, AppStep, AppToken, TokenAnswer};
use warden_core::assertion::{self, Fetched, IdentityAssertion};
use warden_core::config::Route;
use warden_core::mcp::{self as judge, CallHead, Verdict};
use warden_core::names::{disguised_header, is_method_override};
use warden_core::reply::LocalReply;
use warden_core::token::{Identity, TeClaims, TokenError};
use warden_core::transport::MethodRule;
use warden_core::upstream::{self, Lookup, ReplyTo, UpstreamToken, MAX_ANSWER_BYTES};

use crate::headers::HeaderBlock;
use crate::metrics::{Counter, Metrics};
use crate::response::ResponseFilter;
use crate::worker::{now_seconds, seconds, LookupKind, Waiter, Worker};

/// The request head as the host gave it (one block), with the fields the decision reads as
/// ranges into it; kept while a JWKS fetch is in flight.
struct OwnedHead {
    block: HeaderBlock,
    method: Range<usize>,
    authority: Range<usize>,
    scheme: Range<usize>,
    path: Range<usize>,
    envoy_route: Option<Vec<u8>>,
    /// `envoy_route` came from the plugin's `route_header`.
    route_in_header: bool,
    origin: Option<Range<usize>>,
    authorization: Vec<Range<usize>>,
    is_preflight: bool,
    content_length: Option<Range<usize>>,
    transfer_encoding: bool,
    session_ids: Vec<Range<usize>>,
    disguised_header: Option<&'static str>,
    method_override: bool,
    /// Identity assertions the client sent (ours or Pomerium's, any spelling), by header
    /// name: removed before anything else happens.
    client_assertions: Vec<String>,
    /// Every `Cookie` header (client routes find their session in them).
    cookies: Vec<Range<usize>>,
    /// What the MCP judgement reads (kept as text; odd bytes only ever fail a comparison).
    call: CallHead,
    end_of_stream: bool,
}

impl OwnedHead {
    /// `route_header`: the header Envoy sets to its route's name (plugin `route_header`);
    /// without one, the name is read from the `xds.route_name` property.
    fn read(end_of_stream: bool, route_header: Option<&str>) -> Self {
        // One host call for all headers: cheaper than one per header, and the only way to
        // see a repeated header.
        let block = HeaderBlock::request();
        let mut head = OwnedHead {
            block: HeaderBlock::empty(),
            method: 0..0,
            authority: 0..0,
            scheme: 0..0,
            path: 0..0,
            envoy_route: None,
            route_in_header: route_header.is_some(),
            origin: None,
            authorization: Vec::new(),
            is_preflight: false,
            content_length: None,
            transfer_encoding: false,
            session_ids: Vec::new(),
            disguised_header: None,
            method_override: false,
            client_assertions: Vec::new(),
            cookies: Vec::new(),
            call: CallHead::default(),
            end_of_stream,
        };
        let route_header = route_header.map(str::as_bytes);
        let mut envoy_routes = 0;
        for (name, value) in block.pairs() {
            let text = || lossy(block.get(&value));
            if Some(name) == route_header {
                envoy_routes += 1;
                head.envoy_route = Some(block.get(&value).to_vec());
                continue;
            }
            match name {
                b":method" => head.method = value,
                b":authority" => head.authority = value,
                b":scheme" => head.scheme = value,
                b":path" => head.path = value,
                b"origin" => head.origin = Some(value),
                b"authorization" => head.authorization.push(value),
                b"access-control-request-method" => head.is_preflight = true,
                b"content-length" => head.content_length = Some(value),
                b"transfer-encoding" => head.transfer_encoding = true,
                b"mcp-session-id" => head.session_ids.push(value),
                b"content-type"
                | b"content-encoding"
                | b"mcp-protocol-version"
                | b"mcp-method"
                | b"mcp-name" => head.call.record_header(name, text()),
                b"x-request-id" => head.call.request_id = text(),
                b"cookie" => head.cookies.push(value),
                other if assertion::is_client_assertion(other) => {
                    head.client_assertions.push(lossy(other));
                }
                other if is_method_override(other) => head.method_override = true,
                other => {
                    if head.disguised_header.is_none() {
                        head.disguised_header =
                            std::str::from_utf8(other).ok().and_then(disguised_header);
                    }
                }
            }
        }
        if route_header.is_none() {
            // Envoy's routing decision; the hostcall (unlike the trait getter) reports, not
            // panics.
            head.envoy_route = hostcalls::get_property(vec!["xds", "route_name"])
                .ok()
                .flatten();
        } else if envoy_routes > 1 {
            // Envoy sets the header once: two mean the route cannot be known. A name of no
            // route fails closed (403 route-unknown).
            head.envoy_route = Some(warden_core::config::ENVOY_ROUTE_PREFIX.as_bytes().to_vec());
        }
        head.call.method = lossy(block.get(&head.method));
        head.block = block;
        head
    }

    fn view(&self) -> RequestHead<'_> {
        let b = &self.block;
        RequestHead {
            method: b.get(&self.method),
            authority: b.get(&self.authority),
            scheme: b.get(&self.scheme),
            path: b.get(&self.path),
            envoy_route: self.envoy_route.as_deref(),
            envoy_route_in_header: self.route_in_header,
            origin: self.origin.as_ref().map(|r| b.get(r)),
            authorization: self.authorization.iter().map(|r| b.get(r)).collect(),
            is_preflight: self.is_preflight,
            content_length: self.content_length.as_ref().map(|r| b.get(r)),
            transfer_encoding: self.transfer_encoding,
            session_ids: self.session_ids.iter().map(|r| b.get(r)).collect(),
            disguised_header: self.disguised_header,
            method_override: self.method_override,
            cookies: self.cookies.iter().map(|r| b.get(r)).collect(),
        }
    }
}

/// The downstream address as Envoy has it (`source.address`; with `use_remote_address` and
/// trusted hops, the client behind them). A host call: made only when a signature is due.
fn client_address() -> Option<Vec<u8>> {
    hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()
}

/// 32 bytes from the host's randomness (WASI `random_get`).
fn random_bytes() -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).ok().map(|()| b)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An authorized request on an MCP route, waiting for (or past) its body judgement.
struct PendingCall {
    head: CallHead,
    /// Waiting for the end of the body: a POST body to judge, or the end of a GET / DELETE
    /// that must turn out empty.
    waiting_for_body: bool,
}

/// What the request body callbacks have seen so far (they may run while keys are fetched).
#[derive(Default)]
struct BodySeen {
    size: usize,
    complete: bool,
}

pub struct RequestState {
    pub(crate) id: u32,
    me: Weak<RefCell<RequestState>>,
    pub(crate) worker: Rc<RefCell<Worker>>,
    pub(crate) grant: Option<Grant>,
    /// Paused until the JWKS fetch answers (`wake`).
    awaiting_keys: bool,
    /// Paused until the token service answers this call-out with the user's TI.
    upstream_lookup: Option<u32>,
    /// Paused until the token service answers this call-out with the identity assertion.
    assertion_lookup: Option<u32>,
    /// A request on a client route (or its sign-in callback).
    app: Option<AppRequest>,
    /// Paused until the token service answers this call-out about the app session.
    app_lookup: Option<u32>,
    /// An app TE waiting for the JWKS that holds its key.
    app_token_awaiting_keys: Option<(app::Secret, i64)>,
    /// The TI sent upstream with this request, checked against the server's answer.
    pub(crate) upstream_sent: Option<Rc<UpstreamToken>>,
    /// A local reply went out: nothing of this request may continue upstream.
    replied: bool,
    /// The stream is over; a late wake-up must not touch it.
    done: bool,
    head: Option<OwnedHead>,
    /// When the request headers arrived (the authorize record's duration starts here).
    started: SystemTime,
    call: Option<PendingCall>,
    body_seen: BodySeen,
    pub(crate) response: ResponseFilter,
}

/// Finishes a request that waited for the JWKS, from the root context's callback.
pub fn wake(waiter: Waiter) {
    let Some(state) = waiter.state.upgrade() else {
        return;
    };
    let Ok(mut s) = state.try_borrow_mut() else {
        return;
    };
    if s.done || !s.awaiting_keys || hostcalls::set_effective_context(waiter.id).is_err() {
        return;
    }
    s.awaiting_keys = false;
    if let Some((te, expires_at)) = s.app_token_awaiting_keys.take() {
        s.resume_app_token(te, expires_at);
        return;
    }
    if let Action::Continue = s.decide_and_act(false, now_seconds()) {
        let _ = hostcalls::resume_http_request();
    }
}

/// Finishes a request that waited for its upstream token or identity assertion, with the
/// token service's answer.
pub fn deliver_lookup(waiter: Waiter, kind: LookupKind, headers: usize, body_size: usize) {
    let Some(state) = waiter.state.upgrade() else {
        return;
    };
    let Ok(mut s) = state.try_borrow_mut() else {
        return;
    };
    // The request's context must be effective for its headers, resume and local reply.
    if s.done || hostcalls::set_effective_context(waiter.id).is_err() {
        return;
    }
    let (status, body) = read_answer(headers, body_size);
    match kind {
        LookupKind::UpstreamToken => s.accept_lookup(status, &body),
        LookupKind::IdentityAssertion => s.accept_assertion(status, &body),
        LookupKind::AppSession => s.accept_app_session(status, &body),
        LookupKind::AppToken => s.accept_app_token(status, &body),
        LookupKind::AppSessionEnd => s.accept_app_session_end(status, &body),
    }
}

/// The internal API's answer to the call-out being delivered: `None` status when the call
/// failed (Envoy's sign: zero headers); bodies over the bound are not read.
fn read_answer(headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    let status = if headers == 0 {
        None
    } else {
        hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
            .ok()
            .and_then(|h| h.into_iter().find(|(name, _)| name == ":status"))
            .and_then(|(_, value)| std::str::from_utf8(&value).ok()?.parse::<u32>().ok())
    };
    let body = if body_size == 0 || body_size > MAX_ANSWER_BYTES {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    (status, body)
}

impl RequestState {
    /// Asks the core for a decision; the worker borrow ends before anything is carried out.
    fn decide(&self, head: &OwnedHead, now: i64, may_fetch_keys: bool) -> Step {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        if w.keys.is_none() {
            let _ = w.sync_keys();
        }
        let keys = w.keys.clone();
        let config = Rc::clone(&w.config);
        access::decide(
            &head.view(),
            access::Context {
                config: &config,
                keys: keys.as_deref(),
                cache: &mut w.cache,
                session_key: &w.session_key,
                now,
                may_fetch_keys,
                random: random_bytes,
                budget: &mut w.budget,
                client_address,
            },
        )
    }

    /// Runs the decision and carries it out; returns the action for the current callback.
    fn decide_and_act(&mut self, may_fetch_keys: bool, now: i64) -> Action {
        let Some(head) = self.head.take() else {
            return Action::Continue;
        };
        match self.decide(&head, now, may_fetch_keys) {
            Step::PassThrough => Action::Continue,
            Step::Reply(reply) => {
                let counter = if reply.status < 300 {
                    Counter::LocalReplies
                } else {
                    Metrics::for_access_refusal(reply.reason)
                };
                self.worker.borrow().metrics.inc(counter);
                if reply.status >= 400 && self.worker.borrow_mut().may_log_rejection(now) {
                    let path = head.block.get(&head.path);
                    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
                    log::info!(
                        "mcp-warden: rejected {} {}: {}",
                        reply.status,
                        String::from_utf8_lossy(path),
                        reply.reason
                    );
                }
                self.send(reply);
                Action::Pause
            }
            Step::FetchKeys => {
                self.head = Some(head);
                // Another worker may have fetched the key already (a second pass finds no
                // newer set, so this recurses at most once).
                if self.worker.borrow_mut().sync_keys() {
                    return self.decide_and_act(may_fetch_keys, now);
                }
                let waiter = Waiter {
                    id: self.id,
                    state: self.me.clone(),
                };
                if self.worker.borrow_mut().want_keys(now, waiter) {
                    self.awaiting_keys = true;
                    Action::Pause
                } else {
                    // No fetch allowed now: decide with the keys we have (401 or 503).
                    self.decide_and_act(false, now)
                }
            }
            Step::Forward(grant) => {
                // The client's token is ours alone: it never reaches the upstream.
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "authorization",
                    None,
                );
                // Nor does an app session cookie a browser sends to a server on an app's host.
                strip_app_cookies(&head);
                if let Some(id) = &grant.upstream_session_id {
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpRequestHeaders,
                        "mcp-session-id",
                        Some(id),
                    );
                }
                let method = grant.method;
                self.grant = Some(grant);
                self.call = Some(PendingCall {
                    head: head.call,
                    waiting_for_body: false,
                });
                self.begin_call(method, head.end_of_stream)
            }
            Step::App(step) => self.app_step(step, &head),
        }
    }

    pub(crate) fn send(&mut self, reply: LocalReply) {
        self.replied = true;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    /// Nothing may move upstream while the request is undecided or after it was refused.
    fn holding(&self) -> bool {
        self.awaiting_keys || self.lookups_pending() || self.replied
    }

    fn lookups_pending(&self) -> bool {
        self.upstream_lookup.is_some()
            || self.assertion_lookup.is_some()
            || self.app_lookup.is_some()
    }

    /// Lets a request that waited for its credentials go on once it has all of them (and
    /// nothing refused it meanwhile).
    fn resume_when_ready(&self) {
        if !self.lookups_pending() && !self.replied && !self.awaiting_keys {
            let _ = hostcalls::resume_http_request();
        }
    }

    /// The credentials the route sends upstream: the identity assertion and the TI, each
    /// from the worker's cache or from the token service. Both call-outs leave at once; the
    /// request goes on when both answered.
    fn attach_credentials(&mut self, upstream_oauth: bool, pass_identity_headers: bool) -> Action {
        let mut action = Action::Continue;
        if pass_identity_headers {
            if let Action::Pause = self.attach_identity_assertion() {
                action = Action::Pause;
            }
        }
        if self.replied {
            return Action::Pause;
        }
        if upstream_oauth {
            if let Action::Pause = self.attach_upstream_token() {
                action = Action::Pause;
            }
        }
        action
    }

    /// Adds the user's identity assertion: from the worker's cache (no call-out, nothing
    /// signed), or paused while the token service issues one.
    fn attach_identity_assertion(&mut self) -> Action {
        let Some((route_index, identity, cors)) = self.credential_subject() else {
            return Action::Continue;
        };
        let now = now_seconds();
        let worker = Rc::clone(&self.worker);
        let mut w = worker.borrow_mut();
        let sub = identity.claims.sub.as_str();
        if let Some(assertion) = w.assertions.get(route_index, sub, now) {
            if let Some(route) = w.config.routes.get(route_index) {
                set_assertion(&route.identity_headers, &assertion);
            }
            return Action::Continue;
        }
        let body = match w.config.routes.get(route_index) {
            Some(route) => assertion::request_body(sub, &route.name),
            None => return Action::Continue,
        };
        let waiter = Waiter {
            id: self.id,
            state: self.me.clone(),
        };
        match w.start_lookup(waiter, LookupKind::IdentityAssertion, &body) {
            Ok(token) => {
                self.assertion_lookup = Some(token);
                Action::Pause
            }
            Err(reason) => {
                drop(w);
                let reply = if self.app.is_some() {
                    app::unavailable_page(reason)
                } else {
                    upstream::token_service_unavailable(
                        reason,
                        ReplyTo {
                            request_id: self.request_id(),
                            cors: cors.as_deref(),
                        },
                    )
                };
                self.refuse_for_credentials(reply, Counter::DeniedIdentityAssertion);
                Action::Pause
            }
        }
    }

    /// Whose identity assertion the request carries: the MCP grant's, or the app session's.
    fn credential_subject(&self) -> Option<(usize, Rc<Identity>, Option<String>)> {
        if let Some(grant) = self.grant.as_ref() {
            return Some((
                grant.route,
                Rc::clone(&grant.identity),
                grant.cors_origin.clone(),
            ));
        }
        let app = self.app.as_ref()?;
        Some((app.route, Rc::clone(app.identity.as_ref()?), None))
    }

    /// The token service answered the assertion request: add it, or answer the client.
    fn accept_assertion(&mut self, status: Option<u32>, body: &[u8]) {
        if self.assertion_lookup.take().is_none() || self.replied {
            return;
        }
        let Some((route_index, identity, cors)) = self.credential_subject() else {
            return;
        };
        let worker = Rc::clone(&self.worker);
        let config = Rc::clone(&worker.borrow().config);
        let Some(route) = config.routes.get(route_index) else {
            return;
        };
        let to = ReplyTo {
            request_id: self.request_id(),
            cors: cors.as_deref(),
        };
        match assertion::classify(status, body, route, to) {
            Fetched::Use(assertion) => {
                let assertion = Rc::new(assertion);
                set_assertion(&route.identity_headers, &assertion);
                worker.borrow_mut().assertions.put(
                    route_index,
                    &identity.claims.sub,
                    assertion,
                    now_seconds(),
                );
                self.resume_when_ready();
            }
            Fetched::Refuse(reply) => {
                // A browser on an app gets a page, not an MCP client's JSON: the token
                // service down, or (the user gone) sign in again.
                let reply = match self.app.as_mut() {
                    Some(_) if reply.status >= 500 => app::unavailable_page(reply.reason),
                    Some(app) => {
                        let (route, key) = (app.route, app.cache_key.clone());
                        let expired = app.expired.take();
                        worker
                            .borrow_mut()
                            .app_tokens
                            .remove_if(route, &key, |_| true);
                        expired.unwrap_or(reply)
                    }
                    None => reply,
                };
                self.refuse_for_credentials(reply, Counter::DeniedIdentityAssertion)
            }
        }
    }

    /// The request's `x-request-id`, which JSON-RPC errors carry for the log.
    pub(crate) fn request_id(&self) -> &str {
        self.call
            .as_ref()
            .map(|c| c.head.request_id.as_str())
            .unwrap_or_default()
    }

    /// Sends the user's TI upstream: from the worker's cache (no call-out), or paused while
    /// the token service is asked.
    fn attach_upstream_token(&mut self) -> Action {
        let Some(grant) = self.grant.as_ref() else {
            return Action::Continue;
        };
        let now = now_seconds();
        let worker = Rc::clone(&self.worker);
        let mut w = worker.borrow_mut();
        let sub = grant.identity.claims.sub.as_str();
        if let Some(token) = w.upstream_tokens.get(grant.route, sub, now) {
            // Replaces any value; the client's own was removed with the decision.
            let _ = hostcalls::set_map_value_bytes(
                MapType::HttpRequestHeaders,
                "authorization",
                Some(token.authorization().as_bytes()),
            );
            self.upstream_sent = Some(token);
            return Action::Continue;
        }
        let body = match w.config.routes.get(grant.route) {
            Some(route) => upstream::lookup_body(sub, &route.name),
            None => return Action::Continue,
        };
        let waiter = Waiter {
            id: self.id,
            state: self.me.clone(),
        };
        match w.start_lookup(waiter, LookupKind::UpstreamToken, &body) {
            Ok(token) => {
                self.upstream_lookup = Some(token);
                Action::Pause
            }
            Err(reason) => {
                drop(w);
                let reply = upstream::token_service_unavailable(
                    reason,
                    ReplyTo {
                        request_id: self.request_id(),
                        cors: grant.cors_origin.as_deref(),
                    },
                );
                self.refuse_for_credentials(reply, Counter::DeniedUpstreamToken);
                Action::Pause
            }
        }
    }

    /// The token service answered the look-up: send the TI upstream, or answer the client.
    fn accept_lookup(&mut self, status: Option<u32>, body: &[u8]) {
        if self.upstream_lookup.take().is_none() || self.replied {
            return;
        }
        let Some(grant) = self.grant.as_ref() else {
            return;
        };
        let worker = Rc::clone(&self.worker);
        let config = Rc::clone(&worker.borrow().config);
        let Some(route) = config.routes.get(grant.route) else {
            return;
        };
        let to = ReplyTo {
            request_id: self.request_id(),
            cors: grant.cors_origin.as_deref(),
        };
        match upstream::classify_lookup(status, body, route, to) {
            Lookup::Use(token) => {
                let token = Rc::new(token);
                worker.borrow_mut().upstream_tokens.put(
                    grant.route,
                    &grant.identity.claims.sub,
                    Rc::clone(&token),
                    now_seconds(),
                );
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "authorization",
                    Some(token.authorization().as_bytes()),
                );
                self.upstream_sent = Some(token);
                self.resume_when_ready();
            }
            Lookup::Refuse(reply) => {
                self.refuse_for_credentials(reply, Counter::DeniedUpstreamToken)
            }
        }
    }

    /// A credential the route needs cannot be had: the client gets `reply`, and the request
    /// never reaches the upstream (a look-up still in flight finds it answered).
    fn refuse_for_credentials(&mut self, reply: LocalReply, counter: Counter) {
        self.worker.borrow().metrics.inc(counter);
        let route = self
            .grant
            .as_ref()
            .map(|g| g.route)
            .or(self.app.as_ref().map(|a| a.route))
            .and_then(|index| {
                let w = self.worker.borrow();
                w.config.routes.get(index).map(|r| r.name.clone())
            })
            .unwrap_or_default();
        log::info!(
            "mcp-warden: rejected {} on route {route}: {}",
            reply.status,
            reply.reason
        );
        self.send(reply);
    }

    /// After the token check: judge what can be judged now, or wait for the body to end.
    fn begin_call(&mut self, method: MethodRule, end_of_stream: bool) -> Action {
        if method == MethodRule::InspectBody
            && self
                .route_limit()
                .is_some_and(|limit| self.body_seen.size > limit)
        {
            return self.refuse_oversize();
        }
        if end_of_stream || self.body_seen.complete {
            // A body that arrived while keys were fetched is already buffered.
            return self.body_complete();
        }
        if method == MethodRule::Bodiless && self.body_seen.size > 0 {
            return self.finish(|_, _, head| judge::refuse_unexpected_body(head));
        }
        if let Some(call) = self.call.as_mut() {
            call.waiting_for_body = true;
        }
        Action::Pause
    }

    /// The body has ended: judge a POST body, or let an empty GET / DELETE through.
    fn body_complete(&mut self) -> Action {
        let size = self.body_seen.size;
        match self.grant.as_ref().map(|g| g.method) {
            Some(MethodRule::InspectBody) => {
                let body = if size == 0 {
                    Vec::new()
                } else {
                    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                };
                let reasons = self.record_wanted();
                self.finish(|route, claims, head| {
                    judge::judge_body_with(route, claims, head, &body, reasons)
                })
            }
            _ if size > 0 => self.finish(|_, _, head| judge::refuse_unexpected_body(head)),
            _ => self.finish(judge::judge_bodiless),
        }
    }

    /// Runs a judgement for the pending call, logs it, and replies or lets it through.
    fn finish(&mut self, run: impl FnOnce(&Route, &TeClaims, &CallHead) -> Verdict) -> Action {
        if let Some(call) = self.call.as_mut() {
            call.waiting_for_body = false;
        }
        let (Some(grant), Some(call)) = (self.grant.as_ref(), self.call.as_ref()) else {
            return Action::Continue;
        };
        let worker = Rc::clone(&self.worker);
        let w = worker.borrow();
        let Some(route) = w.config.routes.get(grant.route) else {
            return Action::Continue;
        };
        let verdict = run(route, &grant.identity.claims, &call.head);
        if self.record_wanted() {
            let elapsed = hostcalls::get_current_time()
                .ok()
                .and_then(|now| now.duration_since(self.started).ok())
                .map(|d| d.as_micros() as u64)
                .unwrap_or_default();
            let subject = judge::LogSubject {
                request_id: &call.head.request_id,
                route: &route.name,
                claims: &grant.identity.claims,
            };
            let line = verdict.log.render(&subject, elapsed);
            log::info!("authorize {line}");
            if w.config.authorize_filter_state {
                // For Envoy's access log: `%FILTER_STATE(wasm.mcp_warden.authorize:PLAIN)%`.
                // (Envoy's Wasm host cannot write dynamic metadata; filter state is its offer.)
                let _ =
                    hostcalls::set_property(vec!["mcp_warden.authorize"], Some(line.as_bytes()));
            }
        }
        if verdict.log.batch_size > 0 {
            w.metrics.inc(Counter::Batch);
        }
        match verdict.reply {
            Some(reply) => {
                w.metrics.inc(Metrics::for_refusal(reply.reason));
                let cors = grant.cors_origin.clone();
                drop(w);
                self.send(reply.with_cors(cors.as_deref()));
                Action::Pause
            }
            None => {
                w.metrics.inc(Counter::Allowed);
                if route.filter_tools_list && route.policy.has_tool_rules {
                    if let Some(id) = verdict.tools_list_id {
                        self.response = ResponseFilter::Json(id);
                    }
                }
                let (upstream_oauth, pass_identity) =
                    (route.upstream_oauth, route.pass_identity_headers);
                if upstream_oauth || pass_identity {
                    drop(w);
                    return self.attach_credentials(upstream_oauth, pass_identity);
                }
                Action::Continue
            }
        }
    }

    /// Refuses a body over the route's limit: never truncated, never passed unread.
    fn refuse_oversize(&mut self) -> Action {
        let limit = self.route_limit().unwrap_or_default();
        self.finish(|_, _, head| {
            judge::refuse(
                head,
                413,
                judge::INVALID_REQUEST,
                "mcp-oversize",
                &format!("request body exceeds this MCP server's limit of {limit} bytes"),
            )
        })
    }

    /// Whether anyone reads the authorize record: Envoy's log at info, or an access log
    /// through filter state. Without a reader, the policy's reasons are not collected.
    fn record_wanted(&self) -> bool {
        log::log_enabled!(log::Level::Info) || self.worker.borrow().config.authorize_filter_state
    }

    fn route_limit(&self) -> Option<usize> {
        let grant = self.grant.as_ref()?;
        self.worker
            .borrow()
            .config
            .routes
            .get(grant.route)
            .map(|r| r.max_request_bytes)
    }

    fn waiting_for_body(&self) -> bool {
        self.call.as_ref().is_some_and(|c| c.waiting_for_body)
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body_seen.size = body_size;
        self.body_seen.complete = end_of_stream;
        if self.holding() {
            // Refused, or the token is still being checked (`begin_call` takes over then).
            return Action::Pause;
        }
        if !self.waiting_for_body() {
            return Action::Continue;
        }
        match self.grant.as_ref().map(|g| g.method) {
            Some(MethodRule::InspectBody)
                if self.route_limit().is_some_and(|limit| body_size > limit) =>
            {
                return self.refuse_oversize();
            }
            Some(MethodRule::InspectBody) => {}
            // A GET or DELETE body is refused at its first byte.
            _ if body_size > 0 => {
                return self.finish(|_, _, head| judge::refuse_unexpected_body(head))
            }
            _ => {}
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete()
    }

    fn on_request_trailers(&mut self) -> Action {
        // Trailers end the body: judge it now. They must never resume an undecided request.
        self.body_seen.complete = true;
        if self.grant.is_some() || self.awaiting_keys {
            // MCP has no use for request trailers, and the filter judges none of them: a
            // server that merges them into the headers would read an unchecked
            // `Mcp-Session-Id` or `Authorization`. They go nowhere.
            let _ = hostcalls::set_map_bytes(MapType::HttpRequestTrailers, vec![]);
        }
        if self.holding() {
            return Action::Pause;
        }
        if self.waiting_for_body() {
            return self.body_complete();
        }
        Action::Continue
    }
}

/// A request on a client route, while its session is turned into the user's TE.
struct AppRequest {
    route: usize,
    /// SHA-256 of the session cookie (the TE cache's key); empty on the sign-in callback.
    cache_key: String,
    /// The answer when the token service says the session has ended.
    expired: Option<LocalReply>,
    /// The TE's verified identity, once known (for the identity assertion).
    identity: Option<Rc<Identity>>,
}

impl RequestState {
    /// Carries out the decision for a client route: the callback, sign-out, or the session
    /// swapped for the user's TE. Nothing of the request is read as MCP.
    fn app_step(&mut self, step: AppStep, head: &OwnedHead) -> Action {
        match step {
            AppStep::Reply(reply) => {
                self.log_app_reply(&reply);
                self.send(reply);
                Action::Pause
            }
            AppStep::Callback { route, body } => {
                self.app = Some(AppRequest {
                    route,
                    cache_key: String::new(),
                    expired: None,
                    identity: None,
                });
                self.start_app_lookup(LookupKind::AppSession, &body)
            }
            AppStep::SignOut {
                route,
                body,
                cache_key,
            } => {
                self.worker
                    .borrow_mut()
                    .app_tokens
                    .remove_if(route, &cache_key, |_| true);
                self.app = Some(AppRequest {
                    route,
                    cache_key,
                    expired: None,
                    identity: None,
                });
                self.start_app_lookup(LookupKind::AppSessionEnd, &body.0)
            }
            AppStep::Session {
                route,
                cache_key,
                body,
                expired,
            } => {
                // The app never sees a session cookie (its own or another app's on this
                // host), whatever happens next.
                strip_app_cookies(head);
                let now = now_seconds();
                let cached = self
                    .worker
                    .borrow_mut()
                    .app_tokens
                    .get(route, &cache_key, now);
                self.app = Some(AppRequest {
                    route,
                    cache_key,
                    expired: Some(expired),
                    identity: None,
                });
                match cached {
                    Some(token) => self.forward_app(&token),
                    None => self.start_app_lookup(LookupKind::AppToken, &body.0),
                }
            }
        }
    }

    fn start_app_lookup(&mut self, kind: LookupKind, body: &str) -> Action {
        let waiter = Waiter {
            id: self.id,
            state: self.me.clone(),
        };
        let started = self.worker.borrow_mut().start_lookup(waiter, kind, body);
        match started {
            Ok(token) => {
                self.app_lookup = Some(token);
                Action::Pause
            }
            Err(reason) => {
                let reply = app::unavailable_page(reason);
                self.log_app_reply(&reply);
                self.send(reply);
                Action::Pause
            }
        }
    }

    fn log_app_reply(&self, reply: &LocalReply) {
        let w = self.worker.borrow();
        if reply.status >= 400 {
            w.metrics.inc(Counter::Denied);
            let route = self
                .app
                .as_ref()
                .and_then(|a| w.config.routes.get(a.route))
                .map(|r| r.name.as_str())
                .unwrap_or_default();
            log::info!(
                "mcp-warden: app request answered {} on route {route}: {}",
                reply.status,
                reply.reason
            );
        } else {
            w.metrics.inc(Counter::LocalReplies);
        }
    }

    /// Sends the request to the app with the user's TE (and identity assertion), when the
    /// route's policy still lets the user in.
    fn forward_app(&mut self, token: &Rc<AppToken>) -> Action {
        let Some(route_index) = self.app.as_ref().map(|a| a.route) else {
            return Action::Continue;
        };
        let (permitted, pass_identity) = {
            let w = self.worker.borrow();
            match w.config.routes.get(route_index) {
                Some(route) => (
                    app::permits(route, &token.identity),
                    route.pass_identity_headers,
                ),
                None => (false, false),
            }
        };
        if !permitted {
            let reply = app::access_denied_page();
            self.log_app_reply(&reply);
            self.send(reply);
            return Action::Pause;
        }
        // Only the gateway's TE reaches the app: whatever the client sent goes.
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "authorization", None);
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpRequestHeaders,
            "authorization",
            Some(token.authorization().as_bytes()),
        );
        if let Some(app) = self.app.as_mut() {
            app.identity = Some(Rc::clone(&token.identity));
        }
        self.worker.borrow().metrics.inc(Counter::Allowed);
        if pass_identity {
            return self.attach_identity_assertion();
        }
        Action::Continue
    }

    /// The token service answered the callback's code: the cookie and the way back, or a page.
    fn accept_app_session(&mut self, status: Option<u32>, body: &[u8]) {
        self.answer_app_lookup(|route, _| app::classify_session(status, body, route));
    }

    /// The token service ended the app session: on to the issuer's signed-out page (with the
    /// ticket that ends the sign-in there too), or a page saying it could not be done.
    fn accept_app_session_end(&mut self, status: Option<u32>, body: &[u8]) {
        self.answer_app_lookup(|route, issuer| app::classify_end(status, body, route, issuer));
    }

    /// Answers a client-route look-up with the reply `classify` makes of it for the route (and
    /// the issuer).
    fn answer_app_lookup(&mut self, classify: impl FnOnce(&Route, &str) -> LocalReply) {
        if self.app_lookup.take().is_none() || self.replied {
            return;
        }
        let Some(route_index) = self.app.as_ref().map(|a| a.route) else {
            return;
        };
        let config = Rc::clone(&self.worker.borrow().config);
        let Some(route) = config.routes.get(route_index) else {
            return;
        };
        let reply = classify(route, &config.rules.issuer);
        self.log_app_reply(&reply);
        self.send(reply);
    }

    /// The token service answered the session's TE request: forward with it, or answer.
    fn accept_app_token(&mut self, status: Option<u32>, body: &[u8]) {
        if self.app_lookup.take().is_none() || self.replied {
            return;
        }
        let Some((route_index, cache_key)) =
            self.app.as_ref().map(|a| (a.route, a.cache_key.clone()))
        else {
            return;
        };
        let worker = Rc::clone(&self.worker);
        let reply = match app::classify_token(status, body) {
            TokenAnswer::Token(te, expires_at) => match self.use_app_token(te, expires_at, true) {
                Some(reply) => reply,
                None => return,
            },
            TokenAnswer::SessionExpired => {
                worker
                    .borrow_mut()
                    .app_tokens
                    .remove_if(route_index, &cache_key, |_| true);
                self.app
                    .as_mut()
                    .and_then(|a| a.expired.take())
                    .unwrap_or_else(|| app::unavailable_page("app-session-expired"))
            }
            TokenAnswer::AccessDenied => app::access_denied_page(),
            TokenAnswer::Unavailable(reason) => app::unavailable_page(reason),
        };
        self.log_app_reply(&reply);
        self.send(reply);
    }
}

impl RequestState {
    /// Verifies the token service's app TE and forwards with it (`None`: forwarded, or paused
    /// for the JWKS when `may_wait`), or the page to answer.
    fn use_app_token(
        &mut self,
        te: app::Secret,
        expires_at: i64,
        may_wait: bool,
    ) -> Option<LocalReply> {
        let (route_index, cache_key) = self.app.as_ref().map(|a| (a.route, a.cache_key.clone()))?;
        let worker = Rc::clone(&self.worker);
        let config = Rc::clone(&worker.borrow().config);
        let route = config.routes.get(route_index)?;
        let now = now_seconds();
        let keys = {
            let mut w = worker.borrow_mut();
            if w.keys.is_none() {
                let _ = w.sync_keys();
            }
            w.keys.clone()
        };
        let verified = match keys {
            Some(keys) => app::accept_token(&te.0, expires_at, route, &keys, &config.rules, now),
            None => Err(TokenError::UnknownKey(String::new())),
        };
        match verified {
            Ok(token) => {
                let token = Rc::new(token);
                worker
                    .borrow_mut()
                    .app_tokens
                    .put(route_index, &cache_key, Rc::clone(&token), now);
                if let Action::Continue = self.forward_app(&token) {
                    self.resume_when_ready();
                }
                None
            }
            Err(TokenError::UnknownKey(_)) => {
                // Signed with a key this worker has not fetched yet (the first app request
                // after a start, or a new key): wait for the JWKS, then check it again. A
                // refetch too recent to repeat, or a key still unknown after it, gets the page.
                let waiter = Waiter {
                    id: self.id,
                    state: self.me.clone(),
                };
                if may_wait && worker.borrow_mut().want_keys(now, waiter) {
                    self.awaiting_keys = true;
                    self.app_token_awaiting_keys = Some((te, expires_at));
                    return None;
                }
                Some(app::unavailable_page("app-token-unknown-key"))
            }
            Err(e) => {
                log::warn!(
                    "mcp-warden: the token service's app TE for route {} was refused: {}",
                    route.name,
                    e.reason()
                );
                Some(app::unavailable_page("app-token-invalid"))
            }
        }
    }

    /// The JWKS arrived for an app TE that named an unknown key.
    fn resume_app_token(&mut self, te: app::Secret, expires_at: i64) {
        if self.replied {
            return;
        }
        if let Some(reply) = self.use_app_token(te, expires_at, false) {
            self.log_app_reply(&reply);
            self.send(reply);
        }
    }
}

/// Removes the gateway's cookies (every client route's session and sign-in nonce) from the
/// request's `Cookie` headers, keeping the rest; a request without any is left untouched.
fn strip_app_cookies(head: &OwnedHead) {
    if head.cookies.is_empty() {
        return;
    }
    let values: Vec<&[u8]> = head.cookies.iter().map(|r| head.block.get(r)).collect();
    let Some(kept) = app::strip_cookie(&values) else {
        return;
    };
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "cookie", None);
    if let Some(kept) = kept {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "cookie", Some(&kept));
    }
}

/// Sets the assertion in each of the route's identity headers (replacing any value).
fn set_assertion(names: &[&str], assertion: &IdentityAssertion) {
    for name in names {
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpRequestHeaders,
            name,
            Some(assertion.value().as_bytes()),
        );
    }
}

/// The HTTP context the SDK owns; it hands every callback to the shared state.
pub struct WardenRequest {
    state: Rc<RefCell<RequestState>>,
}

impl WardenRequest {
    pub fn new(id: u32, worker: Rc<RefCell<Worker>>) -> Self {
        let state = Rc::new_cyclic(|me| {
            RefCell::new(RequestState {
                id,
                me: me.clone(),
                worker,
                grant: None,
                awaiting_keys: false,
                upstream_lookup: None,
                assertion_lookup: None,
                app: None,
                app_lookup: None,
                app_token_awaiting_keys: None,
                upstream_sent: None,
                replied: false,
                done: false,
                head: None,
                started: SystemTime::UNIX_EPOCH,
                call: None,
                body_seen: BodySeen::default(),
                response: ResponseFilter::None,
            })
        });
        Self { state }
    }
}

impl Context for WardenRequest {
    fn on_done(&mut self) -> bool {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.done = true;
            // Nobody waits for these answers any more; the call-outs stay counted until Envoy
            // has answered them (see `Worker::call_token_service`).
            for token in [
                s.upstream_lookup.take(),
                s.assertion_lookup.take(),
                s.app_lookup.take(),
            ]
            .into_iter()
            .flatten()
            {
                s.worker.borrow_mut().abandon(token);
            }
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _trailers: usize) {
        let worker = match self.state.try_borrow() {
            Ok(s) => Rc::clone(&s.worker),
            Err(_) => return,
        };
        // Anything else is a notice's answer, which nobody reads.
        let lookup = worker.borrow_mut().answered(token);
        if let Some((waiter, kind)) = lookup {
            deliver_lookup(waiter, kind, headers, body);
        }
    }
}

impl WardenRequest {
    /// Runs a callback on the state. The state is only ever borrowed inside one callback (the
    /// host defers what our calls trigger), so the fallback, holding the stream, never runs.
    fn with(&self, f: impl FnOnce(&mut RequestState) -> Action) -> Action {
        match self.state.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            Err(_) => Action::Pause,
        }
    }
}

impl HttpContext for WardenRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with(|s| {
            let route_header = Rc::clone(&s.worker.borrow().config);
            let head = OwnedHead::read(end_of_stream, route_header.route_header.as_deref());
            // Only the gateway vouches for a user: a client's own assertion never goes on,
            // whatever the route (the real one is added after the checks).
            for name in &head.client_assertions {
                let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
            }
            s.head = Some(head);
            // One clock read serves the token's expiry check and the record's duration.
            s.started = hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH);
            let now = seconds(s.started);
            s.decide_and_act(true, now)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.with(|s| s.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.with(|s| s.on_response_headers())
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_response_body(body_size, end_of_stream))
    }
}

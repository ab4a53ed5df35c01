//! The request path of one HTTP stream: read the head, ask the core for the access decision,
//! buffer and judge the body, carry the verdict out, and on routes with `upstream_oauth` send
//! the user's upstream token (TI) instead of theirs. Where the stream stands is one `Phase`
//! (`phase.rs`); the state lives behind an `Rc` so the root context can wake a stream that
//! waits for the JWKS or a look-up (`Paused::resume`).

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use warden_core::access::{self, Grant, Step};
use warden_core::app::{self, AppStep, AppToken, Secret, TokenAnswer};
use warden_core::assertion::{self, Fetched, IdentityAssertion};
use warden_core::config::Route;
use warden_core::internal_api::UpstreamTokenRequest;
use warden_core::mcp::{self as judge, CallHead, Verdict};
use warden_core::metrics::{Decision, MethodLabel};
use warden_core::reply::{token_service_unavailable, LocalReply, ReplyTo};
use warden_core::revocation::FeedVerdict;
use warden_core::short_text::ShortText;
use warden_core::token::{Identity, TeClaims, TokenError};
use warden_core::trace_context::{self, TraceContext};
use warden_core::transport::MethodRule;
use warden_core::upstream::{self, Lookup};

use crate::head::OwnedHead;
use crate::metrics::{Counter, Decided, Metrics};
use crate::phase::{Credentials, KeysFor, Phase};
use crate::response::{Forwarded, ResponseFilter, ResponsePath};
use crate::worker::{now_seconds, read_answer, seconds, LookupKind, Paused, Waiter, Wake, Worker};

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

/// The body of a credential look-up, per the contract: the TI's and the identity
/// assertion's name the same user and route.
fn credential_request(sub: &str, route: &str) -> String {
    let body = UpstreamTokenRequest {
        sub: sub.into(),
        route: route.into(),
    };
    // Serializing strings cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// The request's `x-request-id`, which JSON-RPC errors carry for the log.
fn request_id(call: Option<&CallHead>) -> &str {
    call.map(|c| c.request_id.as_str()).unwrap_or_default()
}

/// What starts the authorize record's line in Envoy's log.
const AUTHORIZE_PREFIX: &str = "authorize ";

/// The labels of an MCP request, known once it is placed on a route (and its body judged).
struct CallLabels {
    route: usize,
    method: MethodLabel,
    /// The tool a `tools/call` names.
    tool: Option<ShortText>,
}

/// What the request body callbacks have seen so far (they may run while keys are fetched).
#[derive(Default)]
struct BodySeen {
    size: usize,
    complete: bool,
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

pub struct RequestState {
    id: u32,
    /// This state, as the worker holds a waiting stream.
    me: Weak<dyn Paused>,
    worker: Rc<RefCell<Worker>>,
    /// What the stream waits for, or what was decided for it.
    phase: Phase,
    /// What the access decision granted an MCP call.
    grant: Option<Grant>,
    /// A request on a client route (or its sign-in callback).
    app: Option<AppRequest>,
    /// When the request headers arrived, for a timed request: one the duration histogram
    /// samples, or any while someone reads the authorize record (its duration starts here).
    started: Option<SystemTime>,
    /// One the duration histogram samples (about one in `duration_sample_every`, whether or
    /// not the record is read): only these are recorded, one host call each.
    sampled: bool,
    /// When the body was judged, while the request goes on in the same callback (a look-up
    /// answered later reads the clock again).
    decided_at: Option<SystemTime>,
    /// What the metrics count of an MCP request, until its decision is recorded (once).
    labels: Option<CallLabels>,
    /// What the MCP judgement reads of an authorized call.
    call: Option<CallHead>,
    /// The client's trace context, for the call-outs.
    trace: TraceContext,
    body_seen: BodySeen,
    response: ResponsePath,
}

impl Paused for RefCell<RequestState> {
    fn resume(&self, id: u32, wake: Wake) {
        // The state is only ever borrowed inside one callback: a wake-up never finds it
        // borrowed.
        if let Ok(mut s) = self.try_borrow_mut() {
            s.resume(id, wake);
        }
    }
}

// The request path, in the order a stream goes through it: the decision, the waits it may
// enter, the body, the credentials, and the phases it ends in.
impl RequestState {
    /// The request headers: the first callback of every stream.
    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.worker.borrow().config);
        let mut head = OwnedHead::read(end_of_stream, config.route_header.as_deref());
        self.trace = std::mem::take(&mut head.trace);
        // Only the gateway vouches for a user: a client's own assertion never goes on,
        // whatever the route (the real one is added after the checks).
        for name in &head.client_assertions {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
        }
        // A timed request reads the clock for its duration (and its token's expiry check);
        // any other is judged against the worker's clock of the last tick: no host call.
        self.sampled = self.worker.borrow().metrics.take_duration_sample();
        let timed = self.sampled || self.record_wanted();
        self.started = if timed {
            Some(hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH))
        } else {
            None
        };
        let now = {
            let mut w = self.worker.borrow_mut();
            if let Some(at) = self.started {
                w.saw_clock(seconds(at));
            }
            w.clock_seconds()
        };
        self.decide_and_act(head, true, now)
    }

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
                fresh_now: now_seconds,
                may_fetch_keys,
                random: random_bytes,
                budget: &mut w.budget,
                client_address,
                revocations: &w.feed.view,
            },
        )
    }

    /// Runs the decision and carries it out; returns the action for the current callback.
    fn decide_and_act(&mut self, head: OwnedHead, may_fetch_keys: bool, now: i64) -> Action {
        match self.decide(&head, now, may_fetch_keys) {
            Step::PassThrough => {
                self.phase = Phase::PassedThrough;
                Action::Continue
            }
            Step::Reply(reply) => {
                let counter = if reply.status < 300 {
                    Counter::LocalReplies
                } else {
                    Metrics::for_access_refusal(reply.reason)
                };
                self.worker.borrow().metrics.inc(counter);
                if reply.status >= 300 {
                    let route = {
                        let w = self.worker.borrow();
                        access::server_route_of(&head.view(), &w.config)
                    };
                    if let Some(route) = route {
                        self.labels = Some(CallLabels {
                            route,
                            method: MethodLabel::before_body(head.call.method.as_bytes()),
                            tool: None,
                        });
                        self.record_decision(Decision::of_refusal(reply.reason));
                    }
                }
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
                // Another worker may have fetched the key already (a second pass finds no
                // newer set, so this recurses at most once).
                if self.worker.borrow_mut().sync_keys() {
                    return self.decide_and_act(head, may_fetch_keys, now);
                }
                if self
                    .worker
                    .borrow_mut()
                    .want_keys(now, self.waiter(), &self.trace)
                {
                    self.phase = Phase::AwaitingKeys(KeysFor::Decision(Box::new(head)));
                    Action::Pause
                } else {
                    // No fetch allowed now: decide with the keys we have (401 or 503).
                    self.decide_and_act(head, false, now)
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
                self.call = Some(head.call);
                self.begin_call(method, head.end_of_stream)
            }
            Step::App(step) => self.app_step(step, &head),
        }
    }

    /// The call-out a paused stream waited for answered: carry on from where it stands.
    fn resume(&mut self, id: u32, wake: Wake) {
        match wake {
            Wake::Keys => {
                if !matches!(self.phase, Phase::AwaitingKeys(_))
                    || hostcalls::set_effective_context(id).is_err()
                {
                    return;
                }
                let Phase::AwaitingKeys(keys) = std::mem::replace(&mut self.phase, Phase::Deciding)
                else {
                    return;
                };
                match keys {
                    KeysFor::Decision(head) => {
                        if let Action::Continue = self.decide_and_act(*head, false, now_seconds()) {
                            let _ = hostcalls::resume_http_request();
                        }
                    }
                    KeysFor::AppToken(te, expires_at) => self.resume_app_token(te, expires_at),
                }
            }
            Wake::Answer {
                kind,
                headers,
                body_size,
            } => {
                // The request's context must be effective for its headers, resume and local
                // reply.
                if matches!(self.phase, Phase::Ended)
                    || hostcalls::set_effective_context(id).is_err()
                {
                    return;
                }
                // The decision waited for this answer: its time is read again.
                self.decided_at = None;
                let (status, body) = read_answer(headers, body_size);
                match kind {
                    LookupKind::UpstreamToken => self.accept_lookup(status, &body),
                    LookupKind::IdentityAssertion => self.accept_assertion(status, &body),
                    LookupKind::AppSession => self.accept_app_session(status, &body),
                    LookupKind::AppToken => self.accept_app_token(status, &body),
                    LookupKind::AppSessionEnd => self.accept_app_session_end(status, &body),
                }
            }
        }
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
        self.phase = Phase::AwaitingBody;
        Action::Pause
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body_seen.size = body_size;
        self.body_seen.complete = end_of_stream;
        if self.phase.holds_request() {
            // Refused, or the token is still being checked (`begin_call` takes over then).
            return Action::Pause;
        }
        if !matches!(self.phase, Phase::AwaitingBody) {
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
        if self.grant.is_some() || matches!(self.phase, Phase::AwaitingKeys(_)) {
            // MCP has no use for request trailers, and the filter judges none of them: a
            // server that merges them into the headers would read an unchecked
            // `Mcp-Session-Id` or `Authorization`. They go nowhere.
            let _ = hostcalls::set_map_bytes(MapType::HttpRequestTrailers, vec![]);
        }
        if self.phase.holds_request() {
            return Action::Pause;
        }
        if matches!(self.phase, Phase::AwaitingBody) {
            return self.body_complete();
        }
        Action::Continue
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
        self.phase = Phase::Deciding;
        let (Some(grant), Some(call)) = (self.grant.as_ref(), self.call.as_ref()) else {
            return Action::Continue;
        };
        let worker = Rc::clone(&self.worker);
        let w = worker.borrow();
        let Some(route) = w.config.routes.get(grant.route) else {
            return Action::Continue;
        };
        let mut verdict = run(route, &grant.identity.claims, call);
        // A timed request's one clock read here: the record's duration and the metrics' (when
        // forwarded at once).
        let decided_at = self
            .started
            .and_then(|_| hostcalls::get_current_time().ok());
        // A request that began untimed (the record was not read then: the log level turned to
        // info since) has no duration to record, so no record.
        if self.started.is_some() && self.record_wanted() {
            let elapsed = decided_at
                .zip(self.started)
                .and_then(|(now, started)| now.duration_since(started).ok())
                .map(|d| d.as_micros() as u64)
                .unwrap_or_default();
            let subject = judge::LogSubject {
                request_id: &call.request_id,
                route: &route.name,
                claims: &grant.identity.claims,
            };
            // One buffer for the log line and the filter state, handed to the host as it is
            // (the `log` crate's path would format it into another).
            let line = verdict
                .log
                .render_after(AUTHORIZE_PREFIX, &subject, elapsed);
            if log::log_enabled!(log::Level::Info) {
                let _ = hostcalls::log(LogLevel::Info, &line);
            }
            if w.config.authorize_filter_state {
                // For Envoy's access log: `%FILTER_STATE(wasm.mcp_warden.authorize:PLAIN)%`.
                // (Envoy's Wasm host cannot write dynamic metadata; filter state is its offer.)
                let record = line.get(AUTHORIZE_PREFIX.len()..).unwrap_or_default();
                let _ =
                    hostcalls::set_property(vec!["mcp_warden.authorize"], Some(record.as_bytes()));
            }
        }
        if w.config.span_tags {
            // For Envoy's tracer: `custom_tags` read them (`trace_context::SPAN_TAGS`).
            let refusal = verdict.reply.as_ref().map(|r| r.reason);
            let values = trace_context::span_tag_values(&route.name, &verdict.log, refusal);
            for ((_, key), value) in trace_context::SPAN_TAGS.iter().zip(values) {
                let _ = hostcalls::set_property(vec![*key], Some(value.as_bytes()));
            }
        }
        if verdict.log.batch_size > 0 {
            w.metrics.inc(Counter::Batch);
        }
        let method = match verdict.log.mcp_method.as_deref() {
            Some(m) => MethodLabel::of_method(Some(m)),
            None => MethodLabel::before_body(call.method.as_bytes()),
        };
        let labels = CallLabels {
            route: grant.route,
            method,
            tool: if method.is_tools_call() {
                verdict.log.mcp_tool.take()
            } else {
                None
            },
        };
        match verdict.reply {
            Some(reply) => {
                w.metrics.inc(Metrics::for_refusal(reply.reason));
                let cors = grant.cors_origin.clone();
                drop(w);
                (self.labels, self.decided_at) = (Some(labels), decided_at);
                self.record_decision(Decision::of_refusal(reply.reason));
                self.send(reply.with_cors(cors.as_deref()));
                Action::Pause
            }
            None => {
                w.metrics.inc(Counter::Allowed);
                // A `tools/list` answer is read to filter it, or, once a minute, to learn the
                // server's tool names for the tool-call labels.
                if let Some(id) = verdict.tools_list_id {
                    let filtering = route.filter_tools_list && route.policy.has_tool_rules;
                    let now = decided_at.map_or_else(|| w.clock_seconds(), seconds);
                    if filtering || w.metrics.take_learning_turn(grant.route, now) {
                        self.response.filter = ResponseFilter::Json(id);
                        self.response.filtering = filtering;
                    }
                }
                let (upstream_oauth, pass_identity) =
                    (route.upstream_oauth, route.pass_identity_headers);
                drop(w);
                (self.labels, self.decided_at) = (Some(labels), decided_at);
                if upstream_oauth || pass_identity {
                    return self.attach_credentials(upstream_oauth, pass_identity);
                }
                self.forward()
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

    /// The credentials the route sends upstream: the identity assertion and the TI, each
    /// from the worker's cache or from the token service. Both call-outs leave at once; the
    /// request goes on when both answered.
    fn attach_credentials(&mut self, upstream_oauth: bool, pass_identity_headers: bool) -> Action {
        if pass_identity_headers {
            self.attach_identity_assertion();
        }
        if upstream_oauth && !matches!(self.phase, Phase::Answered) {
            self.attach_upstream_token();
        }
        self.forward_unless_held()
    }

    /// Adds the user's identity assertion: from the worker's cache (no call-out, nothing
    /// signed), or waits while the token service issues one.
    fn attach_identity_assertion(&mut self) {
        let Some((route_index, identity, cors)) = self.credential_subject() else {
            return;
        };
        let now = now_seconds();
        let worker = Rc::clone(&self.worker);
        let mut w = worker.borrow_mut();
        let sub = identity.claims.sub.as_str();
        if let Some(assertion) = w.assertions.get(route_index, sub, now) {
            if let Some(route) = w.config.routes.get(route_index) {
                set_assertion(&route.identity_headers, &assertion);
            }
            return;
        }
        let body = match w.config.routes.get(route_index) {
            Some(route) => credential_request(sub, &route.name),
            None => return,
        };
        match w.start_lookup(
            self.waiter(),
            LookupKind::IdentityAssertion,
            &body,
            &self.trace,
        ) {
            Ok(token) => self
                .phase
                .await_credential(|pending| pending.assertion = Some(token)),
            Err(reason) => {
                drop(w);
                let reply = if self.app.is_some() {
                    app::unavailable_page(reason)
                } else {
                    token_service_unavailable(
                        reason,
                        ReplyTo {
                            request_id: self.request_id(),
                            cors: cors.as_deref(),
                        },
                    )
                };
                self.refuse_for_credentials(reply, Counter::DeniedIdentityAssertion);
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
        let Phase::AwaitingCredentials(pending) = &mut self.phase else {
            return;
        };
        if pending.assertion.take().is_none() {
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

    /// Sends the user's TI upstream: from the worker's cache (no call-out), or waits while
    /// the token service is asked.
    fn attach_upstream_token(&mut self) {
        let Some(grant) = self.grant.as_ref() else {
            return;
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
            self.response.upstream_sent = Some(token);
            return;
        }
        let body = match w.config.routes.get(grant.route) {
            Some(route) => credential_request(sub, &route.name),
            None => return,
        };
        match w.start_lookup(self.waiter(), LookupKind::UpstreamToken, &body, &self.trace) {
            Ok(token) => self
                .phase
                .await_credential(|pending| pending.upstream_token = Some(token)),
            Err(reason) => {
                drop(w);
                let reply = token_service_unavailable(
                    reason,
                    ReplyTo {
                        request_id: self.request_id(),
                        cors: grant.cors_origin.as_deref(),
                    },
                );
                self.refuse_for_credentials(reply, Counter::DeniedUpstreamToken);
            }
        }
    }

    /// The token service answered the look-up: send the TI upstream, or answer the client.
    fn accept_lookup(&mut self, status: Option<u32>, body: &[u8]) {
        let Phase::AwaitingCredentials(pending) = &mut self.phase else {
            return;
        };
        if pending.upstream_token.take().is_none() {
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
                self.response.upstream_sent = Some(token);
                self.resume_when_ready();
            }
            Lookup::Refuse(reply) => {
                self.refuse_for_credentials(reply, Counter::DeniedUpstreamToken)
            }
        }
    }

    /// A credential arrived: once no look-up is in flight any more, the request goes on.
    fn resume_when_ready(&mut self) {
        if let Phase::AwaitingCredentials(Credentials {
            assertion: None,
            upstream_token: None,
        }) = self.phase
        {
            self.forward();
            let _ = hostcalls::resume_http_request();
        }
    }

    /// A credential the route needs cannot be had: the client gets `reply`, and the request
    /// never reaches the upstream (a look-up still in flight is abandoned).
    fn refuse_for_credentials(&mut self, reply: LocalReply, counter: Counter) {
        self.worker.borrow().metrics.inc(counter);
        self.record_decision(Decision::of_refusal(reply.reason));
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

    /// After the credentials were attached or asked for: on upstream, unless a look-up is in
    /// flight or the request was refused.
    fn forward_unless_held(&mut self) -> Action {
        match self.phase {
            Phase::AwaitingCredentials(_) | Phase::Answered => Action::Pause,
            _ => self.forward(),
        }
    }

    /// Allowed, with everything it needs: on its way upstream.
    fn forward(&mut self) -> Action {
        self.phase = Phase::Forwarded;
        self.record_decision(Decision::Allowed);
        Action::Continue
    }

    /// Counts the MCP request's decision and records its duration: once, at the first
    /// decision (a reply the response path makes later is not another).
    fn record_decision(&mut self, decision: Decision) {
        let Some(labels) = self.labels.take() else {
            return;
        };
        // Only a sampled request is recorded (and reads the clock for it, if not yet).
        let decided_at = self.decided_at.take();
        let micros = self
            .started
            .filter(|_| self.sampled)
            .and_then(|started| {
                let end = decided_at.or_else(|| hostcalls::get_current_time().ok())?;
                end.duration_since(started).ok()
            })
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let w = self.worker.borrow();
        w.metrics.decided(
            &Decided {
                route: labels.route,
                method: labels.method,
                tool: labels.tool.as_deref(),
                decision,
                micros,
            },
            &w.config,
        );
    }

    /// Answers the client in the server's place. Look-ups still in flight are nobody's any
    /// more (their call-outs stay counted until Envoy answers them).
    fn send(&mut self, reply: LocalReply) {
        self.settle(Phase::Answered);
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    /// Moves to a phase that waits for nothing, abandoning the look-ups of the one it leaves.
    fn settle(&mut self, next: Phase) {
        let left = std::mem::replace(&mut self.phase, next);
        let mut lookups = left.lookups().peekable();
        if lookups.peek().is_some() {
            let mut w = self.worker.borrow_mut();
            for token in lookups {
                w.abandon(token);
            }
        }
    }

    /// How the worker holds this stream while it waits.
    fn waiter(&self) -> Waiter {
        Waiter {
            id: self.id,
            stream: self.me.clone(),
        }
    }

    fn request_id(&self) -> &str {
        request_id(self.call.as_ref())
    }

    /// What the response path reads of this request.
    fn on_response_headers(&mut self) -> Action {
        let forwarded = Forwarded {
            id: self.id,
            worker: &self.worker,
            grant: self.grant.as_ref(),
            request_id: request_id(self.call.as_ref()),
            trace: &self.trace,
        };
        match self.response.on_headers(&forwarded) {
            Some(reply) => {
                self.send(reply);
                Action::Pause
            }
            None => Action::Continue,
        }
    }

    fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let forwarded = Forwarded {
            id: self.id,
            worker: &self.worker,
            grant: self.grant.as_ref(),
            request_id: request_id(self.call.as_ref()),
            trace: &self.trace,
        };
        self.response.on_body(&forwarded, body_size, end_of_stream)
    }
}

// Client routes: the sign-in callback, the sign-out, and the session swapped for the user's
// TE. Nothing of the request is read as MCP.
impl RequestState {
    /// Carries out the decision for a client route.
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
        let started = self
            .worker
            .borrow_mut()
            .start_lookup(self.waiter(), kind, body, &self.trace);
        match started {
            Ok(token) => {
                self.phase = Phase::AwaitingApp(token);
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
            return self.forward();
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
        // The cached app TE may belong to a session signed out since: the feed says so.
        let verdict = self
            .worker
            .borrow()
            .feed
            .view
            .check(&token.identity, now_seconds());
        if verdict != FeedVerdict::Pass {
            let reply = match verdict {
                FeedVerdict::Revoked => {
                    self.worker.borrow().metrics.inc(Counter::DeniedRevoked);
                    let cache_key = self.app.as_ref().map(|a| a.cache_key.clone());
                    if let Some(key) = cache_key {
                        self.worker
                            .borrow_mut()
                            .app_tokens
                            .remove_if(route_index, &key, |_| true);
                    }
                    self.app
                        .as_mut()
                        .and_then(|a| a.expired.take())
                        .unwrap_or_else(|| app::unavailable_page("app-session-revoked"))
                }
                _ => {
                    self.worker.borrow().metrics.inc(Counter::DeniedFeedStale);
                    app::unavailable_page("revocation-feed-stale")
                }
            };
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
            self.attach_identity_assertion();
            return self.forward_unless_held();
        }
        self.forward()
    }

    /// Leaves `AwaitingApp` for the answer it waited for; `false` when it was not waiting
    /// (the request was answered meanwhile).
    fn take_app_lookup(&mut self) -> bool {
        if !matches!(self.phase, Phase::AwaitingApp(_)) {
            return false;
        }
        self.phase = Phase::Deciding;
        true
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
        if !self.take_app_lookup() {
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
        if !self.take_app_lookup() {
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

    /// Verifies the token service's app TE and forwards with it (`None`: forwarded, or paused
    /// for the JWKS when `may_wait`), or the page to answer.
    fn use_app_token(&mut self, te: Secret, expires_at: i64, may_wait: bool) -> Option<LocalReply> {
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
                    let _ = hostcalls::resume_http_request();
                }
                None
            }
            Err(TokenError::UnknownKey(_)) => {
                // Signed with a key this worker has not fetched yet (the first app request
                // after a start, or a new key): wait for the JWKS, then check it again. A
                // refetch too recent to repeat, or a key still unknown after it, gets the page.
                if may_wait
                    && worker
                        .borrow_mut()
                        .want_keys(now, self.waiter(), &self.trace)
                {
                    self.phase = Phase::AwaitingKeys(KeysFor::AppToken(te, expires_at));
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
    fn resume_app_token(&mut self, te: Secret, expires_at: i64) {
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
        let state = Rc::new_cyclic(|me: &Weak<RefCell<RequestState>>| {
            RefCell::new(RequestState {
                id,
                me: me.clone(),
                worker,
                phase: Phase::Deciding,
                grant: None,
                app: None,
                started: None,
                sampled: false,
                decided_at: None,
                labels: None,
                call: None,
                trace: TraceContext::default(),
                body_seen: BodySeen::default(),
                response: ResponsePath::new(),
            })
        });
        Self { state }
    }

    /// Runs a callback on the state. The state is only ever borrowed inside one callback (the
    /// host defers what our calls trigger), so the fallback, holding the stream, never runs.
    fn with(&self, f: impl FnOnce(&mut RequestState) -> Action) -> Action {
        match self.state.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            Err(_) => Action::Pause,
        }
    }
}

impl Context for WardenRequest {
    fn on_done(&mut self) -> bool {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            // Nobody waits for its answers any more; the call-outs stay counted until Envoy
            // has answered them (see `Worker::call_token_service`).
            s.settle(Phase::Ended);
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
            waiter.resume(Wake::Answer {
                kind,
                headers,
                body_size: body,
            });
        }
    }
}

impl HttpContext for WardenRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_request_headers(end_of_stream))
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

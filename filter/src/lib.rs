//! mcp-warden's proxy-wasm filter: a thin adapter that reads what `warden_core` needs from the
//! host, asks it for a decision, and carries the decision out. Each Envoy worker runs its own VM,
//! so `Worker` state (key set, verified-token cache) is per worker; the JWKS is shared between
//! workers through shared data so one good fetch serves all.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use warden_core::access::{self, Grant, RequestHead, Step};
use warden_core::cache::TokenCache;
use warden_core::config::{CompiledConfig, JwksFetch, Route};
use warden_core::keys::KeySet;
use warden_core::mcp::{self as judge, CallHead, Verdict};
use warden_core::reply::{LocalReply, CORS_EXPOSE_HEADERS};
use warden_core::token::TeClaims;
use warden_core::toolslist::{filter_message, SseToolsFilter};

mod metrics;
use metrics::{Counter, Metrics};

/// Shared-data key prefix of the last good JWKS; the issuer completes the key, so two plugin
/// configurations sharing a VM id never mix key sets.
const JWKS_SHARED_KEY_PREFIX: &str = "mcp-warden.jwks.v1:";
/// A request naming an unknown `kid` may start a refetch at most this often per worker, so junk
/// tokens cannot turn the filter into a load generator against the token service.
const MIN_KID_REFETCH_SECONDS: i64 = 5;
/// Before any key set has arrived (start-up), a request may start a fetch this often.
const MIN_BOOTSTRAP_FETCH_SECONDS: i64 = 1;
/// Requests that need keys while a fetch is under way join with a fetch of their own (the SDK
/// cannot wake another request's context); this bounds how many run at once per worker.
const MAX_FETCHES_IN_FLIGHT: u32 = 8;
/// JWKS responses larger than this are refused rather than parsed.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest `tools/list` JSON result (or single SSE event) held back for filtering.
const MAX_TOOLS_LIST_BYTES: usize = 4 * 1024 * 1024;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WardenRoot::default()) });
}}

/// Per-worker state shared by the root context and its HTTP contexts (one thread: `RefCell`).
struct Worker {
    config: Rc<CompiledConfig>,
    keys: Option<Rc<KeySet>>,
    /// Shared-data version our `keys` came from, to notice another worker's fetch.
    keys_cas: Option<u32>,
    cache: TokenCache,
    /// Last request-started fetch for an unknown `kid` / while no keys had arrived yet; kept
    /// apart so a start-up fetch does not delay the refetch a key rotation needs.
    last_kid_fetch: Option<i64>,
    last_bootstrap_fetch: Option<i64>,
    last_refresh: Option<i64>,
    /// Request-started fetches not yet answered (or abandoned by their request).
    fetches_in_flight: u32,
    shared_key: String,
    metrics: Metrics,
}

impl Worker {
    /// Adopts the JWKS in shared data when it is newer than ours (another worker fetched).
    fn sync_keys(&mut self, ctx: &dyn Context) {
        if self.config.static_keys.is_some() {
            return;
        }
        let (Some(bytes), cas) = ctx.get_shared_data(&self.shared_key) else {
            return;
        };
        if cas.is_some() && cas == self.keys_cas {
            return;
        }
        if let Ok(keys) = KeySet::from_jwks(&bytes) {
            self.keys = Some(Rc::new(keys));
            self.keys_cas = cas;
            // A key may have been withdrawn: tokens it signed must be checked again.
            self.cache.clear();
        }
    }

    /// Handles a JWKS fetch response. `num_headers == 0` is Envoy's sign of a failed call: no
    /// response exists and the SDK's getters would panic on it, so nothing is read then.
    fn accept_jwks(&mut self, ctx: &dyn Context, num_headers: usize, body_size: usize) {
        let status = if num_headers == 0 {
            None
        } else {
            ctx.get_http_call_response_headers_bytes()
                .into_iter()
                .find(|(name, _)| name == ":status")
                .map(|(_, value)| value)
        };
        if status.as_deref() != Some(b"200".as_slice()) {
            self.metrics.inc(Counter::JwksFetchFailed);
            log::warn!(
                "mcp-warden: JWKS fetch failed (status {}); keeping the previous key set",
                status
                    .map(|s| String::from_utf8_lossy(&s).into_owned())
                    .unwrap_or_else(|| "none: transport failure".into())
            );
            return;
        }
        if body_size > MAX_JWKS_BYTES {
            self.metrics.inc(Counter::JwksFetchFailed);
            log::warn!("mcp-warden: JWKS of {body_size} bytes exceeds {MAX_JWKS_BYTES}; ignored");
            return;
        }
        let body = ctx
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if let Err(e) = KeySet::from_jwks(&body) {
            self.metrics.inc(Counter::JwksFetchFailed);
            log::warn!("mcp-warden: JWKS rejected: {e}");
            return;
        }
        self.metrics.inc(Counter::JwksFetchOk);
        // Write only a changed key set: every write bumps the version, and each worker then
        // drops its verified-token cache.
        let (current, _) = ctx.get_shared_data(&self.shared_key);
        if current.as_deref() != Some(body.as_slice()) {
            let _ = ctx.set_shared_data(&self.shared_key, Some(&body), None);
        }
        // Install what shared data holds now: ours, or a newer set another worker wrote.
        self.sync_keys(ctx);
    }
}

fn now_seconds(ctx: &dyn Context) -> i64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn dispatch_jwks(ctx: &dyn Context, fetch: &JwksFetch) -> bool {
    let headers = vec![
        (":method", "GET"),
        (":path", fetch.path.as_str()),
        (":authority", fetch.authority.as_str()),
        ("accept", "application/json"),
    ];
    let timeout = Duration::from_millis(u64::from(fetch.timeout_ms));
    match ctx.dispatch_http_call(&fetch.cluster, headers, None, vec![], timeout) {
        Ok(_) => true,
        Err(status) => {
            log::warn!(
                "mcp-warden: cannot dispatch JWKS fetch to cluster {}: {status:?}",
                fetch.cluster
            );
            false
        }
    }
}

#[derive(Default)]
struct WardenRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for WardenRoot {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().accept_jwks(self, headers, body);
        }
    }
}

impl RootContext for WardenRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match CompiledConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                // Returning false makes Envoy refuse the configuration; the message names the field.
                log::error!("mcp-warden: {e}");
                return false;
            }
        };
        let keys = config.static_keys.clone().map(Rc::new);
        let cache = TokenCache::new(config.token_cache_entries, config.rules.leeway_seconds);
        let shared_key = format!("{JWKS_SHARED_KEY_PREFIX}{}", config.rules.issuer);
        self.worker = Some(Rc::new(RefCell::new(Worker {
            config: Rc::new(config),
            keys,
            keys_cas: None,
            cache,
            last_kid_fetch: None,
            last_bootstrap_fetch: None,
            last_refresh: None,
            fetches_in_flight: 0,
            shared_key,
            metrics: Metrics::define(),
        })));
        // Fetch the JWKS promptly at start, then on the configured period.
        self.set_tick_period(Duration::from_secs(1));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let mut w = worker.borrow_mut();
        let Some(fetch) = w.config.jwks.clone() else {
            return;
        };
        w.sync_keys(self);
        let now = now_seconds(self);
        let due = match (w.keys.is_some(), w.last_refresh) {
            (false, _) | (_, None) => true,
            (true, Some(at)) => now - at >= i64::from(fetch.refresh_seconds),
        };
        // Without keys, retry every tick; with keys, refresh on the period.
        if due && dispatch_jwks(self, &fetch) {
            w.last_refresh = Some(now);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(WardenRequest {
            worker,
            grant: None,
            awaiting_keys: false,
            replied: false,
            head: None,
            call: None,
            body_seen: BodySeen::default(),
            response: ResponseFilter::None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request head copied out of the host, kept while a JWKS fetch is in flight.
#[derive(Default)]
struct OwnedHead {
    method: Vec<u8>,
    authority: Vec<u8>,
    scheme: Vec<u8>,
    path: Vec<u8>,
    envoy_route: Option<Vec<u8>>,
    origin: Option<Vec<u8>>,
    authorization: Vec<Vec<u8>>,
    is_preflight: bool,
    /// What the MCP judgement reads (kept as text; odd bytes only ever fail a comparison).
    call: CallHead,
    end_of_stream: bool,
}

impl OwnedHead {
    fn read(ctx: &dyn HttpContext) -> Self {
        let mut head = OwnedHead::default();
        // One host call for all headers: cheaper than one per header, and the only way to
        // see a repeated Authorization header.
        for (name, value) in ctx.get_http_request_headers_bytes() {
            match name.as_str() {
                ":method" => head.method = value,
                ":authority" => head.authority = value,
                ":scheme" => head.scheme = value,
                ":path" => head.path = value,
                "origin" => head.origin = Some(value),
                "authorization" => head.authorization.push(value),
                "access-control-request-method" => head.is_preflight = true,
                "content-type" => head.call.content_type = Some(lossy(&value)),
                "content-encoding" => head.call.content_encoding = Some(lossy(&value)),
                "mcp-protocol-version" => head.call.routing.protocol_version = Some(lossy(&value)),
                "mcp-method" => head.call.routing.method = Some(lossy(&value)),
                "mcp-name" => head.call.routing.name = Some(lossy(&value)),
                "x-request-id" => head.call.request_id = lossy(&value),
                _ => {}
            }
        }
        // Envoy's routing decision; the hostcall (unlike the trait getter) reports, not panics.
        head.envoy_route = hostcalls::get_property(vec!["xds", "route_name"])
            .ok()
            .flatten();
        head.call.method = lossy(&head.method);
        head
    }

    fn view(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            authority: &self.authority,
            scheme: &self.scheme,
            path: &self.path,
            envoy_route: self.envoy_route.as_deref(),
            origin: self.origin.as_deref(),
            authorization: self.authorization.iter().map(Vec::as_slice).collect(),
            is_preflight: self.is_preflight,
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An authorized request on an MCP route, waiting for (or past) its body judgement.
struct PendingCall {
    head: CallHead,
    started: std::time::SystemTime,
    /// Buffering the POST body until it is complete.
    buffering: bool,
}

/// What the request body callbacks have seen so far (they may run while keys are fetched).
#[derive(Default)]
struct BodySeen {
    size: usize,
    complete: bool,
}

enum ResponseFilter {
    None,
    /// A `tools/list` JSON result: buffered whole, then filtered.
    Json(serde_json::Value),
    /// A `tools/list` answered as SSE: filtered event by event.
    Sse(SseToolsFilter),
}

struct WardenRequest {
    worker: Rc<RefCell<Worker>>,
    grant: Option<Grant>,
    /// Paused until a JWKS fetch this request started is answered.
    awaiting_keys: bool,
    /// A local reply went out: nothing of this request may continue upstream.
    replied: bool,
    head: Option<OwnedHead>,
    call: Option<PendingCall>,
    body_seen: BodySeen,
    response: ResponseFilter,
}

impl WardenRequest {
    /// Asks the core for a decision; the worker borrow ends before anything is carried out.
    fn decide(&self, head: &OwnedHead, now: i64, may_fetch_keys: bool) -> Step {
        let mut w = self.worker.borrow_mut();
        if w.keys.is_none() {
            w.sync_keys(self);
        }
        let keys = w.keys.clone();
        let config = Rc::clone(&w.config);
        access::decide(
            &head.view(),
            access::Context {
                config: &config,
                keys: keys.as_deref(),
                cache: &mut w.cache,
                now,
                may_fetch_keys,
            },
        )
    }

    /// Runs the decision and carries it out; returns the action for the current callback.
    fn decide_and_act(&mut self, may_fetch_keys: bool) -> Action {
        let Some(head) = self.head.take() else {
            return Action::Continue;
        };
        let now = now_seconds(self);
        match self.decide(&head, now, may_fetch_keys) {
            Step::PassThrough => Action::Continue,
            Step::Reply(reply) => {
                let counter = if reply.status < 300 {
                    Counter::LocalReplies
                } else {
                    Counter::Denied
                };
                self.worker.borrow().metrics.inc(counter);
                if reply.status >= 400 {
                    let path = head.path.split(|b| *b == b'?').next().unwrap_or_default();
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
                if self.start_key_fetch(now) {
                    self.awaiting_keys = true;
                    Action::Pause
                } else {
                    // No fetch allowed now: decide with the keys we have (401 or 503).
                    self.decide_and_act(false)
                }
            }
            Step::Forward(grant) => {
                // The client's token is ours alone: it never reaches the upstream.
                self.remove_http_request_header("authorization");
                self.grant = Some(grant);
                self.call = Some(PendingCall {
                    head: head.call,
                    started: self.get_current_time(),
                    buffering: false,
                });
                self.begin_call(head.end_of_stream)
            }
        }
    }

    /// Starts a JWKS fetch for this request: always when joining one already under way (up to
    /// a bound), otherwise only if this worker has not fetched for that reason very recently.
    fn start_key_fetch(&self, now: i64) -> bool {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        let Some(fetch) = w.config.jwks.clone() else {
            return false;
        };
        if w.fetches_in_flight >= MAX_FETCHES_IN_FLIGHT {
            return false;
        }
        if w.fetches_in_flight == 0 {
            let (last, min_interval) = if w.keys.is_none() {
                (&mut w.last_bootstrap_fetch, MIN_BOOTSTRAP_FETCH_SECONDS)
            } else {
                (&mut w.last_kid_fetch, MIN_KID_REFETCH_SECONDS)
            };
            if last.is_some_and(|at| now - at < min_interval) {
                return false;
            }
            *last = Some(now);
        }
        if !dispatch_jwks(self, &fetch) {
            return false;
        }
        w.fetches_in_flight += 1;
        true
    }

    fn finish_key_fetch(&mut self) {
        if self.awaiting_keys {
            self.awaiting_keys = false;
            let mut w = self.worker.borrow_mut();
            w.fetches_in_flight = w.fetches_in_flight.saturating_sub(1);
        }
    }

    fn send(&mut self, reply: LocalReply) {
        self.replied = true;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    /// Nothing may move upstream while the request is undecided or after it was refused.
    fn holding(&self) -> bool {
        self.awaiting_keys || self.replied
    }

    /// After the token check: judge a bodiless request now, or wait for the POST body.
    fn begin_call(&mut self, end_of_stream: bool) -> Action {
        let Some(method) = self.call.as_ref().map(|c| c.head.method.clone()) else {
            return Action::Continue;
        };
        if method != "POST" {
            return self.finish(judge::judge_bodiless);
        }
        if self
            .route_limit()
            .is_some_and(|limit| self.body_seen.size > limit)
        {
            return self.refuse_oversize();
        }
        if end_of_stream || self.body_seen.complete {
            // A body that arrived while keys were fetched is already buffered.
            return self.judge_buffered();
        }
        if let Some(call) = self.call.as_mut() {
            call.buffering = true;
        }
        Action::Pause
    }

    /// Judges the complete buffered body.
    fn judge_buffered(&mut self) -> Action {
        let size = self.body_seen.size;
        let body = if size == 0 {
            Vec::new()
        } else {
            self.get_http_request_body(0, size).unwrap_or_default()
        };
        self.finish(|route, claims, head| judge::judge_body(route, claims, head, &body))
    }

    /// Runs a judgement for the pending call, logs it, and replies or lets it through.
    fn finish(&mut self, run: impl FnOnce(&Route, &TeClaims, &CallHead) -> Verdict) -> Action {
        let now = self.get_current_time();
        if let Some(call) = self.call.as_mut() {
            call.buffering = false;
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
        let elapsed = now
            .duration_since(call.started)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let line = verdict.log.to_json(elapsed).to_string();
        log::info!("mcp-warden authorize {line}");
        // For Envoy's access log: `%FILTER_STATE(wasm.mcp_warden.authorize:PLAIN)%`. (Envoy's
        // Wasm host cannot write dynamic metadata; filter state is what it offers.)
        let _ = hostcalls::set_property(vec!["mcp_warden.authorize"], Some(line.as_bytes()));
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
                Action::Continue
            }
        }
    }

    /// Refuses a body over the route's limit: never truncated, never passed unread.
    fn refuse_oversize(&mut self) -> Action {
        let limit = self.route_limit().unwrap_or_default();
        self.finish(|route, claims, head| {
            judge::refuse(
                route,
                claims,
                head,
                413,
                judge::INVALID_REQUEST,
                "mcp-oversize",
                &format!("request body exceeds this MCP server's limit of {limit} bytes"),
            )
        })
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

    /// Whether a tools/list result was removed anything from (for the counter).
    fn count_filtered(&self, removed: usize) {
        if removed > 0 {
            self.worker.borrow().metrics.inc(Counter::ToolsListFiltered);
        }
    }

    /// The caller's view of a tool: could they call it? (Arguments are unknown at list time.)
    fn tool_visibility(&self) -> Option<impl Fn(&str) -> bool> {
        let grant = self.grant.as_ref()?;
        let config = Rc::clone(&self.worker.borrow().config);
        let route_index = grant.route;
        let claims = grant.identity.claims.clone();
        Some(move |tool: &str| {
            let call = warden_core::policy::McpCall {
                method: Some("tools/call".into()),
                tool: Some(tool.to_string()),
                arguments: None,
            };
            config.routes.get(route_index).is_some_and(|route| {
                route
                    .policy
                    .evaluate(&warden_core::policy::PolicyInput {
                        claims: &claims,
                        call: &call,
                    })
                    .permitted()
            })
        })
    }
}

impl Context for WardenRequest {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if !self.awaiting_keys {
            return;
        }
        self.finish_key_fetch();
        self.worker.borrow_mut().accept_jwks(self, headers, body);
        if let Action::Continue = self.decide_and_act(false) {
            self.resume_http_request();
        }
    }

    fn on_done(&mut self) -> bool {
        // A request that goes away before its fetch returns must not hold a fetch slot.
        self.finish_key_fetch();
        true
    }
}

impl HttpContext for WardenRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut head = OwnedHead::read(self);
        head.end_of_stream = end_of_stream;
        self.head = Some(head);
        self.decide_and_act(true)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body_seen.size = body_size;
        self.body_seen.complete = end_of_stream;
        if self.replied {
            return Action::Pause;
        }
        if self.awaiting_keys {
            // The token is still being checked: hold everything (`begin_call` takes over).
            return Action::Pause;
        }
        if !self.call.as_ref().is_some_and(|c| c.buffering) {
            return Action::Continue;
        }
        if self.route_limit().is_some_and(|limit| body_size > limit) {
            return self.refuse_oversize();
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.judge_buffered()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: judge it now. They must never resume an undecided request.
        self.body_seen.complete = true;
        if self.holding() {
            return Action::Pause;
        }
        if self.call.as_ref().is_some_and(|c| c.buffering) {
            return self.judge_buffered();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(origin) = self.grant.as_ref().and_then(|g| g.cors_origin.clone()) {
            self.set_http_response_header("access-control-allow-origin", Some(&origin));
            self.set_http_response_header(
                "access-control-expose-headers",
                Some(CORS_EXPOSE_HEADERS),
            );
            self.add_http_response_header("vary", "Origin");
        }
        if let ResponseFilter::Json(id) = &self.response {
            let content_type = self
                .get_http_response_header_bytes("content-type")
                .unwrap_or_default();
            let content_type = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
            if content_type.starts_with("text/event-stream") {
                self.response =
                    ResponseFilter::Sse(SseToolsFilter::new(id.clone(), MAX_TOOLS_LIST_BYTES));
            } else if !content_type.starts_with("application/json") {
                self.response = ResponseFilter::None;
            }
            // The filtered body has another length.
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &mut self.response {
            ResponseFilter::None => Action::Continue,
            ResponseFilter::Json(id) => {
                if !end_of_stream {
                    if body_size > MAX_TOOLS_LIST_BYTES {
                        // Too large to hold: it streams as is (unfiltered, logged).
                        log::warn!("mcp-warden: tools/list result over {MAX_TOOLS_LIST_BYTES} bytes not filtered");
                        self.response = ResponseFilter::None;
                        return Action::Continue;
                    }
                    return Action::Pause;
                }
                let id = id.clone();
                let body = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                if let Some(visible) = self.tool_visibility() {
                    if let Some((filtered, removed)) = filter_message(&body, &id, &visible) {
                        self.set_http_response_body(0, body_size, &filtered);
                        self.count_filtered(removed);
                    }
                }
                Action::Continue
            }
            ResponseFilter::Sse(_) => {
                let chunk = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                let Some(visible) = self.tool_visibility() else {
                    return Action::Continue;
                };
                let ResponseFilter::Sse(sse) = &mut self.response else {
                    return Action::Continue;
                };
                let before = sse.removed;
                match sse.push(&chunk, end_of_stream, &visible) {
                    Ok(out) => {
                        let removed = sse.removed - before;
                        self.set_http_response_body(0, body_size, &out);
                        self.count_filtered(removed);
                        Action::Continue
                    }
                    Err(_) => {
                        // An event too large to judge: end the stream rather than leak it.
                        log::warn!(
                            "mcp-warden: SSE event over {MAX_TOOLS_LIST_BYTES} bytes; stream reset"
                        );
                        self.reset_http_request();
                        Action::Pause
                    }
                }
            }
        }
    }
}

//! Per-worker state: the compiled configuration, the key set and the verified-token cache, the
//! session key, and the JWKS fetch. One fetch runs at a time, always from the root context;
//! requests that need keys wait for it and are woken when it answers, so a flood of tokens with
//! unknown `kid`s costs at most one fetch every `MIN_KID_REFETCH_SECONDS` per worker.
//! The worker keeps the call-outs' bookkeeping but not the streams: a waiting stream is a
//! `Waiter`, woken through the `Paused` trait with what it waited for (`Wake`).

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use warden_core::app::AppTokenCache;
use warden_core::assertion::AssertionCache;
use warden_core::cache::TokenCache;
use warden_core::config::CompiledConfig;
use warden_core::internal_api::{self, InternalKey};
use warden_core::keys::KeySet;
use warden_core::session::SessionKey;
use warden_core::signature_budget::SignatureBudget;
use warden_core::toolslist::FilteredLists;
use warden_core::trace_context::TraceContext;
use warden_core::upstream::UpstreamTokenCache;

use crate::feed::{Feed, FeedTick};
use crate::metrics::{Counter, Metrics};

/// The root context's usual tick: JWKS refresh bookkeeping, shared-data sync.
pub const TICK: Duration = Duration::from_secs(1);
/// The tick with the revocation feed on is at most this: a revocation reaches every worker
/// within `poll_ms` + the poll's round trip + one tick, well under 5 s.
const FEED_TICK_MAX_MS: u32 = 500;
/// The tick while a request waits for a fetch to be dispatched (fetches leave from the root).
const FAST_TICK: Duration = Duration::from_millis(1);
/// A token naming an unknown `kid` may start a refetch at most this often per worker, whatever
/// is in flight, so junk tokens cannot turn the filter into a load generator.
const MIN_KID_REFETCH_SECONDS: i64 = 5;
/// Before any key set has arrived (start-up), a request may start a fetch this often.
const MIN_BOOTSTRAP_FETCH_SECONDS: i64 = 1;
/// Requests waiting for one fetch; later ones are decided at once with the keys at hand.
const MAX_WAITING: usize = 1024;
/// Call-outs to the token service (look-ups and notices) in flight per worker, those of
/// requests that went away included; a request beyond them gets a 503.
const MAX_CALLOUTS: usize = 64;
/// Rejection lines logged per second per worker, at most.
const MAX_REJECTION_LINES: u32 = 20;
/// Seconds past a call-out's timeout after which it is surely answered.
const CALLOUT_SLACK_SECONDS: i64 = 2;
/// JWKS responses larger than this are refused rather than parsed.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Shared-data key prefix of the last good JWKS; the issuer completes the key, so two plugin
/// configurations sharing a VM id never mix key sets.
const JWKS_SHARED_KEY_PREFIX: &str = "mcp-warden.jwks.v1:";
/// Shared-data key of the per-process session key (when no operator key is set).
const SESSION_SHARED_KEY: &str = "mcp-warden.session-key.v1";
/// Environment variable (passed to the VM by `vm_config.environment_variables`) holding the
/// operator's session key, shared by every Envoy replica.
pub const SESSION_KEY_ENV: &str = "MCP_WARDEN_SESSION_KEY";

/// What wakes a paused stream.
pub enum Wake {
    /// The JWKS fetch it waited for ended: with a new key set, or without one.
    Keys,
    /// The token service answered its look-up, or the call failed (`headers == 0`, Envoy's
    /// sign). The answer is read once the stream's context is effective (`read_answer`).
    Answer {
        kind: LookupKind,
        headers: usize,
        body_size: usize,
    },
}

/// A stream that waits for a call-out. The worker holds it without knowing its type; the
/// stream takes it from there (its context, its phase, its reply).
pub trait Paused {
    /// `id`: the stream's context, to make effective before touching its headers.
    fn resume(&self, id: u32, wake: Wake);
}

/// A stream paused until a call-out answers (the JWKS fetch, or one of its look-ups).
pub struct Waiter {
    pub id: u32,
    pub stream: Weak<dyn Paused>,
}

impl Waiter {
    /// Wakes the stream, unless it has gone away meanwhile.
    pub fn resume(self, wake: Wake) {
        if let Some(stream) = self.stream.upgrade() {
            stream.resume(self.id, wake);
        }
    }
}

#[derive(Default)]
struct Fetch {
    in_flight: bool,
    /// The call-out token of the fetch in flight: other call-outs answer the root too.
    token: Option<u32>,
    /// When the fetch in flight left (for the watchdog).
    in_flight_since: Option<i64>,
    /// A request asked for a fetch; the next tick dispatches it.
    wanted: bool,
    fast_tick: bool,
    last_kid: Option<i64>,
    last_bootstrap: Option<i64>,
    last_refresh: Option<i64>,
    waiting: Vec<Waiter>,
    /// The trace of the request that asked for the fetch: the fetch goes on in it.
    trace: TraceContext,
}

/// What a request asks the token service's internal API for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// The user's upstream token (TI).
    UpstreamToken,
    /// The user's identity assertion for the route.
    IdentityAssertion,
    /// A client route's sign-in callback: the code for an app session.
    AppSession,
    /// A client route's app session: the user's TE.
    AppToken,
    /// A client route's sign-out: the end of the app session.
    AppSessionEnd,
}

impl LookupKind {
    fn path(self) -> &'static str {
        match self {
            LookupKind::UpstreamToken => internal_api::UPSTREAM_TOKEN_PATH,
            LookupKind::IdentityAssertion => internal_api::IDENTITY_ASSERTION_PATH,
            LookupKind::AppSession => internal_api::APP_SESSION_PATH,
            LookupKind::AppToken => internal_api::APP_TOKEN_PATH,
            LookupKind::AppSessionEnd => internal_api::APP_SESSION_END_PATH,
        }
    }

    fn what(self) -> &'static str {
        match self {
            LookupKind::UpstreamToken => "upstream token look-up",
            LookupKind::IdentityAssertion => "identity assertion request",
            LookupKind::AppSession => "app session request",
            LookupKind::AppToken => "app token request",
            LookupKind::AppSessionEnd => "app session end",
        }
    }
}

pub struct Worker {
    root_id: u32,
    pub config: Rc<CompiledConfig>,
    pub keys: Option<Rc<KeySet>>,
    /// Shared-data version our `keys` came from, to notice another worker's fetch.
    keys_cas: Option<u32>,
    pub cache: TokenCache,
    /// The failed signature checks this worker may still afford this second.
    pub budget: SignatureBudget,
    /// Rejection lines written this second, and those left out (a flood of bad tokens
    /// must not become a flood of log lines).
    rejections_logged: (i64, u32, u64),
    /// Users' upstream tokens (TI), by route and `sub`.
    pub upstream_tokens: UpstreamTokenCache,
    /// Users' identity assertions, by route and `sub`.
    pub assertions: AssertionCache,
    /// Client routes' app TEs, by route and SHA-256 of the session cookie.
    pub app_tokens: AppTokenCache,
    /// Look-ups whose request waits for the answer, by call-out token.
    lookups: HashMap<u32, (Waiter, LookupKind)>,
    /// Every call-out to the token service not yet answered, with the time by which Envoy
    /// will have answered it.
    callouts: HashMap<u32, i64>,
    /// The key internal calls are signed with (`internal_api::CREDENTIAL_ENV`).
    internal_key: Option<InternalKey>,
    /// `tools/list` answers filtered lately, reused when a caller lists again.
    pub lists: FilteredLists,
    pub session_key: SessionKey,
    /// The key is this process's own (no operator key): follow shared data.
    session_key_per_process: bool,
    fetch: Fetch,
    shared_key: String,
    /// The revocation feed: this worker's copy, and the poll when this worker is the poller.
    pub feed: Feed,
    /// The tick period between fast ticks.
    tick_period: Duration,
    pub metrics: Metrics,
    /// The clock in seconds, read at start and at every tick: what a request's token is
    /// judged against when nothing else needs the time (`clock_seconds`).
    clock: i64,
}

/// The root context's tick for `config`: `TICK`, shorter with the revocation feed on.
pub fn tick_period(config: &CompiledConfig) -> Duration {
    if config.token_service.is_none() {
        return TICK;
    }
    let ms = (config.revocation.poll_ms / 2).clamp(50, FEED_TICK_MAX_MS);
    Duration::from_millis(u64::from(ms))
}

pub fn now_millis() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The operator's session key from the environment, or this Envoy process's own (shared by
/// its workers). Errors name the variable.
pub fn session_key() -> Result<(SessionKey, bool), String> {
    match std::env::var(SESSION_KEY_ENV) {
        Ok(secret) => {
            // Set but unusable is an operator error: falling back to a per-process key would
            // quietly break sessions across replicas.
            let key = SessionKey::from_secret(secret.as_bytes())
                .map_err(|e| format!("invalid {SESSION_KEY_ENV}: {e}"))?;
            return Ok((key, false));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("invalid {SESSION_KEY_ENV}: must be text"));
        }
        Err(std::env::VarError::NotPresent) => {}
    }
    if let Some(key) = shared_session_key() {
        return Ok((key, true));
    }
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random)
        .map_err(|e| format!("no randomness for the session key: {e}"))?;
    let mine = SessionKey::from_random(random);
    let _ = hostcalls::set_shared_data(SESSION_SHARED_KEY, Some(&mine.to_bytes()), None);
    // Another worker may have written first: everyone uses what shared data holds.
    let key = shared_session_key().unwrap_or(mine);
    log::info!(
        "mcp-warden: session ids are bound with this Envoy's own key; set {SESSION_KEY_ENV} to share one across replicas"
    );
    Ok((key, true))
}

/// The key internal calls are signed with, from Envoy's environment: required when the
/// configuration uses the token service. Errors name the variable, never its value.
pub fn internal_key(config: &CompiledConfig) -> Result<Option<InternalKey>, String> {
    let name = internal_api::CREDENTIAL_ENV;
    match std::env::var(name) {
        Ok(credential) => InternalKey::from_credential(&credential)
            .map(Some)
            .map_err(|e| format!("invalid {name}: {e}")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("invalid {name}: must be text")),
        Err(std::env::VarError::NotPresent) if config.token_service.is_some() => Err(format!(
            "{name} is not set: token_service (the revocation feed, upstream tokens, identity assertions, client routes) needs the token service's internal credential in Envoy's environment"
        )),
        Err(std::env::VarError::NotPresent) => Ok(None),
    }
}

fn shared_session_key() -> Option<SessionKey> {
    match hostcalls::get_shared_data(SESSION_SHARED_KEY) {
        Ok((Some(bytes), _)) => SessionKey::from_bytes(&bytes),
        _ => None,
    }
}

/// The internal API's answer to the call-out being delivered: `None` status when the call
/// failed (Envoy's sign: zero headers); bodies over the bound are not read.
pub fn read_answer(headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    let status = if headers == 0 {
        None
    } else {
        hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
            .ok()
            .and_then(|h| h.into_iter().find(|(name, _)| name == ":status"))
            .and_then(|(_, value)| std::str::from_utf8(&value).ok()?.parse::<u32>().ok())
    };
    let body = if body_size == 0 || body_size > internal_api::MAX_ANSWER_BYTES {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    (status, body)
}

pub fn now_seconds() -> i64 {
    hostcalls::get_current_time()
        .map(seconds)
        .unwrap_or_default()
}

pub fn seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Follows Envoy's log level for the `wasm` component (it can change at runtime through the
/// admin `/logging` endpoint), so lines Envoy would drop are never even formatted.
pub fn follow_log_level() {
    let level = match hostcalls::get_log_level() {
        Ok(LogLevel::Trace) => log::LevelFilter::Trace,
        Ok(LogLevel::Debug) => log::LevelFilter::Debug,
        Ok(LogLevel::Info) => log::LevelFilter::Info,
        Ok(LogLevel::Warn) => log::LevelFilter::Warn,
        Ok(LogLevel::Error) => log::LevelFilter::Error,
        Ok(LogLevel::Critical) => log::LevelFilter::Off,
        Err(_) => log::LevelFilter::Info,
    };
    log::set_max_level(level);
}

impl Worker {
    pub fn new(
        root_id: u32,
        config: CompiledConfig,
        session_key: (SessionKey, bool),
        internal_key: Option<InternalKey>,
    ) -> Self {
        let keys = config.static_keys.clone().map(Rc::new);
        let cache = TokenCache::new(config.token_cache_entries, config.rules.leeway_seconds);
        let budget = SignatureBudget::new(config.failed_signature_checks_per_second);
        let upstream_tokens =
            UpstreamTokenCache::new(config.token_cache_entries, config.routes.len());
        let assertions = AssertionCache::new(config.token_cache_entries, config.routes.len());
        let app_tokens = AppTokenCache::new(config.token_cache_entries, config.routes.len());
        let shared_key = format!("{JWKS_SHARED_KEY_PREFIX}{}", config.rules.issuer);
        let clock = now_seconds();
        let feed = Feed::new(&config, clock);
        let tick_period = tick_period(&config);
        let metrics = Metrics::define(&config);
        Self {
            root_id,
            config: Rc::new(config),
            keys,
            keys_cas: None,
            cache,
            budget,
            rejections_logged: (0, 0, 0),
            upstream_tokens,
            assertions,
            app_tokens,
            lookups: HashMap::new(),
            callouts: HashMap::new(),
            internal_key,
            lists: FilteredLists::default(),
            session_key: session_key.0,
            session_key_per_process: session_key.1,
            fetch: Fetch::default(),
            shared_key,
            feed,
            tick_period,
            metrics,
            clock,
        }
    }

    /// The clock as of the last tick, at most a tick old (1 s; 500 ms or less with the
    /// revocation feed), well inside `clock_skew_seconds`' leeway for `exp`: a request's token
    /// is judged without a host call of its own.
    pub fn clock_seconds(&self) -> i64 {
        self.clock
    }

    /// A fresh reading of the clock moves the worker's clock on (never back).
    pub fn saw_clock(&mut self, now: i64) {
        self.clock = self.clock.max(now);
    }

    /// Adopts the JWKS in shared data when it is newer than ours (another worker fetched).
    /// Returns whether the key set changed.
    pub fn sync_keys(&mut self) -> bool {
        if self.config.static_keys.is_some() {
            return false;
        }
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&self.shared_key) else {
            return false;
        };
        if cas.is_some() && cas == self.keys_cas {
            return false;
        }
        match KeySet::from_jwks(&bytes) {
            Ok(keys) => {
                self.keys = Some(Rc::new(keys));
                self.keys_cas = cas;
                // A key may have been withdrawn: tokens it signed must be checked again.
                self.cache.clear();
                self.lists = FilteredLists::default();
                true
            }
            Err(_) => false,
        }
    }

    /// A request needs keys (unknown `kid`, or none yet). Returns whether it should wait for a
    /// fetch; `false` means decide now with the keys at hand (a refetch was too recent).
    pub fn want_keys(&mut self, now: i64, waiter: Waiter, trace: &TraceContext) -> bool {
        if self.config.jwks.is_none() || self.fetch.waiting.len() >= MAX_WAITING {
            return false;
        }
        if !self.fetch.in_flight && !self.fetch.wanted {
            let (last, min_interval) = if self.keys.is_none() {
                (&mut self.fetch.last_bootstrap, MIN_BOOTSTRAP_FETCH_SECONDS)
            } else {
                (&mut self.fetch.last_kid, MIN_KID_REFETCH_SECONDS)
            };
            if last.is_some_and(|at| now - at < min_interval) {
                return false;
            }
            *last = Some(now);
            self.fetch.wanted = true;
            self.fetch.trace = trace.clone();
            self.speed_up_tick(waiter.id);
        }
        self.fetch.waiting.push(waiter);
        true
    }

    /// Fetches leave from the root context (its answer wakes every waiter); a request asks the
    /// root's tick to come at once.
    fn speed_up_tick(&mut self, own_id: u32) {
        if self.fetch.fast_tick {
            return;
        }
        if hostcalls::set_effective_context(self.root_id).is_ok() {
            self.fetch.fast_tick = hostcalls::set_tick_period(FAST_TICK).is_ok();
        }
        let _ = hostcalls::set_effective_context(own_id);
    }

    /// The root's tick: adopt what other workers fetched, start a fetch when one is due.
    /// Returns the tick period to set (when it changes) and requests to wake at once (a fetch
    /// that could not be dispatched).
    pub fn tick(&mut self) -> (Option<Duration>, Vec<Waiter>) {
        follow_log_level();
        self.metrics.flush(&self.budget, &self.config);
        let now = now_seconds();
        self.saw_clock(now);
        self.summarize_rejections(now);
        self.expire_callouts(now);
        let _ = self.sync_keys();
        self.sync_session_key();
        self.poll_feed();
        let period = std::mem::take(&mut self.fetch.fast_tick).then_some(self.tick_period);
        let Some(fetch) = self.config.jwks.clone() else {
            return (period, Vec::new());
        };
        if self.fetch.in_flight {
            // Envoy answers every call, if only with a timeout; should an answer ever be lost,
            // the waiters must not wait forever, nor the refreshes stop.
            let deadline = i64::from(fetch.timeout_ms / 1000) + 5;
            if self
                .fetch
                .in_flight_since
                .is_some_and(|at| now - at > deadline)
            {
                log::warn!("mcp-warden: JWKS fetch never answered; giving up on it");
                self.fetch.in_flight = false;
                self.fetch.token = None;
                self.metrics.inc(Counter::JwksFetchFailed);
                return (period, std::mem::take(&mut self.fetch.waiting));
            }
            return (period, Vec::new());
        }
        let due = self.fetch.wanted
            || self.keys.is_none()
            || self
                .fetch
                .last_refresh
                .is_none_or(|at| now - at >= i64::from(fetch.refresh_seconds));
        if !due {
            return (period, Vec::new());
        }
        self.fetch.wanted = false;
        // A scheduled refresh belongs to no request's trace.
        let trace = std::mem::take(&mut self.fetch.trace);
        if let Some(token) = dispatch_jwks(&fetch, &trace) {
            self.fetch.in_flight = true;
            self.fetch.token = Some(token);
            self.fetch.in_flight_since = Some(now);
            self.fetch.last_refresh = Some(now);
            (period, Vec::new())
        } else {
            self.metrics.inc(Counter::JwksFetchFailed);
            (period, std::mem::take(&mut self.fetch.waiting))
        }
    }

    /// The revocation feed's part of the tick: adopt what the poller published; poll when
    /// this worker is the poller and a poll is due.
    fn poll_feed(&mut self) {
        let now_ms = now_millis();
        let timeout_ms = self
            .config
            .token_service
            .as_ref()
            .map_or(0, |ts| ts.timeout_ms);
        let FeedTick::Poll(path) = self.feed.tick(now_ms, timeout_ms) else {
            return;
        };
        let root = self.root_id;
        match self.call_token_service(
            root,
            "GET",
            &path,
            "",
            "revocation feed poll",
            &TraceContext::default(),
        ) {
            Ok(token) => self.feed.dispatched(token, now_ms),
            Err(_) => {
                self.metrics.inc(Counter::RevocationPollFailed);
                self.feed.not_dispatched(now_ms);
            }
        }
    }

    /// The revocation feed poll's answer, if `token` is it (the call-out's slot was freed by
    /// `answered`). Returns whether it was.
    pub fn accept_feed(&mut self, token: u32, headers: usize, body_size: usize) -> bool {
        if !self.feed.is_poll(token) {
            return false;
        }
        let (status, body) = read_answer(headers, body_size);
        let ok = self.feed.accept(status, &body, now_millis());
        self.metrics.inc(if ok {
            Counter::RevocationPollOk
        } else {
            Counter::RevocationPollFailed
        });
        true
    }

    fn sync_session_key(&mut self) {
        if !self.session_key_per_process {
            return;
        }
        if let Some(shared) = shared_session_key() {
            if shared != self.session_key {
                self.session_key = shared;
            }
        }
    }

    /// Handles the JWKS fetch's answer and returns the requests waiting for it. `headers == 0`
    /// is Envoy's sign of a failed call: no response exists and reading it would fail.
    pub fn accept_jwks(&mut self, token: u32, headers: usize, body_size: usize) -> Vec<Waiter> {
        if self.fetch.token != Some(token) {
            // Another call-out's answer (a drop the root sent): nothing to read.
            return Vec::new();
        }
        self.fetch.token = None;
        self.fetch.in_flight = false;
        let waiting = std::mem::take(&mut self.fetch.waiting);
        let status = if headers == 0 {
            None
        } else {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .ok()
                .and_then(|h| h.into_iter().find(|(name, _)| name == ":status"))
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
            return waiting;
        }
        if body_size > MAX_JWKS_BYTES {
            self.metrics.inc(Counter::JwksFetchFailed);
            log::warn!("mcp-warden: JWKS of {body_size} bytes exceeds {MAX_JWKS_BYTES}; ignored");
            return waiting;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Err(e) = KeySet::from_jwks(&body) {
            self.metrics.inc(Counter::JwksFetchFailed);
            log::warn!("mcp-warden: JWKS rejected: {e}");
            return waiting;
        }
        self.metrics.inc(Counter::JwksFetchOk);
        // Write only a changed key set: every write bumps the version, and each worker then
        // drops its verified-token cache.
        let current = hostcalls::get_shared_data(&self.shared_key)
            .ok()
            .and_then(|(v, _)| v);
        if current.as_deref() != Some(body.as_slice()) {
            let _ = hostcalls::set_shared_data(&self.shared_key, Some(&body), None);
        }
        // Install what shared data holds now: ours, or a newer set another worker wrote.
        let _ = self.sync_keys();
        waiting
    }
}

impl Worker {
    /// Asks the token service for a user's upstream token or identity assertion. The SDK
    /// hands the answer to the context it had active (the request, or the root for a request
    /// the JWKS answer woke); both find the request with `answered`. `Err` is the reason to
    /// refuse it with.
    pub fn start_lookup(
        &mut self,
        waiter: Waiter,
        kind: LookupKind,
        body: &str,
        trace: &TraceContext,
    ) -> Result<u32, &'static str> {
        let own_id = waiter.id;
        let token =
            self.call_token_service(own_id, "POST", kind.path(), body, kind.what(), trace)?;
        self.lookups.insert(token, (waiter, kind));
        self.metrics.inc(match kind {
            LookupKind::UpstreamToken => Counter::UpstreamTokenLookups,
            LookupKind::IdentityAssertion => Counter::IdentityAssertionLookups,
            LookupKind::AppSession => Counter::AppSessionLookups,
            LookupKind::AppToken | LookupKind::AppSessionEnd => Counter::AppTokenLookups,
        });
        Ok(token)
    }

    /// A call-out answered: the request waiting for it, if it is a look-up whose request is
    /// still there. Frees the call-out's slot either way.
    pub fn answered(&mut self, token: u32) -> Option<(Waiter, LookupKind)> {
        if self.callouts.remove(&token).is_some() {
            self.metrics.set_callouts_in_flight(self.callouts.len());
        }
        self.lookups.remove(&token)
    }

    /// Nobody waits for this look-up any more (its request was answered, or went away). Its
    /// call-out stays counted until Envoy must have answered it (see `call_token_service`).
    pub fn abandon(&mut self, token: u32) {
        self.lookups.remove(&token);
    }

    /// Tells the token service a TI was refused, fire and forget.
    pub fn dispatch_drop(&mut self, own_id: u32, body: &str, trace: &TraceContext) {
        self.dispatch_notice(
            own_id,
            internal_api::UPSTREAM_TOKEN_DROP_PATH,
            body,
            "upstream token drop",
            trace,
        );
    }

    /// Posts `body` to the internal API at `path`, fire and forget: its answer is nobody's
    /// (`answered` finds no look-up for it).
    pub fn dispatch_notice(
        &mut self,
        own_id: u32,
        path: &str,
        body: &str,
        what: &str,
        trace: &TraceContext,
    ) {
        let _ = self.call_token_service(own_id, "POST", path, body, what, trace);
    }

    /// One signed call (`POST` with a body, `GET` without) to the token service's internal
    /// API. It leaves as the root
    /// context's call: Envoy cancels a call of a request context that ends (a client that
    /// disconnects mid-call), and the SDK then keeps the call's entry in its own table
    /// forever; a call of the root context is always answered, if only by its timeout, which
    /// frees that entry. `own_id` is the context to make effective again. At most
    /// `MAX_CALLOUTS` are in flight per worker, abandoned ones included, so neither Envoy
    /// nor the token service holds more for us whatever clients do.
    fn call_token_service(
        &mut self,
        own_id: u32,
        method: &str,
        path: &str,
        body: &str,
        what: &str,
        trace: &TraceContext,
    ) -> Result<u32, &'static str> {
        let now = now_seconds();
        if self.callouts.len() >= MAX_CALLOUTS {
            self.expire_callouts(now);
            if self.callouts.len() >= MAX_CALLOUTS {
                return Err("token-service-busy");
            }
        }
        let config = Rc::clone(&self.config);
        let (Some(ts), Some(key)) = (config.token_service.as_ref(), self.internal_key.as_ref())
        else {
            return Err("token-service-unconfigured");
        };
        let mut nonce = [0u8; internal_api::NONCE_BYTES];
        if getrandom::getrandom(&mut nonce).is_err() {
            return Err("token-service-unavailable");
        }
        let authorization = key.authorization(method, path, body.as_bytes(), now, &nonce);
        let mut headers = vec![
            (":method", method),
            (":path", path),
            (":authority", ts.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        // The client's trace goes on to the token service (the signature covers method,
        // path, body, time and nonce, not these).
        headers.extend(trace.headers());
        let timeout = Duration::from_millis(u64::from(ts.timeout_ms));
        let as_root = hostcalls::set_effective_context(self.root_id).is_ok();
        let dispatched = hostcalls::dispatch_http_call(
            &ts.cluster,
            headers,
            (!body.is_empty()).then_some(body.as_bytes()),
            vec![],
            timeout,
        );
        if as_root {
            let _ = hostcalls::set_effective_context(own_id);
        }
        match dispatched {
            Ok(token) => {
                // Answered by then at the latest (Envoy's timeout, plus slack for the tick).
                let deadline = now + i64::from(ts.timeout_ms / 1000) + CALLOUT_SLACK_SECONDS;
                self.callouts.insert(token, deadline);
                self.metrics.set_callouts_in_flight(self.callouts.len());
                Ok(token)
            }
            Err(status) => {
                log::warn!(
                    "mcp-warden: cannot dispatch {what} to cluster {}: {status:?}",
                    ts.cluster
                );
                Err("token-service-unavailable")
            }
        }
    }

    /// Whether a rejection may be logged now: at most `MAX_REJECTION_LINES` a second per
    /// worker; the rest are counted and summed up in one line at the next tick.
    pub fn may_log_rejection(&mut self, now: i64) -> bool {
        let (second, written, left_out) = &mut self.rejections_logged;
        // Only forward (see `SignatureBudget`'s second): requests judged at the tick's clock
        // and at a fresh one interleave.
        if now > *second {
            *second = now;
            *written = 0;
        }
        if *written < MAX_REJECTION_LINES {
            *written += 1;
            true
        } else {
            *left_out += 1;
            false
        }
    }

    fn summarize_rejections(&mut self, now: i64) {
        let (second, _, left_out) = &mut self.rejections_logged;
        if *left_out > 0 && *second != now {
            log::info!(
                "mcp-warden: {left_out} more rejections not logged (at most {MAX_REJECTION_LINES} lines a second per worker; the counters have them all)"
            );
            *left_out = 0;
        }
    }

    /// Forgets call-outs whose answer went to a request that had ended (the SDK hands it to
    /// nobody): Envoy answered them by their deadline.
    fn expire_callouts(&mut self, now: i64) {
        let before = self.callouts.len();
        self.callouts.retain(|_, deadline| *deadline >= now);
        if self.callouts.len() != before {
            self.metrics.set_callouts_in_flight(self.callouts.len());
        }
    }
}

fn dispatch_jwks(fetch: &warden_core::config::JwksFetch, trace: &TraceContext) -> Option<u32> {
    let mut headers = vec![
        (":method", "GET"),
        (":path", fetch.path.as_str()),
        (":authority", fetch.authority.as_str()),
        ("accept", "application/json"),
    ];
    headers.extend(trace.headers());
    let timeout = Duration::from_millis(u64::from(fetch.timeout_ms));
    match hostcalls::dispatch_http_call(&fetch.cluster, headers, None, vec![], timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!(
                "mcp-warden: cannot dispatch JWKS fetch to cluster {}: {status:?}",
                fetch.cluster
            );
            None
        }
    }
}

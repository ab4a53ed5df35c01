//! Counters visible in Envoy's `/stats` (Envoy prefixes them `wasmcustom.`): the flat ones
//! below, and the labelled ones of `warden_core::metrics` (requests by route, MCP method and
//! decision; tool calls by route and tool; the decision's duration as a histogram), their
//! labels in the name for the bootstrap's `stats_tags` to take out.

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use warden_core::config::CompiledConfig;
use warden_core::metrics::{duration_name, Decision, MethodLabel, Tallies};
use warden_core::signature_budget::SignatureBudget;

#[derive(Clone, Copy)]
pub enum Counter {
    /// Forwarded upstream after every check (added to the counter once a second).
    Allowed,
    /// Refused at the token check (401 / 400 / 403 origin / 503).
    Denied,
    /// Metadata and CORS preflights answered by the filter.
    LocalReplies,
    JwksFetchOk,
    JwksFetchFailed,
    /// MCP calls the policy refused.
    DeniedPolicy,
    /// Bodies that were not strict JSON-RPC.
    ParseError,
    /// Bodies over `max_request_bytes`.
    Oversize,
    /// `Mcp-Method` / `Mcp-Name` / `MCP-Protocol-Version` disagreeing with the body.
    HeaderMismatch,
    /// Content types or encodings the filter cannot inspect.
    Uninspectable,
    /// JSON-RPC batches seen.
    Batch,
    /// `tools/list` results that had tools removed.
    ToolsListFiltered,
    /// Methods other than POST, GET, DELETE, OPTIONS; bodies on GET / DELETE; disguised headers.
    DeniedMethod,
    /// `Mcp-Session-Id`s that are not the caller's.
    DeniedSession,
    /// Upstream tokens asked of the token service (cache misses).
    UpstreamTokenLookups,
    /// Requests refused for want of an upstream token (none, refused, provider or token
    /// service unavailable).
    DeniedUpstreamToken,
    /// Upstream tokens the MCP server refused (dropped, the client sent to authorize again).
    UpstreamTokenRefused,
    /// Identity assertions asked of the token service (cache misses).
    IdentityAssertionLookups,
    /// Requests refused for want of an identity assertion (user gone, token service
    /// unavailable).
    DeniedIdentityAssertion,
    /// App TEs asked of the token service for client-route sessions (cache misses).
    AppTokenLookups,
    /// Client-route sign-in callbacks exchanged for an app session.
    AppSessionLookups,
    /// Signature checks of tokens not yet verified (added once a second).
    SignatureChecks,
    /// Signature checks that found a bad signature.
    SignatureChecksFailed,
    /// Tokens refused unchecked: the worker's budget of failed checks was spent.
    SignatureChecksRefused,
    /// TEs refused because the feed says their grant, session or user is revoked.
    DeniedRevoked,
    /// TEs answered `503` because the revocation feed is stale (fail closed).
    DeniedFeedStale,
    /// Polls of the revocation feed that succeeded / failed (the polling worker's).
    RevocationPollOk,
    RevocationPollFailed,
}

const NAMES: [&str; 28] = [
    "mcp_warden.requests_allowed",
    "mcp_warden.requests_denied",
    "mcp_warden.local_replies",
    "mcp_warden.jwks_fetch_ok",
    "mcp_warden.jwks_fetch_failed",
    "mcp_warden.denied_policy",
    "mcp_warden.denied_parse_error",
    "mcp_warden.denied_oversize",
    "mcp_warden.denied_header_mismatch",
    "mcp_warden.denied_uninspectable",
    "mcp_warden.batches",
    "mcp_warden.tools_list_filtered",
    "mcp_warden.denied_method",
    "mcp_warden.denied_session",
    "mcp_warden.upstream_token_lookups",
    "mcp_warden.denied_upstream_token",
    "mcp_warden.upstream_token_refused",
    "mcp_warden.identity_assertion_lookups",
    "mcp_warden.denied_identity_assertion",
    "mcp_warden.app_token_lookups",
    "mcp_warden.app_session_lookups",
    "mcp_warden.signature_checks",
    "mcp_warden.signature_checks_failed",
    "mcp_warden.signature_checks_refused",
    "mcp_warden.denied_revoked",
    "mcp_warden.denied_revocation_feed_stale",
    "mcp_warden.revocation_poll_ok",
    "mcp_warden.revocation_poll_failed",
];

/// Call-outs to the token service not yet answered (a gauge).
const CALLOUTS_IN_FLIGHT: &str = "mcp_warden.callouts_in_flight";

pub struct Metrics {
    ids: [Option<u32>; NAMES.len()],
    callouts_in_flight: Option<u32>,
    /// What this worker has added to the gauge so far.
    callouts_reported: Cell<i64>,
    /// The signature budget's totals at the last flush.
    budget_reported: Cell<[u64; 3]>,
    /// Allowed requests not yet added to the counter: the one counter of the warm path is
    /// added once a second (`flush`, from the root's tick) instead of a host call a request.
    allowed_pending: Cell<u64>,
    /// The labelled counters' counts since the last flush, and their ids once defined.
    tallies: RefCell<Tallies>,
    /// The duration histogram's id per route and decision (index `route × decisions +
    /// decision`), once defined (`Some(None)`: defining it failed).
    durations: RefCell<Vec<Option<Option<u32>>>>,
    /// Requests to go before the next one the histogram samples (`duration_sample_every`).
    untimed_left: Cell<u32>,
    sample_every: u32,
    /// xorshift32 state for the gaps between sampled requests.
    gap_state: Cell<u32>,
}

/// What the decided request was, for the labelled metrics.
pub struct Decided<'a> {
    pub route: usize,
    pub method: MethodLabel,
    /// The tool of a `tools/call`.
    pub tool: Option<&'a str>,
    pub decision: Decision,
    /// Microseconds from the request headers to the decision (`None`: not sampled, or no
    /// clock).
    pub micros: Option<u64>,
}

impl Metrics {
    pub fn define(config: &CompiledConfig) -> Self {
        let mut ids = [None; NAMES.len()];
        for (slot, name) in ids.iter_mut().zip(NAMES) {
            *slot = hostcalls::define_metric(MetricType::Counter, name).ok();
        }
        Self {
            ids,
            callouts_in_flight: hostcalls::define_metric(MetricType::Gauge, CALLOUTS_IN_FLIGHT)
                .ok(),
            callouts_reported: Cell::new(0),
            budget_reported: Cell::new([0; 3]),
            allowed_pending: Cell::new(0),
            tallies: RefCell::new(Tallies::new(
                config.routes.iter().map(|r| r.policy.exact_tool_names()),
            )),
            durations: RefCell::new(vec![None; config.routes.len() * Decision::ALL.len()]),
            untimed_left: Cell::new(0),
            sample_every: config.duration_sample_every.max(1),
            gap_state: Cell::new(0x9e37_79b9),
        }
    }

    /// Whether the histogram samples the request that starts now: on average one in
    /// `duration_sample_every`, the first one included.
    pub fn take_duration_sample(&self) -> bool {
        match self.untimed_left.get() {
            0 => {
                self.untimed_left.set(self.next_gap());
                true
            }
            n => {
                self.untimed_left.set(n - 1);
                false
            }
        }
    }

    /// Requests left unsampled before the next sampled one: uniform in 0..=2(N-1), N-1 on
    /// average. A fixed gap would time a client whose requests repeat in a cycle (list, call,
    /// list, call) always at the same place in it, and never the rest.
    fn next_gap(&self) -> u32 {
        if self.sample_every <= 1 {
            return 0;
        }
        let mut x = self.gap_state.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.gap_state.set(x);
        x % (2 * (self.sample_every - 1) + 1)
    }

    /// A request was decided: counted in this worker's table (added at the flush) and, when it
    /// was sampled, its duration recorded, the one host call of the labelled metrics on the
    /// request path.
    pub fn decided(&self, d: &Decided<'_>, config: &CompiledConfig) {
        if let Ok(mut t) = self.tallies.try_borrow_mut() {
            t.count(d.route, d.method, d.tool, d.decision);
        }
        let (Some(micros), Ok(mut durations)) = (d.micros, self.durations.try_borrow_mut()) else {
            return;
        };
        let Some(slot) = durations.get_mut(d.route * Decision::ALL.len() + d.decision as usize)
        else {
            return;
        };
        let id = *slot.get_or_insert_with(|| {
            let route = config.routes.get(d.route).map_or("", |r| r.name.as_str());
            hostcalls::define_metric(MetricType::Histogram, &duration_name(route, d.decision)).ok()
        });
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, micros);
        }
    }

    /// A tool a route's server listed in a `tools/list` answer.
    pub fn learn_tool(&self, route: usize, name: &str) {
        if let Ok(mut t) = self.tallies.try_borrow_mut() {
            t.learn_tool(route, name);
        }
    }

    /// Whether to read this `tools/list` answer of a route that does not filter, only to
    /// learn its tool names (at most one a minute per route and worker).
    pub fn take_learning_turn(&self, route: usize, now: i64) -> bool {
        self.tallies
            .try_borrow_mut()
            .is_ok_and(|mut t| t.take_learning_turn(route, now))
    }

    /// This worker's call-outs in flight. (Envoy sums one gauge name over the workers: each
    /// worker records its own share as a difference.)
    pub fn set_callouts_in_flight(&self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let delta = n - self.callouts_reported.replace(n);
        if let (Some(id), true) = (self.callouts_in_flight, delta != 0) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    pub fn inc(&self, counter: Counter) {
        if let Counter::Allowed = counter {
            self.allowed_pending.set(self.allowed_pending.get() + 1);
            return;
        }
        self.add(counter, 1);
    }

    fn add(&self, counter: Counter, n: u64) {
        if let Some(id) = self.ids[counter as usize] {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Adds what was counted since the last flush, the signature budget's totals included.
    pub fn flush(&self, budget: &SignatureBudget, config: &CompiledConfig) {
        if let Ok(mut t) = self.tallies.try_borrow_mut() {
            let route_name = |i: usize| config.routes.get(i).map_or("", |r| r.name.as_str());
            t.drain(route_name, |name, n, id| {
                if id.is_none() {
                    *id = hostcalls::define_metric(MetricType::Counter, &name()).ok();
                }
                if let Some(id) = *id {
                    let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            });
        }
        let allowed = self.allowed_pending.replace(0);
        if allowed > 0 {
            self.add(Counter::Allowed, allowed);
        }
        let totals = [budget.checks, budget.failures, budget.refused];
        let before = self.budget_reported.replace(totals);
        for ((counter, now), then) in [
            Counter::SignatureChecks,
            Counter::SignatureChecksFailed,
            Counter::SignatureChecksRefused,
        ]
        .into_iter()
        .zip(totals)
        .zip(before)
        {
            if now > then {
                self.add(counter, now - then);
            }
        }
    }

    /// The counter for an MCP refusal, by the reason the core gave.
    pub fn for_refusal(reason: &str) -> Counter {
        match reason {
            "policy-denied" => Counter::DeniedPolicy,
            "mcp-oversize" => Counter::Oversize,
            "mcp-header-mismatch" | "mcp-header-repeated" => Counter::HeaderMismatch,
            "mcp-content-type" | "mcp-content-encoding" => Counter::Uninspectable,
            "mcp-body-not-allowed" => Counter::DeniedMethod,
            _ => Counter::ParseError,
        }
    }

    /// The counter for a refusal before the body: the token check, or the transport rules.
    pub fn for_access_refusal(reason: &str) -> Counter {
        match reason {
            "method-not-allowed"
            | "mcp-body-not-allowed"
            | "header-disguised"
            | "method-override" => Counter::DeniedMethod,
            "mcp-session-unknown" | "mcp-session-repeated" | "mcp-session-in-query" => {
                Counter::DeniedSession
            }
            "token-revoked" => Counter::DeniedRevoked,
            "revocation-feed-stale" => Counter::DeniedFeedStale,
            _ => Counter::Denied,
        }
    }
}

//! The revocation feed in the filter: one poller per Envoy, every worker a reader.
//!
//! Every worker's root context runs this at its tick. Shared data holds two records per
//! issuer: the small `FeedState` (the poller's lease, the last good poll, the set's
//! generation), read at every tick, and the encoded `RevokedSet`, read only when the
//! generation moved. The worker whose lease it is (taken with a CAS write when free or
//! lapsed) polls `REVOCATIONS_PATH` through the worker's call-outs and publishes what it
//! learnt; the others adopt it at their next tick. Requests then check their TE against the
//! worker's own copy (`Revocations`): no host call, no allocation.
//! The rules (cursor, set, encoding, health) are `warden_core::revocation`'s.

use proxy_wasm::hostcalls;
use warden_core::config::CompiledConfig;
use warden_core::internal_api::{self, RevocationPage};
use warden_core::revocation::{lease_ms, FeedHealth, FeedState, Revocations, RevokedSet};

/// Shared-data key prefixes; the issuer completes them, as for the JWKS.
const STATE_KEY_PREFIX: &str = "mcp-warden.revocation-feed.v1:";
const SET_KEY_PREFIX: &str = "mcp-warden.revocations.v1:";
/// A stale feed is logged at most this often per worker.
const STALE_LOG_SECONDS: i64 = 30;

pub struct Feed {
    /// This worker's id in the lease (random: every worker's root context has the same id).
    me: u64,
    pub view: Revocations,
    /// The generation of the set `view` holds.
    generation: Option<u64>,
    /// The poll in flight: its call-out token and when it left (ms).
    in_flight: Option<(u32, i64)>,
    last_poll_ms: i64,
    /// The last page said `more`: poll again at the next tick.
    more: bool,
    /// A changed set not yet announced in `FeedState` (a CAS lost): announce it again.
    unannounced: bool,
    last_stale_log: i64,
    state_key: String,
    set_key: String,
}

/// What the tick asks the worker to do.
pub enum FeedTick {
    Nothing,
    /// Dispatch `GET <path>` to the token service, then `dispatched`.
    Poll(String),
}

impl Feed {
    pub fn new(config: &CompiledConfig, now: i64) -> Feed {
        let mut random = [0u8; 8];
        // Without randomness two workers may share an id: both would poll, which is harmless.
        let _ = getrandom::getrandom(&mut random);
        Feed {
            me: u64::from_be_bytes(random),
            view: Revocations::new(config.revocation, config.token_service.is_some(), now),
            generation: None,
            in_flight: None,
            last_poll_ms: 0,
            more: false,
            unannounced: false,
            last_stale_log: 0,
            state_key: format!("{STATE_KEY_PREFIX}{}", config.rules.issuer),
            set_key: format!("{SET_KEY_PREFIX}{}", config.rules.issuer),
        }
    }

    /// The token of the poll in flight.
    pub fn is_poll(&self, token: u32) -> bool {
        self.in_flight.is_some_and(|(t, _)| t == token)
    }

    fn read_state(&self) -> (Option<FeedState>, Option<u32>) {
        match hostcalls::get_shared_data(&self.state_key) {
            Ok((Some(bytes), cas)) => (FeedState::decode(&bytes), cas),
            _ => (None, None),
        }
    }

    /// Adopts what the poller published: the last good poll, and the set when its
    /// generation moved.
    fn sync(&mut self, state: Option<&FeedState>) {
        let Some(state) = state else {
            return;
        };
        if state.last_success > 0 {
            self.view.last_success = Some(state.last_success);
        }
        if self.generation == Some(state.generation) {
            return;
        }
        if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.set_key) {
            if let Some(set) = RevokedSet::decode(&bytes) {
                // Never step back: our own set may be newer than a lagging publication.
                if set.cursor() >= self.view.set.cursor() {
                    self.view.set = set;
                }
                self.generation = Some(state.generation);
            }
        }
    }

    /// The root's tick: adopt what was published, log a stale feed, and poll when this
    /// worker holds the lease and a poll is due. `timeout_ms`: the call-out's timeout.
    pub fn tick(&mut self, now_ms: i64, timeout_ms: u32) -> FeedTick {
        if !self.view.enabled {
            return FeedTick::Nothing;
        }
        let now = now_ms.div_euclid(1000);
        let (state, cas) = self.read_state();
        self.sync(state.as_ref());
        self.log_if_stale(now);
        if let Some((_, since)) = self.in_flight {
            // Envoy answers every call by its timeout; should an answer ever be lost, polling
            // must not stop for good.
            if now_ms - since <= i64::from(timeout_ms) + 2_000 {
                return FeedTick::Nothing;
            }
            log::warn!("mcp-warden: revocation feed poll never answered; giving up on it");
            self.in_flight = None;
        }
        if !FeedState::may_poll(state.as_ref(), self.me, now_ms) {
            return FeedTick::Nothing;
        }
        // Take or renew the lease; a lost CAS means another worker took it first.
        let leased = FeedState::leased(state.as_ref(), self.me, now_ms, lease_ms(&self.view.rules));
        if hostcalls::set_shared_data(&self.state_key, Some(&leased.encode()), cas).is_err() {
            return FeedTick::Nothing;
        }
        // Polls start at ticks: one a little early keeps the period from doubling.
        let period = i64::from(self.view.rules.poll_ms) * 9 / 10;
        if !self.more && now_ms - self.last_poll_ms < period {
            return FeedTick::Nothing;
        }
        let query = internal_api::revocations_query(self.view.set.cursor());
        FeedTick::Poll(format!("{}?{query}", internal_api::REVOCATIONS_PATH))
    }

    pub fn dispatched(&mut self, token: u32, now_ms: i64) {
        self.in_flight = Some((token, now_ms));
        self.last_poll_ms = now_ms;
        self.more = false;
    }

    /// The dispatch failed: try again at the next due tick.
    pub fn not_dispatched(&mut self, now_ms: i64) {
        self.last_poll_ms = now_ms;
    }

    /// The poll's answer (`status` `None`: no answer at all). Returns whether it was good.
    pub fn accept(&mut self, status: Option<u32>, body: &[u8], now_ms: i64) -> bool {
        self.in_flight = None;
        let now = now_ms.div_euclid(1000);
        let page = match status {
            Some(200) => warden_core::raw::object::<RevocationPage>(body),
            _ => None,
        };
        let Some(page) = page else {
            log::warn!(
                "mcp-warden: revocation feed poll failed (status {})",
                status.map_or_else(|| "none: transport failure".into(), |s| s.to_string())
            );
            return false;
        };
        let mut changed = match self.view.set.apply(&page, now - 1) {
            Ok(changed) => changed,
            Err(e) => {
                log::warn!("mcp-warden: revocation feed page refused: {}", e.reason());
                return false;
            }
        };
        // A second late: a request may be judged against the worker's clock of the last tick,
        // up to a second behind, and must still find an entry whose token it finds unexpired.
        changed |= self.view.set.expire(now - 1);
        self.more = page.more;
        self.view.last_success = Some(now);
        if changed || self.unannounced {
            let _ = hostcalls::set_shared_data(&self.set_key, Some(&self.view.set.encode()), None);
        }
        self.publish(changed || self.unannounced, now, now_ms);
        true
    }

    /// Announces the good poll (and a new generation when the set changed) in `FeedState`.
    fn publish(&mut self, new_generation: bool, now: i64, now_ms: i64) {
        let (state, cas) = self.read_state();
        let mut next =
            FeedState::leased(state.as_ref(), self.me, now_ms, lease_ms(&self.view.rules));
        next.last_success = now;
        if new_generation {
            next.generation = next.generation.wrapping_add(1);
        }
        let written = hostcalls::set_shared_data(&self.state_key, Some(&next.encode()), cas);
        self.unannounced = new_generation && written.is_err();
        if written.is_ok() {
            self.generation = Some(next.generation);
        }
    }

    fn log_if_stale(&mut self, now: i64) {
        if self.view.health(now) != FeedHealth::Stale
            || now - self.last_stale_log < STALE_LOG_SECONDS
        {
            return;
        }
        self.last_stale_log = now;
        let since = self
            .view
            .last_success
            .map_or_else(|| "since start".into(), |at| format!("for {} s", now - at));
        log::warn!(
            "mcp-warden: the revocation feed has not answered {since} (grace {} s): {}",
            self.view.rules.grace_seconds,
            if self.view.rules.fail_open {
                "serving requests anyway (fail_open)"
            } else {
                "refusing every token with 503 until it answers"
            }
        );
    }
}

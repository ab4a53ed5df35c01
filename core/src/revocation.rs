//! The revocation feed's rules, without I/O: the set of revoked grants, sessions and users
//! (`RevokedSet`), how a page of the feed (`internal_api::RevocationPage`) moves it and its
//! cursor, the compact encoding one poller per Envoy writes to shared data and every worker
//! reads (`RevokedSet::encode`, `FeedState`), and the feed's health (`Revocations::check`).
//!
//! Before the first good poll a worker serves requests for `grace_seconds` after its start
//! (the feed has had no chance yet; tokens are still verified as ever); past that, as after
//! any `grace_seconds` without a good poll, the feed is stale: with `fail_open: false` every
//! TE is refused with `503` until a poll succeeds again. Known revocations are refused
//! whatever the feed's health.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::internal_api::{RevocationPage, RevokedKind};
use crate::reply::LocalReply;
use crate::token::Identity;

/// Entries a worker holds at most. A page that would pass it is not applied (the cursor does
/// not move), so the feed goes stale and fails closed rather than forgetting a revocation.
pub const MAX_REVOKED: usize = 200_000;
/// Longest id accepted (grant and session ids are 43 characters, a `sub` an e-mail address).
pub const MAX_ID_BYTES: usize = 1024;

/// `revocation` in the plugin configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedRules {
    /// How often the poller asks the token service, milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u32,
    /// Seconds without a good poll after which the feed is stale.
    #[serde(default = "default_grace_seconds")]
    pub grace_seconds: u32,
    /// Serve requests while the feed is stale (revocations then wait for it to come back).
    #[serde(default)]
    pub fail_open: bool,
}

pub const DEFAULT_POLL_MS: u32 = 1_000;
pub const DEFAULT_GRACE_SECONDS: u32 = 30;
/// Bounds of `poll_ms`: faster would load the token service for nothing; slower would miss
/// the 5 s a revocation may take to reach every worker.
pub const POLL_MS_RANGE: (u32, u32) = (100, 4_000);
/// Bounds of `grace_seconds`.
pub const GRACE_SECONDS_RANGE: (u32, u32) = (1, 3_600);

fn default_poll_ms() -> u32 {
    DEFAULT_POLL_MS
}
fn default_grace_seconds() -> u32 {
    DEFAULT_GRACE_SECONDS
}

impl Default for FeedRules {
    fn default() -> Self {
        FeedRules {
            poll_ms: DEFAULT_POLL_MS,
            grace_seconds: DEFAULT_GRACE_SECONDS,
            fail_open: false,
        }
    }
}

impl FeedRules {
    /// `Err((field, message))` for a value out of bounds.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (lo, hi) = POLL_MS_RANGE;
        if !(lo..=hi).contains(&self.poll_ms) {
            return Err(("poll_ms", format!("must be between {lo} and {hi}")));
        }
        let (lo, hi) = GRACE_SECONDS_RANGE;
        if !(lo..=hi).contains(&self.grace_seconds) {
            return Err(("grace_seconds", format!("must be between {lo} and {hi}")));
        }
        Ok(())
    }
}

/// Why a page was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// Sequence numbers not after the cursor or not increasing, a cursor moving back, an
    /// empty or oversized id.
    BadPage,
    /// More than `MAX_REVOKED` entries.
    Full,
}

impl FeedError {
    pub fn reason(self) -> &'static str {
        match self {
            FeedError::BadPage => "revocation-feed-bad-page",
            FeedError::Full => "revocation-feed-full",
        }
    }
}

/// What is revoked, until when. Look-ups borrow `&str`: no allocation per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSet {
    cursor: i64,
    /// Grant id → `expires_at`.
    grants: HashMap<String, i64>,
    /// Session id → `expires_at`.
    sessions: HashMap<String, i64>,
    /// `sub` → (latest `at`, `expires_at`).
    users: HashMap<String, (i64, i64)>,
}

impl RevokedSet {
    /// The feed's cursor: the last `seq` applied.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    pub fn len(&self) -> usize {
        self.grants.len() + self.sessions.len() + self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a page whole or not at all; entries already expired are skipped. Returns
    /// whether the set or the cursor changed.
    pub fn apply(&mut self, page: &RevocationPage, now: i64) -> Result<bool, FeedError> {
        if page.cursor < self.cursor {
            return Err(FeedError::BadPage);
        }
        let mut last = self.cursor;
        for e in &page.entries {
            if e.seq <= last || e.id.is_empty() || e.id.len() > MAX_ID_BYTES {
                return Err(FeedError::BadPage);
            }
            last = e.seq;
        }
        if last > page.cursor {
            return Err(FeedError::BadPage);
        }
        if self.len().saturating_add(page.entries.len()) > MAX_REVOKED {
            return Err(FeedError::Full);
        }
        let mut changed = page.cursor != self.cursor;
        self.cursor = page.cursor;
        for e in page.entries.iter().filter(|e| e.expires_at >= now) {
            changed = true;
            self.insert(e.kind, &e.id, e.at, e.expires_at);
        }
        Ok(changed)
    }

    fn insert(&mut self, kind: RevokedKind, id: &str, at: i64, expires_at: i64) {
        match kind {
            RevokedKind::Grant => {
                let until = self.grants.entry(id.to_owned()).or_insert(expires_at);
                *until = (*until).max(expires_at);
            }
            RevokedKind::Session => {
                let until = self.sessions.entry(id.to_owned()).or_insert(expires_at);
                *until = (*until).max(expires_at);
            }
            RevokedKind::User => {
                let (latest, until) = self.users.entry(id.to_owned()).or_insert((at, expires_at));
                *latest = (*latest).max(at);
                *until = (*until).max(expires_at);
            }
        }
    }

    /// Drops the entries past their `expires_at`: no TE they cover is valid any more (a TE
    /// is still valid in the second of `exp` + leeway, so is the entry). Returns whether any
    /// went.
    pub fn expire(&mut self, now: i64) -> bool {
        let before = self.len();
        self.grants.retain(|_, until| *until >= now);
        self.sessions.retain(|_, until| *until >= now);
        self.users.retain(|_, (_, until)| *until >= now);
        self.len() != before
    }

    /// Whether the TE's grant, session, or user (for a TE issued at or before the user's
    /// revocation) is revoked. Empty claims never match (app TEs have no grant).
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        let c = &identity.claims;
        (!c.gid.is_empty() && self.grants.contains_key(c.gid.as_str()))
            || (!c.sid.is_empty() && self.sessions.contains_key(c.sid.as_str()))
            || self
                .users
                .get(c.sub.as_str())
                .is_some_and(|(at, _)| identity.issued_at.is_none_or(|iat| iat <= *at))
    }

    /// The set as shared data holds it: `MWR1`, the cursor, the count, then per entry its
    /// kind, `at`, `expires_at`, the id's length and the id (integers big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let ids: usize = self
            .grants
            .keys()
            .chain(self.sessions.keys())
            .map(String::len)
            .sum::<usize>()
            + self.users.keys().map(String::len).sum::<usize>();
        let mut out = Vec::with_capacity(16 + self.len() * 19 + ids);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.cursor.to_be_bytes());
        out.extend_from_slice(&u32::try_from(self.len()).unwrap_or(u32::MAX).to_be_bytes());
        let mut put = |kind: u8, id: &str, at: i64, until: i64| {
            out.push(kind);
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(&until.to_be_bytes());
            // Ids are at most MAX_ID_BYTES (checked in `apply`).
            out.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        };
        for (id, until) in &self.grants {
            put(0, id, 0, *until);
        }
        for (id, until) in &self.sessions {
            put(1, id, 0, *until);
        }
        for (id, (at, until)) in &self.users {
            put(2, id, *at, *until);
        }
        out
    }

    /// Reads what `encode` wrote; `None` for anything else (never trusted blindly: shared
    /// data is another worker's writing).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let cursor = r.i64()?;
        let count = usize::try_from(r.u32()?).ok()?;
        if count > MAX_REVOKED {
            return None;
        }
        let mut set = RevokedSet {
            cursor,
            ..RevokedSet::default()
        };
        for _ in 0..count {
            let kind = match r.take(1)?.first()? {
                0 => RevokedKind::Grant,
                1 => RevokedKind::Session,
                2 => RevokedKind::User,
                _ => return None,
            };
            let at = r.i64()?;
            let until = r.i64()?;
            let len = usize::from(u16::from_be_bytes(r.take(2)?.try_into().ok()?));
            if len == 0 || len > MAX_ID_BYTES {
                return None;
            }
            let id = std::str::from_utf8(r.take(len)?).ok()?;
            set.insert(kind, id, at, until);
        }
        r.0.is_empty().then_some(set)
    }
}

const MAGIC: &[u8; 4] = b"MWR1";

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The feed's small shared record, read by every worker at every tick: who polls (a lease,
/// so one root context per Envoy polls and another takes over when it stops renewing), when
/// a poll last succeeded, and the generation of the set (workers read the set only when it
/// changed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedState {
    /// The polling worker's random id.
    pub poller: u64,
    /// Until when, Unix milliseconds, the poller holds the lease.
    pub lease_until_ms: i64,
    /// Unix seconds of the last good poll (0: none yet).
    pub last_success: i64,
    /// Bumped each time the poller writes a changed set.
    pub generation: u64,
}

impl FeedState {
    pub const BYTES: usize = 32;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.poller.to_be_bytes());
        out[8..16].copy_from_slice(&self.lease_until_ms.to_be_bytes());
        out[16..24].copy_from_slice(&self.last_success.to_be_bytes());
        out[24..].copy_from_slice(&self.generation.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        let mut r = Reader(bytes);
        Some(FeedState {
            poller: r.u64()?,
            lease_until_ms: r.i64()?,
            last_success: r.i64()?,
            generation: r.u64()?,
        })
    }

    /// Whether worker `me` may poll now: the lease is free, lapsed, or its own.
    pub fn may_poll(state: Option<&FeedState>, me: u64, now_ms: i64) -> bool {
        state.is_none_or(|s| s.poller == me || s.lease_until_ms <= now_ms)
    }

    /// The record with `me` holding the lease for `lease_ms` from `now_ms`.
    pub fn leased(state: Option<&FeedState>, me: u64, now_ms: i64, lease_ms: i64) -> FeedState {
        FeedState {
            poller: me,
            lease_until_ms: now_ms.saturating_add(lease_ms),
            ..state.copied().unwrap_or_default()
        }
    }
}

/// How long a lease lasts: a few polls, so a poller that stalls is replaced within seconds
/// while one that ticks on time never loses it.
pub fn lease_ms(rules: &FeedRules) -> i64 {
    (i64::from(rules.poll_ms) * 3).max(3_000)
}

/// The feed's health as a worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedHealth {
    /// A poll succeeded within `grace_seconds`.
    Fresh,
    /// No good poll yet, within `grace_seconds` of the worker's start: served.
    Starting,
    /// No good poll for `grace_seconds` (or since start, past them).
    Stale,
}

/// What the revocation check says of a TE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedVerdict {
    Pass,
    /// The TE's grant, session or user is revoked: `401 invalid_token`.
    Revoked,
    /// The feed is stale and fails closed: `503`.
    Stale,
}

/// A worker's copy of the feed: the set, the last good poll, the rules.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    pub set: RevokedSet,
    /// Unix seconds of the last good poll, from `FeedState` (`None`: none yet).
    pub last_success: Option<i64>,
    /// When the worker started (the grace before a first good poll runs from here).
    pub started_at: i64,
    pub rules: FeedRules,
    /// Off (no token service to poll): every check passes.
    pub enabled: bool,
}

impl Revocations {
    pub fn new(rules: FeedRules, enabled: bool, started_at: i64) -> Self {
        Revocations {
            rules,
            enabled,
            started_at,
            ..Revocations::default()
        }
    }

    pub fn health(&self, now: i64) -> FeedHealth {
        let grace = i64::from(self.rules.grace_seconds);
        match self.last_success {
            Some(at) if now - at <= grace => FeedHealth::Fresh,
            None if now - self.started_at <= grace => FeedHealth::Starting,
            _ => FeedHealth::Stale,
        }
    }

    /// The per-request check: hash look-ups and a comparison, no allocation.
    pub fn check(&self, identity: &Identity, now: i64) -> FeedVerdict {
        if !self.enabled {
            return FeedVerdict::Pass;
        }
        if self.set.is_revoked(identity) {
            return FeedVerdict::Revoked;
        }
        if !self.rules.fail_open && self.health(now) == FeedHealth::Stale {
            return FeedVerdict::Stale;
        }
        FeedVerdict::Pass
    }
}

/// The `503` for a TE while the feed is stale and fails closed: a JSON-RPC error (MCP clients
/// show its message) that names the cause.
pub fn stale_reply(cors: Option<&str>) -> LocalReply {
    LocalReply::json(
        503,
        "revocation-feed-stale",
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {
                "code": crate::reply::GATEWAY_ERROR,
                "message": "mcp-warden cannot tell whether this token was revoked: the token service's revocation feed has not answered lately",
            },
        })
        .to_string(),
    )
    .with_header("retry-after", "5")
    .with_cors(cors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_api::RevocationEntry;
    use crate::token::{Audience, TeClaims};

    fn te(gid: &str, sid: &str, sub: &str, iat: Option<i64>) -> Identity {
        Identity {
            claims: TeClaims {
                iss: "i".into(),
                sub: sub.into(),
                aud: Audience::One("a".into()),
                jti: String::new(),
                client_id: String::new(),
                scope: String::new(),
                sid: sid.into(),
                gid: gid.into(),
                email: String::new(),
                name: String::new(),
                groups: vec![],
                sub_kind: Default::default(),
            },
            expires_at: 2_000,
            issued_at: iat,
        }
    }

    fn entry(seq: i64, kind: RevokedKind, id: &str, at: i64, expires_at: i64) -> RevocationEntry {
        RevocationEntry {
            seq,
            kind,
            id: id.into(),
            at,
            expires_at,
        }
    }

    fn page(cursor: i64, entries: Vec<RevocationEntry>) -> RevocationPage {
        RevocationPage {
            cursor,
            entries,
            more: false,
        }
    }

    fn sample() -> RevokedSet {
        let mut set = RevokedSet::default();
        set.apply(
            &page(
                3,
                vec![
                    entry(1, RevokedKind::Grant, "g1", 1_000, 1_330),
                    entry(2, RevokedKind::Session, "s1", 1_000, 1_400),
                    entry(3, RevokedKind::User, "alice", 1_100, 1_430),
                ],
            ),
            1_000,
        )
        .unwrap();
        set
    }

    #[test]
    fn a_revoked_grant_or_session_refuses_every_te_that_names_it() {
        let set = sample();
        assert!(set.is_revoked(&te("g1", "other", "bob", Some(900))));
        assert!(set.is_revoked(&te("g2", "s1", "bob", Some(900))));
        assert!(!set.is_revoked(&te("g2", "s2", "bob", Some(900))));
        // Empty claims (an app TE has no grant) never match anything.
        assert!(!set.is_revoked(&te("", "", "bob", None)));
        assert_eq!(set.cursor(), 3);
    }

    #[test]
    fn a_revoked_user_may_sign_in_again_afterwards() {
        let set = sample();
        assert!(set.is_revoked(&te("g", "s", "alice", Some(1_050))));
        assert!(
            set.is_revoked(&te("g", "s", "alice", Some(1_100))),
            "same second"
        );
        assert!(!set.is_revoked(&te("g", "s", "alice", Some(1_101))));
        assert!(
            set.is_revoked(&te("g", "s", "alice", None)),
            "no iat: covered"
        );
    }

    #[test]
    fn entries_are_dropped_once_every_te_they_cover_has_expired() {
        let mut set = sample();
        assert!(!set.expire(1_330));
        assert_eq!(set.len(), 3);
        assert!(set.expire(1_331));
        assert!(!set.is_revoked(&te("g1", "x", "bob", None)));
        assert!(set.is_revoked(&te("g", "s1", "bob", None)));
        set.expire(10_000);
        assert!(set.is_empty());
        // Entries already expired when they arrive are skipped, but the cursor moves.
        assert_eq!(
            set.apply(
                &page(4, vec![entry(4, RevokedKind::Grant, "old", 1, 5)]),
                1_000
            ),
            Ok(true)
        );
        assert!(set.is_empty());
        assert_eq!(set.cursor(), 4);
    }

    #[test]
    fn the_cursor_only_moves_forward_and_bad_pages_change_nothing() {
        let mut set = sample();
        let before = set.clone();
        for bad in [
            page(2, vec![]),
            page(5, vec![entry(3, RevokedKind::Grant, "x", 1_000, 1_500)]),
            page(
                6,
                vec![
                    entry(5, RevokedKind::Grant, "x", 1_000, 1_500),
                    entry(4, RevokedKind::Grant, "y", 1_000, 1_500),
                ],
            ),
            page(4, vec![entry(5, RevokedKind::Grant, "x", 1_000, 1_500)]),
            page(4, vec![entry(4, RevokedKind::Grant, "", 1_000, 1_500)]),
            page(
                4,
                vec![entry(
                    4,
                    RevokedKind::Grant,
                    &"x".repeat(MAX_ID_BYTES + 1),
                    1_000,
                    1_500,
                )],
            ),
        ] {
            assert_eq!(set.apply(&bad, 1_000), Err(FeedError::BadPage), "{bad:?}");
            assert_eq!(set, before);
        }
        assert_eq!(set.apply(&page(3, vec![]), 1_000), Ok(false));
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_anything_else() {
        let set = sample();
        let bytes = set.encode();
        assert_eq!(RevokedSet::decode(&bytes), Some(set.clone()));
        assert_eq!(
            RevokedSet::decode(&RevokedSet::default().encode()),
            Some(RevokedSet::default())
        );
        for cut in 0..bytes.len() {
            assert_eq!(RevokedSet::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(RevokedSet::decode(&longer), None);
        let mut bad_kind = bytes.clone();
        bad_kind[16] = 9;
        assert_eq!(RevokedSet::decode(&bad_kind), None);

        let state = FeedState {
            poller: 7,
            lease_until_ms: 1_000_500,
            last_success: 1_000,
            generation: 3,
        };
        assert_eq!(FeedState::decode(&state.encode()), Some(state));
        assert_eq!(FeedState::decode(&state.encode()[..31]), None);
    }

    #[test]
    fn one_poller_holds_the_lease_until_it_lapses() {
        assert!(FeedState::may_poll(None, 1, 0));
        let held = FeedState::leased(None, 1, 10_000, 3_000);
        assert!(FeedState::may_poll(Some(&held), 1, 11_000));
        assert!(!FeedState::may_poll(Some(&held), 2, 12_999));
        assert!(FeedState::may_poll(Some(&held), 2, 13_000));
        let taken = FeedState::leased(
            Some(&FeedState {
                last_success: 9,
                generation: 4,
                ..held
            }),
            2,
            13_000,
            3_000,
        );
        assert_eq!(
            (taken.poller, taken.last_success, taken.generation),
            (2, 9, 4)
        );
    }

    #[test]
    fn a_stale_feed_fails_closed_unless_fail_open() {
        let rules = FeedRules {
            grace_seconds: 30,
            ..FeedRules::default()
        };
        let mut feed = Revocations::new(rules, true, 1_000);
        let bob = te("g", "s", "bob", Some(900));
        // Before a first poll: served within the grace, refused after it.
        assert_eq!(feed.health(1_030), FeedHealth::Starting);
        assert_eq!(feed.check(&bob, 1_030), FeedVerdict::Pass);
        assert_eq!(feed.check(&bob, 1_031), FeedVerdict::Stale);
        feed.last_success = Some(1_040);
        assert_eq!(feed.check(&bob, 1_070), FeedVerdict::Pass);
        assert_eq!(feed.health(1_071), FeedHealth::Stale);
        assert_eq!(feed.check(&bob, 1_071), FeedVerdict::Stale);
        // The next good poll recovers by itself.
        feed.last_success = Some(1_075);
        assert_eq!(feed.check(&bob, 1_076), FeedVerdict::Pass);

        let mut open = Revocations::new(
            FeedRules {
                fail_open: true,
                ..rules
            },
            true,
            1_000,
        );
        assert_eq!(open.check(&bob, 5_000), FeedVerdict::Pass);
        // Known revocations are refused whatever the feed's health.
        open.set = sample();
        assert_eq!(
            open.check(&te("g1", "s", "bob", None), 5_000),
            FeedVerdict::Revoked
        );

        let off = Revocations::new(rules, false, 1_000);
        assert_eq!(off.check(&bob, 5_000), FeedVerdict::Pass);
    }

    #[test]
    fn rules_out_of_bounds_name_their_field() {
        assert_eq!(FeedRules::default().validate(), Ok(()));
        let bad = |r: FeedRules| r.validate().err().map(|(field, _)| field);
        assert_eq!(
            bad(FeedRules {
                poll_ms: 0,
                ..FeedRules::default()
            }),
            Some("poll_ms")
        );
        assert_eq!(
            bad(FeedRules {
                poll_ms: 60_000,
                ..FeedRules::default()
            }),
            Some("poll_ms")
        );
        assert_eq!(
            bad(FeedRules {
                grace_seconds: 0,
                ..FeedRules::default()
            }),
            Some("grace_seconds")
        );
        let reply = stale_reply(None);
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("revocation feed"));
    }
}

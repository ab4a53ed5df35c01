//! A rate limit per client address: a token bucket per address. `RateLimiter` keeps the
//! buckets in memory, per process, as a first line that costs the database nothing; the
//! store keeps the same buckets shared by every replica (`store::RateLimits`), with `take`
//! the arithmetic both use. Used for registrations and new sign-ins, which anyone may
//! attempt and which each leave a record behind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Addresses tracked at once, at most. Buckets that have refilled are forgotten first; if
/// every tracked address is still busy, new ones are refused (fail closed) rather than
/// letting the table grow.
const MAX_TRACKED: usize = 65_536;

/// Whose requests share a bucket. An IPv6 host usually holds a whole /64, so that is one
/// client; an IPv4-mapped address is its IPv4 address. Requests whose peer address is
/// unknown (no socket, as in tests driving the router directly) share one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Unknown,
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl ClientKey {
    pub fn of(addr: Option<IpAddr>) -> Self {
        match addr.map(|a| a.to_canonical()) {
            None => ClientKey::Unknown,
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4),
            Some(IpAddr::V6(v6)) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for ClientKey {
    /// The bucket's name in the shared store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Unknown => f.write_str("unknown"),
            ClientKey::V4(a) => write!(f, "v4:{a}"),
            ClientKey::V6Prefix(p) => write!(f, "v6:{p:016x}"),
        }
    }
}

/// Takes one request at `now` from a bucket that held `tokens` at `at` (`None`: a client
/// not seen lately, whose bucket is full), at `per_minute`. Returns the bucket to keep, and
/// `Err(seconds until one is available)` when there was none to take.
pub fn take(
    bucket: Option<(i64, i64)>,
    per_minute: u32,
    now: i64,
) -> ((i64, i64), Result<(), u64>) {
    let rate = i64::from(per_minute.max(1));
    let capacity = rate * COST;
    let (tokens, at) = bucket.unwrap_or((capacity, now));
    let elapsed = now.saturating_sub(at).max(0);
    let tokens = tokens
        .saturating_add(elapsed.saturating_mul(rate))
        .min(capacity);
    let at = now.max(at);
    if tokens >= COST {
        ((tokens - COST, at), Ok(()))
    } else {
        let missing = COST - tokens;
        (
            (tokens, at),
            Err(u64::try_from((missing + rate - 1) / rate).unwrap_or(60)),
        )
    }
}

/// Tokens are counted in request-seconds per minute (one request is `COST`), so refilling
/// `per_minute` of them every second is exact integer arithmetic.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: i64,
    at: i64,
}

const COST: i64 = 60;

/// `per_minute` requests per client, as a burst of that many refilling evenly over a minute.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at `now` (seconds), or says how many
    /// seconds until one is available.
    pub fn check(&self, client: ClientKey, now: i64) -> Result<(), u64> {
        let rate = i64::from(self.per_minute);
        let capacity = rate * COST;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Err(60);
        };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            // Full buckets carry no information: forget them.
            buckets.retain(|_, b| b.tokens + (now - b.at).max(0) * rate < capacity);
            if buckets.len() >= MAX_TRACKED {
                return Err(60);
            }
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let ((tokens, at), taken) = take(Some((b.tokens, b.at)), self.per_minute, now);
        *b = Bucket { tokens, at };
        taken
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> ClientKey {
        ClientKey::of(s.parse().ok())
    }

    #[test]
    fn a_burst_is_cut_at_the_limit_and_refills_over_the_minute() {
        let l = RateLimiter::new(10);
        let a = v4("192.0.2.1");
        for _ in 0..10 {
            assert_eq!(l.check(a, 0), Ok(()));
        }
        assert_eq!(l.check(a, 0), Err(6));
        // Another address has its own bucket.
        assert_eq!(l.check(v4("192.0.2.2"), 0), Ok(()));
        // One request back every 6 s.
        assert_eq!(l.check(a, 5), Err(1));
        assert_eq!(l.check(a, 6), Ok(()));
        assert!(l.check(a, 6).is_err());
        for _ in 0..10 {
            assert_eq!(l.check(a, 66), Ok(()));
        }
        assert!(l.check(a, 66).is_err());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        assert_eq!(v4("2001:db8::1"), v4("2001:db8::ffff:1"));
        assert_ne!(v4("2001:db8::1"), v4("2001:db8:0:1::1"));
        assert_eq!(v4("::ffff:192.0.2.1"), v4("192.0.2.1"));
        assert_eq!(ClientKey::of(None), ClientKey::Unknown);
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let l = RateLimiter::new(1);
        for i in 0..MAX_TRACKED as u32 {
            let ip = std::net::Ipv4Addr::from(i);
            assert_eq!(l.check(ClientKey::V4(ip), 0), Ok(()));
        }
        // Every tracked address is still busy: a new one is refused, not added.
        let new = ClientKey::V4(std::net::Ipv4Addr::from(u32::MAX));
        assert!(l.check(new, 1).is_err());
        // Once buckets refill they are forgotten, and there is room again.
        assert_eq!(l.check(new, 61), Ok(()));
    }
}

//! A bound on the work bad tokens can cause. A token that passes every cheap check (a real
//! `kid`, the right `iss`, `aud` and times) but carries a bad signature costs a full signature
//! check (about a millisecond inside V8) every time it is sent; a few hundred such requests a
//! second would fill a worker. So each worker allows only so many failed signature checks per
//! second, and each client address at most a fair share of them. Past either, a token that is
//! not already verified is refused without a check; tokens in the verified-token cache are
//! never affected, since they need no check.

use std::collections::HashMap;
use std::net::IpAddr;

/// Client addresses tracked per second, at most; beyond, they share one share.
const MAX_CLIENTS: usize = 4096;

/// Who a failure is charged to: an IPv4 address, an IPv6 /64 (one host usually holds a whole
/// one), or, for an address the host could not tell, one shared key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Unknown,
    V4(u32),
    V6Prefix(u64),
}

impl Client {
    /// From Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`, or without a port).
    pub fn from_address(address: Option<&[u8]>) -> Self {
        let Some(text) = address.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Client::Unknown;
        };
        let host = match text.strip_prefix('[') {
            // `[v6]:port`
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            // `v4:port`; a bare v6 address has more than one ':'.
            None if text.matches(':').count() == 1 => text.split(':').next().unwrap_or_default(),
            None => text,
        };
        match host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(v4)) => Client::V4(u32::from(v4)),
            Ok(IpAddr::V6(v6)) => Client::V6Prefix((u128::from(v6) >> 64) as u64),
            Err(_) => Client::Unknown,
        }
    }
}

/// The per-worker budget of failed signature checks.
#[derive(Debug)]
pub struct SignatureBudget {
    per_second: u32,
    per_client: u32,
    second: i64,
    spent: u32,
    by_client: HashMap<Client, u32>,
    /// Totals since start, for the filter's counters.
    pub checks: u64,
    pub failures: u64,
    pub refused: u64,
}

impl SignatureBudget {
    /// `per_second` failed checks per worker (at least one), each client address at most a
    /// quarter of them (at least one).
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self {
            per_second,
            per_client: (per_second / 4).max(1),
            second: i64::MIN,
            spent: 0,
            by_client: HashMap::new(),
            checks: 0,
            failures: 0,
            refused: 0,
        }
    }

    /// The share one client address may spend per second.
    pub fn per_client(&self) -> u32 {
        self.per_client
    }

    /// Only forward: a request judged against the worker's clock of the last tick may come
    /// after one that read the clock, a second later; it belongs to the newer second.
    fn roll(&mut self, now: i64) {
        if now > self.second {
            self.second = now;
            self.spent = 0;
            self.by_client.clear();
        }
    }

    /// Whether a signature check may run for `client` now; counts the refusal when not.
    pub fn may_check(&mut self, client: Client, now: i64) -> bool {
        self.roll(now);
        let mine = self.by_client.get(&client).copied().unwrap_or(0);
        let allowed = self.spent < self.per_second && mine < self.per_client;
        if allowed {
            self.checks += 1;
        } else {
            self.refused += 1;
        }
        allowed
    }

    /// A check for `client` found a bad signature.
    pub fn failed(&mut self, client: Client, now: i64) {
        self.roll(now);
        self.failures += 1;
        self.spent = self.spent.saturating_add(1);
        let key = if self.by_client.len() < MAX_CLIENTS || self.by_client.contains_key(&client) {
            client
        } else {
            Client::Unknown
        };
        let n = self.by_client.entry(key).or_insert(0);
        *n = n.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str) -> Client {
        Client::from_address(Some(a.as_bytes()))
    }

    #[test]
    fn addresses_are_read_with_or_without_a_port() {
        assert_eq!(addr("192.0.2.1:5678"), addr("192.0.2.1"));
        assert_eq!(addr("[2001:db8::1]:443"), addr("2001:db8::2"));
        assert_eq!(addr("2001:db8::1"), addr("[2001:db8::ffff]"));
        assert_ne!(addr("2001:db8::1"), addr("2001:db8:0:1::1"));
        assert_eq!(addr("[::ffff:192.0.2.1]:1"), addr("192.0.2.1:2"));
        assert_eq!(addr("garbage"), Client::Unknown);
        assert_eq!(Client::from_address(None), Client::Unknown);
    }

    #[test]
    fn one_address_gets_its_share_and_the_others_the_rest() {
        let mut b = SignatureBudget::new(8);
        let flood = addr("192.0.2.66:1");
        let mut checked = 0;
        for _ in 0..100 {
            if b.may_check(flood, 10) {
                checked += 1;
                b.failed(flood, 10);
            }
        }
        assert_eq!(checked, 2, "a quarter of 8");
        // Other clients still get checks this second.
        for i in 0..3 {
            let other = addr(&format!("192.0.2.{i}:1"));
            assert!(b.may_check(other, 10));
            b.failed(other, 10);
            assert!(b.may_check(other, 10));
            b.failed(other, 10);
        }
        // The worker's budget is spent: nobody gets a check until the next second.
        assert!(!b.may_check(addr("198.51.100.1:1"), 10));
        assert!(b.may_check(addr("198.51.100.1:1"), 11));
        assert!(b.may_check(flood, 11));
        assert_eq!((b.failures, b.refused), (8, 99));
    }

    #[test]
    fn successful_checks_cost_nothing() {
        let mut b = SignatureBudget::new(4);
        let c = addr("192.0.2.1");
        for _ in 0..1000 {
            assert!(b.may_check(c, 5));
        }
        assert_eq!(b.checks, 1000);
        let least = SignatureBudget::new(0);
        assert_eq!(least.per_client(), 1);
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let mut b = SignatureBudget::new(u32::MAX);
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            b.failed(Client::V4(i), 1);
        }
        assert!(b.by_client.len() <= MAX_CLIENTS + 1);
    }
}

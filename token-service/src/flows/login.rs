//! The sign-in throttle: where an attempt is counted, and whether it may run.
//!
//! Every attempt is reserved before its password is checked, in a bucket of at most
//! `MAX_FAILURES` failures and attempts in flight per `FAILURE_WINDOW`. A browser that signed
//! in to an account before carries a device cookie for it (OWASP, "Slow Down Online Guessing
//! Attacks with Device Cookies") and is counted in that cookie's own bucket; every other
//! attempt for the account shares the account's bucket for untrusted clients. So a stranger
//! can lock the account for untrusted browsers, but not for its owner's browser.

use super::{hash_secret, random_token};
use crate::store::Store;

/// Failures (plus attempts in flight) per bucket within `FAILURE_WINDOW`.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: i64 = 15 * 60;
/// A device cookie stays valid this long after the sign-in that issued it.
pub const DEVICE_TTL: i64 = 365 * 86_400;

/// The key failed sign-ins are counted under: the normalised email, whether or not such a
/// user exists (unknown emails are throttled exactly like known ones).
pub fn account_key(email: &str) -> String {
    email
        .trim()
        .to_ascii_lowercase()
        .chars()
        .take(320)
        .collect()
}

/// Where one sign-in attempt is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub account: String,
    /// Digest of the browser's device cookie when it was issued for this account.
    pub device: Option<String>,
}

impl Throttle {
    /// A device cookie counts its own attempts; everyone else shares the account's bucket.
    pub fn bucket(&self) -> String {
        match &self.device {
            Some(d) => format!("device:{d}"),
            None => format!("account:{}", self.account),
        }
    }
}

/// Picks the bucket for an attempt to sign in as `email` from a browser carrying
/// `device_cookie`. A cookie issued for another account, expired or unknown, counts as none.
pub fn throttle_for(
    store: &dyn Store,
    email: &str,
    device_cookie: Option<&str>,
    now: i64,
) -> anyhow::Result<Throttle> {
    let account = account_key(email);
    let device = match device_cookie {
        Some(c) => {
            let digest = hash_secret(c);
            store
                .device_account(&digest, now)?
                .filter(|a| *a == account)
                .map(|_| digest)
        }
        None => None,
    };
    Ok(Throttle { account, device })
}

/// A reserved attempt; it must end in `failed`, `succeeded` or `abandoned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    id: i64,
    bucket: String,
}

/// Reserves an attempt, or `None` when its bucket is locked.
pub fn reserve(
    store: &dyn Store,
    throttle: &Throttle,
    now: i64,
) -> anyhow::Result<Option<Reservation>> {
    let bucket = throttle.bucket();
    Ok(store
        .reserve_login_attempt(&bucket, now - FAILURE_WINDOW, MAX_FAILURES, now)?
        .map(|id| Reservation { id, bucket }))
}

pub fn failed(store: &dyn Store, r: &Reservation, now: i64) -> anyhow::Result<()> {
    Ok(store.fail_login_attempt(r.id, now)?)
}

/// The password was right: the bucket's failures are forgotten.
pub fn succeeded(store: &dyn Store, r: &Reservation) -> anyhow::Result<()> {
    Ok(store.end_login_attempt(r.id, &r.bucket, true)?)
}

/// The attempt never reached a verdict (e.g. the service was too busy to check it).
pub fn abandoned(store: &dyn Store, r: &Reservation) -> anyhow::Result<()> {
    Ok(store.end_login_attempt(r.id, &r.bucket, false)?)
}

/// After a successful sign-in: a new device cookie for this browser and account (returned
/// as the cookie's value). The one it presented, if valid, is replaced, so a cookie lives
/// from one successful sign-in to the next.
pub fn remember_device(
    store: &dyn Store,
    throttle: &Throttle,
    presented: Option<&str>,
    now: i64,
) -> anyhow::Result<String> {
    if let Some(old) = presented {
        store.delete_device(&hash_secret(old))?;
    }
    let secret = random_token();
    store.insert_device(&hash_secret(&secret), &throttle.account, now + DEVICE_TTL)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn device_cookie_counts_only_for_the_account_it_was_issued_for() {
        let store = SqliteStore::in_memory().unwrap();
        let t = throttle_for(&store, " Alice@Example.com", None, 0).unwrap();
        assert_eq!(t.bucket(), "account:alice@example.com");
        let secret = remember_device(&store, &t, None, 0).unwrap();
        let trusted = throttle_for(&store, "alice@example.com", Some(&secret), 1).unwrap();
        assert!(trusted.bucket().starts_with("device:"));
        let other = throttle_for(&store, "bob@example.com", Some(&secret), 1).unwrap();
        assert_eq!(other.bucket(), "account:bob@example.com");
        let unknown = throttle_for(&store, "alice@example.com", Some("forged"), 1).unwrap();
        assert_eq!(unknown.bucket(), "account:alice@example.com");
        let expired = throttle_for(&store, "alice@example.com", Some(&secret), DEVICE_TTL).unwrap();
        assert_eq!(expired.bucket(), "account:alice@example.com");
    }

    #[test]
    fn in_flight_attempts_count_until_they_end() {
        let store = SqliteStore::in_memory().unwrap();
        let t = throttle_for(&store, "a@example.com", None, 0).unwrap();
        let held: Vec<_> = (0..MAX_FAILURES)
            .map(|_| reserve(&store, &t, 0).unwrap().unwrap())
            .collect();
        assert!(reserve(&store, &t, 0).unwrap().is_none());
        abandoned(&store, &held[0]).unwrap();
        let again = reserve(&store, &t, 0).unwrap().unwrap();
        failed(&store, &again, 1).unwrap();
        assert!(reserve(&store, &t, 1).unwrap().is_none());
        // A success forgets the failures, not the attempts still in flight.
        succeeded(&store, &held[1]).unwrap();
        assert!(reserve(&store, &t, 2).unwrap().is_some());
        assert!(reserve(&store, &t, 2).unwrap().is_some());
        assert!(reserve(&store, &t, 2).unwrap().is_none());
        // Everything ages out with the window.
        assert!(reserve(&store, &t, 2 + FAILURE_WINDOW + 1)
            .unwrap()
            .is_some());
    }
}

//! Per-worker cache of verified tokens, so a signature is checked once per token per worker
//! (a verify costs ~1.7 ms for ES256 inside V8).
//!
//! Entries hold the token itself, as Envoy's `jwt_authn` cache does, and are found by the last
//! bytes of its signature: a hit costs one comparison of the whole token. (A SHA-256 of the
//! token, the key before, cost a few microseconds inside V8 on every request; a SipHash of
//! the whole token, a microsecond.) Only tokens that passed verification are ever stored, so
//! a token crafted to share a slot with a cached one is a miss that evicts nothing.

use std::collections::HashMap;
use std::rc::Rc;

use crate::token::Identity;

/// Longer tokens are verified every time rather than cached, so the cache's memory stays
/// bounded (`capacity` × this); the token service's tokens are well under 2 KiB.
pub const MAX_CACHED_TOKEN_BYTES: usize = 8 * 1024;

/// Bounded map from token to the identity it proved.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<u64, (Box<str>, Rc<Identity>)>,
    capacity: usize,
    leeway_seconds: i64,
}

impl TokenCache {
    pub fn new(capacity: usize, leeway_seconds: i64) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            leeway_seconds,
        }
    }

    /// The cached identity if it is still within its lifetime.
    pub fn get(&mut self, token: &str, now: i64) -> Option<Rc<Identity>> {
        self.get_bytes(token.as_bytes(), now)
    }

    /// `get` for bytes not yet read as a token: a hit is the very token verified before.
    pub fn get_bytes(&mut self, token: &[u8], now: i64) -> Option<Rc<Identity>> {
        let slot = slot(token);
        let (cached, identity) = self.entries.get(&slot)?;
        if cached.as_bytes() != token {
            return None;
        }
        if now > identity.expires_at + self.leeway_seconds {
            self.entries.remove(&slot);
            return None;
        }
        Some(Rc::clone(identity))
    }

    pub fn insert(&mut self, token: &str, identity: Identity, now: i64) -> Rc<Identity> {
        let identity = Rc::new(identity);
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return identity;
        }
        if self.entries.len() >= self.capacity {
            let leeway = self.leeway_seconds;
            self.entries
                .retain(|_, (_, id)| now <= id.expires_at + leeway);
            // Still full of live tokens: start over rather than grow; a miss only costs a verify.
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries
            .insert(slot(token.as_bytes()), (token.into(), Rc::clone(&identity)));
        identity
    }

    /// Drops everything, e.g. when the key set changes and a key may have been withdrawn.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a token is kept: its last 16 bytes, the end of its signature (random for every token
/// the token service signs), read as a number.
fn slot(bytes: &[u8]) -> u64 {
    let tail = &bytes[bytes.len().saturating_sub(16)..];
    tail.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Before its expiry, a cached credential is renewed this long ahead at most (and a tenth of
/// its lifetime for short ones).
pub const REFRESH_MARGIN_SECONDS: i64 = 30;

/// Whether a TI obtained at `issued_at` and expiring at `expires_at` (unix seconds) is due for
/// renewal at `now`: from `expires_at - min(30, ⌈lifetime / 10⌉)` on. Without an expiry, never.
/// The filter stops using a cached TI at that point and the token service refreshes it then.
/// The tenth is rounded up: rounded down, a token living under 10 s had no margin and was
/// never due before it expired.
pub fn refresh_due(issued_at: i64, expires_at: Option<i64>, now: i64) -> bool {
    let Some(expires_at) = expires_at else {
        return false;
    };
    let lifetime = expires_at.saturating_sub(issued_at).max(0);
    let margin = REFRESH_MARGIN_SECONDS.min(lifetime.saturating_add(9) / 10);
    now >= expires_at.saturating_sub(margin)
}

/// A credential the filter caches per route and user, until it is due for renewal.
pub trait Renewable {
    /// Still good to send at `now`.
    fn usable(&self, now: i64) -> bool;
}

/// A per-worker cache of credentials by route and user (`sub`): TIs, identity assertions,
/// app TEs. Bounded: when full, entries due for renewal go first, then an arbitrary batch (a
/// miss only costs a look-up).
#[derive(Debug)]
pub struct RouteUserCache<T> {
    by_route: Vec<HashMap<Box<str>, Rc<T>>>,
    len: usize,
    capacity: usize,
}

impl<T: Renewable> RouteUserCache<T> {
    pub fn new(capacity: usize, routes: usize) -> Self {
        Self {
            by_route: (0..routes).map(|_| HashMap::new()).collect(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// The cached entry when it is still usable; one that is not is forgotten.
    pub fn get(&mut self, route: usize, sub: &str, now: i64) -> Option<Rc<T>> {
        let map = self.by_route.get_mut(route)?;
        let entry = map.get(sub)?;
        if entry.usable(now) {
            return Some(Rc::clone(entry));
        }
        map.remove(sub);
        self.len -= 1;
        None
    }

    /// Keeps an entry (only a usable one: the next request would not use it anyway).
    pub fn put(&mut self, route: usize, sub: &str, entry: Rc<T>, now: i64) {
        if !entry.usable(now) || route >= self.by_route.len() {
            return;
        }
        if self.len >= self.capacity {
            for map in &mut self.by_route {
                map.retain(|_, t| t.usable(now));
            }
            self.len = self.by_route.iter().map(HashMap::len).sum();
        }
        if self.len >= self.capacity {
            // Still full of usable entries: free an eighth at once, so the next misses do not
            // each scan the whole cache again (amortised constant work per insert).
            let mut evict = (self.capacity / 8).max(1);
            for map in &mut self.by_route {
                if evict == 0 {
                    break;
                }
                let victims: Vec<Box<str>> = map.keys().take(evict).cloned().collect();
                for key in victims {
                    map.remove(&key);
                    self.len -= 1;
                    evict -= 1;
                }
            }
        }
        if let Some(map) = self.by_route.get_mut(route) {
            if map.insert(sub.into(), entry).is_none() {
                self.len += 1;
            }
        }
    }

    /// Forgets the user's entry on the route when `stale` says it is the one to drop.
    pub fn remove_if(&mut self, route: usize, sub: &str, stale: impl Fn(&T) -> bool) -> bool {
        let Some(map) = self.by_route.get_mut(route) else {
            return false;
        };
        if map.get(sub).is_some_and(|t| stale(t)) {
            map.remove(sub);
            self.len -= 1;
            return true;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Audience, TeClaims};

    fn identity(exp: i64) -> Identity {
        Identity {
            claims: TeClaims {
                iss: "i".into(),
                sub: "s".into(),
                aud: Audience::One("a".into()),
                jti: String::new(),
                client_id: String::new(),
                scope: String::new(),
                sid: String::new(),
                gid: String::new(),
                email: String::new(),
                name: String::new(),
                groups: vec![],
                sub_kind: Default::default(),
            },
            expires_at: exp,
            issued_at: None,
        }
    }

    #[test]
    fn expires_and_stays_bounded() {
        let mut cache = TokenCache::new(2, 10);
        cache.insert("a", identity(100), 0);
        assert!(cache.get("a", 105).is_some());
        assert!(cache.get("a", 111).is_none());
        cache.insert("b", identity(100), 0);
        cache.insert("c", identity(100), 0);
        cache.insert("d", identity(100), 0);
        assert!(cache.len() <= 2);
        assert!(cache.get("d", 0).is_some());
    }

    #[test]
    fn a_hit_needs_the_whole_token() {
        let mut cache = TokenCache::new(10, 0);
        cache.insert("header.claims.signature", identity(100), 0);
        assert!(cache.get("header.claims.signature", 0).is_some());
        assert!(cache.get("header.claimz.signature", 0).is_none());
        assert!(cache.get("header.claims.signatur", 0).is_none());
    }

    #[test]
    fn a_token_sharing_a_slot_is_a_miss_and_evicts_nothing() {
        let mut cache = TokenCache::new(10, 0);
        cache.insert("aaaa.bbbb.same-signature-tail", identity(100), 0);
        assert!(cache.get("xxxx.yyyy.same-signature-tail", 0).is_none());
        assert!(cache.get("aaaa.bbbb.same-signature-tail", 0).is_some());
    }

    #[test]
    fn oversized_tokens_are_not_kept() {
        let mut cache = TokenCache::new(10, 0);
        let long = "x".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        cache.insert(&long, identity(100), 0);
        assert!(cache.is_empty());
    }
}

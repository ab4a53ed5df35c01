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
        let slot = slot(token);
        let (cached, identity) = self.entries.get(&slot)?;
        if **cached != *token {
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
            .insert(slot(token), (token.into(), Rc::clone(&identity)));
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
fn slot(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(16)..];
    tail.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
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
                email: String::new(),
                name: String::new(),
                groups: vec![],
            },
            expires_at: exp,
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

//! The replay guard of the internal listener: a leaf, so the shared state can hold it
//! without importing the listener's handlers.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;

/// Nonces of accepted internal calls, kept until their time has left the clock window, so a
/// call seen once (in a log, on the wire) is refused when it comes again.
pub struct NonceGuard {
    seen: Mutex<HashMap<String, i64>>,
}

/// Nonces remembered at most: far above what the filter sends (call-outs happen on cache
/// misses only); past it, calls are refused rather than remembered less.
const MAX_NONCES: usize = 200_000;

impl NonceGuard {
    pub fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records `nonce`; `Err` when it was seen within the window, or no room is left.
    pub fn first_use(&self, nonce: &str, now: i64) -> Result<(), &'static str> {
        let window = warden_core::internal_api::MAX_SKEW_SECONDS;
        let Ok(mut seen) = self.seen.lock() else {
            return Err("nonce table unavailable");
        };
        if seen.len() >= MAX_NONCES {
            // A call is accepted only within the window of its time, so a nonce older than
            // twice the window can never be accepted again.
            seen.retain(|_, at| now - *at <= 2 * window);
            if seen.len() >= MAX_NONCES {
                return Err("too many internal calls in the clock window");
            }
        }
        match seen.entry(nonce.to_owned()) {
            Entry::Occupied(_) => Err("the nonce was used before"),
            Entry::Vacant(v) => {
                v.insert(now);
                Ok(())
            }
        }
    }
}

impl Default for NonceGuard {
    fn default() -> Self {
        Self::new()
    }
}

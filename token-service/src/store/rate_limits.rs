//! Rate limits shared by every replica: a token bucket per limiter and client address.

use super::error::Result;

pub trait RateLimits {
    /// Takes one request from `client`'s bucket of `limiter` at `now`, at `per_minute`
    /// across every replica sharing the database (`crate::ratelimit::take`); `Err(seconds)`
    /// until one is available when the bucket is empty. Reading and writing the bucket is
    /// one transaction, so parallel requests cannot take the same token.
    fn take_rate_token(
        &self,
        limiter: &str,
        client: &str,
        per_minute: u32,
        now: i64,
    ) -> Result<std::result::Result<(), u64>>;
}

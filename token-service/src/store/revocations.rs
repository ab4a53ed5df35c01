//! The revocation feed the filters poll: grants, sessions and users whose TEs must be
//! refused until every TE they cover has expired. The revoking operations of the other
//! aggregates append their entries in their own transactions.

use super::error::Result;
use super::records::{RevocationEntry, RevokedKind};

pub trait Revocations {
    /// Appends an entry to the feed.
    fn record_revocation(
        &self,
        kind: RevokedKind,
        id: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<()>;

    /// At most `limit` feed entries after `after`, by `seq`, those with `expires_at > now`.
    /// Entries become visible in `seq` order: a poller that has read up to a `seq` never
    /// misses a smaller one committed later.
    fn revocations_after(&self, after: i64, limit: usize, now: i64)
        -> Result<Vec<RevocationEntry>>;

    /// How many entries have `expires_at > now`, and when the newest of them was made (its
    /// `at`): one aggregate over the expiry index, for `/metrics`.
    fn revocation_feed_summary(&self, now: i64) -> Result<(i64, Option<i64>)>;
}

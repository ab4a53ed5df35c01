//! The identity provider's users checked again at the provider (deprovisioning): which are due,
//! and the per-user lease that makes one replica at a time check (and refresh) a user.

use super::error::Result;
use super::records::IdpUserRecord;

pub trait IdpChecks {
    /// Leases to `holder`, until `until`, the user longest unchecked among those last checked
    /// at or before `due` who hold something live at `now` (a grant with a usable refresh
    /// token, a sign-in session or an app session) and whom no other lease holds; returns
    /// them as stored once the lease is taken (so tokens another replica rotated are seen).
    fn lease_idp_check(
        &self,
        holder: &str,
        due: i64,
        now: i64,
        until: i64,
    ) -> Result<Option<IdpUserRecord>>;

    /// Stores a check's result (claims, tokens exactly as given, `checked_at`) and lets the
    /// lease go; false, writing nothing, when `holder` no longer holds the user's lease.
    fn finish_idp_check(&self, holder: &str, user: &IdpUserRecord) -> Result<bool>;

    /// A check that came to no answer: the user stays due (claims and `checked_at` as they
    /// were), their tokens are stored as given (a refresh that worked before the check failed
    /// rotated them), and `holder` keeps them until `retry_at` (then any replica may try
    /// again). Nothing is written when `holder` no longer holds the lease.
    fn defer_idp_check(&self, holder: &str, user: &IdpUserRecord, retry_at: i64) -> Result<()>;
}

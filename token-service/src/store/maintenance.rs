//! Housekeeping across aggregates, and the leases that make one replica do it at a time.

use super::error::Result;
use super::records::Retention;

pub trait Maintenance {
    /// Deletes what can no longer matter (per `retention` for DCR clients): expired codes,
    /// flows, sessions, app sessions and rate buckets; revoked sessions; refresh tokens past
    /// their expiry; revoked families once their reuse-detection day has passed; grants whose
    /// family is gone.
    fn sweep(&self, now: i64, retention: &Retention) -> Result<()>;

    /// Takes the lease `name` for `holder` until `until`, unless another holder's lease runs
    /// past `now` (the holder itself may extend it): work every replica schedules, one
    /// replica at a time.
    fn try_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool>;

    /// Rows per table, every table (diagnostics, and the tests that storage stays bounded).
    fn row_counts(&self) -> Result<Vec<(&'static str, u64)>>;

    /// One trivial query: the database answers (the readiness check, `health`).
    fn ping(&self) -> Result<()>;
}

/// Every table of the store's schema, whichever the backend.
pub const TABLES: [&str; 21] = [
    "clients",
    "consents",
    "pending_flows",
    "login_attempts",
    "devices",
    "idp_logins",
    "idp_users",
    "sessions",
    "grants",
    "refresh_tokens",
    "auth_codes",
    "upstream_tokens",
    "upstream_flows",
    "app_codes",
    "app_sessions",
    "rate_buckets",
    "leases",
    "revocations",
    "signing_keys",
    "assertion_ids",
    "upstream_registrations",
];

//! Persistence. The `Store` is split by aggregate into traits, one file each (`clients`,
//! `sign_ins`, `sessions` with grants, `codes`, `upstream`, `app_sessions`, `signing_keys`, `idp_checks`);
//! the records they hold are in `records`, and every backend lives in a folder of its own
//! with its migrations as versioned `.sql` files. Calls are synchronous: callers run them on
//! the blocking pool. Codes, refresh tokens and session cookies are stored only as digests;
//! signing keys and upstream tokens sealed with the encryption key.

mod app_sessions;
mod clients;
mod codes;
mod error;
mod idp_checks;
mod maintenance;
mod rate_limits;
mod records;
mod revocations;
mod sessions;
mod sign_ins;
mod signing_keys;
pub mod sqlite;
mod upstream;

pub use app_sessions::AppSessions;
pub use clients::Clients;
pub use codes::Codes;
pub use error::{Result, StoreError};
pub use idp_checks::IdpChecks;
pub use maintenance::{Maintenance, TABLES};
pub use rate_limits::RateLimits;
pub use records::*;
pub use revocations::Revocations;
pub use sessions::Sessions;
pub use sign_ins::SignIns;
pub use signing_keys::SigningKeys;
pub use sqlite::SqliteStore;
pub use upstream::UpstreamTokens;

/// Opens (and migrates) the configured backend.
pub fn open(config: &crate::config::StorageConfig) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    Ok(std::sync::Arc::new(SqliteStore::open(&config.sqlite)?))
}

/// Everything the token service keeps: one backend implements every aggregate.
pub trait Store:
    Clients
    + SignIns
    + Sessions
    + Codes
    + UpstreamTokens
    + AppSessions
    + RateLimits
    + Revocations
    + SigningKeys
    + IdpChecks
    + Maintenance
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: Clients
        + SignIns
        + Sessions
        + Codes
        + UpstreamTokens
        + AppSessions
        + RateLimits
        + Revocations
        + SigningKeys
        + IdpChecks
        + Maintenance
        + Send
        + Sync
        + 'static
{
}

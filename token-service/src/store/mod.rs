//! Persistence. The `Store` is split by aggregate into traits, one file each (`clients`,
//! `sign_ins`, `sessions` with grants, `codes`, `upstream`, `app_sessions`, `signing_keys`, `idp_checks`, `assertion_ids`,
//! `upstream_registrations`);
//! the records they hold are in `records`, and every backend lives in a folder of its own
//! with its migrations as versioned `.sql` files. Calls are synchronous: callers run them on
//! the blocking pool. Codes, refresh tokens and session cookies are stored only as digests;
//! signing keys, upstream tokens and upstream registrations sealed with the encryption key.
//! `open` picks the backend the configuration names: `sqlite` (embedded, the default) or
//! `postgres` (several replicas sharing one database).

mod app_sessions;
mod assertion_ids;
mod clients;
mod codes;
mod error;
mod idp_checks;
mod maintenance;
pub mod postgres;
mod rate_limits;
mod records;
mod revocations;
mod sessions;
mod sign_ins;
mod signing_keys;
pub mod sqlite;
mod upstream;
mod upstream_registrations;

pub use app_sessions::AppSessions;
pub use assertion_ids::{client_assertions, id_jag_issuer, AssertionIds, MAX_JTI_LEN};
pub use clients::Clients;
pub use codes::Codes;
pub use error::{Result, StoreError};
pub use idp_checks::IdpChecks;
pub use maintenance::{Maintenance, TABLES};
pub use postgres::PostgresStore;
pub use rate_limits::RateLimits;
pub use records::*;
pub use revocations::Revocations;
pub use sessions::Sessions;
pub use sign_ins::SignIns;
pub use signing_keys::SigningKeys;
pub use sqlite::SqliteStore;
pub use upstream::UpstreamTokens;
pub use upstream_registrations::{UpstreamRegistrationRecord, UpstreamRegistrations};

use std::path::Path;
use std::sync::Arc;

use crate::config::{StorageBackend, StorageConfig};

/// Opens (and migrates) the store `storage` names. Blocking: call it off the async workers.
pub fn open(storage: &StorageConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match storage.backend() {
        StorageBackend::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        StorageBackend::Postgres(pg) => {
            Arc::new(PostgresStore::connect(pg.url(), pg.max_connections)?)
        }
    })
}

/// `migrate --from-sqlite`: copies the SQLite database at `from` into the PostgreSQL
/// database `storage` names (migrated first, and required empty). Returns the rows copied
/// per table.
pub fn copy_sqlite_to_postgres(
    storage: &StorageConfig,
    from: &Path,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let StorageBackend::Postgres(pg) = storage.backend() else {
        anyhow::bail!(
            "storage.postgres: the configuration names no PostgreSQL database to copy into"
        );
    };
    PostgresStore::connect(pg.url(), pg.max_connections)?.import_sqlite(from)
}

/// Everything the token service keeps: one backend implements every aggregate.
pub trait Store:
    Clients
    + SignIns
    + Sessions
    + Codes
    + UpstreamTokens
    + UpstreamRegistrations
    + AppSessions
    + RateLimits
    + Revocations
    + SigningKeys
    + IdpChecks
    + AssertionIds
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
        + UpstreamRegistrations
        + UpstreamRegistrations
        + AppSessions
        + RateLimits
        + Revocations
        + SigningKeys
        + IdpChecks
        + AssertionIds
        + Maintenance
        + Send
        + Sync
        + 'static
{
}

//! The SQLite backend: the embedded default. One connection behind a mutex; writes that must
//! see a consistent count take the write lock first (`BEGIN IMMEDIATE`), so processes sharing
//! the file cannot both pass a limit.

mod app_sessions;
mod assertion_ids;
mod clients;
mod codes;
mod idp_checks;
mod rate_limits;
mod revocations;
mod sessions;
mod sign_ins;
mod signing_keys;
mod upstream;
mod upstream_registrations;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};

use super::error::{Result, StoreError};
use super::maintenance::{Maintenance, TABLES};
use super::records::{Grant, PendingLimit, Retention};

/// Ordered schema migrations; a version is applied once, recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_consents.sql")),
    (3, include_str!("migrations/0003_login_attempts.sql")),
    (4, include_str!("migrations/0004_client_expiry.sql")),
    (5, include_str!("migrations/0005_upstream_tokens.sql")),
    (6, include_str!("migrations/0006_idp.sql")),
    (7, include_str!("migrations/0007_app_sessions.sql")),
    (8, include_str!("migrations/0008_rate_limits.sql")),
    (9, include_str!("migrations/0009_leases.sql")),
    (10, include_str!("migrations/0010_owners.sql")),
    (11, include_str!("migrations/0011_revocations.sql")),
    (12, include_str!("migrations/0012_signing_keys.sql")),
    (13, include_str!("migrations/0013_idp_checks.sql")),
    (14, include_str!("migrations/0014_assertion_ids.sql")),
    (
        15,
        include_str!("migrations/0015_upstream_registrations.sql"),
    ),
    (
        16,
        include_str!("migrations/0016_upstream_token_servers.sql"),
    ),
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(format!("database is busy: {e}"))
            }
            Some(ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
                StoreError::Unavailable(e.to_string())
            }
            Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
            _ => StoreError::Internal(e.into()),
        }
    }
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
        }
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_connection(conn)
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> anyhow::Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // WAL is not available for in-memory databases; ignore the answer. Switching needs
        // the file to itself, which SQLite does not wait for (no busy handler): a process
        // starting while another migrates the file retries for a while.
        let mut attempts = 0;
        loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(e)
                    if attempts < 100
                        && matches!(
                            e.sqlite_error_code(),
                            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                        ) =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                // Still busy: `Unavailable`, which `serve` retries.
                Err(e) => return Err(StoreError::from(e).into()),
            }
        }
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Internal(anyhow::anyhow!("store mutex poisoned")))
    }

    /// Clients registered through DCR (for tests and diagnostics).
    pub fn registered_clients(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn()?
            .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))?)
    }

    /// Rows in the pending tables (`PendingLimit`), expired or not (for tests and diagnostics).
    pub fn pending_records(&self) -> anyhow::Result<u64> {
        Ok(count_pending(&*self.conn()?)?)
    }

    /// Runs `insert` in one transaction with the count it must stay within.
    fn insert_pending(
        &self,
        limit: PendingLimit,
        insert: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<usize>,
    ) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if count_pending(&tx)? >= limit.max {
            // Expired rows wait for the sweep; make room with them before refusing.
            for table in PENDING_TABLES {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE expires_at <= ?1"),
                    [limit.now],
                )?;
            }
            if count_pending(&tx)? >= limit.max {
                tx.commit()?;
                return Ok(false);
            }
        }
        insert(&tx)?;
        tx.commit()?;
        Ok(true)
    }

    /// Applied schema versions, ascending (for tests and diagnostics).
    pub fn schema_versions(&self) -> anyhow::Result<Vec<i64>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT version FROM schema_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<i64>, _>>()?)
    }
}

/// The tables of records a stranger can leave behind by starting a sign-in.
const PENDING_TABLES: [&str; 3] = ["pending_flows", "upstream_flows", "idp_logins"];

pub(super) fn count_pending(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM pending_flows) + (SELECT COUNT(*) FROM upstream_flows)
              + (SELECT COUNT(*) FROM idp_logins)",
        [],
        |r| r.get(0),
    )
}

/// Applies the migrations not applied yet, all under the write lock (`BEGIN IMMEDIATE`): two
/// processes opening one file at once migrate it once, the second waiting for the first.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    // Another process holding the write lock past the busy timeout: `Unavailable`, which
    // `serve` retries.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::from)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )?;
    for (version, sql) in MIGRATIONS {
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {version} failed"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, crate::clock::now_unix()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Marks when DCR clients ran out of live grants, and deletes clients unused or idle for
/// longer than `retention` allows, with their consents.
fn sweep_clients(conn: &mut Connection, now: i64, retention: &Retention) -> Result<()> {
    // A grant is alive while it is not revoked and its family has a usable refresh token.
    const LIVE_GRANT: &str =
        "EXISTS (SELECT 1 FROM grants g JOIN refresh_tokens t ON t.grant_id = g.id
        WHERE g.client_id = clients.client_id AND g.revoked_at IS NULL
          AND t.used_at IS NULL AND t.expires_at > ?1)";
    const EXPIRED: &str = "(granted_at IS NULL AND created_at <= ?1 - ?2
          AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id))
        OR (idle_since IS NOT NULL AND idle_since <= ?1 - ?3)";
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = NULL WHERE idle_since IS NOT NULL AND {LIVE_GRANT}"
        ),
        [now],
    )?;
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = ?1
             WHERE granted_at IS NOT NULL AND idle_since IS NULL AND NOT {LIVE_GRANT}"
        ),
        [now],
    )?;
    let ttls = params![now, retention.unused_client_ttl, retention.idle_client_ttl];
    tx.execute(
        &format!(
            "DELETE FROM consents WHERE client_id IN (SELECT client_id FROM clients WHERE {EXPIRED})"
        ),
        ttls,
    )?;
    let deleted = tx.execute(&format!("DELETE FROM clients WHERE {EXPIRED}"), ttls)?;
    tx.commit()?;
    if deleted > 0 {
        tracing::info!(deleted, "expired client registrations deleted");
    }
    Ok(())
}

pub(super) fn grant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        client_id: r.get(1)?,
        user: r.get(2)?,
        sid: r.get(3)?,
        resource: r.get(4)?,
        scope: r.get(5)?,
        created_at: r.get(6)?,
        revoked: r.get::<_, Option<i64>>(7)?.is_some(),
    })
}

impl Maintenance for SqliteStore {
    fn sweep(&self, now: i64, retention: &Retention) -> Result<()> {
        // Redeemed codes and rotated-out refresh tokens are kept until they expire so that
        // a replay inside their lifetime is still recognised (and revokes the family).
        const DAY: i64 = 86_400;
        let mut conn = self.conn()?;
        sweep_clients(&mut conn, now, retention)?;
        conn.execute("DELETE FROM pending_flows WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM upstream_flows WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM idp_logins WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM app_codes WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM app_sessions WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM auth_codes WHERE expires_at <= ?1", [now - DAY])?;
        // A revoked session reads as absent everywhere: the row carries nothing.
        conn.execute(
            "DELETE FROM sessions WHERE expires_at <= ?1 OR revoked_at IS NOT NULL",
            [now],
        )?;
        // Attempts older than a day are outside every throttle window (pending ones too:
        // a check that never finished, say a crash, stops counting with its window).
        conn.execute("DELETE FROM login_attempts WHERE at <= ?1", [now - DAY])?;
        conn.execute("DELETE FROM devices WHERE expires_at <= ?1", [now])?;
        // A bucket untouched for a minute has refilled: it carries nothing.
        conn.execute("DELETE FROM rate_buckets WHERE at <= ?1", [now - 60])?;
        // An entry past `expires_at` covers no TE that is still valid.
        conn.execute("DELETE FROM revocations WHERE expires_at <= ?1", [now])?;
        // An expired assertion is refused for its expiry: its id need not be remembered.
        conn.execute("DELETE FROM assertion_ids WHERE expires_at <= ?1", [now])?;
        // Out of the JWKS already (the key set leaves retired keys out by itself).
        conn.execute(
            "DELETE FROM signing_keys WHERE retire_at IS NOT NULL AND retire_at <= ?1",
            [now],
        )?;
        conn.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])?;
        // A revoked family answers `invalid_grant` whether its tokens are known or not; past a
        // day its rows go, and the grant with them (below).
        conn.execute(
            "DELETE FROM refresh_tokens WHERE grant_id IN
                 (SELECT id FROM grants WHERE revoked_at IS NOT NULL AND revoked_at <= ?1)",
            [now - DAY],
        )?;
        conn.execute(
            "DELETE FROM grants WHERE created_at <= ?1
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.grant_id = grants.id)",
            [now - DAY],
        )?;
        Ok(())
    }

    fn try_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?4)
             ON CONFLICT (name) DO UPDATE SET holder = ?2, until = ?4
             WHERE leases.until <= ?3 OR leases.holder = ?2",
            params![name, holder, now, until],
        )?;
        Ok(n == 1)
    }

    fn ping(&self) -> Result<()> {
        Ok(self.conn()?.query_row("SELECT 1", [], |_| Ok(()))?)
    }

    fn row_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let conn = self.conn()?;
        TABLES
            .iter()
            .map(|table| {
                // The names are our own constants, never input.
                let n: u64 =
                    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                Ok((*table, n))
            })
            .collect()
    }
}

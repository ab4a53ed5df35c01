//! The PostgreSQL backend: several replicas sharing one database. Calls are synchronous, on a
//! small pool of connections (`pool`). What SQLite gets from its single writer is explicit
//! here: a count-then-insert limit takes a transaction-scoped advisory lock on a key per
//! limit (per bucket for the login throttle) before counting, so replicas counting at once
//! take turns; a code is locked (`FOR UPDATE`) while it is redeemed; rotations, leases and
//! version-conditioned writes are single conditional statements. Serialization failures and
//! deadlocks are retried a few times, then answered as `Conflict`.

mod app_sessions;
mod assertion_ids;
mod clients;
mod codes;
mod idp_checks;
mod import;
mod pool;
mod rate_limits;
mod revocations;
mod sessions;
mod sign_ins;
mod signing_keys;
mod tls;
mod upstream;
mod upstream_registrations;

use postgres::{Client, Transaction};

use crate::pg_url;
use crate::store::error::{Result, StoreError};
use crate::store::maintenance::{Maintenance, TABLES};
use crate::store::records::{Grant, PendingLimit, Retention};

/// Ordered schema migrations; a version is applied once, recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_replicas.sql")),
    (3, include_str!("migrations/0003_idp_checks.sql")),
    (4, include_str!("migrations/0004_assertion_ids.sql")),
    (
        5,
        include_str!("migrations/0005_upstream_registrations.sql"),
    ),
    (
        6,
        include_str!("migrations/0006_upstream_token_servers.sql"),
    ),
];

/// Advisory lock keys (`pg_advisory_xact_lock(NAMESPACE, key)`): one per limit, and a second
/// namespace for the login throttle's buckets (keyed by `hashtext(bucket)`; a collision only
/// makes two buckets take turns).
const NAMESPACE: i32 = 0x5741_5244; // "WARD"
const LOCK_MIGRATIONS: i32 = 1;
const LOCK_CLIENTS: i32 = 2;
const LOCK_PENDING: i32 = 3;
/// Held while an entry is appended to the revocation feed: `seq` is drawn under it, so it is
/// drawn in commit order.
const LOCK_REVOCATIONS: i32 = 4;
const LOGIN_NAMESPACE: i32 = 0x5741_524C; // "WARL"
/// The rate limits' buckets (keyed by `hashtext(limiter || client)`).
const RATE_NAMESPACE: i32 = 0x5741_5252; // "WARR"

/// Attempts of a transaction that meets a serialization failure or deadlock.
const TX_ATTEMPTS: u32 = 4;

pub struct PostgresStore {
    pool: pool::Pool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`, see `pg_url`) with at most `max_connections`
    /// connections, and migrates the schema. Blocking: call it off the async workers.
    pub fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let target =
            pg_url::parse(url).map_err(|m| anyhow::anyhow!("storage.postgres.url: {m}"))?;
        let connector = tls::Connector::new(&target.tls)?;
        let max = usize::try_from(max_connections).unwrap_or(usize::MAX);
        let store = Self {
            pool: pool::Pool::new(target.config, connector, max),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `f` on a pooled connection, outside a transaction.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T> {
        let mut conn = self.pool.get()?;
        let r = f(conn.client()?);
        r.map_err(|e| conn.fail(e))
    }

    /// Runs `f` in a transaction (READ COMMITTED), committed when `f` returns; retried
    /// from the start on a serialization failure or deadlock.
    fn tx<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut conn = self.pool.get()?;
        let mut attempt = 1;
        loop {
            let r = (|| {
                let mut tx = conn.client()?.transaction().map_err(Attempt::Db)?;
                let v = f(&mut tx).map_err(Attempt::Db)?;
                tx.commit().map_err(Attempt::Db)?;
                Ok(v)
            })();
            match r {
                Ok(v) => return Ok(v),
                Err(Attempt::Store(e)) => return Err(e),
                Err(Attempt::Db(e)) if attempt < TX_ATTEMPTS && retryable(&e) => attempt += 1,
                Err(Attempt::Db(e)) => return Err(conn.fail(e)),
            }
        }
    }

    fn migrate(&self) -> anyhow::Result<()> {
        self.tx(|tx| {
            // One transaction under one lock: replicas starting together migrate once, the
            // others waiting and then finding every version applied.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&NAMESPACE, &LOCK_MIGRATIONS],
            )?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    applied_at BIGINT NOT NULL
                )",
            )?;
            for (version, sql) in MIGRATIONS {
                let done: bool = tx
                    .query_one(
                        "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = $1)",
                        &[version],
                    )?
                    .get(0);
                if !done {
                    tx.batch_execute(sql)?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        &[version, &crate::clock::now_unix()],
                    )?;
                }
            }
            Ok(())
        })
        .map_err(|e| anyhow::Error::new(e).context("PostgreSQL schema migration"))
    }

    /// Applied schema versions, ascending (for tests and diagnostics).
    pub fn schema_versions(&self) -> anyhow::Result<Vec<i64>> {
        Ok(self.with(|c| {
            Ok(c.query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })?)
    }

    /// Clients registered through DCR (for tests and diagnostics).
    pub fn registered_clients(&self) -> anyhow::Result<u64> {
        let n: i64 = self.with(|c| Ok(c.query_one("SELECT COUNT(*) FROM clients", &[])?.get(0)))?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Rows in the pending tables (`PendingLimit`), expired or not (for tests and diagnostics).
    pub fn pending_records(&self) -> anyhow::Result<u64> {
        Ok(self.with(|c| count_pending(&mut c.transaction()?))?)
    }

    /// Runs `insert` in one transaction with the count it must stay within, counted under
    /// the pending records' lock.
    fn insert_pending(
        &self,
        limit: PendingLimit,
        mut insert: impl FnMut(&mut Transaction<'_>) -> Result<u64, postgres::Error>,
    ) -> Result<bool> {
        self.tx(|tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&NAMESPACE, &LOCK_PENDING],
            )?;
            if count_pending(tx)? >= limit.max {
                // Expired rows wait for the sweep; make room with them before refusing.
                for table in PENDING_TABLES {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE expires_at <= $1"),
                        &[&limit.now],
                    )?;
                }
                if count_pending(tx)? >= limit.max {
                    return Ok(false);
                }
            }
            insert(tx)?;
            Ok(true)
        })
    }
}

/// What a transaction attempt failed with: the database (maybe retried), or the store.
enum Attempt {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Store(e)
    }
}

fn retryable(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "40001" | "40P01"))
}

/// The tables of records a stranger can leave behind by starting a sign-in.
const PENDING_TABLES: [&str; 3] = ["pending_flows", "upstream_flows", "idp_logins"];

fn count_pending(tx: &mut Transaction<'_>) -> Result<u64, postgres::Error> {
    let n: i64 = tx
        .query_one(
            "SELECT (SELECT COUNT(*) FROM pending_flows) + (SELECT COUNT(*) FROM upstream_flows)
                  + (SELECT COUNT(*) FROM idp_logins)",
            &[],
        )?
        .get(0);
    Ok(u64::try_from(n).unwrap_or_default())
}

pub(super) fn grant_from_row(r: &postgres::Row) -> Grant {
    Grant {
        id: r.get(0),
        client_id: r.get(1),
        user: r.get(2),
        sid: r.get(3),
        resource: r.get(4),
        scope: r.get(5),
        created_at: r.get(6),
        revoked: r.get::<_, Option<i64>>(7).is_some(),
    }
}

/// Marks when DCR clients ran out of live grants, and deletes clients unused or idle for
/// longer than `retention` allows, with their consents.
fn sweep_clients(
    tx: &mut Transaction<'_>,
    now: i64,
    retention: &Retention,
) -> Result<u64, postgres::Error> {
    // A grant is alive while it is not revoked and its family has a usable refresh token.
    const LIVE_GRANT: &str =
        "EXISTS (SELECT 1 FROM grants g JOIN refresh_tokens t ON t.grant_id = g.id
        WHERE g.client_id = clients.client_id AND g.revoked_at IS NULL
          AND t.used_at IS NULL AND t.expires_at > $1)";
    const EXPIRED: &str = "(granted_at IS NULL AND created_at <= $1::BIGINT - $2::BIGINT
          AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id))
        OR (idle_since IS NOT NULL AND idle_since <= $1::BIGINT - $3::BIGINT)";
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = NULL WHERE idle_since IS NOT NULL AND {LIVE_GRANT}"
        ),
        &[&now],
    )?;
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = $1
             WHERE granted_at IS NOT NULL AND idle_since IS NULL AND NOT {LIVE_GRANT}"
        ),
        &[&now],
    )?;
    let ttls: [&(dyn postgres::types::ToSql + Sync); 3] = [
        &now,
        &retention.unused_client_ttl,
        &retention.idle_client_ttl,
    ];
    tx.execute(
        &format!(
            "DELETE FROM consents WHERE client_id IN (SELECT client_id FROM clients WHERE {EXPIRED})"
        ),
        &ttls,
    )?;
    tx.execute(&format!("DELETE FROM clients WHERE {EXPIRED}"), &ttls)
}

impl Maintenance for PostgresStore {
    fn sweep(&self, now: i64, retention: &Retention) -> Result<()> {
        // Redeemed codes and rotated-out refresh tokens are kept until they expire so that
        // a replay inside their lifetime is still recognised (and revokes the family).
        const DAY: i64 = 86_400;
        let deleted = self.tx(|tx| sweep_clients(tx, now, retention))?;
        if deleted > 0 {
            tracing::info!(deleted, "expired client registrations deleted");
        }
        self.with(|c| {
            for (sql, at) in [
                ("DELETE FROM pending_flows WHERE expires_at <= $1", now),
                ("DELETE FROM upstream_flows WHERE expires_at <= $1", now),
                ("DELETE FROM idp_logins WHERE expires_at <= $1", now),
                ("DELETE FROM app_codes WHERE expires_at <= $1", now),
                ("DELETE FROM app_sessions WHERE expires_at <= $1", now),
                ("DELETE FROM auth_codes WHERE expires_at <= $1", now - DAY),
                // A revoked session reads as absent everywhere: the row carries nothing.
                (
                    "DELETE FROM sessions WHERE expires_at <= $1 OR revoked_at IS NOT NULL",
                    now,
                ),
                // Attempts older than a day are outside every throttle window (pending ones
                // too: a check that never finished, say a crash, stops counting with it).
                ("DELETE FROM login_attempts WHERE at <= $1", now - DAY),
                ("DELETE FROM devices WHERE expires_at <= $1", now),
                // A bucket untouched for a minute has refilled: it carries nothing.
                ("DELETE FROM rate_buckets WHERE at <= $1", now - 60),
                // An entry past `expires_at` covers no TE that is still valid.
                ("DELETE FROM revocations WHERE expires_at <= $1", now),
                // An expired assertion is refused for its expiry: its id need not be kept.
                ("DELETE FROM assertion_ids WHERE expires_at <= $1", now),
                // Out of the JWKS already (the key set leaves retired keys out by itself).
                (
                    "DELETE FROM signing_keys WHERE retire_at IS NOT NULL AND retire_at <= $1",
                    now,
                ),
                ("DELETE FROM refresh_tokens WHERE expires_at <= $1", now),
                // A revoked family answers `invalid_grant` whether its tokens are known or
                // not; past a day its rows go, and the grant with them (below).
                (
                    "DELETE FROM refresh_tokens WHERE grant_id IN
                         (SELECT id FROM grants WHERE revoked_at IS NOT NULL AND revoked_at <= $1)",
                    now - DAY,
                ),
                (
                    "DELETE FROM grants WHERE created_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.grant_id = grants.id)",
                    now - DAY,
                ),
            ] {
                c.execute(sql, &[&at])?;
            }
            Ok(())
        })
    }

    fn try_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $4)
                 ON CONFLICT (name) DO UPDATE SET holder = $2, until = $4
                 WHERE leases.until <= $3 OR leases.holder = $2",
                &[&name, &holder, &now, &until],
            )? == 1)
        })
    }

    fn ping(&self) -> Result<()> {
        self.with(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    fn row_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        self.with(|c| {
            TABLES
                .iter()
                .map(|table| {
                    // The names are our own constants, never input.
                    let n: i64 = c
                        .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                        .get(0);
                    Ok((*table, u64::try_from(n).unwrap_or_default()))
                })
                .collect()
        })
    }
}

/// Appends one revocation feed entry inside the caller's transaction, `seq` drawn under the
/// feed's lock (held to commit): entries become visible in `seq` order.
pub(super) fn append_revocation(
    tx: &mut Transaction<'_>,
    kind: crate::store::records::RevokedKind,
    id: &str,
    at: i64,
    expires_at: i64,
) -> Result<u64, postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NAMESPACE, &LOCK_REVOCATIONS],
    )?;
    tx.execute(
        "INSERT INTO revocations (kind, id, at, expires_at) VALUES ($1, $2, $3, $4)",
        &[&kind.as_str(), &id, &at, &expires_at],
    )
}

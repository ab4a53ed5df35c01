//! Revocations on SQLite. Writers hold the database's write lock, so `seq` order is commit
//! order.

use anyhow::Context;
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::store::error::Result;
use crate::store::records::{RevocationEntry, RevokedKind};
use crate::store::revocations::Revocations;

impl Revocations for SqliteStore {
    fn record_revocation(
        &self,
        kind: RevokedKind,
        id: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<()> {
        let conn = self.conn()?;
        append_revocation(&conn, kind, id, at, expires_at)?;
        Ok(())
    }

    fn revocations_after(
        &self,
        after: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<RevocationEntry>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, kind, id, at, expires_at FROM revocations
             WHERE seq > ?1 AND expires_at > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, now, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, id, at, expires_at) = row?;
            let kind = RevokedKind::parse(&kind)
                .with_context(|| format!("stored revocation {seq} has an unknown kind"))?;
            out.push(RevocationEntry {
                seq,
                kind,
                id,
                at,
                expires_at,
            });
        }
        Ok(out)
    }

    fn revocation_feed_summary(&self, now: i64) -> Result<(i64, Option<i64>)> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT COUNT(*), MAX(at) FROM revocations WHERE expires_at > ?1",
            [now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }
}

/// Appends one feed entry inside the caller's transaction (or connection).
pub(super) fn append_revocation(
    conn: &Connection,
    kind: RevokedKind,
    id: &str,
    at: i64,
    expires_at: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO revocations (kind, id, at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![kind.as_str(), id, at, expires_at],
    )
}

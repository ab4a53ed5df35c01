//! Revocations on PostgreSQL.

use anyhow::Context;

use super::{append_revocation, PostgresStore};
use crate::store::error::Result;
use crate::store::records::{RevocationEntry, RevokedKind};
use crate::store::revocations::Revocations;

impl Revocations for PostgresStore {
    fn record_revocation(
        &self,
        kind: RevokedKind,
        id: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<()> {
        self.tx(|tx| {
            append_revocation(tx, kind, id, at, expires_at)?;
            Ok(())
        })
    }

    fn revocations_after(
        &self,
        after: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<RevocationEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, String, i64, i64)> = self.with(|c| {
            Ok(c.query(
                "SELECT seq, kind, id, at, expires_at FROM revocations
                 WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
                &[&after, &now, &limit],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, kind, id, at, expires_at) in rows {
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
        self.with(|c| {
            let row = c.query_one(
                "SELECT COUNT(*), MAX(at) FROM revocations WHERE expires_at > $1",
                &[&now],
            )?;
            Ok((row.get(0), row.get(1)))
        })
    }
}

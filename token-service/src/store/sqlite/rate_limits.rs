//! RateLimits on SQLite.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::error::Result;
use crate::store::rate_limits::RateLimits;

impl RateLimits for SqliteStore {
    fn take_rate_token(
        &self,
        limiter: &str,
        client: &str,
        per_minute: u32,
        now: i64,
    ) -> Result<std::result::Result<(), u64>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let bucket: Option<(i64, i64)> = tx
            .query_row(
                "SELECT tokens, at FROM rate_buckets WHERE limiter = ?1 AND client = ?2",
                params![limiter, client],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let ((tokens, at), taken) = crate::ratelimit::take(bucket, per_minute, now);
        tx.execute(
            "INSERT INTO rate_buckets (limiter, client, tokens, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (limiter, client) DO UPDATE SET tokens = ?3, at = ?4",
            params![limiter, client, tokens, at],
        )?;
        tx.commit()?;
        Ok(taken)
    }
}

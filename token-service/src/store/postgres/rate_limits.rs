//! RateLimits on PostgreSQL: a bucket is read and written under its own advisory lock, so two
//! replicas taking from one bucket take turns (a row lock would not cover a bucket's first
//! insert).

use super::{PostgresStore, RATE_NAMESPACE};
use crate::store::error::Result;
use crate::store::rate_limits::RateLimits;

impl RateLimits for PostgresStore {
    fn take_rate_token(
        &self,
        limiter: &str,
        client: &str,
        per_minute: u32,
        now: i64,
    ) -> Result<std::result::Result<(), u64>> {
        self.tx(|tx| {
            let key = format!("{limiter}\n{client}");
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&RATE_NAMESPACE, &key],
            )?;
            let bucket: Option<(i64, i64)> = tx
                .query_opt(
                    "SELECT tokens, at FROM rate_buckets WHERE limiter = $1 AND client = $2",
                    &[&limiter, &client],
                )?
                .map(|r| (r.get(0), r.get(1)));
            let ((tokens, at), taken) = crate::ratelimit::take(bucket, per_minute, now);
            tx.execute(
                "INSERT INTO rate_buckets (limiter, client, tokens, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (limiter, client) DO UPDATE SET tokens = $3, at = $4",
                &[&limiter, &client, &tokens, &at],
            )?;
            Ok(taken)
        })
    }
}

//! AssertionIds on PostgreSQL: one `INSERT … ON CONFLICT DO NOTHING`; the primary key makes
//! a concurrent second insert of the same id wait for the first and then do nothing.

use super::PostgresStore;
use crate::store::assertion_ids::AssertionIds;
use crate::store::error::Result;

impl AssertionIds for PostgresStore {
    fn use_assertion_id(&self, issuer: &str, jti: &str, expires_at: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO assertion_ids (issuer, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (issuer, jti) DO NOTHING",
                &[&issuer, &jti, &expires_at],
            )? == 1)
        })
    }
}

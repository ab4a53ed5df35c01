//! AssertionIds on SQLite.

use rusqlite::params;

use super::SqliteStore;
use crate::store::assertion_ids::AssertionIds;
use crate::store::error::Result;

impl AssertionIds for SqliteStore {
    fn use_assertion_id(&self, issuer: &str, jti: &str, expires_at: i64) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO assertion_ids (issuer, jti, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (issuer, jti) DO NOTHING",
            params![issuer, jti, expires_at],
        )?;
        Ok(n == 1)
    }
}

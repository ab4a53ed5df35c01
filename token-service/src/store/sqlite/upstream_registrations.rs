//! UpstreamRegistrations on SQLite.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::store::error::Result;
use crate::store::upstream_registrations::{UpstreamRegistrationRecord, UpstreamRegistrations};

impl UpstreamRegistrations for SqliteStore {
    fn upstream_registration(&self, issuer: &str) -> Result<Option<UpstreamRegistrationRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT issuer, sealed, registered_at FROM upstream_registrations
                 WHERE issuer = ?1",
                [issuer],
                |r| {
                    Ok(UpstreamRegistrationRecord {
                        issuer: r.get(0)?,
                        sealed: r.get(1)?,
                        registered_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn insert_upstream_registration(&self, record: &UpstreamRegistrationRecord) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO upstream_registrations (issuer, sealed, registered_at)
             VALUES (?1, ?2, ?3)
             ON CONFLICT (issuer) DO NOTHING",
            params![record.issuer, record.sealed, record.registered_at],
        )?;
        Ok(n == 1)
    }

    fn delete_upstream_registration(&self, issuer: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM upstream_registrations WHERE issuer = ?1",
            [issuer],
        )?;
        Ok(n == 1)
    }
}

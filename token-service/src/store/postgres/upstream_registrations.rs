//! UpstreamRegistrations on PostgreSQL: `INSERT … ON CONFLICT DO NOTHING`; the primary key
//! makes a concurrent second insert for the same issuer wait for the first, then do nothing.

use super::PostgresStore;
use crate::store::error::Result;
use crate::store::upstream_registrations::{UpstreamRegistrationRecord, UpstreamRegistrations};

impl UpstreamRegistrations for PostgresStore {
    fn upstream_registration(&self, issuer: &str) -> Result<Option<UpstreamRegistrationRecord>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT issuer, sealed, registered_at FROM upstream_registrations
                 WHERE issuer = $1",
                &[&issuer],
            )
        })?;
        Ok(row.map(|r| UpstreamRegistrationRecord {
            issuer: r.get(0),
            sealed: r.get(1),
            registered_at: r.get(2),
        }))
    }

    fn insert_upstream_registration(&self, record: &UpstreamRegistrationRecord) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO upstream_registrations (issuer, sealed, registered_at)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (issuer) DO NOTHING",
                &[&record.issuer, &record.sealed, &record.registered_at],
            )? == 1)
        })
    }

    fn delete_upstream_registration(&self, issuer: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM upstream_registrations WHERE issuer = $1",
                &[&issuer],
            )? == 1)
        })
    }
}

//! Clients on PostgreSQL.

use super::{PostgresStore, LOCK_CLIENTS, NAMESPACE};
use crate::store::clients::Clients;
use crate::store::error::Result;
use crate::store::records::StoredClient;

impl Clients for PostgresStore {
    fn insert_client(&self, client: &StoredClient, max_unused: u64) -> Result<bool> {
        let metadata = serde_json::to_string(client)?;
        let max = i64::try_from(max_unused).unwrap_or(i64::MAX);
        self.tx(|tx| {
            // Replicas registering at once count one after the other.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&NAMESPACE, &LOCK_CLIENTS],
            )?;
            let unused: i64 = tx
                .query_one("SELECT COUNT(*) FROM clients WHERE granted_at IS NULL", &[])?
                .get(0);
            if unused >= max {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO clients (client_id, metadata, created_at) VALUES ($1, $2, $3)",
                &[&client.client_id, &metadata, &client.created_at],
            )?;
            Ok(true)
        })
    }

    fn client(&self, client_id: &str) -> Result<Option<StoredClient>> {
        let json: Option<String> = self.with(|c| {
            Ok(c.query_opt(
                "SELECT metadata FROM clients WHERE client_id = $1",
                &[&client_id],
            )?
            .map(|r| r.get(0)))
        })?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn consent(&self, email: &str, client_id: &str, resource: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT scope FROM consents WHERE email = $1 AND client_id = $2 AND resource = $3",
                &[&email, &client_id, &resource],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn record_consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        now: i64,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO consents (email, client_id, resource, scope, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (email, client_id, resource)
                 DO UPDATE SET scope = excluded.scope, updated_at = excluded.updated_at",
                &[&email, &client_id, &resource, &scope, &now],
            )?;
            Ok(())
        })
    }
}

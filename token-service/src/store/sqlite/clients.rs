//! Clients on SQLite.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::clients::Clients;
use crate::store::error::Result;
use crate::store::records::StoredClient;

impl Clients for SqliteStore {
    fn insert_client(&self, client: &StoredClient, max_unused: u64) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let unused: u64 = tx.query_row(
            "SELECT COUNT(*) FROM clients WHERE granted_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        if unused >= max_unused {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO clients (client_id, metadata, created_at) VALUES (?1, ?2, ?3)",
            params![
                client.client_id,
                serde_json::to_string(client)?,
                client.created_at
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn client(&self, client_id: &str) -> Result<Option<StoredClient>> {
        let json: Option<String> = self
            .conn()?
            .query_row(
                "SELECT metadata FROM clients WHERE client_id = ?1",
                [client_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn consent(&self, email: &str, client_id: &str, resource: &str) -> Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT scope FROM consents WHERE email = ?1 AND client_id = ?2 AND resource = ?3",
                params![email, client_id, resource],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn record_consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        now: i64,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO consents (email, client_id, resource, scope, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (email, client_id, resource)
             DO UPDATE SET scope = excluded.scope, updated_at = excluded.updated_at",
            params![email, client_id, resource, scope, now],
        )?;
        Ok(())
    }
}

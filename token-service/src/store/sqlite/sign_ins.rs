//! SignIns on SQLite.

use anyhow::Context;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::error::Result;
use crate::store::records::{IdpLogin, IdpUserRecord, PendingFlow, PendingLimit};
use crate::store::sign_ins::{SignIns, MAX_DEVICES};

impl SignIns for SqliteStore {
    fn insert_flow(&self, flow: &PendingFlow, limit: PendingLimit) -> Result<bool> {
        let data = serde_json::to_string(flow)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO pending_flows (id, data, expires_at) VALUES (?1, ?2, ?3)",
                params![flow.id, data, flow.expires_at],
            )
        })
    }

    fn flow(&self, id: &str, now: i64) -> Result<Option<PendingFlow>> {
        let json: Option<String> = self
            .conn()?
            .query_row(
                "SELECT data FROM pending_flows WHERE id = ?1 AND expires_at > ?2",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn record_failed_login(&self, id: &str) -> Result<u32> {
        let n: Option<u32> = self
            .conn()?
            .query_row(
                "UPDATE pending_flows SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(u32::MAX))
    }

    fn delete_flow(&self, id: &str) -> Result<bool> {
        let n = self
            .conn()?
            .execute("DELETE FROM pending_flows WHERE id = ?1", [id])?;
        Ok(n == 1)
    }

    fn reserve_login_attempt(
        &self,
        bucket: &str,
        since: i64,
        limit: u32,
        now: i64,
    ) -> Result<Option<i64>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let counted: u32 = tx.query_row(
            "SELECT COUNT(*) FROM login_attempts WHERE bucket = ?1 AND at >= ?2",
            params![bucket, since],
            |r| r.get(0),
        )?;
        if counted >= limit {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO login_attempts (bucket, at, pending) VALUES (?1, ?2, 1)",
            params![bucket, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Some(id))
    }

    fn fail_login_attempt(&self, id: i64, now: i64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE login_attempts SET pending = 0, at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn end_login_attempt(&self, id: i64, bucket: &str, clear_failures: bool) -> Result<()> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM login_attempts WHERE id = ?1", [id])?;
        if clear_failures {
            // Attempts still in flight stay counted.
            conn.execute(
                "DELETE FROM login_attempts WHERE bucket = ?1 AND pending = 0",
                [bucket],
            )?;
        }
        Ok(())
    }

    fn insert_device(&self, secret_hash: &str, account: &str, expires_at: i64) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO devices (secret_hash, account, expires_at) VALUES (?1, ?2, ?3)",
            params![secret_hash, account, expires_at],
        )?;
        tx.execute(
            "DELETE FROM devices WHERE account = ?1 AND secret_hash NOT IN
                 (SELECT secret_hash FROM devices WHERE account = ?1
                  ORDER BY expires_at DESC, secret_hash LIMIT ?2)",
            params![account, MAX_DEVICES],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn device_account(&self, secret_hash: &str, now: i64) -> Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT account FROM devices WHERE secret_hash = ?1 AND expires_at > ?2",
                params![secret_hash, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn delete_device(&self, secret_hash: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM devices WHERE secret_hash = ?1", [secret_hash])?;
        Ok(())
    }

    fn insert_idp_login(
        &self,
        state_hash: &str,
        login: &IdpLogin,
        limit: PendingLimit,
    ) -> Result<bool> {
        let data = serde_json::to_string(login)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO idp_logins (state_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![state_hash, data, login.expires_at],
            )
        })
    }

    fn take_idp_login(&self, state_hash: &str, now: i64) -> Result<Option<IdpLogin>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM idp_logins WHERE state_hash = ?1 RETURNING data, expires_at",
                [state_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        Ok(data
            .map(|d| {
                serde_json::from_str(&d).context("stored identity-provider sign-in is malformed")
            })
            .transpose()?)
    }

    fn put_idp_user(&self, user: &IdpUserRecord) -> Result<()> {
        // A sign-in that brought no refresh token (providers issue one at the first consent
        // only) keeps the one stored: the provider's earlier grant still checks the user.
        self.conn()?.execute(
            "INSERT INTO idp_users (key, email, name, groups_json, updated_at,
                                    refresh_token, access_token, checked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (key) DO UPDATE SET email = ?2, name = ?3, groups_json = ?4,
                 updated_at = ?5, refresh_token = COALESCE(?6, idp_users.refresh_token),
                 access_token = COALESCE(?7, idp_users.access_token), checked_at = ?8",
            params![
                user.key,
                user.email,
                user.name,
                serde_json::to_string(&user.groups)?,
                user.updated_at,
                user.refresh_token,
                user.access_token,
                user.checked_at
            ],
        )?;
        Ok(())
    }

    fn idp_user(&self, key: &str) -> Result<Option<IdpUserRecord>> {
        let row = self
            .conn()?
            .query_row(
                "SELECT key, email, name, groups_json, updated_at,
                        refresh_token, access_token, checked_at
                 FROM idp_users WHERE key = ?1",
                [key],
                idp_user_from_row,
            )
            .optional()?;
        row.transpose()
    }
}

/// An `idp_users` row selected as `key, email, name, groups_json, updated_at, refresh_token,
/// access_token, checked_at`.
pub(super) fn idp_user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<IdpUserRecord>> {
    let groups: String = r.get(3)?;
    let record = IdpUserRecord {
        key: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
        groups: Vec::new(),
        updated_at: r.get(4)?,
        refresh_token: r.get(5)?,
        access_token: r.get(6)?,
        checked_at: r.get(7)?,
    };
    Ok(serde_json::from_str(&groups)
        .context("stored groups are malformed")
        .map(|groups| IdpUserRecord { groups, ..record })
        .map_err(Into::into))
}

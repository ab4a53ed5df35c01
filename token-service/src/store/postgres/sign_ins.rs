//! SignIns on PostgreSQL.

use anyhow::Context;

use super::{PostgresStore, LOGIN_NAMESPACE};
use crate::store::error::Result;
use crate::store::records::{IdpLogin, IdpUserRecord, PendingFlow, PendingLimit};
use crate::store::sign_ins::{SignIns, MAX_DEVICES};

/// Takes (deletes and returns) an unexpired record's data from a single-use table.
fn take(
    c: &mut postgres::Client,
    table: &str,
    key: &str,
    value: &str,
    now: i64,
) -> Result<Option<String>, postgres::Error> {
    Ok(c.query_opt(
        &format!("DELETE FROM {table} WHERE {key} = $1 RETURNING data, expires_at"),
        &[&value],
    )?
    .filter(|r| r.get::<_, i64>(1) > now)
    .map(|r| r.get(0)))
}

impl PostgresStore {
    pub(super) fn take_data(
        &self,
        table: &str,
        key: &str,
        value: &str,
        now: i64,
    ) -> Result<Option<String>> {
        self.with(|c| take(c, table, key, value, now))
    }
}

impl SignIns for PostgresStore {
    fn insert_flow(&self, flow: &PendingFlow, limit: PendingLimit) -> Result<bool> {
        let data = serde_json::to_string(flow)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO pending_flows (id, data, expires_at) VALUES ($1, $2, $3)",
                &[&flow.id, &data, &flow.expires_at],
            )
        })
    }

    fn flow(&self, id: &str, now: i64) -> Result<Option<PendingFlow>> {
        let json: Option<String> = self.with(|c| {
            Ok(c.query_opt(
                "SELECT data FROM pending_flows WHERE id = $1 AND expires_at > $2",
                &[&id, &now],
            )?
            .map(|r| r.get(0)))
        })?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn record_failed_login(&self, id: &str) -> Result<u32> {
        let n: Option<i32> = self.with(|c| {
            Ok(c.query_opt(
                "UPDATE pending_flows SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
                &[&id],
            )?
            .map(|r| r.get(0)))
        })?;
        Ok(n.and_then(|n| u32::try_from(n).ok()).unwrap_or(u32::MAX))
    }

    fn delete_flow(&self, id: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM pending_flows WHERE id = $1", &[&id])? == 1))
    }

    fn reserve_login_attempt(
        &self,
        bucket: &str,
        since: i64,
        limit: u32,
        now: i64,
    ) -> Result<Option<i64>> {
        let limit = i64::from(limit);
        self.tx(|tx| {
            // Attempts on one bucket count one after the other, on every replica.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOGIN_NAMESPACE, &bucket],
            )?;
            let counted: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM login_attempts WHERE bucket = $1 AND at >= $2",
                    &[&bucket, &since],
                )?
                .get(0);
            if counted >= limit {
                return Ok(None);
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO login_attempts (bucket, at, pending) VALUES ($1, $2, TRUE)
                     RETURNING id",
                    &[&bucket, &now],
                )?
                .get(0);
            Ok(Some(id))
        })
    }

    fn fail_login_attempt(&self, id: i64, now: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE login_attempts SET pending = FALSE, at = $2 WHERE id = $1",
                &[&id, &now],
            )?;
            Ok(())
        })
    }

    fn end_login_attempt(&self, id: i64, bucket: &str, clear_failures: bool) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM login_attempts WHERE id = $1", &[&id])?;
            if clear_failures {
                // Attempts still in flight stay counted.
                c.execute(
                    "DELETE FROM login_attempts WHERE bucket = $1 AND NOT pending",
                    &[&bucket],
                )?;
            }
            Ok(())
        })
    }

    fn insert_device(&self, secret_hash: &str, account: &str, expires_at: i64) -> Result<()> {
        let keep = i64::from(MAX_DEVICES);
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO devices (secret_hash, account, expires_at) VALUES ($1, $2, $3)",
                &[&secret_hash, &account, &expires_at],
            )?;
            tx.execute(
                "DELETE FROM devices WHERE account = $1 AND secret_hash NOT IN
                     (SELECT secret_hash FROM devices WHERE account = $1
                      ORDER BY expires_at DESC, secret_hash LIMIT $2)",
                &[&account, &keep],
            )?;
            Ok(())
        })
    }

    fn device_account(&self, secret_hash: &str, now: i64) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT account FROM devices WHERE secret_hash = $1 AND expires_at > $2",
                &[&secret_hash, &now],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn delete_device(&self, secret_hash: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM devices WHERE secret_hash = $1",
                &[&secret_hash],
            )?;
            Ok(())
        })
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
                "INSERT INTO idp_logins (state_hash, data, expires_at) VALUES ($1, $2, $3)",
                &[&state_hash, &data, &login.expires_at],
            )
        })
    }

    fn take_idp_login(&self, state_hash: &str, now: i64) -> Result<Option<IdpLogin>> {
        Ok(self
            .take_data("idp_logins", "state_hash", state_hash, now)?
            .map(|d| {
                serde_json::from_str(&d).context("stored identity-provider sign-in is malformed")
            })
            .transpose()?)
    }

    fn put_idp_user(&self, user: &IdpUserRecord) -> Result<()> {
        let groups = serde_json::to_string(&user.groups)?;
        // A sign-in that brought no refresh token (providers issue one at the first consent
        // only) keeps the one stored: the provider's earlier grant still checks the user.
        self.with(|c| {
            c.execute(
                "INSERT INTO idp_users (key, email, name, groups_json, updated_at,
                                        refresh_token, access_token, checked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (key) DO UPDATE SET email = $2, name = $3, groups_json = $4,
                     updated_at = $5,
                     refresh_token = COALESCE($6, idp_users.refresh_token),
                     access_token = COALESCE($7, idp_users.access_token), checked_at = $8",
                &[
                    &user.key,
                    &user.email,
                    &user.name,
                    &groups,
                    &user.updated_at,
                    &user.refresh_token,
                    &user.access_token,
                    &user.checked_at,
                ],
            )?;
            Ok(())
        })
    }

    fn idp_user(&self, key: &str) -> Result<Option<IdpUserRecord>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT key, email, name, groups_json, updated_at,
                        refresh_token, access_token, checked_at
                 FROM idp_users WHERE key = $1",
                &[&key],
            )
        })?;
        row.map(|r| idp_user_from_row(&r)).transpose()
    }
}

/// An `idp_users` row selected as `key, email, name, groups_json, updated_at, refresh_token,
/// access_token, checked_at`.
pub(super) fn idp_user_from_row(r: &postgres::Row) -> Result<IdpUserRecord> {
    let groups: String = r.get(3);
    Ok(IdpUserRecord {
        key: r.get(0),
        email: r.get(1),
        name: r.get(2),
        groups: serde_json::from_str(&groups).context("stored groups are malformed")?,
        updated_at: r.get(4),
        refresh_token: r.get(5),
        access_token: r.get(6),
        checked_at: r.get(7),
    })
}

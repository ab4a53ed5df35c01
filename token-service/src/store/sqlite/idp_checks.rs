//! IdpChecks on SQLite.

use rusqlite::{params, OptionalExtension};

use super::sign_ins::idp_user_from_row;
use super::SqliteStore;
use crate::store::error::Result;
use crate::store::idp_checks::IdpChecks;
use crate::store::records::IdpUserRecord;

impl IdpChecks for SqliteStore {
    fn lease_idp_check(
        &self,
        holder: &str,
        due: i64,
        now: i64,
        until: i64,
    ) -> Result<Option<IdpUserRecord>> {
        // One statement: the lease is taken on the row only if still free, and the row is
        // read back as it stands then.
        let row = self
            .conn()?
            .query_row(
                "UPDATE idp_users SET lease_holder = ?1, lease_until = ?4
                 WHERE key = (
                     SELECT u.key FROM idp_users u
                     WHERE u.checked_at <= ?2
                       AND (u.lease_until IS NULL OR u.lease_until <= ?3)
                       AND (EXISTS (SELECT 1 FROM grants g JOIN refresh_tokens t ON t.grant_id = g.id
                                    WHERE g.email = u.key AND g.revoked_at IS NULL
                                      AND t.used_at IS NULL AND t.expires_at > ?3)
                         OR EXISTS (SELECT 1 FROM sessions s
                                    WHERE s.email = u.key AND s.revoked_at IS NULL AND s.expires_at > ?3)
                         OR EXISTS (SELECT 1 FROM app_sessions a
                                    WHERE a.user = u.key AND a.expires_at > ?3))
                     ORDER BY u.checked_at, u.key LIMIT 1)
                   AND (lease_until IS NULL OR lease_until <= ?3)
                 RETURNING key, email, name, groups_json, updated_at,
                           refresh_token, access_token, checked_at",
                params![holder, due, now, until],
                idp_user_from_row,
            )
            .optional()?;
        row.transpose()
    }

    fn finish_idp_check(&self, holder: &str, user: &IdpUserRecord) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE idp_users SET email = ?3, name = ?4, groups_json = ?5, updated_at = ?6,
                 refresh_token = ?7, access_token = ?8, checked_at = ?9,
                 lease_holder = NULL, lease_until = NULL
             WHERE key = ?1 AND lease_holder = ?2",
            params![
                user.key,
                holder,
                user.email,
                user.name,
                serde_json::to_string(&user.groups)?,
                user.updated_at,
                user.refresh_token,
                user.access_token,
                user.checked_at
            ],
        )?;
        Ok(n == 1)
    }

    fn defer_idp_check(&self, holder: &str, user: &IdpUserRecord, retry_at: i64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE idp_users SET refresh_token = ?3, access_token = ?4, lease_until = ?5
             WHERE key = ?1 AND lease_holder = ?2",
            params![
                user.key,
                holder,
                user.refresh_token,
                user.access_token,
                retry_at
            ],
        )?;
        Ok(())
    }
}

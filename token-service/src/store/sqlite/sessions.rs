//! Sessions on SQLite.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::revocations::append_revocation;
use super::{grant_from_row, SqliteStore};
use crate::store::error::Result;
use crate::store::records::{Grant, GrantFilter, RefreshToken, Revoked, RevokedKind, Session};
use crate::store::sessions::Sessions;

impl Sessions for SqliteStore {
    fn insert_session(&self, secret_hash: &str, s: &Session) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO sessions (secret_hash, sid, email, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![secret_hash, s.sid, s.user, s.created_at, s.expires_at],
        )?;
        Ok(())
    }

    fn session(&self, secret_hash: &str, now: i64) -> Result<Option<Session>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT sid, email, created_at, expires_at FROM sessions
                 WHERE secret_hash = ?1 AND expires_at > ?2 AND revoked_at IS NULL",
                params![secret_hash, now],
                |r| {
                    Ok(Session {
                        sid: r.get(0)?,
                        user: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn session_live(&self, sid: &str, now: i64) -> Result<bool> {
        Ok(self.conn()?.query_row(
            "SELECT EXISTS(SELECT 1 FROM sessions
                 WHERE sid = ?1 AND expires_at > ?2 AND revoked_at IS NULL)",
            params![sid, now],
            |r| r.get(0),
        )?)
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, client_id, email, sid, resource, scope, created_at, revoked_at FROM grants WHERE id = ?1",
                [id],
                grant_from_row,
            )
            .optional()?)
    }

    fn revoke_grant(&self, id: &str, now: i64, feed_until: i64) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        if n == 1 {
            append_revocation(&tx, RevokedKind::Grant, id, now, feed_until)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT token_hash, grant_id, created_at, expires_at, used_at FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(RefreshToken {
                        token_hash: r.get(0)?,
                        grant_id: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        used: r.get::<_, Option<i64>>(4)?.is_some(),
                    })
                },
            )
            .optional()?)
    }

    fn rotate_refresh_token(&self, old_hash: &str, new: &RefreshToken, now: i64) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL
             AND EXISTS (SELECT 1 FROM grants g WHERE g.id = refresh_tokens.grant_id AND g.revoked_at IS NULL)",
            params![old_hash, now],
        )?;
        if n != 1 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![new.token_hash, new.grant_id, new.created_at, new.expires_at],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn revoke_session(
        &self,
        secret_hash: &str,
        now: i64,
        feed_until: i64,
    ) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let sid: Option<String> = tx
            .query_row(
                "UPDATE sessions SET revoked_at = ?2
                 WHERE secret_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2
                 RETURNING sid",
                params![secret_hash, now],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(sid) = &sid {
            tx.execute("DELETE FROM app_sessions WHERE sid = ?1", [sid])?;
            tx.execute(
                "UPDATE grants SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
                params![sid, now],
            )?;
            tx.execute(
                "UPDATE auth_codes SET used = 1 WHERE sid = ?1 AND used = 0",
                [sid],
            )?;
            append_revocation(&tx, RevokedKind::Session, sid, now, feed_until)?;
        }
        tx.commit()?;
        Ok(sid)
    }

    fn revoke_sid(&self, sid: &str, now: i64, feed_until: i64) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE sessions SET revoked_at = ?2
             WHERE sid = ?1 AND revoked_at IS NULL AND expires_at > ?2",
            params![sid, now],
        )?;
        let apps = tx.execute("DELETE FROM app_sessions WHERE sid = ?1", [sid])?;
        let grants = tx.execute(
            "UPDATE grants SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
            params![sid, now],
        )?;
        // App sessions and grants may outlive their sign-in session's record: their TEs (all
        // carrying the sid) go too.
        if n == 1 || apps > 0 || grants > 0 {
            append_revocation(&tx, RevokedKind::Session, sid, now, feed_until)?;
        }
        tx.execute(
            "UPDATE auth_codes SET used = 1 WHERE sid = ?1 AND used = 0",
            [sid],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn users_with_live_grants(&self, now: i64) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT email FROM grants WHERE revoked_at IS NULL
             UNION SELECT email FROM sessions WHERE revoked_at IS NULL AND expires_at > ?1
             UNION SELECT user FROM app_sessions WHERE expires_at > ?1",
        )?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    fn revoke_user(
        &self,
        user: &str,
        filter: &GrantFilter,
        now: i64,
        feed_until: i64,
    ) -> Result<Revoked> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (client, resource) = (filter.client_id.as_deref(), filter.resource.as_deref());
        let grant_ids = {
            let mut stmt = tx.prepare(
                "UPDATE grants SET revoked_at = ?2
                 WHERE email = ?1 AND revoked_at IS NULL
                   AND (?3 IS NULL OR client_id = ?3) AND (?4 IS NULL OR resource = ?4)
                 RETURNING id",
            )?;
            let rows = stmt.query_map(params![user, now, client, resource], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()?
        };
        let codes = tx.execute(
            "UPDATE auth_codes SET used = 1
             WHERE user = ?1 AND used = 0
               AND (?2 IS NULL OR client_id = ?2) AND (?3 IS NULL OR resource = ?3)",
            params![user, client, resource],
        )?;
        let (mut sessions, mut app_sessions) = (0, 0);
        if filter.all() {
            sessions = tx.execute(
                "UPDATE sessions SET revoked_at = ?2
                 WHERE email = ?1 AND revoked_at IS NULL AND expires_at > ?2",
                params![user, now],
            )?;
            app_sessions = tx.execute("DELETE FROM app_sessions WHERE user = ?1", [user])?;
            // Every TE of the user issued until now, whatever grant or session it came from.
            append_revocation(&tx, RevokedKind::User, user, now, feed_until)?;
        } else {
            for id in &grant_ids {
                append_revocation(&tx, RevokedKind::Grant, id, now, feed_until)?;
            }
        }
        tx.commit()?;
        Ok(Revoked {
            grant_ids,
            codes: codes as u64,
            sessions: sessions as u64,
            app_sessions: app_sessions as u64,
        })
    }
}

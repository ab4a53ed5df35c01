//! Sessions on PostgreSQL.

use super::{append_revocation, grant_from_row, PostgresStore};
use crate::store::error::Result;
use crate::store::records::{Grant, GrantFilter, RefreshToken, Revoked, RevokedKind, Session};
use crate::store::sessions::Sessions;

impl Sessions for PostgresStore {
    fn insert_session(&self, secret_hash: &str, s: &Session) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (secret_hash, sid, email, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&secret_hash, &s.sid, &s.user, &s.created_at, &s.expires_at],
            )?;
            Ok(())
        })
    }

    fn session(&self, secret_hash: &str, now: i64) -> Result<Option<Session>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT sid, email, created_at, expires_at FROM sessions
                 WHERE secret_hash = $1 AND expires_at > $2 AND revoked_at IS NULL",
                &[&secret_hash, &now],
            )?
            .map(|r| Session {
                sid: r.get(0),
                user: r.get(1),
                created_at: r.get(2),
                expires_at: r.get(3),
            }))
        })
    }

    fn session_live(&self, sid: &str, now: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT EXISTS(SELECT 1 FROM sessions
                     WHERE sid = $1 AND expires_at > $2 AND revoked_at IS NULL)",
                &[&sid, &now],
            )?
            .get(0))
        })
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT id, client_id, email, sid, resource, scope, created_at, revoked_at
                 FROM grants WHERE id = $1",
                &[&id],
            )?
            .map(|r| grant_from_row(&r)))
        })
    }

    fn revoke_grant(&self, id: &str, now: i64, feed_until: i64) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )?;
            if n == 1 {
                append_revocation(tx, RevokedKind::Grant, id, now, feed_until)?;
            }
            Ok(())
        })
    }

    fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT token_hash, grant_id, created_at, expires_at, used_at
                 FROM refresh_tokens WHERE token_hash = $1",
                &[&token_hash],
            )?
            .map(|r| RefreshToken {
                token_hash: r.get(0),
                grant_id: r.get(1),
                created_at: r.get(2),
                expires_at: r.get(3),
                used: r.get::<_, Option<i64>>(4).is_some(),
            }))
        })
    }

    fn rotate_refresh_token(&self, old_hash: &str, new: &RefreshToken, now: i64) -> Result<bool> {
        self.tx(|tx| {
            // One conditional UPDATE: of two rotations at once, the second waits on the row
            // and then finds it used. The grant is locked (FOR SHARE) so a revocation
            // committing meanwhile is seen, not raced.
            let n = tx.execute(
                "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL
                 AND EXISTS (SELECT 1 FROM grants g
                             WHERE g.id = refresh_tokens.grant_id AND g.revoked_at IS NULL
                             FOR SHARE)",
                &[&old_hash, &now],
            )?;
            if n != 1 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &new.token_hash,
                    &new.grant_id,
                    &new.created_at,
                    &new.expires_at,
                ],
            )?;
            Ok(true)
        })
    }

    fn revoke_session(
        &self,
        secret_hash: &str,
        now: i64,
        feed_until: i64,
    ) -> Result<Option<String>> {
        self.tx(|tx| {
            let sid: Option<String> = tx
                .query_opt(
                    "UPDATE sessions SET revoked_at = $2
                     WHERE secret_hash = $1 AND revoked_at IS NULL AND expires_at > $2
                     RETURNING sid",
                    &[&secret_hash, &now],
                )?
                .map(|r| r.get(0));
            if let Some(sid) = &sid {
                end_session_grants(tx, sid, now)?;
                append_revocation(tx, RevokedKind::Session, sid, now, feed_until)?;
            }
            Ok(sid)
        })
    }

    fn revoke_sid(&self, sid: &str, now: i64, feed_until: i64) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE sessions SET revoked_at = $2
                 WHERE sid = $1 AND revoked_at IS NULL AND expires_at > $2",
                &[&sid, &now],
            )?;
            let ended = end_session_grants(tx, sid, now)?;
            // App sessions and grants may outlive their sign-in session's record: their TEs
            // (all carrying the sid) go too.
            if n == 1 || ended > 0 {
                append_revocation(tx, RevokedKind::Session, sid, now, feed_until)?;
            }
            Ok(n == 1)
        })
    }

    fn users_with_live_grants(&self, now: i64) -> Result<Vec<String>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT email FROM grants WHERE revoked_at IS NULL
                 UNION SELECT email FROM sessions WHERE revoked_at IS NULL AND expires_at > $1
                 UNION SELECT \"user\" FROM app_sessions WHERE expires_at > $1",
                &[&now],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn revoke_user(
        &self,
        user: &str,
        filter: &GrantFilter,
        now: i64,
        feed_until: i64,
    ) -> Result<Revoked> {
        let (client, resource) = (filter.client_id.as_deref(), filter.resource.as_deref());
        self.tx(|tx| {
            let grant_ids: Vec<String> = tx
                .query(
                    "UPDATE grants SET revoked_at = $2
                     WHERE email = $1 AND revoked_at IS NULL
                       AND ($3::TEXT IS NULL OR client_id = $3)
                       AND ($4::TEXT IS NULL OR resource = $4)
                     RETURNING id",
                    &[&user, &now, &client, &resource],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let codes = tx.execute(
                "UPDATE auth_codes SET used = TRUE
                 WHERE \"user\" = $1 AND NOT used
                   AND ($2::TEXT IS NULL OR client_id = $2)
                   AND ($3::TEXT IS NULL OR resource = $3)",
                &[&user, &client, &resource],
            )?;
            let (mut sessions, mut app_sessions) = (0, 0);
            if filter.all() {
                sessions = tx.execute(
                    "UPDATE sessions SET revoked_at = $2
                     WHERE email = $1 AND revoked_at IS NULL AND expires_at > $2",
                    &[&user, &now],
                )?;
                app_sessions =
                    tx.execute("DELETE FROM app_sessions WHERE \"user\" = $1", &[&user])?;
                // Every TE of the user issued until now, whatever grant or session it came from.
                append_revocation(tx, RevokedKind::User, user, now, feed_until)?;
            } else {
                for id in &grant_ids {
                    append_revocation(tx, RevokedKind::Grant, id, now, feed_until)?;
                }
            }
            Ok(Revoked {
                grant_ids,
                codes,
                sessions,
                app_sessions,
            })
        })
    }
}

/// Ends what was signed in through the session `sid`: its app sessions, its grants and its
/// codes not yet redeemed. Returns how many app sessions and grants it ended.
fn end_session_grants(
    tx: &mut postgres::Transaction<'_>,
    sid: &str,
    now: i64,
) -> Result<u64, postgres::Error> {
    let apps = tx.execute("DELETE FROM app_sessions WHERE sid = $1", &[&sid])?;
    let grants = tx.execute(
        "UPDATE grants SET revoked_at = $2 WHERE sid = $1 AND revoked_at IS NULL",
        &[&sid, &now],
    )?;
    tx.execute(
        "UPDATE auth_codes SET used = TRUE WHERE sid = $1 AND NOT used",
        &[&sid],
    )?;
    Ok(apps + grants)
}

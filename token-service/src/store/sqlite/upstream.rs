//! UpstreamTokens on SQLite.

use anyhow::Context;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::error::Result;
use crate::store::records::{IdpLogin, PendingLimit, Reseal, UpstreamFlow, UpstreamRecord};
use crate::store::upstream::UpstreamTokens;

impl UpstreamTokens for SqliteStore {
    fn upstream_token(&self, user: &str, route: &str) -> Result<Option<UpstreamRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT access_token, refresh_token, issued_at, expires_at, granted_at, scope,
                        extra_scope, refused_until, last_refused_at, after_refusal, version,
                        authorization_server
                 FROM upstream_tokens WHERE user = ?1 AND route = ?2",
                params![user, route],
                |r| {
                    Ok(UpstreamRecord {
                        user: user.to_owned(),
                        route: route.to_owned(),
                        access_token: r.get(0)?,
                        refresh_token: r.get(1)?,
                        issued_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        granted_at: r.get(4)?,
                        scope: r.get(5)?,
                        extra_scope: r.get(6)?,
                        refused_until: r.get(7)?,
                        last_refused_at: r.get(8)?,
                        after_refusal: r.get(9)?,
                        version: r.get(10)?,
                        authorization_server: r.get(11)?,
                    })
                },
            )
            .optional()?)
    }

    fn put_upstream_token(&self, t: &UpstreamRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO upstream_tokens (user, route, access_token, refresh_token, issued_at,
                 expires_at, granted_at, scope, extra_scope, refused_until, last_refused_at,
                 after_refusal, authorization_server, refresh_lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL)
             ON CONFLICT (user, route) DO UPDATE SET
                 access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                 issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                 granted_at = excluded.granted_at, scope = excluded.scope,
                 extra_scope = excluded.extra_scope, refused_until = excluded.refused_until,
                 last_refused_at = excluded.last_refused_at,
                 after_refusal = excluded.after_refusal,
                 authorization_server = excluded.authorization_server, refresh_lease = NULL,
                 version = upstream_tokens.version + 1",
            params![
                t.user,
                t.route,
                t.access_token,
                t.refresh_token,
                t.issued_at,
                t.expires_at,
                t.granted_at,
                t.scope,
                t.extra_scope,
                t.refused_until,
                t.last_refused_at,
                t.after_refusal,
                t.authorization_server
            ],
        )?;
        Ok(())
    }

    fn claim_upstream_refresh(
        &self,
        user: &str,
        route: &str,
        version: i64,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET refresh_lease = ?5
             WHERE user = ?1 AND route = ?2 AND version = ?3
               AND (refresh_lease IS NULL OR refresh_lease <= ?4)",
            params![user, route, version, now, until],
        )?;
        Ok(n == 1)
    }

    fn put_refreshed_upstream_token(&self, t: &UpstreamRecord, version: i64) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET access_token = ?4, refresh_token = ?5, issued_at = ?6,
                 expires_at = ?7, scope = ?8, refresh_lease = NULL, version = version + 1
             WHERE user = ?1 AND route = ?2 AND version = ?3 AND access_token IS NOT NULL",
            params![
                t.user,
                t.route,
                version,
                t.access_token,
                t.refresh_token,
                t.issued_at,
                t.expires_at,
                t.scope
            ],
        )?;
        Ok(n == 1)
    }

    fn release_upstream_refresh(&self, user: &str, route: &str) -> Result<()> {
        self.conn()?.execute(
            "UPDATE upstream_tokens SET refresh_lease = NULL WHERE user = ?1 AND route = ?2",
            params![user, route],
        )?;
        Ok(())
    }

    fn drop_upstream_token(
        &self,
        user: &str,
        route: &str,
        version: i64,
        extra_scope: &str,
        refused_until: Option<i64>,
        refused_at: Option<i64>,
    ) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET access_token = NULL, refresh_token = NULL,
                 extra_scope = ?4, refused_until = ?5,
                 last_refused_at = COALESCE(?6, last_refused_at), refresh_lease = NULL,
                 version = version + 1
             WHERE user = ?1 AND route = ?2 AND version = ?3 AND access_token IS NOT NULL",
            params![user, route, version, extra_scope, refused_until, refused_at],
        )?;
        Ok(n == 1)
    }

    fn delete_upstream_token(&self, user: &str, route: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM upstream_tokens WHERE user = ?1 AND route = ?2",
            params![user, route],
        )?;
        Ok(n == 1)
    }

    fn upstream_tokens_not_sealed_with(
        &self,
        prefix: &[u8],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<UpstreamRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT user, route, access_token, refresh_token, issued_at, expires_at, granted_at,
                    scope, extra_scope, refused_until, last_refused_at, after_refusal, version,
                    authorization_server
             FROM upstream_tokens
             WHERE ((access_token IS NOT NULL AND substr(access_token, 1, ?2) IS NOT ?1)
                 OR (refresh_token IS NOT NULL AND substr(refresh_token, 1, ?2) IS NOT ?1))
               AND (?3 IS NULL OR (user, route) > (?3, ?4))
             ORDER BY user, route LIMIT ?5",
        )?;
        let (after_user, after_route) = after.unzip();
        let rows = stmt.query_map(
            params![prefix, prefix.len(), after_user, after_route, limit],
            |r| {
                Ok(UpstreamRecord {
                    user: r.get(0)?,
                    route: r.get(1)?,
                    access_token: r.get(2)?,
                    refresh_token: r.get(3)?,
                    issued_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    granted_at: r.get(6)?,
                    scope: r.get(7)?,
                    extra_scope: r.get(8)?,
                    refused_until: r.get(9)?,
                    last_refused_at: r.get(10)?,
                    after_refusal: r.get(11)?,
                    version: r.get(12)?,
                    authorization_server: r.get(13)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reseal_upstream_tokens(&self, moves: &[Reseal]) -> Result<Vec<bool>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut written = Vec::with_capacity(moves.len());
        {
            let mut stmt = tx.prepare(
                "UPDATE upstream_tokens SET access_token = ?6, refresh_token = ?7
                 WHERE user = ?1 AND route = ?2 AND version = ?3
                   AND access_token IS ?4 AND refresh_token IS ?5",
            )?;
            for m in moves {
                let n = stmt.execute(params![
                    m.user,
                    m.route,
                    m.version,
                    m.old_access_token,
                    m.old_refresh_token,
                    m.access_token,
                    m.refresh_token
                ])?;
                written.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(written)
    }

    fn live_flow_verifiers(&self, now: i64) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut verifiers = Vec::new();
        let mut stmt = conn.prepare("SELECT data FROM upstream_flows WHERE expires_at > ?1")?;
        for data in stmt.query_map([now], |r| r.get::<_, String>(0))? {
            let flow: UpstreamFlow =
                serde_json::from_str(&data?).context("stored upstream flow is malformed")?;
            verifiers.push(flow.pkce_verifier);
        }
        let mut stmt = conn.prepare("SELECT data FROM idp_logins WHERE expires_at > ?1")?;
        for data in stmt.query_map([now], |r| r.get::<_, String>(0))? {
            let login: IdpLogin = serde_json::from_str(&data?)
                .context("stored identity-provider sign-in is malformed")?;
            verifiers.push(login.pkce_verifier);
        }
        Ok(verifiers)
    }

    fn insert_upstream_flow(
        &self,
        state_hash: &str,
        flow: &UpstreamFlow,
        limit: PendingLimit,
    ) -> Result<bool> {
        let data = serde_json::to_string(flow)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO upstream_flows (state_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![state_hash, data, flow.expires_at],
            )
        })
    }

    fn take_upstream_flow(&self, state_hash: &str, now: i64) -> Result<Option<UpstreamFlow>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM upstream_flows WHERE state_hash = ?1 RETURNING data, expires_at",
                [state_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        Ok(data
            .map(|d| serde_json::from_str(&d).context("stored upstream flow is malformed"))
            .transpose()?)
    }
}

//! UpstreamTokens on PostgreSQL.

use anyhow::Context;

use super::PostgresStore;
use crate::store::error::Result;
use crate::store::records::{IdpLogin, PendingLimit, Reseal, UpstreamFlow, UpstreamRecord};
use crate::store::upstream::UpstreamTokens;

const COLUMNS: &str = "\"user\", route, access_token, refresh_token, issued_at, expires_at,
    granted_at, scope, extra_scope, refused_until, last_refused_at, after_refusal, version,
    authorization_server";

fn record(r: &postgres::Row) -> UpstreamRecord {
    UpstreamRecord {
        user: r.get(0),
        route: r.get(1),
        access_token: r.get(2),
        refresh_token: r.get(3),
        issued_at: r.get(4),
        expires_at: r.get(5),
        granted_at: r.get(6),
        scope: r.get(7),
        extra_scope: r.get(8),
        refused_until: r.get(9),
        last_refused_at: r.get(10),
        after_refusal: r.get(11),
        version: r.get(12),
        authorization_server: r.get(13),
    }
}

impl UpstreamTokens for PostgresStore {
    fn upstream_token(&self, user: &str, route: &str) -> Result<Option<UpstreamRecord>> {
        self.with(|c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM upstream_tokens WHERE \"user\" = $1 AND route = $2"
                ),
                &[&user, &route],
            )?
            .map(|r| record(&r)))
        })
    }

    fn put_upstream_token(&self, t: &UpstreamRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO upstream_tokens (\"user\", route, access_token, refresh_token,
                     issued_at, expires_at, granted_at, scope, extra_scope, refused_until,
                     last_refused_at, after_refusal, authorization_server, refresh_lease)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL)
                 ON CONFLICT (\"user\", route) DO UPDATE SET
                     access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                     issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                     granted_at = excluded.granted_at, scope = excluded.scope,
                     extra_scope = excluded.extra_scope, refused_until = excluded.refused_until,
                     last_refused_at = excluded.last_refused_at,
                     after_refusal = excluded.after_refusal,
                     authorization_server = excluded.authorization_server, refresh_lease = NULL,
                     version = upstream_tokens.version + 1",
                &[
                    &t.user,
                    &t.route,
                    &t.access_token,
                    &t.refresh_token,
                    &t.issued_at,
                    &t.expires_at,
                    &t.granted_at,
                    &t.scope,
                    &t.extra_scope,
                    &t.refused_until,
                    &t.last_refused_at,
                    &t.after_refusal,
                    &t.authorization_server,
                ],
            )?;
            Ok(())
        })
    }

    fn claim_upstream_refresh(
        &self,
        user: &str,
        route: &str,
        version: i64,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        // One conditional UPDATE: a second claimant waits on the row, then finds the lease
        // taken (or the row moved on to another version).
        self.with(|c| {
            Ok(c.execute(
                "UPDATE upstream_tokens SET refresh_lease = $5
                 WHERE \"user\" = $1 AND route = $2 AND version = $3
                   AND (refresh_lease IS NULL OR refresh_lease <= $4)",
                &[&user, &route, &version, &now, &until],
            )? == 1)
        })
    }

    fn put_refreshed_upstream_token(&self, t: &UpstreamRecord, version: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE upstream_tokens SET access_token = $4, refresh_token = $5, issued_at = $6,
                     expires_at = $7, scope = $8, refresh_lease = NULL, version = version + 1
                 WHERE \"user\" = $1 AND route = $2 AND version = $3
                   AND access_token IS NOT NULL",
                &[
                    &t.user,
                    &t.route,
                    &version,
                    &t.access_token,
                    &t.refresh_token,
                    &t.issued_at,
                    &t.expires_at,
                    &t.scope,
                ],
            )? == 1)
        })
    }

    fn release_upstream_refresh(&self, user: &str, route: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE upstream_tokens SET refresh_lease = NULL WHERE \"user\" = $1 AND route = $2",
                &[&user, &route],
            )?;
            Ok(())
        })
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
        self.with(|c| {
            Ok(c.execute(
                "UPDATE upstream_tokens SET access_token = NULL, refresh_token = NULL,
                     extra_scope = $4, refused_until = $5,
                     last_refused_at = COALESCE($6, last_refused_at), refresh_lease = NULL,
                     version = version + 1
                 WHERE \"user\" = $1 AND route = $2 AND version = $3
                   AND access_token IS NOT NULL",
                &[
                    &user,
                    &route,
                    &version,
                    &extra_scope,
                    &refused_until,
                    &refused_at,
                ],
            )? == 1)
        })
    }

    fn delete_upstream_token(&self, user: &str, route: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM upstream_tokens WHERE \"user\" = $1 AND route = $2",
                &[&user, &route],
            )? == 1)
        })
    }

    fn upstream_tokens_not_sealed_with(
        &self,
        prefix: &[u8],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<UpstreamRecord>> {
        let len = i32::try_from(prefix.len()).unwrap_or(i32::MAX);
        let (after_user, after_route) = after.unzip();
        let limit = i64::from(limit);
        self.with(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {COLUMNS} FROM upstream_tokens
                     WHERE ((access_token IS NOT NULL
                             AND substring(access_token FROM 1 FOR $2) IS DISTINCT FROM $1)
                         OR (refresh_token IS NOT NULL
                             AND substring(refresh_token FROM 1 FOR $2) IS DISTINCT FROM $1))
                       AND ($3::text IS NULL OR (\"user\", route) > ($3::text, $4::text))
                     ORDER BY \"user\", route LIMIT $5"
                ),
                &[&prefix, &len, &after_user, &after_route, &limit],
            )?
            .iter()
            .map(record)
            .collect())
        })
    }

    fn reseal_upstream_tokens(&self, moves: &[Reseal]) -> Result<Vec<bool>> {
        self.tx(|tx| {
            let stmt = tx.prepare(
                "UPDATE upstream_tokens SET access_token = $6, refresh_token = $7
                 WHERE \"user\" = $1 AND route = $2 AND version = $3
                   AND access_token IS NOT DISTINCT FROM $4
                   AND refresh_token IS NOT DISTINCT FROM $5",
            )?;
            let mut written = Vec::with_capacity(moves.len());
            for m in moves {
                let n = tx.execute(
                    &stmt,
                    &[
                        &m.user,
                        &m.route,
                        &m.version,
                        &m.old_access_token,
                        &m.old_refresh_token,
                        &m.access_token,
                        &m.refresh_token,
                    ],
                )?;
                written.push(n == 1);
            }
            Ok(written)
        })
    }

    fn live_flow_verifiers(&self, now: i64) -> Result<Vec<String>> {
        let (flows, logins): (Vec<String>, Vec<String>) = self.with(|c| {
            let data =
                |c: &mut postgres::Client, sql: &str| -> Result<Vec<String>, postgres::Error> {
                    Ok(c.query(sql, &[&now])?.iter().map(|r| r.get(0)).collect())
                };
            Ok((
                data(c, "SELECT data FROM upstream_flows WHERE expires_at > $1")?,
                data(c, "SELECT data FROM idp_logins WHERE expires_at > $1")?,
            ))
        })?;
        let mut verifiers = Vec::with_capacity(flows.len() + logins.len());
        for d in flows {
            let flow: UpstreamFlow =
                serde_json::from_str(&d).context("stored upstream flow is malformed")?;
            verifiers.push(flow.pkce_verifier);
        }
        for d in logins {
            let login: IdpLogin = serde_json::from_str(&d)
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
                "INSERT INTO upstream_flows (state_hash, data, expires_at) VALUES ($1, $2, $3)",
                &[&state_hash, &data, &flow.expires_at],
            )
        })
    }

    fn take_upstream_flow(&self, state_hash: &str, now: i64) -> Result<Option<UpstreamFlow>> {
        Ok(self
            .take_data("upstream_flows", "state_hash", state_hash, now)?
            .map(|d| serde_json::from_str(&d).context("stored upstream flow is malformed"))
            .transpose()?)
    }
}

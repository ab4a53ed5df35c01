//! Codes on PostgreSQL.

use super::{append_revocation, PostgresStore};
use crate::store::codes::Codes;
use crate::store::error::Result;
use crate::store::records::{AuthCode, CodeLookup, Grant, Redemption, RefreshToken, RevokedKind};

impl Codes for PostgresStore {
    fn insert_code(&self, code_hash: &str, code: &AuthCode) -> Result<()> {
        let data = serde_json::to_string(code)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO auth_codes
                     (code_hash, data, expires_at, \"user\", sid, client_id, resource)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &code_hash,
                    &data,
                    &code.expires_at,
                    &code.user,
                    &code.sid,
                    &code.request.client_id,
                    &code.request.resource,
                ],
            )?;
            Ok(())
        })
    }

    fn code(&self, code_hash: &str) -> Result<CodeLookup> {
        let row: Option<(String, bool, Option<String>)> = self.with(|c| {
            Ok(c.query_opt(
                "SELECT data, used, grant_id FROM auth_codes WHERE code_hash = $1",
                &[&code_hash],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
        })?;
        Ok(match row {
            None => CodeLookup::Missing,
            Some((_, true, grant_id)) => CodeLookup::Reused { grant_id },
            Some((data, false, _)) => CodeLookup::Fresh(serde_json::from_str(&data)?),
        })
    }

    fn redeem_code(
        &self,
        code_hash: &str,
        issued: Option<(&Grant, Option<&RefreshToken>)>,
        now: i64,
        feed_until: i64,
    ) -> Result<Redemption> {
        self.tx(|tx| {
            // The row lock makes a second presentation wait for the first to commit, and
            // then read "used".
            let row = tx.query_opt(
                "SELECT used, grant_id FROM auth_codes WHERE code_hash = $1 FOR UPDATE",
                &[&code_hash],
            )?;
            let Some(row) = row else {
                return Ok(Redemption::Missing);
            };
            let (used, grant_id): (bool, Option<String>) = (row.get(0), row.get(1));
            if used {
                if let Some(id) = grant_id {
                    let n = tx.execute(
                        "UPDATE grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                        &[&id, &now],
                    )?;
                    if n == 1 {
                        append_revocation(tx, RevokedKind::Grant, &id, now, feed_until)?;
                    }
                }
                return Ok(Redemption::Replayed);
            }
            let grant_id = match issued {
                None => None,
                Some((g, refresh)) => {
                    tx.execute(
                        "INSERT INTO grants (id, client_id, email, sid, resource, scope, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&g.id, &g.client_id, &g.user, &g.sid, &g.resource, &g.scope, &g.created_at],
                    )?;
                    if let Some(r) = refresh {
                        tx.execute(
                            "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at)
                             VALUES ($1, $2, $3, $4)",
                            &[&r.token_hash, &r.grant_id, &r.created_at, &r.expires_at],
                        )?;
                    }
                    // A DCR client with a grant is in use: not expired as unused.
                    tx.execute(
                        "UPDATE clients SET granted_at = COALESCE(granted_at, $2), idle_since = NULL
                         WHERE client_id = $1",
                        &[&g.client_id, &now],
                    )?;
                    Some(g.id.as_str())
                }
            };
            tx.execute(
                "UPDATE auth_codes SET used = TRUE, grant_id = $2 WHERE code_hash = $1",
                &[&code_hash, &grant_id],
            )?;
            Ok(Redemption::Redeemed)
        })
    }
}

//! Codes on SQLite.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::revocations::append_revocation;
use super::SqliteStore;
use crate::store::codes::Codes;
use crate::store::error::Result;
use crate::store::records::{AuthCode, CodeLookup, Grant, Redemption, RefreshToken, RevokedKind};

impl Codes for SqliteStore {
    fn insert_code(&self, code_hash: &str, code: &AuthCode) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO auth_codes (code_hash, data, expires_at, user, sid, client_id, resource)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                code_hash,
                serde_json::to_string(code)?,
                code.expires_at,
                code.user,
                code.sid,
                code.request.client_id,
                code.request.resource
            ],
        )?;
        Ok(())
    }

    fn code(&self, code_hash: &str) -> Result<CodeLookup> {
        let row: Option<(String, bool, Option<String>)> = self
            .conn()?
            .query_row(
                "SELECT data, used, grant_id FROM auth_codes WHERE code_hash = ?1",
                [code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
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
        let mut conn = self.conn()?;
        // IMMEDIATE: take the write lock before reading, so two processes sharing the file
        // cannot both read "unused".
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(bool, Option<String>)> = tx
            .query_row(
                "SELECT used, grant_id FROM auth_codes WHERE code_hash = ?1",
                [code_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let out = match row {
            None => Redemption::Missing,
            Some((true, grant_id)) => {
                if let Some(id) = grant_id {
                    let n = tx.execute(
                        "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now],
                    )?;
                    if n == 1 {
                        append_revocation(&tx, RevokedKind::Grant, &id, now, feed_until)?;
                    }
                }
                Redemption::Replayed
            }
            Some((false, _)) => {
                let grant_id = match issued {
                    None => None,
                    Some((g, refresh)) => {
                        tx.execute(
                            "INSERT INTO grants (id, client_id, email, sid, resource, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            params![g.id, g.client_id, g.user, g.sid, g.resource, g.scope, g.created_at],
                        )?;
                        if let Some(r) = refresh {
                            tx.execute(
                                "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                                params![r.token_hash, r.grant_id, r.created_at, r.expires_at],
                            )?;
                        }
                        // A DCR client with a grant is in use: not expired as unused.
                        tx.execute(
                            "UPDATE clients SET granted_at = COALESCE(granted_at, ?2), idle_since = NULL
                             WHERE client_id = ?1",
                            params![g.client_id, now],
                        )?;
                        Some(g.id.as_str())
                    }
                };
                tx.execute(
                    "UPDATE auth_codes SET used = 1, grant_id = ?2 WHERE code_hash = ?1",
                    params![code_hash, grant_id],
                )?;
                Redemption::Redeemed
            }
        };
        tx.commit()?;
        Ok(out)
    }
}

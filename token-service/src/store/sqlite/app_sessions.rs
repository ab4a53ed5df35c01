//! AppSessions on SQLite.

use anyhow::Context;
use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::store::app_sessions::AppSessions;
use crate::store::error::Result;
use crate::store::records::{AppCode, AppSession};

impl AppSessions for SqliteStore {
    fn insert_app_code(&self, code_hash: &str, code: &AppCode) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO app_codes (code_hash, data, expires_at) VALUES (?1, ?2, ?3)",
            params![code_hash, serde_json::to_string(code)?, code.expires_at],
        )?;
        Ok(())
    }

    fn take_app_code(&self, code_hash: &str, now: i64) -> Result<Option<AppCode>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM app_codes WHERE code_hash = ?1 RETURNING data, expires_at",
                [code_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        Ok(data
            .map(|d| serde_json::from_str(&d).context("stored app code is malformed"))
            .transpose()?)
    }

    fn insert_app_session(&self, secret_hash: &str, s: &AppSession) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO app_sessions (secret_hash, route, user, sid, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                secret_hash,
                s.route,
                s.user,
                s.sid,
                s.created_at,
                s.expires_at
            ],
        )?;
        Ok(())
    }

    fn app_session(&self, secret_hash: &str, now: i64) -> Result<Option<AppSession>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT route, user, sid, created_at, expires_at FROM app_sessions
                 WHERE secret_hash = ?1 AND expires_at > ?2",
                params![secret_hash, now],
                |r| {
                    Ok(AppSession {
                        route: r.get(0)?,
                        user: r.get(1)?,
                        sid: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn delete_app_session(&self, secret_hash: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM app_sessions WHERE secret_hash = ?1",
            [secret_hash],
        )?;
        Ok(n == 1)
    }
}

//! AppSessions on PostgreSQL.

use anyhow::Context;

use super::PostgresStore;
use crate::store::app_sessions::AppSessions;
use crate::store::error::Result;
use crate::store::records::{AppCode, AppSession};

impl AppSessions for PostgresStore {
    fn insert_app_code(&self, code_hash: &str, code: &AppCode) -> Result<()> {
        let data = serde_json::to_string(code)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO app_codes (code_hash, data, expires_at) VALUES ($1, $2, $3)",
                &[&code_hash, &data, &code.expires_at],
            )?;
            Ok(())
        })
    }

    fn take_app_code(&self, code_hash: &str, now: i64) -> Result<Option<AppCode>> {
        let data: Option<String> = self.with(|c| {
            Ok(c.query_opt(
                "DELETE FROM app_codes WHERE code_hash = $1 RETURNING data, expires_at",
                &[&code_hash],
            )?
            .filter(|r| r.get::<_, i64>(1) > now)
            .map(|r| r.get(0)))
        })?;
        Ok(data
            .map(|d| serde_json::from_str(&d).context("stored app code is malformed"))
            .transpose()?)
    }

    fn insert_app_session(&self, secret_hash: &str, s: &AppSession) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO app_sessions (secret_hash, route, \"user\", sid, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&secret_hash, &s.route, &s.user, &s.sid, &s.created_at, &s.expires_at],
            )?;
            Ok(())
        })
    }

    fn app_session(&self, secret_hash: &str, now: i64) -> Result<Option<AppSession>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT route, \"user\", sid, created_at, expires_at FROM app_sessions
                 WHERE secret_hash = $1 AND expires_at > $2",
                &[&secret_hash, &now],
            )?
            .map(|r| AppSession {
                route: r.get(0),
                user: r.get(1),
                sid: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
            }))
        })
    }

    fn delete_app_session(&self, secret_hash: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM app_sessions WHERE secret_hash = $1",
                &[&secret_hash],
            )? == 1)
        })
    }
}

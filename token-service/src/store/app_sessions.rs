//! Browser sign-in on `mcp: client` routes: one-time app codes and app sessions.

use super::error::Result;
use super::records::{AppCode, AppSession};

pub trait AppSessions {
    fn insert_app_code(&self, code_hash: &str, code: &AppCode) -> Result<()>;

    /// Takes an unexpired app code (single use: it is gone afterwards either way).
    fn take_app_code(&self, code_hash: &str, now: i64) -> Result<Option<AppCode>>;

    fn insert_app_session(&self, secret_hash: &str, session: &AppSession) -> Result<()>;

    fn app_session(&self, secret_hash: &str, now: i64) -> Result<Option<AppSession>>;

    /// Ends an app session; false when there was none.
    fn delete_app_session(&self, secret_hash: &str) -> Result<bool>;
}

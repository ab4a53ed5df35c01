//! Housekeeping across aggregates.

use super::error::Result;
use super::records::Retention;

pub trait Maintenance {
    /// Deletes expired records, DCR clients included (per `retention`).
    fn sweep(&self, now: i64, retention: &Retention) -> Result<()>;
}

//! What a store call can fail with, typed where the caller can act on it: a database that
//! cannot be reached answers `503` (retry), never a `500` with a stack of context.

use std::fmt;

#[derive(Debug)]
pub enum StoreError {
    /// The database cannot be reached, or is too busy to answer in time: retry later.
    Unavailable(String),
    /// A concurrent writer won (a serialization failure or a duplicate key).
    Conflict(String),
    /// Anything else: a bug, or a stored row that does not read back.
    Internal(anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The store error somewhere in `e`'s chain, if there is one.
    pub fn find(e: &anyhow::Error) -> Option<&StoreError> {
        e.chain().find_map(|c| c.downcast_ref::<StoreError>())
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            StoreError::Conflict(why) => write!(f, "store conflict: {why}"),
            StoreError::Internal(e) => write!(f, "store error: {e:#}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        StoreError::Internal(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Internal(anyhow::Error::new(e).context("a stored record does not read back"))
    }
}

//! The ledger of assertion ids (`jti`) already used: a client assertion (`private_key_jwt`) or
//! an ID-JAG is accepted once. Every replica writes to the one table, so a replay is refused
//! wherever it arrives; rows go with the sweep once the assertion has expired.

use super::error::Result;

/// Longest `jti` the ledger keeps, in bytes (longer ones are refused before they get here).
pub const MAX_JTI_LEN: usize = 256;

pub trait AssertionIds {
    /// Records `jti` of `issuer` (the client for a client assertion, the identity provider for
    /// an ID-JAG) until `expires_at`, unless it is recorded already: true the first time, false
    /// for a replay. One statement, so two replicas recording the same id at once cannot both
    /// get true.
    fn use_assertion_id(&self, issuer: &str, jti: &str, expires_at: i64) -> Result<bool>;
}

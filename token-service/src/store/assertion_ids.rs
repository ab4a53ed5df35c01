//! The ledger of assertion ids (`jti`) already used: a client assertion (`private_key_jwt`) or
//! an ID-JAG is accepted once. Every replica writes to the one table, so a replay is refused
//! wherever it arrives; rows go with the sweep once the assertion has expired.

use super::error::Result;

/// Longest `jti` the ledger keeps, in bytes (longer ones are refused before they get here).
pub const MAX_JTI_LEN: usize = 256;

/// The ledger's name for the jtis of a client's assertions (`private_key_jwt`): apart from any
/// issuer's, even when a client_id is spelled like an issuer URL.
pub fn client_assertions(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// The ledger's name for the jtis of the ID-JAGs an identity provider (`iss`) issued.
pub fn id_jag_issuer(iss: &str) -> String {
    format!("id-jag:{iss}")
}

pub trait AssertionIds {
    /// Records `jti` of `issuer` ([`client_assertions`] for a client assertion, [`id_jag_issuer`]
    /// for an ID-JAG) until `expires_at`, unless it is recorded already: true the first time, false
    /// for a replay. One statement, so two replicas recording the same id at once cannot both
    /// get true.
    fn use_assertion_id(&self, issuer: &str, jti: &str, expires_at: i64) -> Result<bool>;
}

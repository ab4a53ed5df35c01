//! The gateway's own registrations (RFC 7591 DCR) at upstream authorization servers, one per
//! server, keyed by its issuer. The registration (client id, client secret if any, when, the
//! redirect URI registered) is kept sealed with the encryption key: the store never sees the
//! secret in clear.

use super::error::Result;

/// One registration as stored: `sealed` is what `upstream_discovery::registration` sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamRegistrationRecord {
    /// The authorization server's issuer.
    pub issuer: String,
    pub sealed: Vec<u8>,
    pub registered_at: i64,
}

impl std::fmt::Debug for UpstreamRegistrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRegistrationRecord")
            .field("issuer", &self.issuer)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("registered_at", &self.registered_at)
            .finish()
    }
}

pub trait UpstreamRegistrations {
    fn upstream_registration(&self, issuer: &str) -> Result<Option<UpstreamRegistrationRecord>>;

    /// Stores `record` unless the issuer already has one (then nothing is written and this is
    /// false): of replicas registering at once, the first stored is kept, and the others read
    /// it.
    fn insert_upstream_registration(&self, record: &UpstreamRegistrationRecord) -> Result<bool>;

    /// Deletes the issuer's registration (the server no longer knows the client, or it can no
    /// longer be opened); whether there was one.
    fn delete_upstream_registration(&self, issuer: &str) -> Result<bool>;
}

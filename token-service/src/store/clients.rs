//! DCR clients and the consents users gave them.

use super::error::Result;
use super::records::StoredClient;

pub trait Clients {
    /// Stores a DCR client unless `max_unused` registered clients are still waiting for
    /// their first grant (then false: nothing stored).
    fn insert_client(&self, client: &StoredClient, max_unused: u64) -> Result<bool>;

    fn client(&self, client_id: &str) -> Result<Option<StoredClient>>;

    /// The scopes `email` approved for this client and resource, if any.
    fn consent(&self, email: &str, client_id: &str, resource: &str) -> Result<Option<String>>;

    /// Stores (replaces) the approved scope set for this user, client and resource.
    fn record_consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        now: i64,
    ) -> Result<()>;
}

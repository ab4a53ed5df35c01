//! Users' upstream provider tokens (sealed by the vault) and the consents in progress that obtain them.

use super::error::Result;
use super::records::{PendingLimit, Reseal, UpstreamFlow, UpstreamRecord};

pub trait UpstreamTokens {
    fn upstream_token(&self, user: &str, route: &str) -> Result<Option<UpstreamRecord>>;

    /// Writes the whole row (tokens, times, scopes), ending any refresh lease on it.
    fn put_upstream_token(&self, record: &UpstreamRecord) -> Result<()>;

    /// Takes the row's refresh lease until `until` if the row is still at `version` (the one
    /// the caller read and will refresh) and no other holder's lease runs past `now`: one
    /// refresh per grant across every replica sharing the database, and never one with a
    /// refresh token another holder has rotated out meanwhile.
    fn claim_upstream_refresh(
        &self,
        user: &str,
        route: &str,
        version: i64,
        now: i64,
        until: i64,
    ) -> Result<bool>;

    /// Stores a refresh's tokens (access and refresh token, `issued_at`, `expires_at`,
    /// `scope` of `record`) and ends the lease, if the row is still at `version` (the one
    /// refreshed); false when it was dropped or replaced meanwhile (nothing written). The
    /// row's other fields (scopes asked for, refusals) stay as they are.
    fn put_refreshed_upstream_token(&self, record: &UpstreamRecord, version: i64) -> Result<bool>;

    /// Ends a refresh lease without a new token (the refresh failed transiently).
    fn release_upstream_refresh(&self, user: &str, route: &str) -> Result<()>;

    /// Clears the tokens of the row if it is still at `version` (a token refreshed or
    /// granted meanwhile is not dropped by a stale refusal); records `extra_scope`,
    /// `refused_until` and, for a refusal by a server, `refused_at`. Returns whether it
    /// dropped.
    fn drop_upstream_token(
        &self,
        user: &str,
        route: &str,
        version: i64,
        extra_scope: &str,
        refused_until: Option<i64>,
        refused_at: Option<i64>,
    ) -> Result<bool>;

    /// Deletes the row (the user disconnected the account).
    fn delete_upstream_token(&self, user: &str, route: &str) -> Result<bool>;

    /// Up to `limit` rows after `after` in (user, route) order that hold a sealed value not
    /// starting with `prefix` (how values sealed with the current key start).
    fn upstream_tokens_not_sealed_with(
        &self,
        prefix: &[u8],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<UpstreamRecord>>;

    /// Writes re-sealed values in one transaction, each only over the very values it was
    /// read with at that version: a refresh, drop or new consent meanwhile stands, and a
    /// deleted row stays deleted. The version is left alone, so a refresh in flight still
    /// stores its result. Returns, per entry, whether it was written.
    fn reseal_upstream_tokens(&self, moves: &[Reseal]) -> Result<Vec<bool>>;

    /// The sealed PKCE verifiers of upstream consents and identity-provider sign-ins still
    /// in progress at `now`.
    fn live_flow_verifiers(&self, now: i64) -> Result<Vec<String>>;

    /// Stores an upstream flow unless the pending records are at `limit` (then `false`).
    fn insert_upstream_flow(
        &self,
        state_hash: &str,
        flow: &UpstreamFlow,
        limit: PendingLimit,
    ) -> Result<bool>;

    /// Takes (deletes and returns) an unexpired upstream flow: the callback is single use.
    fn take_upstream_flow(&self, state_hash: &str, now: i64) -> Result<Option<UpstreamFlow>>;
}

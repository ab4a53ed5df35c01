//! Sign-ins in progress: pending authorization flows, the login throttle, device cookies, identity-provider sign-ins and their users.

use super::error::Result;
use super::records::{IdpLogin, IdpUserRecord, PendingFlow, PendingLimit};

/// Device cookies remembered per account, at most.
pub const MAX_DEVICES: u32 = 20;

pub trait SignIns {
    /// Stores a flow unless the pending records are at `limit` (then `false`, nothing stored).
    fn insert_flow(&self, flow: &PendingFlow, limit: PendingLimit) -> Result<bool>;

    fn flow(&self, id: &str, now: i64) -> Result<Option<PendingFlow>>;

    /// Counts a failed sign-in against the flow and returns the new count.
    fn record_failed_login(&self, id: &str) -> Result<u32>;

    /// Returns false when the flow was already gone (it is single use).
    fn delete_flow(&self, id: &str) -> Result<bool>;

    /// Reserves a sign-in attempt in `bucket` before its password is checked, unless the
    /// bucket already holds `limit` failures and attempts in flight since `since`; counting
    /// and reserving are one transaction, so parallel attempts cannot all pass. Returns
    /// the reservation's id, or `None` when the bucket is locked.
    fn reserve_login_attempt(
        &self,
        bucket: &str,
        since: i64,
        limit: u32,
        now: i64,
    ) -> Result<Option<i64>>;

    /// The reserved attempt failed: it now counts as a failure at `now`.
    fn fail_login_attempt(&self, id: i64, now: i64) -> Result<()>;

    /// Drops a reservation (its attempt succeeded, or never reached the check); with
    /// `clear_failures`, the bucket's failures are forgotten too.
    fn end_login_attempt(&self, id: i64, bucket: &str, clear_failures: bool) -> Result<()>;

    /// Records a device cookie (by digest) issued to a browser that signed in as `account`;
    /// an account keeps its `MAX_DEVICES` newest, so sign-ins from ever new browsers leave a
    /// bounded trail.
    fn insert_device(&self, secret_hash: &str, account: &str, expires_at: i64) -> Result<()>;

    /// The account a device cookie was issued for, while it is valid.
    fn device_account(&self, secret_hash: &str, now: i64) -> Result<Option<String>>;

    fn delete_device(&self, secret_hash: &str) -> Result<()>;

    /// Stores a sign-in unless the pending records are at `limit` (then `false`).
    fn insert_idp_login(
        &self,
        state_hash: &str,
        login: &IdpLogin,
        limit: PendingLimit,
    ) -> Result<bool>;

    /// Takes (deletes and returns) an unexpired sign-in: the callback is single use.
    fn take_idp_login(&self, state_hash: &str, now: i64) -> Result<Option<IdpLogin>>;

    /// Records an identity-provider user's claims at sign-in.
    fn put_idp_user(&self, user: &IdpUserRecord) -> Result<()>;

    fn idp_user(&self, key: &str) -> Result<Option<IdpUserRecord>>;
}

//! Sign-in sessions and the grants (refresh-token families) they led to.

use super::error::Result;
use super::records::{Grant, GrantFilter, RefreshToken, Revoked, Session};

pub trait Sessions {
    fn insert_session(&self, secret_hash: &str, session: &Session) -> Result<()>;

    fn session(&self, secret_hash: &str, now: i64) -> Result<Option<Session>>;

    /// Whether the session `sid` is unexpired and not revoked.
    fn session_live(&self, sid: &str, now: i64) -> Result<bool>;

    fn grant(&self, id: &str) -> Result<Option<Grant>>;

    /// Revokes a grant: every refresh token of its family stops working, and its TEs once
    /// the filters read the revocation feed's entry (kept until `feed_until`).
    fn revoke_grant(&self, id: &str, now: i64, feed_until: i64) -> Result<()>;

    fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>>;

    /// Marks `old_hash` used and inserts `new` atomically; false when `old_hash` was
    /// already used (a concurrent or replayed rotation) or its grant was revoked meanwhile.
    fn rotate_refresh_token(&self, old_hash: &str, new: &RefreshToken, now: i64) -> Result<bool>;

    /// Ends the sign-in session whose cookie hashes to `secret_hash` (an app's sign-out), every
    /// app session bound to it, the grants signed in through it and its codes not yet
    /// redeemed; returns its `sid` when there was a live one. The session
    /// goes into the revocation feed (kept until `feed_until`).
    fn revoke_session(
        &self,
        secret_hash: &str,
        now: i64,
        feed_until: i64,
    ) -> Result<Option<String>>;

    /// Ends the sign-in session `sid`, every app session bound to it, the grants signed in
    /// through it and its codes not yet redeemed (an app's sign-out); false when the session
    /// was not live. The session goes into the revocation feed (kept until `feed_until`).
    fn revoke_sid(&self, sid: &str, now: i64, feed_until: i64) -> Result<bool>;

    /// Ends what `user` holds, in one transaction: the grants `filter` names and their codes
    /// not yet redeemed, and with an empty filter also every sign-in session and app session
    /// (sign-out at the issuer, an administrator's revocation, deprovisioning). The feed gets
    /// the user (every TE issued until now), or with a filter each grant revoked (kept until
    /// `feed_until`).
    /// Every user holding an unrevoked grant, a live sign-in session or a live app session
    /// at `now` (at start, those the config no longer names lose it all).
    fn users_with_live_grants(&self, now: i64) -> Result<Vec<String>>;

    fn revoke_user(
        &self,
        user: &str,
        filter: &GrantFilter,
        now: i64,
        feed_until: i64,
    ) -> Result<Revoked>;
}

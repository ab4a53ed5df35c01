//! Authorization codes, redeemed once into a grant.

use super::error::Result;
use super::records::{AuthCode, CodeLookup, Grant, Redemption, RefreshToken};

pub trait Codes {
    fn insert_code(&self, code_hash: &str, code: &AuthCode) -> Result<()>;

    /// The code and whether it was redeemed; changes nothing.
    fn code(&self, code_hash: &str) -> Result<CodeLookup>;

    /// Redeems a code in one transaction: marks it used and records what it produced, the
    /// grant and its first refresh token (`None` burns the code after a failed check). A
    /// code already used issues nothing, and the grant it produced is revoked in the same
    /// transaction, so no presentation can slip between "used" and "what it produced".
    /// A grant revoked so goes into the revocation feed (kept until `feed_until`).
    fn redeem_code(
        &self,
        code_hash: &str,
        issued: Option<(&Grant, Option<&RefreshToken>)>,
        now: i64,
        feed_until: i64,
    ) -> Result<Redemption>;
}

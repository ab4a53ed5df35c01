//! The TE signing keys every replica shares (sealed; the keyring opens them).

use super::error::Result;
use super::records::SigningKeyRecord;

pub trait SigningKeys {
    /// Every stored key, `seq` ascending (retired ones too, until the sweep deletes them).
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;

    /// Stores `key`, and gives every key without a retirement time `retire_others_at`, in
    /// one transaction. `false` (nothing written) when its `seq` or `kid` is taken: another
    /// replica or rotation added a key first.
    fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_others_at: Option<i64>,
    ) -> Result<bool>;

    /// Replaces a key's sealed form with `new` (sealed with the current encryption key)
    /// if it is still `old`; `false` when it changed or is gone.
    fn reseal_signing_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool>;
}

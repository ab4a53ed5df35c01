//! How stored secrets are digested and compared: a leaf, so the store's callers and the
//! flows agree on one digest.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Secrets are stored only as this digest; they carry enough entropy that a fast hash is fine.
pub fn hash_secret(secret: &str) -> String {
    B64.encode(Sha256::digest(secret.as_bytes()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

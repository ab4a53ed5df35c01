//! Randomness from the OS for secrets and ids: a leaf every module that mints one uses.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rand_core::{OsRng, RngCore};

pub fn fill_random(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// 256 bits of randomness, base64url: codes, refresh tokens, session cookies, CSRF tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    B64.encode(b)
}

/// A shorter random id for records that are not secrets by themselves (grants, sessions' sid).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    B64.encode(b)
}

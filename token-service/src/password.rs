//! Argon2id password hashing for local users.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::{Config, LocalUser};

/// Hashes with Argon2id and the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    crate::flows::fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    Ok(hash.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks a local user's credentials. An unknown email still costs one hash verification,
/// so response time does not reveal which emails exist.
pub fn authenticate<'a>(config: &'a Config, email: &str, password: &str) -> Option<&'a LocalUser> {
    match config.user(email.trim()) {
        Some(user) => verify_password(password, &user.password_hash).then_some(user),
        None => {
            if let Some(any) = config.identity_provider.local.users.first() {
                let _ = verify_password(password, &any.password_hash);
            }
            None
        }
    }
}

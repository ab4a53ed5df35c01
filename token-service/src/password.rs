//! Argon2id password hashing for local users.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::{Config, LocalUser};

/// Hashes with Argon2id and the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    crate::random::fill_random(&mut salt);
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

/// Checks a local user's credentials. An unknown email costs one Argon2 run too, with the
/// parameters of the configured users' hashes, so neither the answer nor its timing
/// reveals which emails exist.
pub fn authenticate<'a>(config: &'a Config, email: &str, password: &str) -> Option<&'a LocalUser> {
    match config.user(email.trim()) {
        Some(user) => verify_password(password, &user.password_hash).then_some(user),
        None => {
            decoy_verification(config, password);
            None
        }
    }
}

/// The work of verifying `password` against a hash with the first local user's Argon2
/// parameters (the defaults, which `hash-password` uses, when there are no users), with a
/// random salt: the cost of a real verification, with a result no one can match.
fn decoy_verification(config: &Config, password: &str) {
    let argon2 = decoy_hasher(config).unwrap_or_default();
    let out_len = argon2
        .params()
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let mut salt = [0u8; 16];
    crate::random::fill_random(&mut salt);
    let mut out = vec![0u8; out_len];
    let _ = argon2.hash_password_into(password.as_bytes(), &salt, &mut out);
}

/// An Argon2 instance with the first local user's algorithm, version and parameters.
pub fn decoy_hasher(config: &Config) -> Option<Argon2<'static>> {
    let user = config.identity_provider.local.users.first()?;
    let template = PasswordHash::new(&user.password_hash).ok()?;
    let algorithm = argon2::Algorithm::try_from(template.algorithm).ok()?;
    let version = match template.version {
        Some(v) => argon2::Version::try_from(v).ok()?,
        None => argon2::Version::default(),
    };
    let params = argon2::Params::try_from(&template).ok()?;
    Some(Argon2::new(algorithm, version, params))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config_with_hash(hash: Option<&str>) -> Config {
        let users = match hash {
            Some(h) => format!(
                "identity_provider: {{local: {{users: [{{email: a@example.com, password_hash: '{h}'}}]}}}}\n"
            ),
            None => String::new(),
        };
        Config::from_yaml(&format!(
            "authorization_server: {{issuer: 'http://127.0.0.1:9100'}}\n{users}"
        ))
        .unwrap()
    }

    #[test]
    fn unknown_emails_are_verified_with_the_users_argon2_parameters() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$On0ZcxndKh4alUZfDfbNtw$eStTcLOU4qFwL515FsqGk4fnXkkpEX0X2ThyXxCZRqg";
        let decoy = decoy_hasher(&config_with_hash(Some(hash))).unwrap();
        let real = PasswordHash::new(hash).unwrap();
        assert_eq!(decoy.params(), &argon2::Params::try_from(&real).unwrap());
        // No users: the defaults, which `hash-password` uses.
        assert!(decoy_hasher(&config_with_hash(None)).is_none());
        assert_eq!(
            Argon2::default().params().m_cost(),
            decoy.params().m_cost(),
            "the defaults are the demo hash's parameters"
        );
    }
}

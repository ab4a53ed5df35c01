//! Why a sign-in through the provider failed: a leaf, so the provider client (`oidc`) and the
//! claim checks (`claims`) share it without importing each other.

/// Why a sign-in through the provider did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdpError {
    /// The provider could not be reached or answered with a server error.
    Unavailable(String),
    /// The provider refused the code exchange.
    Refused(String),
    /// The provider's answer failed a check (ID token, nonce, audience, signature).
    Invalid(String),
    /// The user's claims do not allow a sign-in (no email, unverified email).
    Claims(String),
}

impl std::fmt::Display for IdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdpError::Unavailable(m)
            | IdpError::Refused(m)
            | IdpError::Invalid(m)
            | IdpError::Claims(m) => f.write_str(m),
        }
    }
}

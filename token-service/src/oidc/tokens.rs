//! The provider's tokens for one user: what the service checks the user again with
//! (deprovisioning). A leaf, so the provider client, the sign-in flow and the vault share it.

/// Tokens the provider issued; the service keeps them sealed in the store.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdpTokens {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for IdpTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets: only whether they are there.
        f.debug_struct("IdpTokens")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_holds_no_token() {
        let t = super::IdpTokens {
            access_token: Some("at-secret".into()),
            refresh_token: Some("rt-secret".into()),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}

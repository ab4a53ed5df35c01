//! `authorization_server.identity_assertion_grant`: the identity providers whose Identity
//! Assertion Authorization Grants (ID-JAG, the MCP enterprise-managed authorization extension)
//! the token endpoint accepts with the RFC 7523 jwt-bearer grant. A leaf: the config module
//! validates it (`Config::validate`), naming the field.

use serde::Deserialize;

/// `grant_type` of the RFC 7523 JWT bearer grant, which carries an ID-JAG here.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityAssertionGrantConfig {
    /// The identity providers trusted to issue ID-JAGs; none: the grant is off.
    #[serde(default)]
    pub issuers: Vec<IdJagIssuer>,
}

/// `identity_assertion_grant.issuers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdJagIssuer {
    /// The assertion's `iss`, byte for byte; its users are `{issuer}#{sub}`, the same users as
    /// `identity_provider.oidc`'s when the issuers are the same.
    pub issuer: String,
    /// Where its signing keys are; absent: from `{issuer}/.well-known/openid-configuration`
    /// (then `/.well-known/oauth-authorization-server`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The claim holding the user's groups; a dotted path reaches into nested objects.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl IdentityAssertionGrantConfig {
    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    pub fn issuer(&self, iss: &str) -> Option<&IdJagIssuer> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }
}

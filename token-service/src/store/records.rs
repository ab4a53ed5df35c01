//! The records the store keeps, as the flows see them. Codes, refresh tokens and session
//! cookies are stored only as SHA-256 digests.

use serde::{Deserialize, Serialize};

use crate::config::TokenEndpointAuthMethod;
pub use warden_core::internal_api::{RevocationEntry, RevokedKind};

/// A validated authorization request: everything the code will be bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthorizeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the request named `redirect_uri` (then `/token` must repeat it, RFC 6749 §4.1.3).
    pub redirect_uri_explicit: bool,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
}

/// A client registered through DCR (pre-registered clients live in the config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredClient {
    pub client_id: String,
    #[serde(default)]
    pub client_name: Option<String>,
    /// SHA-256 of the secret (base64url); `None` for public clients.
    #[serde(default)]
    pub secret_hash: Option<String>,
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    #[serde(default)]
    pub application_type: Option<String>,
    pub created_at: i64,
    /// `private_key_jwt`: the keys registered inline, or where the client publishes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// An authorization request waiting for the user to sign in, or (with `user` set) for the
/// signed-in user to approve the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingFlow {
    pub id: String,
    pub csrf: String,
    pub request: AuthorizeGrant,
    pub expires_at: i64,
    /// SHA-256 of the browser-binding cookie (`warden_flow`) of the browser that started
    /// the flow; the forms that continue it must come with that cookie.
    #[serde(default)]
    pub browser: String,
    /// Set once signed in: the flow then waits for consent from this user and session.
    #[serde(default)]
    pub user: Option<FlowUser>,
    /// Not an MCP client's authorization: what to do once the user is signed in. `request`
    /// is then a stand-in that can never become a code (no PKCE challenge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Continuation>,
}

/// What a sign-in continues with when it is not an MCP client's authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Continuation {
    /// Browser sign-in on an `mcp: client` route: issue an app code, back to the app.
    AppSignIn {
        route: String,
        return_to: String,
        /// SHA-256 (hex) of the nonce cookie the filter gave the browser that asked.
        #[serde(default)]
        nonce: String,
    },
    /// Connect an upstream account (`/mcp/connect`), then redirect to `redirect_url`.
    Connect { route: String, redirect_url: String },
}

/// A one-time app code: the filter trades it for an app session (stored hashed, 60 s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppCode {
    /// The `mcp: client` route's name.
    pub route: String,
    pub user: String,
    /// The issuer session the app session is bound to.
    pub sid: String,
    pub return_to: String,
    /// The sign-in's nonce digest: only the browser holding the nonce cookie may redeem it.
    #[serde(default)]
    pub nonce: String,
    /// When the issuer session ends: the app session ends then at the latest.
    pub session_expires_at: i64,
    pub expires_at: i64,
}

/// A browser's session on an `mcp: client` route (the cookie value is stored hashed).
#[derive(Debug, Clone, PartialEq)]
pub struct AppSession {
    pub route: String,
    pub user: String,
    pub sid: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowUser {
    /// The user's key (`identity` module): the email, or `{iss}#{sub}` for the identity provider.
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
}

/// A sign-in session. `sid` is public (it goes into tokens); the cookie value is not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub sid: String,
    /// The user's key (`identity` module).
    pub user: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthCode {
    pub request: AuthorizeGrant,
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CodeLookup {
    /// Not redeemed yet (redeeming is `Store::redeem_code`).
    Fresh(AuthCode),
    /// Already redeemed; `grant_id` names what it produced so it can be revoked.
    Reused {
        grant_id: Option<String>,
    },
    Missing,
}

/// What became of a code presented for redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// This presentation redeemed it.
    Redeemed,
    /// Another presentation redeemed it first; what that one produced is now revoked.
    Replayed,
    Missing,
}

/// Which of a user's grants a revocation ends: all of them (and then their sessions and app
/// sessions too), or those of one client and/or one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFilter {
    pub client_id: Option<String>,
    pub resource: Option<String>,
}

impl GrantFilter {
    /// Everything the user holds.
    pub fn all(&self) -> bool {
        self.client_id.is_none() && self.resource.is_none()
    }
}

/// What a revocation ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// The grants revoked now (not those revoked before).
    pub grant_ids: Vec<String>,
    /// Codes issued and not yet redeemed, burnt.
    pub codes: u64,
    pub sessions: u64,
    pub app_sessions: u64,
}

/// What a redeemed code produced: the root of a refresh-token family.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: String,
    pub client_id: String,
    pub user: String,
    pub sid: String,
    pub resource: String,
    pub scope: String,
    pub created_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub grant_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used: bool,
}

/// A user's token for an upstream provider route, sealed by the vault (the store never sees
/// it in the clear). A row without `access_token` is a dropped one that still remembers the
/// scopes a server asked for and a refusal hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamRecord {
    pub user: String,
    pub route: String,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    /// When the current access token was obtained (code exchange or refresh).
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    /// When the user last granted access at the provider (code exchange).
    pub granted_at: i64,
    pub scope: String,
    /// Scopes an MCP server asked for (`insufficient_scope`), added to the next consent.
    pub extra_scope: String,
    /// Until then, a lookup answers "refused" rather than "no token" (loop breaker).
    pub refused_until: Option<i64>,
    /// When an MCP server last refused this row's token.
    pub last_refused_at: Option<i64>,
    /// The current grant re-ran consent because a server had refused the previous token.
    pub after_refusal: bool,
    /// Counts the row's token writes: a refresh or drop applies only to the version it read
    /// (read from the store; `put_upstream_token` ignores it).
    pub version: i64,
    /// The issuer of the authorization server that issued the tokens of a discovered route
    /// (`upstream_oauth2.discover`); empty for a configured provider. A token of a server the
    /// upstream no longer names is not used (the user consents at the new one).
    pub authorization_server: String,
}

/// One row's sealed values moved to the current key (`Store::reseal_upstream_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reseal {
    pub user: String,
    pub route: String,
    /// The row's version and values as read.
    pub version: i64,
    pub old_access_token: Option<Vec<u8>>,
    pub old_refresh_token: Option<Vec<u8>>,
    /// The same tokens, sealed with the current key.
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
}

/// An upstream consent in progress: the provider sends the browser back with `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamFlow {
    /// The MCP client's authorization request, answered once the upstream step is done.
    pub request: AuthorizeGrant,
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
    /// SHA-256 of the browser-binding cookie.
    pub browser: String,
    pub route: String,
    /// The PKCE verifier, sealed by the vault (base64url).
    pub pkce_verifier: String,
    pub expires_at: i64,
    /// A connect from an app (`/mcp/connect`): redirect here afterwards instead of answering
    /// `request` (a stand-in then, never turned into a code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// A discovered route's authorization server the consent went to: the callback's code is
    /// exchanged there only, and the token is bound to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authorization_server: String,
}

/// A sign-in at the identity provider in progress: the provider sends the browser back with
/// `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdpLogin {
    /// The pending authorization flow this sign-in continues.
    pub flow_id: String,
    /// SHA-256 of the browser-binding cookie.
    pub browser: String,
    pub nonce: String,
    /// The PKCE verifier, sealed by the vault (base64url).
    pub pkce_verifier: String,
    pub expires_at: i64,
}

/// A user of the identity provider as of their last sign-in or check: the claims their TEs
/// carry, and what the service checks them again with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdpUserRecord {
    /// `{iss}#{sub}`.
    pub key: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    pub updated_at: i64,
    /// The provider's refresh and access tokens, sealed by the vault; `None` when it issued
    /// none (or a refusal made them worthless).
    pub refresh_token: Option<Vec<u8>>,
    pub access_token: Option<Vec<u8>>,
    /// When the provider last vouched for the user: their sign-in, or a check.
    pub checked_at: i64,
}

/// The bound on pending records: sign-ins (`pending_flows`), upstream connects
/// (`upstream_flows`) and identity-provider sign-ins (`idp_logins`), counted together. An
/// insert that would pass `max` is refused (expired rows are dropped first to make room), so
/// the tables never hold more than `max` rows between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimit {
    pub max: u64,
    pub now: i64,
}

/// How long records about registered clients are kept (`authorization_server.registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A client that never obtained a grant is deleted this long after registering.
    pub unused_client_ttl: i64,
    /// A client is deleted once none of its grants has been alive for this long.
    pub idle_client_ttl: i64,
}

/// A TE signing key as stored: its private key sealed with the encryption key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// 1 for the first key, one more for each rotation.
    pub seq: i64,
    pub alg: String,
    pub sealed_key: Vec<u8>,
    pub created_at: i64,
    /// From then on it signs (until a newer key does); published from the moment it is stored.
    pub signs_from: i64,
    /// When it leaves the JWKS; `None` until a newer key replaces it.
    pub retire_at: Option<i64>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sealed, but still no business in a log.
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("seq", &self.seq)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("signs_from", &self.signs_from)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

//! OAuth logic without HTTP: request validation, PKCE, code and token issuance.
//! Handlers in `routes/` parse the request, call into here, and render the outcome.

pub mod app;
pub mod app_sign_in;
pub mod authorize;
pub mod browser;
pub mod client_auth;
pub mod client_credentials;
pub mod consent;
pub mod id_jag;
pub mod idp;
pub mod login;
pub mod pkce;
pub mod register;
pub mod sign_in;
pub mod sign_out;
pub mod token;
pub mod upstream;

// The leaves these moved to; re-exported so `flows::x` callers keep compiling.
pub use crate::clock::now_unix;
pub use crate::digest::{constant_time_eq, hash_secret};
pub use crate::random::{fill_random, random_id, random_token};
pub use crate::redirect_uri as redirect;
pub use crate::scope::split_scope;

use crate::client_documents::{self, ClientDocument, ClientDocuments};
use crate::config::{Config, TokenEndpointAuthMethod};
use crate::store::Store;

/// How a client's secret is known: from the operator config (plain) or from DCR (digest).
#[derive(Clone)]
pub enum ClientSecret {
    None,
    Configured(String),
    Hashed(String),
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configured secret is a credential, the digest nearly one: neither is shown.
        match self {
            Self::None => f.write_str("None"),
            Self::Configured(_) => f.write_str("Configured(<redacted>)"),
            Self::Hashed(_) => f.write_str("Hashed(<redacted>)"),
        }
    }
}

/// A client as the flows see it, whichever way it was registered.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_name: Option<String>,
    pub auth_method: TokenEndpointAuthMethod,
    pub secret: ClientSecret,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    /// From the operator config (true) or registered through DCR (false, name unverified).
    pub pre_registered: bool,
    /// The operator lets this client skip the consent page (`clients[].skip_consent`).
    pub skip_consent: bool,
    /// The client's keys for `private_key_jwt`: inline JWKS, or where to fetch it.
    pub jwks: Option<serde_json::Value>,
    pub jwks_uri: Option<String>,
    /// For a client identified by its metadata document (CIMD): the host serving it.
    pub document_host: Option<String>,
}

impl RegisteredClient {
    pub fn verify_secret(&self, presented: &str) -> bool {
        // Compare digests so the comparison time does not depend on the secret's length.
        let presented = hash_secret(presented);
        match &self.secret {
            ClientSecret::None => false,
            ClientSecret::Configured(s) => {
                constant_time_eq(hash_secret(s).as_bytes(), presented.as_bytes())
            }
            ClientSecret::Hashed(h) => constant_time_eq(h.as_bytes(), presented.as_bytes()),
        }
    }

    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    pub fn display_name(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
    }
}

/// Pre-registered clients win over DCR ones (DCR ids are random and cannot collide in practice);
/// an https `client_id` is a metadata document's URL, when those are enabled (fetched here, on
/// this blocking thread, unless the route layer's `resolve` cached it; a document that cannot
/// be had is an unknown client, its reason logged).
pub fn lookup_client(
    config: &Config,
    store: &dyn Store,
    documents: &ClientDocuments,
    client_id: &str,
    now: i64,
) -> anyhow::Result<Option<RegisteredClient>> {
    if let Some(c) = config.client(client_id) {
        return Ok(Some(RegisteredClient {
            client_id: c.client_id.clone(),
            client_name: c.client_name.clone(),
            auth_method: c.auth_method(),
            secret: match &c.client_secret {
                Some(s) => ClientSecret::Configured(s.clone()),
                None => ClientSecret::None,
            },
            redirect_uris: c.redirect_uris.clone(),
            grant_types: c.grants(),
            pre_registered: true,
            skip_consent: c.skip_consent,
            jwks: c.jwks.clone(),
            jwks_uri: c.jwks_uri.clone(),
            document_host: None,
        }));
    }
    if documents.enabled() && client_documents::is_document_url(client_id) {
        return Ok(match documents.resolve_blocking(client_id, now) {
            Ok(d) => Some(document_client(&d)),
            Err(e) => {
                tracing::info!(client_id, reason = %e, "client metadata document refused");
                None
            }
        });
    }
    Ok(store.client(client_id)?.map(|c| RegisteredClient {
        client_id: c.client_id,
        client_name: c.client_name,
        auth_method: c.token_endpoint_auth_method,
        secret: match c.secret_hash {
            Some(h) => ClientSecret::Hashed(h),
            None => ClientSecret::None,
        },
        redirect_uris: c.redirect_uris,
        grant_types: c.grant_types,
        pre_registered: false,
        skip_consent: false,
        jwks: c.jwks,
        jwks_uri: c.jwks_uri,
        document_host: None,
    }))
}

/// A metadata document's client: never pre-registered, so always asked for consent.
pub fn document_client(d: &ClientDocument) -> RegisteredClient {
    RegisteredClient {
        client_id: d.client_id.clone(),
        client_name: d.client_name.clone(),
        auth_method: d.auth_method,
        secret: ClientSecret::None,
        redirect_uris: d.redirect_uris.clone(),
        grant_types: d.grant_types.clone(),
        pre_registered: false,
        skip_consent: false,
        jwks: d.jwks.clone(),
        jwks_uri: d.jwks_uri.clone(),
        document_host: Some(d.host.clone()),
    }
}

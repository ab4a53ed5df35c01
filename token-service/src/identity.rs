//! Who a user is, wherever they signed in: the claims TEs and identity assertions carry.
//!
//! A user's key (the TE `sub`) is the email for local users and `{iss}#{sub}` for users of
//! the organisation's identity provider, so two providers can never collide. A service client
//! (client_credentials) is keyed `client:{client_id}`: local emails may not start so, and an
//! issuer is an http(s) URL.

use crate::config::Config;
use crate::store::Store;

pub use crate::config::CLIENT_SUB_PREFIX;

/// The claims the gateway vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A client acting for itself (client_credentials), not a user: its TEs say so
    /// (`sub_kind: client`), and `authenticated_user` is false for it.
    pub fn is_service_client(&self) -> bool {
        self.sub.starts_with(CLIENT_SUB_PREFIX)
    }
}

/// The key of the service client `client_id`.
pub fn client_sub(client_id: &str) -> String {
    format!("{CLIENT_SUB_PREFIX}{client_id}")
}

/// Whether the config still names someone keyed `sub`: a configured local user, a user of
/// the configured identity provider (whom the provider itself vouches for, `recheck`) or of a
/// configured ID-JAG issuer (who vouches for them with each assertion), or a configured
/// client_credentials client.
pub fn configured(config: &Config, sub: &str) -> bool {
    if let Some(client_id) = sub.strip_prefix(CLIENT_SUB_PREFIX) {
        return service_client(config, client_id).is_some();
    }
    match sub.split_once('#') {
        Some((iss, _)) => of_configured_provider(config, iss),
        None => config.user(sub).is_some(),
    }
}

/// Users of a provider that is no longer configured no longer exist.
fn of_configured_provider(config: &Config, iss: &str) -> bool {
    config
        .identity_provider
        .oidc
        .as_ref()
        .map(|o| o.issuer.as_str())
        == Some(iss)
        || config
            .authorization_server
            .identity_assertion_grant
            .issuer(iss)
            .is_some()
}

/// The service client `client_id` as its tokens name it: a configured client that may use
/// client_credentials (a removed client, or one whose grant was taken away, is gone).
fn service_client(config: &Config, client_id: &str) -> Option<Identity> {
    let c = config
        .client(client_id)
        .filter(|c| c.allows_grant("client_credentials"))?;
    let id = c.identity.as_ref()?;
    Some(Identity {
        sub: client_sub(&c.client_id),
        email: id.email.clone(),
        name: id
            .name
            .clone()
            .or_else(|| c.client_name.clone())
            .unwrap_or_else(|| c.client_id.clone()),
        groups: id.groups.clone(),
    })
}

/// The user behind `sub` as of their last sign-in, or `None` when they no longer exist.
pub fn resolve(config: &Config, store: &dyn Store, sub: &str) -> anyhow::Result<Option<Identity>> {
    if let Some(client_id) = sub.strip_prefix(CLIENT_SUB_PREFIX) {
        return Ok(service_client(config, client_id));
    }
    if let Some((iss, _)) = sub.split_once('#') {
        if !of_configured_provider(config, iss) {
            return Ok(None);
        }
        return Ok(store.idp_user(sub)?.map(|u| Identity {
            sub: u.key,
            email: u.email,
            name: u.name,
            groups: u.groups,
        }));
    }
    Ok(config.user(sub).map(|u| Identity {
        sub: u.email.clone(),
        email: u.email.clone(),
        name: u.name.clone(),
        groups: u.groups.clone(),
    }))
}

//! Who a user is, wherever they signed in: the claims TEs and identity assertions carry.
//!
//! A user's key (the TE `sub`) is the email for local users and `{iss}#{sub}` for users of
//! the organisation's identity provider, so two providers can never collide.

use crate::config::Config;
use crate::store::Store;

/// The claims the gateway vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

/// Whether the config still names someone keyed `sub`: a configured local user, or a user of
/// the configured identity provider (whom the provider itself vouches for, `recheck`) or of a
/// configured ID-JAG issuer (who vouches for them with each assertion).
pub fn configured(config: &Config, sub: &str) -> bool {
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

/// The user behind `sub` as of their last sign-in, or `None` when they no longer exist.
pub fn resolve(config: &Config, store: &dyn Store, sub: &str) -> anyhow::Result<Option<Identity>> {
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

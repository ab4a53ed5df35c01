//! The client_credentials grant (RFC 6749 §4.4, the MCP extension for OAuth client
//! credentials): a configured service client, acting for itself, gets a TE for one route.
//!
//! The TE's subject is the client (`client:{client_id}`, `sub_kind: client`) with the email,
//! name and groups of `clients[].identity`, so route policies judge it like a user, except
//! that `authenticated_user` is false for it. No refresh token: the client authenticates
//! again when the TE expires. No grant is stored; `revoke --user client:{id}` puts the
//! client in the revocation feed, and a client removed from the config gets no new TE.

use super::authorize::Params;
use super::{split_scope, RegisteredClient};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::store::{Grant, Store};

pub const GRANT_TYPE: &str = "client_credentials";

/// What the TE is issued for: the service client as its subject, and an unstored grant
/// (`token::respond` signs it).
pub struct ServiceToken {
    pub subject: Identity,
    pub grant: Grant,
}

/// `grant_type=client_credentials` from `client` (already authenticated).
pub fn client_credentials(
    config: &Config,
    store: &dyn Store,
    client: &RegisteredClient,
    params: &Params,
    now: i64,
) -> Result<ServiceToken> {
    if !client.allows_grant(GRANT_TYPE) {
        return Err(Error::oauth(
            "unauthorized_client",
            "client may not use client_credentials",
        ));
    }
    let subject = identity::resolve(config, store, &identity::client_sub(&client.client_id))?
        .ok_or_else(|| {
            // Only configured clients hold the grant, and they have an identity (config checks).
            Error::oauth(
                "unauthorized_client",
                "client has no identity for client_credentials",
            )
        })?;
    let resource = params.get("resource").ok_or_else(|| {
        Error::invalid_target("resource is required: the MCP server URL the token is for")
    })?;
    let route = config
        .route_by_resource(resource)
        .ok_or_else(|| Error::invalid_target("unknown resource"))?;
    if route.has_upstream_oauth() {
        return Err(Error::invalid_target(format!(
            "route {} acts with each user's own account at an upstream provider; a service client has none",
            route.name
        )));
    }
    let requested = split_scope(params.get("scope").unwrap_or(""));
    if let Some(unknown) = requested.iter().find(|s| !route.scopes.contains(s)) {
        return Err(Error::oauth(
            "invalid_scope",
            format!("scope {unknown} is not offered for this resource"),
        ));
    }
    // As at /authorize: exactly the requested scopes, or with none, all of the route's.
    let scope = route
        .scopes
        .iter()
        .filter(|s| requested.is_empty() || requested.contains(s))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    // Not stored: the TE names no grant and no sign-in session (`gid`, `sid` empty).
    let grant = Grant {
        id: String::new(),
        client_id: client.client_id.clone(),
        user: subject.sub.clone(),
        sid: String::new(),
        resource: route.resource(),
        scope,
        created_at: now,
        revoked: false,
    };
    tracing::info!(client_id = %client.client_id, sub = %subject.sub, aud = %grant.resource, "client credentials: token issued to a service client");
    Ok(ServiceToken { subject, grant })
}

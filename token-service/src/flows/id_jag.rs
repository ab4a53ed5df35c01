//! The ID-JAG grant (the MCP enterprise-managed authorization extension): an authenticated
//! client presents, with the RFC 7523 jwt-bearer grant, an Identity Assertion Authorization
//! Grant its user's identity provider issued for this authorization server and one resource.
//! No consent page and no refresh token: the provider decided, and the client asks it again.
//!
//! The user is the provider's `{iss}#{sub}` (the same user as `identity_provider.oidc`'s when
//! the issuers are the same); their claims are stored as a sign-in stores them, so
//! `identity::resolve` finds them for the filter's look-ups later. The route layer has fetched
//! the issuer's keys (`jwks_cache`); everything here is synchronous.

use serde_json::Value;

use super::client_auth::{self, AssertionKeys};
use super::{random_id, split_scope, RegisteredClient};
use crate::config::Config;
use crate::config_id_jag::JWT_BEARER_GRANT;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::jws;
use crate::oidc::claims::{groups, lookup, user_key};
use crate::store::{id_jag_issuer, Grant, IdpUserRecord, Store};

/// The JWT `typ` of an ID-JAG.
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// How far ahead an ID-JAG's `exp` may be (its `jti` is kept that long).
pub const MAX_LIFETIME: i64 = 3600;
const LEEWAY: i64 = client_auth::LEEWAY;

/// What an accepted ID-JAG gives: the user and the grant the TE is issued under (not stored:
/// no refresh token comes of it).
#[derive(Debug)]
pub struct Accepted {
    pub user: Identity,
    pub grant: Grant,
}

/// The `iss` an assertion names (unverified: for fetching the issuer's keys).
pub fn claimed_issuer(jwt: &str) -> Option<String> {
    jws::peek(jwt, "kid", "iss").1
}

fn refuse(description: impl Into<String>) -> Error {
    Error::invalid_grant(description)
}

/// Checks the grant request of `client` (already authenticated) and its `assertion`; records
/// the user and the assertion's `jti`.
pub fn accept(
    config: &Config,
    store: &dyn Store,
    now: i64,
    client: &RegisteredClient,
    params: &super::authorize::Params,
    keys: &AssertionKeys,
) -> Result<Accepted> {
    if !config
        .authorization_server
        .identity_assertion_grant
        .enabled()
    {
        return Err(Error::oauth(
            "unsupported_grant_type",
            "the jwt-bearer grant is off here (no authorization_server.identity_assertion_grant.issuers)",
        ));
    }
    if !client.allows_grant(JWT_BEARER_GRANT) {
        return Err(Error::oauth(
            "unauthorized_client",
            format!("client may not use {JWT_BEARER_GRANT}"),
        ));
    }
    let assertion = params
        .get("assertion")
        .ok_or_else(|| Error::invalid_request("assertion is required"))?;
    let token = jws::decode(assertion).map_err(|m| refuse(format!("ID-JAG: {m}")))?;
    if !jws::ASSERTION_ALGS.contains(&token.alg.as_str()) {
        return Err(refuse(format!(
            "ID-JAG: algorithm {} is not accepted (RS256, PS256, ES256, EdDSA)",
            token.alg
        )));
    }
    // RFC 7515 §4.1.9: compared case-insensitively, with or without the `application/`.
    let typ = token.typ.as_deref().unwrap_or("").to_ascii_lowercase();
    if typ != ID_JAG_TYP && typ != format!("application/{ID_JAG_TYP}") {
        return Err(refuse(format!(
            "ID-JAG: the header's typ must be {ID_JAG_TYP}"
        )));
    }
    let claims = &token.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let iss = text("iss").unwrap_or_default();
    let Some(issuer) = config
        .authorization_server
        .identity_assertion_grant
        .issuer(iss)
    else {
        return Err(refuse(
            "ID-JAG: issued by an identity provider not configured here",
        ));
    };
    let keys = match keys {
        AssertionKeys::Fetched(k) => k.clone(),
        AssertionKeys::Unavailable(why) => {
            return Err(refuse(format!(
                "ID-JAG: the issuer's keys are unavailable: {why}"
            )))
        }
        AssertionKeys::NotFetched => {
            return Err(refuse("ID-JAG: the issuer's keys are unavailable"))
        }
    };
    token
        .verify_among(&keys, "the issuer")
        .map_err(|m| refuse(format!("ID-JAG: {m}")))?;
    let our_issuer = config.authorization_server.issuer.as_str();
    let with_slash = client_auth::issuer_with_slash(our_issuer);
    if !client_auth::audience_is(claims, &[our_issuer, &with_slash]) {
        return Err(refuse("ID-JAG: issued for another audience"));
    }
    if text("client_id") != Some(client.client_id.as_str()) {
        return Err(refuse("ID-JAG: issued to another client (client_id)"));
    }
    let exp = client_auth::lifetime(claims, now, MAX_LIFETIME, true)
        .map_err(|m| refuse(format!("ID-JAG: {m}")))?;
    let jti = client_auth::jti(claims).map_err(|m| refuse(format!("ID-JAG: {m}")))?;
    let resource = text("resource").ok_or_else(|| refuse("ID-JAG: resource is required"))?;
    if params.get("resource").is_some_and(|r| r != resource) {
        return Err(refuse("ID-JAG: issued for another resource"));
    }
    let route = config
        .route_by_resource(resource)
        .filter(|r| r.server().is_some())
        .ok_or_else(|| refuse("ID-JAG: its resource is no MCP server here"))?;
    let sub = match text("sub") {
        Some(s) if !s.is_empty() && s.len() <= 255 => s,
        _ => return Err(refuse("ID-JAG: no valid subject (sub)")),
    };
    let email = text("email")
        .and_then(|e| {
            // As the sign-in: the domain's spelling must not decide whether policies match.
            let (local, domain) = e.trim().rsplit_once('@')?;
            Some(format!("{local}@{}", domain.to_ascii_lowercase()))
        })
        .ok_or_else(|| refuse("ID-JAG: the assertion carries no email"))?;
    let scope = granted_scope(params.get("scope"), &route.scopes, text("scope"))?;
    if !store.use_assertion_id(&id_jag_issuer(iss), jti, exp.saturating_add(LEEWAY))? {
        tracing::warn!(client_id = %client.client_id, iss, "ID-JAG replayed");
        return Err(refuse("ID-JAG: jti was already used (replay)"));
    }
    let user = Identity {
        sub: user_key(iss, sub),
        email,
        name: text("name")
            .or_else(|| text("preferred_username"))
            .unwrap_or_default()
            .to_owned(),
        groups: match lookup(claims, &issuer.groups_claim) {
            Some(v) => groups(v),
            // No claim: the groups a sign-in stored stay (the same user's, when the issuer is
            // also `identity_provider.oidc`'s), not wiped.
            None => store
                .idp_user(&user_key(iss, sub))?
                .map(|u| u.groups)
                .unwrap_or_default(),
        },
    };
    store.put_idp_user(&IdpUserRecord {
        key: user.sub.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        updated_at: now,
        // Kept as stored (a sign-in's), when the user also signs in in a browser.
        refresh_token: None,
        access_token: None,
        checked_at: now,
    })?;
    tracing::info!(client_id = %client.client_id, sub = %user.sub, aud = %resource, "ID-JAG accepted");
    let grant = Grant {
        id: random_id(),
        client_id: client.client_id.clone(),
        user: user.sub.clone(),
        sid: String::new(),
        resource: resource.to_owned(),
        scope,
        created_at: now,
        revoked: false,
    };
    Ok(Accepted { user, grant })
}

/// The requested scopes, each of which the route must offer, and the assertion allow when it
/// names scopes (its `scope` claim); none requested: all of those.
fn granted_scope(
    requested: Option<&str>,
    offered: &[String],
    asserted: Option<&str>,
) -> Result<String> {
    let requested = split_scope(requested.unwrap_or(""));
    let asserted = asserted.map(split_scope);
    let allowed =
        |s: &String| offered.contains(s) && asserted.as_ref().is_none_or(|a| a.contains(s));
    if let Some(unknown) = requested.iter().find(|s| !allowed(s)) {
        return Err(Error::oauth(
            "invalid_scope",
            format!("scope {unknown} is not offered for this resource and assertion"),
        ));
    }
    Ok(offered
        .iter()
        .filter(|s| allowed(s) && (requested.is_empty() || requested.contains(s)))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" "))
}

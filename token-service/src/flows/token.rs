//! `/token`: client authentication (secrets here, `private_key_jwt` in `client_auth`), the
//! authorization_code and refresh_token grants, the client_credentials grant
//! (`client_credentials`), the ID-JAG grant (`id_jag`), and access-token (TE) minting. Runs
//! synchronously against the store (on the blocking pool).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::authorize::Params;
use super::client_auth::{self, AssertionKeys, ClientAssertion};
use super::id_jag;
use super::{
    client_credentials, hash_secret, lookup_client, pkce, random_id, random_token, split_scope,
    RegisteredClient,
};
use crate::config::{Config, TokenEndpointAuthMethod};
use crate::config_id_jag::JWT_BEARER_GRANT;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::keyring::KeySet;
use crate::store::{AuthCode, CodeLookup, Grant, Redemption, RefreshToken, Store};

/// The client credentials a token request carried, before they are checked.
#[derive(Default, Clone)]
pub struct ClientCredentials {
    /// From `Authorization: Basic`, already form-urldecoded (RFC 6749 §2.3.1).
    pub basic: Option<(String, String)>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `client_assertion` and `client_assertion_type` (`private_key_jwt`).
    pub assertion: Option<ClientAssertion>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of any debug output: only whether one was given shows.
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ClientCredentials")
            .field(
                "basic",
                &self.basic.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(&self.client_secret))
            .field("assertion", &self.assertion)
            .finish()
    }
}

/// Parses an `Authorization` header value as HTTP Basic client credentials.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(b64.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    // application/x-www-form-urlencoded: '+' is a space, then percent-decoding.
    let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())?;
    String::from_utf8(bytes).ok()
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Omitted when empty: clients split "" into one empty scope token.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

pub struct TokenContext<'a> {
    pub config: &'a Config,
    pub keys: std::sync::Arc<KeySet>,
    pub store: &'a dyn Store,
    pub vault: &'a crate::vault::Vault,
    /// Clients identified by their metadata documents (CIMD).
    pub documents: &'a crate::client_documents::ClientDocuments,
    pub now: i64,
    /// The keys of the ID-JAG issuer a jwt-bearer grant's assertion names, fetched first.
    pub grant_keys: AssertionKeys,
}

impl TokenContext<'_> {
    /// Until when a revocation made now stays in the feed.
    fn feed_until(&self) -> i64 {
        self.config.revocation_expires_at(self.now)
    }
}

/// Authenticates the client with exactly the method it registered.
pub fn authenticate_client(
    ctx: &TokenContext<'_>,
    creds: &ClientCredentials,
) -> Result<RegisteredClient> {
    let methods = [
        creds.basic.is_some(),
        creds.client_secret.is_some(),
        creds.assertion.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(Error::invalid_request(
            "use one client authentication method, not two",
        ));
    }
    let client_id = match (&creds.basic, &creds.client_id) {
        (Some((id, _)), Some(body)) if id != body => {
            return Err(Error::invalid_request(
                "client_id in the body differs from the Basic credentials",
            ))
        }
        (Some((id, _)), _) => id.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => match creds
            .assertion
            .as_ref()
            .and_then(|a| client_auth::claimed_client(&a.jwt))
        {
            Some(id) => id,
            None => {
                return Err(Error::invalid_client(
                    "client authentication is required",
                    false,
                ))
            }
        },
    };
    let basic = creds.basic.is_some();
    let Some(client) = lookup_client(ctx.config, ctx.store, ctx.documents, &client_id, ctx.now)?
    else {
        return Err(Error::invalid_client("unknown client", basic));
    };
    match client.auth_method {
        TokenEndpointAuthMethod::None => {
            if basic || creds.client_secret.is_some() || creds.assertion.is_some() {
                return Err(Error::invalid_client(
                    "client is registered with token_endpoint_auth_method none",
                    false,
                ));
            }
        }
        TokenEndpointAuthMethod::ClientSecretBasic => match &creds.basic {
            Some((_, secret)) if client.verify_secret(secret) => {}
            Some(_) => return Err(Error::invalid_client("client authentication failed", true)),
            None => {
                return Err(Error::invalid_client(
                    "client is registered with client_secret_basic",
                    true,
                ))
            }
        },
        TokenEndpointAuthMethod::ClientSecretPost => match (&creds.client_secret, basic) {
            (Some(secret), false) if client.verify_secret(secret) => {}
            (Some(_), false) => {
                return Err(Error::invalid_client("client authentication failed", false))
            }
            _ => {
                return Err(Error::invalid_client(
                    "client is registered with client_secret_post",
                    basic,
                ))
            }
        },
        TokenEndpointAuthMethod::PrivateKeyJwt => match &creds.assertion {
            Some(a) => client_auth::verify(ctx.config, ctx.store, ctx.now, &client, a)?,
            None => {
                return Err(Error::invalid_client(
                    "client is registered with private_key_jwt: send client_assertion",
                    basic,
                ))
            }
        },
    }
    Ok(client)
}

/// Handles a token request whose body is `params`.
pub fn token(
    ctx: &TokenContext<'_>,
    creds: &ClientCredentials,
    params: &Params,
) -> Result<TokenResponse> {
    if let Some(d) = params.first_duplicate() {
        return Err(Error::invalid_request(format!("parameter {d} is repeated")));
    }
    let client = authenticate_client(ctx, creds)?;
    match params.get("grant_type") {
        Some("authorization_code") => authorization_code(ctx, &client, params),
        Some("refresh_token") => refresh(ctx, &client, params),
        Some(JWT_BEARER_GRANT) => id_jag_grant(ctx, &client, params),
        Some(client_credentials::GRANT_TYPE) => service_client(ctx, &client, params),
        Some(_) => Err(Error::oauth(
            "unsupported_grant_type",
            "supported: authorization_code, refresh_token, client_credentials and, with identity_assertion_grant.issuers, the jwt-bearer grant",
        )),
        None => Err(Error::invalid_request("grant_type is required")),
    }
}

/// The ID-JAG grant: `id_jag` checks the assertion, this mints the TE (no refresh token).
fn id_jag_grant(
    ctx: &TokenContext<'_>,
    client: &RegisteredClient,
    params: &Params,
) -> Result<TokenResponse> {
    let a = id_jag::accept(
        ctx.config,
        ctx.store,
        ctx.now,
        client,
        params,
        &ctx.grant_keys,
    )?;
    respond(ctx, &a.user, &a.grant, &a.grant.scope, None)
}

/// RFC 7009 revocation. Revoking a refresh token revokes its whole grant. Unknown tokens,
/// other clients' tokens and access tokens (self-contained JWTs, they expire on their own)
/// get the same 200, so the answer reveals nothing.
pub fn revoke(ctx: &TokenContext<'_>, creds: &ClientCredentials, params: &Params) -> Result<()> {
    let client = authenticate_client(ctx, creds)?;
    let token = params
        .get("token")
        .ok_or_else(|| Error::invalid_request("token is required"))?;
    if let Some(rt) = ctx.store.refresh_token(&hash_secret(token))? {
        if let Some(grant) = ctx.store.grant(&rt.grant_id)? {
            if grant.client_id == client.client_id {
                ctx.store
                    .revoke_grant(&grant.id, ctx.now, ctx.feed_until())?;
                tracing::info!(client_id = %client.client_id, "grant revoked by client");
            }
        }
    }
    Ok(())
}

fn authorization_code(
    ctx: &TokenContext<'_>,
    client: &RegisteredClient,
    params: &Params,
) -> Result<TokenResponse> {
    if !client.allows_grant("authorization_code") {
        return Err(Error::oauth(
            "unauthorized_client",
            "client may not use authorization_code",
        ));
    }
    let code = params
        .get("code")
        .ok_or_else(|| Error::invalid_request("code is required"))?;
    let code_hash = hash_secret(code);
    let ac = match ctx.store.code(&code_hash)? {
        CodeLookup::Missing => return Err(Error::invalid_grant("unknown authorization code")),
        CodeLookup::Reused { grant_id } => {
            // RFC 6749 §4.1.2: a code used twice revokes what it issued. The grant id is
            // recorded in the transaction that marked the code used, so it is known here.
            if let Some(g) = grant_id {
                ctx.store.revoke_grant(&g, ctx.now, ctx.feed_until())?;
            }
            return Err(replayed_code(client));
        }
        CodeLookup::Fresh(ac) => ac,
    };
    let user = match check_code(ctx, client, params, &ac) {
        Ok(user) => user,
        Err(e) => {
            // A failed presentation uses the code up, as a successful one would.
            if ctx
                .store
                .redeem_code(&code_hash, None, ctx.now, ctx.feed_until())?
                == Redemption::Replayed
            {
                return Err(replayed_code(client));
            }
            return Err(e);
        }
    };
    let req = &ac.request;
    let grant = Grant {
        id: random_id(),
        client_id: client.client_id.clone(),
        user: user.sub.clone(),
        sid: ac.sid.clone(),
        resource: req.resource.clone(),
        scope: req.scope.clone(),
        created_at: ctx.now,
        revoked: false,
    };
    let refresh = client
        .allows_grant("refresh_token")
        .then(|| new_refresh_token(ctx, &grant));
    let issued = Some((&grant, refresh.as_ref().map(|(_, r)| r)));
    match ctx
        .store
        .redeem_code(&code_hash, issued, ctx.now, ctx.feed_until())?
    {
        Redemption::Redeemed => {}
        // A concurrent presentation redeemed it between our read and now.
        Redemption::Replayed => return Err(replayed_code(client)),
        Redemption::Missing => return Err(Error::invalid_grant("unknown authorization code")),
    }
    tracing::info!(client_id = %client.client_id, sub = %user.sub, aud = %grant.resource, "authorization code redeemed");
    respond(ctx, &user, &grant, &grant.scope, refresh.map(|(t, _)| t))
}

fn replayed_code(client: &RegisteredClient) -> Error {
    tracing::warn!(client_id = %client.client_id, "authorization code reused; grant revoked");
    Error::invalid_grant("authorization code was already used")
}

/// Everything a code presentation must match before it is redeemed; returns the user.
fn check_code(
    ctx: &TokenContext<'_>,
    client: &RegisteredClient,
    params: &Params,
    ac: &AuthCode,
) -> Result<Identity> {
    let req = &ac.request;
    if ac.expires_at <= ctx.now {
        return Err(Error::invalid_grant("authorization code expired"));
    }
    if req.client_id != client.client_id {
        return Err(Error::invalid_grant(
            "authorization code was issued to another client",
        ));
    }
    match params.get("redirect_uri") {
        Some(r) if r != req.redirect_uri => {
            return Err(Error::invalid_grant("redirect_uri does not match"))
        }
        None if req.redirect_uri_explicit => {
            return Err(Error::invalid_grant("redirect_uri is required"))
        }
        _ => {}
    }
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| Error::invalid_grant("code_verifier is required (PKCE)"))?;
    if !pkce::verify_s256(verifier, &req.code_challenge) {
        return Err(Error::invalid_grant("PKCE verification failed"));
    }
    if let Some(r) = params.get("resource") {
        if r != req.resource {
            return Err(Error::invalid_target(
                "resource differs from the authorization request",
            ));
        }
    }
    identity::resolve(ctx.config, ctx.store, &ac.user)?
        .ok_or_else(|| Error::invalid_grant("user no longer exists"))
}

fn refresh(
    ctx: &TokenContext<'_>,
    client: &RegisteredClient,
    params: &Params,
) -> Result<TokenResponse> {
    if !client.allows_grant("refresh_token") {
        return Err(Error::oauth(
            "unauthorized_client",
            "client may not use refresh_token",
        ));
    }
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| Error::invalid_request("refresh_token is required"))?;
    let token_hash = hash_secret(presented);
    let token = ctx
        .store
        .refresh_token(&token_hash)?
        .ok_or_else(|| Error::invalid_grant("unknown refresh token"))?;
    let grant = ctx
        .store
        .grant(&token.grant_id)?
        .ok_or_else(|| Error::invalid_grant("unknown refresh token"))?;
    if grant.client_id != client.client_id {
        // Another client holds this client's refresh token: treat it as leaked.
        ctx.store
            .revoke_grant(&grant.id, ctx.now, ctx.feed_until())?;
        tracing::warn!(client_id = %client.client_id, "refresh token presented by another client; grant revoked");
        return Err(Error::invalid_grant(
            "refresh token was issued to another client",
        ));
    }
    if grant.revoked {
        return Err(Error::invalid_grant("refresh token was revoked"));
    }
    if token.used {
        ctx.store
            .revoke_grant(&grant.id, ctx.now, ctx.feed_until())?;
        tracing::warn!(client_id = %client.client_id, "rotated-out refresh token replayed; grant revoked");
        return Err(Error::invalid_grant("refresh token was already used"));
    }
    // The stored expiry and the one the current config gives, whichever comes first: the
    // family's lifetime counts from the code exchange, whatever rotations happened since.
    let expires_at = token.expires_at.min(refresh_token_expiry(
        ctx.config,
        grant.created_at,
        token.created_at,
    ));
    if expires_at <= ctx.now {
        return Err(Error::invalid_grant("refresh token expired"));
    }
    if let Some(r) = params.get("resource") {
        if r != grant.resource {
            return Err(Error::invalid_target(
                "resource differs from the original grant",
            ));
        }
    }
    let granted = split_scope(&grant.scope);
    let scope = match params.get("scope") {
        Some(s) => {
            let requested = split_scope(s);
            if let Some(extra) = requested.iter().find(|r| !granted.contains(r)) {
                return Err(Error::oauth(
                    "invalid_scope",
                    format!("scope {extra} was not granted"),
                ));
            }
            requested.join(" ")
        }
        None => grant.scope.clone(),
    };
    let Some(user) = identity::resolve(ctx.config, ctx.store, &grant.user)? else {
        ctx.store
            .revoke_grant(&grant.id, ctx.now, ctx.feed_until())?;
        return Err(Error::invalid_grant("user no longer exists"));
    };
    // A server that needs the user's upstream account: once that token is gone (refused by
    // the server or the provider), the client must run authorization again, which runs the
    // upstream consent again.
    if let Some(route) = ctx
        .config
        .route_by_resource(&grant.resource)
        .filter(|r| r.has_upstream_oauth())
    {
        if !ctx.vault.holds_usable(&grant.user, &route.name, ctx.now)? {
            tracing::info!(client_id = %client.client_id, sub = %grant.user, route = %route.name, "refresh refused: the upstream account must be connected again");
            return Err(Error::invalid_grant(
                "the upstream account for this server must be connected again: run authorization",
            ));
        }
    }
    let (new_token, new_record) = new_refresh_token(ctx, &grant);
    if !ctx
        .store
        .rotate_refresh_token(&token_hash, &new_record, ctx.now)?
    {
        // Lost a race with another use of the same token: that is a replay too.
        ctx.store
            .revoke_grant(&grant.id, ctx.now, ctx.feed_until())?;
        return Err(Error::invalid_grant("refresh token was already used"));
    }
    respond(ctx, &user, &grant, &scope, Some(new_token))
}

/// client_credentials: a TE for the service client itself, without a refresh token.
fn service_client(
    ctx: &TokenContext<'_>,
    client: &RegisteredClient,
    params: &Params,
) -> Result<TokenResponse> {
    let t = client_credentials::client_credentials(ctx.config, ctx.store, client, params, ctx.now)?;
    respond(ctx, &t.subject, &t.grant, &t.grant.scope, None)
}

fn new_refresh_token(ctx: &TokenContext<'_>, grant: &Grant) -> (String, RefreshToken) {
    let token = random_token();
    let record = RefreshToken {
        token_hash: hash_secret(&token),
        grant_id: grant.id.clone(),
        created_at: ctx.now,
        expires_at: refresh_token_expiry(ctx.config, grant.created_at, ctx.now),
        used: false,
    };
    (token, record)
}

/// When a refresh token issued at `issued_at` stops working: the end of its family's
/// absolute lifetime (from `family_start`, the code exchange) or, with an idle timeout,
/// `issued_at` plus that timeout, whichever comes first.
pub fn refresh_token_expiry(config: &Config, family_start: i64, issued_at: i64) -> i64 {
    let a = &config.authorization_server;
    let family_end = family_start.saturating_add(ttl(a.refresh_token_ttl_seconds));
    match a.refresh_token_idle_seconds {
        Some(idle) => family_end.min(issued_at.saturating_add(ttl(idle))),
        None => family_end,
    }
}

fn ttl(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 2)
}

fn respond(
    ctx: &TokenContext<'_>,
    user: &Identity,
    grant: &Grant,
    scope: &str,
    refresh_token: Option<String>,
) -> Result<TokenResponse> {
    let expires_in = ctx.config.authorization_server.access_token_ttl_seconds;
    let claims = access_token_claims(ctx.config, user, grant, scope, ctx.now);
    let access_token = ctx.keys.sign_jwt(ctx.now, "at+jwt", &claims)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token,
        scope: scope.to_owned(),
    })
}

/// The TE claims (README, "How a request flows"; verified by `warden_core::token`).
pub fn access_token_claims(
    config: &Config,
    user: &Identity,
    grant: &Grant,
    scope: &str,
    now: i64,
) -> serde_json::Value {
    let exp = now + ttl(config.authorization_server.access_token_ttl_seconds);
    let mut claims = serde_json::json!({
        "iss": config.authorization_server.issuer,
        "sub": user.sub,
        "aud": grant.resource,
        "exp": exp,
        "iat": now,
        "nbf": now,
        "jti": random_id(),
        "client_id": grant.client_id,
        "scope": scope,
        "sid": grant.sid,
        // The revocation feed refuses every TE of a revoked grant by this.
        "gid": grant.id,
        "email": user.email,
        "name": user.name,
        "groups": user.groups,
    });
    // A client acting for itself: `authenticated_user` is false for it (`warden_core::policy`).
    if user.is_service_client() {
        claims["sub_kind"] = warden_core::token::SubjectKind::Client.as_str().into();
    }
    claims
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let creds = ClientCredentials {
            basic: Some(("app".into(), "basic-secret-1".into())),
            client_id: Some("app".into()),
            client_secret: Some("post-secret-2".into()),
            assertion: None,
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("basic-secret-1"), "{shown}");
        assert!(!shown.contains("post-secret-2"), "{shown}");
        assert!(
            shown.contains("app") && shown.contains("<redacted>"),
            "{shown}"
        );
        let mut client = crate::flows::RegisteredClient {
            client_id: "app".into(),
            client_name: None,
            auth_method: crate::config::TokenEndpointAuthMethod::ClientSecretBasic,
            secret: crate::flows::ClientSecret::Configured("configured-secret-3".into()),
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
            pre_registered: true,
            skip_consent: false,
            jwks: None,
            jwks_uri: None,
            document_host: None,
        };
        let shown = format!("{client:?}");
        assert!(!shown.contains("configured-secret-3"), "{shown}");
        client.secret = crate::flows::ClientSecret::Hashed("digest-4".into());
        let shown = format!("{client:?}");
        assert!(!shown.contains("digest-4"), "{shown}");
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
        let v = format!("Basic {}", STANDARD.encode("my%3Aapp:s%2Bc+ret%25"));
        assert_eq!(
            parse_basic(&v).unwrap(),
            ("my:app".into(), "s+c ret%".into())
        );
        assert_eq!(
            parse_basic(&format!("basic {}", STANDARD.encode("a:b"))).unwrap(),
            ("a".into(), "b".into())
        );
        assert!(parse_basic("Bearer abc").is_none());
        assert!(parse_basic("Basic !!!").is_none());
        assert!(parse_basic(&format!("Basic {}", STANDARD.encode("no-colon"))).is_none());
    }
}

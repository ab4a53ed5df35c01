//! Identity Assertion Authorization Grants (ID-JAG, draft-ietf-oauth-identity-assertion-authz-grant;
//! the MCP extension for enterprise-managed authorization): the provider, as the enterprise's
//! identity provider, exchanges an ID token it issued for a signed grant another authorization
//! server accepts with the RFC 7523 jwt-bearer grant (RFC 8693 token exchange at `/token`).

use std::collections::HashMap;

use axum::{
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::{bad_hook, oidc, query_params, random_token, unix_now, OAuthError, Provider, Shared};

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The `requested_token_type` (and `issued_token_type`) of an ID-JAG.
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// The `subject_token_type` accepted: an ID token of this provider.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The JOSE `typ` of an ID-JAG.
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// Lifetime of an ID-JAG (`exp` − `iat`), in seconds.
pub const ID_JAG_TTL_SECS: u64 = 300;

/// The user's claims an ID-JAG carries, when the user has them.
const RELEASED_CLAIMS: [&str; 3] = ["email", "name", "groups"];

/// An ID token the provider issued, by the SHA-256 of its text: so it knows its own tokens
/// without verifying signatures.
pub(crate) struct IssuedIdToken {
    pub(crate) user: String,
    pub(crate) exp_unix: u64,
}

pub(crate) fn id_token_key(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an ID-JAG is issued for.
pub(crate) struct Grant<'a> {
    pub(crate) user: &'a str,
    /// The client at the receiving authorization server (`client_id` claim).
    pub(crate) client_id: &'a str,
    /// That server's issuer (`aud`).
    pub(crate) audience: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) scope: Option<&'a str>,
}

impl Provider {
    /// A signed ID-JAG for `grant`.
    pub(crate) fn id_jag(&self, grant: &Grant<'_>) -> Result<String, OAuthError> {
        let released = self
            .store()
            .claims
            .get(grant.user)
            .map(|c| c.claims.clone())
            .unwrap_or_default();
        let iat = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(oidc::oidc_subject(grant.user)));
        claims.insert("aud".into(), json!(grant.audience));
        claims.insert("client_id".into(), json!(grant.client_id));
        claims.insert("resource".into(), json!(grant.resource));
        if let Some(scope) = grant.scope {
            claims.insert("scope".into(), json!(scope));
        }
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + ID_JAG_TTL_SECS));
        claims.insert("jti".into(), json!(random_token("jag_")));
        for name in RELEASED_CLAIMS {
            if let Some(value) = released.get(name) {
                claims.insert(name.into(), value.clone());
            }
        }
        self.sign_current(ID_JAG_TYP, &Value::Object(claims))
    }
}

/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` from the (authenticated)
/// client: an ID token of ours for an ID-JAG.
pub(crate) fn exchange(p: &Provider, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    match field("requested_token_type") {
        Some(ID_JAG_TOKEN_TYPE) => {}
        Some(other) => {
            return Err(OAuthError::new(
                "invalid_request",
                format!("requested_token_type {other} is not supported: only {ID_JAG_TOKEN_TYPE}"),
            ))
        }
        None => {
            return Err(OAuthError::new(
                "invalid_request",
                "requested_token_type is required",
            ))
        }
    }
    if field("subject_token_type") != Some(ID_TOKEN_TYPE) {
        return Err(OAuthError::new(
            "invalid_request",
            format!("subject_token_type must be {ID_TOKEN_TYPE}"),
        ));
    }
    let Some(subject) = field("subject_token") else {
        return Err(OAuthError::new(
            "invalid_request",
            "subject_token is required",
        ));
    };
    let Some(audience) = field("audience") else {
        return Err(OAuthError::new(
            "invalid_request",
            "audience is required: the issuer of the authorization server the grant is for",
        ));
    };
    let Some(resource) = field("resource") else {
        return Err(OAuthError::new(
            "invalid_request",
            "resource is required: the resource the grant is for",
        ));
    };
    let user = {
        let store = p.store();
        let Some(issued) = store.id_tokens.get(&id_token_key(subject)) else {
            return Err(OAuthError::new(
                "invalid_grant",
                "subject_token is not an ID token of this provider",
            ));
        };
        if issued.exp_unix <= unix_now() {
            return Err(OAuthError::new("invalid_grant", "subject_token expired"));
        }
        if store.disabled.contains(&issued.user) {
            return Err(OAuthError::new("invalid_grant", "the user is disabled"));
        }
        issued.user.clone()
    };
    let client_id = p
        .config
        .id_jag_client_id
        .as_deref()
        .unwrap_or(&p.config.client_id);
    let jag = p.id_jag(&Grant {
        user: &user,
        client_id,
        audience,
        resource,
        scope: field("scope"),
    })?;
    tracing::info!(%user, %audience, %resource, "ID-JAG issued");
    Ok(json!({
        "access_token": jag,
        "issued_token_type": ID_JAG_TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": ID_JAG_TTL_SECS,
    }))
}

/// `POST /_test/issue-id-token?user=alice`: an ID token for the provider's client, as a sign-in
/// would end with (no browser) → `{"id_token"}`.
pub(crate) async fn test_issue_id_token(
    State(p): State<Shared>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_params(query.as_deref());
    let Some(user) = params.get("user").filter(|u| p.is_user(u)) else {
        return bad_hook("user must name a configured user");
    };
    match p.id_token(user, None, unix_now()) {
        Ok(id_token) => Json(json!({ "id_token": id_token })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /_test/id-jag?user=alice&audience=A&resource=R[&client_id=C][&scope=S]`: an ID-JAG
/// without the exchange → `{"id_jag"}`.
pub(crate) async fn test_id_jag(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let Some(user) = params.get("user").filter(|u| p.is_user(u)) else {
        return bad_hook("user must name a configured user");
    };
    let (Some(audience), Some(resource)) = (params.get("audience"), params.get("resource")) else {
        return bad_hook("audience and resource are required");
    };
    let client_id = params
        .get("client_id")
        .or(p.config.id_jag_client_id.as_ref())
        .unwrap_or(&p.config.client_id);
    let grant = Grant {
        user,
        client_id,
        audience,
        resource,
        scope: params.get("scope").map(String::as_str),
    };
    match p.id_jag(&grant) {
        Ok(id_jag) => Json(json!({ "id_jag": id_jag })).into_response(),
        Err(e) => e.into_response(),
    }
}

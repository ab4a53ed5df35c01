//! Dynamic Client Registration (RFC 7591).

use serde::Deserialize;

use super::{hash_secret, random_id, random_token, redirect};
use crate::config::TokenEndpointAuthMethod;
use crate::error::{Error, Result};
use crate::store::StoredClient;

const MAX_REDIRECT_URIS: usize = 20;
const MAX_NAME_LEN: usize = 200;

/// The metadata we act on; anything else a client sends is ignored (RFC 7591 §2).
#[derive(Debug, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub application_type: Option<String>,
}

fn metadata_error(description: impl Into<String>) -> Error {
    Error::oauth("invalid_client_metadata", description)
}

/// Validates a registration; returns the client to store and the response body.
pub fn register(body: &[u8], now: i64) -> Result<(StoredClient, serde_json::Value)> {
    let req: RegistrationRequest = serde_json::from_slice(body).map_err(|e| {
        metadata_error(format!(
            "registration request is not valid JSON metadata: {e}"
        ))
    })?;

    let redirect_uris = req.redirect_uris.unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(Error::oauth(
            "invalid_redirect_uri",
            "redirect_uris is required",
        ));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(Error::oauth(
            "invalid_redirect_uri",
            "too many redirect_uris",
        ));
    }
    for r in &redirect_uris {
        redirect::validate_redirect_uri(r)
            .map_err(|m| Error::oauth("invalid_redirect_uri", format!("{r}: {m}")))?;
    }

    // RFC 7591's default is client_secret_basic; echo whatever the client asked for.
    let method = match req.token_endpoint_auth_method.as_deref() {
        None => TokenEndpointAuthMethod::ClientSecretBasic,
        Some(m) => TokenEndpointAuthMethod::parse(m)
            .ok_or_else(|| metadata_error(format!("unsupported token_endpoint_auth_method {m}")))?,
    };

    // Omitted grant_types: both, so MCP clients that leave it out still get refresh tokens
    // (the server may supply defaults; the response tells the client what it got).
    let grant_types = req
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if grant_types.is_empty() {
        return Err(metadata_error("grant_types must not be empty"));
    }
    if let Some(g) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(metadata_error(format!("unsupported grant type {g}")));
    }
    if !grant_types.iter().any(|g| g == "authorization_code") {
        return Err(metadata_error(
            "grant_types must include authorization_code",
        ));
    }
    let response_types = req.response_types.unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") || response_types.is_empty() {
        return Err(metadata_error(
            "only response_types [\"code\"] is supported",
        ));
    }
    if let Some(a) = &req.application_type {
        if a != "web" && a != "native" {
            return Err(metadata_error("application_type must be web or native"));
        }
    }
    if let Some(n) = &req.client_name {
        if n.chars().count() > MAX_NAME_LEN {
            return Err(metadata_error("client_name is too long"));
        }
    }

    let client_id = random_id();
    let secret = match method {
        TokenEndpointAuthMethod::None => None,
        _ => Some(random_token()),
    };
    let client = StoredClient {
        client_id: client_id.clone(),
        client_name: req.client_name.clone(),
        secret_hash: secret.as_deref().map(hash_secret),
        token_endpoint_auth_method: method,
        redirect_uris: redirect_uris.clone(),
        grant_types: grant_types.clone(),
        response_types: response_types.clone(),
        application_type: req.application_type.clone(),
        created_at: now,
    };

    let mut body = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": now,
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": response_types,
        "token_endpoint_auth_method": method.as_str(),
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(s) = secret {
            obj.insert("client_secret".into(), s.into());
            obj.insert("client_secret_expires_at".into(), 0.into());
        }
        if let Some(n) = req.client_name {
            obj.insert("client_name".into(), n.into());
        }
        if let Some(a) = req.application_type {
            obj.insert("application_type".into(), a.into());
        }
    }
    Ok((client, body))
}

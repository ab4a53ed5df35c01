//! Dynamic Client Registration (RFC 7591).

use serde::Deserialize;

use axum::http::StatusCode;

use super::{constant_time_eq, hash_secret, random_id, random_token, redirect};
use crate::config::{RegistrationConfig, RegistrationMode, TokenEndpointAuthMethod};
use crate::error::{Error, Result};
use crate::store::StoredClient;

/// Longest `client_name`, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Longest redirect URI, in bytes.
pub const MAX_REDIRECT_URI_LEN: usize = 2000;
/// Longest `application_type`, `token_endpoint_auth_method`, grant or response type: all
/// are short keywords; anything longer is refused before it is looked at.
const MAX_KEYWORD_LEN: usize = 64;

/// Whether this request may register at all: the operator's mode, and in
/// `initial_access_token` mode the `Authorization: Bearer` token (RFC 7591 §3), compared in
/// constant time. `authorization` is the request's `Authorization` header, if any.
pub fn admit(config: &RegistrationConfig, authorization: Option<&[u8]>) -> Result<()> {
    match config.mode {
        RegistrationMode::Open => Ok(()),
        RegistrationMode::Closed => Err(Error::OAuth {
            status: StatusCode::FORBIDDEN,
            error: "access_denied",
            description: "dynamic client registration is closed on this server".into(),
        }),
        RegistrationMode::InitialAccessToken => {
            let expected = config.initial_access_token.as_deref().unwrap_or("");
            let presented = authorization
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                });
            match presented {
                None => Err(Error::InvalidToken {
                    description: "registration requires an initial access token".into(),
                    presented: false,
                }),
                // Digests, so the comparison time says nothing about the token's length.
                Some(t)
                    if !expected.is_empty()
                        && constant_time_eq(
                            hash_secret(t).as_bytes(),
                            hash_secret(expected).as_bytes(),
                        ) =>
                {
                    Ok(())
                }
                Some(_) => Err(Error::InvalidToken {
                    description: "the initial access token is not valid".into(),
                    presented: true,
                }),
            }
        }
    }
}

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
    /// `private_key_jwt`: the client's public keys, inline or by URL (exactly one).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

fn unique(values: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn metadata_error(description: impl Into<String>) -> Error {
    Error::oauth("invalid_client_metadata", description)
}

/// Validates a registration within `limits`; returns the client to store and the response
/// body. Only the fields below are stored, each bounded, so a record stays small.
pub fn register(
    body: &[u8],
    now: i64,
    limits: &RegistrationConfig,
) -> Result<(StoredClient, serde_json::Value)> {
    if body.len() > limits.max_metadata_bytes {
        return Err(metadata_error(format!(
            "registration request is larger than {} bytes",
            limits.max_metadata_bytes
        )));
    }
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
    if redirect_uris.len() > limits.max_redirect_uris {
        return Err(Error::oauth(
            "invalid_redirect_uri",
            format!(
                "too many redirect_uris (at most {})",
                limits.max_redirect_uris
            ),
        ));
    }
    for r in &redirect_uris {
        if r.len() > MAX_REDIRECT_URI_LEN {
            return Err(Error::oauth(
                "invalid_redirect_uri",
                format!("a redirect URI is longer than {MAX_REDIRECT_URI_LEN} bytes"),
            ));
        }
        redirect::validate_redirect_uri(r)
            .map_err(|m| Error::oauth("invalid_redirect_uri", format!("{r}: {m}")))?;
    }
    // Keywords are echoed in errors and stored: refuse long ones before looking at them.
    let keywords = [
        req.token_endpoint_auth_method.iter().collect::<Vec<_>>(),
        req.application_type.iter().collect(),
        req.grant_types.iter().flatten().collect(),
        req.response_types.iter().flatten().collect(),
    ];
    if keywords.iter().flatten().any(|k| k.len() > MAX_KEYWORD_LEN) {
        return Err(metadata_error("a metadata value is too long"));
    }

    // RFC 7591's default is client_secret_basic; echo whatever the client asked for.
    let method = match req.token_endpoint_auth_method.as_deref() {
        None => TokenEndpointAuthMethod::ClientSecretBasic,
        Some(m) => TokenEndpointAuthMethod::parse(m)
            .ok_or_else(|| metadata_error(format!("unsupported token_endpoint_auth_method {m}")))?,
    };

    let (jwks, jwks_uri) = client_keys(method, req.jwks, req.jwks_uri)?;

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
            return Err(metadata_error(format!(
                "client_name is longer than {MAX_NAME_LEN} characters"
            )));
        }
    }
    // Each type once: repeats would only be stored and echoed.
    let grant_types = unique(grant_types);
    let response_types = unique(response_types);

    let client_id = random_id();
    let secret = match method {
        TokenEndpointAuthMethod::None | TokenEndpointAuthMethod::PrivateKeyJwt => None,
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
        jwks: jwks.clone(),
        jwks_uri: jwks_uri.clone(),
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
        if let Some(k) = jwks {
            obj.insert("jwks".into(), k);
        }
        if let Some(u) = jwks_uri {
            obj.insert("jwks_uri".into(), u.into());
        }
    }
    Ok((client, body))
}

/// Longest `jwks_uri`, in bytes.
const MAX_JWKS_URI_LEN: usize = 2000;

/// The keys of a `private_key_jwt` client: `jwks` (holding a key that can sign an assertion)
/// or an https `jwks_uri`, exactly one; other clients register none.
fn client_keys(
    method: TokenEndpointAuthMethod,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
) -> Result<(Option<serde_json::Value>, Option<String>)> {
    if method != TokenEndpointAuthMethod::PrivateKeyJwt {
        if jwks.is_some() || jwks_uri.is_some() {
            return Err(metadata_error(
                "jwks and jwks_uri are only for token_endpoint_auth_method private_key_jwt",
            ));
        }
        return Ok((None, None));
    }
    match (jwks, jwks_uri) {
        (Some(jwks), None) => {
            let keys = crate::jws::parse_jwks(jwks.to_string().as_bytes())
                .map_err(|m| metadata_error(format!("jwks: {m}")))?;
            if !keys
                .iter()
                .any(|k| crate::jws::ASSERTION_ALGS.iter().any(|a| k.allows(a)))
            {
                return Err(metadata_error(
                    "jwks holds no key that can sign with RS256, PS256, ES256 or EdDSA",
                ));
            }
            Ok((Some(jwks), None))
        }
        (None, Some(uri)) => {
            if uri.len() > MAX_JWKS_URI_LEN {
                return Err(metadata_error(format!(
                    "jwks_uri is longer than {MAX_JWKS_URI_LEN} bytes"
                )));
            }
            crate::jwks_cache::check_client_jwks_uri(&uri)
                .map_err(|m| metadata_error(format!("jwks_uri: {m}")))?;
            Ok((None, Some(uri)))
        }
        (Some(_), Some(_)) => Err(metadata_error("give jwks or jwks_uri, not both")),
        (None, None) => Err(metadata_error(
            "private_key_jwt needs the client's keys: jwks or jwks_uri",
        )),
    }
}

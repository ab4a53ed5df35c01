//! The OpenID Connect half of the provider: signing keys, ID tokens, discovery, JWKS, the OIDC
//! userinfo answer and the OIDC test hooks. See the crate docs for the endpoints.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use aws_lc_rs::{
    hmac,
    rand::SystemRandom,
    rsa,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use rand_core::{OsRng, RngCore as _};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::{bad_hook, query_params, unix_now, AuthStyle, OAuthError, Provider, Shared};

/// Lifetime of an ID token (`exp` − `iat`), in seconds.
pub const ID_TOKEN_TTL_SECS: u64 = 300;
/// At most this many keys stay listed in the JWKS after `rotate-key?keep_old=true`.
pub const MAX_PUBLISHED_KEYS: usize = 16;
/// `aud` of a `wrong-aud` ID token.
pub const OTHER_AUDIENCE: &str = "another-client";
/// `azp` (and second `aud`) of an `azp-other` ID token.
pub const OTHER_AZP: &str = "other";
/// `iss` of a `wrong-iss` ID token.
pub const WRONG_ISSUER: &str = "https://wrong-issuer.example";

/// Claims the provider sets itself; a user's configured claims cannot override them.
const RESERVED_CLAIMS: [&str; 8] = [
    "iss",
    "sub",
    "aud",
    "azp",
    "iat",
    "exp",
    "auth_time",
    "nonce",
];

/// The ID-token signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdTokenAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, a 2048-bit key.
    #[default]
    Rs256,
    /// ECDSA P-256 with SHA-256 (fixed-size `r || s` signature).
    Es256,
}

impl IdTokenAlg {
    /// The JOSE name (`RS256`, `ES256`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdTokenAlg::Rs256 => "RS256",
            IdTokenAlg::Es256 => "ES256",
        }
    }
}

impl std::str::FromStr for IdTokenAlg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" | "rs256" => Ok(IdTokenAlg::Rs256),
            "ES256" | "es256" => Ok(IdTokenAlg::Es256),
            other => anyhow::bail!("ID token algorithm must be RS256 or ES256, not {other:?}"),
        }
    }
}

/// Where a user's configured claims are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimsPlacement {
    /// In the ID token and at `/userinfo`.
    #[default]
    Both,
    /// In the ID token only (`/userinfo` answers just `sub`).
    IdToken,
    /// At `/userinfo` only (the ID token carries just the standard claims), so a relying
    /// party's userinfo fallback can be tested.
    Userinfo,
}

impl ClaimsPlacement {
    /// The name used by the binary and the hook (`both`, `id_token`, `userinfo`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimsPlacement::Both => "both",
            ClaimsPlacement::IdToken => "id_token",
            ClaimsPlacement::Userinfo => "userinfo",
        }
    }

    fn in_id_token(self) -> bool {
        self != ClaimsPlacement::Userinfo
    }

    fn in_userinfo(self) -> bool {
        self != ClaimsPlacement::IdToken
    }
}

impl std::str::FromStr for ClaimsPlacement {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "both" => Ok(ClaimsPlacement::Both),
            "id_token" => Ok(ClaimsPlacement::IdToken),
            "userinfo" => Ok(ClaimsPlacement::Userinfo),
            other => {
                anyhow::bail!("claims placement must be both, id_token or userinfo, not {other:?}")
            }
        }
    }
}

/// A deliberate defect of the next ID tokens (`POST /_test/id-token?mode=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// `aud` is [`OTHER_AUDIENCE`].
    WrongAud,
    /// `aud` is `[client_id, "other"]` and `azp` is [`OTHER_AZP`].
    AzpOther,
    /// `iss` is [`WRONG_ISSUER`].
    WrongIss,
    /// `nonce` is a random value (present even when the request had none).
    WrongNonce,
    /// No `nonce`, even when the request had one.
    NoNonce,
    /// `exp` is 10 minutes in the past (`iat` = `exp` − 300).
    Expired,
    /// One bit of the signature is flipped.
    BadSignature,
    /// Signed with a key whose `kid` the JWKS does not list.
    UnknownKid,
    /// Header `alg: "none"`, empty signature.
    AlgNone,
    /// Header `alg: "HS256"` (the current `kid`), HMAC-SHA256 keyed with the compact JSON of the
    /// current public JWK as `/jwks` lists it: the classic algorithm-confusion attack.
    Hs256,
}

impl std::str::FromStr for IdTokenFault {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "wrong-aud" => IdTokenFault::WrongAud,
            "azp-other" => IdTokenFault::AzpOther,
            "wrong-iss" => IdTokenFault::WrongIss,
            "wrong-nonce" => IdTokenFault::WrongNonce,
            "no-nonce" => IdTokenFault::NoNonce,
            "expired" => IdTokenFault::Expired,
            "bad-signature" => IdTokenFault::BadSignature,
            "unknown-kid" => IdTokenFault::UnknownKid,
            "alg-none" => IdTokenFault::AlgNone,
            "hs256" => IdTokenFault::Hs256,
            other => anyhow::bail!("unknown ID token fault {other:?}"),
        })
    }
}

/// The stable, opaque OIDC `sub` of a user: `u-` and the first 16 hex digits of
/// SHA-256(username). Never the username or the email, like a real identity provider.
pub fn oidc_subject(username: &str) -> String {
    let digest = Sha256::digest(username.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("u-{hex}")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn scope_has_openid(scope: &str) -> bool {
    scope.split(' ').any(|s| s == "openid")
}

// =============================================================================================
// Keys
// =============================================================================================

enum Material {
    Rsa(rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key and its public JWK.
pub(crate) struct SigningKey {
    kid: String,
    alg: IdTokenAlg,
    material: Material,
    jwk: Value,
}

impl SigningKey {
    pub(crate) fn generate(alg: IdTokenAlg, kid_prefix: &str) -> anyhow::Result<Self> {
        let mut id = [0u8; 9];
        OsRng.fill_bytes(&mut id);
        let kid = format!("{kid_prefix}{}", b64(&id));
        let (material, mut jwk) = match alg {
            IdTokenAlg::Rs256 => {
                let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048)
                    .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
                let c = rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = json!({ "kty": "RSA", "n": b64(&c.n), "e": b64(&c.e) });
                (Material::Rsa(pair), jwk)
            }
            IdTokenAlg::Es256 => {
                let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
                // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
                let point = pair.public_key().as_ref();
                let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
                    anyhow::bail!("unexpected P-256 public key encoding");
                };
                let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y) });
                (Material::Ec(pair), jwk)
            }
        };
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".to_owned(), json!(kid));
            map.insert("alg".to_owned(), json!(alg.as_str()));
            map.insert("use".to_owned(), json!("sig"));
        }
        Ok(SigningKey {
            kid,
            alg,
            material,
            jwk,
        })
    }

    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(sig)
            }
            Material::Ec(pair) => Ok(pair
                .sign(&rng, message)
                .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec()),
        }
    }
}

/// The signing key in use, the JWKS as published, and the rogue key of `unknown-kid`.
pub(crate) struct Keys {
    current: Arc<SigningKey>,
    published: Vec<Value>,
    rogue: Option<Arc<SigningKey>>,
}

impl Keys {
    pub(crate) fn new(alg: IdTokenAlg) -> anyhow::Result<Self> {
        let key = SigningKey::generate(alg, "k-")?;
        Ok(Keys {
            published: vec![key.jwk.clone()],
            current: Arc::new(key),
            rogue: None,
        })
    }
}

/// A user's configured claims (a JSON object) and where they are released.
#[derive(Clone)]
pub(crate) struct UserClaims {
    pub(crate) claims: Map<String, Value>,
    pub(crate) placement: ClaimsPlacement,
}

/// The user claims of the configuration, checked: every value must be a JSON object.
pub(crate) fn initial_claims(
    user_claims: &HashMap<String, Value>,
    placement: ClaimsPlacement,
) -> anyhow::Result<HashMap<String, UserClaims>> {
    user_claims
        .iter()
        .map(|(user, value)| match value {
            Value::Object(claims) => Ok((
                user.clone(),
                UserClaims {
                    claims: claims.clone(),
                    placement,
                },
            )),
            _ => anyhow::bail!("the claims of user {user:?} must be a JSON object"),
        })
        .collect()
}

pub(crate) struct FaultCount<T> {
    pub(crate) fault: T,
    pub(crate) remaining: u64,
}

impl<T: Copy> FaultCount<T> {
    /// The fault if it still applies to this request (and counts it).
    pub(crate) fn take(slot: &mut Option<FaultCount<T>>) -> Option<T> {
        let entry = slot.as_mut()?;
        if entry.remaining == 0 {
            *slot = None;
            return None;
        }
        entry.remaining -= 1;
        Some(entry.fault)
    }
}

// =============================================================================================
// ID tokens
// =============================================================================================

fn server_error(description: &str) -> OAuthError {
    OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        ..OAuthError::new("server_error", description)
    }
}

impl Provider {
    /// A signed ID token for `user` (applying an injected fault, if any).
    pub(crate) fn id_token(
        &self,
        user: &str,
        nonce: Option<&str>,
        auth_time: u64,
    ) -> Result<String, OAuthError> {
        let (fault, key, extra, rogue) = {
            let mut store = self.store();
            let fault = FaultCount::take(&mut store.id_token_fault);
            let extra = store
                .claims
                .get(user)
                .filter(|c| c.placement.in_id_token())
                .map(|c| c.claims.clone());
            (
                fault,
                Arc::clone(&store.keys.current),
                extra,
                store.keys.rogue.clone(),
            )
        };
        let client = self.config.client_id.as_str();
        let iat = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(oidc_subject(user)));
        claims.insert("aud".into(), json!(client));
        claims.insert("azp".into(), json!(client));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + ID_TOKEN_TTL_SECS));
        claims.insert("auth_time".into(), json!(auth_time));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        for (name, value) in extra.unwrap_or_default() {
            if !RESERVED_CLAIMS.contains(&name.as_str()) {
                claims.insert(name, value);
            }
        }
        let mut signer = key;
        match fault {
            Some(IdTokenFault::WrongAud) => {
                claims.insert("aud".into(), json!(OTHER_AUDIENCE));
            }
            Some(IdTokenFault::AzpOther) => {
                claims.insert("aud".into(), json!([client, OTHER_AZP]));
                claims.insert("azp".into(), json!(OTHER_AZP));
            }
            Some(IdTokenFault::WrongIss) => {
                claims.insert("iss".into(), json!(WRONG_ISSUER));
            }
            Some(IdTokenFault::WrongNonce) => {
                let mut bytes = [0u8; 12];
                OsRng.fill_bytes(&mut bytes);
                claims.insert("nonce".into(), json!(format!("wrong-{}", b64(&bytes))));
            }
            Some(IdTokenFault::NoNonce) => {
                claims.remove("nonce");
            }
            Some(IdTokenFault::Expired) => {
                let exp = iat.saturating_sub(600);
                claims.insert("exp".into(), json!(exp));
                claims.insert("iat".into(), json!(exp.saturating_sub(ID_TOKEN_TTL_SECS)));
            }
            Some(IdTokenFault::UnknownKid) => {
                signer = match rogue {
                    Some(rogue) if rogue.alg == signer.alg => rogue,
                    _ => {
                        // Generated once, on first use: a key of the same algorithm that the
                        // JWKS never lists.
                        let rogue = Arc::new(
                            SigningKey::generate(signer.alg, "unknown-")
                                .map_err(|e| server_error(&e.to_string()))?,
                        );
                        self.store().keys.rogue = Some(Arc::clone(&rogue));
                        rogue
                    }
                };
            }
            Some(IdTokenFault::BadSignature | IdTokenFault::AlgNone | IdTokenFault::Hs256)
            | None => {}
        }
        let claims = Value::Object(claims);
        let encode = |header: &Value| {
            format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            )
        };
        let token = match fault {
            Some(IdTokenFault::AlgNone) => {
                format!("{}.", encode(&json!({ "alg": "none", "typ": "JWT" })))
            }
            Some(IdTokenFault::Hs256) => {
                let input = encode(&json!({ "alg": "HS256", "kid": signer.kid, "typ": "JWT" }));
                let secret = signer.jwk.to_string();
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
                let tag = hmac::sign(&key, input.as_bytes());
                format!("{input}.{}", b64(tag.as_ref()))
            }
            _ => {
                let input = encode(&json!({
                    "alg": signer.alg.as_str(),
                    "kid": signer.kid,
                    "typ": "JWT",
                }));
                let mut sig = signer
                    .sign(input.as_bytes())
                    .map_err(|e| server_error(&e.to_string()))?;
                if fault == Some(IdTokenFault::BadSignature) {
                    if let Some(last) = sig.last_mut() {
                        *last ^= 0x01;
                    }
                }
                format!("{input}.{}", b64(&sig))
            }
        };
        if let Some(fault) = fault {
            tracing::info!(?fault, "issued a deliberately broken ID token");
        }
        // Remembered, so a token exchange can take it as its subject (`id_jag`).
        let exp_unix = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        self.store().id_tokens.insert(
            crate::id_jag::id_token_key(&token),
            crate::id_jag::IssuedIdToken {
                user: user.to_owned(),
                exp_unix,
            },
        );
        Ok(token)
    }

    /// `claims` as a JWT of JOSE type `typ`, signed with the current key (the one `/jwks`
    /// publishes).
    pub(crate) fn sign_current(&self, typ: &str, claims: &Value) -> Result<String, OAuthError> {
        let signer = Arc::clone(&self.store().keys.current);
        let header = json!({ "alg": signer.alg.as_str(), "kid": signer.kid, "typ": typ });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = signer
            .sign(input.as_bytes())
            .map_err(|e| server_error(&e.to_string()))?;
        Ok(format!("{input}.{}", b64(&sig)))
    }

    /// A user the configuration names (with a password or with claims).
    pub(crate) fn is_user(&self, name: &str) -> bool {
        self.config.users.iter().any(|(u, _)| u == name)
            || self.config.user_claims.contains_key(name)
    }

    /// The `/userinfo` answer for an openid access token of `user`.
    pub(crate) fn oidc_userinfo(&self, user: &str) -> Value {
        let mut out = self
            .store()
            .claims
            .get(user)
            .filter(|c| c.placement.in_userinfo())
            .map(|c| c.claims.clone())
            .unwrap_or_default();
        out.insert("sub".into(), json!(oidc_subject(user)));
        Value::Object(out)
    }
}

// =============================================================================================
// Discovery and JWKS
// =============================================================================================

fn injected(status: StatusCode, what: &str) -> Response {
    tracing::info!(status = status.as_u16(), "injected {what} failure");
    (
        status,
        Json(json!({ "error": "temporarily_unavailable", "error_description": format!("injected {what} failure") })),
    )
        .into_response()
}

pub(crate) async fn discovery(State(p): State<Shared>) -> Response {
    let (failure, mut claim_names) = {
        let mut store = p.store();
        store.stats.discovery_requests += 1;
        let names: BTreeSet<String> = store
            .claims
            .values()
            .flat_map(|c| c.claims.keys().cloned())
            .collect();
        (FaultCount::take(&mut store.fail_discovery), names)
    };
    if let Some(status) = failure {
        return injected(status, "discovery");
    }
    for standard in RESERVED_CLAIMS
        .iter()
        .chain(&["email", "email_verified", "name", "groups"])
    {
        claim_names.insert((*standard).to_owned());
    }
    let issuer = &p.issuer;
    let auth_methods: &[&str] = match p.config.auth_style {
        AuthStyle::Header => &["client_secret_basic"],
        AuthStyle::Params => &["client_secret_post"],
        AuthStyle::Any => &["client_secret_basic", "client_secret_post"],
    };
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [p.config.id_token_alg.as_str()],
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token", crate::id_jag::TOKEN_EXCHANGE_GRANT],
        "claims_supported": claim_names,
    }))
    .into_response()
}

pub(crate) async fn jwks(State(p): State<Shared>) -> Response {
    let (failure, keys) = {
        let mut store = p.store();
        store.stats.jwks_requests += 1;
        (
            FaultCount::take(&mut store.fail_jwks),
            store.keys.published.clone(),
        )
    };
    if let Some(status) = failure {
        return injected(status, "JWKS");
    }
    Json(json!({ "keys": keys })).into_response()
}

// =============================================================================================
// Test hooks
// =============================================================================================

fn count_param(params: &HashMap<String, String>) -> Result<u64, &'static str> {
    match params.get("count").map(|s| s.parse::<u64>()) {
        None => Ok(1),
        Some(Ok(count)) => Ok(count),
        Some(Err(_)) => Err("count must be a number"),
    }
}

/// `status` (default 503, 400..=599) and `count` (default 1) of a fail hook.
fn fail_params(query: Option<&str>) -> Result<(StatusCode, u64), &'static str> {
    let params = query_params(query);
    let status = match params.get("status").map(|s| s.parse::<u16>()) {
        None => StatusCode::SERVICE_UNAVAILABLE,
        Some(Ok(code)) if (400..=599).contains(&code) => {
            StatusCode::from_u16(code).map_err(|_| "status must be 400..=599")?
        }
        Some(_) => return Err("status must be 400..=599"),
    };
    Ok((status, count_param(&params)?))
}

pub(crate) async fn test_fail_discovery(
    State(p): State<Shared>,
    RawQuery(query): RawQuery,
) -> Response {
    let (status, count) = match fail_params(query.as_deref()) {
        Ok(v) => v,
        Err(message) => return bad_hook(message),
    };
    p.store().fail_discovery = (count > 0).then_some(FaultCount {
        fault: status,
        remaining: count,
    });
    Json(json!({ "status": status.as_u16(), "count": count })).into_response()
}

pub(crate) async fn test_fail_jwks(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let (status, count) = match fail_params(query.as_deref()) {
        Ok(v) => v,
        Err(message) => return bad_hook(message),
    };
    p.store().fail_jwks = (count > 0).then_some(FaultCount {
        fault: status,
        remaining: count,
    });
    Json(json!({ "status": status.as_u16(), "count": count })).into_response()
}

pub(crate) async fn test_id_token(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let Some(mode) = params.get("mode") else {
        return bad_hook("missing mode");
    };
    if mode == "off" {
        p.store().id_token_fault = None;
        return Json(json!({ "mode": "off" })).into_response();
    }
    let fault = match mode.parse::<IdTokenFault>() {
        Ok(fault) => fault,
        Err(e) => return bad_hook(&e.to_string()),
    };
    let count = match count_param(&params) {
        Ok(count) => count,
        Err(message) => return bad_hook(message),
    };
    p.store().id_token_fault = (count > 0).then_some(FaultCount {
        fault,
        remaining: count,
    });
    Json(json!({ "mode": mode, "count": count })).into_response()
}

fn internal_error(message: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": message })),
    )
        .into_response()
}

pub(crate) async fn test_rotate_key(
    State(p): State<Shared>,
    RawQuery(query): RawQuery,
) -> Response {
    let keep_old = query_params(query.as_deref())
        .get("keep_old")
        .is_some_and(|v| v == "true" || v == "1");
    let alg = p.config.id_token_alg;
    // RSA key generation takes a while: keep it off the async workers.
    let generated = tokio::task::spawn_blocking(move || SigningKey::generate(alg, "k-")).await;
    let key = match generated {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => return internal_error(&e.to_string()),
        Err(e) => return internal_error(&e.to_string()),
    };
    let kid = key.kid.clone();
    let mut store = p.store();
    let keys = &mut store.keys;
    if keep_old {
        keys.published.push(key.jwk.clone());
        let excess = keys.published.len().saturating_sub(MAX_PUBLISHED_KEYS);
        keys.published.drain(..excess);
    } else {
        keys.published = vec![key.jwk.clone()];
    }
    keys.current = Arc::new(key);
    let published: Vec<Value> = keys
        .published
        .iter()
        .map(|jwk| jwk["kid"].clone())
        .collect();
    drop(store);
    tracing::info!(kid = %kid, keep_old, "signing key rotated");
    Json(json!({ "kid": kid, "published": published })).into_response()
}

pub(crate) async fn test_claims(
    State(p): State<Shared>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = query_params(query.as_deref());
    let Some(user) = params.get("user") else {
        return bad_hook("missing user");
    };
    let placement = match params
        .get("placement")
        .map(|s| s.parse::<ClaimsPlacement>())
    {
        None => ClaimsPlacement::Both,
        Some(Ok(placement)) => placement,
        Some(Err(e)) => return bad_hook(&e.to_string()),
    };
    let claims = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(claims)) => claims,
        _ => return bad_hook("the body must be a JSON object"),
    };
    let mut store = p.store();
    // Only users that exist: the table stays bounded by the configuration.
    let known =
        p.config.users.iter().any(|(u, _)| u == user) || store.claims.contains_key(user.as_str());
    if !known {
        drop(store);
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown user {user:?}") })),
        )
            .into_response();
    }
    store
        .claims
        .insert(user.clone(), UserClaims { claims, placement });
    drop(store);
    tracing::info!(user = %user, placement = placement.as_str(), "user claims replaced");
    Json(json!({ "user": user, "placement": placement.as_str() })).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn subject_is_opaque_and_stable() {
        let sub = oidc_subject("alice");
        assert_eq!(sub, oidc_subject("alice"));
        assert_eq!(sub.len(), 18);
        assert!(sub.starts_with("u-"));
        assert!(sub[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(sub, oidc_subject("bob"));
    }

    #[test]
    fn rsa_jwk_has_the_public_exponent() {
        let key = SigningKey::generate(IdTokenAlg::Rs256, "t-").unwrap();
        assert_eq!(b64(&[1, 0, 1]), key.jwk["e"]);
    }
}

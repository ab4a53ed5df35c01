//! Verification of the external token (TE): the JWT our token service issues to MCP clients.

use chrono::{DateTime, TimeZone, Utc};
use jwt_compact::alg::{Ed25519, Es256};
use jwt_compact::{AlgorithmExt, Claims, TimeOptions, UntrustedToken};
use serde::{Deserialize, Serialize};

use crate::keys::{KeySet, VerifyingKey};

/// The TE's claims beyond the registered time claims (which `jwt_compact::Claims` carries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub sid: String,
    /// The grant the TE was issued under (empty on app TEs, which have a session only): the
    /// revocation feed refuses every TE of a revoked grant.
    #[serde(default)]
    pub gid: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Who `sub` is: a user (absent), or a client acting for itself (`"client"`, the
    /// client_credentials grant). Any other value makes the token malformed.
    #[serde(default, skip_serializing_if = "SubjectKind::is_user")]
    pub sub_kind: SubjectKind,
}

/// The TE's `sub_kind` claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A user signed in (the claim is absent).
    #[default]
    User,
    /// A service client (client_credentials): `authenticated_user` is false for it.
    Client,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::Client => "client",
        }
    }

    pub fn is_user(&self) -> bool {
        *self == SubjectKind::User
    }
}

impl TeClaims {
    /// A client acting for itself rather than for a user.
    pub fn is_service_client(&self) -> bool {
        self.sub_kind == SubjectKind::Client
    }
}

/// `aud` may be a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, resource: &str) -> bool {
        match self {
            Audience::One(a) => a == resource,
            Audience::Many(all) => all.iter().any(|a| a == resource),
        }
    }
}

/// A token whose signature, issuer and lifetime have been checked. The audience is checked
/// per request (`Identity::allows_resource`) because one token may be presented on any route.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub claims: TeClaims,
    /// Unix seconds; the token is unusable after `expires_at + leeway`.
    pub expires_at: i64,
    /// `iat`, Unix seconds (`None` without one: a user's revocation then covers it).
    pub issued_at: Option<i64>,
}

impl Identity {
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.claims.aud.contains(resource)
    }
}

/// Why a token was refused. Everything but `UnknownKey` is final for that token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    /// The header names a key this filter does not (yet) have: refetch the JWKS once.
    UnknownKey(String),
    MissingKeyId,
    AlgorithmMismatch,
    BadSignature,
    WrongIssuer,
    Expired,
    NotYetValid,
    MissingExpiry,
    /// Not an access token (RFC 9068 `typ: at+jwt`): an ID token or other JWT from the same key.
    WrongType,
    /// The header names extensions that must be understood (`crit`, RFC 7515 §4.1.11); the
    /// filter understands none, so it must refuse the token.
    CriticalHeader,
    /// `aud` does not name the resource asked for (checked before the signature).
    WrongAudience,
    /// Too many failed signature checks lately (see `SignatureBudget`): not checked at all.
    CheckBudgetSpent,
}

impl TokenError {
    /// Short reason for logs; never includes token material.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token-malformed",
            TokenError::UnknownKey(_) => "token-unknown-key",
            TokenError::MissingKeyId => "token-missing-kid",
            TokenError::AlgorithmMismatch => "token-alg-mismatch",
            TokenError::BadSignature => "token-bad-signature",
            TokenError::WrongIssuer => "token-wrong-issuer",
            TokenError::Expired => "token-expired",
            TokenError::NotYetValid => "token-not-yet-valid",
            TokenError::MissingExpiry => "token-missing-exp",
            TokenError::WrongType => "token-wrong-type",
            TokenError::CriticalHeader => "token-crit-header",
            TokenError::WrongAudience => "token-wrong-audience",
            TokenError::CheckBudgetSpent => "token-check-budget-spent",
        }
    }
}

/// Header parameters the filter looks at beyond the registered ones.
#[derive(Debug, Clone, Deserialize)]
struct ExtraHeader {
    /// Present at all (even `null`, empty or malformed) means refused.
    #[serde(default)]
    crit: Present,
}

/// Whether a header parameter was there, whatever its value.
#[derive(Debug, Clone, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// What a TE must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: String,
    pub leeway_seconds: i64,
}

/// Checks signature (with the key named by `kid`, whose type fixes the algorithm), issuer,
/// `exp` and `nbf`. `now` is Unix seconds from the host clock.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &TokenRules,
    now: i64,
) -> Result<Identity, TokenError> {
    verify_for(token, keys, rules, now, None)
}

/// A token that passed every check but its signature: what is left costs a signature check.
pub struct Unverified<'t> {
    untrusted: UntrustedToken<'t, ExtraHeader>,
    key: &'t VerifyingKey,
    claims: Claims<TeClaims>,
    expires_at: i64,
}

/// `verify`, and with `resource` the audience too. Every check that costs no signature runs
/// first (structure, `crit`, `typ`, `iss`, `exp`, `nbf`, `aud`, then `kid` and `alg`), so a
/// token that fails one of them never costs a signature check, nor a JWKS fetch.
pub fn verify_for(
    token: &str,
    keys: &KeySet,
    rules: &TokenRules,
    now: i64,
    resource: Option<&str>,
) -> Result<Identity, TokenError> {
    precheck(token, keys, rules, now, resource)?.check_signature()
}

/// The checks of `verify_for` that cost no signature; `Err(WrongAudience)` when `resource` is
/// not in `aud`.
pub fn precheck<'t>(
    token: &'t str,
    keys: &'t KeySet,
    rules: &TokenRules,
    now: i64,
    resource: Option<&str>,
) -> Result<Unverified<'t>, TokenError> {
    let untrusted =
        UntrustedToken::<ExtraHeader>::try_from(token).map_err(|_| TokenError::Malformed)?;
    if untrusted.header().other_fields.crit.0 {
        return Err(TokenError::CriticalHeader);
    }
    let kid = untrusted
        .header()
        .key_id
        .as_deref()
        .ok_or(TokenError::MissingKeyId)?;
    let typ = untrusted.header().token_type.as_deref().unwrap_or_default();
    if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
        return Err(TokenError::WrongType);
    }
    let claims: Claims<TeClaims> = untrusted
        .deserialize_claims_unchecked()
        .map_err(|_| TokenError::Malformed)?;
    if claims.custom.iss != rules.issuer {
        return Err(TokenError::WrongIssuer);
    }
    let clock = Utc
        .timestamp_opt(now, 0)
        .single()
        .ok_or(TokenError::Malformed)?;
    let options = TimeOptions::new(chrono::Duration::seconds(rules.leeway_seconds), move || {
        clock
    });
    let expiry: DateTime<Utc> = claims.expiration.ok_or(TokenError::MissingExpiry)?;
    claims
        .validate_expiration(&options)
        .map_err(|_| TokenError::Expired)?;
    if claims.not_before.is_some() {
        claims
            .validate_maturity(&options)
            .map_err(|_| TokenError::NotYetValid)?;
    }
    if resource.is_some_and(|r| !claims.custom.aud.contains(r)) {
        return Err(TokenError::WrongAudience);
    }
    // Last: an unknown key starts a JWKS fetch, which a token failing the checks above
    // must not be able to cause.
    let key = keys
        .get(kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
    if untrusted.algorithm() != key.algorithm() {
        return Err(TokenError::AlgorithmMismatch);
    }
    Ok(Unverified {
        untrusted,
        key,
        claims,
        expires_at: expiry.timestamp(),
    })
}

impl Unverified<'_> {
    /// The signature check (the costly part): the claims checked before are the signed ones
    /// only if it passes.
    pub fn check_signature(self) -> Result<Identity, TokenError> {
        let verified = match self.key {
            VerifyingKey::Es256(k) => Es256
                .validator::<serde::de::IgnoredAny>(k)
                .validate(&self.untrusted)
                .map(drop),
            VerifyingKey::EdDsa(k) => Ed25519
                .validator::<serde::de::IgnoredAny>(k)
                .validate(&self.untrusted)
                .map(drop),
        };
        verified.map_err(|e| match e {
            jwt_compact::ValidationError::AlgorithmMismatch { .. } => TokenError::AlgorithmMismatch,
            jwt_compact::ValidationError::InvalidSignature
            | jwt_compact::ValidationError::MalformedSignature(_) => TokenError::BadSignature,
            _ => TokenError::Malformed,
        })?;
        Ok(Identity {
            issued_at: self.claims.issued_at.map(|t| t.timestamp()),
            claims: self.claims.custom,
            expires_at: self.expires_at,
        })
    }
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! A deterministic signing key for tests (never used outside them).
    use super::*;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::Header;

    pub fn es256_pair() -> (p256::ecdsa::SigningKey, String) {
        let secret = [7u8; 32];
        let signing = p256::ecdsa::SigningKey::from_slice(&secret).unwrap();
        let verifying = *signing.verifying_key();
        let mut jwk = serde_json::to_value(JsonWebKey::from(&verifying)).unwrap();
        jwk["kid"] = "k1".into();
        jwk["alg"] = "ES256".into();
        (signing, format!(r#"{{"keys":[{jwk}]}}"#))
    }

    pub fn claims(aud: &str, iat: i64, exp: i64) -> Claims<TeClaims> {
        let mut c = Claims::new(TeClaims {
            iss: "http://issuer".into(),
            sub: "demo@example.com".into(),
            aud: Audience::One(aud.into()),
            jti: "j".into(),
            client_id: "c".into(),
            scope: String::new(),
            sid: "s".into(),
            gid: "g".into(),
            email: "demo@example.com".into(),
            name: "Demo".into(),
            groups: vec!["demo".into()],
            sub_kind: SubjectKind::User,
        });
        c.issued_at = Utc.timestamp_opt(iat, 0).single();
        c.expiration = Utc.timestamp_opt(exp, 0).single();
        c
    }

    pub fn sign(key: &p256::ecdsa::SigningKey, claims: &Claims<TeClaims>) -> String {
        Es256
            .token(
                &Header::empty().with_key_id("k1").with_token_type("at+jwt"),
                claims,
                key,
            )
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::*;
    use super::*;
    use base64::Engine;

    fn rules() -> TokenRules {
        TokenRules {
            issuer: "http://issuer".into(),
            leeway_seconds: 30,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn accepts_valid_token() {
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let tok = sign(&key, &claims("http://h/mcp", 1000, 1300));
        let id = verify(&tok, &keys, &rules(), 1100).unwrap();
        assert_eq!(id.claims.email, "demo@example.com");
        assert!(id.allows_resource("http://h/mcp"));
        assert!(!id.allows_resource("http://h/other"));
        assert_eq!(id.expires_at, 1300);
    }

    #[test]
    fn sub_kind_marks_a_service_client_and_nothing_else_is_accepted() {
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let tok = sign(&key, &claims("a", 1000, 1300));
        let id = verify(&tok, &keys, &rules(), 1100).unwrap();
        assert_eq!(id.claims.sub_kind, SubjectKind::User);
        assert!(!id.claims.is_service_client());
        let mut svc = claims("a", 1000, 1300);
        svc.custom.sub_kind = SubjectKind::Client;
        let id = verify(&sign(&key, &svc), &keys, &rules(), 1100).unwrap();
        assert!(id.claims.is_service_client());
        // A kind the filter does not know could be read as a user by it: malformed.
        #[derive(Serialize)]
        struct Odd {
            #[serde(flatten)]
            te: TeClaims,
            sub_kind: &'static str,
        }
        let mut user = claims("a", 1000, 1300).custom;
        user.sub_kind = SubjectKind::User;
        let mut odd = Claims::new(Odd {
            te: user,
            sub_kind: "robot",
        });
        odd.expiration = Utc.timestamp_opt(1300, 0).single();
        let tok = Es256
            .token(
                &jwt_compact::Header::empty()
                    .with_key_id("k1")
                    .with_token_type("at+jwt"),
                &odd,
                &key,
            )
            .unwrap();
        assert_eq!(
            verify(&tok, &keys, &rules(), 1100),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn time_and_issuer_checks() {
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let tok = sign(&key, &claims("a", 1000, 1300));
        assert_eq!(
            verify(&tok, &keys, &rules(), 1320).map(|_| ()),
            Ok(()),
            "within leeway"
        );
        assert_eq!(
            verify(&tok, &keys, &rules(), 1400),
            Err(TokenError::Expired)
        );
        let mut early = claims("a", 1000, 1300);
        early.not_before = Utc.timestamp_opt(1200, 0).single();
        let tok = sign(&key, &early);
        assert_eq!(
            verify(&tok, &keys, &rules(), 1100),
            Err(TokenError::NotYetValid)
        );
        let mut other = claims("a", 1000, 1300);
        other.custom.iss = "http://evil".into();
        let tok = sign(&key, &other);
        assert_eq!(
            verify(&tok, &keys, &rules(), 1100),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn an_identity_assertion_is_never_accepted_as_an_access_token() {
        // The token service signs identity assertions with the same key and `kid` as TEs, but
        // with `typ: JWT` and `aud` = the upstream's origin: presented as a bearer, refused.
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let assertion_claims = claims("http://127.0.0.1:9200", 1000, 1300);
        let assertion = Es256
            .token(
                &jwt_compact::Header::empty()
                    .with_key_id("k1")
                    .with_token_type("JWT"),
                &assertion_claims,
                &key,
            )
            .unwrap();
        assert_eq!(
            verify(&assertion, &keys, &rules(), 1100).map(|_| ()),
            Err(TokenError::WrongType)
        );
        // Without a `typ` at all: refused the same way.
        let untyped = Es256
            .token(
                &jwt_compact::Header::empty().with_key_id("k1"),
                &assertion_claims,
                &key,
            )
            .unwrap();
        assert_eq!(
            verify(&untyped, &keys, &rules(), 1100).map(|_| ()),
            Err(TokenError::WrongType)
        );
        // And its audience (an origin) is no route's resource even if the type were right.
        let id = verify(&sign(&key, &assertion_claims), &keys, &rules(), 1100).unwrap();
        assert!(!id.allows_resource("http://127.0.0.1:9200/mcp"));
    }

    #[test]
    fn rejects_forgeries() {
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let tok = sign(&key, &claims("a", 1000, 1300));
        let (head_payload, sig) = tok.rsplit_once('.').unwrap();
        // Tampered signature.
        let mut sig_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        sig_bytes[5] ^= 1;
        let tampered = format!("{head_payload}.{}", b64(&sig_bytes));
        assert_eq!(
            verify(&tampered, &keys, &rules(), 1100),
            Err(TokenError::BadSignature)
        );
        // Tampered payload under the original signature.
        let payload = head_payload.split('.').nth(1).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        json["email"] = "admin@example.com".into();
        let forged = format!(
            "{}.{}.{sig}",
            head_payload.split('.').next().unwrap(),
            b64(json.to_string().as_bytes())
        );
        assert_eq!(
            verify(&forged, &keys, &rules(), 1100),
            Err(TokenError::BadSignature)
        );
        // alg none.
        let none = format!(
            "{}.{payload}.",
            b64(br#"{"alg":"none","kid":"k1","typ":"at+jwt"}"#)
        );
        assert_eq!(
            verify(&none, &keys, &rules(), 1100),
            Err(TokenError::AlgorithmMismatch)
        );
        // HS256 keyed with the public key.
        let hs = format!(
            "{}.{payload}.{}",
            b64(br#"{"alg":"HS256","kid":"k1","typ":"at+jwt"}"#),
            b64(&[0u8; 32])
        );
        assert_eq!(
            verify(&hs, &keys, &rules(), 1100),
            Err(TokenError::AlgorithmMismatch)
        );
        // Unknown kid and missing kid.
        let unknown = format!(
            "{}.{payload}.{sig}",
            b64(br#"{"alg":"ES256","kid":"k9","typ":"at+jwt"}"#)
        );
        assert_eq!(
            verify(&unknown, &keys, &rules(), 1100),
            Err(TokenError::UnknownKey("k9".into()))
        );
        let no_kid = format!(
            "{}.{payload}.{sig}",
            b64(br#"{"alg":"ES256","typ":"at+jwt"}"#)
        );
        assert_eq!(
            verify(&no_kid, &keys, &rules(), 1100),
            Err(TokenError::MissingKeyId)
        );
        assert_eq!(
            verify("garbage", &keys, &rules(), 1100),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_crit_header_is_refused_even_when_signed() {
        use jwt_compact::Header;
        let (key, jwks) = es256_pair();
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        #[derive(Serialize, Clone)]
        struct Crit {
            crit: serde_json::Value,
            b64: bool,
        }
        for crit in [
            serde_json::json!(["b64"]),
            serde_json::json!([]),
            serde_json::json!("x"),
            serde_json::Value::Null,
        ] {
            let header = Header::new(Crit {
                crit: crit.clone(),
                b64: false,
            })
            .with_key_id("k1")
            .with_token_type("at+jwt");
            let tok = Es256
                .token(&header, &claims("a", 1000, 1300), &key)
                .unwrap();
            assert_eq!(
                verify(&tok, &keys, &rules(), 1100),
                Err(TokenError::CriticalHeader),
                "{crit}"
            );
        }
    }
}

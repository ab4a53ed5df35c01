//! Signature checks for the JWTs the token service is handed: ID tokens (`oidc`), client
//! assertions (`private_key_jwt`) and ID-JAGs (`flows::id_jag`). A JWKS, and a JWS verified
//! with the one key its `kid` names, under the one algorithm that key allows (never `none`,
//! never HMAC). A leaf: it imports nothing of the crate.

use aws_lc_rs::signature::{
    self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Deserialize;

/// A key from the provider's JWKS that can check signatures.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one: then only that algorithm is accepted.
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document; keys that cannot verify signatures (encryption keys, unknown types)
/// are skipped, since a provider's JWKS may carry keys for other uses.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let raw: RawJwks =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
        .filter_map(signing_key)
        .collect())
}

fn signing_key(raw: RawJwk) -> Option<Jwk> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let bytes = |v: &Option<String>| v.as_deref().and_then(|s| B64.decode(s).ok());
    let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => PublicKey::Rsa {
            n: bytes(&raw.n)?,
            e: bytes(&raw.e)?,
        },
        ("EC", Some("P-256")) => PublicKey::P256(ec_point(bytes(&raw.x)?, bytes(&raw.y)?, 32)?),
        ("EC", Some("P-384")) => PublicKey::P384(ec_point(bytes(&raw.x)?, bytes(&raw.y)?, 48)?),
        ("OKP", Some("Ed25519")) => PublicKey::Ed25519(bytes(&raw.x)?),
        _ => return None,
    };
    let jwk = Jwk {
        kid: raw.kid,
        alg: raw.alg,
        key,
    };
    // A key published for an algorithm it cannot sign with (or one we refuse) verifies
    // nothing: skipped like any other unusable key.
    ACCEPTED_ALGS
        .iter()
        .any(|alg| jwk.allows(alg))
        .then_some(jwk)
}

/// The uncompressed SEC1 point aws-lc-rs expects.
fn ec_point(x: Vec<u8>, y: Vec<u8>, len: usize) -> Option<Vec<u8>> {
    if x.len() != len || y.len() != len {
        return None;
    }
    let mut p = Vec::with_capacity(1 + 2 * len);
    p.push(4);
    p.extend_from_slice(&x);
    p.extend_from_slice(&y);
    Some(p)
}

impl Jwk {
    /// Whether `alg` is the algorithm this key signs with: the JWK's own `alg` when it has one,
    /// otherwise one its key type implies.
    pub fn allows(&self, alg: &str) -> bool {
        if let Some(own) = &self.alg {
            if own != alg {
                return false;
            }
        }
        self.algorithm(alg).is_some()
    }

    fn algorithm(&self, alg: &str) -> Option<&'static dyn VerificationAlgorithm> {
        let a: &'static dyn VerificationAlgorithm = match (&self.key, alg) {
            (PublicKey::Rsa { .. }, "RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
            (PublicKey::Rsa { .. }, "RS384") => &signature::RSA_PKCS1_2048_8192_SHA384,
            (PublicKey::Rsa { .. }, "RS512") => &signature::RSA_PKCS1_2048_8192_SHA512,
            (PublicKey::Rsa { .. }, "PS256") => &signature::RSA_PSS_2048_8192_SHA256,
            (PublicKey::Rsa { .. }, "PS384") => &signature::RSA_PSS_2048_8192_SHA384,
            (PublicKey::Rsa { .. }, "PS512") => &signature::RSA_PSS_2048_8192_SHA512,
            (PublicKey::P256(_), "ES256") => &signature::ECDSA_P256_SHA256_FIXED,
            (PublicKey::P384(_), "ES384") => &signature::ECDSA_P384_SHA384_FIXED,
            (PublicKey::Ed25519(_), "EdDSA") => &signature::ED25519,
            _ => return None,
        };
        Some(a)
    }

    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> bool {
        let Some(algorithm) = self.algorithm(alg) else {
            return false;
        };
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let Some(params) = rsa_params(alg) else {
                    return false;
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            PublicKey::P256(k) | PublicKey::P384(k) | PublicKey::Ed25519(k) => {
                UnparsedPublicKey::new(algorithm, k)
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }
}

fn rsa_params(alg: &str) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
        "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// A compact JWS split into its parts, signature not yet checked.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: String,
    pub kid: Option<String>,
    /// The header's `typ`, when present (an ID-JAG must say `oauth-id-jag+jwt`).
    pub typ: Option<String>,
    signing_input: &'a [u8],
    signature: Vec<u8>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The algorithms a client assertion or an ID-JAG may use (the allowlist, advertised
/// as `token_endpoint_auth_signing_alg_values_supported`): a subset of `ACCEPTED_ALGS`.
pub const ASSERTION_ALGS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];

/// The signature algorithms an ID token may use: asymmetric ones only (never `none`, never
/// HMAC, whose key would be the client secret or, in the classic attack, a public key).
const ACCEPTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Splits and decodes a compact JWS. Refuses algorithms outside `ACCEPTED_ALGS` and critical
/// header extensions (none are understood).
pub fn decode(token: &str) -> Result<Jws<'_>, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the JWT is not a compact JWS".into());
    };
    let decode_part = |p: &str| {
        B64.decode(p)
            .map_err(|_| "the JWT is not base64url".to_owned())
    };
    let header: Header = serde_json::from_slice(&decode_part(h)?)
        .map_err(|e| format!("the JWT header is invalid: {e}"))?;
    if header.crit.is_some() {
        return Err("the JWT has critical header parameters".into());
    }
    if !ACCEPTED_ALGS.contains(&header.alg.as_str()) {
        let alg: String = header.alg.chars().take(16).collect();
        return Err(format!("the JWT's algorithm {alg} is not accepted"));
    }
    let claims = serde_json::from_slice(&decode_part(c)?)
        .map_err(|e| format!("the JWT claims are invalid: {e}"))?;
    Ok(Jws {
        alg: header.alg,
        kid: header.kid,
        typ: header.typ,
        signing_input: &token.as_bytes()[..h.len() + 1 + c.len()],
        signature: decode_part(s)?,
        claims,
    })
}

/// A header field and a claim of a compact JWS, read without any check (not even of its
/// algorithm): only for finding where the keys that will check it are.
pub fn peek(token: &str, header_field: &str, claim: &str) -> (Option<String>, Option<String>) {
    let mut parts = token.split('.');
    let read = |p: Option<&str>, name: &str| {
        let v: serde_json::Value = serde_json::from_slice(&B64.decode(p?).ok()?).ok()?;
        v.get(name)?.as_str().map(str::to_owned)
    };
    let header = parts.next();
    let claims = parts.next();
    (read(header, header_field), read(claims, claim))
}

impl Jws<'_> {
    /// The key in `keys` this token names, if any (a token without `kid` may use the only key
    /// its algorithm fits).
    pub fn key_in<'k>(&self, keys: &'k [Jwk]) -> Option<&'k Jwk> {
        match &self.kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = keys.iter().filter(|k| k.allows(&self.alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }

    /// Verifies with the key in `keys` this token names; `signer` says whose keys they are
    /// ("the client"), for the refusal when it names none of them.
    pub fn verify_among(&self, keys: &[Jwk], signer: &str) -> Result<(), String> {
        let key = self
            .key_in(keys)
            .ok_or_else(|| format!("signed by a key {signer} does not publish"))?;
        self.verify_with(key)
    }

    pub fn verify_with(&self, key: &Jwk) -> Result<(), String> {
        if !key.allows(&self.alg) {
            return Err(format!(
                "the JWT's algorithm {:?} is not the one its key signs with",
                self.alg
            ));
        }
        if key.verify(&self.alg, self.signing_input, &self.signature) {
            Ok(())
        } else {
            Err("the JWT's signature does not verify".into())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    };
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        B64.encode(b)
    }

    fn compact(header: serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(json!({"sub": "u1"}).to_string().as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn rsa() -> (RsaKeyPair, serde_json::Value) {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk = json!({"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
                         "n": b64(&c.n), "e": b64(&c.e)});
        (pair, jwk)
    }

    fn rsa_sign(pair: &RsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |m| {
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig)
                .unwrap();
            sig
        }
    }

    fn check(token: &str, jwks: &serde_json::Value) -> Result<(), String> {
        let keys = parse_jwks(jwks.to_string().as_bytes())?;
        let jws = decode(token)?;
        let key = jws.key_in(&keys).ok_or("no key")?;
        jws.verify_with(key)
    }

    #[test]
    fn rs256_verifies_and_forgeries_do_not() {
        let (pair, jwk) = rsa();
        let jwks = json!({"keys": [jwk, {"kty": "oct", "k": "c2VjcmV0"}]});
        let good = compact(json!({"alg": "RS256", "kid": "r1"}), rsa_sign(&pair));
        assert_eq!(check(&good, &jwks), Ok(()));
        // Without kid: the only RSA key fits.
        let no_kid = compact(json!({"alg": "RS256"}), rsa_sign(&pair));
        assert_eq!(check(&no_kid, &jwks), Ok(()));

        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(check(std::str::from_utf8(&flipped).unwrap(), &jwks).is_err());
        // The key's alg is pinned: another RSA algorithm, HMAC keyed with the public key, or
        // none are refused.
        let rs512 = compact(json!({"alg": "RS512", "kid": "r1"}), rsa_sign(&pair));
        assert!(check(&rs512, &jwks).is_err());
        let hs = compact(json!({"alg": "HS256", "kid": "r1"}), |_| vec![1; 32]);
        assert!(check(&hs, &jwks).is_err());
        let none = compact(json!({"alg": "none", "kid": "r1"}), |_| Vec::new());
        assert!(check(&none, &jwks).is_err());
        let unknown = compact(json!({"alg": "RS256", "kid": "r2"}), rsa_sign(&pair));
        assert_eq!(check(&unknown, &jwks), Err("no key".into()));
        let crit = compact(
            json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
            rsa_sign(&pair),
        );
        assert!(check(&crit, &jwks).is_err());
    }

    #[test]
    fn a_key_whose_alg_it_cannot_sign_with_is_skipped() {
        // Found by the fuzz target `id_token_and_userinfo`: an RSA key published with `alg`
        // ES256 (or HS256, or a typo) was kept, a key that could verify nothing.
        let (_, jwk) = rsa();
        for alg in ["ES256", "HS256", "Ed(SA", "none"] {
            let mut bad = jwk.clone();
            bad["alg"] = alg.into();
            let keys = parse_jwks(json!({"keys": [bad]}).to_string().as_bytes()).unwrap();
            assert!(keys.is_empty(), "{alg}");
        }
        let keys = parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn es256_verifies_and_other_keys_do_not() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        // No `alg` on the JWK: the curve implies ES256.
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1",
                         "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        let sign = |m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().to_vec();
        let good = compact(json!({"alg": "ES256", "kid": "e1"}), sign);
        assert_eq!(check(&good, &json!({"keys": [jwk.clone()]})), Ok(()));
        let wrong_alg = compact(json!({"alg": "RS256", "kid": "e1"}), sign);
        assert!(check(&wrong_alg, &json!({"keys": [jwk]})).is_err());
        // Another key under the same kid does not verify it.
        let (_, mut other) = rsa();
        other["kid"] = "e1".into();
        assert!(check(&good, &json!({"keys": [other]})).is_err());
    }
}

//! Crafting JWTs for rejection tests: the harness reads the token service's signing key file
//! (format of `token-service/src/keys.rs`: `{"alg": "ES256" | "EdDSA", "d": base64url(secret)}`)
//! and mints tokens itself (expired, wrong audience, …), plus deliberately broken ones
//! (`alg: none`, HS256 keyed with the public key, tampered signatures).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn segment(value: &Value) -> String {
    b64(serde_json::to_vec(value).expect("JSON serializes"))
}

/// `base64url(header).base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", segment(header), segment(claims))
}

fn decode_segment(token: &str, index: usize) -> Value {
    let part = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("token has no segment {index}: {token}"));
    let bytes = B64
        .decode(part)
        .unwrap_or_else(|e| panic!("segment {index} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("segment {index} is not JSON: {e}"))
}

/// The (unverified) JOSE header of a compact JWS.
pub fn decode_header(token: &str) -> Value {
    decode_segment(token, 0)
}

/// The (unverified) claims of a compact JWS.
pub fn decode_claims(token: &str) -> Value {
    decode_segment(token, 1)
}

/// Flips one character in the middle of the signature segment (never the last character, whose
/// low bits may be padding), so the signature bytes differ but the token stays well formed.
pub fn tamper_signature(token: &str) -> String {
    let (head, sig) = token
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("not a compact JWS: {token}"));
    assert!(sig.len() > 4, "signature segment too short: {sig:?}");
    let mut chars: Vec<char> = sig.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", chars.into_iter().collect::<String>())
}

/// An unsigned token (`alg: none`, empty signature segment).
pub fn alg_none(claims: &Value, kid: Option<&str>) -> String {
    let mut header = json!({ "alg": "none", "typ": "at+jwt" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    format!("{}.", signing_input(&header, claims))
}

/// HMAC-SHA256 (RFC 2104), written out to avoid another dependency.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// An HS256 token keyed with `secret` (the classic "public key as HMAC secret" confusion).
pub fn hs256(claims: &Value, kid: Option<&str>, secret: &[u8]) -> String {
    let mut header = json!({ "alg": "HS256", "typ": "at+jwt" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let input = signing_input(&header, claims);
    let mac = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", b64(mac))
}

enum Material {
    Es256(Box<p256::ecdsa::SigningKey>),
    EdDsa(ed25519_compact::KeyPair),
}

/// The token service's signing key, loaded from its key file.
pub struct TestKey {
    pub alg: String,
    pub kid: String,
    material: Material,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Writes a new key file (`{"alg", "d"}`, the form `signing_key.file` imports) at `path`.
/// The token service stores a key file's key at its first start (same kid), so the tests can
/// mint tokens with the key it signs with.
pub fn write_key_file(path: &Path, alg: &str) {
    let d: Vec<u8> = match alg {
        "ES256" => loop {
            let mut d = [0u8; 32];
            getrandom::getrandom(&mut d).expect("randomness");
            if p256::ecdsa::SigningKey::from_slice(&d).is_ok() {
                break d.to_vec();
            }
        },
        "EdDSA" => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).expect("randomness");
            seed.to_vec()
        }
        other => panic!("unknown signing key alg {other:?}"),
    };
    let body = json!({ "alg": alg, "d": B64.encode(d) }).to_string();
    std::fs::write(path, body)
        .unwrap_or_else(|e| panic!("cannot write key file {}: {e}", path.display()));
}

impl TestKey {
    /// Loads `{"alg", "d"}` from `path`; `kid` is the one the token service publishes in its JWKS
    /// (an RFC 7638 thumbprint; taken from the JWKS rather than recomputed).
    pub fn load(path: &Path, kid: impl Into<String>) -> TestKey {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read signing key file {}: {e}", path.display()));
        let file: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("signing key file {} is not JSON: {e}", path.display()));
        let alg = file["alg"].as_str().unwrap_or("ES256").to_owned();
        let d = B64
            .decode(file["d"].as_str().expect("signing key file has no \"d\""))
            .expect("signing key \"d\" is base64url");
        let material = match alg.as_str() {
            "ES256" => Material::Es256(Box::new(
                p256::ecdsa::SigningKey::from_slice(&d).expect("valid P-256 scalar"),
            )),
            "EdDSA" => {
                let seed: [u8; 32] = d.as_slice().try_into().expect("32-byte Ed25519 seed");
                Material::EdDsa(ed25519_compact::KeyPair::from_seed(
                    ed25519_compact::Seed::new(seed),
                ))
            }
            other => panic!("unknown signing key alg {other:?}"),
        };
        TestKey {
            alg,
            kid: kid.into(),
            material,
        }
    }

    /// The header the token service uses: `alg`, `kid`, `typ: at+jwt`.
    pub fn header(&self) -> Value {
        json!({ "alg": self.alg, "kid": self.kid, "typ": "at+jwt" })
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = match &self.material {
            Material::Es256(key) => {
                let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            Material::EdDsa(kp) => kp.sk.sign(input.as_bytes(), None).to_vec(),
        };
        format!("{input}.{}", b64(sig))
    }

    /// A correctly signed token with the token service's header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&self.header(), claims)
    }
}

/// Claims shaped like the token service's (`warden_core::token::TeClaims`), valid for `lifetime` seconds from
/// `now() + offset` (a negative offset makes past tokens).
pub fn claims(issuer: &str, audience: &str, issued_at: u64, lifetime: u64) -> Value {
    json!({
        "iss": issuer,
        "sub": "demo@example.com",
        "aud": audience,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + lifetime,
        "jti": format!("e2e-{}-{}", issued_at, std::process::id()),
        "client_id": "warden-e2e",
        "scope": "",
        "sid": "e2e-session",
        "gid": "e2e-grant",
        "email": "demo@example.com",
        "name": "Demo User",
        "groups": ["demo"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tamper_changes_only_the_signature() {
        let t = "aaa.bbb.ABCDEFGH";
        let u = tamper_signature(t);
        assert_ne!(t, u);
        assert!(u.starts_with("aaa.bbb."));
        assert_eq!(u.len(), t.len());
    }
}

//! The token service's signing keys, as the filter knows them (from its JWKS).

use std::collections::HashMap;

use jwt_compact::alg::{Ed25519, Es256};
use jwt_compact::jwk::JsonWebKey;

/// A public key the filter accepts TE signatures from. The variant fixes the algorithm:
/// a token must name exactly this algorithm (no `none`, no HMAC keyed with a public key).
#[derive(Debug, Clone)]
pub enum VerifyingKey {
    Es256(<Es256 as jwt_compact::Algorithm>::VerifyingKey),
    EdDsa(<Ed25519 as jwt_compact::Algorithm>::VerifyingKey),
}

impl VerifyingKey {
    pub fn algorithm(&self) -> &'static str {
        match self {
            VerifyingKey::Es256(_) => "ES256",
            VerifyingKey::EdDsa(_) => "EdDSA",
        }
    }
}

/// Keys by `kid`. Keys the filter cannot use (RSA, encryption keys, no `kid`) are skipped,
/// not fatal: a JWKS may carry keys for other consumers.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

#[derive(serde::Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document. Fails only when the document itself is malformed or holds no
    /// usable key, so a broken token service never silently empties the key set.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let raw: RawJwks =
            serde_json::from_slice(json).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        let mut keys = HashMap::new();
        for value in raw.keys {
            if let Some((kid, key)) = usable_key(&value) {
                keys.insert(kid, key);
            }
        }
        if keys.is_empty() {
            return Err("JWKS holds no ES256 or EdDSA signing key with a kid".into());
        }
        Ok(Self { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn usable_key(value: &serde_json::Value) -> Option<(String, VerifyingKey)> {
    let kid = value.get("kid")?.as_str()?.to_string();
    if value
        .get("use")
        .and_then(|u| u.as_str())
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let declared_alg = value.get("alg").and_then(|a| a.as_str());
    let jwk: JsonWebKey<'_> = serde_json::from_value(value.clone()).ok()?;
    let key = match &jwk {
        JsonWebKey::EllipticCurve { curve, .. } if curve == "P-256" => {
            VerifyingKey::Es256((&jwk).try_into().ok()?)
        }
        JsonWebKey::KeyPair { .. } => VerifyingKey::EdDsa((&jwk).try_into().ok()?),
        _ => return None,
    };
    // A key published for another algorithm is not ours to reinterpret.
    if declared_alg.is_some_and(|alg| alg != key.algorithm()) {
        return None;
    }
    Some((kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ES256_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn parses_ec_key() {
        let set = KeySet::from_jwks(ES256_JWKS.as_bytes()).unwrap();
        assert_eq!(set.get("k1").unwrap().algorithm(), "ES256");
    }

    #[test]
    fn skips_unusable_and_rejects_empty() {
        let only_rsa = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#;
        assert!(KeySet::from_jwks(only_rsa.as_bytes()).is_err());
        let mislabelled = ES256_JWKS.replace("\"alg\":\"ES256\"", "\"alg\":\"HS256\"");
        assert!(KeySet::from_jwks(mislabelled.as_bytes()).is_err());
        assert!(KeySet::from_jwks(b"not json").is_err());
    }
}

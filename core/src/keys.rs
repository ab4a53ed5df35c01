//! The token service's signing keys, as the filter knows them (from its JWKS).

use std::collections::HashMap;

use base64ct::{Base64UrlUnpadded, Encoding};
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
    let key = match jwk(value)? {
        jwk @ JsonWebKey::EllipticCurve { .. } => VerifyingKey::Es256((&jwk).try_into().ok()?),
        jwk @ JsonWebKey::KeyPair { .. } => VerifyingKey::EdDsa((&jwk).try_into().ok()?),
        _ => return None,
    };
    // A key published for another algorithm is not ours to reinterpret.
    if declared_alg.is_some_and(|alg| alg != key.algorithm()) {
        return None;
    }
    Some((kid, key))
}

/// The EC (P-256) or OKP key a JWK member describes, read as `jwt-compact`'s own
/// `Deserialize` of `JsonWebKey` reads it (`kty`; `crv`; `x`, `y` and an optional `d` in
/// unpadded base64url), without instantiating its internally tagged serde machinery for
/// `serde_json::Value` (a cold path, and a large one in the filter's Wasm). `None` where that
/// parse would fail or where the key is of a kind the filter does not use.
fn jwk(value: &serde_json::Value) -> Option<JsonWebKey<'_>> {
    use std::borrow::Cow;
    let text = |name: &str| match value.get(name)? {
        serde_json::Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    let bytes = |name: &str| Base64UrlUnpadded::decode_vec(text(name)?).ok();
    // `d` may be absent or null; anything else must be base64url, or the whole key is refused.
    let secret_ok = match value.get("d") {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::String(s)) => Base64UrlUnpadded::decode_vec(s).is_ok(),
        Some(_) => false,
    };
    let kty = text("kty")?;
    if kty == "EC" {
        let curve = text("crv")?;
        let (x, y) = (bytes("x")?, bytes("y")?);
        // Only P-256 keys are used; another curve is skipped like any unusable key.
        (secret_ok && curve == "P-256").then(|| JsonWebKey::EllipticCurve {
            curve: Cow::Borrowed(curve),
            x: Cow::Owned(x),
            y: Cow::Owned(y),
            secret: None,
        })
    } else if kty == "OKP" {
        let curve = text("crv")?;
        let x = bytes("x")?;
        secret_ok.then(|| JsonWebKey::KeyPair {
            curve: Cow::Borrowed(curve),
            x: Cow::Owned(x),
            secret: None,
        })
    } else {
        None
    }
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

    /// The hand-written reading of a JWK member agrees with jwt-compact's `Deserialize` on
    /// which keys become usable verifying keys.
    fn usable(jwk: Option<JsonWebKey<'_>>) -> Option<String> {
        let jwk = jwk?;
        let key = match &jwk {
            JsonWebKey::EllipticCurve { curve, .. } if curve == "P-256" => {
                VerifyingKey::Es256((&jwk).try_into().ok()?)
            }
            JsonWebKey::KeyPair { .. } => VerifyingKey::EdDsa((&jwk).try_into().ok()?),
            _ => return None,
        };
        Some(format!("{key:?}"))
    }

    #[test]
    fn jwk_reading_matches_jwt_compact() {
        let ec = |extra: &str| {
            format!(
                r#"{{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"{extra}}}"#
            )
        };
        let okp = |extra: &str| {
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"{extra}}}"#
            )
        };
        let cases = [
            ec(""),
            ec(r#","d":null"#),
            ec(r#","d":"AAAA""#),
            ec(r#","d":"@@""#),
            ec(r#","d":1"#),
            ec(r#","use":"sig","alg":"ES256""#),
            ec("").replace("P-256", "P-384"),
            ec("").replace("f83O", "f83O="),
            ec("").replace("\"y\"", "\"z\""),
            ec("").replace("\"kty\":\"EC\"", "\"kty\":7"),
            ec("").replace("\"kty\":\"EC\",", ""),
            ec("").replace("RVEU", "RVE"),
            okp(""),
            okp(r#","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A""#),
            okp(r#","d":"+/""#),
            okp("").replace("Ed25519", "X25519"),
            okp("").replace("HURo", "HUR"),
            r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#.to_string(),
            r#"{"kty":"oct","k":"AQAB"}"#.to_string(),
            r#"{"kty":"EC","crv":5,"x":"AA","y":"AA"}"#.to_string(),
        ];
        for case in cases {
            let value: serde_json::Value = serde_json::from_str(&case).unwrap();
            let theirs = usable(serde_json::from_value::<JsonWebKey<'_>>(value.clone()).ok());
            let ours = usable(jwk(&value));
            assert_eq!(theirs, ours, "{case}");
        }
    }
}

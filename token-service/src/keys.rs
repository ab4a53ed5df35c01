//! One signing key for external tokens (TE) and identity assertions: its JWK, its compact
//! JWS, and its two serialized forms (the key file imported at first start, and the text the
//! keyring seals into the store). The set of keys and their rotation are in `keyring`.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SigningAlg;

/// How long an identity assertion lives (here, not in `internal`, because the keyring's
/// retirement rule must outlast everything a key signs).
pub const ASSERTION_TTL_SECONDS: i64 = 300;

enum KeyMaterial {
    Es256(Box<p256::ecdsa::SigningKey>),
    EdDsa(ed25519_compact::KeyPair),
}

pub struct SigningKey {
    kid: String,
    material: KeyMaterial,
}

/// Serialized form (the key file, and what is sealed in the store). `d` is the raw private
/// scalar (ES256) or seed (EdDSA), base64url.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    alg: SigningAlg,
    d: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    pub fn generate(alg: SigningAlg) -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        loop {
            crate::random::fill_random(&mut seed);
            if let Ok(k) = Self::from_secret(alg, &seed) {
                return Ok(k);
            }
            // A P-256 scalar of zero or >= n: astronomically unlikely, draw again.
        }
    }

    fn from_secret(alg: SigningAlg, d: &[u8]) -> anyhow::Result<Self> {
        let material = match alg {
            SigningAlg::ES256 => KeyMaterial::Es256(Box::new(
                p256::ecdsa::SigningKey::from_slice(d)
                    .map_err(|_| anyhow::anyhow!("invalid P-256 private key"))?,
            )),
            SigningAlg::EdDSA => {
                let seed: [u8; 32] = d
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("an Ed25519 seed is 32 bytes"))?;
                KeyMaterial::EdDsa(ed25519_compact::KeyPair::from_seed(
                    ed25519_compact::Seed::new(seed),
                ))
            }
        };
        let mut key = SigningKey {
            kid: String::new(),
            material,
        };
        key.kid = key.thumbprint();
        Ok(key)
    }

    fn secret_bytes(&self) -> Vec<u8> {
        match &self.material {
            KeyMaterial::Es256(k) => k.to_bytes().to_vec(),
            KeyMaterial::EdDsa(kp) => kp.sk.seed().to_vec(),
        }
    }

    /// Reads the key file at `path` (`signing_key.file`), `None` when there is none. A file
    /// holding another algorithm than configured is an error, not a silent switch.
    pub fn read_file(path: &Path, alg: SigningAlg) -> anyhow::Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => anyhow::bail!("cannot read signing key file {}: {e}", path.display()),
        };
        let file: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|_| anyhow::anyhow!("signing key file {} is malformed", path.display()))?;
        if file.alg != alg {
            anyhow::bail!(
                "signing key file {} holds an {} key but authorization_server.signing_key.alg is {}",
                path.display(),
                file.alg.as_str(),
                alg.as_str()
            );
        }
        Self::from_file_form(&file)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("signing key file {} is malformed", path.display()))
    }

    /// Writes the key as a key file (mode 0600, never over an existing file): the form
    /// `signing_key.file` imports.
    pub fn write_file(&self, path: &Path) -> anyhow::Result<()> {
        crate::secrets::write_new(path, self.to_sealable().as_bytes())
            .map_err(|e| anyhow::anyhow!("signing key file: {e}"))
    }

    /// The private key as text, to be sealed (never logged).
    pub(crate) fn to_sealable(&self) -> String {
        serde_json::json!({ "alg": self.alg(), "d": B64.encode(self.secret_bytes()) }).to_string()
    }

    /// The key `to_sealable` wrote.
    pub(crate) fn from_sealable(text: &str) -> anyhow::Result<Self> {
        // The parser's message could quote the text: say only that it is malformed.
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|_| anyhow::anyhow!("a sealed signing key is malformed"))?;
        Self::from_file_form(&file)
    }

    fn from_file_form(file: &KeyFile) -> anyhow::Result<Self> {
        let d = B64
            .decode(file.d.as_bytes())
            .map_err(|_| anyhow::anyhow!("a signing key is not base64url"))?;
        Self::from_secret(file.alg, &d)
    }

    pub fn alg(&self) -> SigningAlg {
        match self.material {
            KeyMaterial::Es256(_) => SigningAlg::ES256,
            KeyMaterial::EdDsa(_) => SigningAlg::EdDSA,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Public JWK members in RFC 7638 order (required members only, lexicographic).
    fn public_members(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        match &self.material {
            KeyMaterial::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                let x = point.x().map(|x| B64.encode(x)).unwrap_or_default();
                let y = point.y().map(|y| B64.encode(y)).unwrap_or_default();
                m.insert("crv".into(), "P-256".into());
                m.insert("kty".into(), "EC".into());
                m.insert("x".into(), x.into());
                m.insert("y".into(), y.into());
            }
            KeyMaterial::EdDsa(kp) => {
                m.insert("crv".into(), "Ed25519".into());
                m.insert("kty".into(), "OKP".into());
                m.insert("x".into(), B64.encode(kp.pk.as_ref()).into());
            }
        }
        m
    }

    /// RFC 7638 JWK thumbprint, used as `kid` so it is stable across restarts.
    fn thumbprint(&self) -> String {
        let canonical = serde_json::Value::Object(self.public_members()).to_string();
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn jwk(&self) -> serde_json::Value {
        let mut m = self.public_members();
        m.insert("kid".into(), self.kid.clone().into());
        m.insert("alg".into(), self.alg().as_str().into());
        m.insert("use".into(), "sig".into());
        serde_json::Value::Object(m)
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk()] })
    }

    /// Signs `claims` as a compact JWS with `typ` (e.g. `at+jwt`).
    pub fn sign_jwt(&self, typ: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
        let header = serde_json::json!({ "alg": self.alg().as_str(), "kid": self.kid, "typ": typ });
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header)?),
            B64.encode(serde_json::to_vec(claims)?)
        );
        let sig: Vec<u8> = match &self.material {
            KeyMaterial::Es256(k) => {
                // JWS wants the fixed-size r || s form, which is what `to_bytes` gives.
                let s: p256::ecdsa::Signature = k.sign(signing_input.as_bytes());
                s.to_bytes().to_vec()
            }
            KeyMaterial::EdDsa(kp) => kp.sk.sign(signing_input.as_bytes(), None).to_vec(),
        };
        Ok(format!("{signing_input}.{}", B64.encode(sig)))
    }
}

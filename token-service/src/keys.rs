//! The signing key for external tokens (TE): generated on first start, persisted, published
//! as JWKS, used to sign compact JWS.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SigningAlg;

enum KeyMaterial {
    Es256(Box<p256::ecdsa::SigningKey>),
    EdDsa(ed25519_compact::KeyPair),
}

pub struct SigningKey {
    kid: String,
    material: KeyMaterial,
}

/// On-disk form. `d` is the raw private scalar (ES256) or seed (EdDSA), base64url.
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

    /// Loads the key at `path`, or generates one with `alg` and writes it there (mode 0600).
    /// A file holding a different algorithm than configured is an error, not a silent switch.
    pub fn load_or_generate(path: &Path, alg: SigningAlg) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("signing key file {} is malformed: {e}", path.display())
                })?;
                if file.alg != alg {
                    anyhow::bail!(
                        "signing key file {} holds an {} key but authorization_server.signing_key.alg is {}",
                        path.display(),
                        file.alg.as_str(),
                        alg.as_str()
                    );
                }
                let d = B64.decode(file.d.as_bytes()).map_err(|_| {
                    anyhow::anyhow!("signing key file {} is malformed", path.display())
                })?;
                Self::from_secret(alg, &d)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(alg)?;
                key.write(path)?;
                tracing::info!(path = %path.display(), kid = %key.kid, alg = alg.as_str(), "generated signing key");
                Ok(key)
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read signing key file {}: {e}",
                path.display()
            )),
        }
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let body = serde_json::to_vec_pretty(&KeyFile {
            alg: self.alg(),
            d: B64.encode(self.secret_bytes()),
        })?;
        crate::secrets::write_new(path, &body).map_err(|e| anyhow::anyhow!("signing key file: {e}"))
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

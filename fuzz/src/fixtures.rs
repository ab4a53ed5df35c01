//! The keys and configurations the targets share, built from fixed seeds: every run, and every
//! crash reproducer, sees the same ones. Test material only.

use std::sync::OnceLock;

use aws_lc_rs::signature::{self as lc, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};
use warden_core::config::CompiledConfig;
use warden_core::keys::KeySet;
use warden_core::session::SessionKey;
use warden_core::token::TokenRules;

/// The filter's token service (the TE issuer).
pub const ISSUER: &str = "http://issuer";
/// The clock of every decision (Unix seconds).
pub const NOW: i64 = 1100;
/// The plugin configuration's `clock_skew_seconds`.
pub const LEEWAY: i64 = 30;

/// A signing key with its public half: signs like the token service (or a provider), and
/// checks signatures with another implementation than the parser under test uses.
pub struct Key {
    pub kid: &'static str,
    pub alg: &'static str,
    material: Material,
}

enum Material {
    Es256(Box<p256::ecdsa::SigningKey>),
    EdDsa(ed25519_compact::KeyPair),
    Rs256(Box<aws_lc_rs::rsa::KeyPair>),
}

impl Key {
    fn es256(kid: &'static str, seed: u8) -> Self {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a valid P-256 scalar");
        Self {
            kid,
            alg: "ES256",
            material: Material::Es256(Box::new(key)),
        }
    }

    fn eddsa(kid: &'static str, seed: u8) -> Self {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        Self {
            kid,
            alg: "EdDSA",
            material: Material::EdDsa(pair),
        }
    }

    fn rs256(kid: &'static str) -> Self {
        // A fixed RSA-2048 key made for these targets (RSA keys cannot be derived from a seed).
        let pair =
            aws_lc_rs::rsa::KeyPair::from_pkcs8(include_bytes!("rsa2048-test-key.pk8")).unwrap();
        Self {
            kid,
            alg: "RS256",
            material: Material::Rs256(Box::new(pair)),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.material {
            Material::Es256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_bytes().to_vec()
            }
            Material::EdDsa(k) => k.sk.sign(message, None).to_vec(),
            Material::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &lc::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .unwrap();
                sig
            }
        }
    }

    /// The uncompressed SEC1 point of a P-256 key.
    fn point(k: &p256::ecdsa::SigningKey) -> Vec<u8> {
        k.verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// Whether `sig` is this key's signature of `message`, checked with a second
    /// implementation: aws-lc-rs for the TE keys (jwt-compact verifies with RustCrypto), and
    /// RustCrypto / ed25519-compact for the provider's keys (the token service uses aws-lc-rs).
    pub fn verifies(&self, message: &[u8], sig: &[u8], crosswise: bool) -> bool {
        match (&self.material, crosswise) {
            (Material::Es256(k), true) => {
                UnparsedPublicKey::new(&lc::ECDSA_P256_SHA256_FIXED, Self::point(k))
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Es256(k), false) => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|s| k.verifying_key().verify(message, &s).is_ok())
            }
            (Material::EdDsa(k), true) => UnparsedPublicKey::new(&lc::ED25519, k.pk.as_ref())
                .verify(message, sig)
                .is_ok(),
            (Material::EdDsa(k), false) => ed25519_compact::Signature::from_slice(sig)
                .is_ok_and(|s| k.pk.verify(message, &s).is_ok()),
            (Material::Rs256(k), _) => {
                use aws_lc_rs::signature::KeyPair;
                UnparsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, k.public_key().as_ref())
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }

    /// The public JWK, with `kid`, `alg` and `use` (`alg` left out when `with_alg` is false).
    pub fn jwk(&self, with_alg: bool) -> Value {
        let mut jwk = match &self.material {
            Material::Es256(k) => {
                let p = Self::point(k);
                json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            Material::EdDsa(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.pk.as_ref())})
            }
            Material::Rs256(k) => {
                use aws_lc_rs::signature::KeyPair;
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
        };
        jwk["kid"] = self.kid.into();
        jwk["use"] = "sig".into();
        if with_alg {
            jwk["alg"] = self.alg.into();
        }
        jwk
    }

    /// A compact JWS of these exact header and payload bytes.
    pub fn compact(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    /// A JWS with the header the token service (or the demo provider) writes.
    pub fn jwt(&self, typ: &str, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "kid": self.kid, "typ": typ});
        self.compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }
}

fn once<T>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(make)
}

/// The token service's published TE keys: `k1` (ES256) and `k2` (EdDSA).
pub fn te_keys() -> &'static [Key; 2] {
    static KEYS: OnceLock<[Key; 2]> = OnceLock::new();
    once(&KEYS, || [Key::es256("k1", 7), Key::eddsa("k2", 9)])
}

/// A key nobody published, under a published `kid`.
pub fn rogue_te_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    once(&KEY, || Key::es256("k1", 11))
}

/// A key under a `kid` the JWKS does not publish (a new key the filter has not fetched).
pub fn stranger_te_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    once(&KEY, || Key::es256("k9", 12))
}

/// The published TE key named `kid`.
pub fn te_key(kid: &str) -> Option<&'static Key> {
    te_keys().iter().find(|k| k.kid == kid)
}

pub fn te_jwks() -> Value {
    json!({"keys": te_keys().iter().map(|k| k.jwk(true)).collect::<Vec<_>>()})
}

pub fn key_set() -> &'static KeySet {
    static SET: OnceLock<KeySet> = OnceLock::new();
    once(&SET, || {
        KeySet::from_jwks(te_jwks().to_string().as_bytes()).expect("the fixture JWKS")
    })
}

pub fn rules() -> TokenRules {
    TokenRules {
        issuer: ISSUER.into(),
        leeway_seconds: LEEWAY,
    }
}

/// TE claims as the token service writes them (`aud` one resource, `exp` 200 s after `NOW`).
pub fn te_claims(aud: Value, client_id: &str) -> Value {
    json!({
        "iss": ISSUER, "sub": "demo@example.com", "aud": aud, "exp": NOW + 200, "iat": NOW - 100,
        "nbf": NOW - 100, "jti": "j1", "client_id": client_id, "scope": "", "sid": "s1",
        "email": "demo@example.com", "name": "Demo", "groups": ["demo"],
    })
}

/// A TE signed with `k1` for `aud`.
pub fn te(aud: &str) -> String {
    te_keys()[0].jwt("at+jwt", &te_claims(json!(aud), "c1"))
}

pub const DEMO: usize = 0;
pub const OTHER: usize = 1;
pub const MCP_ROOT: usize = 2;
pub const MCP_ADMIN: usize = 3;
pub const CHAT: usize = 4;
pub const ADMIN_APP: usize = 5;

/// The filter's plugin configuration of the targets: server routes on two hosts (one nested
/// under another's prefix, one at a root), and two client routes (https at the root, http
/// under a prefix).
pub fn plugin_document() -> Value {
    let anyone = json!({"allow": {"and": [{"accept": true}]}});
    json!({
        "version": 1,
        "issuer": ISSUER,
        "clock_skew_seconds": LEEWAY,
        "jwks_static": te_jwks(),
        "token_service": {"cluster": "ts", "authority": "ts"},
        "routes": [
            {"name": "demo", "resource": "http://127.0.0.1:9000/mcp", "policy": anyone},
            {"name": "other", "resource": "http://127.0.0.1:9000/other",
             "allowed_origins": ["http://app.example"], "policy": anyone},
            {"name": "mcp-root", "resource": "https://mcp.example", "policy": anyone},
            {"name": "mcp-admin", "resource": "https://mcp.example/mcp/admin",
             "policy": {"allow": {"and": [{"email": {"is": "demo@example.com"}}]}}},
            {"name": "chat", "kind": "client", "resource": "https://chat.example",
             "policy": {"allow": {"and": [{"email": {"is": "demo@example.com"}}]}}},
            {"name": "admin-app", "kind": "client", "resource": "http://apps.example/admin",
             "pass_identity_headers": true, "policy": anyone},
        ]
    })
}

pub fn config() -> &'static CompiledConfig {
    static CONFIG: OnceLock<CompiledConfig> = OnceLock::new();
    once(&CONFIG, || {
        CompiledConfig::from_json(plugin_document().to_string().as_bytes())
            .expect("the fixture plugin configuration")
    })
}

pub fn session_key() -> SessionKey {
    SessionKey::from_random([3; 32])
}

/// The token service's configuration, with the same client routes as `config()`.
pub fn token_service_config() -> &'static warden_token_service::Config {
    static CONFIG: OnceLock<warden_token_service::Config> = OnceLock::new();
    once(&CONFIG, || {
        warden_token_service::Config::from_yaml(
            r#"
authorization_server: {issuer: "http://127.0.0.1:9100"}
routes:
  - name: chat
    from: https://chat.example
    to: http://127.0.0.1:3000
    mcp: {client: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: admin-app
    from: http://apps.example
    prefix: /admin
    to: http://127.0.0.1:3001
    mcp: {client: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: demo
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:3002
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
"#,
        )
        .expect("the fixture token service configuration")
    })
}

/// The identity provider of the ID token target.
pub const IDP_ISSUER: &str = "https://idp.example";
pub const IDP_CLIENT: &str = "warden";
pub const IDP_NONCE: &str = "n-0123456789";
/// The provider's clock, as the token service's: Unix seconds.
pub const IDP_NOW: i64 = 1_700_000_000;

/// The provider's published keys: `r1` (RSA, `alg` RS256 on the JWK), `e1` (P-256, no `alg`:
/// the curve implies ES256) and `d1` (Ed25519).
pub fn idp_keys() -> &'static [Key; 3] {
    static KEYS: OnceLock<[Key; 3]> = OnceLock::new();
    once(&KEYS, || {
        [Key::rs256("r1"), Key::es256("e1", 5), Key::eddsa("d1", 6)]
    })
}

/// A key the provider does not publish, under a published `kid`.
pub fn rogue_idp_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    once(&KEY, || Key::es256("e1", 13))
}

pub fn idp_jwks() -> Value {
    let [r, e, d] = idp_keys();
    json!({"keys": [r.jwk(true), e.jwk(false), d.jwk(true), {"kty": "oct", "k": "c2VjcmV0"}]})
}

pub fn idp_parsed_keys() -> &'static [warden_token_service::oidc::jws::Jwk] {
    static KEYS: OnceLock<Vec<warden_token_service::oidc::jws::Jwk>> = OnceLock::new();
    once(&KEYS, || {
        warden_token_service::oidc::jws::parse_jwks(idp_jwks().to_string().as_bytes())
            .expect("the fixture provider JWKS")
    })
    .as_slice()
}

pub fn oidc_config() -> &'static warden_token_service::config::OidcConfig {
    static CONFIG: OnceLock<warden_token_service::config::OidcConfig> = OnceLock::new();
    once(&CONFIG, || {
        serde_json::from_value(json!({
            "issuer": IDP_ISSUER, "client_id": IDP_CLIENT, "groups_claim": "realm_access.roles"
        }))
        .expect("the fixture OIDC configuration")
    })
}

/// ID token claims as the demo provider writes them.
pub fn id_token_claims() -> Value {
    json!({
        "iss": IDP_ISSUER, "sub": "alice", "aud": IDP_CLIENT, "azp": IDP_CLIENT,
        "iat": IDP_NOW - 10, "exp": IDP_NOW + 300, "auth_time": IDP_NOW - 20, "nonce": IDP_NONCE,
        "email": "Alice@Example.COM", "email_verified": true, "name": "Alice",
        "realm_access": {"roles": ["admin", "ops"]},
    })
}

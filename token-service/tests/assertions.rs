//! `private_key_jwt` client authentication (RFC 7523 §2.2) and the ID-JAG grant: assertions
//! signed here with test keys of each algorithm family, keys served over real HTTP by a small
//! server in the test (a client's `jwks_uri`, an ID-JAG issuer's discovery and JWKS), and
//! every refusal the issue lists. The jti ledger itself, on SQLite and PostgreSQL across two
//! store handles, is in `store_contract.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256,
};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use hmac::Mac;
use serde_json::{json, Value};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

// ---------------------------------------------------------------------------------------
// Test keys and signing.

enum Pair {
    Rsa(RsaKeyPair, bool),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key of one algorithm family, with its `kid`.
struct TestKey {
    kid: String,
    alg: &'static str,
    pair: Pair,
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

impl TestKey {
    fn new(alg: &'static str, kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pair = match alg {
            "RS256" | "PS256" => Pair::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
                alg == "PS256",
            ),
            "ES256" => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                Pair::Ec(
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                        .unwrap(),
                )
            }
            "EdDSA" => Pair::Ed(Ed25519KeyPair::generate().unwrap()),
            other => panic!("no test key for {other}"),
        };
        Self {
            kid: kid.into(),
            alg,
            pair,
        }
    }

    /// The public JWK (no `alg`: the key type implies the algorithms it allows).
    fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(p, _) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(p.public_key());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Pair::Ec(p) => {
                let point = p.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Pair::Ed(p) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                       "x": b64(p.public_key().as_ref())})
            }
        }
    }

    fn sign_input(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(p, pss) => {
                let mut sig = vec![0; p.public_modulus_len()];
                let padding: &dyn aws_lc_rs::signature::RsaEncoding = if *pss {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                p.sign(padding, &rng, input, &mut sig).unwrap();
                sig
            }
            Pair::Ec(p) => p.sign(&rng, input).unwrap().as_ref().to_vec(),
            Pair::Ed(p) => p.sign(input).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims` under this key's algorithm and kid, plus `extra` header fields.
    fn sign(&self, claims: &Value, extra: Value) -> String {
        let mut header = json!({"alg": self.alg, "kid": self.kid});
        for (k, v) in extra.as_object().unwrap() {
            header[k] = v.clone();
        }
        compact(&header, claims, |input| self.sign_input(input))
    }
}

fn compact(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// The classic confusion: HS256 keyed with the bytes of the public JWK.
fn hs256_with_public_key(key: &TestKey, claims: &Value) -> String {
    let secret = key.jwk().to_string();
    compact(&json!({"alg": "HS256", "kid": key.kid}), claims, |input| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    })
}

fn unsigned(kid: &str, claims: &Value) -> String {
    compact(&json!({"alg": "none", "kid": kid}), claims, |_| Vec::new())
}

static NEXT_JTI: AtomicUsize = AtomicUsize::new(0);

fn fresh_jti() -> String {
    format!("jti-{}", NEXT_JTI.fetch_add(1, Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------
// A key server on a real socket: a JWKS that can change, and an issuer's discovery document.

#[derive(Clone)]
struct KeyServer {
    base: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// The JWKS answers 503 while set.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl KeyServer {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = KeyServer {
            base: base.clone(),
            jwks: Arc::new(Mutex::new(json!({"keys": []}))),
            fetches: Arc::new(AtomicUsize::new(0)),
            failing: Arc::default(),
        };
        server.publish(keys);
        let (jwks, fetches) = (server.jwks.clone(), server.fetches.clone());
        let failing = server.failing.clone();
        let discovery = json!({"issuer": base, "jwks_uri": format!("{base}/jwks"),
                               "token_endpoint": format!("{base}/token")});
        // An issuer with a path publishes RFC 8414 metadata only, at the well-known URL made
        // from its host and path (§3.1).
        let tenant =
            json!({"issuer": format!("{base}/tenant"), "jwks_uri": format!("{base}/jwks")});
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (jwks, fetches, failing) = (jwks.clone(), fetches.clone(), failing.clone());
                    async move {
                        use axum::response::IntoResponse;
                        fetches.fetch_add(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        axum::Json(jwks.lock().unwrap().clone()).into_response()
                    }
                }),
            )
            .route(
                "/.well-known/oauth-authorization-server/tenant",
                axum::routing::get(move || {
                    let d = tenant.clone();
                    async move { axum::Json(d) }
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = discovery.clone();
                    async move { axum::Json(d) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// The service under test.

/// `config_yaml` with `clients` added to its clients and `as_extra` to `authorization_server`.
fn env_with(clients: &str, as_extra: &str) -> TestEnv {
    let (clients, as_extra) = (clients.to_owned(), as_extra.to_owned());
    TestEnv::with(move |dir| {
        config_yaml(dir, "", "ES256")
            .replacen("clients:\n", &format!("clients:\n{clients}"), 1)
            .replacen(
                "  refresh_token_ttl_seconds: 3600\n",
                &format!("  refresh_token_ttl_seconds: 3600\n{as_extra}"),
                1,
            )
    })
}

/// A configured `private_key_jwt` client with inline keys.
fn inline_client(id: &str, keys: &[&TestKey]) -> String {
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    format!(
        "  - client_id: {id}\n    token_endpoint_auth_method: private_key_jwt\n    jwks: {jwks}\n    redirect_uris: [{REDIRECT}]\n"
    )
}

/// The claims of a good client assertion of `client_id` at `now`.
fn assertion_claims(client_id: &str, now: i64) -> Value {
    json!({"iss": client_id, "sub": client_id, "aud": format!("{ISSUER}/token"),
           "exp": now + 60, "iat": now, "jti": fresh_jti()})
}

async fn revoke_with(env: &TestEnv, assertion: &str) -> Resp {
    env.post_form(
        "/revoke",
        &[
            ("token", "nothing-to-revoke"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

fn assert_refused(r: &Resp, status: StatusCode, error: &str, reason: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert_eq!(body["error"], error, "{}", r.body);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains(reason),
        "expected {reason:?} in {}",
        r.body
    );
}

// ---------------------------------------------------------------------------------------
// private_key_jwt.

#[tokio::test]
async fn each_algorithm_family_authenticates_a_code_exchange_and_a_refresh() {
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let key = TestKey::new(alg, &format!("k-{alg}"));
        let env = env_with(&inline_client("jwt-app", &[&key]), "");
        let (q, _) = env.sign_in("jwt-app", REDIRECT, &[]).await;
        let now = env.state.now();
        let r = env
            .post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &q["code"]),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                    ("client_assertion_type", ASSERTION_TYPE),
                    (
                        "client_assertion",
                        &key.sign(&assertion_claims("jwt-app", now), json!({})),
                    ),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{alg}: {}", r.body);
        let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
        // The client_id may be named too; it must be the assertion's.
        let r = env
            .post_form(
                "/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("client_id", "jwt-app"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    (
                        "client_assertion",
                        &key.sign(&assertion_claims("jwt-app", now), json!({})),
                    ),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{alg} refresh: {}", r.body);
        // And at the revocation endpoint, with the issuer as the audience, as the official
        // Python SDK writes it (a slash after a URL without a path).
        let mut claims = assertion_claims("jwt-app", now);
        claims["aud"] = json!(format!("{ISSUER}/"));
        let r = revoke_with(&env, &key.sign(&claims, json!({}))).await;
        assert_eq!(r.status, StatusCode::OK, "{alg} revoke: {}", r.body);
        // Or as an array; and without a kid, the client's only key fits.

        let mut claims = assertion_claims("jwt-app", now);
        claims["aud"] = json!([ISSUER]);
        let no_kid = compact(&json!({"alg": alg}), &claims, |i| key.sign_input(i));
        let r = revoke_with(&env, &no_kid).await;
        assert_eq!(r.status, StatusCode::OK, "{alg} revoke: {}", r.body);
    }
}

#[tokio::test]
async fn client_assertions_are_refused_for_every_flaw() {
    let key = TestKey::new("ES256", "k1");
    let other = TestKey::new("ES256", "k-other");
    let rsa = TestKey::new("RS256", "r1");
    let env = env_with(
        &format!(
            "{}{}",
            inline_client("jwt-app", &[&key]),
            inline_client("rsa-app", &[&rsa])
        ),
        "",
    );
    let now = env.state.now();
    let good = || assertion_claims("jwt-app", now);
    let with = |name: &str, v: Value| {
        let mut c = good();
        c[name] = v;
        c
    };
    let without = |name: &str| {
        let mut c = good();
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong audience",
            key.sign(
                &with("aud", json!("https://elsewhere.example/token")),
                json!({}),
            ),
            "aud must be",
        ),
        (
            "audience of another endpoint",
            key.sign(&with("aud", json!(format!("{ISSUER}/register"))), json!({})),
            "aud must be",
        ),
        (
            "our audience among others (audience injection)",
            key.sign(
                &with(
                    "aud",
                    json!(["https://elsewhere.example/token", format!("{ISSUER}/token")]),
                ),
                json!({}),
            ),
            "aud must be a single value",
        ),
        (
            "our audience twice",
            key.sign(
                &with("aud", json!([ISSUER, format!("{ISSUER}/token")])),
                json!({}),
            ),
            "aud must be a single value",
        ),
        (
            "unknown kid",
            other.sign(&good(), json!({})),
            "does not publish",
        ),
        (
            "another key under the client's kid",
            other.sign(&good(), json!({"kid": "k1"})),
            "does not verify",
        ),
        (
            "alg none",
            unsigned("k1", &good()),
            "algorithm none is not accepted",
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key(&key, &good()),
            "algorithm HS256 is not accepted",
        ),
        (
            "crit",
            key.sign(&good(), json!({"crit": ["exp"], "exp": 1})),
            "critical header",
        ),
        (
            "exp too far ahead",
            key.sign(&with("exp", json!(now + 3600)), json!({})),
            "more than 300 seconds",
        ),
        (
            "no exp",
            key.sign(&without("exp"), json!({})),
            "exp is required",
        ),
        (
            "expired",
            key.sign(&with("exp", json!(now - 300)), json!({})),
            "expired",
        ),
        (
            "issued in the future",
            key.sign(&with("iat", json!(now + 600)), json!({})),
            "iat is in the future",
        ),
        (
            "no jti",
            key.sign(&without("jti"), json!({})),
            "jti is required",
        ),
        (
            "iss is not the client",
            key.sign(&with("iss", json!("someone-else")), json!({})),
            "iss and sub",
        ),
        (
            // Looked up by its sub: the other client's keys do not verify it.
            "sub of another client",
            key.sign(&with("sub", json!("rsa-app")), json!({})),
            "does not publish",
        ),
        (
            "an algorithm outside the allowlist",
            rsa.sign(&assertion_claims("rsa-app", now), json!({"alg": "RS512"})),
            "RS512 is not accepted",
        ),
    ];
    for (what, assertion, reason) in cases {
        let r = revoke_with(&env, &assertion).await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid_client", reason);
        assert!(r.body.len() < 400, "{what}: {}", r.body);
    }

    // Named as jwt-app, but its sub is another client.
    let r = env
        .post_form(
            "/revoke",
            &[
                ("token", "x"),
                ("client_id", "jwt-app"),
                ("client_assertion_type", ASSERTION_TYPE),
                (
                    "client_assertion",
                    &key.sign(&with("sub", json!("rsa-app")), json!({})),
                ),
            ],
            None,
        )
        .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "iss and sub",
    );

    // A replayed jti: the first use passes, the second is refused.
    let once = key.sign(&good(), json!({}));
    assert_eq!(revoke_with(&env, &once).await.status, StatusCode::OK);
    let r = revoke_with(&env, &once).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid_client", "replay");
    // Even in another assertion that reuses the id.
    let mut again = good();
    again["jti"] = once_jti(&once);
    let r = revoke_with(&env, &key.sign(&again, json!({}))).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid_client", "replay");

    // The wrong assertion type, and a secret instead of the assertion.
    let r = env
        .post_form(
            "/revoke",
            &[
                ("token", "x"),
                ("client_assertion_type", "urn:example:saml"),
                ("client_assertion", &key.sign(&good(), json!({}))),
            ],
            None,
        )
        .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client_assertion_type",
    );
    let r = env
        .post_form(
            "/revoke",
            &[
                ("token", "x"),
                ("client_id", "jwt-app"),
                ("client_secret", "guess"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // A secret client cannot switch to an assertion.
    let r = env
        .post_form(
            "/revoke",
            &[
                ("token", "x"),
                ("client_id", "post-app"),
                ("client_assertion_type", ASSERTION_TYPE),
                (
                    "client_assertion",
                    &key.sign(&assertion_claims("post-app", now), json!({})),
                ),
            ],
            None,
        )
        .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client_secret_post",
    );
}

fn once_jti(jwt: &str) -> Value {
    let claims = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice::<Value>(&B64.decode(claims).unwrap()).unwrap()["jti"].clone()
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_uri_at_most_once_per_ten_seconds() {
    let first = TestKey::new("EdDSA", "first");
    let second = TestKey::new("ES256", "second");
    let server = KeyServer::start(&[&first]).await;
    let client = format!(
        "  - client_id: uri-app\n    token_endpoint_auth_method: private_key_jwt\n    jwks_uri: {}/jwks\n    redirect_uris: [{REDIRECT}]\n",
        server.base
    );
    let env = env_with(&client, "");
    let claims = |env: &TestEnv| assertion_claims("uri-app", env.state.now());

    let r = revoke_with(&env, &first.sign(&claims(&env), json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), 1);
    // Cached: no fetch for a known kid.
    let r = revoke_with(&env, &first.sign(&claims(&env), json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), 1);

    // The client rotates in a second key. Within 10 s of the last fetch, its kid is unknown
    // and the JWKS is not fetched again, however many unknown kids arrive.
    server.publish(&[&first, &second]);
    env.advance(3);
    for _ in 0..3 {
        let r = revoke_with(&env, &second.sign(&claims(&env), json!({}))).await;
        assert_refused(
            &r,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "does not publish",
        );
    }
    assert_eq!(server.fetches(), 1);
    // Past 10 s, the unknown kid fetches the set again once, and the new key works.
    env.advance(8);
    let r = revoke_with(&env, &second.sign(&claims(&env), json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), 2);
    // Made-up kids right after: no fetch.
    let made_up = TestKey::new("ES256", "made-up");
    for _ in 0..3 {
        let r = revoke_with(&env, &made_up.sign(&claims(&env), json!({}))).await;
        assert_refused(
            &r,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "does not publish",
        );
    }
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn a_dcr_client_registers_keys_and_authenticates_with_them() {
    let key = TestKey::new("PS256", "dcr-key");
    let env = TestEnv::new();
    let r = env
        .post_json(
            "/register",
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt",
                   "jwks": {"keys": [key.jwk()]}, "client_name": "Signed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let reg = r.json();
    assert_eq!(reg["token_endpoint_auth_method"], "private_key_jwt");
    assert!(reg.get("client_secret").is_none(), "{reg}");
    assert_eq!(reg["jwks"]["keys"][0]["kid"], "dcr-key");
    let id = reg["client_id"].as_str().unwrap();

    let (q, _) = env.sign_in(id, REDIRECT, &[]).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_assertion_type", ASSERTION_TYPE),
                (
                    "client_assertion",
                    &key.sign(&assertion_claims(id, env.state.now()), json!({})),
                ),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Keys are required, one way only, and a client's URL must be https.
    for (body, reason) in [
        (
            json!({"token_endpoint_auth_method": "private_key_jwt"}),
            "jwks or jwks_uri",
        ),
        (
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [key.jwk()]},
                "jwks_uri": "https://client.example.com/jwks"}),
            "not both",
        ),
        (
            json!({"token_endpoint_auth_method": "private_key_jwt",
                "jwks_uri": "http://client.example.com/jwks"}),
            "https",
        ),
        (
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            "no key",
        ),
        (
            json!({"token_endpoint_auth_method": "none", "jwks": {"keys": [key.jwk()]}}),
            "only for",
        ),
    ] {
        let mut body = body;
        body["redirect_uris"] = json!([REDIRECT]);
        let r = env.post_json("/register", body).await;
        assert_refused(
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            reason,
        );
    }
    // With an https jwks_uri it registers.
    let r = env
        .post_json(
            "/register",
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt",
                   "jwks_uri": "https://client.example.com/jwks"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["jwks_uri"], "https://client.example.com/jwks");
}

#[test]
fn configured_keys_are_checked_at_load() {
    let key = TestKey::new("ES256", "k");
    let dir = tempfile::tempdir().unwrap();
    let base = config_yaml(dir.path(), "", "ES256");
    for (client, field) in [
        (
            "  - client_id: a\n    token_endpoint_auth_method: private_key_jwt\n    redirect_uris: [http://127.0.0.1/cb]\n".to_owned(),
            "clients[0].jwks",
        ),
        (
            format!("  - client_id: a\n    token_endpoint_auth_method: private_key_jwt\n    client_secret: s\n    jwks: {}\n    redirect_uris: [http://127.0.0.1/cb]\n", json!({"keys": [key.jwk()]})),
            "clients[0].client_secret",
        ),
        (
            "  - client_id: a\n    jwks_uri: http://keys.example.com/jwks\n    redirect_uris: [http://127.0.0.1/cb]\n".to_owned(),
            "clients[0].jwks_uri",
        ),
        (
            format!("  - client_id: a\n    client_secret: s\n    token_endpoint_auth_method: client_secret_post\n    jwks: {}\n    redirect_uris: [http://127.0.0.1/cb]\n", json!({"keys": [key.jwk()]})),
            "clients[0].token_endpoint_auth_method",
        ),
    ] {
        let yaml = base.replacen("clients:\n", &format!("clients:\n{client}"), 1);
        let e = warden_token_service::Config::from_yaml(&yaml).unwrap_err();
        assert_eq!(e.path, field, "{e}");
    }
    // Keys without a method: private_key_jwt.
    let yaml = base.replacen(
        "clients:\n",
        &format!(
            "clients:\n  - client_id: a\n    jwks: {}\n    redirect_uris: [http://127.0.0.1/cb]\n",
            json!({"keys": [key.jwk()]})
        ),
        1,
    );
    let config = warden_token_service::Config::from_yaml(&yaml).unwrap();
    assert_eq!(
        config.client("a").unwrap().auth_method().as_str(),
        "private_key_jwt"
    );
}

// ---------------------------------------------------------------------------------------
// ID-JAG.

/// An agent platform presenting ID-JAGs. It signs users in with the code flow too (so it has
/// redirect URIs, which a client of the jwt-bearer grant alone does without).
const AGENT: &str = "  - client_id: agent-platform\n    client_secret: agent-secret\n    token_endpoint_auth_method: client_secret_post\n    grant_types: [authorization_code, refresh_token, urn:ietf:params:oauth:grant-type:jwt-bearer]\n    redirect_uris: [https://agent.example.com/cb]\n";

fn issuers_yaml(server: &KeyServer, with_jwks_uri: bool) -> String {
    let jwks_uri = if with_jwks_uri {
        format!(", jwks_uri: {}/jwks", server.base)
    } else {
        String::new()
    };
    format!(
        "  identity_assertion_grant:\n    issuers:\n      - {{issuer: {}{jwks_uri}, groups_claim: roles}}\n",
        server.base
    )
}

fn id_jag_claims(server: &KeyServer, now: i64) -> Value {
    json!({"iss": server.base, "sub": "u-42", "aud": ISSUER, "client_id": "agent-platform",
           "resource": RESOURCE, "exp": now + 300, "iat": now, "jti": fresh_jti(),
           "email": "Bob@Corp.Example", "name": "Bob", "roles": ["reporting", "demo"]})
}

async fn exchange(env: &TestEnv, assertion: &str, extra: &[(&str, &str)]) -> Resp {
    let mut form = vec![
        ("grant_type", JWT_BEARER),
        ("assertion", assertion),
        ("client_id", "agent-platform"),
        ("client_secret", "agent-secret"),
    ];
    form.extend_from_slice(extra);
    env.post_form("/token", &form, None).await
}

/// Parameters a token request adds.
type Extra = &'static [(&'static str, &'static str)];

fn jwt_claims(jwt: &str) -> Value {
    let claims = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap()
}

#[tokio::test]
async fn an_id_jag_from_a_discovered_issuer_gets_a_te_for_its_resource() {
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let key = TestKey::new(alg, &format!("idp-{alg}"));
        let server = KeyServer::start(&[&key]).await;
        let env = env_with(AGENT, &issuers_yaml(&server, false));
        let m = env
            .get("/.well-known/oauth-authorization-server")
            .await
            .json();
        assert!(
            m["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(JWT_BEARER)),
            "{m}"
        );
        let now = env.state.now();
        let mut claims = id_jag_claims(&server, now);
        if alg == "EdDSA" {
            // The issuer as URL libraries print it (with a slash): the same audience.
            claims["aud"] = json!(format!("{ISSUER}/"));
        }
        let jag = key.sign(&claims, json!({"typ": "oauth-id-jag+jwt"}));
        let r = exchange(
            &env,
            &jag,
            &[("resource", RESOURCE), ("scope", "tools.read")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{alg}: {}", r.body);
        let t = r.json();
        assert!(t.get("refresh_token").is_none(), "{t}");
        assert_eq!(t["scope"], "tools.read");
        let te = jwt_claims(t["access_token"].as_str().unwrap());
        let user = format!("{}#u-42", server.base);
        assert_eq!(te["sub"], user);
        assert_eq!(te["aud"], RESOURCE);
        assert_eq!(te["client_id"], "agent-platform");
        assert_eq!(te["email"], "Bob@corp.example");
        assert_eq!(te["groups"], json!(["reporting", "demo"]));
        // The user is known to the service afterwards (the filter's look-ups resolve them).
        let store = env.state.store().clone();
        let config = env.state.config().clone();
        let resolved = tokio::task::spawn_blocking(move || {
            warden_token_service::identity::resolve(&config, store.as_ref(), &user).unwrap()
        })
        .await
        .unwrap()
        .expect("the ID-JAG user resolves");
        assert_eq!(resolved.name, "Bob");
        assert!(warden_token_service::identity::configured(
            env.state.config(),
            &format!("{}#u-42", server.base)
        ));
        assert_metrics(
            &env.state,
            &[
                "warden_sign_ins_total{method=\"id_jag\",result=\"success\"} 1",
                "warden_token_grants_total{grant_type=\"jwt_bearer\",result=\"issued\"} 1",
            ],
        );
    }
}

#[tokio::test]
async fn id_jags_are_refused_for_every_flaw() {
    let key = TestKey::new("ES256", "idp-1");
    let stranger = TestKey::new("ES256", "idp-2");
    let server = KeyServer::start(&[&key]).await;
    let env = env_with(AGENT, &issuers_yaml(&server, true));
    let now = env.state.now();
    let typ = || json!({"typ": "oauth-id-jag+jwt"});
    let good = || id_jag_claims(&server, now);
    let with = |name: &str, v: Value| {
        let mut c = good();
        c[name] = v;
        c
    };
    let without = |name: &str| {
        let mut c = good();
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let mut unsigned_header = typ();
    unsigned_header["alg"] = json!("none");
    let cases: Vec<(String, Extra, &str)> = vec![
        (
            key.sign(&with("aud", json!("https://other-as.example")), typ()),
            &[],
            "another audience",
        ),
        (
            key.sign(&good(), typ()),
            &[("resource", "http://127.0.0.1:9000/other")],
            "another resource",
        ),
        (
            key.sign(
                &with("resource", json!("http://127.0.0.1:9000/other")),
                typ(),
            ),
            &[],
            "no MCP server here",
        ),
        (
            key.sign(&with("exp", json!(now - 600)), typ()),
            &[],
            "expired",
        ),
        (key.sign(&without("iat"), typ()), &[], "iat is required"),
        (key.sign(&without("jti"), typ()), &[], "jti is required"),
        (
            key.sign(&with("exp", json!(now + 86_400)), typ()),
            &[],
            "more than 3600 seconds",
        ),
        (
            unsigned("idp-1", &good()),
            &[],
            "algorithm none is not accepted",
        ),
        (
            compact(&unsigned_header, &good(), |_| Vec::new()),
            &[],
            "algorithm none is not accepted",
        ),
        (
            hs256_with_public_key(&key, &good()),
            &[],
            "algorithm HS256 is not accepted",
        ),
        (stranger.sign(&good(), typ()), &[], "does not publish"),
        (
            stranger.sign(&good(), json!({"typ": "oauth-id-jag+jwt", "kid": "idp-1"})),
            &[],
            "does not verify",
        ),
        (
            key.sign(&with("iss", json!("https://unknown-idp.example")), typ()),
            &[],
            "not configured",
        ),
        (key.sign(&good(), json!({"typ": "JWT"})), &[], "typ must be"),
        (key.sign(&good(), json!({})), &[], "typ must be"),
        (
            key.sign(&with("client_id", json!("someone-else")), typ()),
            &[],
            "another client",
        ),
        (
            key.sign(
                &good(),
                json!({"typ": "oauth-id-jag+jwt", "crit": ["x"], "x": 1}),
            ),
            &[],
            "critical header",
        ),
        (key.sign(&without("email"), typ()), &[], "no email"),
    ];
    for (jag, extra, reason) in cases {
        let r = exchange(&env, &jag, extra).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_grant", reason);
    }

    // Replay: once, then refused.
    let jag = key.sign(&good(), typ());
    assert_eq!(exchange(&env, &jag, &[]).await.status, StatusCode::OK);
    let r = exchange(&env, &jag, &[]).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_grant", "replay");

    // The assertion's own scope bounds what is granted.
    let r = exchange(
        &env,
        &key.sign(&with("scope", json!("tools.read")), typ()),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["scope"], "tools.read");
    let r = exchange(
        &env,
        &key.sign(&with("scope", json!("tools.read")), typ()),
        &[("scope", "tools.call")],
    )
    .await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_scope", "tools.call");

    // A scope the route does not offer.
    let r = exchange(&env, &key.sign(&good(), typ()), &[("scope", "admin")]).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_scope", "admin");

    // A client without the grant type, even with a perfect assertion for it.
    let mut c = good();
    c["client_id"] = json!("post-app");
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &key.sign(&c, typ())),
                ("client_id", "post-app"),
                ("client_secret", "post-secret"),
            ],
            None,
        )
        .await;
    assert_refused(
        &r,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        "jwt-bearer",
    );
    // And no client authentication at all.
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &key.sign(&good(), typ())),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test]
async fn a_private_key_jwt_client_presents_an_id_jag() {
    let idp = TestKey::new("RS256", "idp");
    let client_key = TestKey::new("EdDSA", "agent");
    let server = KeyServer::start(&[&idp]).await;
    let jwks = json!({"keys": [client_key.jwk()]});
    let client = format!(
        "  - client_id: agent-platform\n    jwks: {jwks}\n    grant_types: [authorization_code, refresh_token, {JWT_BEARER}]\n    redirect_uris: [https://agent.example.com/cb]\n"
    );
    let env = env_with(&client, &issuers_yaml(&server, true));
    let now = env.state.now();
    let jag = idp.sign(
        &id_jag_claims(&server, now),
        json!({"typ": "oauth-id-jag+jwt"}),
    );
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &jag),
                ("client_assertion_type", ASSERTION_TYPE),
                (
                    "client_assertion",
                    &client_key.sign(&assertion_claims("agent-platform", now), json!({})),
                ),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Without issuers configured the grant type is unsupported and not advertised.
    let plain = env_with(AGENT, "");
    let m = plain
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    let r = exchange(&plain, &jag, &[]).await;
    assert_refused(
        &r,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
        "is off here",
    );
}

#[tokio::test]
async fn an_id_jag_issuer_rotating_its_keys_is_refetched_at_most_once_per_ten_seconds() {
    let old = TestKey::new("ES256", "2026-01");
    let new = TestKey::new("RS256", "2026-02");
    let server = KeyServer::start(&[&old]).await;
    let env = env_with(AGENT, &issuers_yaml(&server, false));
    let typ = json!({"typ": "oauth-id-jag+jwt"});
    let jag =
        |k: &TestKey, env: &TestEnv| k.sign(&id_jag_claims(&server, env.state.now()), typ.clone());

    let r = exchange(&env, &jag(&old, &env), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), 1);
    server.publish(&[&old, &new]);
    env.advance(5);
    for _ in 0..3 {
        let r = exchange(&env, &jag(&new, &env), &[]).await;
        assert_refused(
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "does not publish",
        );
    }
    assert_eq!(server.fetches(), 1);
    env.advance(6);
    let r = exchange(&env, &jag(&new, &env), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_refuse_with_the_reason() {
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let key = TestKey::new("ES256", "k");
    let client = format!(
        "  - client_id: uri-app\n    token_endpoint_auth_method: private_key_jwt\n    jwks_uri: http://{addr}/jwks\n    redirect_uris: [{REDIRECT}]\n"
    );
    let issuers =
        format!("  identity_assertion_grant:\n    issuers:\n      - {{issuer: http://{addr}}}\n");
    let env = env_with(&format!("{client}{AGENT}"), &issuers);
    let now = env.state.now();
    let r = revoke_with(
        &env,
        &key.sign(&assertion_claims("uri-app", now), json!({})),
    )
    .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "keys are unavailable",
    );
    let claims = json!({"iss": format!("http://{addr}"), "sub": "u", "aud": ISSUER,
        "client_id": "agent-platform", "resource": RESOURCE, "exp": now + 60, "iat": now,
        "jti": fresh_jti(), "email": "u@example.com"});
    let r = exchange(
        &env,
        &key.sign(&claims, json!({"typ": "oauth-id-jag+jwt"})),
        &[],
    )
    .await;
    assert_refused(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "keys are unavailable",
    );
}

#[tokio::test]
async fn a_key_set_stops_serving_a_day_after_its_last_successful_fetch() {
    let key = TestKey::new("ES256", "k");
    let server = KeyServer::start(&[&key]).await;
    let client = format!(
        "  - client_id: uri-app\n    token_endpoint_auth_method: private_key_jwt\n    jwks_uri: {}/jwks\n    redirect_uris: [{REDIRECT}]\n",
        server.base
    );
    let env = env_with(&client, "");
    async fn revoke(env: &TestEnv, key: &TestKey) -> Resp {
        let jwt = key.sign(&assertion_claims("uri-app", env.state.now()), json!({}));
        revoke_with(env, &jwt).await
    }
    assert_eq!(revoke(&env, &key).await.status, StatusCode::OK);
    server.fail(true);
    // Past the key set's lifetime the host fails: the set fetched before still serves.
    env.advance(1000);
    let r = revoke(&env, &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A day after the last successful fetch, it does not.
    env.advance(24 * 3600 - 1000);
    let r = revoke(&env, &key).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid_client", "503");
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "no successful fetch for 24 hours",
    );
    // The host answering again, the keys serve again.
    server.fail(false);
    env.advance(10);
    let r = revoke(&env, &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn an_issuer_with_a_path_is_discovered_at_the_rfc8414_url() {
    let key = TestKey::new("ES256", "idp");
    let server = KeyServer::start(&[&key]).await;
    let issuers = format!(
        "  identity_assertion_grant:\n    issuers:\n      - {{issuer: {}/tenant}}\n",
        server.base
    );
    let env = env_with(AGENT, &issuers);
    let mut claims = id_jag_claims(&server, env.state.now());
    claims["iss"] = json!(format!("{}/tenant", server.base));
    let r = exchange(
        &env,
        &key.sign(&claims, json!({"typ": "oauth-id-jag+jwt"})),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_jti_of_a_client_and_of_an_issuer_spelled_alike_are_apart() {
    let idp = TestKey::new("ES256", "idp");
    let client_key = TestKey::new("ES256", "c");
    let server = KeyServer::start(&[&idp]).await;
    // A client whose client_id is the ID-JAG issuer's URL.
    let env = env_with(
        &format!("{}{AGENT}", inline_client(&server.base, &[&client_key])),
        &issuers_yaml(&server, true),
    );
    let now = env.state.now();
    let mut jag = id_jag_claims(&server, now);
    jag["jti"] = json!("shared-jti");
    let r = exchange(
        &env,
        &idp.sign(&jag, json!({"typ": "oauth-id-jag+jwt"})),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut assertion = assertion_claims(&server.base, now);
    assertion["jti"] = json!("shared-jti");
    let r = revoke_with(&env, &client_key.sign(&assertion, json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Each is still a replay of its own kind.
    let r = revoke_with(&env, &client_key.sign(&assertion, json!({}))).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid_client", "replay");
    let r = exchange(
        &env,
        &idp.sign(&jag, json!({"typ": "oauth-id-jag+jwt"})),
        &[],
    )
    .await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_grant", "replay");
}

#[tokio::test]
async fn an_id_jag_without_groups_keeps_the_groups_stored_for_the_user() {
    let key = TestKey::new("ES256", "idp");
    let server = KeyServer::start(&[&key]).await;
    let env = env_with(AGENT, &issuers_yaml(&server, true));
    let typ = json!({"typ": "oauth-id-jag+jwt"});
    let user = format!("{}#u-42", server.base);
    let stored_groups = |env: &TestEnv| {
        let (store, user) = (env.state.store().clone(), user.clone());
        async move {
            tokio::task::spawn_blocking(move || store.idp_user(&user).unwrap().unwrap().groups)
                .await
                .unwrap()
        }
    };
    // The ID-JAG with groups stores them, as a browser sign-in would.
    let r = exchange(
        &env,
        &key.sign(&id_jag_claims(&server, env.state.now()), typ.clone()),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stored_groups(&env).await, ["reporting", "demo"]);
    // One without the claim keeps them, and its TE carries them.
    let mut claims = id_jag_claims(&server, env.state.now());
    claims.as_object_mut().unwrap().remove("roles");
    let r = exchange(&env, &key.sign(&claims, typ.clone()), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stored_groups(&env).await, ["reporting", "demo"]);
    let te = jwt_claims(r.json()["access_token"].as_str().unwrap());
    assert_eq!(te["groups"], json!(["reporting", "demo"]));
    // One with the claim, even empty, replaces them.
    let mut claims = id_jag_claims(&server, env.state.now());
    claims["roles"] = json!([]);
    let r = exchange(&env, &key.sign(&claims, typ), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(stored_groups(&env).await.is_empty());
}

//! The identity assertion (issue 9) through the token service: the internal endpoint the
//! filter asks on a cache miss (`POST /internal/v1/identity-assertion`), its claims, its
//! signature under the published JWKS, and its refusals. The router runs in-process with a
//! clock the tests set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use jwt_compact::alg::{Ed25519, Es256};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, UntrustedToken};
use serde_json::{json, Value};
use tower::ServiceExt;

const PATH: &str = "/internal/v1/identity-assertion";

/// Two routes that pass identity headers (one with a default port in `to`) beside `demo`,
/// which does not.
fn routes() -> &'static str {
    r#"  - name: who
    from: http://127.0.0.1:9000
    prefix: /who
    to: http://127.0.0.1:9300/mcp
    pass_identity_headers: true
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: remote
    from: http://127.0.0.1:9000
    prefix: /remote
    to: http://MCP.Example.com:80/v1/mcp
    pass_identity_headers: true
    mcp: {server: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
"#
}

fn env_with(alg: &str) -> TestEnv {
    TestEnv::with(|dir| config_yaml(dir, routes(), alg))
}

fn credential(env: &TestEnv) -> String {
    std::fs::read_to_string(env.state.config().internal_credential_file())
        .expect("the credential file exists when a route passes identity headers")
        .trim()
        .to_owned()
}

/// A call on the internal listener's router; `credential: None` sends none.
async fn ask(env: &TestEnv, body: Value, credential: Option<&str>) -> (StatusCode, Value) {
    let body = body.to_string();
    let authorization = credential.map(|c| env.internal_authorization(c, PATH, body.as_bytes()));
    ask_raw(env, body, authorization.as_deref()).await
}

/// A call with exactly this `Authorization` (or none).
async fn ask_raw(env: &TestEnv, body: String, authorization: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::post(PATH).header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = warden_token_service::internal::router(env.state.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(
        resp.headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn issue(env: &TestEnv, route: &str) -> (StatusCode, Value) {
    let c = credential(env);
    ask(env, json!({"sub": EMAIL, "route": route}), Some(&c)).await
}

/// Verifies an assertion with the published JWKS, as any upstream would; returns the header
/// and the claims.
async fn verify(env: &TestEnv, jwt: &str) -> (Value, Value) {
    let jwks = env.get("/.well-known/jwks.json").await.json();
    let untrusted = UntrustedToken::new(jwt).unwrap();
    assert_eq!(
        untrusted.header().key_id.as_deref(),
        jwks["keys"][0]["kid"].as_str(),
        "signed with the key the JWKS publishes"
    );
    let jwk: JsonWebKey<'_> = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let claims = match untrusted.algorithm() {
        "ES256" => {
            let vk = p256::ecdsa::VerifyingKey::try_from(&jwk).unwrap();
            Es256
                .validator::<Value>(&vk)
                .validate(&untrusted)
                .unwrap()
                .claims()
                .clone()
        }
        "EdDSA" => {
            let vk = ed25519_compact::PublicKey::try_from(&jwk).unwrap();
            Ed25519
                .validator::<Value>(&vk)
                .validate(&untrusted)
                .unwrap()
                .claims()
                .clone()
        }
        other => panic!("unexpected alg {other}"),
    };
    let mut c = claims.custom.clone();
    let obj = c.as_object_mut().unwrap();
    obj.insert("exp".into(), claims.expiration.unwrap().timestamp().into());
    obj.insert("iat".into(), claims.issued_at.unwrap().timestamp().into());
    let header = json!({
        "alg": untrusted.algorithm(),
        "typ": untrusted.header().token_type,
    });
    (header, c)
}

#[tokio::test]
async fn an_assertion_names_the_user_and_the_upstream_and_verifies_with_the_jwks() {
    for alg in ["ES256", "EdDSA"] {
        let env = env_with(alg);
        let now = env.state.now();
        let (status, answer) = issue(&env, "who").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["issued_at"], now);
        assert_eq!(answer["expires_at"], now + 300, "five minutes");
        let jwt = answer["assertion"].as_str().unwrap();
        let (header, claims) = verify(&env, jwt).await;
        assert_eq!(
            header,
            json!({"alg": alg, "typ": "JWT"}),
            "not an access token"
        );
        assert_eq!(
            claims,
            json!({
                "iss": ISSUER,
                "aud": "http://127.0.0.1:9300",
                "sub": EMAIL,
                "email": EMAIL,
                "name": "Alice",
                "groups": ["admins", "demo"],
                "iat": now,
                "exp": now + 300,
                "route": "who",
            }),
            "{alg}"
        );
        // The audience is the upstream's origin: lower-case host, default port left out.
        let (status, answer) = issue(&env, "remote").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (_, claims) = verify(&env, answer["assertion"].as_str().unwrap()).await;
        assert_eq!(claims["aud"], "http://mcp.example.com");
        assert_eq!(claims["route"], "remote");
        // Later calls are issued at their own time.
        env.advance(1000);
        let (_, answer) = issue(&env, "who").await;
        assert_eq!(answer["issued_at"], now + 1000);
        let (_, claims) = verify(&env, answer["assertion"].as_str().unwrap()).await;
        assert_eq!(claims["exp"], now + 1300);
    }
}

#[tokio::test]
async fn the_endpoint_wants_the_internal_credential() {
    let env = env_with("ES256");
    let body = json!({"sub": EMAIL, "route": "who"});
    let other = "an-entirely-different-credential-of-43-chars";
    for presented in [None, Some(""), Some("wrong"), Some("Bearer"), Some(other)] {
        let (status, answer) = ask(&env, body.clone(), presented).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert!(answer.get("assertion").is_none());
    }
    let c = credential(&env);
    // The credential itself, sent as a bearer (as Envoy would print it at debug level), is
    // worth nothing: only a signed call is.
    let text = body.to_string();
    let (status, _) = ask_raw(&env, text.clone(), Some(&format!("Bearer {c}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A signed call is accepted once; the same call again (a replay) is refused.
    let signed = env.internal_authorization(&c, PATH, text.as_bytes());
    let (status, answer) = ask_raw(&env, text.clone(), Some(&signed)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _) = ask_raw(&env, text.clone(), Some(&signed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a replayed call");
    // Signed for another body: refused.
    let signed = env.internal_authorization(&c, PATH, b"{}");
    let (status, _) = ask_raw(&env, text.clone(), Some(&signed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a call with another body");
    // Signed more than a minute ago: refused.
    let signed = env.internal_authorization(&c, PATH, text.as_bytes());
    env.advance(61);
    let (status, _) = ask_raw(&env, text, Some(&signed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a stale call");
    // Nor does the public listener serve it.
    let r = env.post_json(PATH, body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test]
async fn unknown_users_and_routes_and_routes_without_the_option_are_refused() {
    let env = env_with("ES256");
    let c = credential(&env);
    let cases = [
        (
            json!({"sub": "gone@example.com", "route": "who"}),
            StatusCode::NOT_FOUND,
            "unknown_user",
        ),
        (
            json!({"sub": EMAIL, "route": "nope"}),
            StatusCode::NOT_FOUND,
            "unknown_route",
        ),
        (
            json!({"sub": EMAIL, "route": "demo"}),
            StatusCode::BAD_REQUEST,
            "identity_headers_off",
        ),
        (
            json!({"sub": EMAIL}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"sub": EMAIL, "route": "who", "email": "admin@example.com"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, status, error) in cases {
        let (got, answer) = ask(&env, body.clone(), Some(&c)).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"], error, "{body}");
        assert!(answer.get("assertion").is_none(), "{body}");
    }
}

#[tokio::test]
async fn the_internal_listener_and_its_credential_are_always_there_for_the_revocation_feed() {
    let env = TestEnv::new();
    assert!(env.state.config().uses_internal_listener());
    assert!(env.state.config().internal_credential_file().exists());
}

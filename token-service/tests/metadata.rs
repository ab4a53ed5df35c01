#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;

#[tokio::test]
async fn authorization_server_metadata() {
    let env = TestEnv::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let m = r.json();
        assert_eq!(m["issuer"], ISSUER);
        assert_eq!(m["authorization_endpoint"], format!("{ISSUER}/authorize"));
        assert_eq!(m["token_endpoint"], format!("{ISSUER}/token"));
        assert_eq!(m["registration_endpoint"], format!("{ISSUER}/register"));
        assert_eq!(m["revocation_endpoint"], format!("{ISSUER}/revoke"));
        assert_eq!(m["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
        assert_eq!(m["response_types_supported"], serde_json::json!(["code"]));
        assert_eq!(
            m["grant_types_supported"],
            serde_json::json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(
            m["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(
            m["token_endpoint_auth_methods_supported"],
            serde_json::json!([
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ])
        );
        assert_eq!(
            m["token_endpoint_auth_signing_alg_values_supported"],
            serde_json::json!(["RS256", "PS256", "ES256", "EdDSA"])
        );
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
        assert_eq!(
            m["scopes_supported"],
            serde_json::json!(["tools.call", "tools.read"])
        );
        assert_eq!(m["client_id_metadata_document_supported"], false);
    }
}

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let env = TestEnv::new();
    let r = env.get("/.well-known/jwks.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let jwks = r.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert_eq!(
        k["kid"],
        env.state.keys().signing_key(env.state.now()).unwrap().kid()
    );
    assert_eq!(k["x"].as_str().unwrap().len(), 43);
    assert_eq!(k["y"].as_str().unwrap().len(), 43);
    assert!(k.get("d").is_none(), "private key must not be published");
}

#[tokio::test]
async fn eddsa_jwks() {
    let env = TestEnv::with(|d| config_yaml(d, "", "EdDSA"));
    let k = env.get("/.well-known/jwks.json").await.json()["keys"][0].clone();
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert!(k.get("y").is_none());
}

#[tokio::test]
async fn healthz() {
    let env = TestEnv::new();
    let r = env.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "ok");
}

#[tokio::test]
async fn issuer_with_path_serves_path_inserted_metadata() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            &format!("issuer: {ISSUER}"),
            &format!("issuer: {ISSUER}/auth"),
        )
    });
    let r = env
        .get("/.well-known/oauth-authorization-server/auth")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let m = r.json();
    assert_eq!(m["issuer"], format!("{ISSUER}/auth"));
    assert_eq!(m["token_endpoint"], format!("{ISSUER}/auth/token"));
    assert_eq!(
        env.get("/auth/.well-known/jwks.json").await.status,
        StatusCode::OK
    );
    assert_eq!(env.get("/auth/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn cors_for_script_endpoints_only() {
    let env = TestEnv::new();
    let r = env
        .send(
            axum::http::Request::builder()
                .method("OPTIONS")
                .uri("/token")
                .header("origin", "https://inspector.example")
                .header("access-control-request-method", "POST")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), "*");
    assert!(r
        .header("access-control-allow-headers")
        .contains("Authorization"));
    assert!(r.headers.get("access-control-allow-credentials").is_none());
    let r = env.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(r.header("access-control-allow-origin"), "*");
    let r = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

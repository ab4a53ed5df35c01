#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;

#[tokio::test]
async fn dcr_public_client_is_echoed_without_secret() {
    let env = TestEnv::new();
    let r = env
        .post_json(
            "/register",
            json!({
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "VS Code",
                "application_type": "native",
                "some_unknown_field": true
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let b = r.json();
    assert!(b["client_id"].as_str().unwrap().len() >= 16);
    assert!(b.get("client_secret").is_none());
    assert_eq!(b["token_endpoint_auth_method"], "none");
    assert_eq!(
        b["redirect_uris"],
        json!(["http://127.0.0.1:33418/callback"])
    );
    assert_eq!(
        b["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(b["response_types"], json!(["code"]));
    assert_eq!(b["client_name"], "VS Code");
    assert_eq!(b["application_type"], "native");
}

#[tokio::test]
async fn dcr_confidential_clients_get_a_secret() {
    let env = TestEnv::new();
    for method in ["client_secret_basic", "client_secret_post"] {
        let r = env
            .post_json(
                "/register",
                json!({"redirect_uris": ["https://app.example.com/cb"], "token_endpoint_auth_method": method}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let b = r.json();
        assert_eq!(b["token_endpoint_auth_method"], method);
        assert!(b["client_secret"].as_str().unwrap().len() >= 32);
        assert_eq!(b["client_secret_expires_at"], 0);
    }
    // RFC 7591 default when omitted.
    let b = env
        .post_json(
            "/register",
            json!({"redirect_uris": ["https://app.example.com/cb"]}),
        )
        .await
        .json();
    assert_eq!(b["token_endpoint_auth_method"], "client_secret_basic");
    assert!(b["client_secret"].is_string());
    // Two registrations never share an id.
    let other = env.register_public("https://app.example.com/cb").await;
    assert_ne!(other, b["client_id"].as_str().unwrap());
}

#[tokio::test]
async fn dcr_rejects_bad_redirect_uris() {
    let env = TestEnv::new();
    for bad in [
        json!(["http://evil.example.com/cb"]),
        json!(["javascript:alert(1)"]),
        json!(["https://app.example.com/cb#frag"]),
        json!(["not a url"]),
        json!([]),
    ] {
        let r = env
            .post_json("/register", json!({"redirect_uris": bad}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "invalid_redirect_uri", "{bad}");
    }
    let r = env
        .post_json("/register", json!({"client_name": "no uris"}))
        .await;
    assert_eq!(r.json()["error"], "invalid_redirect_uri");
}

#[tokio::test]
async fn dcr_rejects_bad_metadata() {
    let env = TestEnv::new();
    for bad in [
        json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
        json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
        json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
        json!({"redirect_uris": "https://a.example/cb"}),
    ] {
        let r = env.post_json("/register", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "invalid_client_metadata", "{bad}");
    }
    let r = env
        .send(
            axum::http::Request::post("/register")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_client_metadata");
}

#[tokio::test]
async fn registered_client_can_authorize() {
    let env = TestEnv::new();
    let id = env.register_public("http://localhost:8765/cb").await;
    let r = env
        .get(&TestEnv::authorize_uri(
            &id,
            "http://localhost:8765/cb",
            &[],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Test Client"));
}

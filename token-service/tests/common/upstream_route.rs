//! A route `gh` whose server needs the user's account at an upstream provider, and the
//! filter's look-up of that account's token over the internal API.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{config_yaml, TestEnv, EMAIL};

/// The provider's client the gateway is (`demo-oauth-provider` with these settings).
pub const CLIENT_ID: &str = "warden-test";
pub const CLIENT_SECRET: &str = "warden-test-secret";

/// The usual test config plus a route `gh` whose server needs the user's account at
/// `provider` (tokens sealed by the vault).
pub fn upstream_yaml(dir: &std::path::Path, provider: &str) -> String {
    let route = format!(
        r#"  - name: gh
    from: http://127.0.0.1:9000
    prefix: /gh
    to: http://127.0.0.1:9300/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: {CLIENT_ID}
          client_secret: {CLIENT_SECRET}
          scopes: [repo]
          endpoint:
            auth_url: {provider}/authorize
            token_url: {provider}/token
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#
    );
    config_yaml(dir, &route, "ES256")
}

/// An upstream-token look-up for `EMAIL` on `gh`, signed with `credential` as the filter
/// signs it.
pub async fn lookup(env: &TestEnv, credential: &str) -> (StatusCode, Value) {
    let path = "/internal/v1/upstream-token";
    let body = json!({"sub": EMAIL, "route": "gh"}).to_string();
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::AUTHORIZATION,
            env.internal_authorization(credential, path, body.as_bytes()),
        )
        .body(Body::from(body))
        .unwrap();
    let resp = warden_token_service::internal::router(env.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

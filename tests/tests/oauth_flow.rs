//! The sign-in flow against the real token service without Envoy: a stand-in protected
//! resource on the Envoy port answers `401` + RFC 9728 metadata the way the filter does, so
//! the harness's `sign_in` (rmcp OAuth client + reqwest browser) and the token endpoint's
//! refresh rotation can be checked on their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::{
    http::{header::WWW_AUTHENTICATE, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use warden_e2e::{jwt, refresh_raw, RawResponse, Stack, StackOptions};

/// Serves, on the Envoy port: the route's protected resource metadata, and a Bearer challenge
/// for everything else.
async fn stand_in_resource(stack: &Stack) -> tokio::task::JoinHandle<()> {
    let prm = json!({
        "resource": stack.mcp_url(),
        "authorization_servers": [stack.issuer()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": [],
        "resource_name": "demo",
    });
    let challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        stack.resource_metadata_url()
    );
    let app =
        Router::new()
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(move || {
                    let prm = prm.clone();
                    async move { Json(prm) }
                }),
            )
            .fallback(move || {
                let challenge = challenge.clone();
                async move {
                    (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, challenge)]).into_response()
                }
            });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", stack.ports.envoy))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn stack_without_envoy() -> (Stack, tokio::task::JoinHandle<()>) {
    let stack = Stack::start_with(StackOptions {
        envoy: false,
        ..StackOptions::default()
    })
    .await;
    let server = stand_in_resource(&stack).await;
    (stack, server)
}

fn token_pair(resp: &RawResponse, what: &str) -> (String, String) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.body);
    let body: Value = serde_json::from_str(&resp.body).unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no refresh_token: {body}"))
            .to_owned(),
    )
}

#[tokio::test]
async fn sign_in_with_rmcp_oauth_client_yields_a_resource_bound_jwt() {
    let (stack, server) = stack_without_envoy().await;
    let signed = stack.sign_in().await;

    let header = jwt::decode_header(&signed.access_token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["kid"], stack.jwks().await["keys"][0]["kid"]);
    let claims = jwt::decode_claims(&signed.access_token);
    assert_eq!(claims["iss"], stack.issuer(), "{claims}");
    assert_eq!(claims["aud"], stack.mcp_url(), "{claims}");
    assert_eq!(claims["sub"], "demo@example.com", "{claims}");
    assert_eq!(claims["client_id"], signed.client_id, "{claims}");
    assert_eq!(signed.token_endpoint, stack.token_endpoint());
    assert!(signed.refresh_token.is_some());

    // The harness's minted tokens look like the real ones (same header, same claim names).
    let key = stack.signing_key().await;
    let minted = key.sign(&jwt::claims(
        &stack.issuer(),
        &stack.mcp_url(),
        jwt::now(),
        60,
    ));
    assert_eq!(jwt::decode_header(&minted), header);
    let minted_claims = jwt::decode_claims(&minted);
    let mut real_keys: Vec<&String> = claims.as_object().unwrap().keys().collect();
    let mut minted_keys: Vec<&String> = minted_claims.as_object().unwrap().keys().collect();
    real_keys.sort();
    minted_keys.sort();
    assert_eq!(minted_keys, real_keys);
    server.abort();
}

#[tokio::test]
async fn refresh_rotates_and_replay_is_invalid_grant() {
    let (stack, server) = stack_without_envoy().await;
    let signed = stack.sign_in().await;
    let first = signed.refresh_token.clone().unwrap();

    let (access, second) = token_pair(
        &refresh_raw(&signed.token_endpoint, &signed.client_id, &first).await,
        "refresh",
    );
    assert_ne!(first, second, "refresh tokens rotate");
    assert_eq!(jwt::decode_claims(&access)["aud"], stack.mcp_url());

    let replay = refresh_raw(&signed.token_endpoint, &signed.client_id, &first).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(
        serde_json::from_str::<Value>(&replay.body).unwrap()["error"],
        "invalid_grant"
    );
    server.abort();
}

#[tokio::test]
async fn grants_survive_a_token_service_restart() {
    let (mut stack, server) = stack_without_envoy().await;
    let signed = stack.sign_in().await;
    let kid = stack.jwks().await["keys"][0]["kid"].clone();
    stack.restart_token_service().await;
    assert_eq!(stack.jwks().await["keys"][0]["kid"], kid);
    let (access, _) = token_pair(
        &refresh_raw(
            &signed.token_endpoint,
            &signed.client_id,
            signed.refresh_token.as_deref().unwrap(),
        )
        .await,
        "refresh after restart",
    );
    assert_eq!(jwt::decode_claims(&access)["aud"], stack.mcp_url());
    server.abort();
}

//! The filter's key handling in a real Envoy: fail closed without a JWKS, recover when the token
//! service comes back, and refetch the JWKS when a token names a key it has not seen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::json;
use warden_e2e::{assert_bearer_challenge, mcp_post, RawResponse, Stack};

async fn tools_list(stack: &Stack, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    mcp_post(
        &stack.mcp_url(),
        &[("authorization", auth.as_str())],
        "tools/list",
        json!({}),
    )
    .await
}

async fn wait_envoy_ready(stack: &mut Stack) {
    let url = format!("http://127.0.0.1:{}/ready", stack.ports.envoy_admin);
    stack.envoy.as_mut().unwrap().wait_http_ok(&url).await;
}

#[tokio::test]
async fn no_jwks_fails_closed_then_recovers() {
    let mut stack = Stack::start().await;
    let signed = stack.sign_in().await;
    assert_eq!(tools_list(&stack, &signed.access_token).await.status, 200);

    // A fresh Envoy while the token service is down: it has no keys at all.
    stack.token_service.kill().await;
    stack.envoy.as_mut().unwrap().restart().await;
    wait_envoy_ready(&mut stack).await;
    stack.demo.clear_recorded().await;
    let resp = tools_list(&stack, &signed.access_token).await;
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.json()["error"], "temporarily_unavailable");
    assert!(resp.body.contains("JWKS"), "{}", resp.body);
    stack
        .demo
        .assert_nothing_recorded("request while no JWKS was available")
        .await;

    // The token service returns: the filter's periodic fetch picks the keys up by itself.
    stack.restart_token_service().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = tools_list(&stack, &signed.access_token).await;
        if resp.status == 200 {
            break;
        }
        assert_eq!(
            resp.status, 503,
            "only 503 until the keys arrive: {}",
            resp.body
        );
        assert!(Instant::now() < deadline, "filter never recovered its JWKS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rotated_key_is_fetched_on_unknown_kid() {
    let mut stack = Stack::start().await;
    let old = stack.sign_in().await;
    assert_eq!(tools_list(&stack, &old.access_token).await.status, 200);
    let old_kid = stack.jwks().await["keys"][0]["kid"].clone();

    // Replace the key outright (not a rotation: nothing is published ahead of it).
    stack.replace_signing_key().await;
    let new_kid = stack.jwks().await["keys"][0]["kid"].clone();
    assert_ne!(old_kid, new_kid, "the key was not rotated");

    // The filter still holds the old key set (its periodic refresh is minutes away); the new
    // token's unknown kid makes it refetch right away.
    let new = stack.sign_in().await;
    let resp = tools_list(&stack, &new.access_token).await;
    assert_eq!(resp.status, 200, "new key not fetched: {}", resp.body);

    // The old key is gone from the JWKS, so its tokens stop working (the cache was dropped).
    stack.demo.clear_recorded().await;
    let resp = tools_list(&stack, &old.access_token).await;
    assert_bearer_challenge(
        &resp,
        &stack.resource_metadata_url(),
        true,
        "token signed with a withdrawn key",
    );
    stack
        .demo
        .assert_nothing_recorded("token signed with a withdrawn key")
        .await;
}

//! RFC 9728 metadata and CORS, answered by the filter inside the real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use warden_e2e::{raw_request, Stack};

#[tokio::test]
async fn resource_metadata_in_both_forms() {
    let stack = Stack::start().await;
    let path_inserted = raw_request("GET", &stack.resource_metadata_url(), &[], None).await;
    assert_eq!(path_inserted.status, 200, "{}", path_inserted.body);
    let doc = path_inserted.json();
    // Byte-identical to the URL clients use: no trailing-slash drift.
    assert_eq!(doc["resource"].as_str(), Some(stack.mcp_url().as_str()));
    assert_eq!(
        doc["authorization_servers"][0].as_str(),
        Some(stack.issuer().as_str())
    );
    assert_eq!(doc["bearer_methods_supported"][0], "header");
    assert!(doc["scopes_supported"].is_array());
    assert_eq!(doc["resource_name"], "demo");
    // Root form: the only route on this host.
    let root = format!("{}/.well-known/oauth-protected-resource", stack.envoy_url());
    let root = raw_request("GET", &root, &[], None).await;
    assert_eq!(root.status, 200);
    assert_eq!(
        root.json()["resource"].as_str(),
        Some(stack.mcp_url().as_str())
    );
    // Unknown path under the well-known prefix: not answered as ours.
    let other = format!(
        "{}/.well-known/oauth-protected-resource/nope",
        stack.envoy_url()
    );
    assert_eq!(raw_request("GET", &other, &[], None).await.status, 404);
}

#[tokio::test]
async fn cors_preflight_and_origin_checks() {
    let stack = Stack::start().await;
    let own_origin = stack.envoy_url();
    let pre = raw_request(
        "OPTIONS",
        &stack.mcp_url(),
        &[
            ("origin", own_origin.as_str()),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, mcp-protocol-version",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some(own_origin.as_str())
    );
    let allowed = pre
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
        "mcp-method",
        "mcp-name",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    let exposed = pre
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("www-authenticate") && exposed.contains("mcp-session-id"));

    // A foreign origin (DNS rebinding, a hostile page) is refused before anything else.
    stack.demo.clear_recorded().await;
    let foreign = raw_request(
        "POST",
        &stack.mcp_url(),
        &[
            ("origin", "http://evil.example"),
            ("content-type", "application/json"),
        ],
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    )
    .await;
    assert_eq!(foreign.status, 403);
    stack.demo.assert_nothing_recorded("foreign origin").await;

    // The challenge of an allowed origin is readable by the browser client.
    let challenge = raw_request(
        "POST",
        &stack.mcp_url(),
        &[("origin", own_origin.as_str())],
        Some("{}"),
    )
    .await;
    assert_eq!(challenge.status, 401);
    assert!(challenge
        .header("access-control-expose-headers")
        .unwrap()
        .contains("WWW-Authenticate"));
}

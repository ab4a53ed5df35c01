//! The happy path through the gateway: OAuth sign-in with rmcp's OAuth client, then MCP in both
//! protocol eras through Envoy + the warden filter to the demo server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rmcp::model::ProtocolVersion;
use serde_json::{json, Value};
use warden_e2e::{
    call_tool_text, connect, http_client, jwt, recorded_header, recorded_rpc_method, tool_names,
    wait_recorded, whoami, ClientAuth, Era, Stack,
};

fn assert_no_credentials_upstream(recorded: &[Value], context: &str) {
    for r in recorded {
        assert!(
            recorded_header(r, "authorization").is_none(),
            "{context}: the client's token reached the upstream: {r}"
        );
    }
}

#[tokio::test]
async fn protected_resource_metadata_points_at_the_token_service() {
    let stack = Stack::start().await;
    let resp = http_client()
        .get(stack.resource_metadata_url())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let prm: Value = resp.json().await.unwrap();
    assert_eq!(prm["resource"], stack.mcp_url(), "{prm}");
    assert_eq!(
        prm["authorization_servers"],
        json!([stack.issuer()]),
        "{prm}"
    );
    assert_eq!(prm["bearer_methods_supported"], json!(["header"]), "{prm}");
    stack.demo.assert_nothing_recorded("metadata request").await;
}

#[tokio::test]
async fn sign_in_issues_a_jwt_for_this_resource() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;

    let header = jwt::decode_header(&signed.access_token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    let jwks = stack.jwks().await;
    assert_eq!(header["kid"], jwks["keys"][0]["kid"], "{header} vs {jwks}");

    let claims = jwt::decode_claims(&signed.access_token);
    assert_eq!(claims["iss"], stack.issuer(), "{claims}");
    assert_eq!(claims["aud"], stack.mcp_url(), "{claims}");
    assert_eq!(claims["sub"], "demo@example.com", "{claims}");
    assert_eq!(claims["email"], "demo@example.com", "{claims}");
    assert_eq!(claims["client_id"], signed.client_id, "{claims}");
    assert!(signed.refresh_token.is_some(), "a refresh token is issued");
    assert_eq!(signed.token_endpoint, stack.token_endpoint());
}

#[tokio::test]
async fn stateless_era_through_the_gateway() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    stack.demo.clear_recorded().await;

    let client = connect(
        &stack.mcp_url(),
        &Era::Stateless,
        ClientAuth::OAuth(signed.manager),
    )
    .await;
    let names = tool_names(&client).await;
    assert!(names.iter().any(|n| n == "whoami"), "{names:?}");
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "through envoy"})).await,
        "through envoy"
    );

    let me = whoami(&client).await;
    assert!(
        me["headers"].get("authorization").is_none(),
        "the bearer token must be stripped: {me}"
    );
    assert_eq!(
        me["headers"]["mcp-protocol-version"][0], "2026-07-28",
        "{me}"
    );
    assert_eq!(me["headers"]["mcp-method"][0], "tools/call", "{me}");
    assert_eq!(me["headers"]["mcp-name"][0], "whoami", "{me}");
    assert!(me["headers"].get("mcp-session-id").is_none(), "{me}");
    client.cancel().await.unwrap();

    let recorded = stack.demo.recorded().await;
    assert!(!recorded.is_empty());
    assert_no_credentials_upstream(&recorded, "stateless era");
    for r in &recorded {
        assert_eq!(r["method"], "POST", "{r}");
        assert!(recorded_header(r, "mcp-session-id").is_none(), "{r}");
    }
    let methods: Vec<String> = recorded.iter().filter_map(recorded_rpc_method).collect();
    assert!(
        methods.iter().any(|m| m == "server/discover"),
        "{methods:?}"
    );
    assert!(!methods.iter().any(|m| m == "initialize"), "{methods:?}");
}

#[tokio::test]
async fn handshake_era_through_the_gateway() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    stack.demo.clear_recorded().await;

    let client = connect(
        &stack.mcp_url(),
        &Era::handshake(),
        ClientAuth::OAuth(signed.manager),
    )
    .await;
    let names = tool_names(&client).await;
    assert!(names.iter().any(|n| n == "whoami"), "{names:?}");
    let me = whoami(&client).await;
    assert!(
        me["headers"].get("authorization").is_none(),
        "the bearer token must be stripped: {me}"
    );
    let session = me["headers"]["mcp-session-id"][0]
        .as_str()
        .unwrap_or_else(|| panic!("Mcp-Session-Id reaches upstream: {me}"))
        .to_owned();
    assert_eq!(
        me["headers"]["mcp-protocol-version"][0], "2025-11-25",
        "{me}"
    );

    wait_recorded(&stack.demo, "GET SSE stream through the gateway", |rec| {
        rec.iter().any(|r| {
            r["method"] == "GET" && recorded_header(r, "mcp-session-id") == Some(session.as_str())
        })
    })
    .await;

    client.cancel().await.unwrap();
    let recorded = wait_recorded(&stack.demo, "DELETE through the gateway", |rec| {
        rec.iter().any(|r| {
            r["method"] == "DELETE"
                && recorded_header(r, "mcp-session-id") == Some(session.as_str())
        })
    })
    .await;
    assert_no_credentials_upstream(&recorded, "handshake era");
    assert_eq!(
        recorded_rpc_method(&recorded[0]).as_deref(),
        Some("initialize")
    );
}

#[tokio::test]
async fn older_handshake_versions_through_the_gateway() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_03_26] {
        let era = Era::Handshake(version.clone());
        let client = connect(
            &stack.mcp_url(),
            &era,
            ClientAuth::Bearer(signed.access_token.clone()),
        )
        .await;
        assert_eq!(
            client
                .peer_info()
                .map(|i| i.protocol_version.to_string())
                .as_deref(),
            Some(version.to_string().as_str())
        );
        assert_eq!(
            call_tool_text(&client, "add", json!({"a": 20, "b": 22})).await,
            "42",
            "{era}"
        );
        let me = whoami(&client).await;
        assert!(me["headers"].get("authorization").is_none(), "{era}: {me}");
        client.cancel().await.unwrap();
    }
    assert_no_credentials_upstream(&stack.demo.recorded().await, "older versions");
}

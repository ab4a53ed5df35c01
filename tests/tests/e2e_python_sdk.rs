//! The official MCP Python SDK (`mcp` on PyPI) signs in through the gateway as an application
//! would: its `OAuthClientProvider` discovers the server, registers through DCR, runs the
//! authorization code flow with PKCE (the browser part played by the harness) and calls a tool
//! through the real Envoy and filter.

use serde_json::json;
use warden_e2e::python::{expect_result, result_text, SdkClient};
use warden_e2e::{redirect_uri, Stack};

#[tokio::test]
async fn the_python_sdk_signs_in_through_dcr_and_calls_a_tool() {
    let stack = Stack::start().await;
    let out = SdkClient::new(json!({
        "mode": "authorization_code",
        "server_url": stack.mcp_url(),
        "redirect_uri": redirect_uri(),
        "tool": "echo",
        "arguments": {"text": "from python"},
    }))
    .run()
    .await;
    let result = expect_result(&out);
    assert!(
        result_text(result).contains("from python"),
        "echo through the gateway: {result}"
    );
    assert!(out["tools"].as_array().unwrap().contains(&json!("echo")));
    // A DCR registration: the id the token service made, not a URL.
    let client_id = out["client_id"].as_str().unwrap();
    assert!(!client_id.starts_with("http"), "{client_id}");
    assert!(out["token"]["refresh_token"].is_string(), "{out}");
}

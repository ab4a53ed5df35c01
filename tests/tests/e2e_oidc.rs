//! Sign-in through the organisation's OpenID Connect provider (issue 9), end to end: the
//! in-repo OIDC provider as its own process, the token service as its relying party, real
//! Envoy with the filter, an rmcp client signing in the way MCP clients do, and a policy
//! that decides tools by the provider's groups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rmcp::model::CallToolRequestParams;
use serde_json::{json, Value};
use warden_e2e::{
    call_tool_text, connect, free_port, sign_in_as, ClientAuth, Era, OAuthProvider, Stack,
    StackOptions,
};

const CLIENT_ID: &str = "warden-sso";
const CLIENT_SECRET: &str = "warden-sso-secret";

/// Engineers may call whoami and echo; only admins may call add.
const POLICY_YAML: &str = "
allow:
  or:
    - mcp_method: {in: [initialize, notifications/initialized, tools/list, ping, server/discover]}
    - and: [{groups: {has: engineering}}, {mcp_tool: {in: [whoami, echo]}}]
    - and: [{groups: {has: admins}}, {domain: {is: example.com}}, {mcp_tool: {is: add}}]
";

struct Sso {
    provider: OAuthProvider,
    stack: Stack,
    _dir: tempfile::TempDir,
}

async fn start() -> Sso {
    let dir = tempfile::tempdir().unwrap();
    let provider = OAuthProvider::start(
        dir.path(),
        free_port(),
        &["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
    )
    .await;
    let issuer = provider.url();
    let policy: Value = serde_yaml::from_str(POLICY_YAML).unwrap();
    let stack = Stack::start_with(StackOptions {
        config_hook: Some(Box::new(move |config: &mut Value| {
            // Only the provider: no local users.
            config["identity_provider"] = json!({"oidc": {
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "display_name": "Example SSO",
            }});
            for route in config["routes"].as_array_mut().unwrap() {
                route["policy"] = policy.clone();
            }
        })),
        ..StackOptions::default()
    })
    .await;
    Sso {
        provider,
        stack,
        _dir: dir,
    }
}

async fn add_is_allowed(client: &warden_e2e::McpClient) -> bool {
    let params = CallToolRequestParams::new("add".to_owned())
        .with_arguments(json!({"a": 2, "b": 3}).as_object().unwrap().clone());
    client.call_tool(params).await.is_ok()
}

#[tokio::test]
async fn mcp_sign_in_through_the_provider_and_its_groups_decide_the_tools() {
    let sso = start().await;
    // The browser's login form is the provider's (alice at the provider, not a local user).
    let signed_in = sign_in_as(&sso.stack.mcp_url(), "alice", "alice-password").await;
    let era = Era::handshake();
    let client = connect(
        &sso.stack.mcp_url(),
        &era,
        ClientAuth::Bearer(signed_in.access_token.clone()),
    )
    .await;
    // Engineering (the provider's group) may call whoami.
    call_tool_text(&client, "whoami", json!({})).await;
    assert!(
        !add_is_allowed(&client).await,
        "alice is not in the provider's admins group yet"
    );
    client.cancel().await.ok();

    // The provider's directory changes; the next sign-in brings the new groups.
    sso.provider
        .hook_with(
            "claims",
            "user=alice",
            Some(json!({"email": "alice@example.com", "email_verified": true,
                        "name": "Alice Example", "groups": ["engineering", "admins"]})),
        )
        .await;
    let again = sign_in_as(&sso.stack.mcp_url(), "alice", "alice-password").await;
    let client = connect(
        &sso.stack.mcp_url(),
        &era,
        ClientAuth::Bearer(again.access_token.clone()),
    )
    .await;
    assert!(add_is_allowed(&client).await, "admins may call add");
    client.cancel().await.ok();

    // The authorize log names the user by the provider's issuer and subject.
    let log = sso.stack.envoy_log();
    let key = format!("{}#u-", sso.provider.url());
    assert!(log.contains(&key), "authorize log names {key}…:\n{log}");
}

//! Service clients (issue 20, client credentials) through real Envoy, the filter and the token
//! service: a configured client gets a TE with `grant_type=client_credentials`, calls a tool
//! on a route whose policy admits its group, is refused on a route that lets only users in
//! (`authenticated_user: true`), is named in the authorize log as a service client, and its
//! identity assertion names it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use warden_e2e::{
    call_tool_text, connect, http_client, raw_request, stateless_body, ClientAuth, Era, Stack,
    StackOptions,
};

pub const CLIENT_ID: &str = "nightly-report";
pub const CLIENT_SECRET: &str = "nightly-report-secret-0123456789";

/// The stack's `demo` route (`/mcp`, `authenticated_user: true`) and `reports` (`/reports`,
/// the `reporting` group, identity headers passed), and the service client `nightly-report`.
pub fn options() -> StackOptions {
    StackOptions {
        config_hook: Some(Box::new(|config: &mut Value| {
            let demo = config["routes"][0].clone();
            let mut reports = demo.clone();
            reports["name"] = json!("reports");
            reports["prefix"] = json!("/reports");
            reports["pass_identity_headers"] = json!(true);
            reports["policy"] = json!({"allow": {"and": [{"groups": {"has": "reporting"}}]}});
            config["routes"].as_array_mut().unwrap().push(reports);
            config["clients"] = json!([{
                "client_id": CLIENT_ID,
                "client_name": "Nightly report",
                "client_secret": CLIENT_SECRET,
                "grant_types": ["client_credentials"],
                "identity": {"email": "nightly-report@svc.example.com", "groups": ["reporting"]},
            }]);
        })),
        ..StackOptions::default()
    }
}

/// `POST /token` with `grant_type=client_credentials` for `resource`: the status and body.
async fn client_credentials(stack: &Stack, resource: &str) -> (u16, Value) {
    let resp = http_client()
        .post(stack.token_endpoint())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials"), ("resource", resource)])
        .send()
        .await
        .expect("POST /token");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("token JSON"))
}

/// The `wasm log mcp-warden: authorize {json}` line of `request_id`, waiting for it.
async fn authorize_line(stack: &Stack, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = stack
            .envoy_log()
            .lines()
            .filter_map(|l| l.split_once("mcp-warden: authorize ").map(|(_, j)| j))
            .filter_map(|j| serde_json::from_str::<Value>(j.trim()).ok())
            .find(|l| l["request-id"] == request_id);
        if let Some(line) = found {
            return line;
        }
        if Instant::now() > deadline {
            panic!(
                "no authorize line for {request_id}; Envoy log:\n{}",
                stack.envoy_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn a_service_client_calls_a_tool_where_its_group_is_admitted_and_not_where_only_users_are() {
    let stack = Stack::start_with(options()).await;
    let reports = stack.route_url("/reports");

    let (status, token) = client_credentials(&stack, &reports).await;
    assert_eq!(status, 200, "{token}");
    assert!(token.get("refresh_token").is_none(), "{token}");
    let te = token["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&te);
    assert_eq!(claims["sub"], "client:nightly-report");
    assert_eq!(claims["sub_kind"], "client");
    assert_eq!(claims["aud"], reports);

    // The official Rust SDK as the client, with the TE as its bearer: a tool call works, and
    // the server's identity assertion names the service client.
    let client = connect(&reports, &Era::Stateless, ClientAuth::Bearer(te.clone())).await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "report"})).await,
        "report"
    );
    let seen: Value =
        serde_json::from_str(&call_tool_text(&client, "whoami", json!({})).await).unwrap();
    let assertion = seen["headers"]["x-warden-jwt-assertion"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no identity assertion: {seen}"));
    let asserted = jwt_claims(assertion);
    assert_eq!(asserted["sub"], "client:nightly-report");
    assert_eq!(asserted["sub_kind"], "client");
    assert_eq!(asserted["email"], "nightly-report@svc.example.com");
    assert_eq!(asserted["groups"], json!(["reporting"]));
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the TE stays at the gateway: {seen}"
    );
    client.cancel().await.ok();

    // A call whose authorize line we can find: admitted, and named a service client.
    let request_id = "service-client-admitted";
    let resp = raw_request(
        "POST",
        &reports,
        &[
            ("authorization", &format!("Bearer {te}")),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("x-request-id", request_id),
        ],
        Some(
            &stateless_body(
                1,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "x"}}),
            )
            .to_string(),
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let line = authorize_line(&stack, request_id).await;
    assert_eq!(line["user"], "client:nightly-report");
    assert_eq!(line["client-id"], CLIENT_ID);
    assert_eq!(line["service-client"], true);
    assert_eq!(line["groups"], json!(["reporting"]));
    assert_eq!(line["allow"], true);

    // The `demo` route lets every signed-in *user* in: not the service client. Its TE for
    // that route is issued (the token service does not judge policies), and the filter
    // refuses every call with it, saying why in the log.
    let (status, token) = client_credentials(&stack, &stack.mcp_url()).await;
    assert_eq!(status, 200, "{token}");
    let te = token["access_token"].as_str().unwrap();
    let request_id = "service-client-refused";
    let resp = raw_request(
        "POST",
        &stack.mcp_url(),
        &[
            ("authorization", &format!("Bearer {te}")),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("x-request-id", request_id),
        ],
        Some(
            &stateless_body(
                1,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "x"}}),
            )
            .to_string(),
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    let line = authorize_line(&stack, request_id).await;
    assert_eq!(line["service-client"], true);
    assert_eq!(line["allow"], false);
    assert_eq!(line["allow-why-false"], json!(["user-service-client"]));
    // While a user's TE for the same route is let through.
    let user_te = stack.mint_token(&stack.mcp_url()).await;
    let client = connect(
        &stack.mcp_url(),
        &Era::Stateless,
        ClientAuth::Bearer(user_te),
    )
    .await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "u"})).await,
        "u"
    );
    client.cancel().await.ok();
}

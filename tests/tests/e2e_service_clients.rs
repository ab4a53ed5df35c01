//! Service clients (issue 20, client credentials) through real Envoy, the filter and the token
//! service: a configured client gets a TE with `grant_type=client_credentials`, calls a tool
//! on a route whose policy admits its group, is refused on a route that lets only users in
//! (`authenticated_user: true`), is named in the authorize log as a service client, and its
//! identity assertion names it. The official Python SDK's providers do the same unchanged:
//! `ClientCredentialsOAuthProvider` (a secret), `PrivateKeyJWTOAuthProvider` (a signed client
//! assertion) and `IdentityAssertionOAuthProvider` (an ID-JAG the demo identity provider
//! issues by token exchange).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use warden_e2e::python::{expect_result, result_text, SdkClient};
use warden_e2e::{
    call_tool_text, connect, free_port, http_client, raw_request, stateless_body, ClientAuth, Era,
    OAuthProvider, Stack, StackOptions, PROVIDER_CLIENT_ID, PROVIDER_CLIENT_SECRET,
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
    let resp = call_echo(&reports, &te, request_id).await;
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
    let resp = call_echo(&stack.mcp_url(), te, request_id).await;
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

/// The authorize lines of the service client so far.
fn service_client_lines(stack: &Stack) -> Vec<Value> {
    stack
        .envoy_log()
        .lines()
        .filter_map(|l| l.split_once("mcp-warden: authorize ").map(|(_, j)| j))
        .filter_map(|j| serde_json::from_str::<Value>(j.trim()).ok())
        .filter(|l| l["user"] == "client:nightly-report")
        .collect()
}

#[tokio::test]
async fn the_python_sdks_client_credentials_provider_calls_a_tool_where_its_group_is_admitted() {
    let stack = Stack::start_with(options()).await;
    let job = |server_url: String| {
        json!({
            "mode": "client_credentials",
            "server_url": server_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "issuer": stack.issuer(),
            "tool": "echo",
            "arguments": {"text": "from a service client"},
        })
    };
    let out = SdkClient::new(job(stack.route_url("/reports"))).run().await;
    let result = expect_result(&out);
    assert_eq!(result_text(result), "from a service client", "{out}");
    assert!(out["token"].get("refresh_token").is_none(), "{out}");
    let claims = jwt_claims(out["token"]["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "client:nightly-report");
    assert_eq!(claims["sub_kind"], "client");
    assert_eq!(claims["aud"], stack.route_url("/reports"));
    let lines = service_client_lines(&stack);
    assert!(
        lines
            .iter()
            .any(|l| l["service-client"] == true && l["mcp-tool"] == "echo" && l["allow"] == true),
        "the authorize log names the service client: {lines:?}"
    );

    // The stack's `demo` route lets only users in: the same client, unchanged, gets nowhere.
    let out = SdkClient::new(job(stack.mcp_url())).run().await;
    let error = out["error"].as_str().unwrap_or_else(|| panic!("{out}"));
    assert!(error.contains("policy denies initialize"), "{error}");
    let lines = service_client_lines(&stack);
    assert!(
        lines.iter().any(|l| l["route"] == "demo"
            && l["allow"] == false
            && l["allow-why-false"] == json!(["user-service-client"])),
        "{lines:?}"
    );
}

/// A P-256 test key of `assertion-bot` (never used outside these tests): the private key the
/// Python SDK signs its client assertions with, and its public JWK in the config.
const ASSERTION_BOT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxM+woa5yussGLWLu
XX6O88T6iFfGxBX5SMFMuCR1Cq6hRANCAAQefDKhPrZuMTGDRHmvQkXN4KYQgA8A
54T9uWbKk08GwMq2kAWvHo6q4T/Ku+hoYNLVfIbi9XnJUU7TDuS1ilaz
-----END PRIVATE KEY-----
";
const ASSERTION_BOT_X: &str = "HnwyoT62bjExg0R5r0JFzeCmEIAPAOeE_blmypNPBsA";
const ASSERTION_BOT_Y: &str = "yraQBa8ejqrhP8q76Ghg0tV8huL1eclRTtMO5LWKVrM";

#[tokio::test]
async fn the_python_sdks_private_key_jwt_provider_calls_a_tool() {
    let mut opts = options();
    let hook = opts.config_hook.take().unwrap();
    opts.config_hook = Some(Box::new(move |config: &mut Value| {
        hook(config);
        config["clients"].as_array_mut().unwrap().push(json!({
            "client_id": "assertion-bot",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bot-1",
                "x": ASSERTION_BOT_X, "y": ASSERTION_BOT_Y,
            }]},
            "grant_types": ["client_credentials"],
            "identity": {"email": "assertion-bot@svc.example.com", "groups": ["reporting"]},
        }));
    }));
    let stack = Stack::start_with(opts).await;
    let out = SdkClient::new(json!({
        "mode": "private_key_jwt",
        "server_url": stack.route_url("/reports"),
        "client_id": "assertion-bot",
        "signing_key": ASSERTION_BOT_KEY,
        "signing_algorithm": "ES256",
        "issuer": stack.issuer(),
        "tool": "echo",
        "arguments": {"text": "signed"},
    }))
    .run()
    .await;
    assert_eq!(result_text(expect_result(&out)), "signed", "{out}");
    let claims = jwt_claims(out["token"]["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "client:assertion-bot");
    assert_eq!(claims["sub_kind"], "client");
}

#[tokio::test]
async fn the_python_sdks_identity_assertion_provider_calls_a_tool_with_an_id_jag_from_the_idp() {
    let dir = tempfile::tempdir().unwrap();
    // The enterprise identity provider: it issues ID-JAGs naming the agent platform's client.
    let idp = OAuthProvider::start(
        dir.path(),
        free_port(),
        &["--id-jag-client-id", "agent-platform"],
    )
    .await;
    let idp_url = idp.url();
    let mut opts = options();
    let hook = opts.config_hook.take().unwrap();
    let issuer = idp_url.clone();
    opts.config_hook = Some(Box::new(move |config: &mut Value| {
        hook(config);
        config["authorization_server"]["identity_assertion_grant"] =
            json!({"issuers": [{"issuer": issuer}]});
        config["clients"].as_array_mut().unwrap().push(json!({
            "client_id": "agent-platform",
            "client_secret": "agent-platform-secret-0123456789",
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
        }));
    }));
    let stack = Stack::start_with(opts).await;
    // The user signed in at the identity provider (its ID token, without a browser).
    let id_token = idp.hook("issue-id-token", "user=alice").await["id_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = SdkClient::new(json!({
        "mode": "identity_assertion",
        "server_url": stack.mcp_url(),
        "client_id": "agent-platform",
        "client_secret": "agent-platform-secret-0123456789",
        "issuer": stack.issuer(),
        "idp": {
            "token_endpoint": format!("{idp_url}/token"),
            "client_id": PROVIDER_CLIENT_ID,
            "client_secret": PROVIDER_CLIENT_SECRET,
            "id_token": id_token,
        },
        "tool": "echo",
        "arguments": {"text": "enterprise"},
    }))
    .run()
    .await;
    assert_eq!(result_text(expect_result(&out)), "enterprise", "{out}");
    assert!(out["token"].get("refresh_token").is_none(), "{out}");
    let claims = jwt_claims(out["token"]["access_token"].as_str().unwrap());
    assert_eq!(
        claims["sub"],
        format!("{idp_url}#{}", demo_oauth_subject("alice"))
    );
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["client_id"], "agent-platform");
    assert!(claims.get("sub_kind").is_none(), "a user: {claims}");
}

/// The demo provider's OIDC `sub` of `username` (`demo_oauth_provider::oidc_subject`).
fn demo_oauth_subject(username: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(username.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("u-{hex}")
}

/// A stateless `tools/call` of `echo` with `te`, tagged `request_id` for its authorize line.
async fn call_echo(url: &str, te: &str, request_id: &str) -> warden_e2e::RawResponse {
    raw_request(
        "POST",
        url,
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
    .await
}

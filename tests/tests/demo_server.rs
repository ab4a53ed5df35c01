//! The demo MCP server on its own (no Envoy): both protocol eras with rmcp's client, and the
//! request recording the gateway tests rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rmcp::model::ProtocolVersion;
use serde_json::{json, Value};
use warden_e2e::{
    call_tool_text, connect, free_port, mcp_post, raw_request, recorded_header,
    recorded_rpc_method, tool_names, wait_recorded, whoami, ClientAuth, DemoServer, Era,
    OAuthProvider,
};

async fn start_demo() -> (tempfile::TempDir, DemoServer) {
    let dir = tempfile::Builder::new()
        .prefix("warden-demo-")
        .tempdir()
        .unwrap();
    let demo = DemoServer::start(dir.path(), free_port()).await;
    (dir, demo)
}

fn methods(recorded: &[Value]) -> Vec<String> {
    recorded.iter().filter_map(recorded_rpc_method).collect()
}

#[tokio::test]
async fn stateless_era_lists_and_calls_tools_without_a_session() {
    let (_dir, demo) = start_demo().await;
    let client = connect(&demo.mcp_url(), &Era::Stateless, ClientAuth::None).await;

    let names = tool_names(&client).await;
    for expected in ["whoami", "echo", "add", "get_time"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "hello warden"})).await,
        "hello warden"
    );
    assert_eq!(
        call_tool_text(&client, "add", json!({"a": 2, "b": 40})).await,
        "42"
    );

    let me = whoami(&client).await;
    assert_eq!(me["method"], "POST");
    assert_eq!(me["path"], "/mcp");
    assert_eq!(me["headers"]["mcp-protocol-version"][0], "2026-07-28");
    assert_eq!(me["headers"]["mcp-method"][0], "tools/call");
    assert_eq!(me["headers"]["mcp-name"][0], "whoami");
    assert!(me["headers"].get("mcp-session-id").is_none(), "{me}");
    assert!(me["headers"].get("authorization").is_none(), "{me}");

    client.cancel().await.unwrap();

    let recorded = demo.recorded().await;
    let methods = methods(&recorded);
    assert!(
        methods.iter().any(|m| m == "server/discover"),
        "{methods:?}"
    );
    assert!(methods.iter().any(|m| m == "tools/list"), "{methods:?}");
    assert!(!methods.iter().any(|m| m == "initialize"), "{methods:?}");
    for r in &recorded {
        assert_eq!(r["method"], "POST", "stateless era only POSTs: {r}");
        assert_eq!(r["path"], "/mcp");
        assert!(recorded_header(r, "mcp-session-id").is_none(), "{r}");
        assert_eq!(
            recorded_header(r, "mcp-protocol-version"),
            Some("2026-07-28")
        );
        assert_eq!(
            recorded_header(r, "mcp-method").map(str::to_owned),
            recorded_rpc_method(r),
            "Mcp-Method header agrees with the body: {r}"
        );
    }
    let echo = recorded
        .iter()
        .find(|r| recorded_header(r, "mcp-name") == Some("echo"))
        .expect("echo call recorded");
    assert!(
        echo["body"].as_str().unwrap().contains("hello warden"),
        "{echo}"
    );
}

#[tokio::test]
async fn handshake_era_uses_session_sse_stream_and_delete() {
    let (_dir, demo) = start_demo().await;
    let client = connect(&demo.mcp_url(), &Era::handshake(), ClientAuth::None).await;

    let names = tool_names(&client).await;
    assert!(names.iter().any(|n| n == "whoami"), "{names:?}");
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "legacy"})).await,
        "legacy"
    );
    let me = whoami(&client).await;
    let session = me["headers"]["mcp-session-id"][0]
        .as_str()
        .unwrap_or_else(|| panic!("handshake era sends Mcp-Session-Id: {me}"))
        .to_owned();
    assert_eq!(me["headers"]["mcp-protocol-version"][0], "2025-11-25");

    // rmcp opens the standalone GET SSE stream after `notifications/initialized`.
    wait_recorded(&demo, "GET SSE stream with the session id", |rec| {
        rec.iter().any(|r| {
            r["method"] == "GET" && recorded_header(r, "mcp-session-id") == Some(session.as_str())
        })
    })
    .await;

    client.cancel().await.unwrap();
    let recorded = wait_recorded(&demo, "DELETE of the session", |rec| {
        rec.iter().any(|r| {
            r["method"] == "DELETE"
                && recorded_header(r, "mcp-session-id") == Some(session.as_str())
        })
    })
    .await;

    let first = &recorded[0];
    assert_eq!(recorded_rpc_method(first).as_deref(), Some("initialize"));
    assert!(
        recorded_header(first, "mcp-session-id").is_none(),
        "{first}"
    );
    let methods = methods(&recorded);
    assert!(
        methods.iter().any(|m| m == "notifications/initialized"),
        "{methods:?}"
    );
    assert!(
        !methods.iter().any(|m| m == "server/discover"),
        "{methods:?}"
    );
    // Everything after initialize carries the session.
    for r in recorded.iter().skip(1) {
        assert_eq!(
            recorded_header(r, "mcp-session-id"),
            Some(session.as_str()),
            "{r}"
        );
    }
}

#[tokio::test]
async fn older_handshake_versions_are_served() {
    let (_dir, demo) = start_demo().await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_03_26] {
        let era = Era::Handshake(version.clone());
        let client = connect(&demo.mcp_url(), &era, ClientAuth::None).await;
        let negotiated = client
            .peer_info()
            .map(|info| info.protocol_version.to_string());
        assert_eq!(negotiated.as_deref(), Some(version.to_string().as_str()));
        assert_eq!(
            call_tool_text(&client, "echo", json!({"text": version.to_string()})).await,
            version.to_string()
        );
        let me = whoami(&client).await;
        assert!(me["headers"].get("mcp-session-id").is_some(), "{era}: {me}");
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn raw_stateless_request_is_answered_without_session_header() {
    let (_dir, demo) = start_demo().await;
    let resp = mcp_post(
        &demo.mcp_url(),
        &[],
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "raw"}}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.header("mcp-session-id").is_none());
    let msg = resp.json();
    assert_eq!(msg["result"]["content"][0]["text"], "raw", "{msg}");
}

#[tokio::test]
async fn recording_lists_requests_and_can_be_cleared() {
    let (_dir, demo) = start_demo().await;
    assert!(demo.recorded().await.is_empty());

    // Health checks and the recording endpoint itself are not recorded.
    let health = raw_request("GET", &format!("{}/healthz", demo.url()), &[], None).await;
    assert_eq!(health.status, 200);
    assert!(demo.recorded().await.is_empty());

    let resp = raw_request(
        "POST",
        &format!("{}?probe=1", demo.mcp_url()),
        &[
            ("content-type", "application/json"),
            ("x-probe", "one"),
            ("x-probe", "two"),
        ],
        Some(r#"{"not":"jsonrpc"}"#),
    )
    .await;
    assert!(resp.status >= 400, "junk POST is rejected: {}", resp.status);

    let recorded = demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let r = &recorded[0];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/mcp?probe=1");
    assert_eq!(r["headers"]["x-probe"], json!(["one", "two"]));
    assert_eq!(r["body"], r#"{"not":"jsonrpc"}"#);
    assert_eq!(r["body_truncated"], false);

    demo.clear_recorded().await;
    assert!(demo.recorded().await.is_empty());

    // Bodies are recorded up to 64 KiB.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100 * 1024));
    raw_request(
        "POST",
        &demo.mcp_url(),
        &[("content-type", "application/json")],
        Some(&big),
    )
    .await;
    let recorded = demo.recorded().await;
    assert_eq!(recorded[0]["body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(recorded[0]["body_len"], big.len());
    assert_eq!(recorded[0]["body_truncated"], true);
}

/// rmcp's plain `serve()` runs the `initialize` handshake even though `ClientConfig::default()`
/// names `2026-07-28` (rmcp's `LATEST`): the server answers the handshake with a legacy
/// version. Clients must opt into the stateless era with `ClientLifecycleMode::Discover`.
#[tokio::test]
async fn plain_rmcp_serve_uses_the_handshake() {
    use rmcp::model::ClientConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt as _;

    let (_dir, demo) = start_demo().await;
    assert_eq!(
        ClientConfig::default().protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    let client = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(demo.mcp_url()))
        .await
        .unwrap();
    let negotiated = client.peer_info().unwrap().protocol_version.clone();
    assert_eq!(negotiated, ProtocolVersion::V_2025_11_25);
    let me = whoami(&client).await;
    assert!(me["headers"].get("mcp-session-id").is_some(), "{me}");
    client.cancel().await.unwrap();
    let methods = methods(&demo.recorded().await);
    assert_eq!(methods.first().map(String::as_str), Some("initialize"));
}

/// `--require-bearer-introspect`: `/mcp` needs a token the demo OAuth provider calls active;
/// `--require-scope` adds a scope check. Introspection runs on every request (a revoked token
/// stops working at once).
#[tokio::test]
async fn bearer_checking_against_the_demo_oauth_provider() {
    let dir = tempfile::Builder::new()
        .prefix("warden-demo-bearer-")
        .tempdir()
        .unwrap();
    let provider = OAuthProvider::start(dir.path(), free_port(), &[]).await;
    let demo = DemoServer::start_with(
        dir.path(),
        free_port(),
        &["--require-bearer-introspect", &provider.introspect_url()],
    )
    .await;

    let invalid = |resp: &warden_e2e::RawResponse, context: &str| {
        assert_eq!(resp.status, 401, "{context}: {}", resp.body);
        assert_eq!(
            resp.header("www-authenticate").as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{context}"
        );
        let body: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["error"], "invalid_token", "{context}");
    };
    let resp = mcp_post(&demo.mcp_url(), &[], "tools/list", json!({})).await;
    invalid(&resp, "no token");
    let resp = mcp_post(
        &demo.mcp_url(),
        &[("authorization", "Bearer dat_junk")],
        "tools/list",
        json!({}),
    )
    .await;
    invalid(&resp, "unknown token");

    let tokens = provider.tokens("mcp:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let bearer = format!("Bearer {access}");
    let resp = mcp_post(
        &demo.mcp_url(),
        &[("authorization", &bearer)],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "good token: {}", resp.body);
    assert!(resp.body.contains("whoami"), "{}", resp.body);

    // A refresh token is not an access token.
    let resp = mcp_post(
        &demo.mcp_url(),
        &[("authorization", &format!("Bearer {refresh}"))],
        "tools/list",
        json!({}),
    )
    .await;
    invalid(&resp, "refresh token as bearer");

    // The open routes stay open; rejected requests were recorded too.
    let health = raw_request("GET", &format!("{}/healthz", demo.url()), &[], None).await;
    assert_eq!(health.status, 200);
    assert_eq!(demo.recorded().await.len(), 4);

    // Nothing is cached: revoking at the provider takes effect on the next request.
    provider.hook("revoke-user", "user=alice").await;
    let resp = mcp_post(
        &demo.mcp_url(),
        &[("authorization", &bearer)],
        "tools/list",
        json!({}),
    )
    .await;
    invalid(&resp, "revoked token");

    // --require-scope: a token without the scope gets 403, one with it gets through.
    let scoped_dir = dir.path().join("scoped");
    std::fs::create_dir(&scoped_dir).unwrap();
    let scoped = DemoServer::start_with(
        &scoped_dir,
        free_port(),
        &[
            "--require-bearer-introspect",
            &provider.introspect_url(),
            "--require-scope",
            "mcp:write",
        ],
    )
    .await;
    let read_only = provider.tokens("mcp:read").await;
    let resp = mcp_post(
        &scoped.mcp_url(),
        &[(
            "authorization",
            &format!("Bearer {}", read_only["access_token"].as_str().unwrap()),
        )],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 403, "missing scope: {}", resp.body);
    assert_eq!(
        resp.header("www-authenticate").as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"mcp:write\"")
    );
    let read_write = provider.tokens("mcp:read mcp:write").await;
    let resp = mcp_post(
        &scoped.mcp_url(),
        &[(
            "authorization",
            &format!("Bearer {}", read_write["access_token"].as_str().unwrap()),
        )],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "scope present: {}", resp.body);
}

/// The demo server as a remote MCP server with OAuth of its own (issue 21's upstream): RFC 9728
/// metadata, `resource_metadata` in every 401, audience-bound tokens from an HTTPS
/// authorization server, and an authorization server that rotates at runtime.
#[tokio::test]
async fn protected_resource_metadata_audience_and_a_rotating_authorization_server() {
    let dir = tempfile::Builder::new()
        .prefix("warden-demo-prm-")
        .tempdir()
        .unwrap();
    let cert = warden_e2e::tls::test_certificate(
        dir.path(),
        "provider",
        &["IP:127.0.0.1", "DNS:localhost"],
    );
    let demo_port = free_port();
    let resource = format!("http://127.0.0.1:{demo_port}/mcp");
    let provider = OAuthProvider::start_https(
        dir.path(),
        free_port(),
        &cert.cert,
        &cert.key,
        &["--dcr", "--resource", &resource],
    )
    .await;
    assert!(provider.url().starts_with("https://"), "{}", provider.url());
    let demo_dir = dir.path().join("demo");
    std::fs::create_dir(&demo_dir).unwrap();
    let demo = DemoServer::start_with(
        &demo_dir,
        demo_port,
        &[
            "--require-bearer-introspect",
            &provider.introspect_url(),
            "--introspect-ca",
            cert.ca.to_str().unwrap(),
            "--resource-metadata-issuer",
            &provider.url(),
            "--metadata-max-age",
            "60",
            "--require-audience",
            "--require-scope",
            "mcp:read",
        ],
    )
    .await;
    let metadata_url = demo.resource_metadata_url();
    assert_eq!(
        metadata_url,
        format!("http://127.0.0.1:{demo_port}/.well-known/oauth-protected-resource/mcp")
    );

    let metadata = raw_request("GET", &metadata_url, &[], None).await;
    assert_eq!(metadata.status, 200, "{}", metadata.body);
    assert_eq!(
        metadata.header("cache-control").as_deref(),
        Some("max-age=60")
    );
    assert_eq!(
        metadata.json(),
        json!({
            "resource": resource,
            "authorization_servers": [provider.url()],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["mcp:read"],
        })
    );

    // No credentials: where to go, no error. Bad credentials: the error and where to go.
    let resp = mcp_post(&demo.mcp_url(), &[], "tools/list", json!({})).await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{metadata_url}\""))
    );
    let challenge_of_invalid =
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata_url}\"");
    let call = |token: String| {
        let url = demo.mcp_url();
        async move {
            mcp_post(
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                "tools/list",
                json!({}),
            )
            .await
        }
    };
    let resp = call("dat_junk".into()).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(challenge_of_invalid.clone())
    );

    // A token for this resource, introspected over HTTPS with the test CA, gets through.
    let tokens = provider.tokens_for("mcp:read", Some(&resource)).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let resp = call(access.clone()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let stats = provider.stats().await;
    assert_eq!(stats["last_token_resource"], resource.as_str(), "{stats}");

    // The upstream rotates its authorization server: the metadata names the new one, and the
    // old one's tokens mean nothing any more.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let second = OAuthProvider::start(&second_dir, free_port(), &[]).await;
    let switched = demo
        .set_authorization_server(&second.url(), &second.introspect_url())
        .await;
    assert_eq!(switched["issuer"], second.url().as_str());
    assert_eq!(switched["introspect"], second.introspect_url().as_str());
    let metadata = raw_request("GET", &metadata_url, &[], None).await;
    assert_eq!(
        metadata.json()["authorization_servers"],
        json!([second.url()])
    );
    let resp = call(access).await;
    assert_eq!(resp.status, 401, "the old AS's token: {}", resp.body);
    // --require-audience: a token without `aud` for this resource is refused.
    let unbound = second.tokens("mcp:read").await;
    let resp = call(unbound["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(resp.status, 401, "no audience: {}", resp.body);
    assert_eq!(resp.header("www-authenticate"), Some(challenge_of_invalid));
    let bound = second.tokens_for("mcp:read", Some(&resource)).await;
    let resp = call(bound["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // Too little scope: 403, naming the metadata too.
    let narrow = second.tokens_for("other", Some(&resource)).await;
    let resp = call(narrow["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:read\", resource_metadata=\"{metadata_url}\""
        ))
    );

    // Without --resource-metadata-issuer there is no metadata and no hook.
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    let plain = DemoServer::start_with(
        &plain_dir,
        free_port(),
        &["--require-bearer-introspect", &second.introspect_url()],
    )
    .await;
    let resp = raw_request("GET", &plain.resource_metadata_url(), &[], None).await;
    assert_eq!(resp.status, 404);
    let resp = raw_request(
        "POST",
        &format!("{}/_test/authorization-server?issuer=x", plain.url()),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 404);
}

//! The ways around the gateway that an attack found (issue 6), closed and proved through real
//! Envoy: only inspected bodies reach the upstream (HTTP methods), names a lenient server reads
//! alike are refused, MCP sessions belong to their user, the unknown-`kid` refetch bound holds
//! under a flood, `crit` headers are refused, and the rendered bootstrap cuts slow and idle
//! clients and caps connections while long MCP streams keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use warden_e2e::jwt;
use warden_e2e::{
    assert_bearer_challenge, envoy_outcome, free_port, mcp_post, raw_request, render_envoy,
    spawn_envoy_with, stateless_body, write_yaml, EnvoyOutcome, ExtraRoute, RawResponse, Stack,
    StackOptions,
};

const DENY_ADD: &str = "
- allow: {and: [{authenticated_user: true}]}
- deny: {or: [{mcp_tool: {starts_with: ad}}]}
";

fn deny_add_options() -> StackOptions {
    StackOptions {
        config_hook: Some(Box::new(|config: &mut Value| {
            for route in config["routes"].as_array_mut().unwrap() {
                route["policy"] = serde_yaml::from_str(DENY_ADD).unwrap();
            }
        })),
        ..StackOptions::default()
    }
}

/// A `tools/call` of `echo` on the demo route, with `auth` as the `Authorization` value.
async fn call_echo(stack: &Stack, auth: &str) -> RawResponse {
    mcp_post(
        &stack.mcp_url(),
        &[("authorization", auth)],
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    )
    .await
}

/// A handshake-era JSON-RPC call of `add` (no routing headers needed).
fn add_call(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}).to_string()
}

struct Http1 {
    status: u16,
    head: String,
    body: String,
}

/// Writes `request` on a fresh connection to Envoy and reads the response until EOF.
async fn http1(port: u16, request: &[u8]) -> Http1 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    Http1 {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn jsonrpc_code(body: &str) -> Value {
    let v: Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["code"].clone()
}

// =============================================================================================
// 1. Only inspected bodies go upstream
// =============================================================================================

#[tokio::test]
async fn bodies_reach_the_upstream_only_on_post() {
    let stack = Stack::start_with(deny_add_options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    // Methods Envoy's codec does not know (or spells differently) never get this far.
    for method in ["FOO", "post", "Get"] {
        stack.demo.clear_recorded().await;
        let resp = raw_request(method, &stack.mcp_url(), &headers, Some(&add_call(1))).await;
        assert!(
            matches!(resp.status, 400 | 405),
            "{method}: {}",
            resp.status
        );
        stack.demo.assert_nothing_recorded(method).await;
    }
    // A denied call in a body under every other method: 405 with Allow, nothing upstream.
    for method in [
        "PUT",
        "PATCH",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "LOCK",
        "TRACE",
    ] {
        stack.demo.clear_recorded().await;
        let resp = raw_request(method, &stack.mcp_url(), &headers, Some(&add_call(1))).await;
        assert_eq!(resp.status, 405, "{method}: {}", resp.body);
        assert_eq!(
            resp.header("allow").as_deref(),
            Some("GET, POST, DELETE, OPTIONS"),
            "{method}"
        );
        assert_eq!(jsonrpc_code(&resp.body), json!(-32600), "{method}");
        stack.demo.assert_nothing_recorded(method).await;
    }
    let resp = raw_request("HEAD", &stack.mcp_url(), &headers, None).await;
    assert_eq!(resp.status, 405, "HEAD");
    // A plain OPTIONS is answered by the gateway.
    let resp = raw_request("OPTIONS", &stack.mcp_url(), &headers, Some(&add_call(1))).await;
    assert_eq!(
        (resp.status, resp.header("allow").as_deref()),
        (204, Some("GET, POST, DELETE, OPTIONS"))
    );
    stack.demo.assert_nothing_recorded("OPTIONS").await;

    // GET and DELETE with a body, announced by Content-Length or chunked: 400, nothing upstream.
    let port = stack.ports.envoy;
    let body = add_call(2);
    for method in ["GET", "DELETE"] {
        let with_length = format!(
            "{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let chunked = format!(
            "{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        for (what, request) in [("content-length", with_length), ("chunked", chunked)] {
            stack.demo.clear_recorded().await;
            let resp = http1(port, request.as_bytes()).await;
            assert_eq!(resp.status, 400, "{method} {what}: {}", resp.head);
            assert_eq!(jsonrpc_code(&resp.body), json!(-32600), "{method} {what}");
            stack
                .demo
                .assert_nothing_recorded(&format!("{method} with a {what} body"))
                .await;
        }
    }
    // Without a body they still reach the server (the handshake era's stream and session end;
    // without a session the server itself refuses them).
    for method in ["GET", "DELETE"] {
        stack.demo.clear_recorded().await;
        let request = format!(
            "{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nAccept: text/event-stream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let resp = http1(port, request.as_bytes()).await;
        assert!(
            !resp.body.contains("carry no body"),
            "{method}: {}",
            resp.body
        );
        assert_eq!(
            stack.demo.recorded().await.len(),
            1,
            "bodiless {method} forwarded"
        );
    }
    // The denied call itself, POSTed, is judged as before.
    let resp = raw_request("POST", &stack.mcp_url(), &headers, Some(&add_call(3))).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
}

/// Runs curl over HTTP/2 (prior knowledge) and returns (status, body).
async fn curl_h2(args: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .await
        .expect("curl (needed for HTTP/2 requests) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn http2_bodies_that_no_header_announces_are_refused_on_get_and_delete() {
    let stack = Stack::start_with(deny_add_options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("authorization: Bearer {token}");
    let url = stack.mcp_url();
    let body = add_call(1);
    for method in ["GET", "DELETE"] {
        stack.demo.clear_recorded().await;
        // HEADERS without END_STREAM and without Content-Length, then a DATA frame.
        let (status, answer) = curl_h2(&[
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "Content-Length:",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
            &url,
        ])
        .await;
        assert_eq!(status, 400, "{method} over HTTP/2 with a body: {answer}");
        assert_eq!(jsonrpc_code(&answer), json!(-32600));
        stack
            .demo
            .assert_nothing_recorded(&format!("HTTP/2 {method} with a body"))
            .await;
    }
    // HTTP/2 itself is served: a POST is judged as over HTTP/1.
    let (status, answer) = curl_h2(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "--data-binary",
        &body,
        &url,
    ])
    .await;
    assert_eq!(status, 403, "{answer}");
}

// =============================================================================================
// 2. Names a lenient server would read as other names
// =============================================================================================

#[tokio::test]
async fn look_alike_methods_tool_names_and_argument_keys_are_refused() {
    let stack = Stack::start_with(deny_add_options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let call = |method: &str, name: &str| {
        json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": {"name": name, "arguments": {"a": 1, "b": 2}}})
            .to_string()
    };
    let cases = [
        call("tools/call ", "add"),
        call(" tools/call", "add"),
        call("tools/call\t", "add"),
        call("tools/call\u{0}", "add"),
        call("tools/call\u{200b}", "add"),
        call("\u{feff}tools/call", "add"),
        call("tools/call\u{a0}", "add"),
        call("Tools/Call", "add"),
        call("TOOLS/CALL", "add"),
        call("tools/call", " add"),
        call("tools/call", "add "),
        call("tools/call", "add\n"),
        call("tools/call", "add\u{0}"),
        call("tools/call", "ad\u{200b}d"),
        call("tools/call", "ad d"),
        call("tools/call", "Add"),
        call("tools/call", "ADD"),
    ];
    for body in cases {
        stack.demo.clear_recorded().await;
        let resp = raw_request("POST", &stack.mcp_url(), &headers, Some(&body)).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.body);
        assert_eq!(jsonrpc_code(&resp.body), json!(-32600), "{body}");
        stack.demo.assert_nothing_recorded(&body).await;
    }
    // Keys a lenient (case-insensitive, last-wins) JSON reader takes for the ones judged.
    for body in [
        r#"{"jsonrpc":"2.0","id":6,"method":"ping","Method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","Name":"add","arguments":{"text":"x"}}}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"Arguments":{"text":"y"}}}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"ping","params ":{"name":"add"}}"#,
    ] {
        stack.demo.clear_recorded().await;
        let resp = raw_request("POST", &stack.mcp_url(), &headers, Some(body)).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.body);
        stack.demo.assert_nothing_recorded(body).await;
    }
    // The exact name is denied by the policy, and an allowed tool still works.
    let resp = raw_request(
        "POST",
        &stack.mcp_url(),
        &headers,
        Some(&call("tools/call", "add")),
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    let resp = call_echo(&stack, &auth).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

// =============================================================================================
// 3. Sessions belong to their user
// =============================================================================================

/// A handshake-era POST with `session` (and the protocol version header once initialized).
async fn handshake(url: &str, token: &str, session: Option<&str>, body: Value) -> RawResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
        headers.push(("mcp-protocol-version", "2025-06-18"));
    }
    raw_request("POST", url, &headers, Some(&body.to_string())).await
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "warden-e2e", "version": "0.1.0"}}})
}

/// Opens a handshake-era session for `token` and returns the id the client was given.
async fn open_session(url: &str, token: &str) -> String {
    let resp = handshake(url, token, None, initialize()).await;
    assert_eq!(resp.status, 200, "initialize: {}", resp.body);
    let session = resp
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id: {:?}", resp.headers));
    let resp = handshake(
        url,
        token,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(resp.status, 202, "initialized: {}", resp.body);
    session
}

fn whoami_call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})
}

/// The headers the demo server saw for a `whoami` answered in `resp` (SSE or JSON).
fn whoami_headers(resp: &RawResponse) -> Value {
    let message: Value = resp
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m.get("result").is_some())
        .unwrap_or_else(|| resp.json());
    let text = message["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no whoami text: {message}"));
    serde_json::from_str::<Value>(text).unwrap()["headers"].clone()
}

fn other_user_token(key: &jwt::TestKey, issuer: &str, audience: &str) -> String {
    let mut claims = jwt::claims(issuer, audience, jwt::now(), 300);
    claims["sub"] = json!("mallory@example.com");
    claims["email"] = json!("mallory@example.com");
    key.sign(&claims)
}

#[tokio::test]
async fn a_session_is_usable_only_by_the_user_who_opened_it() {
    let stack = Stack::start_with(StackOptions {
        extra_routes: vec![ExtraRoute {
            name: "other".into(),
            prefix: "/other".into(),
        }],
        ..StackOptions::default()
    })
    .await;
    let url = stack.mcp_url();
    let owner = stack.mint_token(&url).await;
    let key = stack.signing_key().await;
    let mallory = other_user_token(&key, &stack.issuer(), &url);

    let session = open_session(&url, &owner).await;
    assert!(
        session.starts_with("w1."),
        "the client gets a wrapped id: {session}"
    );
    // The upstream sees its own id, never the wrapped one.
    let resp = handshake(&url, &owner, Some(&session), whoami_call(2)).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let upstream_id = whoami_headers(&resp)["mcp-session-id"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(upstream_id, session);

    // Another user with the owner's session id, the raw upstream id, or a forged one: 404 for
    // calls and DELETE alike, and nothing reaches the upstream.
    let last = if session.ends_with('A') { "B" } else { "A" };
    let forged = format!("{}{last}", &session[..session.len() - 1]);
    for (who, token, id) in [
        ("another user, wrapped id", &mallory, session.as_str()),
        ("another user, raw id", &mallory, upstream_id.as_str()),
        ("the owner, raw id", &owner, upstream_id.as_str()),
        ("the owner, forged id", &owner, forged.as_str()),
    ] {
        stack.demo.clear_recorded().await;
        let resp = handshake(&url, token, Some(id), whoami_call(3)).await;
        assert_eq!(resp.status, 404, "{who}: {}", resp.body);
        assert_eq!(jsonrpc_code(&resp.body), json!(-32001), "{who}");
        let auth = format!("Bearer {token}");
        let resp = raw_request(
            "DELETE",
            &url,
            &[("authorization", auth.as_str()), ("mcp-session-id", id)],
            None,
        )
        .await;
        assert_eq!(resp.status, 404, "{who} DELETE: {}", resp.body);
        let resp = raw_request(
            "GET",
            &url,
            &[
                ("authorization", auth.as_str()),
                ("mcp-session-id", id),
                ("accept", "text/event-stream"),
            ],
            None,
        )
        .await;
        assert_eq!(resp.status, 404, "{who} GET stream: {}", resp.body);
        stack.demo.assert_nothing_recorded(who).await;
    }
    // The same id on another route is not that route's session either.
    let other_url = stack.route_url("/other");
    let other_token = stack.mint_token(&other_url).await;
    let resp = handshake(&other_url, &other_token, Some(&session), whoami_call(4)).await;
    assert_eq!(resp.status, 404, "{}", resp.body);

    // Two session headers, or one disguised with underscores: refused outright.
    let auth = format!("Bearer {owner}");
    let resp = raw_request(
        "POST",
        &url,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", &session),
            ("mcp-session-id", &session),
        ],
        Some(&whoami_call(5).to_string()),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    let resp = raw_request(
        "POST",
        &url,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp_session_id", &upstream_id),
        ],
        Some(&whoami_call(6).to_string()),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);

    // A session id in the query (the 2024-11-05 HTTP+SSE transport) cannot be bound: refused.
    stack.demo.clear_recorded().await;
    let resp = raw_request(
        "POST",
        &format!("{url}/messages?sessionId={upstream_id}"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(&whoami_call(8).to_string()),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    stack
        .demo
        .assert_nothing_recorded("sessionId in the query")
        .await;

    // The owner's session survived all of it, and the owner can end it.
    let resp = handshake(&url, &owner, Some(&session), whoami_call(7)).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = raw_request(
        "DELETE",
        &url,
        &[
            ("authorization", auth.as_str()),
            ("mcp-session-id", &session),
        ],
        None,
    )
    .await;
    assert!(
        resp.status < 300,
        "owner's DELETE: {} {}",
        resp.status,
        resp.body
    );
}

/// Starts another Envoy from the stack's config on fresh ports; requests reach it with the
/// stack's `Host` so the same routes (and token audiences) apply.
async fn another_envoy(stack: &Stack, name: &str, env: &[(&str, &str)]) -> (warden_e2e::Proc, u16) {
    let (listen, admin) = (free_port(), free_port());
    let mut config = stack.config.clone();
    config["envoy"]["listen"] = json!(format!("127.0.0.1:{listen}"));
    config["envoy"]["admin"] = json!(format!("127.0.0.1:{admin}"));
    let config_path = stack.dir.path().join(format!("{name}.yaml"));
    write_yaml(&config_path, &config);
    let bootstrap = stack.dir.path().join(format!("{name}-envoy.yaml"));
    render_envoy(&config_path, &warden_e2e::Binaries::wasm(), &bootstrap).await;
    // Every Envoy polls the revocation feed: it signs with the internal credential.
    let credential = warden_e2e::internal_credential(stack.dir.path()).expect("credential");
    let mut env = env.to_vec();
    env.push((warden_e2e::INTERNAL_CREDENTIAL_ENV, &credential));
    let mut envoy = spawn_envoy_with(stack.dir.path(), name, &bootstrap, admin, 2, &env);
    match envoy_outcome(&mut envoy, admin, Duration::from_secs(60)).await {
        EnvoyOutcome::Ready => {}
        other => envoy.fail(&format!("did not become ready: {other:?}")),
    }
    (envoy, listen)
}

#[tokio::test]
async fn replicas_sharing_the_session_key_share_sessions_others_do_not() {
    let secret = "e2e session key shared by every replica, 48 bytes!";
    let stack = Stack::start_with(StackOptions {
        envoy_env: vec![("MCP_WARDEN_SESSION_KEY".into(), secret.into())],
        ..StackOptions::default()
    })
    .await;
    let url = stack.mcp_url();
    let owner = stack.mint_token(&url).await;
    let session = open_session(&url, &owner).await;

    let host = format!("127.0.0.1:{}", stack.ports.envoy);
    let call_via = |port: u16| {
        let (owner, session, host) = (owner.clone(), session.clone(), host.clone());
        async move {
            let auth = format!("Bearer {owner}");
            raw_request(
                "POST",
                &format!("http://127.0.0.1:{port}/mcp"),
                &[
                    ("host", host.as_str()),
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream"),
                    ("mcp-session-id", session.as_str()),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
                Some(&whoami_call(9).to_string()),
            )
            .await
        }
    };
    let (_same_key, same_port) = another_envoy(
        &stack,
        "envoy-same-key",
        &[("MCP_WARDEN_SESSION_KEY", secret)],
    )
    .await;
    // Several calls: the connections land on both of its workers.
    for _ in 0..4 {
        let resp = call_via(same_port).await;
        assert_eq!(resp.status, 200, "replica with the same key: {}", resp.body);
    }
    let (_own_key, own_port) = another_envoy(&stack, "envoy-own-key", &[]).await;
    let resp = call_via(own_port).await;
    assert_eq!(resp.status, 404, "replica with its own key: {}", resp.body);
}

// =============================================================================================
// 4. The unknown-kid refetch bound holds under a flood
// =============================================================================================

async fn token_service_requests(stack: &Stack) -> u64 {
    stack
        .envoy_stats("cluster.warden_token_service.upstream_rq_total")
        .await
        .into_values()
        .sum()
}

/// An unsigned, worthless token naming a random `kid`, with claims that pass every check
/// but the signature (`issuer`, `audience`, times) when `plausible`.
fn junk_token(n: u64, issuer: &str, audience: &str, plausible: bool) -> String {
    let header =
        json!({"alg": "ES256", "kid": format!("junk-{n}-{}", jwt::now()), "typ": "at+jwt"});
    let claims = if plausible {
        jwt::claims(issuer, audience, jwt::now(), 300)
    } else {
        json!({"sub": "x", "exp": jwt::now() + 300})
    };
    format!(
        "{}.{}.{}",
        jwt::b64(header.to_string()),
        jwt::b64(claims.to_string()),
        jwt::b64([7u8; 64])
    )
}

/// A `tools/list` on route `demo` with `token`; returns the HTTP status.
async fn list_status(url: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    mcp_post(url, &[("authorization", &auth)], "tools/list", json!({}))
        .await
        .status
}

/// Starts a stack on two Envoy workers where both already verified `token`.
async fn two_workers_warm() -> (Stack, String) {
    let stack = Stack::start_with(StackOptions {
        envoy_workers: 2,
        ..StackOptions::default()
    })
    .await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    // Each request opens its own connection, so they spread over the workers.
    for _ in 0..4 {
        assert_eq!(list_status(&stack.mcp_url(), &token).await, 200);
    }
    (stack, token)
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_five_seconds_per_worker() {
    const WORKERS: u64 = 2;
    const FLOOD_SECONDS: u64 = 12;
    let (stack, good) = two_workers_warm().await;
    // Every start-up fetch is done before counting: one per worker, and the main thread's
    // root context may add one at its first tick (a second later; CI saw it). Counting
    // starts once the count has stood still for two ticks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut seen, mut still_since) = (0, Instant::now());
    loop {
        let now_seen = token_service_requests(&stack).await;
        if now_seen != seen {
            (seen, still_since) = (now_seen, Instant::now());
        }
        if seen >= WORKERS && still_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the JWKS fetches at start never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Junk that fails a cheap check (no issuer) never fetches: the `kid` is looked up last.
    let before = token_service_requests(&stack).await;
    for n in 0..200 {
        let junk = junk_token(n, "", "", false);
        assert_eq!(list_status(&stack.mcp_url(), &junk).await, 401);
    }
    assert_eq!(
        token_service_requests(&stack).await,
        before,
        "implausible junk fetched"
    );

    let before = token_service_requests(&stack).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let url = stack.mcp_url();
        let issuer = stack.issuer();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut refused = 0u64;
            while started.elapsed() < Duration::from_secs(FLOOD_SECONDS) {
                n += 1;
                let junk = junk_token(t * 1_000_000 + n, &issuer, &url, true);
                let status = list_status(&url, &junk).await;
                assert_eq!(status, 401, "junk token");
                refused += 1;
            }
            refused
        }));
    }
    // A good token keeps working during the flood.
    assert_eq!(list_status(&stack.mcp_url(), &good).await, 200);
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    let fetches = token_service_requests(&stack).await - before;
    // The bound follows the flood's real length (its last requests may end after
    // FLOOD_SECONDS on a loaded machine): a fetch per whole-second window of 5 s, per worker,
    // plus one: on a loaded machine a start-up fetch (Envoy's main thread has a VM of its own)
    // can land after `before` was read. Without the limit the flood would fetch thousands.
    let flood_secs = started.elapsed().as_secs() + 1;
    let bound = WORKERS * ((flood_secs + 1) / 5 + 1) + 1;
    assert!(
        refused > 100,
        "the flood was too small to mean anything: {refused}"
    );
    assert!(
        (1..=bound).contains(&fetches),
        "{fetches} JWKS fetches for {refused} junk tokens in {flood_secs} s (bound {bound})"
    );
}

#[tokio::test]
async fn requests_waiting_for_a_new_key_share_one_fetch() {
    let (mut stack, _) = two_workers_warm().await;
    // A key no filter has seen (replaced outright, not rotated: nothing published ahead).
    stack.replace_signing_key().await;
    let new = stack.mint_token(&stack.mcp_url()).await;
    let before = token_service_requests(&stack).await;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (url, new) = (stack.mcp_url(), new.clone());
        tasks.push(tokio::spawn(async move { list_status(&url, &new).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "a request with the new key");
    }
    let fetches = token_service_requests(&stack).await - before;
    assert!(
        (1..=2).contains(&fetches),
        "24 requests with a new kid on 2 workers made {fetches} fetches"
    );
}

// =============================================================================================
// 5. crit
// =============================================================================================

#[tokio::test]
async fn a_token_with_a_crit_header_is_refused() {
    let stack = Stack::start().await;
    let key = stack.signing_key().await;
    let claims = jwt::claims(&stack.issuer(), &stack.mcp_url(), jwt::now(), 300);
    for crit in [json!(["exp"]), json!(["b64"]), json!([])] {
        let mut header = key.header();
        header["crit"] = crit.clone();
        header["exp"] = json!(jwt::now() + 300);
        let token = key.sign_with_header(&header, &claims);
        stack.demo.clear_recorded().await;
        let resp = mcp_post(
            &stack.mcp_url(),
            &[("authorization", &format!("Bearer {token}"))],
            "tools/list",
            json!({}),
        )
        .await;
        assert_bearer_challenge(
            &resp,
            &stack.resource_metadata_url(),
            true,
            &format!("crit {crit}"),
        );
        stack.demo.assert_nothing_recorded("crit token").await;
    }
    // The same claims and key without crit pass.
    let resp = mcp_post(
        &stack.mcp_url(),
        &[("authorization", &format!("Bearer {}", key.sign(&claims)))],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

// =============================================================================================
// 6. The bootstrap protects itself; long streams keep working
// =============================================================================================

const HEADERS_TIMEOUT: u64 = 2;
const REQUEST_TIMEOUT: u64 = 4;
const IDLE_TIMEOUT: u64 = 3;
const MAX_CONNECTIONS: usize = 20;

fn limited_options() -> StackOptions {
    StackOptions {
        extra_routes: vec![ExtraRoute {
            name: "silent".into(),
            prefix: "/silent".into(),
        }],
        config_hook: Some(Box::new(|config: &mut Value| {
            config["envoy"]["request_headers_timeout_seconds"] = json!(HEADERS_TIMEOUT);
            config["envoy"]["request_timeout_seconds"] = json!(REQUEST_TIMEOUT);
            config["envoy"]["idle_timeout_seconds"] = json!(IDLE_TIMEOUT);
            config["envoy"]["max_connections"] = json!(MAX_CONNECTIONS);
            for route in config["routes"].as_array_mut().unwrap() {
                if route["name"] == "silent" {
                    let to = route["to"].as_str().unwrap().replace("/mcp", "/silent-sse");
                    route["to"] = json!(to);
                }
            }
        })),
        ..StackOptions::default()
    }
}

/// How long until Envoy closes `stream` (EOF or reset), reading and discarding what comes.
async fn time_to_close(stream: &mut TcpStream, started: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_and_connections_are_capped() {
    let stack = Stack::start_with(limited_options()).await;
    let port = stack.ports.envoy;

    // Headers trickling in, one byte at a time: cut at the headers timeout.
    let slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let started = Instant::now();
    let trickle = async move {
        let request = format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ");
        for byte in request.bytes().chain(std::iter::repeat(b'a')) {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = trickle => {}
        _ = closed => {}
        _ = tokio::time::sleep(Duration::from_secs(20)) => {}
    }
    let cut = started.elapsed();
    assert!(
        cut < Duration::from_secs(HEADERS_TIMEOUT + 3),
        "slow headers were not cut: {cut:?}"
    );
    assert!(
        cut >= Duration::from_millis(HEADERS_TIMEOUT * 1000 - 500),
        "{cut:?}"
    );

    // A connection that sends nothing, and one left idle after a request: closed when idle.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let closed = time_to_close(&mut idle, started, Duration::from_secs(IDLE_TIMEOUT + 5)).await;
    assert!(
        closed >= Duration::from_millis(IDLE_TIMEOUT * 1000 - 500),
        "{closed:?}"
    );
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    kept.write_all(format!("GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    // Idle, then Envoy's drain (5 s) and delayed close.
    time_to_close(&mut kept, started, Duration::from_secs(IDLE_TIMEOUT + 10)).await;

    // At most MAX_CONNECTIONS at once: the ones beyond are closed at accept.
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        open.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let closed = time_to_close(&mut extra, started, Duration::from_secs(2)).await;
    assert!(
        closed < Duration::from_secs(1),
        "connection over the cap lived {closed:?}"
    );
    let overflow: u64 = stack
        .envoy_stats("downstream_global_cx_overflow")
        .await
        .into_values()
        .sum();
    assert!(overflow >= 1, "no overflow counted");
    // The admin interface stays reachable at the cap.
    let _ = stack.envoy_stats("server.live").await;
    drop(open);
}

/// A `2026-07-28` `tools/call` read to its end, however long the server takes.
async fn call_tool_and_wait(url: &str, token: &str, tool: &str, arguments: Value) -> (u16, String) {
    let body = stateless_body(
        1,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    );
    let resp = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn long_tool_calls_and_silent_streams_outlive_the_client_timeouts() {
    let stack = Stack::start_with(limited_options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let wait = IDLE_TIMEOUT + REQUEST_TIMEOUT + 1;

    // A tool call answered after longer than every client-side timeout.
    let started = Instant::now();
    let (status, body) =
        call_tool_and_wait(&stack.mcp_url(), &token, "sleep", json!({"seconds": wait})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("slept {wait} s")), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(wait));

    // An SSE stream that stays silent just as long, through the gateway.
    let silent_url = stack.route_url("/silent");
    let silent_token = stack.mint_token(&silent_url).await;
    let resp = reqwest::Client::new()
        .get(format!("{silent_url}?seconds={wait}"))
        .header("authorization", format!("Bearer {silent_token}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let started = Instant::now();
    let body = resp.text().await.unwrap();
    assert!(
        body.contains(&format!("\"silent_seconds\":{wait}")),
        "stream cut after {:?}: {body:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_seventy_second_tool_call_passes_with_the_default_limits() {
    let stack = Stack::start().await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let (status, body) =
        call_tool_and_wait(&stack.mcp_url(), &token, "sleep", json!({"seconds": 70})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slept 70 s"), "{body}");
}

// =============================================================================================
// The route Envoy chose reaches the filter in a header Envoy sets itself (`route_header`).
// =============================================================================================

#[tokio::test]
async fn a_client_cannot_name_the_route_envoy_chose() {
    let stack = Stack::start_with(deny_add_options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    for forged in [
        "mcp-warden:nope",
        "mcp-warden:demo",
        "",
        "mcp-warden:demo, mcp-warden:x",
    ] {
        // Envoy overwrites the header: the call is judged by the route it goes to.
        stack.demo.clear_recorded().await;
        let extra = [
            ("authorization", auth.as_str()),
            ("x-mcp-warden-route", forged),
        ];
        let resp = mcp_post(
            &stack.mcp_url(),
            &extra,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .await;
        assert_eq!(resp.status, 200, "forged {forged:?}: {}", resp.body);
        let recorded = stack.demo.recorded().await;
        assert_eq!(recorded.len(), 1, "forged {forged:?}");
        assert!(
            recorded[0]["headers"].get("x-mcp-warden-route").is_none(),
            "the route header reached the upstream: {:#?}",
            recorded[0]["headers"]
        );
        let resp = mcp_post(
            &stack.mcp_url(),
            &extra,
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
        assert_eq!(resp.status, 403, "forged {forged:?}: {}", resp.body);
    }
    // Off the MCP routes, the header is dropped too: no route is judged.
    let resp = raw_request(
        "GET",
        &format!("{}/elsewhere", stack.envoy_url()),
        &[("x-mcp-warden-route", "mcp-warden:demo")],
        None,
    )
    .await;
    assert_eq!(resp.status, 404, "{}", resp.body);
}

/// Envoy's routing decision is the filter's: a request Envoy routes to an MCP route the filter
/// does not know is refused, even where the filter's own URL matching would find a route. (A
/// route source that answered nothing at request time, such as the `route_name` property in
/// Envoy 1.40, would let the filter fall back to its own matching and pass this call.)
#[tokio::test]
async fn envoys_route_decides_even_where_the_url_names_a_known_route() {
    let stack = Stack::start_with(StackOptions {
        bootstrap_hook: Some(Box::new(|yaml: &mut String| {
            // The Envoy route of `demo` (its name, and the route header it sets) now names a
            // route the filter does not have; the URL still is `demo`'s.
            let ours = "\"mcp-warden:demo\"";
            assert!(yaml.matches(ours).count() >= 2, "{yaml}");
            *yaml = yaml.replace(ours, "\"mcp-warden:renamed\"");
        })),
        ..StackOptions::default()
    })
    .await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    stack.demo.clear_recorded().await;
    let resp = call_echo(&stack, &auth).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert!(
        resp.body.contains("does not know"),
        "refused as a route the filter does not know: {}",
        resp.body
    );
    stack
        .demo
        .assert_nothing_recorded("a route the filter does not know")
        .await;
}

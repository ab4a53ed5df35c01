//! The MCP body inspection and per-route PPL policy of the filter, through real Envoy: allowed
//! calls work in both protocol eras, denied tools get a JSON-RPC error carrying the request id,
//! every bypass class (oversize, duplicate/escaped/case-changed keys, batches, content type and
//! encoding, header/body mismatch, chunked bodies, trailers) is refused before anything reaches
//! the upstream, `tools/list` results are filtered (JSON, SSE, SSE split mid-character), and
//! the authorize log and counters record it all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warden_e2e::{
    call_tool_text, connect, raw_request, recorded_rpc_method, stateless_body, tool_names,
    ClientAuth, Era, ExtraRoute, RawResponse, Stack, StackOptions,
};

/// The demo user is demo@example.com; the demo server has whoami, echo, add and get_time.
/// `server/discover` (2026-07-28) and `initialize` + `notifications/initialized` (handshake) are
/// what the two eras need to start.
const POLICY_YAML: &str = "
- allow: {or: [{mcp_method: {in: [initialize, notifications/initialized, tools/list, ping, server/discover]}}, {and: [{domain: {is: example.com}}, {mcp_tool: {in: [whoami, echo, add]}}]}]}
- deny: {or: [{mcp_tool: {is: add}}]}
";

const LIMIT: usize = 4096;
/// The description the demo server's canned `tools/list` endpoints give `whoami`.
const SPLIT_DESCRIPTION: &str = "héllo ✓ 日本";

fn policy() -> Value {
    serde_yaml::from_str(POLICY_YAML).expect("policy YAML")
}

/// The stack: route `demo` (`/mcp`) plus `split` (`/split` → the demo server's `/split-sse`)
/// and `json` (`/json` → `/json-tools`), all with the policy and `server` options `server`.
fn options(server: Value) -> StackOptions {
    StackOptions {
        extra_routes: vec![
            ExtraRoute {
                name: "split".into(),
                prefix: "/split".into(),
            },
            ExtraRoute {
                name: "json".into(),
                prefix: "/json".into(),
            },
        ],
        config_hook: Some(Box::new(move |config: &mut Value| {
            for route in config["routes"].as_array_mut().unwrap() {
                route["policy"] = policy();
                route["mcp"]["server"] = server.clone();
                let upstream_path = match route["name"].as_str().unwrap() {
                    "split" => Some("/split-sse"),
                    "json" => Some("/json-tools"),
                    _ => None,
                };
                if let Some(path) = upstream_path {
                    let to = route["to"].as_str().unwrap();
                    let to = to.strip_suffix("/mcp").expect("upstream ends in /mcp");
                    route["to"] = json!(format!("{to}{path}"));
                }
            }
        })),
        ..StackOptions::default()
    }
}

fn default_server() -> Value {
    json!({
        "max_request_bytes": LIMIT,
        "log_tool_parameters": true,
        "redact_parameters": ["secret"],
    })
}

struct Fixture {
    stack: Stack,
    /// `Bearer <token for /mcp>`.
    auth: String,
    token: String,
}

async fn start(server: Value) -> Fixture {
    let stack = Stack::start_with(options(server)).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    Fixture {
        auth: format!("Bearer {token}"),
        token,
        stack,
    }
}

impl Fixture {
    /// POSTs `body` to `/mcp` as a 2026-07-28 request with `Mcp-Method`/`Mcp-Name` as given.
    async fn post(&self, method: &str, name: Option<&str>, body: &str) -> RawResponse {
        let mut headers = vec![
            ("authorization", self.auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(name) = name {
            headers.push(("mcp-name", name));
        }
        raw_request("POST", &self.stack.mcp_url(), &headers, Some(body)).await
    }

    /// A 2026-07-28 `tools/call` of `tool` with agreeing headers.
    async fn call(&self, id: u64, tool: &str, arguments: Value) -> RawResponse {
        self.post("tools/call", Some(tool), &call_body(id, tool, arguments))
            .await
    }

    /// POSTs `body` with exactly `headers` (plus the token) to `/mcp`.
    async fn post_with(&self, headers: &[(&str, &str)], body: &str) -> RawResponse {
        let mut all = vec![("authorization", self.auth.as_str())];
        all.extend_from_slice(headers);
        raw_request("POST", &self.stack.mcp_url(), &all, Some(body)).await
    }

    async fn clear(&self) {
        self.stack.demo.clear_recorded().await;
    }

    async fn assert_nothing_upstream(&self, what: &str) {
        self.stack.demo.assert_nothing_recorded(what).await;
    }

    /// Asserts exactly one `tools/call` reached the upstream since the last clear.
    async fn assert_one_call_upstream(&self, what: &str) {
        let recorded = self.stack.demo.recorded().await;
        let calls: Vec<_> = recorded
            .iter()
            .filter(|r| recorded_rpc_method(r).as_deref() == Some("tools/call"))
            .collect();
        assert_eq!(calls.len(), 1, "{what}: upstream saw {recorded:#?}");
    }
}

fn call_body(id: u64, tool: &str, arguments: Value) -> String {
    stateless_body(
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
    .to_string()
}

/// Asserts an HTTP `status` carrying a JSON-RPC error `code` for `id`; returns the error's
/// `data["request-id"]` (non-empty).
fn assert_rpc_error(resp: &RawResponse, status: u16, code: i64, id: Value, what: &str) -> String {
    assert_eq!(
        resp.status, status,
        "{what}: expected HTTP {status}, got {} {}",
        resp.status, resp.body
    );
    let body: Value = serde_json::from_str(&resp.body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {}", resp.body));
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!(body["id"], id, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    let request_id = body["error"]["data"]["request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error.data[\"request-id\"]: {body}"));
    assert!(!request_id.is_empty(), "{what}: empty request-id: {body}");
    request_id.to_owned()
}

/// Asserts a successful `tools/call` response whose text is `expected`.
fn assert_tool_text(resp: &RawResponse, expected: &str, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {} {}", resp.status, resp.body);
    let v = resp.json();
    assert_eq!(
        v["result"]["content"][0]["text"], expected,
        "{what}: {}",
        resp.body
    );
}

fn tool_list(v: &Value) -> Vec<String> {
    v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("not a tools/list result: {v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn as_set(names: Vec<String>) -> BTreeSet<String> {
    names.into_iter().collect()
}

// =============================================================================================
// 1. Allowed and denied calls, both eras, both deny styles
// =============================================================================================

#[tokio::test]
async fn allowed_tools_work_in_both_eras_and_denied_tools_get_403() {
    let fx = start(default_server()).await;

    for era in Era::all() {
        let client = connect(
            &fx.stack.mcp_url(),
            &era,
            ClientAuth::Bearer(fx.token.clone()),
        )
        .await;
        assert_eq!(
            call_tool_text(&client, "echo", json!({"text": format!("hi from {era}")})).await,
            format!("hi from {era}"),
            "{era}: echo is allowed"
        );
        fx.clear().await;
        for denied in ["get_time", "add"] {
            let mut params = CallToolRequestParams::new(denied.to_owned());
            if denied == "add" {
                params =
                    params.with_arguments(json!({"a": 1, "b": 2}).as_object().unwrap().clone());
            }
            let result = client.call_tool(params).await;
            assert!(
                result.is_err() || result.as_ref().is_ok_and(|r| r.is_error == Some(true)),
                "{era}: {denied} must be refused, got {result:?}"
            );
        }
        let recorded = fx.stack.demo.recorded().await;
        assert!(
            !recorded
                .iter()
                .any(|r| recorded_rpc_method(r).as_deref() == Some("tools/call")),
            "{era}: a denied tools/call reached the upstream: {recorded:#?}"
        );
        let _ = client.cancel().await;
    }

    // Raw: status, JSON-RPC error with the request's id and the log's request id.
    fx.clear().await;
    let resp = fx.call(41, "get_time", json!({})).await;
    assert_rpc_error(&resp, 403, -32003, json!(41), "get_time (not allowed)");
    let resp = fx.call(42, "add", json!({"a": 1, "b": 2})).await;
    assert_rpc_error(&resp, 403, -32003, json!(42), "add (denied)");
    let mut body = stateless_body(43, "tools/call", json!({"name": "get_time"}));
    body["id"] = json!("req-43");
    let resp = fx
        .post("tools/call", Some("get_time"), &body.to_string())
        .await;
    assert_rpc_error(&resp, 403, -32003, json!("req-43"), "string id");
    // Handshake-era shape (no routing headers, no _meta): judged by the body all the same.
    let resp = fx
        .post_with(
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            &json!({"jsonrpc": "2.0", "id": 44, "method": "tools/call", "params": {"name": "get_time"}})
                .to_string(),
        )
        .await;
    assert_rpc_error(&resp, 403, -32003, json!(44), "handshake-shaped get_time");
    fx.assert_nothing_upstream("denied tool calls").await;

    // Positive control: the same raw shape for an allowed tool reaches the server.
    let resp = fx.call(45, "echo", json!({"text": "raw echo"})).await;
    assert_tool_text(&resp, "raw echo", "raw echo");
    fx.assert_one_call_upstream("raw echo").await;
}

#[tokio::test]
async fn jsonrpc_200_deny_style_answers_200_with_invalid_params() {
    let mut server = default_server();
    server["deny_response"] = json!("jsonrpc_200");
    let fx = start(server).await;

    fx.clear().await;
    let resp = fx.call(7, "get_time", json!({})).await;
    assert_rpc_error(&resp, 200, -32602, json!(7), "get_time, jsonrpc_200");
    let resp = fx.call(8, "add", json!({"a": 1, "b": 2})).await;
    assert_rpc_error(&resp, 200, -32602, json!(8), "add, jsonrpc_200");
    fx.assert_nothing_upstream("denied calls (jsonrpc_200)")
        .await;

    // An rmcp client sees an ordinary JSON-RPC error and carries on.
    let client = connect(
        &fx.stack.mcp_url(),
        &Era::Stateless,
        ClientAuth::Bearer(fx.token.clone()),
    )
    .await;
    let err = client
        .call_tool(CallToolRequestParams::new("get_time"))
        .await
        .expect_err("get_time is denied");
    assert!(format!("{err:?}").contains("-32602"), "{err:?}");
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "still fine"})).await,
        "still fine"
    );
}

// =============================================================================================
// 2. Oversize bodies
// =============================================================================================

#[tokio::test]
async fn oversize_bodies_get_413_and_bodies_under_the_limit_pass() {
    let fx = start(default_server()).await;

    fx.clear().await;
    let big = "x".repeat(10 * 1024);
    let resp = fx.call(1, "echo", json!({"text": big})).await;
    assert_rpc_error(&resp, 413, -32600, Value::Null, "10 KB echo");
    fx.assert_nothing_upstream("oversize body").await;

    // Just under the limit: judged and forwarded whole.
    let base = call_body(2, "echo", json!({"text": ""})).len();
    let text = "y".repeat(LIMIT - base - 16);
    let body = call_body(2, "echo", json!({"text": text}));
    assert!(
        body.len() < LIMIT && body.len() > LIMIT - 32,
        "{}",
        body.len()
    );
    let resp = fx.post("tools/call", Some("echo"), &body).await;
    assert_tool_text(&resp, &text, "body just under the limit");
    let recorded = fx.stack.demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["body_len"], body.len(), "forwarded whole");
}

// =============================================================================================
// 3. Bypass classes
// =============================================================================================

#[tokio::test]
async fn bypass_attempts_are_refused_before_the_upstream() {
    let fx = start(default_server()).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "warden-e2e", "version": "0.1.0" },
        "io.modelcontextprotocol/clientCapabilities": {},
    })
    .to_string();

    // Duplicate keys: servers disagree on which one wins.
    fx.clear().await;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","name":"get_time","arguments":{{"text":"a"}},"_meta":{meta}}}}}"#
    );
    let resp = fx.post("tools/call", Some("echo"), &body).await;
    assert_rpc_error(&resp, 400, -32700, Value::Null, "duplicate name keys");
    fx.assert_nothing_upstream("duplicate keys").await;

    // Escapes are decoded before matching: `\u0067et_time` is get_time.
    let escaped = |tool: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"esc"}},"_meta":{meta}}}}}"#
        )
    };
    let resp = fx
        .post("tools/call", Some("get_time"), &escaped(r"\u0067et_time"))
        .await;
    assert_rpc_error(&resp, 403, -32003, json!(2), "escaped get_time");
    fx.assert_nothing_upstream("escaped get_time").await;
    // Positive control: an escaped allowed name is judged as what it decodes to.
    let resp = fx
        .post("tools/call", Some("echo"), &escaped(r"\u0065cho"))
        .await;
    assert_tool_text(&resp, "esc", "escaped echo");
    fx.assert_one_call_upstream("escaped echo").await;

    // Key names are exact: `Name` is not `name`.
    fx.clear().await;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"Name":"get_time","_meta":{meta}}}}}"#
    );
    let resp = fx.post("tools/call", Some("get_time"), &body).await;
    assert_eq!(resp.status, 400, "Name key: {}", resp.body);
    assert_eq!(resp.json()["error"]["code"], -32600, "{}", resp.body);
    fx.assert_nothing_upstream("case-changed key").await;

    // A batch hiding a denied call behind an allowed one is denied whole.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "a"}}},
        {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "get_time"}},
    ])
    .to_string();
    let resp = fx
        .post_with(
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2025-03-26"),
            ],
            &batch,
        )
        .await;
    assert_eq!(resp.status, 403, "batch: {}", resp.body);
    let errors: Value = serde_json::from_str(&resp.body).unwrap();
    let errors = errors.as_array().expect("a batch gets a batch of errors");
    assert_eq!(
        errors.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        vec![json!(10), json!(11)],
        "{}",
        resp.body
    );
    assert!(errors.iter().all(|e| e["error"]["code"] == -32003));
    fx.assert_nothing_upstream("batch").await;

    // Content types and encodings the filter cannot read.
    let good = call_body(4, "echo", json!({"text": "a"}));
    let resp = fx
        .post_with(
            &[
                ("content-type", "text/plain"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            &good,
        )
        .await;
    assert_rpc_error(&resp, 400, -32700, Value::Null, "text/plain");
    let resp = fx
        .post_with(
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            &good,
        )
        .await;
    assert_rpc_error(&resp, 415, -32600, Value::Null, "Content-Encoding: gzip");
    fx.assert_nothing_upstream("content type / encoding").await;

    // Routing headers that name another call than the body makes.
    let body = call_body(5, "get_time", json!({}));
    let resp = fx.post("tools/call", Some("echo"), &body).await;
    assert_rpc_error(&resp, 400, -32020, json!(5), "Mcp-Name echo, body get_time");
    let body = call_body(6, "echo", json!({"text": "a"}));
    let resp = fx.post("tools/list", None, &body).await;
    assert_rpc_error(
        &resp,
        400,
        -32020,
        json!(6),
        "Mcp-Method tools/list, body tools/call",
    );
    fx.assert_nothing_upstream("header/body mismatch").await;

    // Positive control: the same request with agreeing headers goes through.
    let resp = fx.post("tools/call", Some("echo"), &good).await;
    assert_tool_text(&resp, "a", "agreeing headers");
    fx.assert_one_call_upstream("agreeing headers").await;
}

#[tokio::test]
async fn requests_that_readers_could_read_two_ways_are_refused() {
    // Every place a real server could read a request otherwise than the filter: the body's
    // charset, repeated headers, routing headers naming what the body does not, method
    // overrides. Each is refused before anything reaches the upstream.
    let fx = start(default_server()).await;
    let accept = ("accept", "application/json, text/event-stream");
    let stateless = [
        accept,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let good = call_body(1, "echo", json!({"text": "a"}));

    // A body an Express-based server (the TypeScript SDK) decodes as UTF-7: there
    // `"+AHQ-ools/call"` is `tools/call` and `+AGc-et_time` is `get_time`.
    fx.clear().await;
    let utf7 = r#"{"jsonrpc":"2.0","id":1,"method":"+AHQ-ools/call","params":{"+AG4-ame":"+AGc-et_time"}}"#;
    for content_type in [
        "application/json; charset=utf-7",
        "application/json; charset=UTF-7",
        "application/json;charset=\"utf-7\"",
        "application/json; CharSet = utf-7",
        "application/json; charset=utf-16",
        "application/json; charset=utf-8; charset=utf-7",
    ] {
        let resp = fx
            .post_with(&[("content-type", content_type), accept], utf7)
            .await;
        assert_rpc_error(&resp, 415, -32600, Value::Null, content_type);
    }
    // Two Content-Type headers (Envoy joins them with a comma): refused, whichever a
    // server would read.
    let mut two = vec![
        ("content-type", "application/json"),
        ("content-type", "application/json; charset=utf-7"),
    ];
    two.extend_from_slice(&stateless);
    let resp = fx.post_with(&two, &good).await;
    assert_rpc_error(&resp, 415, -32600, Value::Null, "two Content-Type headers");
    fx.assert_nothing_upstream("charsets").await;

    // A repeated routing header: servers read the first copy, the filter the last.
    for (name, first, second) in [
        ("mcp-method", "tools/call", "tools/list"),
        ("mcp-name", "get_time", "echo"),
        ("mcp-protocol-version", "2025-06-18", "2026-07-28"),
    ] {
        let mut headers = vec![("content-type", "application/json"), accept];
        for (n, v) in stateless.iter().skip(1) {
            if *n != name {
                headers.push((n, v));
            }
        }
        headers.push((name, first));
        headers.push((name, second));
        let resp = fx.post_with(&headers, &good).await;
        assert_rpc_error(&resp, 400, -32020, Value::Null, &format!("two {name}"));
    }
    fx.assert_nothing_upstream("repeated routing headers").await;

    // Routing headers naming a call the body does not make, in every era: on a response,
    // a stray Mcp-Name on a call that names nothing, Mcp-Method on a GET.
    let response = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    let resp = fx
        .post_with(
            &[
                ("content-type", "application/json"),
                accept,
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "get_time"),
            ],
            response,
        )
        .await;
    assert_rpc_error(&resp, 400, -32020, json!(7), "headers on a response");
    let list = r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#;
    let resp = fx
        .post_with(
            &[
                ("content-type", "application/json"),
                accept,
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-name", "get_time"),
            ],
            list,
        )
        .await;
    assert_rpc_error(&resp, 400, -32020, json!(8), "stray Mcp-Name, old era");
    let resp = raw_request(
        "GET",
        &fx.stack.mcp_url(),
        &[
            ("authorization", fx.auth.as_str()),
            accept,
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_time"),
        ],
        None,
    )
    .await;
    assert_rpc_error(&resp, 400, -32020, Value::Null, "Mcp-Method on a GET");
    fx.assert_nothing_upstream("routing headers without a call")
        .await;

    // A method override makes a lenient framework run another method than was judged.
    for name in [
        "X-HTTP-Method-Override",
        "x-http-method",
        "X-Method-Override",
    ] {
        let mut headers = vec![("content-type", "application/json"), (name, "DELETE")];
        headers.extend_from_slice(&stateless);
        let resp = fx.post_with(&headers, &good).await;
        // Refused with the transport's errors (no request id: nothing was judged yet).
        assert_eq!(resp.status, 400, "{name}: {}", resp.body);
        assert_eq!(
            resp.json()["error"]["code"],
            -32600,
            "{name}: {}",
            resp.body
        );
    }
    fx.assert_nothing_upstream("method overrides").await;

    // Positive control: UTF-8 in every spelling, one of each header, goes through.
    for content_type in [
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
    ] {
        fx.clear().await;
        let mut headers = vec![("content-type", content_type)];
        headers.extend_from_slice(&stateless);
        let resp = fx.post_with(&headers, &good).await;
        assert_tool_text(&resp, "a", content_type);
        fx.assert_one_call_upstream(content_type).await;
    }
}

// =============================================================================================
// 4. Chunked bodies and trailers (raw HTTP/1.1)
// =============================================================================================

struct Http1Response {
    status: u16,
    head: String,
    body: String,
}

/// Sends a `Transfer-Encoding: chunked` POST to Envoy over a raw TCP connection, one body piece
/// per chunk (flushed, with a pause between), ending with `trailers` (`None`: none), and reads
/// the response.
async fn chunked_post(
    fx: &Fixture,
    routing: (&str, &str),
    body: &str,
    pieces: usize,
    trailers: Option<&str>,
) -> Http1Response {
    let port = fx.stack.ports.envoy;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to Envoy");
    stream.set_nodelay(true).unwrap();
    let trailer_decl = trailers
        .map(|t| format!("Trailer: {}\r\n", t.split(':').next().unwrap()))
        .unwrap_or_default();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {}\r\nMcp-Name: {}\r\n\
         Transfer-Encoding: chunked\r\n{trailer_decl}Connection: close\r\n\r\n",
        fx.auth, routing.0, routing.1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let bytes = body.as_bytes();
    let size = bytes.len().div_ceil(pieces);
    for piece in bytes.chunks(size) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        // The connection may already be answered (a refusal): later writes may fail.
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        let _ = stream.flush().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = match trailers {
        Some(t) => format!("0\r\n{t}\r\n\r\n"),
        None => "0\r\n\r\n".to_owned(),
    };
    let _ = stream.write_all(last.as_bytes()).await;
    let _ = stream.flush().await;
    read_http1(&mut stream).await
}

/// Reads an HTTP/1.1 response until EOF, or until a complete JSON-RPC answer has arrived.
async fn read_http1(stream: &mut tokio::net::TcpStream) -> Http1Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
        if let Some(resp) = parse_http1(&buf) {
            if resp.body.contains("\"result\"") || resp.body.contains("\"error\"") {
                // SSE answers keep the stream open a little; a complete message is enough.
                if !resp.head.contains("text/event-stream") || resp.body.contains("}\n\n") {
                    return resp;
                }
            }
        }
    }
    parse_http1(&buf).unwrap_or_else(|| {
        panic!(
            "no complete HTTP response: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

fn parse_http1(buf: &[u8]) -> Option<Http1Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, raw_body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = raw_body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 || after.len() < size {
                out.push_str(&after[..after.len().min(size)]);
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
        }
        out
    } else {
        raw_body.to_owned()
    };
    Some(Http1Response {
        status,
        head: head.to_owned(),
        body,
    })
}

fn http1_json(resp: &Http1Response) -> Value {
    if let Ok(v) = serde_json::from_str(&resp.body) {
        return v;
    }
    resp.body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| {
            panic!(
                "no JSON-RPC answer in HTTP {}:\n{}\n\n{}",
                resp.status, resp.head, resp.body
            )
        })
}

#[tokio::test]
async fn chunked_bodies_and_bodies_ending_in_trailers_are_judged() {
    let fx = start(default_server()).await;

    for trailers in [None, Some("X-Checksum: 1")] {
        let what = if trailers.is_some() {
            "chunked + trailers"
        } else {
            "chunked"
        };
        fx.clear().await;
        let body = call_body(21, "get_time", json!({"text": "split across chunks"}));
        let resp = chunked_post(&fx, ("tools/call", "get_time"), &body, 4, trailers).await;
        assert_eq!(
            resp.status, 403,
            "{what}: denied get_time: {}\n{}",
            resp.head, resp.body
        );
        let v = http1_json(&resp);
        assert_eq!(v["id"], 21, "{what}: {v}");
        assert_eq!(v["error"]["code"], -32003, "{what}: {v}");
        // Give a late forward (if any) time to arrive before looking.
        tokio::time::sleep(Duration::from_millis(300)).await;
        fx.assert_nothing_upstream(&format!("{what}: denied get_time"))
            .await;

        let body = call_body(22, "echo", json!({"text": format!("{what} echo")}));
        let resp = chunked_post(&fx, ("tools/call", "echo"), &body, 4, trailers).await;
        assert_eq!(
            resp.status, 200,
            "{what}: allowed echo: {}\n{}",
            resp.head, resp.body
        );
        let v = http1_json(&resp);
        assert_eq!(
            v["result"]["content"][0]["text"],
            format!("{what} echo"),
            "{what}: {v}"
        );
        let recorded = fx.stack.demo.recorded().await;
        assert_eq!(recorded.len(), 1, "{what}: {recorded:#?}");
        assert_eq!(recorded[0]["body"], body, "{what}: the body arrives whole");
    }
}

// =============================================================================================
// 5. tools/list filtering
// =============================================================================================

/// Handshake-era `tools/list` done by hand: `initialize`, `notifications/initialized`, then
/// `tools/list` in the session.
async fn handshake_tools_list(fx: &Fixture) -> RawResponse {
    let base: Vec<(&str, &str)> = vec![
        ("authorization", fx.auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "warden-e2e", "version": "0.1.0"},
        },
    });
    let resp = raw_request("POST", &fx.stack.mcp_url(), &base, Some(&init.to_string())).await;
    assert_eq!(resp.status, 200, "initialize: {}", resp.body);
    let session = resp
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("initialize without Mcp-Session-Id: {:?}", resp.headers));
    let mut headers = base.clone();
    headers.push(("mcp-session-id", session.as_str()));
    headers.push(("mcp-protocol-version", "2025-11-25"));
    let resp = raw_request(
        "POST",
        &fx.stack.mcp_url(),
        &headers,
        Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string()),
    )
    .await;
    assert!(resp.status < 300, "notifications/initialized: {resp:?}");
    raw_request(
        "POST",
        &fx.stack.mcp_url(),
        &headers,
        Some(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string()),
    )
    .await
}

/// `tools/list` over the canned route `prefix` (`/split`: SSE split mid-character; `/json`).
async fn canned_tools_list(fx: &Fixture, prefix: &str) -> RawResponse {
    let url = fx.stack.route_url(prefix);
    let auth = format!("Bearer {}", fx.stack.mint_token(&url).await);
    let body = stateless_body(9, "tools/list", json!({})).to_string();
    raw_request(
        "POST",
        &url,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ],
        Some(&body),
    )
    .await
}

fn content_type(resp: &RawResponse) -> String {
    resp.header("content-type").unwrap_or_default()
}

#[tokio::test]
async fn tools_list_shows_only_callable_tools_in_both_eras_json_and_sse() {
    let fx = start(default_server()).await;
    let visible = set(&["whoami", "echo"]);

    for era in Era::all() {
        let client = connect(
            &fx.stack.mcp_url(),
            &era,
            ClientAuth::Bearer(fx.token.clone()),
        )
        .await;
        assert_eq!(as_set(tool_names(&client).await), visible, "{era}: rmcp");
        let _ = client.cancel().await;
    }

    // By hand, to see the encodings: the demo server (rmcp) answers POSTs as SSE in both eras.
    let resp = fx
        .post(
            "tools/list",
            None,
            &stateless_body(3, "tools/list", json!({})).to_string(),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        content_type(&resp).starts_with("text/event-stream"),
        "{resp:?}"
    );
    assert_eq!(
        as_set(tool_list(&resp.json())),
        visible,
        "2026-07-28 SSE: {}",
        resp.body
    );

    let resp = handshake_tools_list(&fx).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        content_type(&resp).starts_with("text/event-stream"),
        "{resp:?}"
    );
    assert_eq!(
        as_set(tool_list(&resp.json())),
        visible,
        "handshake SSE: {}",
        resp.body
    );

    // A JSON answer (the demo server's canned /json-tools: whoami + get_time).
    let resp = canned_tools_list(&fx, "/json").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        content_type(&resp).starts_with("application/json"),
        "{resp:?}"
    );
    let v: Value = serde_json::from_str(&resp.body).expect("filtered JSON stays JSON");
    assert_eq!(tool_list(&v), vec!["whoami"], "{}", resp.body);
    assert_eq!(v["id"], 9);
    assert_eq!(v["result"]["tools"][0]["description"], SPLIT_DESCRIPTION);
    assert!(
        resp.header("content-length")
            .is_none_or(|l| l == resp.body.len().to_string()),
        "stale Content-Length: {resp:?}"
    );
}

#[tokio::test]
async fn sse_event_split_inside_a_utf8_character_is_filtered_intact() {
    let fx = start(default_server()).await;
    let resp = canned_tools_list(&fx, "/split").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        content_type(&resp).starts_with("text/event-stream"),
        "{resp:?}"
    );
    assert!(
        !resp.body.contains('\u{FFFD}'),
        "UTF-8 broken at a chunk boundary: {:?}",
        resp.body
    );
    // One well-formed event: `event: message`, one data line, blank line.
    let events: Vec<&str> = resp
        .body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert_eq!(events.len(), 1, "{:?}", resp.body);
    assert!(resp.body.ends_with("\n\n"), "{:?}", resp.body);
    let lines: Vec<&str> = events[0].lines().collect();
    assert!(lines.contains(&"event: message"), "{lines:?}");
    let data: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("data:"))
        .collect();
    assert_eq!(data.len(), 1, "{lines:?}");
    let v: Value = serde_json::from_str(data[0].trim()).expect("data is JSON");
    assert_eq!(v["id"], 9, "{v}");
    assert_eq!(tool_list(&v), vec!["whoami"], "{v}");
    assert_eq!(
        v["result"]["tools"][0]["description"], SPLIT_DESCRIPTION,
        "{v}"
    );
}

#[tokio::test]
async fn tools_list_is_unfiltered_when_filtering_is_off() {
    let mut server = default_server();
    server["filter_tools_list"] = json!(false);
    let fx = start(server).await;
    let all = set(&["whoami", "echo", "add", "get_time", "sleep"]);
    for era in Era::all() {
        let client = connect(
            &fx.stack.mcp_url(),
            &era,
            ClientAuth::Bearer(fx.token.clone()),
        )
        .await;
        assert_eq!(as_set(tool_names(&client).await), all, "{era}");
        let _ = client.cancel().await;
    }
    let resp = canned_tools_list(&fx, "/split").await;
    assert_eq!(
        as_set(tool_list(&resp.json())),
        set(&["whoami", "get_time"])
    );
    // Listing is not calling: get_time stays denied.
    let resp = fx.call(1, "get_time", json!({})).await;
    assert_rpc_error(&resp, 403, -32003, json!(1), "get_time, unfiltered list");
}

// =============================================================================================
// 6. The authorize log
// =============================================================================================

/// The `wasm log mcp-warden: authorize {json}` lines Envoy logged so far.
fn authorize_lines(stack: &Stack) -> Vec<Value> {
    stack
        .envoy_log()
        .lines()
        .filter_map(|l| l.split_once("mcp-warden: authorize ").map(|(_, j)| j))
        .map(|j| {
            serde_json::from_str(j.trim())
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {j}"))
        })
        .collect()
}

/// Waits for the authorize line of `request_id`.
async fn authorize_line(stack: &Stack, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = authorize_lines(stack)
            .into_iter()
            .find(|l| l["request-id"] == request_id)
        {
            return line;
        }
        if Instant::now() > deadline {
            panic!(
                "no `mcp-warden: authorize` line with request-id {request_id}; Envoy log:\n{}",
                stack.envoy_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn authorize_log_names_the_call_the_decision_and_redacts_parameters() {
    let fx = start(default_server()).await;

    let resp = fx
        .call(1, "get_time", json!({"zone": "UTC", "secret": "hunter2"}))
        .await;
    let request_id = assert_rpc_error(&resp, 403, -32003, json!(1), "get_time");
    let line = authorize_line(&fx.stack, &request_id).await;
    assert_eq!(line["allow"], false, "{line}");
    assert_eq!(line["deny"], false, "{line}");
    assert_eq!(line["mcp-tool"], "get_time", "{line}");
    assert_eq!(line["mcp-method"], "tools/call", "{line}");
    assert_eq!(line["route"], "demo", "{line}");
    assert_eq!(line["email"], "demo@example.com", "{line}");
    assert!(
        line["allow-why-false"]
            .as_array()
            .is_some_and(|w| w.contains(&json!("mcp-tool-no-match"))),
        "{line}"
    );
    assert_eq!(
        line["mcp-tool-parameters"],
        json!({"zone": "UTC", "secret": "[redacted]"}),
        "{line}"
    );

    let resp = fx.call(2, "add", json!({"a": 1, "b": 2})).await;
    let request_id = assert_rpc_error(&resp, 403, -32003, json!(2), "add");
    let line = authorize_line(&fx.stack, &request_id).await;
    assert_eq!(
        (line["allow"].clone(), line["deny"].clone()),
        (json!(true), json!(true)),
        "{line}"
    );
    assert!(
        line["deny-why-true"]
            .as_array()
            .is_some_and(|w| w.contains(&json!("mcp-tool-match"))),
        "{line}"
    );
    assert_eq!(
        line["mcp-tool-parameters"],
        json!({"a": 1, "b": 2}),
        "{line}"
    );

    // An allowed call is logged too (its request id is the one Envoy forwarded upstream).
    fx.clear().await;
    let resp = fx
        .call(3, "echo", json!({"text": "logged", "secret": "s3cr3t"}))
        .await;
    assert_tool_text(&resp, "logged", "echo");
    let recorded = fx.stack.demo.recorded().await;
    let upstream_id = recorded[0]["headers"]["x-request-id"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no x-request-id upstream: {recorded:#?}"))
        .to_owned();
    let line = authorize_line(&fx.stack, &upstream_id).await;
    assert_eq!(
        (line["allow"].clone(), line["deny"].clone()),
        (json!(true), json!(false)),
        "{line}"
    );
    assert_eq!(line["mcp-tool"], "echo", "{line}");
    assert_eq!(
        line["mcp-tool-parameters"],
        json!({"text": "logged", "secret": "[redacted]"}),
        "{line}"
    );

    let log = fx.stack.envoy_log();
    assert!(
        !log.contains("hunter2") && !log.contains("s3cr3t"),
        "a redacted value was logged"
    );
}

#[tokio::test]
async fn tool_parameters_stay_out_of_the_log_by_default() {
    let fx = start(json!({})).await;
    let resp = fx
        .call(1, "get_time", json!({"note": "do-not-log-me"}))
        .await;
    let request_id = assert_rpc_error(&resp, 403, -32003, json!(1), "get_time");
    let line = authorize_line(&fx.stack, &request_id).await;
    assert_eq!(line["mcp-tool"], "get_time", "{line}");
    assert!(line["mcp-tool-parameters"].is_null(), "{line}");
    assert!(!fx.stack.envoy_log().contains("do-not-log-me"));
}

// =============================================================================================
// 7. Counters
// =============================================================================================

async fn counter(stack: &Stack, name: &str) -> u64 {
    let full = format!("wasmcustom.mcp_warden.{name}");
    stack
        .envoy_stats("mcp_warden")
        .await
        .get(&full)
        .copied()
        .unwrap_or(0)
}

/// Runs `step` and asserts counter `name` went up by exactly one.
async fn assert_counts<F: std::future::Future<Output = ()>>(stack: &Stack, name: &str, step: F) {
    let before = counter(stack, name).await;
    step.await;
    let after = counter(stack, name).await;
    assert_eq!(
        after,
        before + 1,
        "wasmcustom.mcp_warden.{name}: {before} → {after}; stats:\n{:#?}",
        stack.envoy_stats("mcp_warden").await
    );
}

#[tokio::test]
async fn counters_record_each_refusal_class_batches_and_filtered_lists() {
    let fx = start(default_server()).await;

    assert_counts(&fx.stack, "denied_policy", async {
        let resp = fx.call(1, "get_time", json!({})).await;
        assert_eq!(resp.status, 403, "{}", resp.body);
    })
    .await;
    assert_counts(&fx.stack, "denied_oversize", async {
        let resp = fx
            .call(2, "echo", json!({"text": "x".repeat(2 * LIMIT)}))
            .await;
        assert_eq!(resp.status, 413, "{}", resp.body);
    })
    .await;
    assert_counts(&fx.stack, "denied_parse_error", async {
        let resp = fx
            .post(
                "tools/call",
                Some("echo"),
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"get_time"}}"#,
            )
            .await;
        assert_eq!(resp.status, 400, "{}", resp.body);
    })
    .await;
    assert_counts(&fx.stack, "denied_header_mismatch", async {
        let resp = fx
            .post(
                "tools/call",
                Some("echo"),
                &call_body(4, "get_time", json!({})),
            )
            .await;
        assert_eq!(resp.status, 400, "{}", resp.body);
    })
    .await;
    assert_counts(&fx.stack, "batches", async {
        let batch = json!([
            {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "a"}}},
            {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "get_time"}},
        ]);
        let resp = fx
            .post_with(
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream"),
                ],
                &batch.to_string(),
            )
            .await;
        assert_eq!(resp.status, 403, "{}", resp.body);
    })
    .await;
    assert_counts(&fx.stack, "tools_list_filtered", async {
        let resp = fx
            .post(
                "tools/list",
                None,
                &stateless_body(7, "tools/list", json!({})).to_string(),
            )
            .await;
        assert_eq!(as_set(tool_list(&resp.json())), set(&["whoami", "echo"]));
    })
    .await;
    // Only tools/list results that had tools removed count.
    let before = counter(&fx.stack, "tools_list_filtered").await;
    let resp = fx.call(8, "echo", json!({"text": "no list"})).await;
    assert_tool_text(&resp, "no list", "echo");
    assert_eq!(counter(&fx.stack, "tools_list_filtered").await, before);
}

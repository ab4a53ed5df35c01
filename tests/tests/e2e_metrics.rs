//! The filter's labelled metrics through real Envoy: requests by route, MCP method and
//! decision, tool calls by route and tool (a tool outside the policy's and the server's names
//! counted as `other`), and the decision's duration histogram, read from Envoy's
//! `/stats/prometheus` with the labels the rendered bootstrap's `stats_tags` take out of the
//! names; the plain `/stats` still lists them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_e2e::{mcp_post, raw_request, PromSample, Stack, StackOptions};

/// whoami and echo allowed by name, any tool starting `x_` allowed by prefix (so a name no
/// policy rule and no server lists can be allowed), `add` denied by name; `get_time` is
/// named nowhere in the policy, and denied.
const POLICY_YAML: &str = "
- allow: {or: [{mcp_method: {in: [initialize, notifications/initialized, tools/list, ping, server/discover]}}, {mcp_tool: {in: [whoami, echo]}}, {mcp_tool: {starts_with: x_}}]}
- deny: {or: [{mcp_tool: {is: add}}]}
";

fn options() -> StackOptions {
    StackOptions {
        config_hook: Some(Box::new(|config: &mut Value| {
            let policy: Value = serde_yaml::from_str(POLICY_YAML).unwrap();
            for route in config["routes"].as_array_mut().unwrap() {
                route["policy"] = policy.clone();
            }
            // Every request in the histogram, so that its counts can be compared exactly.
            config["envoy"]["duration_sample_every"] = 1.into();
        })),
        ..StackOptions::default()
    }
}

/// The samples of `name`, by their labels.
fn series(samples: &[PromSample], name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s.labels.clone().into_iter().collect(), s.value))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn requests(method: &str, decision: &str) -> Vec<(String, String)> {
    labels(&[
        ("route", "demo"),
        ("mcp_method_name", method),
        ("decision", decision),
    ])
}

fn tool_calls(tool: &str, decision: &str) -> Vec<(String, String)> {
    labels(&[
        ("route", "demo"),
        ("gen_ai_tool_name", tool),
        ("decision", decision),
    ])
}

#[tokio::test]
async fn requests_tool_calls_and_durations_reach_prometheus_with_their_labels() {
    let stack = Stack::start_with(options()).await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    let with_token = [("authorization", auth.as_str())];
    let url = stack.mcp_url();
    let call = |tool: &'static str| {
        let url = url.clone();
        let auth = auth.clone();
        async move {
            mcp_post(
                &url,
                &[("authorization", auth.as_str())],
                "tools/call",
                json!({"name": tool, "arguments": {"text": "hi"}}),
            )
            .await
        }
    };

    // Allowed: a tool the policy names (twice), and one only a prefix rule allows (the
    // server does not know it; the gateway's decision is still `allowed`).
    for _ in 0..2 {
        let resp = call("echo").await;
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    let resp = call("x_unlisted").await;
    assert_ne!(resp.status, 403, "{}", resp.body);
    // Denied by the policy: a tool it names, then one it does not (counted as `other`).
    let resp = call("add").await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    let resp = call("get_time").await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    // The server lists its tools: from now on `get_time` is a label of its own.
    let resp = mcp_post(&url, &with_token, "tools/list", json!({})).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = call("get_time").await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    // Unauthenticated: no token, a bad token, and a GET without one (no body: method `none`).
    let resp = mcp_post(&url, &[], "tools/list", json!({})).await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    let resp = mcp_post(
        &url,
        &[("authorization", "Bearer not.a.token")],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    let resp = raw_request(
        "GET",
        &url,
        &[
            ("accept", "text/event-stream"),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        None,
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    // Invalid: a body that is not JSON-RPC.
    let resp = raw_request(
        "POST",
        &url,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some("{not json"),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);

    let want_requests = BTreeMap::from([
        (requests("tools/call", "allowed"), 3.0),
        (requests("tools/call", "denied_policy"), 3.0),
        (requests("tools/list", "allowed"), 1.0),
        (requests("unknown", "unauthenticated"), 2.0),
        (requests("none", "unauthenticated"), 1.0),
        (requests("unknown", "invalid"), 1.0),
    ]);
    let want_tools = BTreeMap::from([
        (tool_calls("echo", "allowed"), 2.0),
        (tool_calls("other", "allowed"), 1.0),
        (tool_calls("add", "denied_policy"), 1.0),
        (tool_calls("other", "denied_policy"), 1.0),
        (tool_calls("get_time", "denied_policy"), 1.0),
    ]);
    let duration_count = |decision: &str| labels(&[("route", "demo"), ("decision", decision)]);
    let want_durations = BTreeMap::from([
        (duration_count("allowed"), 4.0),
        (duration_count("denied_policy"), 3.0),
        (duration_count("unauthenticated"), 3.0),
        (duration_count("invalid"), 1.0),
    ]);

    // The counters are added at each worker's tick (once a second), the histogram at Envoy's
    // stats flush: wait until the last expected series shows, then compare exactly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let samples = stack.envoy_prometheus().await;
        let ready = series(&samples, "mcp_warden_requests") == want_requests
            && series(&samples, "mcp_warden_tool_calls") == want_tools
            && series(&samples, "mcp_warden_request_duration_count") == want_durations;
        if ready || Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ours: Vec<&PromSample> = samples
        .iter()
        .filter(|s| s.name.starts_with("mcp_warden_re") || s.name.starts_with("mcp_warden_tool"))
        .collect();
    assert_eq!(
        series(&samples, "mcp_warden_requests"),
        want_requests,
        "{ours:#?}"
    );
    // The committed Grafana dashboard queries only series Envoy serves.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queried: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("mcp_warden_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(queried.len() >= 3, "{queried:?}");
    for name in &queried {
        assert!(
            samples.iter().any(|s| &s.name == name),
            "the dashboard queries {name}, which Envoy does not serve"
        );
    }
    assert_eq!(
        series(&samples, "mcp_warden_tool_calls"),
        want_tools,
        "{ours:#?}"
    );
    assert_eq!(
        series(&samples, "mcp_warden_request_duration_count"),
        want_durations,
        "{ours:#?}"
    );
    // The buckets are the bootstrap's, in microseconds: `le="1000000"` is the last finite one,
    // and every decision (a 403 without a call-out) was made within a second.
    let buckets: Vec<&PromSample> = samples
        .iter()
        .filter(|s| s.name == "mcp_warden_request_duration_bucket")
        .collect();
    let les: std::collections::BTreeSet<&str> = buckets
        .iter()
        .filter_map(|s| s.labels.get("le").map(String::as_str))
        .collect();
    for le in ["10", "25", "250", "1000", "250000", "1000000", "+Inf"] {
        assert!(les.contains(le), "bucket le={le} missing: {les:?}");
    }
    let within_a_second = buckets
        .iter()
        .find(|s| {
            s.labels.get("decision").map(String::as_str) == Some("denied_policy")
                && s.labels.get("le").map(String::as_str) == Some("1000000")
        })
        .map(|s| s.value);
    assert_eq!(within_a_second, Some(3.0), "{buckets:#?}");

    // The plain `/stats` keeps the full names.
    let plain = stack.envoy_stats("mcp_warden_").await;
    assert_eq!(
        plain.get(
            "wasmcustom.mcp_warden_requests;route=demo;mcp_method_name=tools/call;decision=allowed"
        ),
        Some(&3),
        "{plain:#?}"
    );
    assert_eq!(
        plain.get(
            "wasmcustom.mcp_warden_tool_calls;route=demo;gen_ai_tool_name=other;decision=allowed"
        ),
        Some(&1),
        "{plain:#?}"
    );
}

/// A route whose policy names no tool (the default: any signed-in user) does not filter
/// `tools/list`; the filter still reads the answer for the tool labels, and passes it on as
/// the server sent it.
#[tokio::test]
async fn tools_a_server_listed_get_their_own_label_on_a_route_that_does_not_filter() {
    let stack = Stack::start().await;
    let token = stack.mint_token(&stack.mcp_url()).await;
    let auth = format!("Bearer {token}");
    let with_token = [("authorization", auth.as_str())];
    let url = stack.mcp_url();
    let echo = json!({"name": "echo", "arguments": {"text": "hi"}});

    // Before any `tools/list`: no name is known.
    let resp = mcp_post(&url, &with_token, "tools/call", echo.clone()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = mcp_post(&url, &with_token, "tools/list", json!({})).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let answer = resp.json();
    let listed: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"echo") && listed.contains(&"add"),
        "{listed:?}"
    );
    // Passed on as sent: a length the server gave still holds.
    if let Some(length) = resp.header("content-length") {
        assert_eq!(length, resp.body.len().to_string());
    }
    let resp = mcp_post(&url, &with_token, "tools/call", echo).await;
    assert_eq!(resp.status, 200, "{}", resp.body);

    let want = BTreeMap::from([
        (tool_calls("echo", "allowed"), 1.0),
        (tool_calls("other", "allowed"), 1.0),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = stack.envoy_prometheus().await;
        let got = series(&samples, "mcp_warden_tool_calls");
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "{got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

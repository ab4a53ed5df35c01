//! Envoy's own access log carries the filter's authorize decision (filter state
//! `wasm.mcp_warden.authorize`, printed by the rendered `log_format`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_e2e::{mcp_post, Stack};

#[tokio::test]
async fn access_log_prints_the_authorize_decision() {
    let mut stack = Stack::start().await;
    let signed = stack.sign_in().await;
    let auth = format!("Bearer {}", signed.access_token);
    let resp = mcp_post(
        &stack.mcp_url(),
        &[
            ("authorization", auth.as_str()),
            ("x-request-id", "access-log-probe-1"),
        ],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Envoy writes the access log line when the stream ends; poll its output for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = stack.envoy.as_mut().unwrap().log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("access-log-probe-1") && l.contains(" mcp="))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the request:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let decision: Value = serde_json::from_str(line.split(" mcp=").nth(1).unwrap().trim()).unwrap();
    assert_eq!(decision["request-id"], "access-log-probe-1");
    assert_eq!(decision["mcp-method"], "tools/list");
    assert_eq!(decision["email"], "demo@example.com");
    assert_eq!(decision["allow"], true);
    assert_eq!(decision["route"], "demo");
}

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

/// Sends one tools/list with `request_id` and returns (the access log saw it, the filter wrote
/// its authorize line), once the access log line (written at the end of the stream, after the
/// decision) is there.
async fn probe(stack: &mut Stack, auth: &str, request_id: &str) -> (Value, bool) {
    let resp = mcp_post(
        &stack.mcp_url(),
        &[("authorization", auth), ("x-request-id", request_id)],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = stack.envoy.as_mut().unwrap().log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(request_id) && l.contains(" mcp="))
        {
            let decision: Value =
                serde_json::from_str(line.split(" mcp=").nth(1).unwrap().trim()).unwrap();
            let logged = log
                .lines()
                .any(|l| l.contains("mcp-warden: authorize ") && l.contains(request_id));
            return (decision, logged);
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {request_id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets Envoy's `wasm` log level through the admin endpoint.
async fn set_wasm_log_level(stack: &Stack, level: &str) {
    let url = format!(
        "http://127.0.0.1:{}/logging?wasm={level}",
        stack.ports.envoy_admin
    );
    let resp = reqwest::Client::new().post(url).send().await.unwrap();
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test]
async fn the_authorize_line_follows_the_wasm_log_level_at_runtime() {
    let mut stack = Stack::start().await;
    let signed = stack.sign_in().await;
    let auth = format!("Bearer {}", signed.access_token);

    let (decision, logged) = probe(&mut stack, &auth, "level-probe-info").await;
    assert!(logged, "at info the authorize line is written");
    assert_eq!(decision["allow"], true);

    // At warn the line is not even rendered for the log; the filter picks the level up on its
    // next tick (1 s), so probe until a decision goes unlogged.
    set_wasm_log_level(&stack, "warning").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let (decision, logged) = probe(&mut stack, &auth, &format!("level-probe-warn-{n}")).await;
        // The access log still gets the record: filter state does not depend on the level.
        assert_eq!(decision["request-id"], format!("level-probe-warn-{n}"));
        if !logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "authorize lines still written at warn"
        );
    }

    set_wasm_log_level(&stack, "info").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        n += 1;
        let (_, logged) = probe(&mut stack, &auth, &format!("level-probe-back-{n}")).await;
        if logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "authorize lines did not come back at info"
        );
    }
}

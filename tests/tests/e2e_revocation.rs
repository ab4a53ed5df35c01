//! The revocation feed end to end: a grant revoked at the token service (RFC 7009 `/revoke`)
//! is refused by every Envoy worker within 5 s, while its TE has minutes left; a feed that
//! stops answering fails closed after `grace_seconds` (or not, with `fail_open`) and recovers
//! by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::sleep;
use warden_e2e::{http_client, mcp_post, Stack, StackOptions};

/// Requests per batch, each on its own connection, so that both workers answer some of them
/// (Envoy spreads connections over its workers: 16 all on one worker is a 1 in 30 000 chance).
const BATCH: usize = 16;
const WORKERS: u32 = 2;

/// One batch of tool calls with `token`, in parallel: their statuses and the first body of
/// each status.
async fn batch(url: &str, token: &str) -> Vec<(u16, Option<String>, String)> {
    let mut tasks = Vec::new();
    for _ in 0..BATCH {
        let (url, auth) = (url.to_owned(), format!("Bearer {token}"));
        tasks.push(tokio::spawn(async move {
            let r = mcp_post(
                &url,
                &[("authorization", &auth)],
                "tools/call",
                json!({"name": "whoami", "arguments": {}}),
            )
            .await;
            (r.status, r.header("www-authenticate"), r.body.clone())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn statuses(b: &[(u16, Option<String>, String)]) -> Vec<u16> {
    b.iter().map(|(s, _, _)| *s).collect()
}

async fn revoke(stack: &Stack, client_id: &str, token: &str) {
    let r = http_client()
        .post(format!("{}/revoke", stack.issuer()))
        .form(&[("client_id", client_id), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "RFC 7009 /revoke");
}

fn with_revocation(feed: Value) -> StackOptions {
    StackOptions {
        envoy_workers: WORKERS,
        config_hook: Some(Box::new(move |config: &mut Value| {
            config["revocation"] = feed;
        })),
        ..StackOptions::default()
    }
}

#[tokio::test]
async fn a_revoked_grant_is_refused_by_every_worker_within_five_seconds() {
    let stack = Stack::start_with(StackOptions {
        envoy_workers: WORKERS,
        ..StackOptions::default()
    })
    .await;
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let signed = stack.sign_in().await;
        let te = signed.access_token.clone();
        let warm = batch(&signed.mcp_url, &te).await;
        assert!(
            statuses(&warm).iter().all(|s| *s == 200),
            "round {round}: tool calls before the revocation: {warm:?}"
        );
        let refresh = signed.refresh_token.clone().expect("a refresh token");
        let revoked = Instant::now();
        revoke(&stack, &signed.client_id, &refresh).await;
        // The TE has minutes left: only the feed can make the workers refuse it.
        let refused = loop {
            let b = batch(&signed.mcp_url, &te).await;
            if b.iter().all(|(s, _, _)| *s == 401) {
                break b;
            }
            assert!(
                b.iter().all(|(s, _, _)| *s == 200 || *s == 401),
                "round {round}: {b:?}"
            );
            assert!(
                revoked.elapsed() < Duration::from_secs(15),
                "round {round}: still served 15 s after the revocation: {:?}",
                statuses(&b)
            );
            sleep(Duration::from_millis(50)).await;
        };
        let latency = revoked.elapsed();
        worst = worst.max(latency);
        for (_, challenge, _) in &refused {
            let challenge = challenge.as_deref().unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer error=\"invalid_token\""),
                "{challenge}"
            );
        }
        assert!(
            latency < Duration::from_secs(5),
            "round {round}: the revocation took {latency:?} to reach every worker"
        );
        // And it stays refused.
        let again = batch(&signed.mcp_url, &te).await;
        assert!(statuses(&again).iter().all(|s| *s == 401), "{again:?}");
    }
    println!("worst revocation latency over every worker: {worst:?}");
    let stats = stack.envoy_stats("mcp_warden.denied_revoked").await;
    assert!(
        stats.values().sum::<u64>() >= 3 * BATCH as u64,
        "refusals counted: {stats:?}"
    );
    let polls = stack.envoy_stats("mcp_warden.revocation_poll_ok").await;
    assert!(polls.values().sum::<u64>() > 0, "{polls:?}");
}

#[tokio::test]
async fn a_stale_feed_fails_closed_with_a_jsonrpc_error_and_recovers_by_itself() {
    let mut stack =
        Stack::start_with(with_revocation(json!({"poll_ms": 200, "grace_seconds": 2}))).await;
    let signed = stack.sign_in().await;
    let te = signed.access_token.clone();
    assert!(statuses(&batch(&signed.mcp_url, &te).await)
        .iter()
        .all(|s| *s == 200));

    stack.token_service.kill().await;
    let stopped = Instant::now();
    let stale = loop {
        let b = batch(&signed.mcp_url, &te).await;
        if b.iter().all(|(s, _, _)| *s == 503) {
            break b;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "never refused while the feed is down: {:?}",
            statuses(&b)
        );
        sleep(Duration::from_millis(100)).await;
    };
    // Not before the grace: the feed had answered within it.
    assert!(stopped.elapsed() >= Duration::from_secs(2), "{stale:?}");
    let body: Value = serde_json::from_str(&stale[0].2).unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("revocation feed"), "{body}");
    let counted = stack
        .envoy_stats("mcp_warden.denied_revocation_feed_stale")
        .await;
    assert!(counted.values().sum::<u64>() > 0, "{counted:?}");
    // The worker that saw it stale says so in Envoy's log (written as it goes, read here).
    let said = Instant::now();
    while !stack
        .envoy_log()
        .contains("revocation feed has not answered")
    {
        assert!(
            said.elapsed() < Duration::from_secs(10),
            "no log line says the feed is stale"
        );
        sleep(Duration::from_millis(100)).await;
    }

    // The same Envoy serves again once the feed answers.
    stack.restart_token_service().await;
    let back = Instant::now();
    loop {
        let b = batch(&signed.mcp_url, &te).await;
        if b.iter().all(|(s, _, _)| *s == 200) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "never recovered: {:?}",
            statuses(&b)
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_fail_open_requests_are_served_while_the_feed_is_down() {
    let stack = Stack::start_with(with_revocation(
        json!({"poll_ms": 200, "grace_seconds": 1, "fail_open": true}),
    ))
    .await;
    let signed = stack.sign_in().await;
    let te = signed.access_token.clone();
    assert!(statuses(&batch(&signed.mcp_url, &te).await)
        .iter()
        .all(|s| *s == 200));
    let mut stack = stack;
    stack.token_service.kill().await;
    // Wait until the filter itself says the feed is stale.
    let stopped = Instant::now();
    while !stack
        .envoy_log()
        .contains("revocation feed has not answered")
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "the stale feed was never logged"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert!(stack
        .envoy_log()
        .contains("serving requests anyway (fail_open)"));
    let b = batch(&signed.mcp_url, &te).await;
    assert!(statuses(&b).iter().all(|s| *s == 200), "{b:?}");
}

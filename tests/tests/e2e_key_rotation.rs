//! Signing key rotation under traffic, against the real Envoy (one Envoy with two workers,
//! each with its own key set): a client keeps refreshing its TE and calling a tool while
//! `warden-token-service rotate-signing-key` runs, across the switch to the new key and past
//! the old key's retirement. No call fails, and the JWKS has the new key before any TE does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::Command;
use warden_e2e::{jwt, mcp_post, refresh_raw, Binaries, Stack, StackOptions};

/// Short enough that the old key retires within the test: it leaves the JWKS this long (plus
/// the filter's 30 s leeway) after the new key starts signing.
const ACCESS_TTL: u64 = 6;
/// The filter's periodic JWKS fetch (`envoy.jwks_refresh_seconds`).
const JWKS_REFRESH: u64 = 2;
/// Longer than the token service's key reload (5 s) plus the filter's refresh, so every
/// worker has the key before the first TE it signs.
const PUBLISH: u64 = 10;

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// `name: value` from the rotation's output.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .split(' ')
        .next()
        .unwrap()
}

#[tokio::test]
async fn rotation_under_traffic_fails_no_request() {
    let stack = Stack::start_with(StackOptions {
        access_token_ttl_seconds: ACCESS_TTL,
        envoy_workers: 2,
        config_hook: Some(Box::new(|c: &mut Value| {
            c["envoy"]["jwks_refresh_seconds"] = json!(JWKS_REFRESH);
            c["authorization_server"]["signing_key"]["rotation_publish_seconds"] = json!(PUBLISH);
        })),
        ..StackOptions::default()
    })
    .await;
    let old_kid = kids(&stack.jwks().await)[0].clone();
    let signed = stack.sign_in().await;
    let (mut te, mut rt) = (signed.access_token, signed.refresh_token.unwrap());
    let mut te_at = Instant::now();

    let mut rotation: Option<(String, u64, u64)> = None;
    let mut new_published_at: Option<u64> = None;
    let mut first_new_te_at: Option<u64> = None;
    let (mut calls, mut old_calls, mut new_calls) = (0u32, 0u32, 0u32);
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    loop {
        let now = jwt::now();
        let published = kids(&stack.jwks().await);
        if let Some((new_kid, _, _)) = &rotation {
            if new_published_at.is_none() && published.contains(new_kid) {
                new_published_at = Some(now);
            }
        }
        // Rotate once the old key has carried some traffic.
        if rotation.is_none() && started.elapsed() >= Duration::from_secs(2) {
            let out = Command::new(Binaries::token_service())
                .arg("rotate-signing-key")
                .arg("--config")
                .arg(&stack.config_path)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let new_kid = field(&stdout, "kid").to_owned();
            let signs_from: u64 = field(&stdout, "signs_from").parse().unwrap();
            let retire_at: u64 = field(&stdout, "previous_keys_retire_at").parse().unwrap();
            assert_ne!(new_kid, old_kid);
            assert!((PUBLISH - 1..=PUBLISH + 1).contains(&(signs_from - jwt::now())));
            assert_eq!(retire_at, signs_from + ACCESS_TTL + 30);
            rotation = Some((new_kid, signs_from, retire_at));
        }
        // Refresh the TE every second, as a client whose token is about to expire would.
        if te_at.elapsed() >= Duration::from_secs(1) {
            let r = refresh_raw(&stack.token_endpoint(), &signed.client_id, &rt).await;
            assert_eq!(r.status, 200, "refresh: {}", r.body);
            let t = r.json();
            te = t["access_token"].as_str().unwrap().to_owned();
            rt = t["refresh_token"].as_str().unwrap().to_owned();
            te_at = Instant::now();
        }
        let kid = jwt::decode_header(&te)["kid"].as_str().unwrap().to_owned();
        match &rotation {
            Some((new_kid, _, _)) if kid == *new_kid => {
                new_calls += 1;
                if first_new_te_at.is_none() {
                    first_new_te_at = Some(jwt::now());
                    assert!(
                        new_published_at.is_some(),
                        "a TE signed with {new_kid} before the JWKS showed it"
                    );
                }
            }
            _ => {
                assert_eq!(kid, old_kid);
                old_calls += 1;
            }
        }
        // New connections each, so both workers see traffic.
        for _ in 0..4 {
            let auth = format!("Bearer {te}");
            let resp = mcp_post(
                &stack.mcp_url(),
                &[("authorization", auth.as_str())],
                "tools/call",
                json!({"name": "whoami", "arguments": {}}),
            )
            .await;
            calls += 1;
            if resp.status != 200 {
                failures.push(format!(
                    "{} at {now} with {kid}: {}",
                    resp.status, resp.body
                ));
            }
        }
        // Past the retirement and a filter refresh after it: the old key is gone everywhere.
        if let Some((_, _, retire_at)) = rotation {
            if now > retire_at + JWKS_REFRESH + 2 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "test ran too long"
        );
        // Pacing the client, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let (new_kid, signs_from, _) = rotation.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    let published = new_published_at.unwrap();
    let first = first_new_te_at.expect("no TE was signed with the new key");
    assert!(
        published < first,
        "published {published}, first TE at {first}"
    );
    assert!(
        first >= signs_from,
        "signed before signs_from ({first} < {signs_from})"
    );
    assert!(old_calls > 0 && new_calls > 0, "{old_calls} / {new_calls}");
    assert_eq!(kids(&stack.jwks().await), vec![new_kid]);
}

//! Storage stays bounded (issue 18): a day of sign-ins, refreshes and revocations on a fast
//! clock, swept as the service sweeps, leaves behind only what live grants need. The
//! reference kept revoked refresh-token records forever, and its storage grew without bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::*;

const STEP: i64 = 600;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// `refresh_token_ttl_seconds` here: a family lives 8 h from its code exchange.
const FAMILY: i64 = 8 * HOUR;

struct Family {
    refresh_token: String,
    started: i64,
    revoke_at_step: Option<u32>,
    steps: u32,
}

fn counts(env: &TestEnv) -> BTreeMap<&'static str, u64> {
    env.state
        .store()
        .row_counts()
        .unwrap()
        .into_iter()
        .collect()
}

async fn start_family(env: &TestEnv, revoke_at_step: Option<u32>) -> Family {
    let (q, _cookie) = env
        .sign_in("public-app", "http://127.0.0.1/callback", &[])
        .await;
    let t = env
        .exchange_public("public-app", &q["code"], "http://127.0.0.1/callback")
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    Family {
        refresh_token: t.json()["refresh_token"].as_str().unwrap().to_owned(),
        started: env.state.now(),
        revoke_at_step,
        steps: 0,
    }
}

/// Refreshes the family, or revokes it when its turn has come; false once it is over.
async fn step(env: &TestEnv, f: &mut Family) -> bool {
    f.steps += 1;
    if f.revoke_at_step == Some(f.steps) {
        let r = env
            .post_form(
                "/revoke",
                &[("client_id", "public-app"), ("token", &f.refresh_token)],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        return false;
    }
    let r = env.refresh_public("public-app", &f.refresh_token).await;
    if env.state.now() >= f.started + FAMILY {
        assert_eq!(r.json()["error"], "invalid_grant", "the family is over");
        return false;
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    f.refresh_token = r.json()["refresh_token"].as_str().unwrap().to_owned();
    true
}

#[tokio::test]
async fn a_day_of_churn_sweeps_back_to_what_live_grants_need() {
    let env = TestEnv::with(|d| {
        many_sign_ins(config_yaml(d, "", "ES256")).replace(
            "refresh_token_ttl_seconds: 3600",
            &format!("refresh_token_ttl_seconds: {FAMILY}"),
        )
    });
    // The sweep as each replica runs it: every few minutes, one at a time.
    let sweep = |env: &TestEnv| assert!(env.state.sweep_as("replica-a").unwrap());

    // Day one: a sign-in every 10 minutes, every family refreshing every 10 minutes, one in
    // four revoked by its client, the rest running out at the end of their lifetime.
    let mut live: Vec<Family> = Vec::new();
    let mut peak = BTreeMap::new();
    for n in 0..(DAY / STEP) {
        live.push(start_family(&env, (n % 4 == 0).then_some(3)).await);
        let mut kept = Vec::new();
        for mut f in live.drain(..) {
            if step(&env, &mut f).await {
                kept.push(f);
            }
        }
        live = kept;
        env.advance(STEP);
        if n % 6 == 5 {
            sweep(&env);
        }
        for (table, rows) in counts(&env) {
            let p = peak.entry(table).or_insert(0);
            *p = (*p).max(rows);
        }
    }
    assert!(peak["refresh_tokens"] > 100, "the day churned: {peak:?}");

    // Day two and three: quiet. At the end, two users sign in and refresh a few times.
    env.advance(2 * DAY);
    sweep(&env);
    let mut keepers = vec![
        start_family(&env, None).await,
        start_family(&env, None).await,
    ];
    for _ in 0..3 {
        for f in &mut keepers {
            assert!(step(&env, f).await);
        }
        env.advance(STEP);
    }
    env.advance(301);
    sweep(&env);

    let after = counts(&env);
    // What two live families need: their grants; their current refresh tokens and the
    // rotated-out ones (kept until the family ends, to recognise a replay); their sign-in
    // sessions; their codes (kept a day past use, to recognise a replay). Nothing of day one.
    let expected: BTreeMap<&str, u64> = [
        ("grants", 2),
        ("refresh_tokens", 2 * 4),
        ("sessions", 2),
        ("auth_codes", 2),
        ("pending_flows", 0),
        ("login_attempts", 0),
        ("app_codes", 0),
        ("app_sessions", 0),
        ("upstream_flows", 0),
        ("idp_logins", 0),
        ("rate_buckets", 0),
        ("leases", 1),
        // Every sign-in came from a new browser: the account remembers its newest devices.
        ("devices", 20),
    ]
    .into_iter()
    .collect();
    for (table, rows) in &expected {
        assert_eq!(
            after[table], *rows,
            "{table}: {after:?} (peak during the day: {peak:?})"
        );
    }
    eprintln!("peak during the day: {peak:?}\nafter the sweep: {after:?}");
}

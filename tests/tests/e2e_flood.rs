//! Unauthenticated work is bounded (issue 16, item 3), against the real Envoy:
//! * junk bearer tokens that pass every cheap check (the real `kid`, `iss`, `aud`, times) but
//!   carry bad signatures, offered at a fixed rate far above what a worker could verify, cost
//!   no more signature checks than the budget, and a signed-in client's calls keep their
//!   latency;
//! * streamed answers of the demo MCP server do not stall behind Nagle's algorithm;
//! * requests that go away while the filter waits for the token service leave nothing behind:
//!   every call-out is answered (none cancelled), and Envoy's memory stays flat.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use warden_e2e::*;

/// The tests of this file measure latency and memory: one at a time, so that none is another's
/// load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The filter's default budget of failed signature checks per second per worker.
const BUDGET_PER_SECOND: u64 = 32;

/// A `tools/call` of `add` with `bearer` over `client` (a keep-alive client, like an MCP
/// client's), and how long it took.
async fn timed_call(client: &reqwest::Client, url: &str, bearer: &str) -> Duration {
    let body = stateless_body(
        1,
        "tools/call",
        json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
    );
    let started = Instant::now();
    let resp = client
        .post(url)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "add")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"result\""), "{text}");
    started.elapsed()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Tokens that pass every check but the signature: the demo user's claims for `audience`,
/// signed, then with the signature's bytes changed (each one different, so no cache helps).
async fn junk_tokens(stack: &Stack, audience: &str, n: usize) -> Vec<String> {
    let key = stack.signing_key().await;
    (0..n)
        .map(|i| {
            let mut claims = jwt::claims(&stack.issuer(), audience, jwt::now(), 300);
            claims["jti"] = json!(format!("junk-{i}"));
            let token = key.sign(&claims);
            let (rest, sig) = token.rsplit_once('.').unwrap();
            let mut sig = sig.as_bytes().to_vec();
            sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
            format!("{rest}.{}", String::from_utf8(sig).unwrap())
        })
        .collect()
}

/// Offers `per_second` requests a second over `connections` keep-alive connections (from
/// local addresses 127.0.0.2.. in turn) for `duration`: each connection sends at its fixed
/// pace (a late answer makes the next request leave at once, to keep the rate), one request
/// at a time (Envoy closes a connection it finds pipelined requests on after a local reply).
/// Returns the statuses counted (`status → n`).
async fn flood(
    envoy_port: u16,
    tokens: Vec<String>,
    per_second: u64,
    connections: usize,
    duration: Duration,
) -> std::collections::BTreeMap<u16, u64> {
    let interval = Duration::from_secs_f64(connections as f64 / per_second as f64);
    let mut tasks = Vec::new();
    let tokens = std::sync::Arc::new(tokens);
    for c in 0..connections {
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            let local: std::net::IpAddr = format!("127.0.0.{}", 2 + c % 4).parse().unwrap();
            let connect = || async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((local, 0).into()).unwrap();
                let stream = socket
                    .connect(([127, 0, 0, 1], envoy_port).into())
                    .await
                    .unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::io::BufReader::new(stream)
            };
            let mut conn = connect().await;
            let mut counts = std::collections::BTreeMap::new();
            let started = Instant::now();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = c;
            while started.elapsed() < duration {
                tick.tick().await;
                let token = &tokens[i % tokens.len()];
                i += connections;
                let req = format!(
                    "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1:{envoy_port}\r\nauthorization: Bearer {token}\r\n\r\n"
                );
                let status = match exchange(&mut conn, req.as_bytes()).await {
                    Some(status) => status,
                    None => {
                        conn = connect().await;
                        0
                    }
                };
                *counts.entry(status).or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut total = std::collections::BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.unwrap() {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

/// Sends one request and reads its whole response; its status, or `None` when the
/// connection broke.
async fn exchange(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    request: &[u8],
) -> Option<u16> {
    use tokio::io::AsyncBufReadExt;
    conn.get_mut().write_all(request).await.ok()?;
    let mut line = String::new();
    conn.read_line(&mut line).await.ok()?;
    let status = line.get(9..12)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.ok()?;
    Some(status)
}

/// The signed-in client's p99 while `tokens` flood Envoy at 2,500 requests a second, and the
/// flood's statuses.
async fn p99_under_flood(
    stack: &Stack,
    client: &reqwest::Client,
    url: &str,
    te: &str,
    tokens: Vec<String>,
) -> (Duration, std::collections::BTreeMap<u16, u64>) {
    let flooding = tokio::spawn(flood(
        stack.ports.envoy,
        tokens,
        2_500,
        32,
        Duration::from_secs(6),
    ));
    // Let the flood reach its rate, then measure the signed-in client under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measuring = Instant::now();
    let mut loaded = Vec::new();
    while measuring.elapsed() < Duration::from_secs(4) {
        loaded.push(timed_call(client, url, te).await);
    }
    (p99(loaded), flooding.await.unwrap())
}

async fn stat(stack: &Stack, name: &str) -> u64 {
    stack
        .envoy_stats(name)
        .await
        .get(name)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_badly_signed_tokens_costs_at_most_the_budget_and_signed_in_calls_keep_their_latency(
) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start().await;
    let url = stack.mcp_url();
    let te = stack.mint_token(&url).await;
    let client = warden_e2e::client_builder().no_proxy().build().unwrap();
    // Warm: the token verified and cached, the connection open.
    for _ in 0..20 {
        timed_call(&client, &url, &te).await;
    }
    let junk = junk_tokens(&stack, &url, 4096).await;
    // The control: the same tokens with a header that is not base64url, refused before any
    // signature check. Their flood measures what 2,500 refusals a second cost this machine
    // (its HTTP work, the flood client on the same cores), in the same round.
    let malformed: Vec<String> = junk.iter().map(|t| format!("!{}", &t[1..])).collect();
    let checks_before = stat(&stack, "wasmcustom.mcp_warden.signature_checks_failed").await;
    let started = Instant::now();
    // The latency is compared in up to five rounds (unloaded, under the control's flood, then
    // under the junk's), and one within the bound passes: a build, another program or the
    // previous test's processes going away on these 2-core machines can stall a round, while
    // a filter that verified every junk token would fail them all (2,500 signature checks a
    // second saturate a worker). The bound is three times the control's p99: junk that passes
    // the cheap checks costs its parse and the budget's look-up (about two to three times a
    // malformed token's refusal here), and a slow machine's own cost of the flood is not held
    // against the filter.
    let mut rounds = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let mut unloaded = Vec::new();
        for _ in 0..300 {
            unloaded.push(timed_call(&client, &url, &te).await);
        }
        let unloaded = p99(unloaded);
        let (control, control_statuses) =
            p99_under_flood(&stack, &client, &url, &te, malformed.clone()).await;
        assert_eq!(
            control_statuses.keys().collect::<Vec<_>>(),
            [&401],
            "only 401s: {control_statuses:?}"
        );
        let (loaded, statuses) = p99_under_flood(&stack, &client, &url, &te, junk.clone()).await;
        eprintln!(
            "signed-in p99: {unloaded:?} unloaded, {control:?} under the control's flood, \
             {loaded:?} under the junk's; junk answers {statuses:?}"
        );
        // Every junk request was refused.
        let round_refused = statuses.get(&401).copied().unwrap_or(0);
        assert!(
            round_refused >= 10_000,
            "the flood was offered: {statuses:?}"
        );
        assert_eq!(statuses.len(), 1, "only 401s: {statuses:?}");
        refused += round_refused;
        rounds.push((unloaded, control, loaded));
        if loaded <= control * 3 + Duration::from_millis(5) {
            break;
        }
    }
    // No more failed signature checks than the budget allows, the rest refused unchecked.
    // (The counters are added once a second.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seconds = started.elapsed().as_secs() + 1;
    let failed =
        stat(&stack, "wasmcustom.mcp_warden.signature_checks_failed").await - checks_before;
    let unchecked = stat(&stack, "wasmcustom.mcp_warden.signature_checks_refused").await;
    eprintln!("failed signature checks {failed} in {seconds} s, refused unchecked {unchecked}");
    assert!(
        failed <= BUDGET_PER_SECOND * seconds,
        "{failed} failed signature checks in about {seconds} s, budget {BUDGET_PER_SECOND}/s"
    );
    assert!(failed > 0, "bad signatures were checked within the budget");
    assert!(
        unchecked + failed >= refused - 100,
        "{unchecked} refused unchecked + {failed} checked, of {refused}"
    );
    assert!(
        rounds
            .iter()
            .any(|(_, control, loaded)| *loaded <= *control * 3 + Duration::from_millis(5)),
        "p99 of signed-in calls (unloaded, under the control's flood, under the junk's) in \
         every round: {rounds:?}"
    );
    // The flood's rejections were not all logged, one line each: the log stays bounded.
    let rejected_lines = stack
        .envoy_log()
        .matches("mcp-warden: rejected 401")
        .count();
    assert!(
        rejected_lines < 20 * (seconds as usize + 2),
        "{rejected_lines} rejection lines for {refused} rejections"
    );
}

#[tokio::test]
async fn streamed_answers_through_envoy_do_not_stall() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // With Nagle's algorithm on at the MCP server, an SSE event written behind an
    // unacknowledged one waits for Envoy's delayed ACK (~40 ms): about half the calls stalled.
    let stack = Stack::start().await;
    let url = stack.mcp_url();
    let te = stack.mint_token(&url).await;
    let client = warden_e2e::client_builder().no_proxy().build().unwrap();
    timed_call(&client, &url, &te).await;
    let mut slow = 0;
    let mut all = Vec::new();
    for _ in 0..60 {
        let took = timed_call(&client, &url, &te).await;
        if took >= Duration::from_millis(35) {
            slow += 1;
        }
        all.push(took);
    }
    all.sort();
    assert!(slow < 6, "{slow} of 60 calls took 35 ms or more: {all:?}");
}

/// The status if the call was answered within `wait`; `None` when the client gave up.
async fn try_abandoned_call(url: &str, bearer: &str, wait: Duration) -> Option<u16> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}});
    let resp = tokio::time::timeout(
        wait,
        warden_e2e::client_builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(url)
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string())
            .send(),
    )
    .await;
    resp.ok().map(|r| r.unwrap().status().as_u16())
}

fn envoy_rss_kib(stack: &Stack) -> u64 {
    let pid = stack.envoy.as_ref().unwrap().pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_while_the_token_service_answers_leave_nothing_behind() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // The identity assertion route waits for the token service; a slow token service (a
    // stand-in that answers after 150 ms) lets every client give up first.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = slow.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    // One answer per whole request (head and `content-length` body): a request
                    // that arrives in two reads must not get two answers, the second of which
                    // would answer the next request at once.
                    let whole = |p: &[u8]| {
                        let end = p.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&p[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        (p.len() >= end + length).then_some(end + length)
                    };
                    let used = loop {
                        if let Some(used) = whole(&pending) {
                            break used;
                        }
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    };
                    pending.drain(..used);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let body = r#"{"error":"unknown_user"}"#;
                    let resp = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let stack = Stack::start_with(StackOptions {
        config_hook: Some(Box::new(move |c: &mut Value| {
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", free_port()));
            c["routes"][0]["pass_identity_headers"] = json!(true);
        })),
        bootstrap_hook: Some(Box::new(move |yaml: &mut String| {
            // The internal cluster points at the slow stand-in.
            let at = yaml.find("- name: warden_token_service_internal").unwrap();
            let port_at = at + yaml[at..].find("port_value: ").unwrap() + "port_value: ".len();
            let end = port_at + yaml[port_at..].find(' ').unwrap();
            yaml.replace_range(port_at..end, &slow_addr.port().to_string());
        })),
        ..StackOptions::default()
    })
    .await;
    let url = stack.mcp_url();
    let te = stack.mint_token(&url).await;
    // Until the filter holds the JWKS, a call is answered at once (503); then it waits for
    // the token service.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(status) = try_abandoned_call(&url, &te, Duration::from_millis(60)).await {
        assert!(
            Instant::now() < deadline,
            "never waited for the token service: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = envoy_rss_kib(&stack);
    let calls_before = stat(
        &stack,
        "cluster.warden_token_service_internal.upstream_rq_total",
    )
    .await;

    // 20 calls every 100 ms, each abandoned before the token service answers (150 ms): the
    // worker keeps counting a call-out until Envoy must have answered it, so at most 64 are
    // ever in flight, and the rest are refused at once.
    let rounds = 40;
    let per_round = 20;
    let mut most_in_flight = 0;
    for _ in 0..rounds {
        let calls =
            (0..per_round).map(|_| try_abandoned_call(&url, &te, Duration::from_millis(30)));
        for outcome in futures_util::future::join_all(calls).await {
            // Abandoned, or refused at once while the worker's call-outs are at their bound.
            assert!(matches!(outcome, None | Some(503)), "{outcome:?}");
        }
        tokio::time::sleep(Duration::from_millis(70)).await;
        most_in_flight =
            most_in_flight.max(stat(&stack, "wasmcustom.mcp_warden.callouts_in_flight").await);
    }
    // The call-outs in flight never exceed the worker's bound, whatever clients do.
    assert!(most_in_flight <= 64, "{most_in_flight} call-outs in flight");
    assert!(
        most_in_flight > 0,
        "call-outs were in flight when their requests went away"
    );
    // Every call-out is answered, none cancelled: they leave as the root context's, which
    // Envoy answers whatever became of the request (the SDK's table entry for a call-out
    // goes when its answer comes); the worker's own count returns to zero.
    let made = stat(
        &stack,
        "cluster.warden_token_service_internal.upstream_rq_total",
    )
    .await
        - calls_before;
    assert!(made > 0, "the filter called the token service");
    let total = calls_before + made;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = answered.load(std::sync::atomic::Ordering::SeqCst);
        let in_flight = stat(&stack, "wasmcustom.mcp_warden.callouts_in_flight").await;
        if done >= total && in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {total} call-outs answered, {in_flight} still counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = stat(
        &stack,
        "cluster.warden_token_service_internal.upstream_rq_tx_reset",
    )
    .await;
    assert_eq!(
        cancelled, 0,
        "call-outs of requests that went away were cancelled"
    );
    let rss_after = envoy_rss_kib(&stack);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "Envoy grew from {rss_before} KiB to {rss_after} KiB over {} abandoned calls",
        rounds * per_round
    );
}

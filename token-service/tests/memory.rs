#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Memory stays flat across sign-ins: the real binary, default-cost Argon2 hashes, 1,000
//! sign-ins from 16 concurrent browsers, peak and final RSS read from /proc.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The demo user's hash from the default config: Argon2id m=19456 (19 MiB), t=2, p=1,
/// the parameters `hash-password` uses. Password `warden-demo`.
const DEFAULT_COST_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$On0ZcxndKh4alUZfDfbNtw$eStTcLOU4qFwL515FsqGk4fnXkkpEX0X2ThyXxCZRqg";
const DEFAULT_COST_PASSWORD: &str = "warden-demo";
const SIGN_INS: usize = 1000;
const BROWSERS: usize = 16;
const MIB: u64 = 1024 * 1024;

fn config(dir: &std::path::Path) -> String {
    let users: String = (0..BROWSERS)
        .map(|i| {
            format!(
                "      - {{email: user{i}@example.com, password_hash: \"{DEFAULT_COST_HASH}\"}}\n"
            )
        })
        .collect();
    format!(
        r#"
authorization_server:
  issuer: http://127.0.0.1:9100
  listen: 127.0.0.1:0
  # Every sign-in comes from 127.0.0.1: lift the per-address limit on starting them.
  pending_flows: {{rate_limit_per_minute: 10000}}
storage:
  sqlite: {db}
identity_provider:
  local:
    users:
{users}
clients:
  - client_id: memtest
    redirect_uris: [{REDIRECT}]
    skip_consent: true
routes:
  - name: demo
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:9200/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#,
        db = dir.join("warden.db").display(),
    )
}

/// Starts `serve`; returns the child and its address once it logs that it is listening.
/// Its log keeps being drained, so a full pipe never stalls it.
fn spawn_service(config: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
        .arg("serve")
        .env("WARDEN_CONFIG", config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let addr: String = line[at + "listening on http://".len()..]
                    .chars()
                    .take_while(|c| *c != '"')
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service reports that it listens");
    (child, addr.parse().unwrap())
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker).unwrap() + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }
}

/// One HTTP/1.1 exchange on its own connection.
async fn http(addr: SocketAddr, head: &str, body: &str) -> HttpResponse {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("the service answers within a minute");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// authorize → sign-in form → POST /login → the redirect with a code.
async fn sign_in(addr: SocketAddr, email: &str) {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", "memtest")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let form = http(addr, &format!("GET /authorize?{query} HTTP/1.1"), "").await;
    assert_eq!(form.status, 200, "{}", form.body);
    let flow_cookie = form
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("flow", &form.hidden("flow"))
        .append_pair("csrf", &form.hidden("csrf"))
        .append_pair("email", email)
        .append_pair("password", DEFAULT_COST_PASSWORD)
        .finish();
    let r = http(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: {flow_cookie}"
        ),
        &body,
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(r.header("location").unwrap().contains("code="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_service_stays_under_256_mib_across_1000_default_cost_sign_ins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let (mut child, addr) = spawn_service(&path);
    let pid = child.id();

    // One sign-in per browser first, so lazily built state is in the baseline.
    let warm: Vec<_> = (0..BROWSERS)
        .map(|i| tokio::spawn(async move { sign_in(addr, &format!("user{i}@example.com")).await }))
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let rss_before = proc_status_bytes(pid, "VmRSS");

    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let browsers: Vec<_> = (0..BROWSERS)
        .map(|i| {
            let done = done.clone();
            tokio::spawn(async move {
                let email = format!("user{i}@example.com");
                while done.fetch_add(1, Ordering::SeqCst) < SIGN_INS {
                    sign_in(addr, &email).await;
                }
            })
        })
        .collect();
    for b in browsers {
        b.await.unwrap();
    }
    let elapsed = started.elapsed();
    let peak = proc_status_bytes(pid, "VmHWM");
    let rss_after = proc_status_bytes(pid, "VmRSS");
    child.kill().unwrap();
    let _ = child.wait();

    eprintln!(
        "{SIGN_INS} sign-ins in {:.1} s ({:.0} ms each, {BROWSERS} at once); RSS {} MiB before, {} MiB after, peak {} MiB",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / SIGN_INS as f64,
        rss_before / MIB,
        rss_after / MIB,
        peak / MIB,
    );
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
    assert!(
        rss_after < rss_before + 32 * MIB,
        "RSS grew from {} MiB to {} MiB",
        rss_before / MIB,
        rss_after / MIB
    );
}

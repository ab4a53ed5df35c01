//! `bench-token`: the token service's load generator (`make bench`, `bench/run.py`). Against a
//! running token service (public listener `--issuer`, internal listener `--internal`) it
//!
//! 1. sets up, once: plays the browser through one whole sign-in for the `--route` server
//!    (the gateway's login form with the password, then the upstream provider's login and
//!    consent, so the user's upstream token is stored in the vault), exchanges the code, then
//!    signs in `--clients` more times with the session cookie (no password) so that every
//!    client has a refresh-token family of its own;
//! 2. measures, one phase after the other, each with `--clients` concurrent clients, a
//!    `--warmup` (not measured) then `--duration` seconds, at most `--max-requests` requests:
//!    * `refresh`: `POST /token grant_type=refresh_token`, each client rotating its own family
//!      (each request needs the previous answer's refresh token);
//!    * `lookup`: `POST /internal/v1/upstream-token` on the internal listener, signed with the
//!      internal credential as the filter signs (`InternalKey::authorization`), for the stored
//!      (warm) upstream token;
//!    * `signin`: a sign-in without the password check: `GET /authorize` with the session
//!      cookie (answered with the code: the client skips consent and the upstream account is
//!      connected), then the code exchange at `POST /token` with the PKCE verifier.
//!
//! Every request must succeed (2xx with the expected field); the first failure ends the run
//! with exit 1. It prints one JSON object: per phase the requests, throughput, latency
//! percentiles, and the CPU seconds of this process, of `--server-pid` and of the processes
//! named `--cpu-of-comm` (PostgreSQL's backends) over the measured part. One thread (Tokio
//! current-thread runtime): the harness pins it to the load core.

#[allow(dead_code)]
#[path = "../../../../tests/src/html.rs"]
mod html;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore as _};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{redirect, Client, Method};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use url::Url;
use warden_core::internal_api::{InternalKey, NONCE_BYTES, UPSTREAM_TOKEN_PATH};

const USAGE: &str = "usage: bench-token --issuer URL --internal HOST:PORT --credential-file FILE \
--resource URL --route NAME --client-id ID --redirect-uri URL --email E --password P \
--upstream-user U --upstream-password P [--clients 16] [--warmup 1] [--duration 3] \
[--max-requests 100000] [--max-signins 8000] [--server-pid PID] [--cpu-of-comm NAME] \
[--phases refresh,lookup,signin]";

struct Args {
    issuer: String,
    internal: String,
    credential_file: PathBuf,
    resource: String,
    route: String,
    client_id: String,
    redirect_uri: String,
    email: String,
    password: String,
    upstream_user: String,
    upstream_password: String,
    clients: usize,
    warmup: f64,
    duration: f64,
    max_requests: usize,
    max_signins: usize,
    server_pid: Option<u32>,
    cpu_of_comm: Option<String>,
    phases: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut map = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected {flag:?}\n{USAGE}");
        };
        let value = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        map.insert(name.to_owned(), value);
    }
    let mut take = |k: &str| {
        map.remove(k)
            .ok_or_else(|| anyhow!("--{k} is required\n{USAGE}"))
    };
    let args = Args {
        issuer: take("issuer")?,
        internal: take("internal")?,
        credential_file: take("credential-file")?.into(),
        resource: take("resource")?,
        route: take("route")?,
        client_id: take("client-id")?,
        redirect_uri: take("redirect-uri")?,
        email: take("email")?,
        password: take("password")?,
        upstream_user: take("upstream-user")?,
        upstream_password: take("upstream-password")?,
        clients: take("clients").unwrap_or_else(|_| "16".into()).parse()?,
        warmup: take("warmup").unwrap_or_else(|_| "1".into()).parse()?,
        duration: take("duration").unwrap_or_else(|_| "3".into()).parse()?,
        max_requests: take("max-requests")
            .unwrap_or_else(|_| "100000".into())
            .parse()?,
        max_signins: take("max-signins")
            .unwrap_or_else(|_| "8000".into())
            .parse()?,
        server_pid: take("server-pid").ok().map(|p| p.parse()).transpose()?,
        cpu_of_comm: take("cpu-of-comm").ok(),
        phases: take("phases")
            .unwrap_or_else(|_| "refresh,lookup,signin".into())
            .split(',')
            .map(str::to_owned)
            .collect(),
    };
    if let Some(k) = map.keys().next() {
        bail!("unknown option --{k}\n{USAGE}");
    }
    if args.clients == 0 || args.duration <= 0.0 {
        bail!("--clients and --duration must be positive");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc (utime + stime, all threads).

fn clk_tck() -> f64 {
    // Linux's USER_HZ is 100 on every architecture the harness runs on.
    100.0
}

fn proc_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

fn pid_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| proc_cpu(&s))
        .unwrap_or(0.0)
}

/// CPU of every process whose name (`comm`) is `comm`, e.g. PostgreSQL's server and backends.
fn comm_cpu(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            s.find('(')
                .zip(s.rfind(')'))
                .is_some_and(|(a, b)| &s[a + 1..b] == comm)
        })
        .filter_map(|s| proc_cpu(&s))
        .sum()
}

#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    server: f64,
    comm: f64,
}

fn cpu_now(args: &Args) -> Cpu {
    Cpu {
        own: pid_cpu("self"),
        server: args
            .server_pid
            .map(|p| pid_cpu(&p.to_string()))
            .unwrap_or(0.0),
        comm: args.cpu_of_comm.as_deref().map(comm_cpu).unwrap_or(0.0),
    }
}

// ---------------------------------------------------------------------------------------------
// The browser: the first sign-in (with the password and the upstream consent), then sign-ins
// with the session cookie.

fn browser() -> Result<Client> {
    Ok(Client::builder()
        .cookie_store(true)
        .redirect(redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let verifier = URL_SAFE_NO_PAD.encode(raw);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

fn authorize_url(args: &Args, pkce: &Pkce) -> Result<Url> {
    let mut url = Url::parse(&format!("{}/authorize", args.issuer))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &args.client_id)
        .append_pair("redirect_uri", &args.redirect_uri)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &args.resource)
        .append_pair("state", "bench");
    Ok(url)
}

fn code_of(location: &Url) -> Result<String> {
    location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow!("the client was sent back without a code: {location}"))
}

const CONSENT_WORDS: &[&str] = &["allow", "approve", "accept", "authoriz", "consent", "grant"];

fn approving_button(form: &html::Form) -> Option<&html::Button> {
    form.buttons
        .iter()
        .find(|b| {
            let hay = format!(
                "{} {} {}",
                b.name.as_deref().unwrap_or(""),
                b.value.as_deref().unwrap_or(""),
                b.text
            )
            .to_ascii_lowercase();
            CONSENT_WORDS.iter().any(|w| hay.contains(w)) && !hay.contains("deny")
        })
        .or_else(|| form.buttons.first())
}

/// Plays the browser from `url` until the redirect to the client: fills the gateway's login
/// form with `--email`/`--password`, another site's (the upstream provider's) with the
/// upstream user, and approves consent forms. Returns the code.
async fn play(browser: &Client, args: &Args, mut url: Url) -> Result<String> {
    let gateway = Url::parse(&args.issuer)?.origin().ascii_serialization();
    let mut body: Option<(Method, Vec<(String, String)>)> = None;
    for _ in 0..16 {
        let resp = match body.take() {
            None => browser.get(url.clone()).send().await?,
            Some((Method::GET, fields)) => {
                let mut u = url.clone();
                u.query_pairs_mut().extend_pairs(fields.iter());
                browser.get(u).send().await?
            }
            Some((method, fields)) => {
                browser
                    .request(method, url.clone())
                    .form(&fields)
                    .send()
                    .await?
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("{status} from {url} without Location"))?;
            let next = url.join(location)?;
            if next.as_str().starts_with(&args.redirect_uri) {
                return code_of(&next);
            }
            url = next;
            continue;
        }
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{status} from {url}: {text}");
        }
        let forms = html::forms(&text);
        let Some(form) = forms
            .iter()
            .find(|f| f.has_password())
            .or_else(|| forms.first())
        else {
            bail!("{url} answered a page without a form: {text}");
        };
        let ours = url.origin().ascii_serialization() == gateway;
        let (user, password) = if ours {
            (&args.email, &args.password)
        } else {
            (&args.upstream_user, &args.upstream_password)
        };
        let mut fields = Vec::new();
        for input in &form.inputs {
            let n = input.name.to_ascii_lowercase();
            let value = if input.kind == "password" || n == "password" {
                password.clone()
            } else if input.kind == "email"
                || ["email", "username", "login", "user"].contains(&n.as_str())
            {
                user.clone()
            } else {
                input.value.clone()
            };
            fields.push((input.name.clone(), value));
        }
        if let Some(b) = approving_button(form) {
            if let (Some(n), Some(v)) = (&b.name, &b.value) {
                fields.push((n.clone(), v.clone()));
            }
        }
        url = url.join(form.action.as_deref().unwrap_or(""))?;
        let method = if form.method == "get" {
            Method::GET
        } else {
            Method::POST
        };
        body = Some((method, fields));
    }
    bail!("no redirect to {} after 16 steps", args.redirect_uri)
}

/// A sign-in with the session cookie: `GET /authorize` must answer the code at once.
async fn authorize_with_session(browser: &Client, args: &Args, pkce: &Pkce) -> Result<String> {
    let url = authorize_url(args, pkce)?;
    let resp = browser.get(url.clone()).send().await?;
    let status = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match location {
        Some(l) if status.is_redirection() => {
            let next = url.join(&l)?;
            if !next.as_str().starts_with(&args.redirect_uri) {
                bail!("/authorize with a session sent the browser to {next}, not to the client");
            }
            code_of(&next)
        }
        _ => bail!(
            "/authorize with a session answered {status}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

async fn token_request(client: &Client, args: &Args, form: &[(&str, &str)]) -> Result<Value> {
    let resp = client
        .post(format!("{}/token", args.issuer))
        .form(form)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("POST /token answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn exchange(client: &Client, args: &Args, code: &str, pkce: &Pkce) -> Result<String> {
    let answer = token_request(
        client,
        args,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &args.redirect_uri),
            ("client_id", &args.client_id),
            ("code_verifier", &pkce.verifier),
            ("resource", &args.resource),
        ],
    )
    .await?;
    answer["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the code exchange gave no refresh token: {answer}"))
}

async fn refresh(client: &Client, args: &Args, token: &str) -> Result<String> {
    let answer = token_request(
        client,
        args,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", &args.client_id),
        ],
    )
    .await?;
    if answer["access_token"].as_str().is_none() {
        bail!("the refresh gave no access token: {answer}");
    }
    answer["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the refresh gave no refresh token: {answer}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn lookup(client: &Client, args: &Args, key: &InternalKey, body: &[u8]) -> Result<()> {
    let mut nonce = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut nonce);
    let auth = key.authorization("POST", UPSTREAM_TOKEN_PATH, body, unix_now(), &nonce);
    let resp = client
        .post(format!("http://{}{UPSTREAM_TOKEN_PATH}", args.internal))
        .header(AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() || !bytes.starts_with(b"{\"access_token\":\"") {
        bail!(
            "upstream-token look-up answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phases.

struct Shared {
    latencies_us: Vec<u32>,
    started: usize,
    failure: Option<String>,
}

/// Runs `clients` loops of `step` (client index → one request) until the phase ends: a warm-up
/// (not recorded), then `duration` seconds or `max` requests in all, whichever comes first.
async fn phase<F, Fut>(args: &Args, name: &str, max: usize, step: F) -> Result<Value>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let shared = Rc::new(RefCell::new(Shared {
        latencies_us: Vec::new(),
        started: 0,
        failure: None,
    }));
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let cpu_at_start: Rc<RefCell<Option<(Instant, Cpu)>>> = Rc::new(RefCell::new(None));
    let step = &step;
    let worker = |i: usize| {
        let shared = shared.clone();
        let cpu_at_start = cpu_at_start.clone();
        async move {
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                {
                    let mut s = shared.borrow_mut();
                    if s.failure.is_some() || s.started >= max {
                        break;
                    }
                    s.started += 1;
                }
                if now >= measure_from {
                    let mut c = cpu_at_start.borrow_mut();
                    if c.is_none() {
                        *c = Some((now, cpu_now(args)));
                    }
                }
                let begun = Instant::now();
                let outcome = step(i).await;
                let took = begun.elapsed();
                let mut s = shared.borrow_mut();
                match outcome {
                    Ok(()) if begun >= measure_from => s
                        .latencies_us
                        .push(took.as_micros().min(u32::MAX as u128) as u32),
                    Ok(()) => {}
                    Err(e) => {
                        s.failure.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                }
            }
        }
    };
    futures_join_all((0..args.clients).map(worker).collect()).await;
    let stopped = Instant::now();
    let cpu_end = cpu_now(args);
    let mut s = shared.borrow_mut();
    if let Some(f) = s.failure.take() {
        bail!("{name}: {f}");
    }
    let Some((started, cpu0)) = *cpu_at_start.borrow() else {
        bail!("{name}: the warm-up took the whole phase (or its request budget)");
    };
    let seconds = stopped.duration_since(started).as_secs_f64();
    let capped = s.started >= max;
    let lat = &mut s.latencies_us;
    lat.sort_unstable();
    let n = lat.len();
    if n == 0 {
        bail!("{name}: no request completed in the measured part");
    }
    let pct = |p: f64| lat[((n as f64 * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
    let rps = n as f64 / seconds;
    let server = cpu_end.server - cpu0.server;
    Ok(json!({
        "requests": n,
        "seconds": seconds,
        "capped": capped,
        "rps": rps,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "loadgen_cpu_s": cpu_end.own - cpu0.own,
        "server_cpu_s": server,
        "comm_cpu_s": cpu_end.comm - cpu0.comm,
        "server_cpu_us_per_request": server * 1e6 / n as f64,
        "per_server_core": if server > 0.0 { n as f64 / server } else { 0.0 },
    }))
}

/// `join_all` for a handful of futures on one thread, without the futures crate.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    // The futures borrow from this frame, so they are driven here rather than spawned.
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

fn read_credential(path: &Path) -> Result<InternalKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the internal credential {}", path.display()))?;
    InternalKey::from_credential(text.trim())
        .map_err(|e| anyhow!("the internal credential does not parse: {e:?}"))
}

async fn run(args: Args) -> Result<Value> {
    let key = read_credential(&args.credential_file)?;
    let browser = browser()?;
    let api = Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.clients * 2)
        .timeout(Duration::from_secs(30))
        .build()?;

    // Setup: the first sign-in (password, upstream consent), then one family per client.
    let t = Instant::now();
    let first = pkce();
    let code = play(&browser, &args, authorize_url(&args, &first)?).await?;
    let first_token = exchange(&api, &args, &code, &first).await?;
    let first_sign_in_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut families = vec![first_token];
    while families.len() < args.clients {
        let p = pkce();
        let code = authorize_with_session(&browser, &args, &p).await?;
        families.push(exchange(&api, &args, &code, &p).await?);
    }
    let body = json!({"sub": args.email, "route": args.route}).to_string();
    lookup(&api, &args, &key, body.as_bytes()).await?;

    let mut phases = serde_json::Map::new();
    for name in &args.phases {
        let result = match name.as_str() {
            "refresh" => {
                let families: Vec<RefCell<String>> =
                    families.iter().cloned().map(RefCell::new).collect();
                let (families, api, args) = (&families, &api, &args);
                phase(args, name, args.max_requests, |i| async move {
                    let current = families[i].borrow().clone();
                    let next = refresh(api, args, &current).await?;
                    *families[i].borrow_mut() = next;
                    Ok(())
                })
                .await?
            }
            "lookup" => {
                let (api, args, key, body) = (&api, &args, &key, body.as_bytes());
                phase(args, name, args.max_requests, |_| async move {
                    lookup(api, args, key, body).await
                })
                .await?
            }
            "signin" => {
                let (browser, api, args) = (&browser, &api, &args);
                phase(args, name, args.max_signins, |_| async move {
                    let p = pkce();
                    let code = authorize_with_session(browser, args, &p).await?;
                    exchange(api, args, &code, &p).await.map(drop)
                })
                .await?
            }
            other => bail!("unknown phase {other:?} (refresh, lookup, signin)"),
        };
        eprintln!("bench-token: {name}: {result}");
        phases.insert(name.clone(), result);
    }
    Ok(json!({
        "clients": args.clients,
        "warmup": args.warmup,
        "duration": args.duration,
        "first_sign_in_ms": first_sign_in_ms,
        "phases": phases,
    }))
}

fn main() -> std::process::ExitCode {
    let outcome = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(args))
    });
    match outcome {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-token: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

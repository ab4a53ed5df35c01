//! Several token-service replicas on one store (issue 18: "Replicas share one deployment",
//! "Access ends within 5 seconds"). The store is [`REPLICA_STORAGE`] (one SQLite file in WAL
//! mode today; one line to switch to another backend).
//!
//! * Any replica serves any step of any flow, with the outcome one replica gives, and the
//!   limits (sign-in throttle, registration rate) count across replicas.
//! * A revocation made on either replica reaches every worker of every Envoy within 5 s.
//! * A replica killed under load: what started after it died succeeds on the other, no grant
//!   or upstream token is lost, no refresh lease outlives its expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Url;
use serde_json::{json, Value};
use warden_e2e::replicas::*;
use warden_e2e::*;

const APP: &str = "/app";
const GH: &str = "/gh";
const LOCKED: &str = "locked@example.com";
const LOCKED_PASSWORD: &str = "locked-password";

/// `iss`, `sub`, `aud`, `client_id`, `scope`: what a TE says, whichever replica signed it.
fn outcome(te: &str) -> Value {
    let c = jwt::decode_claims(te);
    json!({
        "iss": c["iss"], "sub": c["sub"], "aud": c["aud"],
        "client_id": c["client_id"], "scope": c["scope"],
    })
}

fn kid(te: &str) -> String {
    use base64::Engine as _;
    let head = te.split('.').next().unwrap();
    let head: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    head["kid"].as_str().unwrap().to_owned()
}

/// The gateway's login form for `LOCKED` with a wrong password, posted to `replica`.
async fn wrong_password(d: &Deployment, browser: &Browser, login: &Page, replica: usize) -> Page {
    let form = login.form();
    let fields: Vec<(String, String)> = form_fields(&form)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "email" => (k, LOCKED.to_owned()),
            "password" => (k, "not-the-password".to_owned()),
            _ => (k, v),
        })
        .collect();
    let action = login.url.join(form.action.as_deref().unwrap()).unwrap();
    browser
        .post(&on(&d.replicas[replica].url(), &action), &fields)
        .await
}

/// A fresh browser's login form, from `/authorize` at `replica`.
async fn login_form(d: &Deployment, client_id: &str, replica: usize) -> (Browser, Page) {
    let browser = Browser::new();
    let (_, challenge) = pkce();
    let url = authorize_url(
        &d.replicas[replica].url(),
        client_id,
        &redirect_uri(),
        &d.resource("/mcp"),
        &challenge,
    );
    let page = browser.get(&Url::parse(&url).unwrap()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.form().has_password(), "{}", page.body);
    (browser, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_any_step_with_the_outcome_of_one() {
    let provider_dir = tempfile::tempdir().unwrap();
    let provider = OAuthProvider::start(provider_dir.path(), free_port(), &[]).await;
    let gated = DemoServer::start_with(
        provider_dir.path(),
        free_port(),
        &["--require-bearer-introspect", &provider.introspect_url()],
    )
    .await;
    let (provider_url, gated_url) = (provider.url(), gated.mcp_url());
    let mut opts = DeploymentOptions::new("any_step", 3, 2).with_config(move |c| {
        let from = c["routes"][0]["from"].clone();
        let demo_origin = c["routes"][0]["to"]
            .as_str()
            .unwrap()
            .trim_end_matches("/mcp")
            .to_owned();
        c["identity_provider"]["local"]["users"]
            .as_array_mut()
            .unwrap()
            .push(local_user(LOCKED, LOCKED_PASSWORD));
        c["authorization_server"]["registration"] = json!({"rate_limit_per_minute": 3});
        // The registration limit's client address comes from X-Forwarded-For.
        c["authorization_server"]["trusted_proxies"] = json!(["127.0.0.1"]);
        let routes = c["routes"].as_array_mut().unwrap();
        routes.push(json!({
            "name": "chat", "from": from, "prefix": APP, "to": demo_origin,
            "mcp": {"client": {}},
            "policy": {"allow": {"and": [{"authenticated_user": true}]}},
        }));
        routes.push(json!({
            "name": "gh", "from": from, "prefix": GH, "to": gated_url,
            "mcp": {"server": {"upstream_oauth2": {
                "client_id": PROVIDER_CLIENT_ID,
                "client_secret": PROVIDER_CLIENT_SECRET,
                "scopes": ["repo"],
                "endpoint": {
                    "auth_url": format!("{provider_url}/authorize"),
                    "token_url": format!("{provider_url}/token"),
                },
            }}},
            "policy": {"allow": {"and": [{"authenticated_user": true}]}},
        }));
    });
    opts.envoy_workers = 1;
    let d = Deployment::start(opts).await;
    let bases: Vec<String> = d.replicas.iter().map(Replica::url).collect();
    let redirect = redirect_uri();
    let me = Credentials {
        gateway: (DEMO_EMAIL, DEMO_PASSWORD),
        provider: Some((PROVIDER_USER, PROVIDER_PASSWORD)),
    };

    // DCR on replica 0, /authorize on replica 1, the login form posted to replica 0, consent
    // to replica 1 (the browser's cookies carried over), the code exchanged on replica 2.
    let reg = register(&bases[0], &redirect, None).await;
    assert_eq!(reg.status, 201, "{}", reg.body);
    let client_id = reg.json()["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let start = authorize_url(
        &bases[1],
        &client_id,
        &redirect,
        &d.resource("/mcp"),
        &challenge,
    );
    let browser = Browser::new();
    let (back, steps) = drive(&browser, &start, &redirect, &bases, me, |path| match path {
        "/login" => 0,
        _ => 1,
    })
    .await;
    let served: Vec<(String, String)> = steps
        .iter()
        .map(|s| (s.origin.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        served,
        [
            (bases[1].clone(), "/authorize".to_owned()),
            (bases[0].clone(), "/login".to_owned()),
            (bases[1].clone(), "/consent".to_owned()),
        ],
        "{steps:?}"
    );
    let tokens = exchange(&bases[2], &client_id, &redirect, &code_of(&back), &verifier).await;
    let te = tokens["access_token"].as_str().unwrap().to_owned();
    let first = outcome(&te);
    assert_eq!(first["iss"], d.issuer());
    assert_eq!(first["sub"], DEMO_EMAIL);
    assert_eq!(first["client_id"], client_id.as_str());
    assert!(
        first["aud"].to_string().contains(&d.resource("/mcp")),
        "{first}"
    );

    // Refresh on each replica in turn: every rotation is seen by the next replica, every TE
    // says the same and is signed with the one shared key; each works through both Envoys
    // (Envoy 0 fetches its JWKS from replica 0, Envoy 1 from replica 1).
    let mut tes = vec![te.clone()];
    let mut refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    for base in &bases {
        let t = refresh(base, &client_id, &refresh_token).await;
        refresh_token = t["refresh_token"].as_str().unwrap().to_owned();
        let te = t["access_token"].as_str().unwrap().to_owned();
        assert_eq!(outcome(&te), first, "refreshed at {base}");
        assert_eq!(kid(&te), kid(&tes[0]), "refreshed at {base}");
        tes.push(te);
    }
    for (i, te) in tes.iter().enumerate() {
        for m in 0..d.envoys.len() {
            let r = d.whoami(m, te).await;
            assert_eq!(r.status, 200, "TE {i} through Envoy {m}: {}", r.body);
            assert!(r.json()["result"]["isError"] == json!(false), "{}", r.body);
        }
    }

    // The sign-in throttle counts failures on every replica: 3 on replica 0 and 2 on
    // replica 1 lock the account, so replica 2 refuses even the right password.
    let (b0, mut page) = login_form(&d, &client_id, 0).await;
    for _ in 0..3 {
        page = wrong_password(&d, &b0, &page, 0).await;
        assert_eq!(page.status, 401, "{}", page.body);
    }
    let (b1, mut page) = login_form(&d, &client_id, 1).await;
    for _ in 0..2 {
        page = wrong_password(&d, &b1, &page, 1).await;
        assert_eq!(page.status, 401, "{}", page.body);
    }
    let (b2, page) = login_form(&d, &client_id, 2).await;
    let (back, _) = {
        let form = page.form();
        let fields: Vec<(String, String)> = form_fields(&form)
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "email" => (k, LOCKED.to_owned()),
                "password" => (k, LOCKED_PASSWORD.to_owned()),
                _ => (k, v),
            })
            .collect();
        let action = page.url.join(form.action.as_deref().unwrap()).unwrap();
        (b2.post(&on(&bases[2], &action), &fields).await, ())
    };
    assert_eq!(
        back.status, 429,
        "5 failures on replicas 0 and 1 lock the account on replica 2: {}",
        back.body
    );

    // The registration rate (3 a minute per client address) is one budget for all replicas.
    for (i, base) in bases.iter().enumerate() {
        let r = register(base, &redirect, Some("198.51.100.7")).await;
        assert_eq!(r.status, 201, "registration {i} on replica {i}: {}", r.body);
    }
    let r = register(&bases[0], &redirect, Some("198.51.100.7")).await;
    assert_eq!(
        r.status, 429,
        "the 4th registration of the minute, on replica 0: {}",
        r.body
    );
    // Another address still registers: the limit is that address's.
    let r = register(&bases[1], &redirect, Some("198.51.100.8")).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // An app session opened through Envoy 0 (whose internal cluster is replica 0) after
    // signing in on replica 2, then used through Envoy 1 (replica 1).
    let app = Browser::new();
    let page_url = Url::parse(&format!("{}{APP}/page", d.envoys[0].url())).unwrap();
    let resp = app
        .client
        .get(page_url.clone())
        .header("host", d.public_authority())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let sign_in = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        sign_in.starts_with(&format!("{}/app/sign-in", d.issuer())),
        "{sign_in}"
    );
    let callback_endpoint = format!("http://{}/.warden/app/callback", d.public_authority());
    let (callback, steps) = drive(&app, &sign_in, &callback_endpoint, &bases, me, |_| 2).await;
    assert!(
        steps.iter().all(|s| s.origin == bases[2]),
        "signed in on replica 2: {steps:?}"
    );
    let resp = app.get(&callback).await;
    assert_eq!(
        resp.status, 302,
        "the callback through Envoy 0: {}",
        resp.body
    );
    d.demo.clear_recorded().await;
    let resp = app
        .client
        .get(format!("{}{APP}/page", d.envoys[1].url()))
        .header("host", d.public_authority())
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status().as_u16(), 302, "signed in through Envoy 1");
    let recorded = d.demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let app_te = recorded_header(&recorded[0], "authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("the app got no TE: {recorded:?}"))
        .to_owned();
    let claims = jwt::decode_claims(&app_te);
    assert_eq!(claims["client_id"], "warden-app:chat");
    assert_eq!(claims["sub"], DEMO_EMAIL);

    // An upstream consent started on replica 1, the provider's callback landing on replica 2,
    // the code exchanged on replica 0: the TI reaches the MCP server through Envoy 1.
    let reg = register(&bases[0], &redirect, None).await;
    assert_eq!(reg.status, 201, "{}", reg.body);
    let gh_client = reg.json()["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let start = authorize_url(
        &bases[1],
        &gh_client,
        &redirect,
        &d.resource(GH),
        &challenge,
    );
    let upstream = Browser::new();
    let (back, steps) = drive(&upstream, &start, &redirect, &bases, me, |path| {
        if path == "/upstream/callback" {
            2
        } else {
            1
        }
    })
    .await;
    let callback_step = steps
        .iter()
        .find(|s| s.path == "/upstream/callback")
        .unwrap_or_else(|| panic!("no provider callback: {steps:?}"));
    assert_eq!(callback_step.origin, bases[2], "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| s.origin == provider.url() && s.path == "/authorize"),
        "{steps:?}"
    );
    let tokens = exchange(&bases[0], &gh_client, &redirect, &code_of(&back), &verifier).await;
    let gh_te = tokens["access_token"].as_str().unwrap();
    gated.clear_recorded().await;
    let r = d
        .envoy_post(
            1,
            GH,
            gh_te,
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, d.logs());
    let seen = gated.recorded().await;
    let ti = seen
        .iter()
        .find_map(|req| recorded_header(req, "authorization"))
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert!(ti.starts_with("Bearer dat_"), "the provider's token: {ti}");
}

/// A public client every replica knows from the config, consent skipped: the revocation and
/// load tests make many grants without meeting the registration rate.
fn preregistered(c: &mut Value, client_id: &str) {
    c["clients"] = json!([{
        "client_id": client_id,
        "token_endpoint_auth_method": "none",
        "redirect_uris": [redirect_uri()],
        "skip_consent": true,
    }]);
    c["authorization_server"]["pending_flows"] = json!({"rate_limit_per_minute": 10000});
}

/// A fresh grant for route `/mcp` signed in (or, with the browser's session, only authorized)
/// on `base`: (TE, refresh token).
async fn fresh_grant(
    d: &Deployment,
    browser: &Browser,
    client_id: &str,
    replica: usize,
) -> (String, String) {
    let bases: Vec<String> = d.replicas.iter().map(Replica::url).collect();
    let (verifier, challenge) = pkce();
    let start = authorize_url(
        &bases[replica],
        client_id,
        &redirect_uri(),
        &d.resource("/mcp"),
        &challenge,
    );
    let me = Credentials {
        gateway: (DEMO_EMAIL, DEMO_PASSWORD),
        provider: None,
    };
    let (back, _) = drive(browser, &start, &redirect_uri(), &bases, me, |_| replica).await;
    let t = exchange(
        &bases[replica],
        client_id,
        &redirect_uri(),
        &code_of(&back),
        &verifier,
    )
    .await;
    (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// Tool calls with `te` through Envoy `m`, each on a connection of its own: the statuses, and
/// how many connections each worker accepted meanwhile.
async fn probe(
    d: &Deployment,
    m: usize,
    te: &str,
    n: usize,
) -> (Vec<(u16, Option<String>)>, Vec<u64>) {
    let before = d.envoys[m].connections_per_worker().await;
    let calls = (0..n).map(|_| async {
        let r = d.whoami(m, te).await;
        (r.status, r.header("www-authenticate"))
    });
    let out = futures_util::future::join_all(calls).await;
    let after = d.envoys[m].connections_per_worker().await;
    let per_worker = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    (out, per_worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_either_replica_reaches_every_worker_of_every_envoy_within_five_seconds() {
    const CLIENT: &str = "revocation-client";
    const ROUNDS: usize = 24;
    /// Requests per Envoy per probe: both workers answer some (checked by their counters).
    const PROBE: usize = 8;
    let d = Deployment::start(
        DeploymentOptions::new("revocation", 2, 2).with_config(|c| preregistered(c, CLIENT)),
    )
    .await;
    assert_eq!(
        (d.envoys[0].replica, d.envoys[1].replica),
        (0, 1),
        "each Envoy polls its own replica"
    );
    let bases: Vec<String> = d.replicas.iter().map(Replica::url).collect();
    let browser = Browser::new();
    let mut latencies: Vec<(Duration, &str, usize)> = Vec::new();
    let mut signed_out_at: Option<u64> = None;
    for round in 0..ROUNDS {
        let on_replica = round % 2;
        let sign_out = round % 4 == 3;
        // A sign-out covers the user's TEs issued up to its second: this round's TE is
        // issued after it.
        if let Some(at) = signed_out_at {
            let deadline = Instant::now() + Duration::from_secs(2);
            while jwt::now() <= at {
                assert!(Instant::now() < deadline, "the clock stands still");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (te, refresh_token) = fresh_grant(&d, &browser, CLIENT, 1 - on_replica).await;
        for m in 0..d.envoys.len() {
            let (warm, _) = probe(&d, m, &te, PROBE).await;
            assert!(
                warm.iter().all(|(s, _)| *s == 200),
                "round {round}, Envoy {m} before: {warm:?}"
            );
        }
        // The sign-out form is fetched first; the clock starts when the revoking answer is back.
        let csrf = if sign_out {
            let page = browser
                .get(&Url::parse(&format!("{}/sign-out", bases[on_replica])).unwrap())
                .await;
            assert_eq!(page.status, 200, "{}", page.body);
            Some(form_fields(&page.form()))
        } else {
            None
        };
        let revoked = match csrf {
            Some(fields) => {
                let url = Url::parse(&format!("{}/sign-out", bases[on_replica])).unwrap();
                let page = browser.post(&url, &fields).await;
                let at = Instant::now();
                assert_eq!(page.status, 200, "{}", page.body);
                assert!(page.body.contains("signed out"), "{}", page.body);
                signed_out_at = Some(jwt::now());
                at
            }
            None => {
                revoke(&bases[on_replica], CLIENT, &refresh_token).await;
                Instant::now()
            }
        };
        let mut pending: Vec<usize> = (0..d.envoys.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &m in &pending {
                let (answers, per_worker) = probe(&d, m, &te, PROBE).await;
                assert!(
                    answers.iter().all(|(s, _)| *s == 200 || *s == 401),
                    "round {round}, Envoy {m}: {answers:?}"
                );
                let refused = answers.iter().all(|(s, _)| *s == 401);
                if refused && per_worker.iter().all(|n| *n > 0) {
                    for (_, challenge) in &answers {
                        let challenge = challenge.as_deref().unwrap_or_default();
                        assert!(
                            challenge.starts_with("Bearer error=\"invalid_token\""),
                            "{challenge}"
                        );
                    }
                } else {
                    still.push(m);
                }
            }
            pending = still;
            assert!(
                revoked.elapsed() < Duration::from_secs(15),
                "round {round}: Envoys {pending:?} still serve the TE 15 s after the revocation"
            );
        }
        let latency = revoked.elapsed();
        let kind = if sign_out { "sign-out" } else { "revoke" };
        latencies.push((latency, kind, on_replica));
    }
    let mut sorted: Vec<Duration> = latencies.iter().map(|(l, _, _)| *l).collect();
    sorted.sort();
    let worst = latencies.iter().max_by_key(|(l, _, _)| *l).unwrap();
    eprintln!(
        "revocation latency over 2 Envoys x 2 workers x 2 replicas on {}: count {}, median {:?}, worst {:?} ({} on replica {}), sign-outs {}",
        d.backend(),
        latencies.len(),
        sorted[sorted.len() / 2],
        worst.0,
        worst.1,
        worst.2,
        latencies.iter().filter(|(_, k, _)| *k == "sign-out").count(),
    );
    for (i, (latency, kind, replica)) in latencies.iter().enumerate() {
        assert!(
            *latency < Duration::from_secs(5),
            "round {i}: the {kind} on replica {replica} took {latency:?} to reach every worker"
        );
    }
    for (m, e) in d.envoys.iter().enumerate() {
        let polls = e.stats("mcp_warden.revocation_poll_ok").await;
        assert!(
            polls.values().sum::<u64>() > 0,
            "Envoy {m} polled its replica: {polls:?}"
        );
    }
}

/// A client-side balancer: round robin over the replicas, and a replica whose connection is
/// refused is not chosen again (the request moves to a live one).
struct Balancer {
    bases: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    dead: Vec<std::sync::atomic::AtomicBool>,
}

impl Balancer {
    fn new(bases: Vec<String>) -> Balancer {
        let dead = bases.iter().map(|_| Default::default()).collect();
        Balancer {
            bases,
            next: Default::default(),
            dead,
        }
    }

    fn pick(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.bases.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Relaxed) % n;
            if !self.dead[i].load(Relaxed) {
                return i;
            }
        }
        0
    }

    fn refused(&self, i: usize) {
        self.dead[i].store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `POST /token` on a live replica: `Err` when the answer was lost (not a refused
    /// connection, which moves on).
    async fn token(&self, form: &[(&str, &str)]) -> Result<(u16, Value), String> {
        for _ in 0..3 {
            let i = self.pick();
            match try_token(&self.bases[i], form).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_connect() => self.refused(i),
                Err(e) => return Err(format!("replica {i}: {e}")),
            }
        }
        Err("no replica took the connection".into())
    }
}

/// One request of the load: when it started, and what went wrong.
#[derive(Debug)]
struct Op {
    started: Instant,
    what: &'static str,
    error: Option<String>,
}

/// A grant a load client holds; `ambiguous` when a refresh's answer was lost (the replica
/// died with it in flight: whether the token rotated is unknown).
#[derive(Debug)]
struct Grant {
    refresh_token: String,
    ambiguous: bool,
}

/// The upstream tokens' rows in the store: (user, has an access token, refresh lease).
fn upstream_rows(d: &Deployment) -> Vec<(String, bool, Option<i64>)> {
    if let Some(url) = d.postgres_url() {
        return std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query(
                "SELECT \"user\"::TEXT, access_token IS NOT NULL, refresh_lease
                 FROM upstream_tokens ORDER BY \"user\"",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
        })
        .join()
        .unwrap();
    }
    let path = d.sqlite_path().expect("a SQLite or PostgreSQL store");
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut q = db
        .prepare("SELECT user, access_token IS NOT NULL, refresh_lease FROM upstream_tokens ORDER BY user")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn upstream_lookup(
    d: &Deployment,
    replica: usize,
    user: &str,
) -> Result<(u16, Value), reqwest::Error> {
    internal_post(
        &d.replicas[replica].internal_url(),
        &d.internal_credential(),
        "/internal/v1/upstream-token",
        &json!({"sub": user, "route": "gh"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing() {
    const CLIENT: &str = "load-client";
    const CLIENTS: usize = 4;
    const UPSTREAM_USERS: usize = 3;
    const LOAD: Duration = Duration::from_secs(4);
    const KILL_AFTER: Duration = Duration::from_millis(1500);
    const PASSWORD: &str = "load-password";
    const VICTIM: usize = 0;
    const SURVIVOR: usize = 1;
    let provider_dir = tempfile::tempdir().unwrap();
    // Provider access tokens live 2 s: a look-up after 1 s refreshes.
    let provider =
        OAuthProvider::start(provider_dir.path(), free_port(), &["--access-ttl", "2"]).await;
    let provider_url = provider.url();
    let mut d = Deployment::start(DeploymentOptions::new("replica_dies", 2, 0).with_config(
        move |c| {
            preregistered(c, CLIENT);
            let users = c["identity_provider"]["local"]["users"]
                .as_array_mut()
                .unwrap();
            for i in 0..CLIENTS {
                users.push(local_user(&format!("load{i}@example.com"), PASSWORD));
            }
            for i in 0..UPSTREAM_USERS {
                users.push(local_user(&format!("up{i}@example.com"), PASSWORD));
            }
            let from = c["routes"][0]["from"].clone();
            let to = c["routes"][0]["to"].clone();
            c["routes"].as_array_mut().unwrap().push(json!({
                "name": "gh", "from": from, "prefix": GH, "to": to,
                "mcp": {"server": {"upstream_oauth2": {
                    "client_id": PROVIDER_CLIENT_ID,
                    "client_secret": PROVIDER_CLIENT_SECRET,
                    "scopes": ["repo"],
                    "endpoint": {
                        "auth_url": format!("{provider_url}/authorize"),
                        "token_url": format!("{provider_url}/token"),
                    },
                }}},
                "policy": {"allow": {"and": [{"authenticated_user": true}]}},
            }));
        },
    ))
    .await;
    let bases: Vec<String> = d.replicas.iter().map(Replica::url).collect();

    // Upstream tokens for up0..up2, consented through either replica.
    for i in 0..UPSTREAM_USERS {
        let email = format!("up{i}@example.com");
        let (verifier, challenge) = pkce();
        let start = authorize_url(
            &bases[i % 2],
            CLIENT,
            &redirect_uri(),
            &d.resource(GH),
            &challenge,
        );
        let creds = Credentials {
            gateway: (&email, PASSWORD),
            provider: Some((PROVIDER_USER, PROVIDER_PASSWORD)),
        };
        let (back, _) = drive(
            &Browser::new(),
            &start,
            &redirect_uri(),
            &bases,
            creds,
            |_| i % 2,
        )
        .await;
        exchange(
            &bases[i % 2],
            CLIENT,
            &redirect_uri(),
            &code_of(&back),
            &verifier,
        )
        .await;
    }
    let rows = upstream_rows(&d);
    assert_eq!(rows.len(), UPSTREAM_USERS, "{rows:?}");

    // The load: each client refreshes its grants and signs in again, on both replicas.
    let balancer = Balancer::new(bases.clone());
    let began = Instant::now();
    let load = (0..CLIENTS).map(|k| {
        let (balancer, d, bases) = (&balancer, &d, &bases);
        async move {
            let email = format!("load{k}@example.com");
            let creds = Credentials {
                gateway: (&email, PASSWORD),
                provider: None,
            };
            let mut ops = Vec::new();
            let mut grants: Vec<Grant> = Vec::new();
            let mut turn = 0usize;
            while began.elapsed() < LOAD {
                turn += 1;
                let started = Instant::now();
                let live = grants.iter().rposition(|g| !g.ambiguous);
                let (what, error) = match live {
                    Some(g) if !turn.is_multiple_of(3) => {
                        let token = grants[g].refresh_token.clone();
                        let answer = balancer
                            .token(&[
                                ("grant_type", "refresh_token"),
                                ("refresh_token", &token),
                                ("client_id", CLIENT),
                            ])
                            .await;
                        let error = match answer {
                            Ok((200, t)) => {
                                grants[g].refresh_token =
                                    t["refresh_token"].as_str().unwrap().to_owned();
                                None
                            }
                            Ok((status, body)) => Some(format!("{status} {body}")),
                            Err(e) => {
                                grants[g].ambiguous = true;
                                Some(e)
                            }
                        };
                        ("refresh", error)
                    }
                    _ => {
                        let browser = Browser::with_pool(false);
                        let (verifier, challenge) = pkce();
                        let start = authorize_url(
                            &bases[0],
                            CLIENT,
                            &redirect_uri(),
                            &d.resource("/mcp"),
                            &challenge,
                        );
                        let signed = try_drive(
                            &browser,
                            &start,
                            &redirect_uri(),
                            bases,
                            creds,
                            |_| balancer.pick(),
                            |i| balancer.refused(i),
                        )
                        .await;
                        let error = match signed {
                            Ok((back, _)) => {
                                let code = code_of(&back);
                                match balancer
                                    .token(&[
                                        ("grant_type", "authorization_code"),
                                        ("code", &code),
                                        ("redirect_uri", &redirect_uri()),
                                        ("code_verifier", &verifier),
                                        ("client_id", CLIENT),
                                    ])
                                    .await
                                {
                                    Ok((200, t)) => {
                                        grants.push(Grant {
                                            refresh_token: t["refresh_token"]
                                                .as_str()
                                                .unwrap()
                                                .to_owned(),
                                            ambiguous: false,
                                        });
                                        None
                                    }
                                    Ok((status, body)) => {
                                        Some(format!("code exchange: {status} {body}"))
                                    }
                                    Err(e) => Some(format!("code exchange: {e}")),
                                }
                            }
                            Err(e) => Some(e),
                        };
                        ("sign-in", error)
                    }
                };
                ops.push(Op {
                    started,
                    what,
                    error,
                });
            }
            (ops, grants)
        }
    });

    // The kill: replica 0 dies (SIGKILL) while it holds up0's refresh lease: the provider
    // answers slowly, so the refresh is in flight; the lease is read from the store first.
    let victim_pid = d.replicas[VICTIM].proc.pid().expect("replica 0 runs");
    let victim_port = d.replicas[VICTIM].port;
    let (internal_url, credential) = (d.replicas[VICTIM].internal_url(), d.internal_credential());
    let killer = async {
        tokio::time::sleep(KILL_AFTER).await;
        provider.hook("delay-token", "ms=1500").await;
        let victim_lookup = tokio::spawn(async move {
            internal_post(
                &internal_url,
                &credential,
                "/internal/v1/upstream-token",
                &json!({"sub": "up0@example.com", "route": "gh"}),
            )
            .await
            .map(|(status, _)| status)
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        let lease = loop {
            let rows = upstream_rows(&d);
            if let Some(lease) = rows
                .iter()
                .find(|r| r.0 == "up0@example.com")
                .and_then(|r| r.2)
            {
                break lease;
            }
            assert!(
                Instant::now() < deadline,
                "replica 0 never took up0's refresh lease: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let status = tokio::process::Command::new("kill")
            .args(["-KILL", &victim_pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -KILL {victim_pid}");
        // Dead once its port refuses connections (the kernel closes a killed process's
        // sockets and releases its file locks as it exits).
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", victim_port))
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "replica 0 still accepts connections"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = Instant::now();
        provider.hook("delay-token", "ms=0").await;
        (killed, lease, victim_lookup.await.unwrap())
    };
    let (results, (killed, lease, victim_answer)) =
        tokio::join!(futures_util::future::join_all(load), killer);
    d.replicas[VICTIM].proc.kill().await;

    // Requests in flight at the kill may fail; every request started after it succeeded (the
    // settle window is zero: the victim was reaped, so a new connection to it is refused at
    // once and the balancer moves on).
    let mut counts = std::collections::BTreeMap::<(&str, bool, bool), usize>::new();
    let mut after_kill_failures = Vec::new();
    for (ops, _) in &results {
        for op in ops {
            let after = op.started >= killed;
            *counts
                .entry((op.what, after, op.error.is_none()))
                .or_default() += 1;
            if after && op.error.is_some() {
                after_kill_failures.push(op);
            }
        }
    }
    eprintln!(
        "load of {CLIENTS} clients for {LOAD:?}, replica 0 killed at {:?}: (kind, after the kill, ok) → count {counts:?}; the victim's look-up: {victim_answer:?}",
        killed - began
    );
    assert!(
        after_kill_failures.is_empty(),
        "requests started after the kill failed: {after_kill_failures:?}"
    );
    for what in ["refresh", "sign-in"] {
        for after in [false, true] {
            assert!(
                counts.get(&(what, after, true)).copied().unwrap_or(0) > 0,
                "no {what} succeeded {} the kill: {counts:?}",
                if after { "after" } else { "before" }
            );
        }
    }

    // Every grant still refreshes on the survivor. A grant whose refresh answer was lost
    // with the victim is either unrotated (200) or rotated (its old token then is a replay:
    // invalid_grant, RFC 9700 §4.14.2); the load never saw its new token.
    let mut ambiguous = (0, 0);
    let mut grants_total = 0;
    for (_, grants) in &results {
        for g in grants {
            grants_total += 1;
            let (status, body) = try_token(
                &bases[SURVIVOR],
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &g.refresh_token),
                    ("client_id", CLIENT),
                ],
            )
            .await
            .unwrap();
            if g.ambiguous {
                assert!(
                    status == 200 || body["error"] == "invalid_grant",
                    "{status} {body}"
                );
                if status == 200 {
                    ambiguous.0 += 1;
                } else {
                    ambiguous.1 += 1;
                }
            } else {
                assert_eq!(
                    status, 200,
                    "a grant of the load no longer refreshes: {body}"
                );
            }
        }
    }
    eprintln!(
        "{grants_total} grants refresh on the survivor; refreshes lost in flight: {} unrotated, {} rotated",
        ambiguous.0, ambiguous.1
    );

    // The victim's lease on up0 runs out, and then the survivor refreshes up0's token; every
    // upstream token is still there and served, and no lease is left held.
    let waited = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (status, body) = upstream_lookup(&d, SURVIVOR, "up0@example.com")
            .await
            .unwrap();
        if status == 200 {
            assert!(
                jwt::now() as i64 >= lease,
                "taken over before the lease {lease} expired"
            );
            assert!(
                body["access_token"].as_str().unwrap().starts_with("dat_"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 503, "while the dead replica's lease lasts: {body}");
        assert!(
            Instant::now() < deadline,
            "up0's token never refreshed after the lease {lease}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the dead replica's refresh lease was taken over after {:?}",
        waited.elapsed()
    );
    for i in 0..UPSTREAM_USERS {
        let user = format!("up{i}@example.com");
        let (status, body) = upstream_lookup(&d, SURVIVOR, &user).await.unwrap();
        assert_eq!(status, 200, "{user}: {body}");
        assert!(
            body["access_token"].as_str().unwrap().starts_with("dat_"),
            "{user}: {body}"
        );
    }
    let now = jwt::now() as i64;
    let rows = upstream_rows(&d);
    assert_eq!(rows.len(), UPSTREAM_USERS, "{rows:?}");
    for (user, has_token, lease) in &rows {
        assert!(has_token, "{user}'s upstream token was lost: {rows:?}");
        assert!(
            lease.is_none_or(|l| l > now),
            "{user}'s lease is held past its expiry: {rows:?}"
        );
    }
    let stats = provider.stats().await;
    assert_eq!(
        stats["reuse_detected"], 0,
        "no upstream refresh token was replayed: {stats}"
    );
}

/// The kids of the JWKS `base` publishes.
async fn published_kids(base: &str) -> Vec<String> {
    let jwks: Value = http_client()
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// `name: value` from `rotate-signing-key`'s output.
fn rotation_field(out: &str, name: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// Issue 18: `rotate-signing-key` run against the shared store while a client keeps
/// refreshing (alternating replicas) and calling a tool through two Envoys of two workers,
/// each fetching its JWKS from another replica: across the switch to the new key and past
/// the old key's retirement no call fails, and every replica publishes the new key before the
/// first TE signed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_under_traffic_through_two_envoys_and_two_replicas() {
    const CLIENT: &str = "rotation-client";
    /// The old key retires this long (plus the filter's 30 s leeway) after the switch.
    const ACCESS_TTL: u64 = 6;
    const JWKS_REFRESH: u64 = 2;
    /// Longer than the replicas' key reload (5 s) plus the filters' JWKS refresh.
    const PUBLISH: u64 = 10;
    let d = Deployment::start(DeploymentOptions::new("rotation", 2, 2).with_config(|c| {
        preregistered(c, CLIENT);
        c["authorization_server"]["access_token_ttl_seconds"] = json!(ACCESS_TTL);
        c["authorization_server"]["signing_key"]["rotation_publish_seconds"] = json!(PUBLISH);
        c["envoy"]["jwks_refresh_seconds"] = json!(JWKS_REFRESH);
    }))
    .await;
    let bases: Vec<String> = d.replicas.iter().map(Replica::url).collect();
    let old_kid = published_kids(&bases[0]).await[0].clone();
    assert_eq!(published_kids(&bases[1]).await, vec![old_kid.clone()]);
    let browser = Browser::new();
    let (mut te, mut rt) = fresh_grant(&d, &browser, CLIENT, 0).await;
    let mut te_at = Instant::now();

    let mut rotation: Option<(String, u64, u64)> = None;
    let mut published_everywhere: Option<u64> = None;
    let mut first_new_te: Option<u64> = None;
    let (mut calls, mut refreshes) = (0u32, 0usize);
    let mut by_kid = std::collections::BTreeMap::<String, u32>::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    loop {
        let now = jwt::now();
        if let Some((new_kid, _, _)) = &rotation {
            if published_everywhere.is_none() {
                let mut everywhere = true;
                for base in &bases {
                    everywhere &= published_kids(base).await.contains(new_kid);
                }
                if everywhere {
                    published_everywhere = Some(now);
                }
            }
        }
        if rotation.is_none() && started.elapsed() >= Duration::from_secs(2) {
            let out = tokio::process::Command::new(Binaries::token_service())
                .arg("rotate-signing-key")
                .arg("--config")
                .arg(&d.replicas[1].config_path)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let new_kid = stdout
                .lines()
                .find_map(|l| l.strip_prefix("kid: "))
                .unwrap()
                .to_owned();
            assert_ne!(new_kid, old_kid);
            rotation = Some((
                new_kid,
                rotation_field(&stdout, "signs_from"),
                rotation_field(&stdout, "previous_keys_retire_at"),
            ));
        }
        // A client refreshing every second, on either replica in turn.
        if te_at.elapsed() >= Duration::from_secs(1) {
            let t = refresh(&bases[refreshes % 2], CLIENT, &rt).await;
            refreshes += 1;
            te = t["access_token"].as_str().unwrap().to_owned();
            rt = t["refresh_token"].as_str().unwrap().to_owned();
            te_at = Instant::now();
        }
        let signed_with = kid(&te);
        if let Some((new_kid, signs_from, _)) = &rotation {
            if signed_with == *new_kid && first_new_te.is_none() {
                first_new_te = Some(now);
                assert!(
                    published_everywhere.is_some(),
                    "a TE signed with {new_kid} before every replica published it"
                );
                assert!(now >= *signs_from, "signed before signs_from");
            }
        }
        *by_kid.entry(signed_with.clone()).or_default() += 1;
        // Both Envoys, on connections of their own (both workers take some).
        for m in [0, 1, 0, 1] {
            let r = d.whoami(m, &te).await;
            calls += 1;
            if r.status != 200 {
                failures.push(format!(
                    "Envoy {m} at {now} with {signed_with}: {}",
                    r.status
                ));
            }
        }
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
    let (new_kid, _, _) = rotation.unwrap();
    eprintln!(
        "rotation through 2 Envoys x 2 workers x 2 replicas on {}: {calls} calls, {refreshes} refreshes, calls per key {by_kid:?}, failures {}",
        d.backend(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(first_new_te.is_some(), "no TE was signed with the new key");
    assert!(by_kid.get(&old_kid).is_some_and(|n| *n > 0));
    for base in &bases {
        assert_eq!(published_kids(base).await, vec![new_kid.clone()], "{base}");
    }
}

//! The service on PostgreSQL: a SQLite deployment moved over (`migrate --from-sqlite`) keeps
//! its users' refresh tokens and sealed upstream tokens, and a database that goes away is
//! answered `503` with `Retry-After`, then served again once it is back. Each test makes its
//! own database (`common::pg`) and skips, saying so, without a server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use common::pg::{on_postgres, PgDb};
use common::upstream_route::*;
use common::*;
use demo_oauth_provider::{AuthStyle, ProviderConfig};
use serde_json::Value;
use warden_token_service::config::Config;

const GH: &str = "http://127.0.0.1:9000/gh";
const PUBLIC_REDIRECT: &str = "http://127.0.0.1/callback";

/// The usual test config plus a route `gh` whose server needs the user's account at
/// Signs in for the `gh` resource through the upstream consent; returns the client's
/// token response.
async fn sign_in_with_upstream(env: &TestEnv, provider: &Provider) -> Value {
    let form = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            PUBLIC_REDIRECT,
            &[("resource", GH)],
        ))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let flow_cookie = form.cookie("warden_flow").unwrap();
    let consent = env.login(&form, EMAIL, PASSWORD).await;
    let cookies = format!(
        "{flow_cookie}; {}",
        consent.cookie("warden_session").unwrap()
    );
    let to_provider = env.decide(&consent, &cookies, "approve").await;
    assert_eq!(
        to_provider.status,
        StatusCode::FOUND,
        "{}",
        to_provider.body
    );
    let back = provider
        .answer(&to_provider.header("location"), "approve")
        .await;
    let r = env
        .get_with_cookie(
            &format!("{}?{}", back.path(), back.query().unwrap()),
            &cookies,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let code = r.location_query()["code"].clone();
    let t = env
        .exchange_public("public-app", &code, PUBLIC_REDIRECT)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    t.json()
}

fn count(counts: &[(&str, u64)], table: &str) -> u64 {
    counts.iter().find(|(t, _)| *t == table).unwrap().1
}

/// The credential the filter signs its calls with, as the service keeps it.
fn internal_credential(env: &TestEnv) -> String {
    std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_sqlite_deployment_moves_to_postgresql_with_its_tokens() {
    let Some(db) = PgDb::create() else { return };
    let Some(db2) = PgDb::create() else { return };
    let provider = Provider::serve(ProviderConfig {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{ISSUER}/upstream/callback")],
        auth_style: AuthStyle::Any,
        access_ttl: Duration::from_secs(3600),
        ..ProviderConfig::default()
    })
    .await;

    // A SQLite deployment with a signed-in user: a rotated refresh token, a sealed TI.
    let env = TestEnv::with(|dir| upstream_yaml(dir, &provider.url));
    let tokens = sign_in_with_upstream(&env, &provider).await;
    let r = env
        .refresh_public("public-app", tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let (status, before) = lookup(&env, &internal_credential(&env)).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let sqlite_yaml = upstream_yaml(env.dir.path(), &provider.url);
    let TestEnv {
        dir, state, app, ..
    } = env;
    drop((state, app));
    let sqlite = dir.path().join("warden.db");
    // The gateway's registration at an upstream server (sealed bytes, copied byte for byte).
    let registration = warden_token_service::store::UpstreamRegistrationRecord {
        issuer: "https://auth.tracker.example".into(),
        sealed: vec![1, 2, 3, 0, 255],
        registered_at: 1_900_000_000,
    };
    {
        use warden_token_service::store::UpstreamRegistrations;
        let s = warden_token_service::SqliteStore::open(&sqlite).unwrap();
        assert!(s.insert_upstream_registration(&registration).unwrap());
    }

    // The copy, as the subcommand makes it.
    let pg_config = Config::from_yaml(&on_postgres(&sqlite_yaml, dir.path(), &db.url)).unwrap();
    let (storage, from) = (pg_config.storage.clone(), sqlite.clone());
    let counts = tokio::task::spawn_blocking(move || {
        warden_token_service::store::copy_sqlite_to_postgres(&storage, &from)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(count(&counts, "grants"), 1, "{counts:?}");
    assert_eq!(count(&counts, "refresh_tokens"), 2, "{counts:?}");
    assert_eq!(count(&counts, "upstream_tokens"), 1, "{counts:?}");
    assert_eq!(count(&counts, "sessions"), 1, "{counts:?}");
    assert_eq!(count(&counts, "auth_codes"), 1, "{counts:?}");
    assert_eq!(count(&counts, "upstream_registrations"), 1, "{counts:?}");
    let (url, issuer) = (db.url.clone(), registration.issuer.clone());
    let copied = tokio::task::spawn_blocking(move || {
        use warden_token_service::store::UpstreamRegistrations;
        let pg = warden_token_service::store::PostgresStore::connect(&url, 2).unwrap();
        pg.upstream_registration(&issuer).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(copied, Some(registration.clone()));

    // Again into the same database: refused, nothing changed.
    let (storage, from) = (pg_config.storage.clone(), sqlite.clone());
    let again = tokio::task::spawn_blocking(move || {
        warden_token_service::store::copy_sqlite_to_postgres(&storage, &from)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        format!("{again:#}").contains("already holds data"),
        "{again:#}"
    );

    // The real binary, into a second database: row counts per table; then a refusal.
    let config_file = dir.path().join("pg.yaml");
    std::fs::write(
        &config_file,
        on_postgres(&sqlite_yaml, dir.path(), &db2.url),
    )
    .unwrap();
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
            .args(["migrate", "--config"])
            .arg(&config_file)
            .arg("--from-sqlite")
            .arg(&sqlite)
            .env_remove("WARDEN_CONFIG")
            .output()
            .unwrap()
    };
    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refresh_tokens: 2\n"), "{stdout}");
    assert!(stdout.contains("upstream_tokens: 1\n"), "{stdout}");
    let out = migrate();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service on PostgreSQL with the same keys: the refresh token still works, and the
    // sealed upstream token still opens.
    let env = TestEnv::open(dir, pg_config);
    let (status, after) = lookup(&env, &internal_credential(&env)).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["access_token"], before["access_token"]);
    let r = env.refresh_public("public-app", &refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The one it replaced is a replay, as it was on SQLite.
    let r = env
        .refresh_public("public-app", tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

/// A TCP forwarder to PostgreSQL that the test can cut (closing the port and every
/// connection through it) and restore on the same address.
struct Forwarder {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let mut f = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            target,
            task: None,
        };
        f.restore().await;
        f
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Owned here: aborting this task drops every connection with it.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The PostgreSQL server's address (the forwarder's target).
fn server_address(db: &PgDb) -> SocketAddr {
    let server = url::Url::parse(&db.url).unwrap();
    format!(
        "{}:{}",
        server.host_str().unwrap(),
        server.port().unwrap_or(5432)
    )
    .parse()
    .unwrap()
}

// Two workers: the forwarder must run while a test step blocks one (opening the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_answered_503_and_then_served_again() {
    let Some(db) = PgDb::create() else { return };
    let mut forwarder = Forwarder::start(server_address(&db)).await;
    let url = db.url_via(forwarder.addr);
    let env = TestEnv::with(|dir| on_postgres(&config_yaml(dir, "", "ES256"), dir, &url));
    let code = env.code("public-app", PUBLIC_REDIRECT).await;
    let t = env
        .exchange_public("public-app", &code, PUBLIC_REDIRECT)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let mut refresh = t.json()["refresh_token"].as_str().unwrap().to_owned();

    forwarder.cut().await;
    // Every request needing the store, whether its pooled connection just broke or a new
    // one is refused: a retry, never a 500.
    for _ in 0..3 {
        let r = env.refresh_public("public-app", &refresh).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.header("retry-after"), "1");
        assert_eq!(r.json()["error"], "temporarily_unavailable");
        assert!(!r.body.contains(&db.name), "{}", r.body);
    }
    // Each counted as a store error and as the grant's answer (README, "Token service
    // metrics").
    let metrics = env.state.metrics().encode(Default::default()).unwrap();
    for line in [
        "warden_store_errors_total{kind=\"unavailable\"} 3",
        "warden_token_grants_total{grant_type=\"refresh_token\",result=\"temporarily_unavailable\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in:\n{metrics}");
    }

    forwarder.restore().await;
    let r = env.refresh_public("public-app", &refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let r = env.refresh_public("public-app", &refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[test]
fn the_database_password_never_reaches_the_log() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let Some(db) = PgDb::create() else { return };
    // The local server trusts loopback, so any password connects; it must never be logged.
    const PASSWORD_IN_URL: &str = "s3cret-pw-in-url";
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some(PASSWORD_IN_URL)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(
        &path,
        on_postgres(
            &config_yaml(dir.path(), "", "ES256"),
            dir.path(),
            url.as_str(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
        .arg("serve")
        .env("WARDEN_CONFIG", &path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut addr = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let listening = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
            v["fields"]["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("listening on http://"))
                .map(str::to_owned)
        });
        log.push(line);
        if listening.is_some() {
            addr = listening;
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no listening line: {log:?}"));
    // A request that reads the store.
    let body = "grant_type=refresh_token&client_id=public-app&refresh_token=nope";
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    child.kill().unwrap();
    let _ = child.wait();
    log.extend(rx.iter());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let all = format!("{}\n{stderr}", log.join("\n"));
    assert!(log.len() > 3, "trace logging ran: {all}");
    assert!(!all.contains(PASSWORD_IN_URL), "{all}");
}

/// A config file for the real binary on PostgreSQL at `url` (internal listener on a port of
/// its own).
fn pg_config_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("warden.yaml");
    let yaml = common::served::with_grace(&config_yaml(dir, "", "ES256"), 20);
    std::fs::write(&path, on_postgres(&yaml, dir, url)).unwrap();
    path
}

fn readiness_reason(a: &common::served::Answer) -> String {
    let v: Value = serde_json::from_str(a.body()).unwrap_or(Value::Null);
    v["reason"].as_str().unwrap_or_default().to_owned()
}

// Two workers: the forwarder must run while the test reads the service's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_at_start_and_while_serving() {
    use common::served::{get, wait_readyz, Served};
    let Some(db) = PgDb::create() else { return };
    let mut forwarder = Forwarder::start(server_address(&db)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config_file(dir.path(), &db.url_via(forwarder.addr));

    // Started while the database cannot be reached: alive, not ready, and trying again.
    forwarder.cut().await;
    let mut served = Served::spawn(&config);
    let addr = served.wait_addr("starting on ");
    assert_eq!(get(addr, "/healthz").await.unwrap().status(), 200);
    served.wait_message(
        "start-up: the store cannot be reached",
        Duration::from_secs(30),
    );
    let ready = get(addr, "/readyz").await.unwrap();
    assert_eq!(ready.status(), 503, "{}", ready.raw);
    assert_eq!(
        readiness_reason(&ready),
        "starting: the store cannot be reached",
        "{}",
        ready.raw
    );
    assert!(!ready.raw.contains(&db.name), "{}", ready.raw);
    forwarder.restore().await;
    wait_readyz(&mut served, addr, 200, Duration::from_secs(30)).await;

    // The database goes away while serving: 503 within the check's cache and timeout, the
    // process alive; back to 200 once it returns.
    forwarder.cut().await;
    let ready = wait_readyz(&mut served, addr, 503, Duration::from_secs(10)).await;
    assert_eq!(
        readiness_reason(&ready),
        "the store cannot be reached",
        "{}",
        ready.raw
    );
    assert_eq!(
        ready.header("cache-control").as_deref(),
        Some("no-store"),
        "{}",
        ready.raw
    );
    assert_eq!(get(addr, "/healthz").await.unwrap().status(), 200);
    forwarder.restore().await;
    wait_readyz(&mut served, addr, 200, Duration::from_secs(10)).await;
}

// Two workers: the lock's holder blocks on a thread of its own, the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_another_replica_holds_the_migration_lock() {
    use common::served::{get, wait_readyz, Served};
    let Some(db) = PgDb::create() else { return };
    // The lock the migrations take (`store/postgres`: NAMESPACE "WARD", LOCK_MIGRATIONS 1),
    // held by a session of the test's, as a replica migrating would hold it.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, holding) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&0x5741_5244_i32, &1_i32],
        )
        .unwrap();
        held.send(()).unwrap();
        let _ = released.recv();
        c.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&0x5741_5244_i32, &1_i32],
        )
        .unwrap();
    });
    holding.recv().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::spawn(&pg_config_file(dir.path(), &db.url));
    let addr = served.wait_addr("starting on ");
    assert_eq!(get(addr, "/healthz").await.unwrap().status(), 200);
    // The service is waiting for the lock: its session shows in pg_locks, not granted.
    let url = db.url.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                     AND classid = $1::int::oid AND objid = 1",
                    &[&0x5741_5244_i32],
                )
                .unwrap()
                .get(0);
            if n > 0 || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        waiting, 1,
        "the service never waited for the migration lock"
    );
    let ready = get(addr, "/readyz").await.unwrap();
    assert_eq!(ready.status(), 503, "{}", ready.raw);
    assert_eq!(
        readiness_reason(&ready),
        "starting: opening the store and applying migrations",
        "{}",
        ready.raw
    );
    let token = get(addr, "/token").await.unwrap();
    assert_eq!(token.status(), 503, "{}", token.raw);
    assert_eq!(token.header("retry-after").as_deref(), Some("1"));

    release.send(()).unwrap();
    holder.join().unwrap();
    wait_readyz(&mut served, addr, 200, Duration::from_secs(30)).await;
}

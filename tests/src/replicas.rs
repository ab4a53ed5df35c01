//! Several token-service replicas on one store, and several Envoys in front of them
//! (README "Running several replicas"): a [`Deployment`].
//!
//! Every replica runs its own process with its own config file that differs from the others
//! only in `authorization_server.listen` and `internal_listen`. They share the issuer (replica
//! 0's URL), the store, and the files made at the first start (encryption key, internal
//! credential) plus the signing key file imported then: replica 0 starts first and is ready
//! before the others start.
//!
//! The store is pluggable: [`REPLICA_STORAGE`] makes the `storage:` block from the deployment's
//! directory and its database name ([`DeploymentOptions::database`], one per test). Switching
//! the replica tests to another backend is changing that one constant.
//!
//! Each Envoy (`--concurrency workers`, its own listener, admin port and base id) is rendered
//! from the config of the replica it is pinned to (Envoy `i` → replica `i % replicas`): its
//! `warden_token_service` (JWKS) and `warden_token_service_internal` (revocation feed, upstream
//! tokens, app sessions) clusters name that replica only. Every Envoy serves the same public
//! authority (the routes' `from`, Envoy 0's port), as Envoys behind one load balancer do: a
//! request to another Envoy carries `Host: <public authority>` ([`Deployment::envoy_post`]).
//!
//! A [`Browser`] keeps cookies (they are per host, so one browser's cookies reach every
//! replica, as behind a load balancer) and is told which replica each step goes to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::{Method, Url};
use serde_json::{json, Value};

use crate::{
    envoy_outcome, free_port, html, http_client, internal_credential, jwt, mcp_post, password_hash,
    raw_request, render_envoy, spawn_envoy_logging, stateless_body, write_yaml, Binaries,
    DemoServer, EnvoyOutcome, Proc, RawResponse, DEMO_EMAIL, DEMO_NAME, DEMO_PASSWORD,
    INTERNAL_CREDENTIAL_ENV, READY_TIMEOUT,
};

// =============================================================================================
// The store
// =============================================================================================

/// Makes a replica's `storage:` block (without `encryption_key_file`, which the deployment
/// adds) from the deployment's directory and the test's database name. Called once per
/// deployment (a server backend creates the database then).
pub type StorageBlock = fn(dir: &Path, database: &str) -> Value;

/// The backend the replica tests run on: PostgreSQL (issue 18: "prove it with PostgreSQL"),
/// or, only when no server answers, one SQLite file, saying so on stderr.
pub const REPLICA_STORAGE: StorageBlock = postgres_or_sqlite;

/// One SQLite file (WAL) shared by every replica: `<dir>/<database>.db`.
pub fn sqlite_storage(dir: &Path, database: &str) -> Value {
    json!({ "sqlite": dir.join(format!("{database}.db")) })
}

/// The server the PostgreSQL tests use: `WARDEN_TEST_PG_URL`, or the machine's own.
pub fn postgres_admin_url() -> String {
    std::env::var("WARDEN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `f` on a thread of its own: the synchronous driver blocks on a runtime of its own,
/// which tokio refuses on an async worker.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

/// A database of the test's own on the PostgreSQL server (dropped when the deployment
/// drops), or the SQLite file when no server answers.
pub fn postgres_or_sqlite(dir: &Path, database: &str) -> Value {
    let admin = postgres_admin_url();
    let name = format!("warden_e2e_{}_{database}", std::process::id());
    let (a, n) = (admin.clone(), name.clone());
    let created = off_runtime(move || -> Result<(), String> {
        let mut c = postgres::Client::connect(&a, postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
            .map_err(|e| e.to_string())?;
        c.batch_execute(&format!("CREATE DATABASE {n}"))
            .map_err(|e| e.to_string())
    });
    match created {
        Ok(()) => {
            let mut url = Url::parse(&admin).expect("WARDEN_TEST_PG_URL is a URL");
            url.set_path(&format!("/{name}"));
            json!({ "postgres": { "url": url.as_str(), "max_connections": 16 } })
        }
        Err(e) => {
            eprintln!(
                "no PostgreSQL server at {admin} ({e}): the replicas share a SQLite file instead"
            );
            sqlite_storage(dir, database)
        }
    }
}

/// Drops a test's PostgreSQL database (other sessions ended first).
fn drop_postgres_database(url: &str) {
    let Ok(parsed) = Url::parse(url) else { return };
    let name = parsed.path().trim_start_matches('/').to_owned();
    let admin = postgres_admin_url();
    let dropped = off_runtime(move || -> Result<(), String> {
        let mut c =
            postgres::Client::connect(&admin, postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .map_err(|e| e.to_string())
    });
    if let Err(e) = dropped {
        eprintln!("cannot drop the test database {url}: {e}");
    }
}

// =============================================================================================
// Options
// =============================================================================================

type ConfigHook = Box<dyn FnOnce(&mut Value) + Send>;

/// Knobs for [`Deployment::start`].
pub struct DeploymentOptions {
    pub replicas: usize,
    pub envoys: usize,
    /// `--concurrency` of every Envoy.
    pub envoy_workers: u32,
    /// The `storage:` block maker (default [`REPLICA_STORAGE`]).
    pub storage: StorageBlock,
    /// The test's own database (a file name for SQLite, a database name for a server).
    pub database: String,
    /// Last word on the shared operator config, before the per-replica ports are set.
    pub config_hook: Option<ConfigHook>,
}

impl DeploymentOptions {
    pub fn new(database: &str, replicas: usize, envoys: usize) -> DeploymentOptions {
        DeploymentOptions {
            replicas,
            envoys,
            envoy_workers: 2,
            storage: REPLICA_STORAGE,
            database: database.to_owned(),
            config_hook: None,
        }
    }

    pub fn with_config(mut self, hook: impl FnOnce(&mut Value) + Send + 'static) -> Self {
        self.config_hook = Some(Box::new(hook));
        self
    }
}

// =============================================================================================
// The deployment
// =============================================================================================

pub struct Replica {
    pub proc: Proc,
    pub port: u16,
    pub internal_port: u16,
    pub config_path: PathBuf,
}

impl Replica {
    /// `http://127.0.0.1:<listen port>`: where this replica answers the public endpoints.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal_port)
    }
}

pub struct EnvoyNode {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
    /// The replica its token-service clusters name.
    pub replica: usize,
    pub workers: u32,
}

impl EnvoyNode {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Admin `/stats?filter=<filter>` as `name → value`.
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        crate::envoy_admin_stats(self.admin_port, filter).await
    }

    /// Connections each worker accepted on the listener so far (`worker_<i>.downstream_cx_total`).
    pub async fn connections_per_worker(&self) -> Vec<u64> {
        let stats = self
            .stats(&format!(
                "listener.127.0.0.1_{}.worker_.*downstream_cx_total",
                self.port
            ))
            .await;
        (0..self.workers)
            .map(|w| {
                stats
                    .iter()
                    .find(|(k, _)| k.ends_with(&format!("worker_{w}.downstream_cx_total")))
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| panic!("no connection count of worker {w}: {stats:?}"))
            })
            .collect()
    }
}

/// Token-service replicas on one store, Envoys in front of them, the demo MCP server.
pub struct Deployment {
    // Field order = drop order: processes before the directory holding their logs.
    pub envoys: Vec<EnvoyNode>,
    pub replicas: Vec<Replica>,
    pub demo: DemoServer,
    /// The shared config (replica 0's ports).
    pub config: Value,
    /// The port of the routes' `from` (Envoy 0's listener, or a reserved port without Envoy).
    pub public_port: u16,
    pub database: String,
    /// The `storage:` block every replica was given.
    pub storage: Value,
    pub dir: tempfile::TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Stop the replicas (and Envoys) first: they hold connections to the database.
        self.envoys.clear();
        self.replicas.clear();
        if let Some(url) = self.storage["postgres"]["url"].as_str() {
            drop_postgres_database(url);
        }
    }
}

impl Deployment {
    pub async fn start(mut opts: DeploymentOptions) -> Deployment {
        assert!(opts.replicas >= 1, "a deployment has a replica");
        let token_bin = Binaries::token_service();
        let _ = Binaries::demo_server();
        if opts.envoys > 0 {
            let _ = Binaries::envoy();
            let _ = Binaries::wasm();
        }
        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-replicas-")
            .tempdir()
            .expect("temp dir");
        let demo = DemoServer::start(dir.path(), free_port()).await;
        let ports: Vec<(u16, u16)> = (0..opts.replicas)
            .map(|_| (free_port(), free_port()))
            .collect();
        let envoy_ports: Vec<(u16, u16)> = (0..opts.envoys)
            .map(|_| (free_port(), free_port()))
            .collect();
        let public_port = envoy_ports.first().map_or_else(free_port, |p| p.0);

        jwt::write_key_file(&dir.path().join("signing-key.json"), "ES256");
        let mut config = shared_config(dir.path(), ports[0], public_port, demo.addr.port());
        let storage = (opts.storage)(dir.path(), &opts.database);
        config["storage"] = storage.clone();
        config["storage"]["encryption_key_file"] = json!(dir.path().join("encryption-key"));
        if let Some(hook) = opts.config_hook.take() {
            hook(&mut config);
        }

        let mut replicas: Vec<Replica> = Vec::new();
        for (i, (port, internal_port)) in ports.iter().copied().enumerate() {
            let mut c = config.clone();
            c["authorization_server"]["listen"] = json!(format!("127.0.0.1:{port}"));
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{internal_port}"));
            let config_path = dir.path().join(format!("replica-{i}.yaml"));
            write_yaml(&config_path, &c);
            let proc = Proc::spawn(
                &format!("token-service-{i}"),
                dir.path(),
                &token_bin,
                &[
                    OsString::from("serve"),
                    "--config".into(),
                    config_path.clone().into(),
                ],
                &[],
            );
            let mut replica = Replica {
                proc,
                port,
                internal_port,
                config_path,
            };
            // The first start creates the shared files (encryption key, internal credential)
            // and the store's signing key: the others start once it is ready.
            if i == 0 {
                let url = format!("{}/readyz", replica.url());
                replica.proc.wait_http_ok(&url).await;
            }
            replicas.push(replica);
        }
        for replica in replicas.iter_mut().skip(1) {
            let url = format!("{}/readyz", replica.url());
            replica.proc.wait_http_ok(&url).await;
        }

        let credential = internal_credential(dir.path()).expect("the internal credential");
        let mut envoys = Vec::new();
        for (m, (port, admin_port)) in envoy_ports.iter().copied().enumerate() {
            let pinned = m % replicas.len();
            let mut c = config.clone();
            c["authorization_server"]["listen"] = json!(format!("127.0.0.1:{}", ports[pinned].0));
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", ports[pinned].1));
            c["envoy"]["listen"] = json!(format!("127.0.0.1:{port}"));
            c["envoy"]["admin"] = json!(format!("127.0.0.1:{admin_port}"));
            let config_path = dir.path().join(format!("envoy-{m}.warden.yaml"));
            write_yaml(&config_path, &c);
            let bootstrap = dir.path().join(format!("envoy-{m}.yaml"));
            render_envoy(&config_path, &Binaries::wasm(), &bootstrap).await;
            let mut proc = spawn_envoy_logging(
                dir.path(),
                &format!("envoy-{m}"),
                &bootstrap,
                (admin_port, opts.envoy_workers),
                &[(INTERNAL_CREDENTIAL_ENV, credential.as_str())],
                None,
            );
            match envoy_outcome(&mut proc, admin_port, READY_TIMEOUT).await {
                EnvoyOutcome::Ready => {}
                other => proc.fail(&format!("did not become ready: {other:?}")),
            }
            envoys.push(EnvoyNode {
                proc,
                port,
                admin_port,
                replica: pinned,
                workers: opts.envoy_workers,
            });
        }

        Deployment {
            envoys,
            replicas,
            demo,
            config,
            public_port,
            database: opts.database,
            storage,
            dir,
        }
    }

    /// The issuer every replica names (replica 0's URL).
    pub fn issuer(&self) -> String {
        self.config["authorization_server"]["issuer"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `127.0.0.1:<public port>`: the `Host` every Envoy serves the routes on.
    pub fn public_authority(&self) -> String {
        format!("127.0.0.1:{}", self.public_port)
    }

    /// The resource of the route at `prefix` (`http://<public authority><prefix>`).
    pub fn resource(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.public_authority())
    }

    /// The SQLite file, when the store is one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.storage["sqlite"].as_str().map(PathBuf::from)
    }

    /// The PostgreSQL database's URL, when the store is one.
    pub fn postgres_url(&self) -> Option<String> {
        self.storage["postgres"]["url"].as_str().map(str::to_owned)
    }

    /// Which backend the replicas share (for the test's log).
    pub fn backend(&self) -> &'static str {
        if self.postgres_url().is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// The internal credential every replica shares.
    pub fn internal_credential(&self) -> String {
        internal_credential(self.dir.path()).expect("the internal credential")
    }

    /// A `2026-07-28` MCP request to Envoy `m` on the route at `prefix`, as the public
    /// authority, on a connection of its own.
    pub async fn envoy_post(
        &self,
        m: usize,
        prefix: &str,
        bearer: &str,
        method: &str,
        params: Value,
    ) -> RawResponse {
        let auth = format!("Bearer {bearer}");
        let host = self.public_authority();
        mcp_post(
            &format!("{}{prefix}", self.envoys[m].url()),
            &[("authorization", auth.as_str()), ("host", host.as_str())],
            method,
            params,
        )
        .await
    }

    /// `whoami` through Envoy `m` on route `/mcp`.
    pub async fn whoami(&self, m: usize, bearer: &str) -> RawResponse {
        self.envoy_post(
            m,
            "/mcp",
            bearer,
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await
    }

    /// Every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&format!("----- {} -----\n{}\n", r.proc.name, r.proc.log()));
        }
        for e in &self.envoys {
            out.push_str(&format!("----- {} -----\n{}\n", e.proc.name, e.proc.log()));
        }
        out
    }
}

/// The body of an internal `POST` signed as the filter signs it, sent to `internal_url`.
pub async fn internal_post(
    internal_url: &str,
    credential: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let body = body.to_string();
    let resp = http_client()
        .post(format!("{internal_url}{path}"))
        .header(
            "authorization",
            crate::internal_authorization(credential, path, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The config every replica shares; `listen`/`internal_listen` are replica 0's (each replica's
/// file sets its own).
fn shared_config(dir: &Path, (port, internal): (u16, u16), public: u16, demo: u16) -> Value {
    json!({
        "authorization_server": {
            "issuer": format!("http://127.0.0.1:{port}"),
            "listen": format!("127.0.0.1:{port}"),
            "internal_listen": format!("127.0.0.1:{internal}"),
            "internal_credential_file": dir.join("internal-credential"),
            "access_token_ttl_seconds": 300,
            "refresh_token_ttl_seconds": 3600,
            "signing_key": { "file": dir.join("signing-key.json"), "alg": "ES256" },
        },
        "identity_provider": {
            "local": {
                "users": [{
                    "email": DEMO_EMAIL,
                    "name": DEMO_NAME,
                    "password_hash": password_hash(DEMO_PASSWORD),
                    "groups": ["demo"],
                }],
            },
        },
        "clients": [],
        "envoy": {
            "listen": format!("127.0.0.1:{public}"),
            "admin": format!("127.0.0.1:{}", free_port()),
        },
        "routes": [{
            "name": "demo",
            "from": format!("http://127.0.0.1:{public}"),
            "prefix": "/mcp",
            "to": format!("http://127.0.0.1:{demo}/mcp"),
            "mcp": { "server": {} },
            "policy": { "allow": { "and": [{ "authenticated_user": true }] } },
        }],
    })
}

/// A local user for [`Deployment`] configs (`identity_provider.local.users[]`).
pub fn local_user(email: &str, password: &str) -> Value {
    json!({
        "email": email,
        "name": email,
        "password_hash": password_hash(password),
        "groups": ["demo"],
    })
}

// =============================================================================================
// A browser that is told which replica each step goes to
// =============================================================================================

/// A page or redirect the browser got.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
    /// Where it came from (after the replica was chosen).
    pub url: Url,
}

impl Page {
    /// The page's first form.
    pub fn form(&self) -> html::Form {
        html::forms(&self.body)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no form at {} ({}):\n{}", self.url, self.status, self.body))
    }
}

/// The fields of `form`'s hidden and prefilled inputs.
pub fn form_fields(form: &html::Form) -> Vec<(String, String)> {
    form.inputs
        .iter()
        .map(|i| (i.name.clone(), i.value.clone()))
        .collect()
}

/// A browser: a cookie store (cookies are per host, not per port, so they reach every
/// replica), no redirects followed.
pub struct Browser {
    pub client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser::with_pool(true)
    }

    /// A browser that opens a connection per request (`pooled: false`): a replica killed
    /// between two requests is then a refused connection, never a stale pooled one.
    pub fn with_pool(pooled: bool) -> Browser {
        let mut builder = crate::client_builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30));
        if !pooled {
            builder = builder.pool_max_idle_per_host(0);
        }
        Browser {
            client: builder.build().expect("browser client"),
        }
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &Url,
        form: Option<&[(String, String)]>,
    ) -> Result<Page, reqwest::Error> {
        let mut req = self.client.request(method, url.clone());
        if let Some(fields) = form {
            req = req.form(fields);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().expect("Location").to_owned());
        let set_cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect();
        let body = resp.text().await?;
        Ok(Page {
            status,
            location,
            set_cookies,
            body,
            url: url.clone(),
        })
    }

    pub async fn get(&self, url: &Url) -> Page {
        self.try_send(Method::GET, url, None)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub async fn post(&self, url: &Url, fields: &[(String, String)]) -> Page {
        self.try_send(Method::POST, url, Some(fields))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }
}

/// `url` with its origin replaced by `base` (`http://host:port`).
pub fn on(base: &str, url: &Url) -> Url {
    let mut out = Url::parse(base).expect("base URL");
    out.set_path(url.path());
    out.set_query(url.query());
    out
}

/// The `(email, password)` the gateway's login form gets, and the provider's
/// `(username, password)` for an upstream consent.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub gateway: (&'a str, &'a str),
    pub provider: Option<(&'a str, &'a str)>,
}

/// One step the browser took: the replica (or other origin) it went to and the path.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub origin: String,
    pub path: String,
    pub status: u16,
}

/// Plays the browser from `start` until a redirect to `stop` (an endpoint of the client,
/// returned, not followed): follows redirects, fills the gateway's login form, approves
/// consent, and signs in at and approves an upstream provider. Every request to a replica
/// (an origin in `replicas`) goes to the replica `choose(path)` names instead; the steps taken
/// are returned with the redirect.
pub async fn drive(
    browser: &Browser,
    start: &str,
    stop: &str,
    replicas: &[String],
    credentials: Credentials<'_>,
    choose: impl FnMut(&str) -> usize,
) -> (Url, Vec<Step>) {
    try_drive(browser, start, stop, replicas, credentials, choose, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`drive`] that says what went wrong instead of panicking, and on a refused connection to
/// a replica calls `refused(replica)` and takes the step again (`choose` again), at most 3
/// times: a client-side balancer that moves to a live replica.
pub async fn try_drive(
    browser: &Browser,
    start: &str,
    stop: &str,
    replicas: &[String],
    credentials: Credentials<'_>,
    mut choose: impl FnMut(&str) -> usize,
    mut refused: impl FnMut(usize),
) -> Result<(Url, Vec<Step>), String> {
    let stop = Url::parse(stop).expect("stop URL");
    let mut url = Url::parse(start).expect("start URL");
    let mut form: Option<Vec<(String, String)>> = None;
    let mut steps = Vec::new();
    for _ in 0..16 {
        let is_replica = replicas.contains(&origin_of(&url));
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            let mut target = url.clone();
            let mut chosen = None;
            if is_replica {
                let i = choose(url.path());
                target = on(&replicas[i], &url);
                chosen = Some(i);
            }
            let sent = match &form {
                None => browser.try_send(Method::GET, &target, None).await,
                Some(fields) => browser.try_send(Method::POST, &target, Some(fields)).await,
            };
            match (sent, chosen) {
                (Ok(page), _) => break page,
                (Err(e), Some(i)) if e.is_connect() && attempt < 3 => refused(i),
                (Err(e), _) => return Err(format!("{target}: {e} (steps {steps:?})")),
            }
        };
        form = None;
        url = page.url.clone();
        steps.push(Step {
            origin: origin_of(&url),
            path: url.path().to_owned(),
            status: page.status,
        });
        if (300..400).contains(&page.status) {
            let location = page.location.clone().expect("a redirect's Location");
            let next = url.join(&location).expect("Location URL");
            if next.origin() == stop.origin() && next.path() == stop.path() {
                return Ok((next, steps));
            }
            url = next;
            continue;
        }
        if page.status != 200 {
            return Err(format!(
                "{} at {url} (steps {steps:?}):\n{}",
                page.status, page.body
            ));
        }
        let f = page.form();
        let mut fields = Vec::new();
        for input in &f.inputs {
            let value = match (input.name.as_str(), credentials.provider) {
                ("email", _) => credentials.gateway.0.to_owned(),
                ("password", Some((_, p))) if !replicas.contains(&origin_of(&url)) => p.to_owned(),
                ("password", _) => credentials.gateway.1.to_owned(),
                ("username", Some((u, _))) => u.to_owned(),
                _ => input.value.clone(),
            };
            fields.push((input.name.clone(), value));
        }
        if let Some(b) = f.buttons.iter().find(|b| {
            b.value
                .as_deref()
                .is_some_and(|v| v == "approve" || v == "allow")
        }) {
            fields.push((b.name.clone().unwrap_or_default(), b.value.clone().unwrap()));
        }
        url = url
            .join(f.action.as_deref().unwrap_or(""))
            .expect("form action");
        form = Some(fields);
    }
    Err(format!("no redirect to {stop} after 16 steps: {steps:?}"))
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

// =============================================================================================
// OAuth as a client, step by step, on chosen replicas
// =============================================================================================

/// A PKCE pair (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("randomness");
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// RFC 7591 registration of a public client at `base`, from client address `forwarded_for`
/// when given (a trusted proxy's `X-Forwarded-For`): the response.
pub async fn register(base: &str, redirect_uri: &str, forwarded_for: Option<&str>) -> RawResponse {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(addr) = forwarded_for {
        headers.push(("x-forwarded-for", addr));
    }
    let body = json!({
        "client_name": "warden-e2e-replicas",
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
    .to_string();
    raw_request("POST", &format!("{base}/register"), &headers, Some(&body)).await
}

/// The `/authorize` URL (on `base`) for a public client, resource and PKCE challenge.
pub fn authorize_url(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    resource: &str,
    challenge: &str,
) -> String {
    let mut url = Url::parse(&format!("{base}/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", "replica-state")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", resource);
    url.to_string()
}

/// The `code` of a redirect back to the client.
pub fn code_of(redirect: &Url) -> String {
    redirect
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {redirect}"))
}

/// `POST {base}/token` with `form`; `Err` only when the request got no answer.
pub async fn try_token(base: &str, form: &[(&str, &str)]) -> Result<(u16, Value), reqwest::Error> {
    let resp = http_client()
        .post(format!("{base}/token"))
        .header("accept", "application/json")
        .form(form)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(json!({"raw": body})),
    ))
}

/// The code exchange at `base`, asserting `200`: the token response.
pub async fn exchange(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    code: &str,
    verifier: &str,
) -> Value {
    let (status, body) = try_token(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("POST {base}/token: {e}"));
    assert_eq!(status, 200, "code exchange at {base}: {body}");
    body
}

/// A refresh at `base`, asserting `200`: the token response.
pub async fn refresh(base: &str, client_id: &str, refresh_token: &str) -> Value {
    let (status, body) = try_token(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("POST {base}/token: {e}"));
    assert_eq!(status, 200, "refresh at {base}: {body}");
    body
}

/// RFC 7009 `/revoke` of `token` at `base`, asserting `200`.
pub async fn revoke(base: &str, client_id: &str, token: &str) {
    let r = http_client()
        .post(format!("{base}/revoke"))
        .form(&[("client_id", client_id), ("token", token)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/revoke: {e}"));
    assert_eq!(r.status().as_u16(), 200, "RFC 7009 /revoke at {base}");
}

/// A 2026-07-28 JSON-RPC body of `method` (re-exported for the tests' own requests).
pub fn rpc_body(method: &str, params: Value) -> Value {
    stateless_body(1, method, params)
}

//! End-to-end harness for mcp-warden: starts the real processes (token service, demo MCP
//! server, Envoy with the warden filter) on free loopback ports, drives the OAuth sign-in with
//! rmcp's OAuth client while playing the browser with reqwest, and connects rmcp MCP clients in
//! either protocol era.
//!
//! Test-only code: panicking on unexpected states is the intended failure mode.
//!
//! ```ignore
//! let stack = Stack::start().await;                 // or Stack::start_with(StackOptions { .. })
//! let signed = stack.sign_in().await;               // 401 → PRM → AS metadata → DCR → login → code
//! let client = connect(&stack.mcp_url(), &Era::Stateless, ClientAuth::OAuth(signed.manager)).await;
//! let me = whoami(&client).await;                   // headers the upstream saw
//! stack.demo.clear_recorded().await;
//! let resp = mcp_post(&stack.mcp_url(), &[("authorization", "Bearer junk")], "tools/list", json!({})).await;
//! assert_bearer_challenge(&resp, &stack.resource_metadata_url(), true, "junk token");
//! stack.demo.assert_nothing_recorded("junk token").await;
//! ```
//!
//! Binaries: `WARDEN_TOKEN_SERVICE_BIN`, `WARDEN_DEMO_SERVER_BIN`,
//! `WARDEN_DEMO_OAUTH_PROVIDER_BIN`, `WARDEN_WASM`, `ENVOY_BIN`, else `target/debug/…`,
//! `target/wasm32-wasip1/release/warden_filter.wasm`, `.venv/bin/envoy`.
//! Every process logs to `<tempdir>/<name>.log`; the logs are printed when a test panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod html;
pub mod images;
pub mod istio;
pub mod jwt;
pub mod python;
pub mod replicas;
pub mod tls;
pub mod webdriver;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, Url};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientInitializeError, RunningService};
use rmcp::transport::auth::{AuthClient, AuthorizationManager, AuthorizationRequest, OAuthState};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientLifecycleMode, ClientServiceExt as _, RoleClient};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub use jwt::TestKey;

pub const DEMO_EMAIL: &str = "demo@example.com";
pub const DEMO_PASSWORD: &str = "warden-demo";
pub const DEMO_NAME: &str = "Demo User";

/// How long a process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

// =============================================================================================
// Binaries
// =============================================================================================

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn locate(env: &str, fallback: &str, what: &str) -> PathBuf {
    let path = match std::env::var_os(env) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(fallback),
    };
    if !path.exists() {
        panic!(
            "{what} not found at {} (set {env} or run `make test`, which builds every binary, \
             the wasm filter and installs Envoy before running the end-to-end tests)",
            path.display()
        );
    }
    path
}

/// Paths of the programs the harness runs. Each getter panics with a `make test` hint when the
/// file is missing.
pub struct Binaries;

impl Binaries {
    pub fn token_service() -> PathBuf {
        locate(
            "WARDEN_TOKEN_SERVICE_BIN",
            "target/debug/warden-token-service",
            "token service binary",
        )
    }
    pub fn demo_server() -> PathBuf {
        locate(
            "WARDEN_DEMO_SERVER_BIN",
            "target/debug/demo-mcp-server",
            "demo MCP server binary",
        )
    }
    pub fn demo_app() -> PathBuf {
        locate(
            "WARDEN_DEMO_APP_BIN",
            "target/debug/demo-mcp-app",
            "demo MCP app binary",
        )
    }
    pub fn oauth_provider() -> PathBuf {
        locate(
            "WARDEN_DEMO_OAUTH_PROVIDER_BIN",
            "target/debug/demo-oauth-provider",
            "demo OAuth provider binary",
        )
    }
    pub fn wasm() -> PathBuf {
        locate(
            "WARDEN_WASM",
            "target/wasm32-wasip1/release/warden_filter.wasm",
            "warden filter wasm",
        )
    }
    pub fn envoy() -> PathBuf {
        locate("ENVOY_BIN", ".venv/bin/envoy", "envoy")
    }
}

// =============================================================================================
// Ports
// =============================================================================================

/// A free 127.0.0.1 port, never handed out twice by this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if handed.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("could not find a free port");
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub envoy: u16,
    pub envoy_admin: u16,
    pub token_service: u16,
    pub demo: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        Ports {
            envoy: free_port(),
            envoy_admin: free_port(),
            token_service: free_port(),
            demo: free_port(),
        }
    }
}

// =============================================================================================
// Processes
// =============================================================================================

/// A child process whose stdout and stderr go to `<dir>/<name>.log`. Killed on drop; when the
/// drop happens during a panic (a failing test) the log is printed to stderr.
pub struct Proc {
    pub name: String,
    pub log_path: PathBuf,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    pub fn spawn(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[OsString],
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            log_path: dir.join(format!("{name}.log")),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            starts: 0,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log file");
        if self.starts > 0 {
            use std::io::Write as _;
            let mut l = &log;
            let _ = writeln!(l, "----- restart #{} -----", self.starts);
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            )
        });
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(timeout, child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait"))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills and starts the same command again (same arguments, same log file).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start();
    }

    /// Panics with the process log.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{}: {why}\n----- {} log ({}) -----\n{}\n----- end of {} log -----",
            self.name,
            self.name,
            self.log_path.display(),
            self.log(),
            self.name
        );
    }

    /// Polls `url` until it answers 200, failing early (with the log) if the process exits.
    pub async fn wait_http_ok(&mut self, url: &str) {
        self.wait_http_ok_with(&http_client(), url).await;
    }

    /// [`Self::wait_http_ok`] with `client` (e.g. one trusting a test CA for an https URL).
    pub async fn wait_http_ok_with(&mut self, client: &reqwest::Client, url: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.fail(&format!("exited with {status} before {url} answered 200"));
            }
            if let Ok(resp) = client.get(url).timeout(Duration::from_secs(2)).send().await {
                if resp.status().as_u16() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{url} did not answer 200 within {READY_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                self.log(),
                self.name
            );
        }
    }
}

/// Host names this process's HTTP clients send to a local address, as a cluster's DNS sends
/// a gateway's hosts to it ([`resolve_to`]).
static RESOLVED: OnceLock<Mutex<Vec<(String, SocketAddr)>>> = OnceLock::new();

/// From now on, this process's HTTP clients (the harness's, and rmcp's during a sign-in) reach
/// `host` at `addr` when a URL names no port.
pub fn resolve_to(host: &str, addr: SocketAddr) {
    let mut resolved = RESOLVED.get_or_init(Default::default).lock().unwrap();
    resolved.retain(|(h, _)| h != host);
    resolved.push((host.to_owned(), addr));
}

fn resolved() -> Vec<(String, SocketAddr)> {
    RESOLVED
        .get()
        .map(|r| r.lock().unwrap().clone())
        .unwrap_or_default()
}

/// Certificate authorities (PEM) this process's HTTP clients trust besides the system's.
static TRUSTED: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();

/// From now on, this process's HTTP clients trust the CA certificate `pem` (a test's gateway).
pub fn trust_ca(pem: &[u8]) {
    TRUSTED
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .push(pem.to_vec());
}

/// A reqwest client builder for tests: the names [`resolve_to`] set, and TLS that trusts only
/// the CAs [`trust_ca`] added (tests reach nothing else over TLS; loading the system's roots
/// would cost about 20 ms per client, and timing tests build many).
pub fn client_builder() -> reqwest::ClientBuilder {
    with_resolved(reqwest::Client::builder())
}

fn with_resolved(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    with_resolved_trusting(builder, None)
}

/// [`with_resolved`], trusting `extra_ca` (PEM) as well as the [`trust_ca`] ones.
fn with_resolved_trusting(
    mut builder: reqwest::ClientBuilder,
    extra_ca: Option<&[u8]>,
) -> reqwest::ClientBuilder {
    for (host, addr) in resolved() {
        builder = builder.resolve(&host, addr);
    }
    let mut pems = TRUSTED
        .get()
        .map(|t| t.lock().unwrap().clone())
        .unwrap_or_default();
    pems.extend(extra_ca.map(<[u8]>::to_vec));
    let trusted: Vec<reqwest::Certificate> = pems
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem).expect("a trusted CA certificate (PEM)"))
        .collect();
    builder.tls_certs_only(trusted)
}

/// reqwest client for rmcp's MCP transport: no proxies, no overall timeout (SSE streams stay
/// open), connect timeout only.
pub fn mcp_http_client() -> reqwest::Client {
    with_resolved(reqwest::Client::builder())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A plain reqwest client for loopback calls (no redirects followed, no proxies).
pub fn http_client() -> reqwest::Client {
    http_client_trusting(None)
}

/// [`http_client`] that also trusts `extra_ca` (PEM), without adding it for every client as
/// [`trust_ca`] does.
pub fn http_client_trusting(extra_ca: Option<&[u8]>) -> reqwest::Client {
    with_resolved_trusting(reqwest::Client::builder(), extra_ca)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

// =============================================================================================
// Demo MCP server
// =============================================================================================

pub struct DemoServer {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl DemoServer {
    /// Starts `demo-mcp-server --listen 127.0.0.1:<port>` and waits for `/healthz`.
    pub async fn start(dir: &Path, port: u16) -> DemoServer {
        DemoServer::start_with(dir, port, &[]).await
    }

    /// [`DemoServer::start`] with extra arguments (e.g. `--require-bearer-introspect URL`).
    pub async fn start_with(dir: &Path, port: u16, extra_args: &[&str]) -> DemoServer {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args: Vec<OsString> = vec!["--listen".into(), addr.to_string().into()];
        args.extend(extra_args.iter().map(OsString::from));
        let mut proc = Proc::spawn("demo-mcp-server", dir, &Binaries::demo_server(), &args, &[]);
        proc.wait_http_ok(&format!("http://{addr}/healthz")).await;
        DemoServer { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Every request the demo server received since the last clear (`GET /_recorded`).
    pub async fn recorded(&self) -> Vec<Value> {
        let resp = http_client()
            .get(format!("{}/_recorded", self.url()))
            .send()
            .await
            .expect("GET /_recorded");
        assert_eq!(resp.status().as_u16(), 200, "GET /_recorded");
        resp.json().await.expect("/_recorded is a JSON array")
    }

    pub async fn clear_recorded(&self) {
        let resp = http_client()
            .delete(format!("{}/_recorded", self.url()))
            .send()
            .await
            .expect("DELETE /_recorded");
        assert!(resp.status().is_success(), "DELETE /_recorded");
    }

    /// `POST /_test/authorization-server` (a server started with `--resource-metadata-issuer`):
    /// from now on its RFC 9728 metadata names `issuer` and it introspects tokens at
    /// `introspect`, as an upstream that rotated its authorization server. Its JSON answer.
    pub async fn set_authorization_server(&self, issuer: &str, introspect: &str) -> Value {
        let resp = http_client()
            .post(format!("{}/_test/authorization-server", self.url()))
            .query(&[("issuer", issuer), ("introspect", introspect)])
            .send()
            .await
            .expect("POST /_test/authorization-server");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "POST /_test/authorization-server"
        );
        resp.json().await.expect("authorization-server JSON")
    }

    /// `http://ADDR/.well-known/oauth-protected-resource/mcp` (with
    /// `--resource-metadata-issuer`).
    pub fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.url())
    }

    /// Asserts nothing reached the upstream since the last clear.
    pub async fn assert_nothing_recorded(&self, context: &str) {
        let recorded = self.recorded().await;
        assert!(
            recorded.is_empty(),
            "{context}: requests reached the upstream MCP server:\n{}",
            serde_json::to_string_pretty(&recorded).unwrap()
        );
    }
}

// =============================================================================================
// Demo OAuth provider (the upstream's authorization server)
// =============================================================================================

/// The demo OAuth provider's defaults (`demo-oauth-provider --help`).
pub const PROVIDER_CLIENT_ID: &str = "warden-demo";
pub const PROVIDER_CLIENT_SECRET: &str = "warden-demo-secret";
pub const PROVIDER_USER: &str = "alice";
pub const PROVIDER_PASSWORD: &str = "alice-password";

pub struct OAuthProvider {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Serves HTTPS ([`OAuthProvider::start_https`]).
    pub https: bool,
    /// A CA (PEM) the harness's calls to it trust besides the [`trust_ca`] ones: the `ca.pem`
    /// beside its certificate, as [`tls::test_certificate`] writes it.
    pub ca_pem: Option<Vec<u8>>,
}

impl OAuthProvider {
    /// Starts `demo-oauth-provider --listen 127.0.0.1:<port> <extra_args>` and waits for
    /// `/healthz`.
    pub async fn start(dir: &Path, port: u16, extra_args: &[&str]) -> OAuthProvider {
        OAuthProvider::spawn(dir, port, None, extra_args).await
    }

    /// [`OAuthProvider::start`] over HTTPS: `--tls-cert cert --tls-key key` (PEM; make them
    /// with [`tls::test_certificate`], `IP:127.0.0.1` among the names). [`Self::url`] and the
    /// issuer are then `https://127.0.0.1:<port>`, and the harness's own calls to it
    /// ([`Self::http`]: the health wait, [`Self::stats`], [`Self::hook`], [`Self::tokens`])
    /// trust the `ca.pem` beside `cert` when there is one, and the [`trust_ca`] CAs. Nothing
    /// else trusts it: give the CA to the token service (`outbound.extra_ca_file`) and to the
    /// demo server (`--introspect-ca`).
    pub async fn start_https(
        dir: &Path,
        port: u16,
        cert: &Path,
        key: &Path,
        extra_args: &[&str],
    ) -> OAuthProvider {
        OAuthProvider::spawn(dir, port, Some((cert, key)), extra_args).await
    }

    async fn spawn(
        dir: &Path,
        port: u16,
        tls: Option<(&Path, &Path)>,
        extra_args: &[&str],
    ) -> OAuthProvider {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args: Vec<OsString> = vec!["--listen".into(), addr.to_string().into()];
        if let Some((cert, key)) = tls {
            args.extend([
                "--tls-cert".into(),
                cert.as_os_str().to_owned(),
                "--tls-key".into(),
                key.as_os_str().to_owned(),
            ]);
        }
        args.extend(extra_args.iter().map(OsString::from));
        let ca_pem = tls.and_then(|(cert, _)| std::fs::read(cert.with_file_name("ca.pem")).ok());
        let proc = Proc::spawn(
            "demo-oauth-provider",
            dir,
            &Binaries::oauth_provider(),
            &args,
            &[],
        );
        let mut provider = OAuthProvider {
            proc,
            addr,
            https: tls.is_some(),
            ca_pem,
        };
        let (http, healthz) = (provider.http(), format!("{}/healthz", provider.url()));
        provider.proc.wait_http_ok_with(&http, &healthz).await;
        provider
    }

    /// `https://…` after [`Self::start_https`], else `http://…`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// An [`http_client`] that reaches it (trusting [`Self::ca_pem`] too).
    pub fn http(&self) -> reqwest::Client {
        http_client_trusting(self.ca_pem.as_deref())
    }

    pub fn introspect_url(&self) -> String {
        format!("{}/introspect", self.url())
    }

    /// The whole code flow as a client with the default credentials (PKCE S256, the browser
    /// played by reqwest, the default user approving): the token response.
    pub async fn tokens(&self, scope: &str) -> Value {
        self.tokens_for(scope, None).await
    }

    /// [`Self::tokens`] with `resource` (RFC 8707) in the authorization and token requests, as
    /// a provider started with `--resource` needs.
    pub async fn tokens_for(&self, scope: &str, resource: Option<&str>) -> Value {
        use base64::Engine as _;
        use sha2::Digest as _;
        let http = self.http();
        let redirect_uri = "http://127.0.0.1:1/callback";
        let verifier = "demo-verifier-demo-verifier-demo-verifier-demo-verifier";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let page = http
            .get(format!("{}/authorize", self.url()))
            .query(&[
                ("response_type", "code"),
                ("client_id", PROVIDER_CLIENT_ID),
                ("redirect_uri", redirect_uri),
                ("state", "demo-state"),
                ("scope", scope),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .query(&resource.map(|r| vec![("resource", r)]).unwrap_or_default())
            .send()
            .await
            .expect("GET /authorize");
        assert_eq!(page.status().as_u16(), 200, "GET /authorize");
        let html = page.text().await.expect("consent page");
        let needle = "name=\"request\" value=\"";
        let start = html
            .find(needle)
            .unwrap_or_else(|| panic!("no request id in the consent page: {html}"))
            + needle.len();
        let request = &html[start..start + html[start..].find('"').expect("closing quote")];
        let resp = http
            .post(format!("{}/authorize", self.url()))
            .form(&[
                ("request", request),
                ("username", PROVIDER_USER),
                ("password", PROVIDER_PASSWORD),
                ("decision", "approve"),
            ])
            .send()
            .await
            .expect("POST /authorize");
        assert_eq!(resp.status().as_u16(), 302, "POST /authorize");
        let location = Url::parse(resp.headers()[LOCATION].to_str().expect("Location"))
            .expect("Location is a URL");
        let code = location
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no code in {location}"));
        let resp = http
            .post(format!("{}/token", self.url()))
            .basic_auth(PROVIDER_CLIENT_ID, Some(PROVIDER_CLIENT_SECRET))
            .form(
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", verifier),
                ]
                .into_iter()
                .chain(resource.map(|r| ("resource", r)))
                .collect::<Vec<_>>(),
            )
            .send()
            .await
            .expect("POST /token");
        assert_eq!(resp.status().as_u16(), 200, "POST /token");
        resp.json().await.expect("token response")
    }

    /// `GET /_test/stats`.
    pub async fn stats(&self) -> Value {
        let resp = self
            .http()
            .get(format!("{}/_test/stats", self.url()))
            .send()
            .await
            .expect("GET /_test/stats");
        resp.json().await.expect("stats JSON")
    }

    /// `POST /_test/<hook>?<query>` (e.g. `("revoke-user", "user=alice")`), asserting 200.
    pub async fn hook(&self, hook: &str, query: &str) -> Value {
        self.hook_with(hook, query, None).await
    }

    /// [`Self::hook`] with a JSON body (e.g. `claims`).
    pub async fn hook_with(&self, hook: &str, query: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http()
            .post(format!("{}/_test/{hook}?{query}", self.url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /_test/{hook}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "POST /_test/{hook}?{query}");
        resp.json().await.expect("hook JSON")
    }
}

// =============================================================================================
// Operator configuration
// =============================================================================================

/// Argon2id PHC hash of `password`, with cheap parameters (tests hash and verify in debug builds).
pub fn password_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).expect("argon2 params");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"warden-e2e-salt!").expect("salt");
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

/// An extra MCP route (same upstream demo server) to test audience separation.
#[derive(Debug, Clone)]
pub struct ExtraRoute {
    pub name: String,
    pub prefix: String,
}

type ConfigHook = Box<dyn FnOnce(&mut Value) + Send>;

/// Knobs for [`Stack::start_with`].
pub struct StackOptions {
    pub access_token_ttl_seconds: u64,
    pub refresh_token_ttl_seconds: u64,
    /// `ES256` or `EdDSA`.
    pub signing_alg: String,
    pub extra_routes: Vec<ExtraRoute>,
    /// Last word on the operator config (a JSON value written as YAML).
    pub config_hook: Option<ConfigHook>,
    /// Start Envoy (default). Without it the Envoy port is free for a stand-in (tests of the
    /// token service alone); `Stack::envoy` is then `None`.
    pub envoy: bool,
    /// Envoy worker threads (`--concurrency`, default 1).
    pub envoy_workers: u32,
    /// Extra environment for Envoy (e.g. `MCP_WARDEN_SESSION_KEY`).
    pub envoy_env: Vec<(String, String)>,
    /// Ports picked beforehand (a server started first must know the token service's URL).
    pub ports: Option<Ports>,
    /// Last word on the rendered Envoy bootstrap (YAML text), before Envoy starts.
    pub bootstrap_hook: Option<BootstrapHook>,
    /// Envoy's log level (`-l`; default `warn`, with the `wasm` component at `info`).
    pub envoy_log_level: Option<String>,
    /// Extra environment for the token service (e.g. `RUST_LOG`).
    pub token_service_env: Vec<(String, String)>,
    /// The filter Envoy loads (default [`Binaries::wasm`]; e.g. one taken out of an image).
    pub wasm: Option<PathBuf>,
}

pub type BootstrapHook = Box<dyn FnOnce(&mut String) + Send>;

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            access_token_ttl_seconds: 300,
            refresh_token_ttl_seconds: 3600,
            signing_alg: "ES256".into(),
            extra_routes: Vec::new(),
            config_hook: None,
            envoy: true,
            envoy_workers: 1,
            envoy_env: Vec::new(),
            ports: None,
            bootstrap_hook: None,
            envoy_log_level: None,
            token_service_env: Vec::new(),
            wasm: None,
        }
    }
}

/// The operator config (`warden.yaml`, as in README "Operator configuration") for these ports.
pub fn operator_config(dir: &Path, ports: &Ports, opts: &StackOptions) -> Value {
    let envoy_from = format!("http://127.0.0.1:{}", ports.envoy);
    let upstream = format!("http://127.0.0.1:{}/mcp", ports.demo);
    let mut routes = vec![json!({
        "name": "demo",
        "from": envoy_from,
        "prefix": "/mcp",
        "to": upstream,
        "mcp": { "server": {} },
        "policy": { "allow": { "and": [{ "authenticated_user": true }] } },
    })];
    for r in &opts.extra_routes {
        routes.push(json!({
            "name": r.name,
            "from": envoy_from,
            "prefix": r.prefix,
            "to": upstream,
            "mcp": { "server": {} },
            "policy": { "allow": { "and": [{ "authenticated_user": true }] } },
        }));
    }
    json!({
        "authorization_server": {
            "issuer": format!("http://127.0.0.1:{}", ports.token_service),
            "listen": format!("127.0.0.1:{}", ports.token_service),
            // Always bound (the revocation feed): a port of its own, for tests running at once.
            "internal_listen": format!("127.0.0.1:{}", free_port()),
            "access_token_ttl_seconds": opts.access_token_ttl_seconds,
            "refresh_token_ttl_seconds": opts.refresh_token_ttl_seconds,
            "signing_key": {
                "file": dir.join("signing-key.json"),
                "alg": opts.signing_alg,
            },
        },
        "storage": { "sqlite": dir.join("warden.db") },
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
            "listen": format!("127.0.0.1:{}", ports.envoy),
            "admin": format!("127.0.0.1:{}", ports.envoy_admin),
        },
        "routes": routes,
    })
}

pub fn write_yaml(path: &Path, value: &Value) {
    let yaml = serde_yaml::to_string(value).expect("config serializes to YAML");
    std::fs::write(path, yaml).expect("write config");
}

/// Runs `warden-token-service render-envoy --config FILE --wasm WASM` and writes its stdout
/// (the Envoy bootstrap) to `out`.
pub async fn render_envoy(config: &Path, wasm: &Path, out: &Path) {
    let output = Command::new(Binaries::token_service())
        .arg("render-envoy")
        .arg("--config")
        .arg(config)
        .arg("--wasm")
        .arg(wasm)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run warden-token-service render-envoy");
    if !output.status.success() {
        panic!(
            "`warden-token-service render-envoy --config {} --wasm {}` failed with {}:\n{}",
            config.display(),
            wasm.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(!output.stdout.is_empty(), "render-envoy printed nothing");
    std::fs::write(out, &output.stdout).expect("write envoy bootstrap");
}

/// The environment variable Envoy passes the internal credential to the filter in.
pub const INTERNAL_CREDENTIAL_ENV: &str = "MCP_WARDEN_INTERNAL_CREDENTIAL";

/// The internal credential the token service created in `dir` (the stack's default
/// `internal_credential_file`), when a route needs the internal listener.
pub fn internal_credential(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("internal-credential"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// The `Authorization` of a `POST` to the internal API, signed with `credential` as the
/// filter signs it.
pub fn internal_authorization(credential: &str, path: &str, body: &[u8]) -> String {
    let key = warden_core::internal_api::InternalKey::from_credential(credential)
        .expect("a credential the token service made");
    let mut nonce = [0u8; warden_core::internal_api::NONCE_BYTES];
    getrandom::getrandom(&mut nonce).expect("randomness");
    key.authorization("POST", path, body, jwt::now() as i64, &nonce)
}

/// Starts Envoy with `bootstrap`; `base_id` must be unique among concurrently running Envoys
/// (the admin port is used). With no token service behind it (configuration tests): the
/// filter still needs an internal credential to load (it polls the revocation feed), so it
/// gets one nobody accepts.
pub fn spawn_envoy(dir: &Path, name: &str, bootstrap: &Path, base_id: u16) -> Proc {
    spawn_envoy_with(
        dir,
        name,
        bootstrap,
        base_id,
        1,
        &[(
            INTERNAL_CREDENTIAL_ENV,
            "e2e-configuration-test-credential-0123456789",
        )],
    )
}

/// [`spawn_envoy`] with `workers` worker threads and extra environment variables.
pub fn spawn_envoy_with(
    dir: &Path,
    name: &str,
    bootstrap: &Path,
    base_id: u16,
    workers: u32,
    envs: &[(&str, &str)],
) -> Proc {
    spawn_envoy_logging(dir, name, bootstrap, (base_id, workers), envs, None)
}

/// [`spawn_envoy_with`] at log `level` for every component (default: `warn`, `wasm` at
/// `info`).
pub fn spawn_envoy_logging(
    dir: &Path,
    name: &str,
    bootstrap: &Path,
    (base_id, workers): (u16, u32),
    envs: &[(&str, &str)],
    level: Option<&str>,
) -> Proc {
    Proc::spawn(
        name,
        dir,
        &Binaries::envoy(),
        &[
            "-c".into(),
            bootstrap.into(),
            "--base-id".into(),
            base_id.to_string().into(),
            "--concurrency".into(),
            workers.to_string().into(),
            "-l".into(),
            level.unwrap_or("warn").into(),
            // The filter's authorize log lines (`wasm log mcp-warden: authorize {json}`) are info level.
            "--component-log-level".into(),
            format!("wasm:{}", level.unwrap_or("info")).into(),
            // Access log lines reach the log file promptly (default: every 10 s).
            "--file-flush-interval-msec".into(),
            "100".into(),
        ],
        envs,
    )
}

/// What became of a starting Envoy.
#[derive(Debug)]
pub enum EnvoyOutcome {
    Ready,
    Exited(ExitStatus),
    NotReady,
}

/// Polls Envoy's admin `/ready` until it answers 200 (`LIVE`), the process exits, or `timeout`.
pub async fn envoy_outcome(envoy: &mut Proc, admin_port: u16, timeout: Duration) -> EnvoyOutcome {
    let client = http_client();
    let url = format!("http://127.0.0.1:{admin_port}/ready");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = envoy.exited() {
            return EnvoyOutcome::Exited(status);
        }
        if let Ok(resp) = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if resp.status().as_u16() == 200 {
                return EnvoyOutcome::Ready;
            }
        }
        if Instant::now() > deadline {
            return EnvoyOutcome::NotReady;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// =============================================================================================
// The whole stack
// =============================================================================================

/// Token service + demo MCP server + Envoy with the warden filter, on free ports, in a temp dir.
pub struct Stack {
    // Field order = drop order: processes go before the directory holding their logs.
    pub envoy: Option<Proc>,
    pub token_service: Proc,
    pub demo: DemoServer,
    pub ports: Ports,
    pub config: Value,
    pub config_path: PathBuf,
    pub bootstrap_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(mut opts: StackOptions) -> Stack {
        // Resolve every binary first so a missing one fails fast with the `make test` hint.
        let token_bin = Binaries::token_service();
        let _ = Binaries::demo_server();
        let wasm = opts.envoy.then(|| {
            let _ = Binaries::envoy();
            opts.wasm.take().unwrap_or_else(Binaries::wasm)
        });

        let dir = tempfile::Builder::new()
            .prefix("warden-e2e-")
            .tempdir()
            .expect("temp dir");
        let ports = opts.ports.take().unwrap_or_else(Ports::pick);
        let demo = DemoServer::start(dir.path(), ports.demo).await;

        // Imported at the token service's first start: the tests mint tokens with it.
        jwt::write_key_file(&dir.path().join("signing-key.json"), &opts.signing_alg);
        let mut config = operator_config(dir.path(), &ports, &opts);
        if let Some(hook) = opts.config_hook.take() {
            hook(&mut config);
        }
        let config_path = dir.path().join("warden.yaml");
        write_yaml(&config_path, &config);

        let token_env: Vec<(&str, &str)> = opts
            .token_service_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut token_service = Proc::spawn(
            "token-service",
            dir.path(),
            &token_bin,
            &[
                "serve".into(),
                "--config".into(),
                config_path.clone().into(),
            ],
            &token_env,
        );
        token_service
            .wait_http_ok(&format!("http://127.0.0.1:{}/readyz", ports.token_service))
            .await;

        let bootstrap_path = dir.path().join("envoy.yaml");
        let envoy = match wasm {
            Some(wasm) => {
                render_envoy(&config_path, &wasm, &bootstrap_path).await;
                if let Some(hook) = opts.bootstrap_hook.take() {
                    let mut yaml = std::fs::read_to_string(&bootstrap_path).expect("bootstrap");
                    hook(&mut yaml);
                    std::fs::write(&bootstrap_path, yaml).expect("write bootstrap");
                }
                // The filter signs its internal calls with the credential the token service
                // created at start; it reaches Envoy through the environment, as in `make run`.
                if let Some(credential) = internal_credential(dir.path()) {
                    opts.envoy_env
                        .push((INTERNAL_CREDENTIAL_ENV.into(), credential));
                }
                let envs: Vec<(&str, &str)> = opts
                    .envoy_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut envoy = spawn_envoy_logging(
                    dir.path(),
                    "envoy",
                    &bootstrap_path,
                    (ports.envoy_admin, opts.envoy_workers),
                    &envs,
                    opts.envoy_log_level.as_deref(),
                );
                match envoy_outcome(&mut envoy, ports.envoy_admin, READY_TIMEOUT).await {
                    EnvoyOutcome::Ready => {}
                    other => envoy.fail(&format!("did not become ready: {other:?}")),
                }
                Some(envoy)
            }
            None => None,
        };

        Stack {
            envoy,
            token_service,
            demo,
            ports,
            config,
            config_path,
            bootstrap_path,
            dir,
        }
    }

    pub fn envoy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.envoy)
    }

    /// The MCP URL clients use (resource of route `demo`).
    pub fn mcp_url(&self) -> String {
        self.route_url("/mcp")
    }

    pub fn route_url(&self, prefix: &str) -> String {
        format!("{}{prefix}", self.envoy_url())
    }

    /// `<envoy>/.well-known/oauth-protected-resource/mcp`, as advertised in `WWW-Authenticate`.
    pub fn resource_metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            self.envoy_url()
        )
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.token_service)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.dir.path().join("signing-key.json")
    }

    /// The token service's JWKS.
    pub async fn jwks(&self) -> Value {
        let resp = http_client()
            .get(format!("{}/.well-known/jwks.json", self.issuer()))
            .send()
            .await
            .expect("GET jwks");
        assert_eq!(resp.status().as_u16(), 200, "GET jwks");
        resp.json().await.expect("jwks JSON")
    }

    /// The token service's signing key (to mint tokens), with the `kid` its JWKS publishes.
    pub async fn signing_key(&self) -> TestKey {
        let jwks = self.jwks().await;
        let kid = jwks["keys"][0]["kid"]
            .as_str()
            .unwrap_or_else(|| panic!("JWKS has no kid: {jwks}"))
            .to_owned();
        TestKey::load(&self.signing_key_path(), kid)
    }

    /// Replaces the token service's signing key outright with one no filter has seen: a new
    /// store (the keys live there) with a new key file imported. Sessions and clients are gone
    /// with the store; tokens already issued name a key the JWKS no longer has. A rotation
    /// (`rotate-signing-key`) never does this; the tests of the filter's handling of unknown
    /// and withdrawn keys do.
    pub async fn replace_signing_key(&mut self) {
        self.token_service.kill().await;
        for name in [
            "warden.db",
            "warden.db-wal",
            "warden.db-shm",
            "signing-key.json",
        ] {
            match std::fs::remove_file(self.dir.path().join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot remove {name}: {e}"),
            }
        }
        let alg = self.config["authorization_server"]["signing_key"]["alg"]
            .as_str()
            .unwrap_or("ES256")
            .to_owned();
        jwt::write_key_file(&self.signing_key_path(), &alg);
        self.restart_token_service().await;
    }

    /// Kills the token service and starts it again with the same config and database.
    pub async fn restart_token_service(&mut self) {
        self.token_service.restart().await;
        let url = format!("http://127.0.0.1:{}/readyz", self.ports.token_service);
        self.token_service.wait_http_ok(&url).await;
    }

    /// Full OAuth sign-in against route `demo` as the demo user.
    pub async fn sign_in(&self) -> SignedIn {
        sign_in(&self.mcp_url()).await
    }

    /// A token for the demo user and `audience`, minted with the token service's key (same
    /// claims as a real sign-in, without the OAuth round trips).
    pub async fn mint_token(&self, audience: &str) -> String {
        let key = self.signing_key().await;
        key.sign(&jwt::claims(&self.issuer(), audience, jwt::now(), 300))
    }

    /// Everything Envoy logged so far (the filter's `wasm log mcp-warden: authorize {json}` lines included).
    pub fn envoy_log(&self) -> String {
        self.envoy.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// Envoy admin `/stats?filter=<filter>` as `name → value` (counters and gauges).
    pub async fn envoy_stats(&self, filter: &str) -> BTreeMap<String, u64> {
        envoy_admin_stats(self.ports.envoy_admin, filter).await
    }

    /// Envoy's `/stats/prometheus`, parsed.
    pub async fn envoy_prometheus(&self) -> Vec<PromSample> {
        envoy_prometheus(self.ports.envoy_admin).await
    }
}

/// The admin `/stats?filter=<filter>` of the Envoy whose admin interface is on `admin_port`,
/// as `name → value` (counters and gauges).
pub async fn envoy_admin_stats(admin_port: u16, filter: &str) -> BTreeMap<String, u64> {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter={filter}");
    let text = http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("stats body");
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// One sample of Envoy's `/stats/prometheus`: the metric name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The admin `/stats/prometheus` of the Envoy whose admin interface is on `admin_port`, every
/// sample of it (comments skipped; label values unescaped).
pub async fn envoy_prometheus(admin_port: u16) -> Vec<PromSample> {
    let url = format!("http://127.0.0.1:{admin_port}/stats/prometheus");
    let text = http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("prometheus body");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_prom_line)
        .collect()
}

/// `name{a="x",b="y"} 3` (or `name 3`).
fn parse_prom_line(line: &str) -> Option<PromSample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, mut rest) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => val.push(c),
            }
        }
        let end = end?;
        labels.insert(key.to_string(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(PromSample {
        name: name.to_string(),
        labels,
        value,
    })
}

// =============================================================================================
// Raw HTTP
// =============================================================================================

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The body as JSON; an SSE body yields the JSON of its first `data:` event.
    pub fn json(&self) -> Value {
        if let Ok(v) = serde_json::from_str(&self.body) {
            return v;
        }
        for line in self.body.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str(data.trim()) {
                    return v;
                }
            }
        }
        panic!(
            "body is neither JSON nor SSE with JSON data (status {}): {}",
            self.status, self.body
        )
    }
}

/// Sends one request with exactly the given headers (repeated names are sent repeatedly).
pub async fn raw_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let method = Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let mut req = http_client().request(method, url).headers(map);
    if let Some(body) = body {
        req = req.body(body.to_owned());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    // SSE responses may stay open; read what arrives within a short window.
    let is_sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if is_sse {
        read_sse_prefix(resp).await
    } else {
        resp.text().await.unwrap_or_default()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn read_sse_prefix(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                buf.extend_from_slice(&chunk);
                // Stop once a complete JSON-RPC response event has arrived.
                let text = String::from_utf8_lossy(&buf);
                if text.lines().any(|l| {
                    l.strip_prefix("data:")
                        .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok())
                        .is_some_and(|v| v.get("result").is_some() || v.get("error").is_some())
                }) {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `_meta` a `2026-07-28` request carries.
pub fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "warden-e2e", "version": "0.1.0" },
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

/// A `2026-07-28` JSON-RPC request body (params get the per-request `_meta`).
pub fn stateless_body(id: u64, method: &str, params: Value) -> Value {
    let mut params = if params.is_null() { json!({}) } else { params };
    params["_meta"] = stateless_meta();
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// Sends a `2026-07-28` MCP request (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` set from
/// `method` and `params.name`) plus `extra_headers`.
pub async fn mcp_post(
    url: &str,
    extra_headers: &[(&str, &str)],
    method: &str,
    params: Value,
) -> RawResponse {
    let body = stateless_body(1, method, params);
    let name = body["params"]["name"]
        .as_str()
        .or_else(|| body["params"]["uri"].as_str())
        .map(str::to_owned);
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(name) = name.as_deref() {
        headers.push(("mcp-name", name));
    }
    headers.extend_from_slice(extra_headers);
    raw_request("POST", url, &headers, Some(&body.to_string())).await
}

/// `Bearer a="b", c="d"` → ("bearer", {a: b, c: d}). Keys lower-cased.
pub fn parse_www_authenticate(value: &str) -> (String, BTreeMap<String, String>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, val);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// Asserts a 401 with `WWW-Authenticate: Bearer resource_metadata="<expected>"`, and
/// `error="invalid_token"` iff `token_presented`.
/// RFC 6750 §3.1 `invalid_request` (e.g. two Authorization headers): 400 with the challenge.
pub fn assert_invalid_request_challenge(
    resp: &RawResponse,
    resource_metadata: &str,
    context: &str,
) {
    assert_eq!(
        resp.status, 400,
        "{context}: expected 400, got {} ({})",
        resp.status, resp.body
    );
    let challenges = resp.header_all("www-authenticate");
    assert_eq!(challenges.len(), 1, "{context}: {challenges:?}");
    let (scheme, params) = parse_www_authenticate(&challenges[0]);
    assert_eq!(scheme, "bearer", "{context}: {:?}", challenges[0]);
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("invalid_request"),
        "{context}"
    );
    assert_eq!(
        params.get("resource_metadata").map(String::as_str),
        Some(resource_metadata),
        "{context}"
    );
}

pub fn assert_bearer_challenge(
    resp: &RawResponse,
    resource_metadata: &str,
    token_presented: bool,
    context: &str,
) {
    assert_eq!(
        resp.status, 401,
        "{context}: expected 401, got {} (headers {:?}, body {})",
        resp.status, resp.headers, resp.body
    );
    let challenges = resp.header_all("www-authenticate");
    assert_eq!(
        challenges.len(),
        1,
        "{context}: expected one WWW-Authenticate header, got {challenges:?}"
    );
    let (scheme, params) = parse_www_authenticate(&challenges[0]);
    assert_eq!(scheme, "bearer", "{context}: challenge {:?}", challenges[0]);
    assert_eq!(
        params.get("resource_metadata").map(String::as_str),
        Some(resource_metadata),
        "{context}: challenge {:?}",
        challenges[0]
    );
    if token_presented {
        assert_eq!(
            params.get("error").map(String::as_str),
            Some("invalid_token"),
            "{context}: a presented token must yield error=\"invalid_token\": {:?}",
            challenges[0]
        );
    } else {
        assert!(
            !params.contains_key("error"),
            "{context}: no credentials → no error= (RFC 6750 §3.1): {:?}",
            challenges[0]
        );
    }
}

/// `POST token_endpoint grant_type=refresh_token` for a public client.
pub async fn refresh_raw(
    token_endpoint: &str,
    client_id: &str,
    refresh_token: &str,
) -> RawResponse {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client_id),
    ];
    let resp = http_client()
        .post(token_endpoint)
        .header("accept", "application/json")
        .form(&form)
        .send()
        .await
        .expect("POST token endpoint");
    RawResponse {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap_or_default(),
    }
}

// =============================================================================================
// OAuth sign-in (rmcp OAuth client + a reqwest "browser")
// =============================================================================================

/// Result of a completed sign-in.
pub struct SignedIn {
    pub mcp_url: String,
    pub client_id: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// The token endpoint response as JSON.
    pub token_response: Value,
    pub token_endpoint: String,
    /// The `WWW-Authenticate` challenge of the unauthenticated first request.
    pub challenge: String,
    /// rmcp's authorized manager (holds the tokens; refreshes on 401).
    pub manager: AuthorizationManager,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("mcp_url", &self.mcp_url)
            .field("client_id", &self.client_id)
            .field("token_endpoint", &self.token_endpoint)
            .finish()
    }
}

/// The loopback redirect URI registered by DCR. Nothing listens there: the browser stops at
/// the redirect and hands `code`/`state` to rmcp.
pub fn redirect_uri() -> String {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| format!("http://127.0.0.1:{}/callback", free_port()))
        .clone()
}

/// Sends an unauthenticated `2026-07-28` `tools/list` and returns the 401's `WWW-Authenticate`.
pub async fn unauthenticated_challenge(mcp_url: &str) -> String {
    let resp = mcp_post(mcp_url, &[], "tools/list", json!({})).await;
    assert_eq!(
        resp.status, 401,
        "unauthenticated request to {mcp_url} must be challenged, got {} {}",
        resp.status, resp.body
    );
    resp.header("www-authenticate")
        .unwrap_or_else(|| panic!("401 from {mcp_url} without WWW-Authenticate"))
}

/// Signs in as the demo user.
pub async fn sign_in(mcp_url: &str) -> SignedIn {
    sign_in_as(mcp_url, DEMO_EMAIL, DEMO_PASSWORD).await
}

/// Drives the whole flow: 401 → RFC 9728 resource metadata (from the challenge) → RFC 8414 AS
/// metadata → dynamic client registration → authorization URL (rmcp), then the browser part
/// (login form, consent if asked) with reqwest, then rmcp's callback handling (code exchange).
pub async fn sign_in_as(mcp_url: &str, email: &str, password: &str) -> SignedIn {
    sign_in_with(mcp_url, (email, password), None).await
}

/// [`sign_in_as`] with other credentials for an upstream OAuth provider's login form.
/// The start of a sign-in: discovery and DCR (rmcp); the authorization URL and the
/// redirect URI the browser must come back to.
async fn start_sign_in(mcp_url: &str) -> (OAuthState, String, String, String) {
    let challenge = unauthenticated_challenge(mcp_url).await;

    // rmcp's own client, unless names must resolve as the test says.
    let client = (!resolved().is_empty()).then(mcp_http_client);
    let mut state = OAuthState::new(mcp_url, client)
        .await
        .unwrap_or_else(|e| panic!("OAuthState::new({mcp_url}): {e}"));
    let redirect = redirect_uri();
    state
        .start_authorization(
            AuthorizationRequest::new(redirect.clone())
                .with_client_name("warden-e2e")
                .with_challenge(challenge.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("rmcp start_authorization (discovery + DCR) failed: {e:?}"));
    let auth_url = state
        .get_authorization_url()
        .await
        .unwrap_or_else(|e| panic!("rmcp get_authorization_url: {e:?}"));

    (state, auth_url, redirect, challenge)
}

/// Runs a sign-in's browser part and returns where the MCP client was sent back to (its
/// query carries a code or an error); nothing is exchanged.
pub async fn authorization_outcome(
    mcp_url: &str,
    gateway: (&str, &str),
    upstream: Option<UpstreamLogin<'_>>,
) -> Url {
    let (_, auth_url, redirect, _) = start_sign_in(mcp_url).await;
    let back = browser_authorize_to(&auth_url, &redirect, gateway, upstream).await;
    Url::parse(&back).expect("redirect URL")
}

pub async fn sign_in_with(
    mcp_url: &str,
    gateway: (&str, &str),
    upstream: Option<UpstreamLogin<'_>>,
) -> SignedIn {
    let (mut state, auth_url, redirect, challenge) = start_sign_in(mcp_url).await;
    let callback = browser_authorize_with(&auth_url, &redirect, gateway, upstream).await;
    state
        .handle_callback_url(&callback)
        .await
        .unwrap_or_else(|e| panic!("rmcp code exchange for {callback} failed: {e:?}"));

    let (client_id, token) = state
        .get_credentials()
        .await
        .unwrap_or_else(|e| panic!("rmcp get_credentials: {e:?}"));
    let token_response =
        serde_json::to_value(token.expect("tokens after the code exchange")).expect("token JSON");
    let access_token = token_response["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let refresh_token = token_response["refresh_token"].as_str().map(str::to_owned);

    // `handle_callback_url` already moved the state machine to `Authorized`.
    let manager = state
        .into_authorization_manager()
        .expect("authorized state has a manager");

    let token_endpoint = discover_token_endpoint(&challenge, mcp_url).await;
    SignedIn {
        mcp_url: mcp_url.to_owned(),
        client_id,
        access_token,
        refresh_token,
        token_response,
        token_endpoint,
        challenge,
        manager,
    }
}

/// Follows the challenge's `resource_metadata` → `authorization_servers[0]` → AS metadata.
async fn discover_token_endpoint(challenge: &str, mcp_url: &str) -> String {
    let (_, params) = parse_www_authenticate(challenge);
    let prm_url = params.get("resource_metadata").unwrap_or_else(|| {
        panic!("challenge from {mcp_url} has no resource_metadata: {challenge}")
    });
    let client = http_client();
    let prm: Value = client
        .get(prm_url)
        .send()
        .await
        .expect("GET resource metadata")
        .json()
        .await
        .expect("resource metadata JSON");
    let issuer = prm["authorization_servers"][0]
        .as_str()
        .unwrap_or_else(|| panic!("resource metadata without authorization_servers: {prm}"));
    let asm: Value = client
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            issuer.trim_end_matches('/')
        ))
        .send()
        .await
        .expect("GET AS metadata")
        .json()
        .await
        .expect("AS metadata JSON");
    asm["token_endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("AS metadata without token_endpoint: {asm}"))
        .to_owned()
}

fn same_endpoint(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path() == b.path()
}

const CONSENT_WORDS: &[&str] = &[
    "allow",
    "approve",
    "accept",
    "authorize",
    "authorise",
    "consent",
    "grant",
    "continue",
    "yes",
];

/// The button that says yes (allow, approve, …), else the form's first button.
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
            CONSENT_WORDS.iter().any(|w| hay.contains(w))
                && !hay.contains("deny")
                && !hay.contains("cancel")
        })
        .or_else(|| form.buttons.first())
}

/// Plays the browser from the authorization URL until the redirect to `redirect_uri`, which is
/// returned (not followed). Handles a login form (any form with a password field: fills
/// `email`/`password`-like fields, keeps every other input such as the CSRF token and flow id)
/// and a consent form (submitted with its allow/approve button).
pub async fn browser_authorize(
    auth_url: &str,
    redirect_uri: &str,
    email: &str,
    password: &str,
) -> String {
    browser_authorize_with(auth_url, redirect_uri, (email, password), None).await
}

/// The user at an upstream OAuth provider's login-and-consent form.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLogin<'a> {
    pub user: &'a str,
    pub password: &'a str,
    /// Approve (true) or deny (false) at the provider.
    pub approve: bool,
}

/// [`browser_authorize`] where a second site's login form (an upstream OAuth provider's)
/// gets `upstream`'s credentials and decision instead of the gateway's.
pub async fn browser_authorize_with(
    auth_url: &str,
    redirect_uri: &str,
    gateway: (&str, &str),
    upstream: Option<UpstreamLogin<'_>>,
) -> String {
    let redirect = browser_authorize_to(auth_url, redirect_uri, gateway, upstream).await;
    let next = Url::parse(&redirect).expect("redirect URL");
    if let Some((_, err)) = next.query_pairs().find(|(k, _)| k == "error") {
        panic!("authorization failed: {err} (redirect {next})");
    }
    redirect
}

/// Plays the browser like [`browser_authorize_with`] and returns the redirect to
/// `redirect_uri` whatever it carries (a code or an error).
pub async fn browser_authorize_to(
    auth_url: &str,
    redirect_uri: &str,
    gateway: (&str, &str),
    upstream: Option<UpstreamLogin<'_>>,
) -> String {
    let mut first_login_site: Option<String> = None;

    let browser = with_resolved(reqwest::Client::builder())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("browser client");
    let redirect = Url::parse(redirect_uri).expect("redirect uri");
    let mut url = Url::parse(auth_url).expect("authorization URL");
    let mut form_body: Option<(Method, Vec<(String, String)>)> = None;
    // Login forms seen per site: the gateway's, then an upstream provider's (upstream OAuth).
    let mut logins: HashMap<String, u32> = HashMap::new();
    let mut trail = Vec::new();

    for _ in 0..16 {
        trail.push(url.to_string());
        let resp = match form_body.take() {
            None => browser.get(url.clone()).send().await,
            Some((method, fields)) if method == Method::GET => {
                let mut u = url.clone();
                u.query_pairs_mut().extend_pairs(fields.iter());
                browser.get(u).send().await
            }
            Some((method, fields)) => {
                browser
                    .request(method, url.clone())
                    .form(&fields)
                    .send()
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("browser request to {url} failed: {e}"));
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{status} from {url} without Location"));
            let next = url
                .join(location)
                .unwrap_or_else(|e| panic!("bad Location {location:?}: {e}"));
            if same_endpoint(&next, &redirect) {
                return next.to_string();
            }
            url = next;
            continue;
        }
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            panic!("browser got {status} from {url} (trail {trail:?}):\n{body}");
        }
        let forms = html::forms(&body);
        let (form, fields) = if let Some(form) = forms.iter().find(|f| f.has_password()) {
            let site = url.origin().ascii_serialization();
            let (email, password, approve) = match (&first_login_site, upstream) {
                (Some(first), Some(up)) if *first != site => (up.user, up.password, up.approve),
                _ => (gateway.0, gateway.1, true),
            };
            first_login_site.get_or_insert_with(|| site.clone());
            let seen = logins.entry(site).or_default();
            *seen += 1;
            if *seen > 1 {
                panic!("login form shown again after signing in as {email} (wrong credentials?):\n{body}");
            }
            let mut fields = Vec::new();
            for input in &form.inputs {
                let n = input.name.to_ascii_lowercase();
                let value = if input.kind == "password" || n == "password" {
                    password.to_owned()
                } else if input.kind == "email"
                    || n == "email"
                    || n == "username"
                    || n == "login"
                    || n == "user"
                {
                    email.to_owned()
                } else {
                    input.value.clone()
                };
                fields.push((input.name.clone(), value));
            }
            // A login form that is also a consent form (an upstream provider's): approve, or
            // press the other button.
            let button = if approve {
                approving_button(form)
            } else {
                form.buttons.iter().find(|b| {
                    b.value
                        .as_deref()
                        .unwrap_or("")
                        .to_ascii_lowercase()
                        .contains("deny")
                })
            };
            if let Some(b) = button {
                if let (Some(n), Some(v)) = (&b.name, &b.value) {
                    fields.push((n.clone(), v.clone()));
                }
            }
            (form, fields)
        } else if let Some(form) = forms.first() {
            // Consent (or another confirmation): keep every input, press the "allow" button.
            let button = approving_button(form);
            let mut fields: Vec<(String, String)> = form
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.value.clone()))
                .collect();
            if let Some(b) = button {
                if let (Some(n), Some(v)) = (&b.name, &b.value) {
                    fields.push((n.clone(), v.clone()));
                }
            }
            (form, fields)
        } else {
            panic!("page {url} has no form (trail {trail:?}):\n{body}");
        };
        let action = form.action.clone().unwrap_or_default();
        url = url
            .join(&action)
            .unwrap_or_else(|e| panic!("bad form action {action:?}: {e}"));
        let method = if form.method == "get" {
            Method::GET
        } else {
            Method::POST
        };
        form_body = Some((method, fields));
    }
    panic!("no redirect to {redirect_uri} after 16 steps (trail {trail:?})");
}

// =============================================================================================
// rmcp clients in either protocol era
// =============================================================================================

/// Which protocol era an rmcp client speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Era {
    /// `2026-07-28`: `server/discover`, no session, `Mcp-Method`/`Mcp-Name` on every POST.
    Stateless,
    /// The `initialize` handshake at this version: `Mcp-Session-Id`, GET SSE stream, DELETE.
    Handshake(ProtocolVersion),
}

impl Era {
    /// Handshake at `2025-11-25` (rmcp's `LATEST_WITH_INITIALIZE`).
    pub fn handshake() -> Era {
        Era::Handshake(ProtocolVersion::V_2025_11_25)
    }

    /// The eras every end-to-end flow is run in.
    pub fn all() -> Vec<Era> {
        vec![Era::Stateless, Era::handshake()]
    }

    pub fn is_stateless(&self) -> bool {
        matches!(self, Era::Stateless)
    }
}

impl std::fmt::Display for Era {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Era::Stateless => f.write_str("2026-07-28 stateless"),
            Era::Handshake(v) => write!(f, "{v} handshake"),
        }
    }
}

/// How an rmcp client authenticates.
#[allow(clippy::large_enum_variant)] // built once per connection
pub enum ClientAuth {
    None,
    /// A fixed bearer token.
    Bearer(String),
    /// rmcp's `AuthClient` around an authorized manager (refreshes on 401).
    OAuth(AuthorizationManager),
}

pub type McpClient = RunningService<RoleClient, ClientConfig>;

/// The client identity/config; `protocol_version` is what `initialize` asks for.
pub fn client_config(era: &Era) -> ClientConfig {
    let version = match era {
        Era::Stateless => ProtocolVersion::V_2026_07_28,
        Era::Handshake(v) => v.clone(),
    };
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("warden-e2e", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(version)
}

/// rmcp's lifecycle mode for an era: `Discover` pins `2026-07-28` (never falls back);
/// `Initialize` always runs the legacy handshake (rmcp's plain `serve()` default).
pub fn lifecycle(era: &Era) -> ClientLifecycleMode {
    match era {
        Era::Stateless => ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
        Era::Handshake(_) => ClientLifecycleMode::Initialize,
    }
}

/// Connects an rmcp streamable-HTTP client to `url` in `era`.
pub async fn try_connect(
    url: &str,
    era: &Era,
    auth: ClientAuth,
) -> Result<McpClient, ClientInitializeError> {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    let handler = client_config(era);
    let mode = lifecycle(era);
    match auth {
        ClientAuth::None => {
            handler
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::with_client(mcp_http_client(), config),
                    mode,
                )
                .await
        }
        ClientAuth::Bearer(token) => {
            handler
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::with_client(
                        mcp_http_client(),
                        config.auth_header(token),
                    ),
                    mode,
                )
                .await
        }
        ClientAuth::OAuth(manager) => {
            let client = AuthClient::new(mcp_http_client(), manager);
            handler
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::with_client(client, config),
                    mode,
                )
                .await
        }
    }
}

pub async fn connect(url: &str, era: &Era, auth: ClientAuth) -> McpClient {
    try_connect(url, era, auth)
        .await
        .unwrap_or_else(|e| panic!("rmcp client ({era}) could not connect to {url}: {e:?}"))
}

/// Concatenated text content of a tool result.
pub fn tool_text(result: &CallToolResult) -> String {
    let v = serde_json::to_value(result).expect("CallToolResult serializes");
    v["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// Calls tool `name` with `arguments` (a JSON object) and returns its text.
pub async fn call_tool_text(client: &McpClient, name: &str, arguments: Value) -> String {
    let mut params = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    let result = client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("tools/call {name} failed: {e:?}"));
    assert_ne!(
        result.is_error,
        Some(true),
        "tool {name} returned an error: {result:?}"
    );
    tool_text(&result)
}

/// The demo server's `whoami`: `{"method", "path", "headers": {lower-case name: [values]}}`.
/// The one `authorization` header the MCP server received, from a raw `whoami` answer
/// (`demo-mcp-server`'s tool echoes the request it got).
pub fn received_bearer(resp: &RawResponse) -> String {
    assert_eq!(resp.status, 200, "{}", resp.body);
    let text = resp.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool text: {}", resp.body))
        .to_owned();
    let me: Value = serde_json::from_str(&text).expect("whoami output is JSON");
    let values = me["headers"]["authorization"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        values.len(),
        1,
        "exactly one authorization header upstream: {me}"
    );
    values[0].as_str().expect("a header value").to_owned()
}

pub async fn whoami(client: &McpClient) -> Value {
    let text = call_tool_text(client, "whoami", json!({})).await;
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("whoami output is not JSON ({e}): {text}"))
}

/// Names of the tools the server lists.
pub async fn tool_names(client: &McpClient) -> Vec<String> {
    client
        .list_all_tools()
        .await
        .unwrap_or_else(|e| panic!("tools/list failed: {e:?}"))
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Polls `demo.recorded()` until `pred` holds (the client's GET stream / DELETE are sent
/// asynchronously), returning the recording; panics with it after 10 s.
pub async fn wait_recorded(
    demo: &DemoServer,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = demo.recorded().await;
        if pred(&rec) {
            return rec;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; recorded:\n{}",
                serde_json::to_string_pretty(&rec).unwrap()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// First value of header `name` in a recorded request (or `whoami` output).
pub fn recorded_header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name][0].as_str()
}

/// JSON-RPC `method` of a recorded POST body, if any.
pub fn recorded_rpc_method(request: &Value) -> Option<String> {
    let body: Value = serde_json::from_str(request["body"].as_str()?).ok()?;
    body["method"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (scheme, p) = parse_www_authenticate(
            r#"Bearer resource_metadata="http://h/.well-known/oauth-protected-resource/mcp", scope="a b", error="invalid_token""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(
            p["resource_metadata"],
            "http://h/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(p["scope"], "a b");
        assert_eq!(p["error"], "invalid_token");
        let (_, p) = parse_www_authenticate(r#"Bearer realm=x, error="a\"b""#);
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "a\"b");
    }

    #[test]
    fn password_hash_is_phc() {
        assert!(password_hash("x").starts_with("$argon2id$v=19$"));
    }
}

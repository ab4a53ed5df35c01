//! Shared helpers: a temp-dir config, the router, and a scripted browser + client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod pg;
pub mod served;
pub mod tls;
pub mod upstream_route;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use warden_token_service::{app, AppState, Config};

pub const ISSUER: &str = "http://127.0.0.1:9100";
pub const RESOURCE: &str = "http://127.0.0.1:9000/mcp";
pub const EMAIL: &str = "alice@example.com";
pub const PASSWORD: &str = "correct horse";
pub const REDIRECT: &str = "http://127.0.0.1:53682/callback";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// An Argon2id hash with tiny parameters: tests verify it in debug builds.
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    a.hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// An Argon2id hash with chosen memory (KiB) and time cost.
pub fn hash_with(password: &str, m_kib: u32, t: u32) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(m_kib, t, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    a.hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// YAML with one route, one local user and two pre-registered confidential clients.
pub fn config_yaml(dir: &std::path::Path, extra_routes: &str, alg: &str) -> String {
    format!(
        r#"
authorization_server:
  issuer: {ISSUER}
  listen: 127.0.0.1:0
  access_token_ttl_seconds: 300
  refresh_token_ttl_seconds: 3600
  signing_key:
    alg: {alg}
storage:
  sqlite: {db}
identity_provider:
  local:
    users:
      - email: {EMAIL}
        name: Alice
        password_hash: "{hash}"
        groups: [admins, demo]
clients:
  - client_id: basic-app
    client_name: Basic App
    client_secret: basic-secret
    token_endpoint_auth_method: client_secret_basic
    redirect_uris: [{REDIRECT}]
  - client_id: post-app
    client_secret: post-secret
    token_endpoint_auth_method: client_secret_post
    redirect_uris: [https://app.example.com/cb]
  - client_id: public-app
    redirect_uris: [http://127.0.0.1/callback]
  - client_id: trusted-app
    client_name: Trusted App
    redirect_uris: [{REDIRECT}]
    skip_consent: true
envoy:
  listen: 127.0.0.1:9000
routes:
  - name: demo
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:9200/mcp
    mcp:
      server: {{}}
    scopes: [tools.read, tools.call]
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
{extra_routes}
"#,
        db = dir.join("warden.db").display(),
        hash = cheap_hash(PASSWORD),
    )
}

/// `yaml` (from `config_yaml`) with the per-address limit on starting sign-ins lifted:
/// in-process requests carry no address and share one budget, which a test running many
/// sign-ins would spend.
pub fn many_sign_ins(yaml: String) -> String {
    yaml.replace(
        "  refresh_token_ttl_seconds: 3600\n",
        "  refresh_token_ttl_seconds: 3600\n  pending_flows: {rate_limit_per_minute: 10000}\n",
    )
}

/// The `Authorization` of an internal call, signed as the filter signs it at `now`. A
/// `credential` too malformed to sign with is sent as it is (`Bearer`).
pub fn sign_internal(credential: &str, method: &str, path: &str, body: &[u8], now: i64) -> String {
    match warden_core::internal_api::InternalKey::from_credential(credential) {
        Ok(key) => {
            let mut nonce = [0u8; warden_core::internal_api::NONCE_BYTES];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
            key.authorization(method, path, body, now, &nonce)
        }
        Err(_) => format!("Bearer {credential}"),
    }
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
    pub clock: Arc<AtomicI64>,
}

impl TestEnv {
    pub fn new() -> Self {
        Self::with(|dir| config_yaml(dir, "", "ES256"))
    }

    pub fn with(yaml: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_yaml(&yaml(dir.path())).unwrap();
        Self::open(dir, config)
    }

    /// Opens state over the files in `dir` (used again after a "restart").
    pub fn open(dir: tempfile::TempDir, config: Config) -> Self {
        let clock = Arc::new(AtomicI64::new(1_900_000_000));
        let c = clock.clone();
        // On a thread of its own: the PostgreSQL driver blocks on a runtime of its own,
        // which tokio refuses on an async worker.
        let state = std::thread::spawn(move || AppState::new(config))
            .join()
            .unwrap()
            .unwrap()
            .with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
        let app = app(state.clone());
        Self {
            dir,
            state,
            app,
            clock,
        }
    }

    /// Another replica of this deployment: its own process state (in-memory limits, caches,
    /// refresh gates) over the same files (database, keys) and clock. Its `dir` is an empty
    /// one of its own; the files are this one's.
    #[allow(dead_code)]
    pub fn replica(&self) -> TestEnv {
        let c = self.clock.clone();
        let state = AppState::new(self.state.config().clone())
            .unwrap()
            .with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
        TestEnv {
            dir: tempfile::tempdir().unwrap(),
            app: app(state.clone()),
            state,
            clock: self.clock.clone(),
        }
    }

    /// What an operator who lost the encryption key does (README, "The bound"): delete the
    /// stored signing keys, which nothing opens any more; the next start makes a new one.
    pub fn forget_signing_keys(config: &Config) {
        let db = rusqlite::Connection::open(config.storage.sqlite.as_ref().unwrap()).unwrap();
        db.execute("DELETE FROM signing_keys", []).unwrap();
    }

    pub fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    /// The `Authorization` of an internal `POST`, signed as the filter signs it, with the
    /// service's clock. A `credential` too malformed to sign with is sent as it is (`Bearer`).
    pub fn internal_authorization(&self, credential: &str, path: &str, body: &[u8]) -> String {
        sign_internal(credential, "POST", path, body, self.state.now())
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn get_with_cookie(&self, uri: &str, cookie: &str) -> Resp {
        self.send(
            Request::get(uri)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn post_form(
        &self,
        uri: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Resp {
        self.post_form_with_cookie(uri, form, basic, None).await
    }

    /// A browser form POST carrying `cookie` (a `Cookie` header value).
    pub async fn post_browser(&self, uri: &str, form: &[(&str, &str)], cookie: &str) -> Resp {
        self.post_form_with_cookie(uri, form, None, Some(cookie))
            .await
    }

    pub async fn post_form_with_cookie(
        &self,
        uri: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        cookie: Option<&str>,
    ) -> Resp {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let v = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
            req = req.header(header::AUTHORIZATION, format!("Basic {v}"));
        }
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    pub async fn post_json(&self, uri: &str, json: serde_json::Value) -> Resp {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string()))
                .unwrap(),
        )
        .await
    }

    /// Registers a public client through DCR.
    pub async fn register_public(&self, redirect: &str) -> String {
        let r = self
            .post_json(
                "/register",
                serde_json::json!({
                    "redirect_uris": [redirect],
                    "token_endpoint_auth_method": "none",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "client_name": "Test Client",
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.json()["client_id"].as_str().unwrap().to_owned()
    }

    /// `/authorize` with PKCE S256 for `VERIFIER`, plus `extra` parameters.
    pub fn authorize_uri(client_id: &str, redirect: &str, extra: &[(&str, &str)]) -> String {
        let ch = challenge(VERIFIER);
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("code_challenge", &ch)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "xyz");
        for (k, v) in extra {
            s.append_pair(k, v);
        }
        format!("/authorize?{}", s.finish())
    }

    /// Submits the login form `form` (from `/authorize`) in the browser that opened it.
    pub async fn login(&self, form: &Resp, email: &str, password: &str) -> Resp {
        let flow_cookie = form
            .cookie("warden_flow")
            .expect("login form sets warden_flow");
        self.post_browser(
            "/login",
            &[
                ("flow", &form.hidden("flow")),
                ("csrf", &form.hidden("csrf")),
                ("email", email),
                ("password", password),
            ],
            &flow_cookie,
        )
        .await
    }

    /// Answers a consent page with `decision` ("approve" / "deny"); `cookies` is the
    /// browser's `Cookie` header (flow and session cookies).
    pub async fn decide(&self, page: &Resp, cookies: &str, decision: &str) -> Resp {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(
            page.body.contains("name=\"decision\" value=\"approve\""),
            "not a consent page: {}",
            page.body
        );
        self.post_browser(
            "/consent",
            &[
                ("flow", &page.hidden("flow")),
                ("csrf", &page.hidden("csrf")),
                ("decision", decision),
            ],
            cookies,
        )
        .await
    }

    /// Runs authorize → login form → sign-in (→ consent, approved, when asked); returns the
    /// redirect's query and the session cookie.
    pub async fn sign_in(
        &self,
        client_id: &str,
        redirect: &str,
        extra: &[(&str, &str)],
    ) -> (HashMap<String, String>, String) {
        let form = self
            .get(&Self::authorize_uri(client_id, redirect, extra))
            .await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let flow_cookie = form.cookie("warden_flow").unwrap();
        let mut r = self.login(&form, EMAIL, PASSWORD).await;
        let cookie = r.cookie("warden_session").expect("session cookie");
        if r.status == StatusCode::OK {
            r = self
                .decide(&r, &format!("{flow_cookie}; {cookie}"), "approve")
                .await;
        }
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        (r.location_query(), cookie)
    }

    /// Signs in and returns an authorization code for the public client flow.
    pub async fn code(&self, client_id: &str, redirect: &str) -> String {
        let (q, _) = self.sign_in(client_id, redirect, &[]).await;
        q["code"].clone()
    }

    pub async fn exchange_public(&self, client_id: &str, code: &str, redirect: &str) -> Resp {
        self.post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", client_id),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", VERIFIER),
            ],
            None,
        )
        .await
    }

    pub async fn refresh_public(&self, client_id: &str, refresh: &str) -> Resp {
        self.post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("refresh_token", refresh),
            ],
            None,
        )
        .await
    }
}

/// Each of `lines` is a whole line of what `/metrics` would answer now (README, "Token
/// service metrics").
pub fn assert_metrics(state: &AppState, lines: &[&str]) {
    let text = state.metrics().encode(Default::default()).unwrap();
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "no {line} in the metrics:\n{text}"
        );
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// `name=value` of the `Set-Cookie` for `base` (or `__Host-<base>`), if set.
    pub fn cookie(&self, base: &str) -> Option<String> {
        self.set_cookie(base)
            .map(|c| c.split(';').next().unwrap().to_owned())
    }

    /// The whole `Set-Cookie` header for `base` (or `__Host-<base>`), if set.
    pub fn set_cookie(&self, base: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| {
                c.starts_with(&format!("{base}=")) || c.starts_with(&format!("__Host-{base}="))
            })
    }

    /// The value of a hidden input in an HTML form.
    pub fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    /// The Location header, split into URL without query and query parameters.
    pub fn location(&self) -> (String, HashMap<String, String>) {
        let loc = url::Url::parse(&self.header("location")).unwrap();
        let q = loc.query_pairs().into_owned().collect();
        let mut base = loc.clone();
        base.set_query(None);
        (base.to_string(), q)
    }

    pub fn location_query(&self) -> HashMap<String, String> {
        self.location().1
    }
}

/// The demo provider (OAuth 2.0 and OpenID Connect) on a real socket.
pub struct Provider {
    pub url: String,
    pub http: reqwest::Client,
}

impl Provider {
    pub async fn serve(config: demo_oauth_provider::ProviderConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(demo_oauth_provider::serve(config, listener));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { url, http }
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/_test/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Calls a `/_test/…` hook, with a JSON body when given.
    pub async fn hook_with(&self, path_and_query: &str, body: Option<serde_json::Value>) {
        let mut req = self.http.post(format!("{}{path_and_query}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path_and_query}: {}", r.status());
    }

    pub async fn hook(&self, path_and_query: &str) {
        self.hook_with(path_and_query, None).await
    }

    /// The user's answer on the provider's page at `authorize_url`; returns the redirect
    /// back to the token service.
    pub async fn answer(&self, authorize_url: &str, decision: &str) -> url::Url {
        self.answer_as(authorize_url, decision, "alice", "alice-password")
            .await
    }

    /// [`Provider::answer`] signed in as `username`.
    pub async fn answer_as(
        &self,
        authorize_url: &str,
        decision: &str,
        username: &str,
        password: &str,
    ) -> url::Url {
        let page = self.http.get(authorize_url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let body = page.text().await.unwrap();
        let marker = "name=\"request\" value=\"";
        let start = body.find(marker).unwrap() + marker.len();
        let request = &body[start..start + body[start..].find('"').unwrap()];
        let r = self
            .http
            .post(format!("{}/authorize", self.url))
            .form(&[
                ("request", request),
                ("username", username),
                ("password", password),
                ("decision", decision),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
    }
}

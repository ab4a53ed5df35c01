//! A minimal W3C WebDriver client (over reqwest) for Debian's `chromium` driven by
//! `chromedriver`: enough to open pages, fill forms, click and read what a user would see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{free_port, Proc};

/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs them (`apt-get install chromium chromium-driver`).
pub fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    let driver = std::env::var_os("CHROMEDRIVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into());
    (chromium.exists() && driver.exists()).then_some((chromium, driver))
}

/// A headless Chromium session; [`Browser::quit`] ends it (the driver process dies with it).
pub struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start(dir: &Path, chromium: &Path, driver: &Path) -> Browser {
        let port = free_port();
        let mut proc = Proc::spawn(
            "chromedriver",
            dir,
            driver,
            &[format!("--port={port}").into()],
            &[],
        );
        proc.wait_http_ok(&format!("http://127.0.0.1:{port}/status"))
            .await;
        let profile = tempfile::tempdir().expect("browser profile dir");
        let http = crate::client_builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("webdriver client");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let resp: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new WebDriver session")
            .json()
            .await
            .expect("session JSON");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        let browser = Browser {
            http,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            _driver: proc,
            _profile: profile,
        };
        // Element look-ups wait (bounded) for the page a click or a redirect is still loading.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 10_000, "pageLoad": 30_000})),
            )
            .await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        if resp["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", resp["value"]);
        }
        resp["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`, or `None`.
    pub async fn find(&self, css: &str) -> Option<String> {
        let resp: Value = self
            .http
            .post(format!("{}/element", self.base))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        resp["value"][ELEMENT_KEY].as_str().map(str::to_owned)
    }

    async fn element(&self, css: &str) -> String {
        match self.find(css).await {
            Some(e) => e,
            None => panic!(
                "no element {css:?} on {}:\n{}",
                self.url().await,
                self.source().await
            ),
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every cookie the browser holds for the current page.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (bounded) until the page's URL starts with `prefix`.
    pub async fn wait_for_url(&self, prefix: &str) {
        for _ in 0..100 {
            if self.url().await.starts_with(prefix) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the browser did not reach {prefix} (at {}):\n{}",
            self.url().await,
            self.source().await
        );
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

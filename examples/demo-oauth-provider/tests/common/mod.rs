//! The provider on a real socket, and what both test files read off its pages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::time::Duration;

use base64::Engine as _;
use demo_oauth_provider::{serve, ProviderConfig};
use reqwest::Url;
use sha2::{Digest as _, Sha256};

pub const REDIRECT: &str = "http://127.0.0.1:1/callback";
pub const ID: &str = "warden-demo";
pub const SECRET: &str = "warden-demo-secret";
pub const VERIFIER: &str = "verifier-verifier-verifier-verifier-verifier-0123";

pub struct Provider {
    pub base: String,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn start(config: ProviderConfig) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        serve(config, listener).await.unwrap();
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Provider {
        base: format!("http://{addr}"),
        http,
        server,
    }
}

pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The value of `name="NAME" value="..."` in the page.
pub fn hidden(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + needle.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_owned()
}

pub fn query_param(location: &str, name: &str) -> Option<String> {
    Url::parse(location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

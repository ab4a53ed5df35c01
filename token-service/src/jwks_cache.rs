//! The keys assertions are verified with, fetched and cached per URL: clients' `jwks_uri`
//! (`private_key_jwt`) and ID-JAG issuers' JWKS (found through their discovery document when
//! the config names no `jwks_uri`). The flows are synchronous; the route layer gets the keys
//! here first and hands them over (`flows::client_auth::AssertionKeys`).
//!
//! A key set is used for `KEYS_TTL`; an assertion naming a `kid` the set lacks fetches it
//! again, but one URL is fetched at most once per `REFETCH_INTERVAL` (a stream of made-up
//! `kid`s costs the key's host nothing). A fetch that failed is not retried sooner either.
//!
//! Two kinds of URL: an operator's (`clients[].jwks_uri`, an issuer's), trusted like the
//! identity provider's (https, or http on a loopback host, checked at load); and a client's
//! own (DCR, metadata documents), which goes through [`fetch_client_jwks`] only: `outbound`'s
//! guarded fetcher (https, no redirects, addresses checked after DNS).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::jws::{parse_jwks, Jwk};
use crate::outbound::{self, GuardedFetcher};

/// A fetched key set serves this long (seconds) before it is fetched again.
const KEYS_TTL: i64 = 900;
/// One URL is fetched at most this often (seconds), whatever `kid` assertions name.
pub const REFETCH_INTERVAL: i64 = 10;
/// An issuer's discovery document serves this long (seconds).
const DISCOVERY_TTL: i64 = 3600;
/// URLs remembered at most (key sets and discovered issuers): the oldest goes first.
const MAX_ENTRIES: usize = 1024;
/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Who named the URL, which decides how it is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The operator's config: fetched like the identity provider's documents.
    Operator,
    /// A client (DCR, a metadata document): only through [`fetch_client_jwks`].
    Client,
}

#[derive(Default)]
struct Entry {
    keys: Arc<Vec<Jwk>>,
    /// When the last fetch was made (unix seconds), whatever it came to; 0: never.
    fetched_at: i64,
    /// Why the last fetch failed, when it did.
    error: Option<String>,
}

#[derive(Default)]
struct Discovered {
    jwks_uri: Option<String>,
    fetched_at: i64,
    error: Option<String>,
}

pub struct JwksCache {
    http: reqwest::Client,
    guarded: GuardedFetcher,
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
    issuers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Discovered>>>>,
}

impl JwksCache {
    /// `http` fetches operator-named URLs (the identity provider's kind of client), `guarded`
    /// the URLs clients chose.
    pub fn new(http: reqwest::Client, guarded: GuardedFetcher) -> Self {
        Self {
            http,
            guarded,
            keys: Mutex::new(HashMap::new()),
            issuers: Mutex::new(HashMap::new()),
        }
    }

    /// The key set at `url` as of `now`, fetched again when stale or when it lacks `kid` (at
    /// most once per `REFETCH_INTERVAL`).
    pub async fn keys(
        &self,
        url: &str,
        origin: Origin,
        kid: Option<&str>,
        now: i64,
    ) -> Result<Arc<Vec<Jwk>>, String> {
        // Per origin too: a URL a client chose never reads what an operator's fetch cached.
        let slot = slot(&self.keys, &format!("{origin:?} {url}"))?;
        let mut entry = slot.lock().await;
        let stale = now.saturating_sub(entry.fetched_at) >= KEYS_TTL;
        let lacks_kid =
            kid.is_some_and(|k| !entry.keys.iter().any(|j| j.kid.as_deref() == Some(k)));
        let may_fetch = now.saturating_sub(entry.fetched_at) >= REFETCH_INTERVAL;
        if (stale || lacks_kid || entry.error.is_some()) && may_fetch {
            let fetched = match origin {
                Origin::Operator => fetch_bounded(&self.http, url).await,
                Origin::Client => fetch_client_jwks(&self.guarded, url).await,
            }
            .and_then(|body| parse_jwks(&body));
            entry.fetched_at = now;
            match fetched {
                Ok(keys) => {
                    entry.keys = Arc::new(keys);
                    entry.error = None;
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "cannot fetch a JWKS");
                    entry.error = Some(e);
                }
            }
        }
        // A set fetched before still serves while its host fails to answer.
        match &entry.error {
            Some(e) if entry.keys.is_empty() => Err(format!("the keys at {url}: {e}")),
            _ => Ok(entry.keys.clone()),
        }
    }

    /// The `jwks_uri` `issuer` publishes in its discovery document
    /// (`/.well-known/openid-configuration`, else `/.well-known/oauth-authorization-server`),
    /// which must name the issuer exactly.
    pub async fn issuer_jwks_uri(&self, issuer: &str, now: i64) -> Result<String, String> {
        let slot = slot(&self.issuers, issuer)?;
        let mut d = slot.lock().await;
        let fresh = now.saturating_sub(d.fetched_at) < DISCOVERY_TTL && d.error.is_none();
        let may_fetch = now.saturating_sub(d.fetched_at) >= REFETCH_INTERVAL;
        if !fresh && may_fetch {
            d.fetched_at = now;
            match self.discover(issuer).await {
                Ok(uri) => {
                    d.jwks_uri = Some(uri);
                    d.error = None;
                }
                Err(e) => {
                    tracing::warn!(issuer, error = %e, "cannot discover an ID-JAG issuer's keys");
                    d.error = Some(e);
                }
            }
        }
        match (&d.jwks_uri, &d.error) {
            (Some(u), _) => Ok(u.clone()),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err("the issuer's discovery document is not known yet".into()),
        }
    }

    async fn discover(&self, issuer: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let base = issuer.trim_end_matches('/');
        let mut last = String::new();
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let url = format!("{base}{path}");
            match fetch_bounded(&self.http, &url).await {
                Ok(body) => {
                    let d: Discovery = serde_json::from_slice(&body)
                        .map_err(|e| format!("{url} is not a discovery document: {e}"))?;
                    if d.issuer != issuer {
                        return Err(format!("{url} names another issuer"));
                    }
                    return Ok(d.jwks_uri);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The entry for `key`, made when missing; the oldest entry goes when the map is full.
fn slot<T: Default>(
    map: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<T>>>>,
    key: &str,
) -> Result<Arc<tokio::sync::Mutex<T>>, String> {
    let mut map = map
        .lock()
        .map_err(|_| "the key cache is unusable (poisoned)".to_owned())?;
    if let Some(s) = map.get(key) {
        return Ok(s.clone());
    }
    if map.len() >= MAX_ENTRIES {
        // Not the oldest exactly (no order is kept), but bounded: any entry may go.
        if let Some(k) = map.keys().next().cloned() {
            map.remove(&k);
        }
    }
    let s = Arc::new(tokio::sync::Mutex::new(T::default()));
    map.insert(key.to_owned(), s.clone());
    Ok(s)
}

/// Whether a client may register `uri` as its `jwks_uri`: an https URL with a host, no
/// credentials or fragment.
pub fn check_client_jwks_uri(uri: &str) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("must be an https URL".into());
    }
    if url.host().is_none() {
        return Err("must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err("must not carry credentials or a fragment".into());
    }
    Ok(())
}

/// THE fetch of a URL a client gave (its `jwks_uri`): through `outbound`'s guarded fetcher
/// (https only, no redirects, cookies or proxy, bounded in time and size, every address checked
/// after DNS unless `client_id_metadata_documents.allow_private_addresses`).
pub async fn fetch_client_jwks(guarded: &GuardedFetcher, url: &str) -> Result<Vec<u8>, String> {
    check_client_jwks_uri(url)?;
    outbound::fetch_guarded(guarded, url, MAX_DOCUMENT_BYTES)
        .await
        .map(|f| f.body)
        .map_err(|e| e.to_string())
}

/// GET `url` as JSON: a 200 answer's body, at most `MAX_DOCUMENT_BYTES`.
async fn fetch_bounded(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = http
        .get(url)
        .header("accept", "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("no answer from {url}: {e}"))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("{url} answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "{url} answered more than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_jwks_uri_is_https_only() {
        assert!(check_client_jwks_uri("https://client.example.com/jwks.json").is_ok());
        for bad in [
            "http://client.example.com/jwks.json",
            "https://user:pw@client.example.com/jwks.json",
            "https://client.example.com/jwks.json#k",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_client_jwks_uri(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_client_url_is_never_fetched_over_plain_http_nor_at_a_private_address() {
        let Ok(guarded) = outbound::Outbound::default().guarded(false) else {
            panic!("a guarded fetcher");
        };
        let e = fetch_client_jwks(&guarded, "http://127.0.0.1:9/jwks.json")
            .await
            .err();
        assert_eq!(e.as_deref(), Some("must be an https URL"));
        let e = fetch_client_jwks(&guarded, "https://127.0.0.1:9/jwks.json")
            .await
            .err()
            .unwrap_or_default();
        assert!(e.contains("not a public address"), "{e}");
    }
}

//! The keys assertions are verified with, fetched and cached per URL: clients' `jwks_uri`
//! (`private_key_jwt`) and ID-JAG issuers' JWKS (found through their discovery document when
//! the config names no `jwks_uri`). The flows are synchronous; the route layer gets the keys
//! here first and hands them over (`flows::client_auth::AssertionKeys`).
//!
//! A key set is used for `KEYS_TTL`; an assertion naming a `kid` the set lacks fetches it
//! again, but one URL is fetched at most once per `REFETCH_INTERVAL` (a stream of made-up
//! `kid`s costs the key's host nothing). A fetch that failed is not retried sooner either.
//! A set fetched before still serves while its host fails, but not once `MAX_KEYS_AGE` has
//! passed without a successful fetch: a key its owner removed is not accepted for ever.
//!
//! Two kinds of URL: an operator's (`clients[].jwks_uri`, an issuer's), trusted like the
//! identity provider's (https, or http on a loopback host, checked at load); and a client's
//! own (DCR, metadata documents), which goes through [`fetch_client_jwks`] only: `outbound`'s
//! guarded fetcher (https, no redirects, addresses checked after DNS).
//!
//! Operator entries are kept apart from client entries: they are as many as the config names
//! and never evicted; client entries are at most `MAX_CLIENT_ENTRIES`, the oldest going first,
//! so clients registering many `jwks_uri`s cannot push the operator's keys out.

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
/// A fetched key set stops serving (seconds) when no fetch of its URL has succeeded for this
/// long: the keys are refused, with the URL's failure as the reason.
pub const MAX_KEYS_AGE: i64 = 24 * 3600;
/// Client URLs remembered at most: the oldest goes first. Operator URLs are not counted.
const MAX_CLIENT_ENTRIES: usize = 1024;
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
    /// When the last successful fetch was made (unix seconds); 0: never.
    succeeded_at: i64,
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
    keys: Mutex<Slots<Entry>>,
    issuers: Mutex<Slots<Discovered>>,
}

type Slot<T> = Arc<tokio::sync::Mutex<T>>;

/// Entries by URL: the operator's (bounded by the config, never evicted) apart from the
/// clients' (at most `MAX_CLIENT_ENTRIES`, the oldest evicted first).
struct Slots<T> {
    operator: HashMap<String, Slot<T>>,
    /// With the order each was made in.
    client: HashMap<String, (u64, Slot<T>)>,
    made: u64,
}

impl<T: Default> Slots<T> {
    fn new() -> Self {
        Self {
            operator: HashMap::new(),
            client: HashMap::new(),
            made: 0,
        }
    }

    /// The entry for `key`, made when missing; the oldest client entry goes when the clients'
    /// part is full.
    fn get(&mut self, origin: Origin, key: &str) -> Slot<T> {
        match origin {
            Origin::Operator => self.operator.entry(key.to_owned()).or_default().clone(),
            Origin::Client => {
                if let Some((_, s)) = self.client.get(key) {
                    return s.clone();
                }
                if self.client.len() >= MAX_CLIENT_ENTRIES {
                    let oldest = self
                        .client
                        .iter()
                        .min_by_key(|(_, (made, _))| *made)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        self.client.remove(&k);
                    }
                }
                self.made += 1;
                let s = Slot::default();
                self.client.insert(key.to_owned(), (self.made, s.clone()));
                s
            }
        }
    }
}

impl JwksCache {
    /// `http` fetches operator-named URLs (the identity provider's kind of client), `guarded`
    /// the URLs clients chose.
    pub fn new(http: reqwest::Client, guarded: GuardedFetcher) -> Self {
        Self {
            http,
            guarded,
            keys: Mutex::new(Slots::new()),
            issuers: Mutex::new(Slots::new()),
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
        let slot = slot(&self.keys, origin, url)?;
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
                    entry.succeeded_at = now;
                    entry.error = None;
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "cannot fetch a JWKS");
                    entry.error = Some(e);
                }
            }
        }
        // A set fetched before still serves while its host fails to answer, for a while.
        match &entry.error {
            Some(e) if entry.keys.is_empty() => Err(format!("the keys at {url}: {e}")),
            Some(e) if now.saturating_sub(entry.succeeded_at) >= MAX_KEYS_AGE => Err(format!(
                "the keys at {url}: {e} (no successful fetch for {} hours)",
                MAX_KEYS_AGE / 3600
            )),
            _ => Ok(entry.keys.clone()),
        }
    }

    /// The `jwks_uri` `issuer` publishes in its discovery document
    /// (`/.well-known/openid-configuration`, else `/.well-known/oauth-authorization-server`),
    /// which must name the issuer exactly.
    pub async fn issuer_jwks_uri(&self, issuer: &str, now: i64) -> Result<String, String> {
        // Only configured issuers get here: the operator's.
        let slot = slot(&self.issuers, Origin::Operator, issuer)?;
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
        let mut last = String::new();
        for url in discovery_urls(issuer)? {
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

/// The entry for `key` of `origin`, made when missing.
fn slot<T: Default>(slots: &Mutex<Slots<T>>, origin: Origin, key: &str) -> Result<Slot<T>, String> {
    let mut slots = slots
        .lock()
        .map_err(|_| "the key cache is unusable (poisoned)".to_owned())?;
    Ok(slots.get(origin, key))
}

/// Where `issuer`'s discovery document may be: OpenID Connect Discovery's
/// `{issuer}/.well-known/openid-configuration`, then RFC 8414's, whose well-known segment goes
/// between the host and the issuer's path (§3.1): `https://host/.well-known/oauth-authorization-server/path`.
pub fn discovery_urls(issuer: &str) -> Result<[String; 2], String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("the issuer {issuer}: {e}"))?;
    let path = url.path().trim_end_matches('/');
    let mut origin = url.clone();
    origin.set_path("");
    origin.set_query(None);
    let origin = origin.as_str().trim_end_matches('/').to_owned();
    Ok([
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ),
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ])
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

    #[test]
    fn client_entries_never_evict_the_operators_and_go_oldest_first() {
        let mut slots = Slots::<Entry>::new();
        let operator = slots.get(Origin::Operator, "https://idp.example/jwks");
        let first = slots.get(Origin::Client, "https://c0.example/jwks");
        let second = slots.get(Origin::Client, "https://c1.example/jwks");
        // The first is used again: eviction goes by age, whatever was read since.
        assert!(Arc::ptr_eq(
            &first,
            &slots.get(Origin::Client, "https://c0.example/jwks")
        ));
        for i in 2..MAX_CLIENT_ENTRIES + 10 {
            slots.get(Origin::Client, &format!("https://c{i}.example/jwks"));
        }
        assert_eq!(slots.client.len(), MAX_CLIENT_ENTRIES);
        assert_eq!(slots.operator.len(), 1);
        assert!(Arc::ptr_eq(
            &operator,
            &slots.get(Origin::Operator, "https://idp.example/jwks")
        ));
        // The ten oldest went, in order; the newest stayed.
        for i in 0..10 {
            assert!(!slots
                .client
                .contains_key(&format!("https://c{i}.example/jwks")));
        }
        assert!(!Arc::ptr_eq(
            &second,
            &slots.get(Origin::Client, "https://c1.example/jwks")
        ));
        let last = format!("https://c{}.example/jwks", MAX_CLIENT_ENTRIES + 9);
        assert!(slots.client.contains_key(&last));
        // An operator URL and a client URL alike are two entries.
        let same = slots.get(Origin::Client, "https://idp.example/jwks");
        assert!(!Arc::ptr_eq(&operator, &same));
    }

    #[test]
    fn rfc8414_puts_the_well_known_segment_before_the_issuers_path() {
        assert_eq!(
            discovery_urls("https://idp.example/tenants/acme").unwrap(),
            [
                "https://idp.example/tenants/acme/.well-known/openid-configuration".to_owned(),
                "https://idp.example/.well-known/oauth-authorization-server/tenants/acme"
                    .to_owned(),
            ]
        );
        assert_eq!(
            discovery_urls("http://127.0.0.1:8080/").unwrap(),
            [
                "http://127.0.0.1:8080/.well-known/openid-configuration".to_owned(),
                "http://127.0.0.1:8080/.well-known/oauth-authorization-server".to_owned(),
            ]
        );
        assert_eq!(
            discovery_urls("https://idp.example").unwrap()[1],
            "https://idp.example/.well-known/oauth-authorization-server"
        );
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

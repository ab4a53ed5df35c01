//! Client ID Metadata Documents (CIMD): a client whose `client_id` is an https URL serving
//! its metadata. The URL's rules, the document's validation, and the per-replica cache of
//! validated documents. Fetches go through `outbound`'s guarded fetcher.
//!
//! The cache keeps a document `cache_seconds` at most, less when its `Cache-Control` says so;
//! a sign-in in progress keeps using the document it started with for up to `FLOW_SECONDS`,
//! so that a replica that did not fetch it, or a `no-store` document, does not break it half
//! way (the route layer fetches anew at `/authorize` and `/token` once it is stale).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use url::Url;

use crate::config::TokenEndpointAuthMethod;
use crate::config_client_documents::ClientDocumentsConfig;
use crate::outbound::{FetchError, GuardedFetcher};
use crate::redirect_uri::validate_redirect_uri;

/// Documents cached at once, per replica.
pub const MAX_ENTRIES: usize = 1024;
/// How long a document stays usable for sign-ins in progress (the pending flow's lifetime).
pub const FLOW_SECONDS: i64 = 600;
/// Longest `client_name` shown, in characters.
const MAX_NAME_LEN: usize = 200;
/// Redirect URIs a document may list.
const MAX_REDIRECT_URIS: usize = 20;

/// A client as its validated metadata document describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientDocument {
    /// The document's URL, equal to its `client_id` member.
    pub client_id: String,
    /// The host the document is served from.
    pub host: String,
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub auth_method: TokenEndpointAuthMethod,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
}

/// Why a metadata-document client cannot be used, in words for the error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// The `client_id` is not a URL a document may be fetched from.
    BadUrl(String),
    /// `allowed_hosts` does not name the host.
    HostNotAllowed(String),
    /// The fetch failed (unreachable, private address, status, size).
    Fetch(FetchError),
    /// The document is not a valid client document.
    Invalid(String),
}

impl DocumentError {
    /// The OAuth error code: the request's `client_id` is malformed, or the client it names
    /// cannot be verified.
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::BadUrl(_) => "invalid_request",
            _ => "invalid_client",
        }
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocumentError::BadUrl(why) => {
                write!(
                    f,
                    "the client_id is not a valid metadata document URL: {why}"
                )
            }
            DocumentError::HostNotAllowed(host) => write!(
                f,
                "client metadata documents from {host} are not allowed on this server"
            ),
            DocumentError::Fetch(e) => write!(f, "the client's metadata document {e}"),
            DocumentError::Invalid(why) => {
                write!(f, "the client's metadata document is invalid: {why}")
            }
        }
    }
}

impl std::error::Error for DocumentError {}

/// Whether `client_id` names a metadata document rather than a registered client.
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// The URL rules (draft-ietf-oauth-client-id-metadata-document §3): https, a path, no
/// fragment, no credentials, no dot segments; it must be in the normal form we would fetch,
/// since the document must name it byte for byte.
pub fn document_url(client_id: &str) -> Result<Url, DocumentError> {
    let bad = |why: &str| DocumentError::BadUrl(why.to_owned());
    let url = Url::parse(client_id).map_err(|e| DocumentError::BadUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("must be https"));
    }
    if url.host_str().is_none() {
        return Err(bad("has no host"));
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err(bad("must have a path"));
    }
    if url.fragment().is_some() || client_id.contains('#') {
        return Err(bad("must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.as_str() != client_id {
        return Err(bad(
            "must be in normal form (lower-case host, no dot segments, no default port)",
        ));
    }
    Ok(url)
}

/// Checks a fetched document against the URL it was fetched from.
pub fn validate(url: &Url, body: &[u8]) -> Result<ClientDocument, DocumentError> {
    let invalid = |why: String| DocumentError::Invalid(why);
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let Some(doc) = doc.as_object() else {
        return Err(invalid("not a JSON object".into()));
    };
    match doc.get("client_id").and_then(Value::as_str) {
        Some(id) if id == url.as_str() => {}
        Some(_) => {
            return Err(invalid(
                "its client_id is not the URL it is served from".into(),
            ))
        }
        None => return Err(invalid("client_id is missing".into())),
    }
    for secret in ["client_secret", "client_secret_expires_at"] {
        if doc.contains_key(secret) {
            return Err(invalid(format!(
                "it must not hold {secret} (a document is public)"
            )));
        }
    }
    let strings = |field: &str| -> Result<Option<Vec<String>>, DocumentError> {
        match doc.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{field} must be an array of strings")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid(format!("{field} must be an array of strings"))),
        }
    };
    let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(invalid("redirect_uris must list at least one URI".into()));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid(format!(
            "redirect_uris lists more than {MAX_REDIRECT_URIS} URIs"
        )));
    }
    for r in &redirect_uris {
        validate_redirect_uri(r).map_err(|m| invalid(format!("redirect URI {r}: {m}")))?;
    }
    // Omitted: both, as for registered clients.
    let grant_types = strings("grant_types")?
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if let Some(g) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(invalid(format!("unsupported grant type {g}")));
    }
    let auth_method = match doc.get("token_endpoint_auth_method") {
        None => TokenEndpointAuthMethod::None,
        Some(Value::String(m)) if m == "none" => TokenEndpointAuthMethod::None,
        Some(Value::String(m)) if m == "private_key_jwt" => TokenEndpointAuthMethod::PrivateKeyJwt,
        Some(_) => {
            return Err(invalid(
                "token_endpoint_auth_method must be none or private_key_jwt".into(),
            ))
        }
    };
    let jwks = match doc.get("jwks") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid("jwks must be a JSON object".into())),
    };
    let jwks_uri = match doc.get("jwks_uri") {
        None => None,
        Some(Value::String(u)) if u.starts_with("https://") && Url::parse(u).is_ok() => {
            Some(u.clone())
        }
        Some(_) => return Err(invalid("jwks_uri must be an https URL".into())),
    };
    if auth_method == TokenEndpointAuthMethod::PrivateKeyJwt && jwks.is_some() == jwks_uri.is_some()
    {
        return Err(invalid(
            "a private_key_jwt client must give exactly one of jwks and jwks_uri".into(),
        ));
    }
    let client_name = match doc.get("client_name") {
        None => None,
        Some(Value::String(n)) => {
            let n: String = n.chars().filter(|c| !c.is_control()).collect();
            if n.chars().count() > MAX_NAME_LEN {
                return Err(invalid(format!(
                    "client_name is longer than {MAX_NAME_LEN} characters"
                )));
            }
            Some(n.trim().to_owned()).filter(|n| !n.is_empty())
        }
        Some(_) => return Err(invalid("client_name must be a string".into())),
    };
    Ok(ClientDocument {
        client_id: url.as_str().to_owned(),
        host: url.host_str().unwrap_or_default().to_owned(),
        client_name,
        redirect_uris,
        grant_types,
        auth_method,
        jwks,
        jwks_uri,
    })
}

struct Entry {
    /// The validated document, or why there is none (a failure is remembered briefly, so a
    /// client cannot make every request a fetch).
    answer: Result<Arc<ClientDocument>, DocumentError>,
    /// Until when it answers without a fetch.
    fresh_until: i64,
    /// Until when sign-ins in progress may still use a document.
    kept_until: i64,
}

/// How long a failed fetch or an invalid document is remembered (at most `cache_seconds`).
pub const FAILURE_SECONDS: i64 = 30;

/// Document fetches in progress at once on a replica: a flood of unknown URLs waits for a
/// turn (at most `FETCH_WAIT`) rather than opening a connection each.
pub const MAX_FETCHES: usize = 8;
const FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The validated documents this replica fetched, and the rules and fetcher for more.
pub struct ClientDocuments {
    config: ClientDocumentsConfig,
    fetcher: GuardedFetcher,
    entries: Mutex<HashMap<String, Entry>>,
    fetches: tokio::sync::Semaphore,
    /// One fetch per document at a time: requests for it meanwhile wait, then read the cache.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Takes a document's entry out of `in_flight` when its fetch ends, however it ends.
struct InFlight<'a> {
    documents: &'a ClientDocuments,
    client_id: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .documents
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        in_flight.remove(self.client_id);
    }
}

impl fmt::Debug for ClientDocuments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientDocuments")
            .field("config", &self.config)
            .finish()
    }
}

impl ClientDocuments {
    pub fn new(config: &ClientDocumentsConfig, fetcher: GuardedFetcher) -> Self {
        Self {
            config: config.clone(),
            fetcher,
            entries: Mutex::new(HashMap::new()),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The document for `client_id`: from the cache while fresh, else fetched and validated
    /// (and cached). Call it from async code before the flow that needs the client.
    pub async fn resolve(
        &self,
        client_id: &str,
        now: i64,
    ) -> Result<Arc<ClientDocument>, DocumentError> {
        let url = document_url(client_id)?;
        let host = url.host_str().unwrap_or_default();
        if !self.config.allows_host(host) {
            return Err(DocumentError::HostNotAllowed(host.to_owned()));
        }
        if let Some(answer) = self.cached(client_id, now, false) {
            return answer;
        }
        let one_fetch = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client_id.to_owned())
            .or_default()
            .clone();
        let _one_fetch = one_fetch.lock().await;
        let _done = InFlight {
            documents: self,
            client_id,
        };
        // Fetched by another request while this one waited.
        if let Some(answer) = self.cached(client_id, now, false) {
            return answer;
        }
        let Ok(Ok(_turn)) = tokio::time::timeout(FETCH_WAIT, self.fetches.acquire()).await else {
            // Not remembered: it says nothing about the document.
            return Err(DocumentError::Fetch(FetchError::Unreachable(
                "too many metadata documents are being fetched at once; try again".into(),
            )));
        };
        let cache_seconds = i64::try_from(self.config.cache_seconds).unwrap_or(i64::MAX / 4);
        let answer = match self
            .fetcher
            .fetch(url.as_str(), self.config.max_document_bytes)
            .await
        {
            Ok(fetched) => validate(&url, &fetched.body).map(|d| (Arc::new(d), fetched.max_age)),
            Err(e) => Err(DocumentError::Fetch(e)),
        };
        let entry = match &answer {
            Ok((document, max_age)) => {
                let cache_for = cache_seconds.min(
                    max_age.map_or(i64::MAX / 4, |m| i64::try_from(m).unwrap_or(i64::MAX / 4)),
                );
                tracing::info!(client_id, cache_for, "client metadata document fetched");
                Entry {
                    answer: Ok(document.clone()),
                    fresh_until: now + cache_for,
                    kept_until: now + cache_for.max(FLOW_SECONDS),
                }
            }
            Err(e) => {
                let remember = cache_seconds.min(FAILURE_SECONDS);
                Entry {
                    answer: Err(e.clone()),
                    fresh_until: now + remember,
                    kept_until: now + remember,
                }
            }
        };
        self.insert(client_id, entry, now);
        answer.map(|(document, _)| document)
    }

    /// For synchronous flows: the cached answer (a document fresh or kept for sign-ins in
    /// progress, a recent failure), else a fetch on this blocking thread. Call only from the
    /// blocking pool (`AppState::blocking`), never on an async worker.
    pub fn resolve_blocking(
        &self,
        client_id: &str,
        now: i64,
    ) -> Result<Arc<ClientDocument>, DocumentError> {
        if let Some(answer) = self.cached(client_id, now, true) {
            return answer;
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            DocumentError::Fetch(FetchError::Unreachable("no runtime to fetch with".into()))
        })?;
        handle.block_on(self.resolve(client_id, now))
    }

    /// The cached answer for `client_id`, if any still holds: fresh, or (`kept`) a document
    /// kept for sign-ins in progress.
    fn cached(
        &self,
        client_id: &str,
        now: i64,
        kept: bool,
    ) -> Option<Result<Arc<ClientDocument>, DocumentError>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(client_id)
            .filter(|e| now < if kept { e.kept_until } else { e.fresh_until })
            .map(|e| e.answer.clone())
    }

    fn insert(&self, client_id: &str, entry: Entry, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(client_id) {
            entries.retain(|_, e| now < e.kept_until);
            // Still full: the one closest to leaving goes.
            if entries.len() >= MAX_ENTRIES {
                if let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.kept_until)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(client_id.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const URL: &str = "https://client.example.com/oauth/client.json";

    fn check(doc: Value) -> Result<ClientDocument, DocumentError> {
        validate(&document_url(URL).unwrap(), doc.to_string().as_bytes())
    }

    fn good() -> Value {
        json!({
            "client_id": URL,
            "client_name": "Example",
            "redirect_uris": ["http://127.0.0.1/callback", "https://client.example.com/cb"],
            "token_endpoint_auth_method": "none",
        })
    }

    #[test]
    fn a_valid_document_describes_the_client() {
        let d = check(good()).unwrap();
        assert_eq!(d.client_id, URL);
        assert_eq!(d.host, "client.example.com");
        assert_eq!(d.client_name.as_deref(), Some("Example"));
        assert_eq!(d.auth_method, TokenEndpointAuthMethod::None);
        assert_eq!(d.grant_types, ["authorization_code", "refresh_token"]);
    }

    #[test]
    fn documents_are_refused_with_a_reason() {
        let with = |k: &str, v: Value| {
            let mut d = good();
            d[k] = v;
            check(d).unwrap_err().to_string()
        };
        assert!(
            with("client_id", json!("https://client.example.com/other")).contains("not the URL")
        );
        assert!(with("redirect_uris", json!([])).contains("at least one"));
        assert!(with("redirect_uris", json!(["http://evil.example/cb"])).contains("loopback"));
        assert!(
            with("token_endpoint_auth_method", json!("client_secret_basic"))
                .contains("none or private_key_jwt")
        );
        assert!(with("client_secret", json!("s")).contains("client_secret"));
        assert!(with("token_endpoint_auth_method", json!("private_key_jwt"))
            .contains("exactly one of jwks and jwks_uri"));
        assert!(check(json!([1]))
            .unwrap_err()
            .to_string()
            .contains("object"));
        let mut d = good();
        d["token_endpoint_auth_method"] = json!("private_key_jwt");
        d["jwks_uri"] = json!("https://client.example.com/jwks.json");
        assert_eq!(
            check(d).unwrap().auth_method,
            TokenEndpointAuthMethod::PrivateKeyJwt
        );
    }

    #[test]
    fn client_id_urls_follow_the_rules() {
        assert!(document_url(URL).is_ok());
        for bad in [
            "http://client.example.com/c.json",
            "https://client.example.com",
            "https://client.example.com/",
            "https://client.example.com/c.json#x",
            "https://u:p@client.example.com/c.json",
            "https://client.example.com/a/../c.json",
            "https://Client.example.com/c.json",
            "https://client.example.com:443/c.json",
        ] {
            assert!(
                matches!(document_url(bad), Err(DocumentError::BadUrl(_))),
                "{bad}"
            );
        }
    }
}

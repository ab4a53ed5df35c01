//! Discovered upstream OAuth (`upstream_oauth2.discover`): from a route's configured `to` URL
//! (never the downstream request's scheme or host), the upstream's RFC 9728 protected resource
//! metadata (its well-known URL, or the `resource_metadata` of the `401` an unauthenticated
//! probe gets), then its authorization server's RFC 8414 metadata (with the OIDC fallback),
//! each checked (`documents`), the result cached per route.
//!
//! Every fetch is through `Outbound::client` (so `outbound.extra_ca_file` applies): no
//! redirects, at most `MAX_DOCUMENT_BYTES`, `FETCH_TIMEOUT`. The authorization server must be
//! in `upstream_discovery.allowed_authorization_servers`: the SSRF guard.

pub mod documents;
mod fetch;
pub mod providers;
pub mod registration;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config_upstream_discovery::UpstreamDiscoveryConfig;
use crate::outbound::Outbound;
use fetch::{read, Answer};

pub use documents::{AuthorizationServer, ClientIdentity, ProtectedResource};
pub use registration::{Registrar, Registration, RegistrationError};

pub use fetch::{FETCH_TIMEOUT, MAX_DOCUMENT_BYTES};

/// What discovery found for a route, valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The upstream's resource identifier (the `resource` of RFC 8707 requests).
    pub resource: String,
    pub protected_resource: ProtectedResource,
    /// The allowed authorization server chosen, and its metadata.
    pub authorization_server: AuthorizationServer,
    pub expires_at: i64,
}

/// The step discovery failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ProtectedResource,
    AuthorizationServer,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ProtectedResource => "protected resource metadata (RFC 9728)",
            Step::AuthorizationServer => "authorization server metadata (RFC 8414)",
        })
    }
}

/// Why discovery failed: the route, the step, the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryError {
    pub route: String,
    pub step: Step,
    pub reason: String,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {}: discovering the upstream's OAuth failed at its {}: {}",
            self.route, self.step, self.reason
        )
    }
}

impl std::error::Error for DiscoveryError {}

/// Discovers and caches, per route.
pub struct Discoverer {
    http: reqwest::Client,
    config: UpstreamDiscoveryConfig,
    cache: Mutex<HashMap<String, Arc<Discovered>>>,
}

impl fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discoverer")
            .field("config", &self.config)
            .finish()
    }
}

impl Discoverer {
    /// With `FETCH_TIMEOUT` in production; tests pass a shorter one.
    pub fn new(
        outbound: &Outbound,
        config: UpstreamDiscoveryConfig,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: outbound.client(timeout)?,
            config,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The route's discovery result: from the cache while it is fresh, else fetched again (a
    /// failure is an error naming the step, never a stale result).
    pub async fn discover(
        &self,
        route: &str,
        to: &str,
        now: i64,
    ) -> Result<Arc<Discovered>, DiscoveryError> {
        if let Some(d) = self.cached(route, to, now) {
            return Ok(d);
        }
        let found = Arc::new(self.fetch(route, to, now).await?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(route.to_owned(), found.clone());
        }
        Ok(found)
    }

    fn cached(&self, route: &str, to: &str, now: i64) -> Option<Arc<Discovered>> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(route)
            .filter(|d| now < d.expires_at && documents::same_resource(&d.resource, to))
            .cloned()
    }

    async fn fetch(&self, route: &str, to: &str, now: i64) -> Result<Discovered, DiscoveryError> {
        let fail = |step: Step| {
            move |reason: String| DiscoveryError {
                route: route.to_owned(),
                step,
                reason,
            }
        };
        let (prm, prm_age) = self
            .protected_resource(to)
            .await
            .map_err(fail(Step::ProtectedResource))?;
        let issuer = documents::choose_authorization_server(
            &prm,
            &self.config.allowed_authorization_servers,
        )
        .map_err(fail(Step::ProtectedResource))?;
        let (server, as_age) = self
            .authorization_server(&issuer)
            .await
            .map_err(fail(Step::AuthorizationServer))?;
        let secs = [Some(self.config.cache_seconds), prm_age, as_age]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        Ok(Discovered {
            resource: prm.resource.clone(),
            protected_resource: prm,
            authorization_server: server,
            expires_at: now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
        })
    }

    /// The well-known document; if it is absent, the one a `401` challenge names.
    async fn protected_resource(
        &self,
        to: &str,
    ) -> Result<(ProtectedResource, Option<u64>), String> {
        let well_known = documents::resource_metadata_url(to)?;
        let a = self.get(&well_known).await?;
        let (url, a) = if a.status == 200 {
            (well_known, a)
        } else {
            let probe = self.probe(to).await?;
            let Some(url) = probe
                .challenge
                .as_deref()
                .and_then(documents::challenge_resource_metadata)
            else {
                return Err(format!(
                    "{well_known} answered HTTP {}, and an unauthenticated request to {to} answered HTTP {} without a resource_metadata challenge",
                    a.status, probe.status
                ));
            };
            documents::check_endpoint(&url)
                .map_err(|e| format!("its challenge's resource_metadata: {e}"))?;
            let a = self.get(&url).await?;
            (url, a)
        };
        if a.status != 200 {
            return Err(format!("{url} answered HTTP {}", a.status));
        }
        let prm =
            documents::parse_protected_resource(&a.body, to).map_err(|e| format!("{url}: {e}"))?;
        Ok((prm, a.max_age))
    }

    /// RFC 8414's well-known URL, then OpenID Connect's.
    async fn authorization_server(
        &self,
        issuer: &str,
    ) -> Result<(AuthorizationServer, Option<u64>), String> {
        let [oidc, rfc8414] = crate::jwks_cache::discovery_urls(issuer)?;
        let mut tried = Vec::new();
        for url in [rfc8414, oidc] {
            let a = self.get(&url).await?;
            if a.status != 200 {
                tried.push(format!("{url} answered HTTP {}", a.status));
                continue;
            }
            let m = documents::parse_authorization_server(&a.body, issuer)
                .map_err(|e| format!("{url}: {e}"))?;
            return Ok((m, a.max_age));
        }
        Err(tried.join("; "))
    }

    /// An unauthenticated MCP request, for its `401` challenge.
    async fn probe(&self, to: &str) -> Result<Answer, String> {
        let req = self
            .http
            .post(to)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#);
        read(req, to).await
    }

    async fn get(&self, url: &str) -> Result<Answer, String> {
        let req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        read(req, url).await
    }
}

//! A discovered route's provider: discovery's result (`Discoverer`), the client identity at
//! the authorization server it found (configured, CIMD, or DCR through the `Registrar`), made
//! into the same `Provider` a configured `upstream_oauth2` has, asking for the upstream's
//! `resource` (RFC 8707). Kept per route until discovery's expiry; a failure is kept
//! `RETRY_AFTER` seconds, so a down upstream costs one fetch per half minute, not one per
//! sign-in.
//!
//! Async callers `resolve`; the blocking flows read `current`, which the route layer made
//! fresh before them (`Vault::prepare`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::documents::{self, ClientIdentity};
use super::{Discoverer, Registrar};
use crate::config::{AuthStyle, Config, UpstreamEndpoint, UpstreamOAuth2Config};
use crate::config_upstream_discovery::DiscoveredUpstreamOAuth2;
use crate::outbound::Outbound;
use crate::store::Store;
use crate::vault::provider::Provider;
use crate::vault::seal::Sealer;

/// Seconds a failed discovery or registration is answered from memory before a new try.
pub const RETRY_AFTER: i64 = 30;

/// A route's provider as discovered.
pub struct Resolved {
    pub provider: Arc<Provider>,
    /// The authorization server's issuer: the tokens it issues are bound to it.
    pub issuer: String,
    /// Until then the result is used without discovering again.
    pub expires_at: i64,
    /// When it was discovered.
    pub discovered_at: i64,
}

enum Entry {
    Ready(Arc<Resolved>),
    Failed { reason: String, until: i64 },
}

/// The routes with `upstream_oauth2.discover`, and what discovery made of each.
pub struct DiscoveredProviders {
    discoverer: Discoverer,
    registrar: Registrar,
    /// Route name → its upstream (`to`) and its `upstream_oauth2`.
    routes: HashMap<String, (String, DiscoveredUpstreamOAuth2)>,
    callback: String,
    document_url: String,
    http: reqwest::Client,
    entries: Mutex<HashMap<String, Entry>>,
    /// One discovery per route at a time; the others wait for its result.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DiscoveredProviders {
    /// `None` when no route discovers.
    pub fn new(
        config: &Config,
        outbound: &Outbound,
        callback: String,
        http: reqwest::Client,
    ) -> anyhow::Result<Option<Self>> {
        let routes: HashMap<_, _> = config
            .routes
            .iter()
            .filter_map(|r| {
                let d = r.discovered_upstream_oauth2()?;
                Some((r.name.clone(), (r.to.clone(), d.clone())))
            })
            .collect();
        let Some(discovery) = config.upstream_discovery.clone() else {
            return Ok(None);
        };
        if routes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            discoverer: Discoverer::new(outbound, discovery, super::FETCH_TIMEOUT)?,
            registrar: Registrar::new(outbound, super::FETCH_TIMEOUT)?,
            routes,
            callback,
            document_url: documents::client_document_url(&config.authorization_server.issuer),
            http,
            entries: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }))
    }

    pub fn discovers(&self, route: &str) -> bool {
        self.routes.contains_key(route)
    }

    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// The last result for `route`, fresh or not (a consent that starts from it is checked
    /// at the callback); or why there is none.
    pub fn current(&self, route: &str) -> Result<Arc<Resolved>, String> {
        match self.lock().get(route) {
            Some(Entry::Ready(r)) => Ok(r.clone()),
            Some(Entry::Failed { reason, .. }) => Err(reason.clone()),
            None => Err(format!(
                "route {route}: the upstream's OAuth has not been discovered yet; try again"
            )),
        }
    }

    /// Whether `route` has any result (fresh or not, good or failed).
    pub fn known(&self, route: &str) -> bool {
        self.lock().contains_key(route)
    }

    /// `route`'s provider, discovered again when its result has expired.
    pub async fn resolve(
        &self,
        store: &Arc<dyn Store>,
        sealer: &Sealer,
        route: &str,
        now: i64,
    ) -> Result<Arc<Resolved>, String> {
        self.resolve_within(store, sealer, route, now, None).await
    }

    /// After the upstream refused a token: its server may have moved, so a result older than
    /// `RETRY_AFTER` is discovered again, expired or not (at most one discovery per route per
    /// `RETRY_AFTER`, however many refusals).
    pub async fn resolve_after_refusal(
        &self,
        store: &Arc<dyn Store>,
        sealer: &Sealer,
        route: &str,
        now: i64,
    ) -> Result<Arc<Resolved>, String> {
        self.resolve_within(store, sealer, route, now, Some(RETRY_AFTER))
            .await
    }

    async fn resolve_within(
        &self,
        store: &Arc<dyn Store>,
        sealer: &Sealer,
        route: &str,
        now: i64,
        max_age: Option<i64>,
    ) -> Result<Arc<Resolved>, String> {
        if let Some(answer) = self.fresh(route, now, max_age) {
            return answer;
        }
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(route.to_owned()).or_default().clone()
        };
        let _turn = turn.lock().await;
        // Another task may have discovered while this one waited.
        if let Some(answer) = self.fresh(route, now, max_age) {
            return answer;
        }
        let entry = match self.discover(store, sealer, route, now).await {
            Ok(r) => Entry::Ready(Arc::new(r)),
            Err(reason) => {
                tracing::warn!(route = %route, reason = %reason, "upstream discovery failed");
                Entry::Failed {
                    reason,
                    until: now.saturating_add(RETRY_AFTER),
                }
            }
        };
        let answer = match &entry {
            Entry::Ready(r) => Ok(r.clone()),
            Entry::Failed { reason, .. } => Err(reason.clone()),
        };
        self.lock().insert(route.to_owned(), entry);
        answer
    }

    fn fresh(
        &self,
        route: &str,
        now: i64,
        max_age: Option<i64>,
    ) -> Option<Result<Arc<Resolved>, String>> {
        let young = |r: &Resolved| max_age.is_none_or(|m| now - r.discovered_at < m);
        match self.lock().get(route)? {
            Entry::Ready(r) if now < r.expires_at && young(r) => Some(Ok(r.clone())),
            Entry::Failed { reason, until } if now < *until => Some(Err(reason.clone())),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn discover(
        &self,
        store: &Arc<dyn Store>,
        sealer: &Sealer,
        route: &str,
        now: i64,
    ) -> Result<Resolved, String> {
        let Some((to, upstream)) = self.routes.get(route) else {
            return Err(format!(
                "route {route} does not discover its upstream's OAuth"
            ));
        };
        let found = self
            .discoverer
            .discover(route, to, now)
            .await
            .map_err(|e| e.to_string())?;
        let server = &found.authorization_server;
        let identity = documents::choose_client_identity(
            upstream.client_id.as_deref(),
            server,
            &self.document_url,
            &self.callback,
        )
        .map_err(|e| format!("route {route}: {e}"))?;
        let (client_id, client_secret, auth_style) = match identity {
            ClientIdentity::Configured(id) | ClientIdentity::MetadataDocument(id) => {
                (id, None, None)
            }
            ClientIdentity::Register(_) => {
                let r = self
                    .registrar
                    .register_once(store.clone(), sealer, server, &self.callback, now)
                    .await
                    .map_err(|e| format!("route {route}: {e}"))?;
                let style = match r.token_endpoint_auth_method.as_str() {
                    "client_secret_post" => Some(AuthStyle::Params),
                    "client_secret_basic" => Some(AuthStyle::Header),
                    _ => None,
                };
                (r.client_id, r.client_secret, style)
            }
        };
        let config = UpstreamOAuth2Config {
            client_id,
            client_secret,
            client_secret_file: None,
            scopes: documents::requested_scopes(&upstream.scopes, &found.protected_resource),
            endpoint: UpstreamEndpoint {
                auth_url: server.authorization_endpoint.clone(),
                token_url: server.token_endpoint.clone(),
                auth_style,
                revocation_url: server.revocation_endpoint.clone(),
            },
        };
        let provider = Provider::new(config, self.callback.clone(), self.http.clone())
            .for_resource(found.resource.clone());
        tracing::info!(route = %route, issuer = %server.issuer, "upstream OAuth discovered");
        Ok(Resolved {
            provider: Arc::new(provider),
            issuer: server.issuer.clone(),
            expires_at: found.expires_at,
            discovered_at: now,
        })
    }
}

//! The vault of upstream tokens (TI): users' tokens for upstream OAuth providers, sealed at
//! rest, refreshed once per grant, handed to the filter over the internal listener.
//!
//! The flows call it (the upstream consent step, the refresh-token grant's check); it uses
//! the store for rows and the provider client for the provider. It decides nothing about
//! MCP clients: what a lookup means for a call is the filter's business.

pub mod provider;
pub mod reseal;
pub mod reseal_status;
pub mod seal;

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::digest::{constant_time_eq, hash_secret};
use crate::metrics::{Metrics, UpstreamRefreshResult};
use crate::oidc::tokens::IdpTokens;
use crate::random::random_token;
use crate::scope::split_scope;
use crate::store::{
    AuthorizeGrant, IdpUserRecord, PendingLimit, Store, UpstreamFlow, UpstreamRecord,
};
use crate::upstream_discovery::providers::DiscoveredProviders;
// The filter stops using a cached token on the same rule the vault refreshes it by.
use provider::{Issued, Provider, ProviderError};
use seal::{Kind, Sealer};
use warden_core::upstream::{refresh_due, refused_right_after_grant};

/// The upstream consent step stays open this long.
pub const UPSTREAM_FLOW_TTL: i64 = 600;
/// A refresh lease: another process waits at most this long for one refresh.
const REFRESH_LEASE: i64 = 30;
/// A token an MCP server refused right after the user granted it is not fetched again for
/// this long: lookups answer "refused", so the client gets a clear error, not another round.
pub const REFUSAL_HOLD: i64 = 600;

/// A forced refresh of a token issued less than this many seconds ago calls no provider: it
/// answers the token's state (so repeated calls cannot hammer the provider, whose limits
/// cover every user of the gateway's client).
pub const FORCED_REFRESH_MIN_AGE: i64 = 10;

/// How long a look-up waits for a refresh when the current token still works, and when it
/// has expired; both below the filter's call-out timeout (2 s as rendered).
const PATIENCE_WHILE_VALID: Duration = Duration::from_millis(1_000);
const PATIENCE_WHEN_EXPIRED: Duration = Duration::from_millis(1_500);

/// A discovered route's token from an authorization server the upstream no longer names
/// (`issuer`, empty for a configured route): not used, not refreshed there; the user consents
/// at the new one.
fn issued_elsewhere(row: &UpstreamRecord, issuer: &str) -> bool {
    !issuer.is_empty() && row.authorization_server != issuer
}

/// `now` moved on by the time since `started`, in whole seconds.
fn elapsed_from(now: i64, started: Instant) -> i64 {
    now.saturating_add(i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX))
}

fn slow_provider() -> Lookup {
    Lookup::Unavailable("the provider is slow to refresh the token".into())
}

/// Where providers send the browser back, under the issuer.
pub const CALLBACK_PATH: &str = "/upstream/callback";

/// The "route" a sign-in's sealed verifier is bound to; its "user" is the flow's random id,
/// which no user key (an email, or `{iss}#{sub}`) can equal.
const LOGIN_BINDING: &str = "@login";

/// A token sealed for a record, if there is one.
pub type SealedToken = Option<Vec<u8>>;

/// The "route" an identity-provider user's tokens are bound to; their "user" is the user's
/// key, so a value copied to another user's row does not open.
const IDP_BINDING: &str = "@idp";

pub fn callback_url(config: &Config) -> String {
    format!("{}{CALLBACK_PATH}", config.authorization_server.issuer)
}

/// A token ready for the filter.
#[derive(Clone)]
pub struct UsableToken {
    pub access_token: String,
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    pub granted_at: i64,
    pub after_refusal: bool,
    /// Refreshed at the provider for the look-up that answers it (`metrics`).
    pub refreshed: bool,
}

impl UsableToken {
    /// The token of `row` (whose access token opened to `access_token`).
    fn of(row: &UpstreamRecord, access_token: String) -> Self {
        Self {
            access_token,
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            granted_at: row.granted_at,
            after_refusal: row.after_refusal,
            refreshed: false,
        }
    }
}

impl std::fmt::Debug for UsableToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsableToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("granted_at", &self.granted_at)
            .field("after_refusal", &self.after_refusal)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Token(UsableToken),
    /// Nothing usable: the user must (re)connect the account.
    NoToken,
    /// A token the user had just granted was refused by the server (see `REFUSAL_HOLD`).
    Refused,
    /// The provider failed transiently while the token needed a refresh.
    Unavailable(String),
}

/// The state of a user's upstream token for the server listing (no token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    /// Whether the token works now or can be refreshed (`holds_usable`).
    pub connected: bool,
    /// When the current access token expires (`None`: no token, or the provider gave no
    /// lifetime).
    pub expires_at: Option<i64>,
    /// Whether the gateway holds a refresh token for it.
    pub refresh_token_available: bool,
    /// A discovered route's authorization server (the one its token is from, else the one
    /// discovery found); `None` for a configured provider.
    pub authorization_server: Option<String>,
}

/// What a forced refresh (`POST /.warden/mcp/refresh`) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// Refreshed, by this call or by another refresh of the grant that ran while it waited
    /// (once per grant): the state now.
    Refreshed(TokenState),
    /// Issued under `FORCED_REFRESH_MIN_AGE` ago: not refreshed again; its state.
    Fresh(TokenState),
    /// No token to refresh: never connected, disconnected, or dropped.
    NotConnected,
    /// The provider issued no refresh token: only a new consent renews the token.
    NoRefreshToken,
    /// The provider refused the refresh: the token was dropped.
    Refused(String),
    /// The provider failed (the token is kept), or another refresh did not finish.
    Unavailable(String),
}

/// A refresh's outcome: the look-up's answer, with why the provider said no.
enum Refreshed {
    Answer(Lookup),
    /// The provider refused: the token is dropped.
    Dropped(String),
    /// The provider failed: the look-up's answer (the current token while it works).
    Failed(Lookup, String),
}

impl Refreshed {
    fn lookup(self) -> Lookup {
        match self {
            Refreshed::Answer(l) | Refreshed::Failed(l, _) => l,
            Refreshed::Dropped(_) => Lookup::NoToken,
        }
    }
}

/// Held while one task refreshes a (user, route) token; the others wait on it.
type RefreshGate = Arc<tokio::sync::Mutex<()>>;

pub struct Vault {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    providers: HashMap<String, Arc<Provider>>,
    /// The routes whose provider is discovered (`upstream_oauth2.discover`).
    discovered: Option<DiscoveredProviders>,
    /// One refresh per (user, route) in this process; the store's lease covers replicas.
    refreshing: Mutex<HashMap<(String, String), RefreshGate>>,
    reseal_counters: Arc<reseal_status::ResealCounters>,
    /// Counts every refresh call to a provider (`warden_upstream_refreshes_total`).
    metrics: Arc<Metrics>,
}

impl Vault {
    /// `key` seals; `previous` (keys it replaced) only open, until the re-seal has moved
    /// everything to `key`.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        key: &[u8; 32],
        previous: &[[u8; 32]],
    ) -> anyhow::Result<Self> {
        let outbound = crate::outbound::Outbound::load(&config.outbound)?;
        let http = provider::http_client(&outbound)?;
        let callback = callback_url(config);
        let providers = config
            .routes
            .iter()
            .filter_map(|r| {
                r.upstream_oauth2().map(|u| {
                    (
                        r.name.clone(),
                        Arc::new(Provider::new(u.clone(), callback.clone(), http.clone())),
                    )
                })
            })
            .collect();
        let discovered = DiscoveredProviders::new(config, &outbound, callback, http)?;
        let reseal_counters = Arc::new(reseal_status::ResealCounters::default());
        reseal_counters
            .previous_keys
            .store(previous.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(Self {
            store,
            sealer: Arc::new(Sealer::with_previous(key, previous)),
            providers,
            discovered,
            refreshing: Mutex::new(HashMap::new()),
            reseal_counters,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Counts into `metrics` (the service's) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The route's provider: configured, or discovered (the last result; `prepare` or
    /// `provider_now` makes it fresh).
    pub fn provider(&self, route: &str) -> Option<Arc<Provider>> {
        if let Some(p) = self.providers.get(route) {
            return Some(p.clone());
        }
        let d = self.discovered.as_ref()?;
        d.current(route).ok().map(|r| r.provider.clone())
    }

    /// Whether the route has upstream OAuth, configured or discovered.
    pub fn has_provider(&self, route: &str) -> bool {
        self.providers.contains_key(route)
            || self.discovered.as_ref().is_some_and(|d| d.discovers(route))
    }

    /// The route's provider now: a discovered one is discovered again when its result
    /// expired. `Err` says why there is none (discovery or registration failed).
    async fn provider_now(
        &self,
        route: &str,
        now: i64,
    ) -> Result<Option<(Arc<Provider>, String)>, String> {
        if let Some(p) = self.providers.get(route) {
            return Ok(Some((p.clone(), String::new())));
        }
        match &self.discovered {
            Some(d) if d.discovers(route) => {
                let r = d.resolve(&self.store, &self.sealer, route, now).await?;
                Ok(Some((r.provider.clone(), r.issuer.clone())))
            }
            _ => Ok(None),
        }
    }

    /// Before a blocking flow that may start an upstream consent: `route` (the one the
    /// request names, if any) is discovered again when its result expired, and any
    /// discovering route this replica has no result for yet is discovered (a sign-in begun at
    /// another replica, or before a restart, continues here).
    pub async fn prepare(&self, route: Option<&str>, now: i64) {
        let Some(d) = &self.discovered else {
            return;
        };
        let mut due: Vec<&str> = d.route_names().filter(|r| !d.known(r)).collect();
        if let Some(r) = route.filter(|r| d.discovers(r) && !due.contains(r)) {
            due.push(r);
        }
        for r in due {
            // A failure is kept and read by the flow (`upstream_unavailable`).
            let _ = d.resolve(&self.store, &self.sealer, r, now).await;
        }
    }

    /// Why a discovered route has no provider now (discovery or registration failed), for
    /// the flows to tell the client; `None` when it has one, or is configured.
    pub fn upstream_unavailable(&self, route: &str) -> Option<String> {
        let d = self.discovered.as_ref().filter(|d| d.discovers(route))?;
        d.current(route).err()
    }

    /// The issuer a discovered route's tokens must come from now; empty for a configured
    /// route (and for a discovered one whose discovery failed: its stored token is judged by
    /// the upstream, which is all there is to ask).
    fn current_issuer(&self, route: &str) -> String {
        self.discovered
            .as_ref()
            .filter(|d| d.discovers(route))
            .and_then(|d| d.current(route).ok())
            .map(|r| r.issuer.clone())
            .unwrap_or_default()
    }

    fn open_access(&self, r: &UpstreamRecord) -> Option<String> {
        let sealed = r.access_token.as_ref()?;
        self.sealer.open(&r.user, &r.route, Kind::Access, sealed)
    }

    fn open_refresh(&self, r: &UpstreamRecord) -> Option<String> {
        let sealed = r.refresh_token.as_ref()?;
        self.sealer.open(&r.user, &r.route, Kind::Refresh, sealed)
    }

    /// Whether `user` holds a token for `route` that works now or can be refreshed (the
    /// upstream consent step is skipped then). Blocking (store).
    pub fn holds_usable(&self, user: &str, route: &str, now: i64) -> anyhow::Result<bool> {
        Ok(self.token_state(user, route, now)?.connected)
    }

    fn usable_row(&self, r: &UpstreamRecord, now: i64) -> bool {
        if r.refused_until.is_some_and(|t| t > now) {
            return false;
        }
        if issued_elsewhere(r, &self.current_issuer(&r.route)) {
            return false;
        }
        let live = r.expires_at.is_none_or(|e| e > now) && self.open_access(r).is_some();
        live || self.open_refresh(r).is_some()
    }

    /// The state of `user`'s token for `route`, for the listing. Blocking (store).
    pub fn token_state(&self, user: &str, route: &str, now: i64) -> anyhow::Result<TokenState> {
        Ok(match self.store.upstream_token(user, route)? {
            Some(row) if self.usable_row(&row, now) => self.state_of(&row, true),
            _ => TokenState {
                connected: false,
                expires_at: None,
                refresh_token_available: false,
                authorization_server: self.server_of(route),
            },
        })
    }

    fn state_of(&self, row: &UpstreamRecord, connected: bool) -> TokenState {
        let server = if row.authorization_server.is_empty() {
            self.server_of(&row.route)
        } else {
            Some(row.authorization_server.clone())
        };
        TokenState {
            connected,
            expires_at: self.open_access(row).and(row.expires_at),
            refresh_token_available: self.open_refresh(row).is_some(),
            authorization_server: server,
        }
    }

    /// The authorization server the listing names: a discovered route's issuer, or the origin
    /// of a configured provider's token endpoint.
    fn server_of(&self, route: &str) -> Option<String> {
        match self.providers.get(route) {
            Some(p) => p.token_origin(),
            None => Some(self.current_issuer(route)).filter(|i| !i.is_empty()),
        }
    }

    /// Refreshes `user`'s token for `route` now, due or not: once per grant (a refresh of it
    /// already running, here or at another replica, is waited for and its result answered,
    /// with no second provider call).
    pub async fn force_refresh(
        self: &Arc<Self>,
        user: &str,
        route: &str,
        now: i64,
    ) -> anyhow::Result<Forced> {
        let started = Instant::now();
        let issuer = match self.provider_now(route, now).await {
            Ok(Some((_, issuer))) => issuer,
            Ok(None) => return Ok(Forced::NotConnected),
            Err(why) => return Ok(Forced::Unavailable(why)),
        };
        let Some(row) = self.read(user, route).await? else {
            return Ok(Forced::NotConnected);
        };
        if row.refused_until.is_some_and(|t| t > now)
            || self.open_access(&row).is_none()
            || issued_elsewhere(&row, &issuer)
        {
            return Ok(Forced::NotConnected);
        }
        if self.open_refresh(&row).is_none() {
            return Ok(Forced::NoRefreshToken);
        }
        if now.saturating_sub(row.issued_at) < FORCED_REFRESH_MIN_AGE {
            return Ok(Forced::Fresh(self.state_of(&row, true)));
        }
        let version = row.version;
        let gate = self.gate(user, route);
        let wait = Duration::from_secs(REFRESH_LEASE.unsigned_abs());
        let Ok(turn) = tokio::time::timeout(wait, Arc::clone(&gate).lock_owned()).await else {
            self.forget_gate(user, route, gate);
            return Ok(Forced::Unavailable(
                "another refresh of this token did not finish".into(),
            ));
        };
        // In a task of its own, as in `token`: a caller that goes away cannot cut it off.
        let this = Arc::clone(self);
        let (u, r) = (user.to_owned(), route.to_owned());
        let span = tracing::info_span!("upstream refresh", route = %crate::telemetry::bounded(route), forced = true);
        let outcome = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = this
                    .refresh_locked(&u, &r, now, started, Some(version))
                    .await;
                drop(turn);
                this.forget_gate(&u, &r, gate);
                outcome
            },
            span,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("refresh task failed: {e}"))??;
        Ok(match outcome {
            Refreshed::Answer(Lookup::Token(_)) => match self.read(user, route).await? {
                Some(row) if self.open_access(&row).is_some() => {
                    Forced::Refreshed(self.state_of(&row, true))
                }
                _ => Forced::NotConnected,
            },
            Refreshed::Answer(Lookup::NoToken | Lookup::Refused) => Forced::NotConnected,
            Refreshed::Answer(Lookup::Unavailable(why)) | Refreshed::Failed(_, why) => {
                Forced::Unavailable(why)
            }
            Refreshed::Dropped(why) => Forced::Refused(why),
        })
    }

    /// Starts the upstream consent for the MCP client's `request`: stores the flow and
    /// returns the provider's authorization URL, or `None` when the pending records are at
    /// `limit` (nothing stored). Blocking (store).
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        route: &str,
        request: AuthorizeGrant,
        email: &str,
        sid: &str,
        browser: &str,
        limit: PendingLimit,
        redirect_url: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let provider = self
            .provider(route)
            .ok_or_else(|| anyhow::anyhow!("route {route} has no upstream_oauth2"))?;
        let authorization_server = self.current_issuer(route);
        let extra = self
            .store
            .upstream_token(email, route)?
            .map(|r| split_scope(&r.extra_scope))
            .unwrap_or_default();
        let state = random_token();
        let (url, verifier) = provider.authorization_url(&state, &extra)?;
        let stored = self.store.insert_upstream_flow(
            &hash_secret(&state),
            &UpstreamFlow {
                request,
                user: email.to_owned(),
                sid: sid.to_owned(),
                browser: browser.to_owned(),
                route: route.to_owned(),
                pkce_verifier: B64.encode(self.sealer.seal(
                    email,
                    route,
                    Kind::Verifier,
                    &verifier,
                )?),
                expires_at: limit.now + UPSTREAM_FLOW_TTL,
                redirect_url,
                authorization_server,
            },
            limit,
        )?;
        Ok(stored.then_some(url))
    }

    /// Disconnects `user`'s account for `route`: deletes the stored token, then revokes it
    /// at the provider when it offers RFC 7009 revocation (the refresh token when there is
    /// one: that ends the whole grant; else the access token). A failed revocation is logged,
    /// not fatal: the gateway holds nothing any more. Returns whether a token was stored.
    pub async fn disconnect(&self, user: &str, route: &str) -> anyhow::Result<bool> {
        let Some(row) = self.read(user, route).await? else {
            return Ok(false);
        };
        let (u, r) = (user.to_owned(), route.to_owned());
        let deleted = self.db(move |st| st.delete_upstream_token(&u, &r)).await?;
        let held = row.access_token.is_some() || row.refresh_token.is_some();
        // Revoked only where it was issued: never sent to a server that did not issue it.
        let provider = match self.provider_now(route, crate::clock::now_unix()).await {
            Ok(Some((p, issuer))) if !issued_elsewhere(&row, &issuer) => Some(p),
            _ => None,
        };
        if let Some(provider) = provider {
            let revoke = match (self.open_refresh(&row), self.open_access(&row)) {
                (Some(t), _) => Some((t, "refresh_token")),
                (None, Some(t)) => Some((t, "access_token")),
                (None, None) => None,
            };
            if let Some((token, hint)) = revoke {
                match provider.revoke(&token, hint).await {
                    Ok(true) => {
                        tracing::info!(sub = %user, route = %route, "upstream token revoked at the provider")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(sub = %user, route = %route, error = %e, "revoking the upstream token failed")
                    }
                }
            }
        }
        tracing::info!(sub = %user, route = %route, "upstream account disconnected");
        Ok(deleted && held)
    }

    /// Seals the PKCE verifier of a sign-in at the identity provider, bound to its flow.
    pub fn seal_login_verifier(&self, flow_id: &str, verifier: &str) -> anyhow::Result<String> {
        Ok(B64.encode(
            self.sealer
                .seal(flow_id, LOGIN_BINDING, Kind::Verifier, verifier)?,
        ))
    }

    pub fn open_login_verifier(&self, flow_id: &str, sealed: &str) -> Option<String> {
        let sealed = B64.decode(sealed.as_bytes()).ok()?;
        self.sealer
            .open(flow_id, LOGIN_BINDING, Kind::Verifier, &sealed)
    }

    /// Seals the identity provider's tokens of `user` (refresh, access) for their record.
    pub fn seal_idp_tokens(
        &self,
        user: &str,
        tokens: &IdpTokens,
    ) -> anyhow::Result<(SealedToken, SealedToken)> {
        let seal = |kind, t: &Option<String>| {
            t.as_deref()
                .map(|t| self.sealer.seal(user, IDP_BINDING, kind, t))
                .transpose()
        };
        Ok((
            seal(Kind::Refresh, &tokens.refresh_token)?,
            seal(Kind::Access, &tokens.access_token)?,
        ))
    }

    /// The tokens of an identity-provider user's record; a value no configured key opens
    /// reads as absent.
    pub fn open_idp_tokens(&self, record: &IdpUserRecord) -> IdpTokens {
        let open = |kind, sealed: &Option<Vec<u8>>| {
            sealed
                .as_deref()
                .and_then(|s| self.sealer.open(&record.key, IDP_BINDING, kind, s))
        };
        IdpTokens {
            refresh_token: open(Kind::Refresh, &record.refresh_token),
            access_token: open(Kind::Access, &record.access_token),
        }
    }

    /// Takes the flow a callback's `state` names (single use). Blocking (store).
    pub fn take_flow(&self, state: &str, now: i64) -> anyhow::Result<Option<UpstreamFlow>> {
        Ok(self.store.take_upstream_flow(&hash_secret(state), now)?)
    }

    /// Exchanges the provider's code and stores the token: the user has (re)connected.
    pub async fn complete(
        &self,
        flow: &UpstreamFlow,
        code: &str,
        now: i64,
    ) -> anyhow::Result<Result<(), ProviderError>> {
        let provider = match self.provider_now(&flow.route, now).await {
            Ok(Some((p, issuer))) if issuer == flow.authorization_server => p,
            Ok(Some(_)) => return Ok(Err(ProviderError::Refused(
                "the upstream named another authorization server during the consent; connect again"
                    .into(),
            ))),
            Ok(None) => anyhow::bail!("route {} has no upstream_oauth2", flow.route),
            Err(why) => return Ok(Err(ProviderError::Unavailable(why))),
        };
        let verifier = B64
            .decode(flow.pkce_verifier.as_bytes())
            .ok()
            .and_then(|sealed| {
                self.sealer
                    .open(&flow.user, &flow.route, Kind::Verifier, &sealed)
            })
            .ok_or_else(|| anyhow::anyhow!("the upstream flow's PKCE verifier does not open"))?;
        let issued = match provider.exchange_code(code, &verifier).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let requested = provider.scopes().join(" ");
        let previous = self.read(&flow.user, &flow.route).await?;
        let mut record =
            self.record(&flow.user, &flow.route, &issued, None, now, now, &requested)?;
        record.authorization_server = flow.authorization_server.clone();
        // Consent that follows a server's refusal: a refusal right after it would loop. A
        // refusal of another server's token (the upstream moved) is no loop at this one.
        let last_refused_at = previous
            .filter(|p| p.authorization_server == flow.authorization_server)
            .and_then(|p| p.last_refused_at);
        record.after_refusal = last_refused_at.is_some_and(|t| now - t < REFUSAL_HOLD);
        record.last_refused_at = last_refused_at;
        self.db(move |st| st.put_upstream_token(&record)).await?;
        tracing::info!(sub = %flow.user, route = %flow.route, "upstream account connected");
        Ok(Ok(()))
    }

    /// Builds a sealed row for tokens just issued; `kept_refresh` is the refresh token to
    /// keep when the provider did not rotate it.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        user: &str,
        route: &str,
        issued: &Issued,
        kept_refresh: Option<&str>,
        issued_at: i64,
        granted_at: i64,
        requested_scope: &str,
    ) -> anyhow::Result<UpstreamRecord> {
        let refresh = issued.refresh_token.as_deref().or(kept_refresh);
        Ok(UpstreamRecord {
            user: user.to_owned(),
            route: route.to_owned(),
            access_token: Some(self.sealer.seal(
                user,
                route,
                Kind::Access,
                &issued.access_token,
            )?),
            refresh_token: refresh
                .map(|t| self.sealer.seal(user, route, Kind::Refresh, t))
                .transpose()?,
            issued_at,
            expires_at: issued
                .expires_in
                .map(|s| issued_at.saturating_add(i64::try_from(s).unwrap_or(i64::MAX))),
            granted_at,
            scope: issued
                .scope
                .clone()
                .unwrap_or_else(|| requested_scope.to_owned()),
            extra_scope: String::new(),
            refused_until: None,
            last_refused_at: None,
            after_refusal: false,
            version: 0,
            authorization_server: String::new(),
        })
    }

    async fn db<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(&dyn Store) -> crate::store::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| anyhow::anyhow!("store task failed: {e}"))??)
    }

    async fn read(&self, user: &str, route: &str) -> anyhow::Result<Option<UpstreamRecord>> {
        let (u, r) = (user.to_owned(), route.to_owned());
        self.db(move |st| st.upstream_token(&u, &r)).await
    }

    /// The token for (user, route), refreshed first when it is due (once per grant, however
    /// many lookups arrive at once).
    pub async fn token(
        self: &Arc<Self>,
        user: &str,
        route: &str,
        now: i64,
    ) -> anyhow::Result<Lookup> {
        // `now` is the request's time; a look-up that waits (for this process's refresh, or
        // another replica's lease) reads the time on from here.
        let started = Instant::now();
        let issuer = match self.provider_now(route, now).await {
            Ok(Some((_, issuer))) => issuer,
            Ok(None) => return Ok(Lookup::NoToken),
            Err(why) => return Ok(Lookup::Unavailable(why)),
        };
        let Some(row) = self.read(user, route).await? else {
            return Ok(Lookup::NoToken);
        };
        if issued_elsewhere(&row, &issuer) {
            return Ok(Lookup::NoToken);
        }
        if let Some(found) = self.usable_now(&row, now) {
            return Ok(found);
        }
        // A slow provider does not hold back a token that still works, nor outlast the
        // filter's call-out: past the patience the caller gets the current token (or,
        // expired, "unavailable") while the refresh goes on.
        let still_valid = self.still_valid(&row, now);
        let patience = if still_valid.is_some() {
            PATIENCE_WHILE_VALID
        } else {
            PATIENCE_WHEN_EXPIRED
        };
        let gate = self.gate(user, route);
        let Ok(turn) = Arc::clone(&gate).try_lock_owned() else {
            // A refresh of this grant is running in this process: wait for it (bounded) and
            // answer from what it stored. Never a second refresh task per grant, however
            // many look-ups arrive while the provider is slow.
            let _ = tokio::time::timeout(patience, gate.lock()).await;
            self.forget_gate(user, route, gate);
            let row = self.read(user, route).await?;
            return Ok(row
                .and_then(|row| {
                    self.usable_now(&row, now)
                        .or_else(|| self.still_valid(&row, now))
                })
                .unwrap_or_else(slow_provider));
        };
        // Our turn: the refresh runs in a task of its own, so a caller that gives up (the
        // filter's call-out timeout drops the request) cannot cut it off between the provider
        // rotating the refresh token and the store keeping the new one, nor leave the lease
        // taken.
        let this = Arc::clone(self);
        let (u, r) = (user.to_owned(), route.to_owned());
        let span =
            tracing::info_span!("upstream refresh", route = %crate::telemetry::bounded(route));
        let refresh = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = this.refresh_locked(&u, &r, now, started, None).await;
                drop(turn);
                this.forget_gate(&u, &r, gate);
                outcome
            },
            span,
        ));
        match tokio::time::timeout(patience, refresh).await {
            Ok(joined) => joined
                .map_err(|e| anyhow::anyhow!("refresh task failed: {e}"))?
                .map(Refreshed::lookup),
            Err(_) => {
                tracing::warn!(sub = %user, route = %route, "upstream refresh is slow; answering without waiting for it");
                Ok(still_valid.unwrap_or_else(slow_provider))
            }
        }
    }

    /// The answer from `row` alone: `None` when it needs a refresh.
    fn usable_now(&self, row: &UpstreamRecord, now: i64) -> Option<Lookup> {
        if row.access_token.is_none() {
            return Some(if row.refused_until.is_some_and(|t| t > now) {
                Lookup::Refused
            } else {
                Lookup::NoToken
            });
        }
        let Some(access_token) = self.open_access(row) else {
            // Sealed with a key no longer listed (rotated without it) or for another row: as
            // good as absent.
            return Some(Lookup::NoToken);
        };
        if !refresh_due(row.issued_at, row.expires_at, now) {
            return Some(Lookup::Token(UsableToken::of(row, access_token)));
        }
        None
    }

    /// Refreshes the token when due, or (`forced`) when the row is still at that version: a
    /// forced refresh that finds the row moved on (another refresh ran meanwhile) answers
    /// that one's result.
    async fn refresh_locked(
        &self,
        user: &str,
        route: &str,
        now: i64,
        started: Instant,
        forced: Option<i64>,
    ) -> anyhow::Result<Refreshed> {
        loop {
            let at = elapsed_from(now, started);
            // Another task or replica may have refreshed while we waited for our turn.
            let Some(row) = self.read(user, route).await? else {
                return Ok(Refreshed::Answer(Lookup::NoToken));
            };
            let forced_here = forced == Some(row.version) && row.access_token.is_some();
            if !forced_here {
                if let Some(found) = self.usable_now(&row, at) {
                    return Ok(Refreshed::Answer(found));
                }
            }
            let Some(refresh_token) = self.open_refresh(&row) else {
                return Ok(Refreshed::Answer(
                    self.still_valid(&row, at).unwrap_or(Lookup::NoToken),
                ));
            };
            let (u, r, version) = (user.to_owned(), route.to_owned(), row.version);
            // Only over the version read: a row another replica refreshed since holds a new
            // refresh token, and the one read here may be rotated out at the provider.
            let claimed = self
                .db(move |st| st.claim_upstream_refresh(&u, &r, version, at, at + REFRESH_LEASE))
                .await?;
            if claimed {
                return self.refresh(row, &refresh_token, now, started).await;
            }
            let moved_on = self
                .read(user, route)
                .await?
                .is_none_or(|now_row| now_row.version != version);
            if moved_on {
                continue;
            }
            // Another replica is refreshing this grant: wait for its result, while its lease
            // lasts (a holder that died lets the lease run out and this one takes over).
            if started.elapsed() >= Duration::from_secs(REFRESH_LEASE.unsigned_abs() * 2) {
                return Ok(Refreshed::Answer(Lookup::Unavailable(
                    "another refresh of this token did not finish".into(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The current token while it has not expired yet (a refresh failed or is impossible).
    fn still_valid(&self, row: &UpstreamRecord, now: i64) -> Option<Lookup> {
        if row.expires_at.is_some_and(|e| e <= now) {
            return None;
        }
        Some(Lookup::Token(UsableToken::of(row, self.open_access(row)?)))
    }

    /// Refreshes `row` (its lease held) and stores the result in one write.
    async fn refresh(
        &self,
        row: UpstreamRecord,
        refresh_token: &str,
        now: i64,
        started: Instant,
    ) -> anyhow::Result<Refreshed> {
        let (user, route) = (row.user.clone(), row.route.clone());
        let Some(provider) = self.provider(&route) else {
            return Ok(Refreshed::Answer(Lookup::NoToken));
        };
        let refreshed = provider.refresh(refresh_token).await;
        self.metrics.upstream_refresh(match &refreshed {
            Ok(_) => UpstreamRefreshResult::Refreshed,
            Err(ProviderError::Refused(_)) => UpstreamRefreshResult::Refused,
            Err(ProviderError::Unavailable(_)) => UpstreamRefreshResult::Unavailable,
        });
        match refreshed {
            Ok(issued) => {
                // Issued now, not when the look-up began: a look-up that waited would store
                // a token already (partly) spent, due again at once.
                let now = elapsed_from(now, started);
                let mut record = self.record(
                    &user,
                    &route,
                    &issued,
                    Some(refresh_token),
                    now,
                    row.granted_at,
                    &row.scope,
                )?;
                record.after_refusal = row.after_refusal;
                record.authorization_server = row.authorization_server.clone();
                let token = UsableToken {
                    refreshed: true,
                    ..UsableToken::of(&record, issued.access_token.clone())
                };
                // Only over the token refreshed: a server's refusal (drop) or a new consent
                // that came while the provider answered stands.
                let version = row.version;
                let stored = self
                    .db(move |st| st.put_refreshed_upstream_token(&record, version))
                    .await?;
                if !stored {
                    tracing::info!(sub = %user, route = %route, "upstream token dropped or replaced during its refresh; refresh discarded");
                    let Some(now_row) = self.read(&user, &route).await? else {
                        return Ok(Refreshed::Answer(Lookup::NoToken));
                    };
                    return Ok(Refreshed::Answer(
                        self.usable_now(&now_row, now).unwrap_or(Lookup::NoToken),
                    ));
                }
                tracing::info!(sub = %user, route = %route, "upstream token refreshed");
                Ok(Refreshed::Answer(Lookup::Token(token)))
            }
            Err(ProviderError::Refused(why)) => {
                tracing::info!(sub = %user, route = %route, reason = %why, "upstream refresh refused; token dropped");
                let extra = row.extra_scope.clone();
                let version = row.version;
                self.db(move |st| {
                    st.drop_upstream_token(&user, &route, version, &extra, None, None)
                })
                .await?;
                Ok(Refreshed::Dropped(why))
            }
            Err(ProviderError::Unavailable(why)) => {
                tracing::warn!(sub = %user, route = %route, reason = %why, "upstream refresh failed; will retry");
                let (u, r) = (user.clone(), route.clone());
                self.db(move |st| st.release_upstream_refresh(&u, &r))
                    .await?;
                let answer = self
                    .still_valid(&row, now)
                    .unwrap_or_else(|| Lookup::Unavailable(why.clone()));
                Ok(Refreshed::Failed(answer, why))
            }
        }
    }

    /// An MCP server refused `presented` (401, or 403 `insufficient_scope` asking for
    /// `scope`): drop it, unless the row holds another token by now. Returns whether it
    /// dropped.
    pub async fn refuse(
        &self,
        user: &str,
        route: &str,
        presented: &str,
        scope: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let Some(row) = self.read(user, route).await? else {
            return Ok(false);
        };
        let Some(current) = self.open_access(&row) else {
            return Ok(false);
        };
        if !constant_time_eq(
            hash_secret(&current).as_bytes(),
            hash_secret(presented).as_bytes(),
        ) {
            return Ok(false);
        }
        let mut extra = split_scope(&row.extra_scope);
        for s in split_scope(scope) {
            if !extra.contains(&s) && s.bytes().all(crate::config::is_scope_char) {
                extra.push(s);
            }
        }
        let extra = extra.join(" ");
        // A discovered upstream may refuse because it moved to another server: a token of
        // the server it left is no loop, and the user consents at the new one.
        let moved = match &self.discovered {
            Some(d) if d.discovers(route) => d
                .resolve_after_refusal(&self.store, &self.sealer, route, now)
                .await
                .is_ok_and(|r| issued_elsewhere(&row, &r.issuer)),
            _ => false,
        };
        // Only a consent that itself followed a refusal can loop (a user revoking the app a
        // moment after connecting it is simply sent through consent again).
        let hold = (!moved && row.after_refusal && refused_right_after_grant(row.granted_at, now))
            .then_some(now + REFUSAL_HOLD);
        let (u, r, version) = (user.to_owned(), route.to_owned(), row.version);
        let dropped = self
            .db(move |st| st.drop_upstream_token(&u, &r, version, &extra, hold, Some(now)))
            .await?;
        if dropped {
            tracing::info!(sub = %user, route = %route, held = hold.is_some(), "upstream token refused by the MCP server; dropped");
        }
        Ok(dropped)
    }

    fn gate(&self, user: &str, route: &str) -> RefreshGate {
        let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((user.to_owned(), route.to_owned()))
            .or_default()
            .clone()
    }

    fn forget_gate(&self, user: &str, route: &str, gate: RefreshGate) {
        let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this handle left: nobody else waits on it.
        if Arc::strong_count(&gate) == 2 {
            map.remove(&(user.to_owned(), route.to_owned()));
        }
    }
}

//! The service's shared state (`AppState`) and the secrets it is built from. Its own module,
//! not the crate root, so the modules it holds can be named without importing the root.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::client_documents::ClientDocuments;
use crate::clock::{now_unix, Clock};
use crate::config::Config;
use crate::flows::app::SignOutKey;
use crate::health::Health;
use crate::internal::nonce::NonceGuard;
use crate::keyring::{KeySet, Keyring};
use crate::metrics::Metrics;
use crate::outbound::{GuardedFetcher, Outbound};
use crate::random::fill_random;
use crate::store::Store;
use crate::vault::seal::Sealer;
use crate::{error, oidc, password, ratelimit, secrets, store, vault};

/// Shared state of the service. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    /// The TE signing keys, shared through the store (`keyring`).
    keys: Arc<Keyring>,
    clock: Clock,
    password_checks: Arc<PasswordChecks>,
    registrations: Arc<ratelimit::RateLimiter>,
    /// Per client address: requests that may start a sign-in.
    new_flows: Arc<ratelimit::RateLimiter>,
    vault: Arc<vault::Vault>,
    /// The organisation's identity provider, when configured.
    oidc: Option<Arc<oidc::OidcProvider>>,
    /// Keys of `private_key_jwt` clients and ID-JAG issuers, fetched and cached per URL.
    jwks_cache: Arc<crate::jwks_cache::JwksCache>,
    /// What the filter signs its internal calls with.
    internal_key: Arc<warden_core::internal_api::InternalKey>,
    /// Nonces of internal calls already accepted (replays are refused).
    internal_nonces: Arc<NonceGuard>,
    /// Keys sign-out tickets and the sign-out form's CSRF token.
    sign_out_key: Arc<SignOutKey>,
    /// What the checks of identity-provider users came to (`recheck`).
    rechecks: Arc<RecheckCounters>,
    /// Readiness (`/readyz`): start-up, shutdown, the store check.
    health: Arc<Health>,
    /// Fetches documents at URLs clients chose (`outbound`'s SSRF guard).
    guarded: GuardedFetcher,
    /// Clients identified by their metadata documents, as this replica fetched them.
    client_documents: Arc<ClientDocuments>,
    /// What `/metrics` reports; the vault and the identity provider client count into it too.
    metrics: Arc<Metrics>,
}

/// Checks of identity-provider users at the provider (`recheck`), since this process started:
/// for the service to report.
#[derive(Debug, Default)]
pub struct RecheckCounters {
    /// The provider vouched for the user again.
    pub checked: AtomicU64,
    /// The provider refused the user: their access ended.
    pub revoked: AtomicU64,
    /// No answer could be had (unreachable, a server error, an answer failing a check): the
    /// user keeps their access and is tried again at a later round.
    pub failed: AtomicU64,
}

/// The service's own secrets: the key signing keys and upstream tokens are sealed with, and
/// the credential the filter presents on the internal listener.
pub struct Secrets {
    pub encryption_key: [u8; secrets::SECRET_BYTES],
    /// Keys `encryption_key` replaced (`storage.previous_encryption_key_files`): they only
    /// open what was sealed with them.
    pub previous_encryption_keys: Vec<[u8; secrets::SECRET_BYTES]>,
    pub internal_credential: String,
}

impl Secrets {
    /// Fresh random secrets that live as long as the process (tests).
    pub fn ephemeral() -> Self {
        let mut key = [0u8; secrets::SECRET_BYTES];
        fill_random(&mut key);
        let mut credential = [0u8; secrets::SECRET_BYTES];
        fill_random(&mut credential);
        Self {
            encryption_key: key,
            previous_encryption_keys: Vec::new(),
            internal_credential: secrets::encode(&credential),
        }
    }
}

/// Bounds Argon2 work: each check holds its memory cost (19 MiB with the default
/// parameters) while it runs, so peak memory is `running` × that, by design. Checks beyond
/// `running` wait in a queue of `QUEUED_PASSWORD_CHECKS`; beyond that they are refused.
struct PasswordChecks {
    admitted: tokio::sync::Semaphore,
    running: tokio::sync::Semaphore,
}

/// Sign-ins that may wait for a password check per check slot.
const QUEUED_PASSWORD_CHECKS: usize = 16;

impl PasswordChecks {
    fn new(running: usize) -> Self {
        Self {
            admitted: tokio::sync::Semaphore::new(running * (1 + QUEUED_PASSWORD_CHECKS)),
            running: tokio::sync::Semaphore::new(running),
        }
    }
}

/// How long one replica's sweep keeps the others from sweeping: under the sweep interval
/// (`lib.rs`), so the next round is anyone's, and long enough for one sweep to finish.
pub const SWEEP_LEASE_SECONDS: i64 = 240;

/// The per-address limits (`authorization_server.registration.rate_limit_per_minute` and
/// `pending_flows.rate_limit_per_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `POST /register`.
    Registrations,
    /// Requests that may start a sign-in (leave a pending record behind).
    NewFlows,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Registrations => "registrations",
            Limit::NewFlows => "new_flows",
        }
    }
}

impl AppState {
    /// Opens (and migrates) the store the config names (`store::open`), loads or creates the
    /// secrets at the paths the config names, and loads the signing keys (creating the first
    /// one on a new store). Blocking: call it off the async workers.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let store = store::open(&config.storage)?;
        Self::with_store(config, store)
    }

    /// [`AppState::new`] on a store already opened and migrated (`serve` opens it first, to
    /// say which of the two start-up is at). Blocking.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let mut secrets = Secrets::ephemeral();
        // Sealed secrets (signing keys, upstream tokens, PKCE verifiers of sign-ins in
        // progress) must open after a restart and on every replica.
        secrets.encryption_key =
            secrets::load_or_create(&config.encryption_key_file(), "encryption key")?;
        secrets.previous_encryption_keys =
            config.previous_encryption_keys(Some(&secrets.encryption_key))?;
        if config.uses_internal_listener() {
            secrets.internal_credential = secrets::encode(&secrets::load_or_create(
                &config.internal_credential_file(),
                "internal credential",
            )?);
        }
        let state = Self::with_secrets(config, store, secrets)?;
        // There is no reload: a config without a user takes effect here, at start.
        crate::flows::sign_out::end_removed_users(state.config(), &**state.store(), now_unix())?;
        Ok(state)
    }

    /// For tests driving the router in-process: the secrets live in memory.
    pub fn from_parts(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        Self::with_secrets(config, store, Secrets::ephemeral())
    }

    /// Loads the signing keys from `store` (creating the first one when it holds none).
    pub fn with_secrets(
        config: Config,
        store: Arc<dyn Store>,
        secrets: Secrets,
    ) -> anyhow::Result<Self> {
        let keys = Keyring::open(
            &config,
            store.clone(),
            Sealer::with_previous(&secrets.encryption_key, &secrets.previous_encryption_keys),
            now_unix(),
        )?;
        let metrics = Arc::new(Metrics::new());
        let vault = Arc::new(
            vault::Vault::new(
                &config,
                store.clone(),
                &secrets.encryption_key,
                &secrets.previous_encryption_keys,
            )?
            .with_metrics(metrics.clone()),
        );
        let outbound = Outbound::load(&config.outbound)?;
        let oidc = match &config.identity_provider.oidc {
            Some(o) => Some(Arc::new(
                oidc::OidcProvider::new(
                    o.clone(),
                    oidc::callback_url(&config),
                    vault::provider::http_client(&outbound)?,
                )
                .with_metrics(metrics.clone()),
            )),
            None => None,
        };
        let documents = &config.authorization_server.client_id_metadata_documents;
        let guarded = outbound.guarded(documents.allow_private_addresses)?;
        let client_documents = Arc::new(ClientDocuments::new(documents, guarded.clone()));
        // A client's own jwks_uri goes through the guarded fetcher; an operator's through the
        // identity provider's kind of client.
        let jwks_cache = Arc::new(crate::jwks_cache::JwksCache::new(
            vault::provider::http_client(&outbound)?,
            guarded.clone(),
        ));
        let password_checks = Arc::new(PasswordChecks::new(config.password_check_concurrency()));
        let registrations = Arc::new(ratelimit::RateLimiter::new(
            config
                .authorization_server
                .registration
                .rate_limit_per_minute,
        ));
        let internal_key =
            warden_core::internal_api::InternalKey::from_credential(&secrets.internal_credential)
                .map_err(|e| anyhow::anyhow!("internal credential: {e}"))?;
        let new_flows = Arc::new(ratelimit::RateLimiter::new(
            config
                .authorization_server
                .pending_flows
                .rate_limit_per_minute,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                keys: Arc::new(keys),
                clock: Arc::new(now_unix),
                password_checks,
                registrations,
                new_flows,
                vault,
                oidc,
                jwks_cache,
                internal_key: Arc::new(internal_key),
                internal_nonces: Arc::new(NonceGuard::new()),
                sign_out_key: Arc::new(SignOutKey::derive(&secrets.internal_credential)),
                rechecks: Arc::new(RecheckCounters::default()),
                health: Health::running(),
                guarded,
                client_documents,
                metrics,
            }),
        })
    }

    /// Replaces the clock (tests use this to step past expiries).
    pub fn with_clock(self, clock: Clock) -> Self {
        let mut inner = (*self.inner).clone();
        inner.clock = clock;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Reports readiness through `health` (`serve`'s, which saw start-up).
    pub fn with_health(self, health: Arc<Health>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.health = health;
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn vault(&self) -> &Arc<vault::Vault> {
        &self.inner.vault
    }

    pub fn oidc(&self) -> Option<&Arc<oidc::OidcProvider>> {
        self.inner.oidc.as_ref()
    }

    /// The fetcher for URLs a client chose (its `jwks_uri`, its metadata document).
    pub fn guarded_fetcher(&self) -> &GuardedFetcher {
        &self.inner.guarded
    }

    pub fn client_documents(&self) -> &ClientDocuments {
        &self.inner.client_documents
    }

    pub fn jwks_cache(&self) -> &crate::jwks_cache::JwksCache {
        &self.inner.jwks_cache
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn recheck_counters(&self) -> &RecheckCounters {
        &self.inner.rechecks
    }

    pub(crate) fn internal_key(&self) -> &warden_core::internal_api::InternalKey {
        &self.inner.internal_key
    }

    pub(crate) fn sign_out_key(&self) -> &SignOutKey {
        &self.inner.sign_out_key
    }

    pub(crate) fn internal_nonces(&self) -> &NonceGuard {
        &self.inner.internal_nonces
    }

    /// The signing keys as last loaded (cheap: no store call).
    pub fn keys(&self) -> Arc<KeySet> {
        self.inner.keys.current()
    }

    /// Re-reads the signing keys from the store (the server does this every few seconds, so
    /// a rotation reaches every replica). Blocking.
    pub fn reload_keys(&self) -> anyhow::Result<()> {
        self.inner.keys.reload(self.now())
    }

    pub fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// Takes one request from `client`'s budget under `limit`, or says in how many seconds
    /// one is available. This process's own buckets answer first (a refusal there costs the
    /// database nothing); then the store's, shared by every replica, so the limit holds for
    /// the deployment and not per replica.
    pub(crate) async fn admit(
        &self,
        limit: Limit,
        client: ratelimit::ClientKey,
    ) -> error::Result<std::result::Result<(), u64>> {
        let now = self.now();
        let local = match limit {
            Limit::Registrations => &self.inner.registrations,
            Limit::NewFlows => &self.inner.new_flows,
        };
        if let Err(retry_after) = local.check(client, now) {
            return Ok(Err(retry_after));
        }
        let per_minute = local.per_minute();
        self.blocking(move |st| {
            Ok(st
                .store()
                .take_rate_token(limit.name(), &client.to_string(), per_minute, now)?)
        })
        .await
    }

    /// The bound a new pending record must stay within, now.
    pub(crate) fn pending_limit(&self) -> store::PendingLimit {
        store::PendingLimit {
            max: self.config().authorization_server.pending_flows.max_pending,
            now: self.now(),
        }
    }

    /// Deletes expired records now (the server does this every few minutes). Blocking.
    pub fn sweep(&self) -> anyhow::Result<()> {
        let r = &self.config().authorization_server.registration;
        let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 2);
        let retention = store::Retention {
            unused_client_ttl: secs(r.unused_client_ttl_seconds),
            idle_client_ttl: secs(r.idle_client_ttl_seconds),
        };
        Ok(self.store().sweep(self.now(), &retention)?)
    }

    /// Sweeps unless another replica holds the sweep's lease (`holder` names this one);
    /// returns whether it swept. Blocking.
    pub fn sweep_as(&self, holder: &str) -> anyhow::Result<bool> {
        let now = self.now();
        if !self
            .store()
            .try_lease("sweep", holder, now, now + SWEEP_LEASE_SECONDS)?
        {
            return Ok(false);
        }
        self.sweep()?;
        Ok(true)
    }

    /// Runs store work (SQLite, argon2) on the blocking pool.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> error::Result<T>
    where
        F: FnOnce(&AppState) -> error::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| error::Error::Internal(anyhow::anyhow!("blocking task failed: {e}")))?
    }

    /// Checks a sign-in's password (Argon2, slow by design) off the async workers, at most
    /// `max_concurrent_password_checks` at once; returns the user's email when it is right.
    /// When the queue is full the sign-in is refused with 503 rather than piling up.
    pub(crate) async fn authenticate(
        &self,
        email: String,
        password: String,
    ) -> error::Result<Option<String>> {
        let gate = &self.inner.password_checks;
        let Ok(_admitted) = gate.admitted.try_acquire() else {
            tracing::warn!("sign-in refused: too many password checks waiting");
            return Err(error::Error::RetryLater {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: "The sign-in service is busy. Try again in a moment.".into(),
                retry_after: 1,
                page: true,
            });
        };
        let _running = gate
            .running
            .acquire()
            .await
            .map_err(|e| error::Error::Internal(anyhow::anyhow!("password check gate: {e}")))?;
        let user = self
            .blocking(move |st| {
                Ok(password::authenticate(st.config(), &email, &password).map(|u| u.email.clone()))
            })
            .await?;
        self.metrics()
            .sign_in(crate::metrics::SignInMethod::Password, user.is_some());
        Ok(user)
    }
}

//! mcp-warden token service: the OAuth 2.1 authorization server MCP clients sign in through.
//!
//! `app(state)` builds the router (tests drive it with `tower::ServiceExt::oneshot`);
//! `serve` / `serve_on` run it on a socket.

pub mod client_address;
pub mod clock;
pub mod config;
pub mod digest;
pub mod error;
pub mod flows;
mod html;
pub mod identity;
pub mod internal;
pub mod keys;
pub mod listener;
pub mod oidc;
pub mod password;
pub mod random;
pub mod ratelimit;
pub mod redirect_uri;
pub mod render;
mod routes;
pub mod scope;
pub mod secrets;
pub mod store;
pub mod vault;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use clock::{now_unix, Clock};
pub use config::Config;
pub use keys::SigningKey;
pub use store::{SqliteStore, Store};

/// Shared state of the service. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    keys: Arc<SigningKey>,
    clock: Clock,
    password_checks: Arc<PasswordChecks>,
    registrations: Arc<ratelimit::RateLimiter>,
    /// Per client address: requests that may start a sign-in.
    new_flows: Arc<ratelimit::RateLimiter>,
    vault: Arc<vault::Vault>,
    /// The organisation's identity provider, when configured.
    oidc: Option<Arc<oidc::OidcProvider>>,
    /// What the filter signs its internal calls with.
    internal_key: Arc<warden_core::internal_api::InternalKey>,
    /// Nonces of internal calls already accepted (replays are refused).
    internal_nonces: Arc<internal::NonceGuard>,
    /// Keys sign-out tickets and the sign-out form's CSRF token.
    sign_out_key: Arc<flows::app::SignOutKey>,
}

/// The secrets of the upstream-token vault: the key tokens are sealed with, and the
/// credential the filter presents on the internal listener.
pub struct Secrets {
    pub encryption_key: [u8; secrets::SECRET_BYTES],
    /// Keys `encryption_key` replaced (`storage.previous_encryption_key_files`): they only
    /// open what was sealed with them.
    pub previous_encryption_keys: Vec<[u8; secrets::SECRET_BYTES]>,
    pub internal_credential: String,
}

impl Secrets {
    /// Fresh random secrets that live as long as the process (no upstream routes, tests).
    pub fn ephemeral() -> Self {
        let mut key = [0u8; secrets::SECRET_BYTES];
        random::fill_random(&mut key);
        let mut credential = [0u8; secrets::SECRET_BYTES];
        random::fill_random(&mut credential);
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

impl AppState {
    /// Opens (and migrates) the SQLite database and loads or creates the signing key, both
    /// at the paths the config names.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let store = SqliteStore::open(&config.storage.sqlite)?;
        let keys = SigningKey::load_or_generate(&config.signing_key_file(), config.signing_alg())?;
        let mut secrets = Secrets::ephemeral();
        // Sealed secrets (upstream tokens, PKCE verifiers of sign-ins in progress) must open
        // after a restart and on every replica.
        if config.uses_upstream_oauth() || config.identity_provider.oidc.is_some() {
            secrets.encryption_key =
                secrets::load_or_create(&config.encryption_key_file(), "encryption key")?;
            secrets.previous_encryption_keys =
                config.previous_encryption_keys(Some(&secrets.encryption_key))?;
        }
        if config.uses_internal_listener() {
            secrets.internal_credential = secrets::encode(&secrets::load_or_create(
                &config.internal_credential_file(),
                "internal credential",
            )?);
        }
        Self::with_secrets(config, Arc::new(store), keys, secrets)
    }

    /// For tests driving the router in-process: upstream-token secrets live in memory.
    pub fn from_parts(
        config: Config,
        store: Arc<dyn Store>,
        keys: SigningKey,
    ) -> anyhow::Result<Self> {
        Self::with_secrets(config, store, keys, Secrets::ephemeral())
    }

    pub fn with_secrets(
        config: Config,
        store: Arc<dyn Store>,
        keys: SigningKey,
        secrets: Secrets,
    ) -> anyhow::Result<Self> {
        let vault = Arc::new(vault::Vault::new(
            &config,
            store.clone(),
            &secrets.encryption_key,
            &secrets.previous_encryption_keys,
        )?);
        let oidc = match &config.identity_provider.oidc {
            Some(o) => Some(Arc::new(oidc::OidcProvider::new(
                o.clone(),
                oidc::callback_url(&config),
                vault::provider::http_client()?,
            ))),
            None => None,
        };
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
                internal_key: Arc::new(internal_key),
                internal_nonces: Arc::new(internal::NonceGuard::new()),
                sign_out_key: Arc::new(flows::app::SignOutKey::derive(
                    &secrets.internal_credential,
                )),
            }),
        })
    }

    /// Replaces the clock (tests use this to step past expiries).
    pub fn with_clock(self, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                store: self.inner.store.clone(),
                keys: self.inner.keys.clone(),
                clock,
                password_checks: self.inner.password_checks.clone(),
                registrations: self.inner.registrations.clone(),
                new_flows: self.inner.new_flows.clone(),
                vault: self.inner.vault.clone(),
                oidc: self.inner.oidc.clone(),
                internal_key: self.inner.internal_key.clone(),
                internal_nonces: self.inner.internal_nonces.clone(),
                sign_out_key: self.inner.sign_out_key.clone(),
            }),
        }
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

    pub(crate) fn internal_key(&self) -> &warden_core::internal_api::InternalKey {
        &self.inner.internal_key
    }

    pub(crate) fn sign_out_key(&self) -> &flows::app::SignOutKey {
        &self.inner.sign_out_key
    }

    pub(crate) fn internal_nonces(&self) -> &internal::NonceGuard {
        &self.inner.internal_nonces
    }

    pub fn keys(&self) -> &SigningKey {
        &self.inner.keys
    }

    pub fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// The per-address limit on `POST /register`.
    pub(crate) fn registration_limit(&self) -> &ratelimit::RateLimiter {
        &self.inner.registrations
    }

    /// The per-address limit on requests that may start a sign-in (`pending_flows`).
    pub(crate) fn new_flow_limit(&self) -> &ratelimit::RateLimiter {
        &self.inner.new_flows
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
        self.store().sweep(self.now(), &retention)
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
        self.blocking(move |st| {
            Ok(password::authenticate(st.config(), &email, &password).map(|u| u.email.clone()))
        })
        .await
    }
}

/// Makes glibc give large buffers back. Argon2 allocates its whole memory cost (19 MiB by
/// default) per check; glibc raises its mmap threshold after such a buffer is freed and then
/// serves the next one from a per-thread arena, which keeps it. With many blocking-pool
/// threads that grew the service past 1 GB. A fixed 1 MiB threshold keeps big buffers
/// mmapped (returned to the OS on free), and fewer arenas bound fragmentation. Call it once,
/// first thing in `main`, before threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The HTTP surface (README, "Token service endpoints").
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Binds `authorization_server.listen` (and `internal_listen` when a route uses upstream
/// OAuth or passes identity headers) and serves until Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.authorization_server.listen;
    let internal = config
        .uses_internal_listener()
        .then_some(config.authorization_server.internal_listen);
    // Open storage and keys first so "listening" means ready.
    let state = tokio::task::spawn_blocking(move || AppState::new(config)).await??;
    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let listener = bind(listen).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = internal {
        let internal_listener = bind(addr).await?;
        let addr = internal_listener.local_addr()?;
        let internal_state = state.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tracing::info!("internal listener on http://{addr}");
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            let served = listener::serve(
                internal_listener,
                internal::router(internal_state),
                listener::Limits::default(),
                shutdown,
            )
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "internal listener failed");
            }
        });
    }
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    serve_on(listener, state, shutdown).await
}

/// Serves on an already-bound listener (tests bind `127.0.0.1:0`) until `shutdown` resolves.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on_with(listener, state, listener::Limits::default(), shutdown).await
}

/// [`serve_on`] with other connection limits.
pub async fn serve_on_with(
    listener: TcpListener,
    state: AppState,
    limits: listener::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let sweeper = tokio::spawn(sweep_loop(state.clone()));
    // Values sealed with a previous key (or before key ids) move to the current key.
    let config = state.config();
    let resealer =
        (config.uses_upstream_oauth() || config.identity_provider.oidc.is_some()).then(|| {
            let s = state.clone();
            tokio::spawn(vault::reseal::run(
                state.vault().clone(),
                Arc::new(move || s.now()),
            ))
        });
    tracing::info!(issuer = %state.config().authorization_server.issuer, "listening on http://{addr}");
    // The listener records each request's peer address (ConnectInfo) for the
    // per-address registration limit.
    let result = listener::serve(listener, app(state), limits, shutdown).await;
    sweeper.abort();
    if let Some(r) = resealer {
        r.abort();
    }
    Ok(result?)
}

/// Deletes expired codes, flows, sessions, refresh tokens and client registrations every
/// few minutes.
async fn sweep_loop(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tick.tick().await;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.sweep()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "sweep failed"),
            Err(e) => tracing::warn!(error = %e, "sweep task failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

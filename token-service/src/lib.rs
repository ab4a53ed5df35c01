//! mcp-warden token service: the OAuth 2.1 authorization server MCP clients sign in through.
//!
//! `app(state)` builds the router (tests drive it with `tower::ServiceExt::oneshot`);
//! `serve` / `serve_on` run it on a socket.

pub mod config;
pub mod error;
pub mod flows;
mod html;
pub mod keys;
pub mod listener;
pub mod password;
pub mod render;
mod routes;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
pub use keys::SigningKey;
pub use store::{SqliteStore, Store};

/// Seconds since the Unix epoch; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

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
}

impl AppState {
    /// Opens (and migrates) the SQLite database and loads or creates the signing key, both
    /// at the paths the config names.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let store = SqliteStore::open(&config.storage.sqlite)?;
        let keys = SigningKey::load_or_generate(&config.signing_key_file(), config.signing_alg())?;
        Ok(Self::from_parts(config, Arc::new(store), keys))
    }

    pub fn from_parts(config: Config, store: Arc<dyn Store>, keys: SigningKey) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                keys: Arc::new(keys),
                clock: Arc::new(flows::now_unix),
            }),
        }
    }

    /// Replaces the clock (tests use this to step past expiries).
    pub fn with_clock(self, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                store: self.inner.store.clone(),
                keys: self.inner.keys.clone(),
                clock,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn keys(&self) -> &SigningKey {
        &self.inner.keys
    }

    pub fn now(&self) -> i64 {
        (self.inner.clock)()
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

    /// Checks a sign-in's password (Argon2, slow by design) off the async workers; returns
    /// the user's email when it is right.
    pub(crate) async fn authenticate(
        &self,
        email: String,
        password: String,
    ) -> error::Result<Option<String>> {
        self.blocking(move |st| {
            Ok(password::authenticate(st.config(), &email, &password).map(|u| u.email.clone()))
        })
        .await
    }
}

/// The HTTP surface (README, "Token service endpoints").
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Binds `authorization_server.listen` and serves until Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.authorization_server.listen;
    // Open storage and keys first so "listening" means ready.
    let state = tokio::task::spawn_blocking(move || AppState::new(config)).await??;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    serve_on(listener, state, shutdown_signal()).await
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
    tracing::info!(issuer = %state.config().authorization_server.issuer, "listening on http://{addr}");
    let result = listener::serve(listener, app(state), limits, shutdown).await;
    sweeper.abort();
    Ok(result?)
}

/// Deletes expired codes, flows, sessions and refresh tokens every few minutes.
async fn sweep_loop(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tick.tick().await;
        let s = state.clone();
        let now = s.now();
        match tokio::task::spawn_blocking(move || s.store().sweep(now)).await {
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

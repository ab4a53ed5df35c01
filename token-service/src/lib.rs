//! mcp-warden token service: the OAuth 2.1 authorization server MCP clients sign in through.
//!
//! `app(state)` builds the router (tests drive it with `tower::ServiceExt::oneshot`);
//! `serve` / `serve_on` run it on a socket.

pub mod client_address;
pub mod client_documents;
pub mod clock;
pub mod config;
pub mod config_client_documents;
pub mod config_id_jag;
pub mod config_kubernetes;
pub mod config_telemetry;
pub mod config_upstream_discovery;
pub mod digest;
pub mod error;
pub mod flows;
pub mod health;
mod html;
pub mod identity;
pub mod internal;
pub mod jwks_cache;
pub mod jws;
pub mod keyring;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod oidc;
pub mod outbound;
pub mod password;
pub mod pg_url;
pub mod random;
pub mod ratelimit;
pub mod recheck;
pub mod redirect_uri;
pub mod render;
mod routes;
pub mod scope;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream_discovery;
pub mod vault;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use clock::{now_unix, Clock};
pub use config::Config;
pub use keyring::KeySet;
pub use keys::SigningKey;
pub use state::{AppState, Secrets};
pub use store::{PostgresStore, SqliteStore, Store};

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

/// Binds `authorization_server.listen` and `internal_listen` first, answering `/healthz` and `/readyz` (`503`) while
/// the store opens, migrations run and the keys load; then serves until Ctrl-C / SIGTERM, and
/// drains (`listener`: new connections refused, requests in progress finished within
/// `shutdown_grace_seconds`).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let health = health::Health::starting();
    // From here on a signal is a shutdown, in start-up too.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    {
        let health = health.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            health.begin_shutdown();
            let _ = stop.send(true);
        });
    }
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stopping| *stopping).await;
        }
    };
    let limits = listener::Limits {
        shutdown_grace: std::time::Duration::from_secs(
            config.authorization_server.shutdown_grace_seconds,
        ),
        ..listener::Limits::default()
    };
    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let public = bind(config.authorization_server.listen).await?;
    let internal = if config.uses_internal_listener() {
        Some(bind(config.authorization_server.internal_listen).await?)
    } else {
        None
    };
    let addr = public.local_addr()?;
    let internal_addr = internal.as_ref().map(TcpListener::local_addr).transpose()?;
    tracing::info!("starting on http://{addr}");
    if let Some(addr) = internal_addr {
        tracing::info!("internal listener starting on http://{addr}");
    }

    let public_app = Arc::new(std::sync::OnceLock::new());
    let internal_app = Arc::new(std::sync::OnceLock::new());
    let mut servers = vec![tokio::spawn(listener::serve(
        public,
        routes::starting(health.clone(), public_app.clone()),
        limits,
        until_stopped(),
    ))];
    if let Some(l) = internal {
        servers.push(tokio::spawn(listener::serve(
            l,
            routes::starting_internal(internal_app.clone()),
            limits,
            until_stopped(),
        )));
    }

    let started = tokio::select! {
        started = start(config, health.clone()) => Some(started?),
        () = until_stopped() => None,
    };
    let mut background = Vec::new();
    if let Some(state) = started {
        background = background_tasks(&state);
        let _ = public_app.set(app(state.clone()));
        if let Some(addr) = internal_addr {
            let _ = internal_app.set(internal::router(state.clone()));
            tracing::info!("internal listener on http://{addr}");
        }
        health.set_phase(health::Phase::Running);
        tracing::info!(issuer = %state.config().authorization_server.issuer, "listening on http://{addr}");
    }
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "listener failed"),
            Err(e) => tracing::error!(error = %e, "listener task failed"),
        }
    }
    for task in background {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store (migrating it) and builds the state, saying where it is in `health`. A
/// store that cannot be reached (or a SQLite file another process holds) is tried again,
/// `/readyz` saying so; any other error ends start-up.
async fn start(config: Config, health: Arc<health::Health>) -> anyhow::Result<AppState> {
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        health.set_phase(health::Phase::Migrating);
        let (c, h) = (config.clone(), health.clone());
        let opened = tokio::task::spawn_blocking(move || {
            let store = store::open(&c.storage)?;
            h.set_phase(health::Phase::LoadingKeys);
            AppState::with_store(c, store)
        })
        .await?;
        match opened {
            Ok(state) => return Ok(state.with_health(health)),
            Err(e)
                if store::StoreError::find(&e).is_some_and(store::StoreError::is_unavailable) =>
            {
                health.set_phase(health::Phase::StoreUnavailable);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "start-up: the store cannot be reached; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
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
    let background = background_tasks(&state);
    tracing::info!(issuer = %state.config().authorization_server.issuer, "listening on http://{addr}");
    let health = state.health().clone();
    let shutdown = async move {
        shutdown.await;
        health.begin_shutdown();
    };
    // The listener records each request's peer address (ConnectInfo) for the
    // per-address registration limit.
    let result = listener::serve(listener, app(state), limits, shutdown).await;
    for task in background {
        task.abort();
    }
    Ok(result?)
}

/// The tasks every replica runs beside serving: the sweep, the key reload, the identity
/// provider's recheck and the re-seal when configured.
fn background_tasks(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(sweep_loop(state.clone())),
        tokio::spawn(key_reload_loop(state.clone())),
    ];
    if state.oidc().is_some() {
        tasks.push(tokio::spawn(recheck_loop(state.clone())));
    }
    // Values sealed with a previous key (or before key ids) move to the current key.
    let config = state.config();
    if config.uses_upstream_oauth() || config.identity_provider.oidc.is_some() {
        let s = state.clone();
        tasks.push(tokio::spawn(vault::reseal::run(
            state.vault().clone(),
            Arc::new(move || s.now()),
        )));
    }
    tasks
}

/// `warden-token-service revoke`: ends the grants `what` names in the configured store, now.
pub fn revoke(
    config: &Config,
    what: &flows::sign_out::Revocation,
) -> anyhow::Result<store::Revoked> {
    let store = store::open(&config.storage)?;
    flows::sign_out::revoke(config, store.as_ref(), what, now_unix())
}

/// Deletes expired codes, flows, sessions, refresh tokens and client registrations every
/// few minutes: on every replica, and by one of them at a time (the store's lease).
async fn sweep_loop(state: AppState) {
    let holder = random::random_id();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tick.tick().await;
        let (s, h) = (state.clone(), holder.clone());
        match tokio::task::spawn_blocking(move || s.sweep_as(&h)).await {
            Ok(Ok(swept)) => tracing::debug!(swept, "sweep round"),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "sweep failed"),
            Err(e) => tracing::warn!(error = %e, "sweep task failed"),
        }
    }
}

/// Re-reads the signing keys every few seconds, so every replica publishes and signs with
/// what a rotation stored.
async fn key_reload_loop(state: AppState) {
    let mut tick = tokio::time::interval(keyring::RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.reload_keys()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "reloading the signing keys failed; keeping the loaded ones")
            }
            Err(e) => tracing::warn!(error = %e, "signing key reload task failed"),
        }
    }
}

/// Checks the identity provider's users again at the provider (`recheck`): on every replica,
/// each user by one replica at a time (the store's per-user lease).
async fn recheck_loop(state: AppState) {
    let holder = random::random_id();
    let mut tick = tokio::time::interval(recheck::ROUND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match recheck::round(&state, &holder).await {
            Ok(r) if r == recheck::RoundOutcome::default() => {}
            Ok(r) => tracing::debug!(
                checked = r.checked,
                revoked = r.revoked,
                failed = r.failed,
                "identity provider recheck round"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "identity provider recheck round failed")
            }
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

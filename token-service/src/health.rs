//! Whether the service should get traffic (`/readyz`; `/healthz` only says the process is
//! alive). Not ready while it starts (the store opening, migrations running, the signing keys
//! loading: `serve` binds first so this can be seen), once shutdown has begun (connections
//! still open learn it; Kubernetes drops a terminating pod from its Service by itself, during
//! the rendered `preStop` pause), while the store cannot be reached, or
//! without a signing key. The store check is one trivial query, bounded in time, at most one
//! at once, and its answer is kept for a second, so probes cannot load the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::keyring::KeySet;
use crate::store::Store;

/// How long the store check waits for the database: under Kubernetes' default probe
/// timeout (1 s).
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a store check's answer is reused.
pub const STORE_CHECK_TTL: Duration = Duration::from_secs(1);

/// Where start-up is (`serve`), for `/readyz` to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the store and applying its migrations (which wait for another replica's).
    Migrating,
    /// The store could not be reached; start-up tries again.
    StoreUnavailable,
    /// Loading the secrets and the signing keys.
    LoadingKeys,
    /// Started: the full router serves.
    Running,
}

impl Phase {
    fn starting_reason(self) -> &'static str {
        match self {
            Phase::Migrating => "starting: opening the store and applying migrations",
            Phase::StoreUnavailable => "starting: the store cannot be reached",
            Phase::LoadingKeys => "starting: loading the signing keys",
            Phase::Running => "starting",
        }
    }
}

/// The readiness decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, and a short reason (no detail from the store: the endpoint is public).
    NotReady(&'static str),
}

/// One process's health: its start-up phase, whether shutdown has begun, and the last store
/// check.
pub struct Health {
    phase: RwLock<Phase>,
    stopping: AtomicBool,
    store_check: tokio::sync::Mutex<StoreCheck>,
}

#[derive(Default)]
struct StoreCheck {
    last: Option<(Instant, bool)>,
    /// A check that outlived its timeout: awaited again rather than starting another.
    running: Option<tokio::task::JoinHandle<crate::store::Result<()>>>,
}

impl Health {
    /// A process that is starting (`serve`).
    pub fn starting() -> Arc<Self> {
        Arc::new(Self::at(Phase::Migrating))
    }

    /// A process already started (the state built in-process, `serve_on`).
    pub fn running() -> Arc<Self> {
        Arc::new(Self::at(Phase::Running))
    }

    fn at(phase: Phase) -> Self {
        Self {
            phase: RwLock::new(phase),
            stopping: AtomicBool::new(false),
            store_check: tokio::sync::Mutex::new(StoreCheck::default()),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        *self
            .phase
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = phase;
    }

    pub fn phase(&self) -> Phase {
        *self
            .phase
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on not ready, for good.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Readiness before the state exists (the start-up router).
    pub fn while_starting(&self) -> Readiness {
        if self.is_stopping() {
            return Readiness::NotReady("shutting down");
        }
        Readiness::NotReady(self.phase().starting_reason())
    }

    /// Readiness of a started service: not stopping, the store answers, a key signs.
    pub async fn readiness(&self, store: &Arc<dyn Store>, keys: &KeySet, now: i64) -> Readiness {
        if self.is_stopping() {
            return Readiness::NotReady("shutting down");
        }
        if self.phase() != Phase::Running {
            return self.while_starting();
        }
        if !self.store_reachable(store).await {
            return Readiness::NotReady("the store cannot be reached");
        }
        if keys.signing_key(now).is_none() {
            return Readiness::NotReady("no signing key is loaded");
        }
        Readiness::Ready
    }

    /// The store check: cached for `STORE_CHECK_TTL`; one at a time (concurrent probes wait
    /// for it); bounded by `STORE_CHECK_TIMEOUT`.
    async fn store_reachable(&self, store: &Arc<dyn Store>) -> bool {
        let mut check = self.store_check.lock().await;
        if let Some((at, ok)) = check.last {
            if at.elapsed() < STORE_CHECK_TTL {
                return ok;
            }
        }
        let was_ok = check.last.is_none_or(|(_, ok)| ok);
        let mut ping = match check.running.take() {
            Some(ping) => ping,
            None => {
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || store.ping())
            }
        };
        let ok = match tokio::time::timeout(STORE_CHECK_TIMEOUT, &mut ping).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                if was_ok {
                    tracing::warn!(error = %e, "readiness: the store cannot be reached");
                }
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the store check failed");
                false
            }
            Err(_) => {
                if was_ok {
                    tracing::warn!(
                        timeout_ms = STORE_CHECK_TIMEOUT.as_millis() as u64,
                        "readiness: the store did not answer in time"
                    );
                }
                check.running = Some(ping);
                false
            }
        };
        if ok && !was_ok {
            tracing::info!("readiness: the store answers again");
        }
        check.last = Some((Instant::now(), ok));
        ok
    }
}

//! A small connection pool: at most `max` connections, a bounded wait for a free one (then
//! `Unavailable`), and broken connections discarded and reopened. The driver is synchronous
//! (each connection drives itself on a runtime of its own), so callers are blocking threads.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::Client;

use super::tls::{Connector, RustlsConnect};
use crate::pg_url::redact;
use crate::store::error::{Result, StoreError};

/// How long a call waits for a free connection before answering `Unavailable`.
const WAIT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Pool {
    config: postgres::Config,
    connector: Connector,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Client>,
    /// Connections in use or idle.
    open: usize,
}

impl Pool {
    pub(super) fn new(mut config: postgres::Config, connector: Connector, max: usize) -> Self {
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("warden-token-service");
        Self {
            config,
            connector,
            max: max.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| StoreError::Internal(anyhow::anyhow!("connection pool mutex poisoned")))
    }

    /// A connection: an idle one, a new one while fewer than `max` are open, or the next
    /// one freed within `WAIT`.
    pub(super) fn get(&self) -> Result<Conn<'_>> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.lock()?;
        loop {
            if let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    discard(vec![client]);
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                    broken: false,
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        client: Some(client),
                        broken: false,
                    }),
                    Err(e) => {
                        self.lock()?.open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "no database connection free within {}s",
                    WAIT.as_secs()
                )));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .map_err(|_| {
                    StoreError::Internal(anyhow::anyhow!("connection pool mutex poisoned"))
                })?
                .0;
        }
    }

    fn connect(&self) -> Result<Client> {
        let opened = match &self.connector {
            Connector::Plain => self.config.connect(postgres::NoTls),
            Connector::Rustls(tls) => self.config.connect(RustlsConnect(tls.clone())),
        };
        opened.map_err(|e| self.error(e))
    }

    /// A driver error as a store error, its text cleared of the password.
    pub(super) fn error(&self, e: postgres::Error) -> StoreError {
        let text = redact(&chain(&e), &self.config);
        let code = e.code().map(|c| c.code().to_owned());
        match code.as_deref() {
            Some("23505" | "40001" | "40P01") => StoreError::Conflict(text),
            // Connection exceptions, the server shutting down or refusing new connections,
            // too many connections.
            Some(c)
                if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300") =>
            {
                StoreError::Unavailable(text)
            }
            Some(_) => StoreError::Internal(anyhow::anyhow!(text)),
            None if e.is_closed() || unreachable(&e) => StoreError::Unavailable(text),
            None => StoreError::Internal(anyhow::anyhow!(text)),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            discard(std::mem::take(&mut state.idle));
        }
    }
}

/// The error and its causes on one line (the driver's own text says only "db error").
fn chain(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a driver error without an SQL state is the server being out of reach (the
/// socket, the TLS handshake, a timeout) rather than a bug.
fn unreachable(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    matches!(
        e.to_string().as_str(),
        "error connecting to server"
            | "error communicating with the server"
            | "error performing TLS handshake"
            | "timeout waiting for server"
    )
}

/// Closes connections off the caller's thread: closing one blocks on its own runtime, which
/// tokio forbids on an async worker (the last `AppState` may drop there).
fn discard(clients: Vec<Client>) {
    if clients.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(clients));
    } else {
        drop(clients);
    }
}

/// A connection out of the pool; back in when dropped, unless it broke.
pub(super) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    broken: bool,
}

impl Conn<'_> {
    pub(super) fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("connection already returned")))
    }

    /// Maps an error met on this connection; one that lost the server marks it broken.
    pub(super) fn fail(&mut self, e: postgres::Error) -> StoreError {
        let e = self.pool.error(e);
        if e.is_unavailable() {
            self.broken = true;
        }
        e
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(mut state) = self.pool.state.lock() else {
            discard(vec![client]);
            return;
        };
        if self.broken || client.is_closed() {
            // The server went away: the idle connections to it are as dead as this one,
            // and the next call should not meet them one by one.
            let mut dead = std::mem::take(&mut state.idle);
            state.open -= dead.len() + 1;
            dead.push(client);
            drop(state);
            self.pool.freed.notify_all();
            discard(dead);
        } else {
            state.idle.push(client);
            drop(state);
            self.pool.freed.notify_one();
        }
    }
}

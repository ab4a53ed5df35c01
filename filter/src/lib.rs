//! mcp-warden's proxy-wasm filter: a thin adapter that reads what `warden_core` needs from the
//! host, asks it for a decision, and carries the decision out. Each Envoy worker runs its own VM,
//! so `Worker` state (key set, verified-token cache) is per worker; the JWKS and the session key
//! are shared between workers through shared data.
//!
//! * `worker` — per-worker state, caches and call-outs: the JWKS (one fetch at a time, from the
//!   root context) and the token service's look-ups; a stream that waits is a `Waiter`, woken
//!   through the `Paused` trait without the worker knowing the request's type.
//! * `headers` — the request headers in one host call; `head` — the request head kept from them.
//! * `phase` — where one stream stands: what it waits for, or what was decided, as one value.
//! * `request` — the request path: token check, body judgement, session id unwrapping, the
//!   upstream token (TI) looked up and injected on routes with `upstream_oauth`, the identity
//!   assertion on routes with `pass_identity_headers` (a client's own is always removed),
//!   client routes' sessions.
//! * `response` — the response path: CORS, session id wrapping, `tools/list` filtering, a TI
//!   the MCP server refused dropped.
//! * `feed` — the revocation feed: one poller per Envoy (a lease in shared data), every
//!   worker's copy refreshed at its tick, checked by `warden_core` on every TE.
//! * `metrics` — the filter's counters.
//! * `alloc_count` — with the `alloc-count` feature only (bench builds): the allocation counter.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use warden_core::config::CompiledConfig;

#[cfg(feature = "alloc-count")]
mod alloc_count;
mod feed;
mod head;
mod headers;
mod metrics;
mod phase;
mod request;
mod response;
mod worker;

use request::WardenRequest;
use worker::{Wake, Worker};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(WardenRoot { id, worker: None })
    });
}}

struct WardenRoot {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for WardenRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _trailers: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        // A look-up a request dispatched while the root was the SDK's active context (a
        // request woken by the JWKS answer) comes back here.
        let lookup = worker.borrow_mut().answered(token);
        if let Some((waiter, kind)) = lookup {
            waiter.resume(Wake::Answer {
                kind,
                headers,
                body_size: body,
            });
            return;
        }
        if worker.borrow_mut().accept_feed(token, headers, body) {
            return;
        }
        let waiting = worker.borrow_mut().accept_jwks(token, headers, body);
        // The borrow has ended: each woken request borrows the worker itself.
        for waiter in waiting {
            waiter.resume(Wake::Keys);
        }
    }
}

impl RootContext for WardenRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        worker::follow_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match CompiledConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                // Returning false makes Envoy refuse the configuration; the message names the field.
                log::error!("mcp-warden: {e}");
                return false;
            }
        };
        let keys = worker::session_key()
            .and_then(|session| worker::internal_key(&config).map(|internal| (session, internal)));
        let (session_key, internal_key) = match keys {
            Ok(keys) => keys,
            Err(e) => {
                log::error!("mcp-warden: {e}");
                return false;
            }
        };
        let tick = worker::tick_period(&config);
        self.worker = Some(Rc::new(RefCell::new(Worker::new(
            self.id,
            config,
            session_key,
            internal_key,
        ))));
        // Fetch the JWKS promptly at start, then on the configured period; the revocation
        // feed is polled and adopted at the same tick.
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        // Before the worker's tick: once `requests_allowed` (added in that tick) shows a run's
        // requests, the gauge shows their allocations too.
        #[cfg(feature = "alloc-count")]
        alloc_count::report();
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let (period, undispatched) = worker.borrow_mut().tick();
        if let Some(period) = period {
            self.set_tick_period(period);
        }
        for waiter in undispatched {
            waiter.resume(Wake::Keys);
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(WardenRequest::new(id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

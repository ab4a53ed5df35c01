//! Counters visible in Envoy's `/stats` (prefixed `wasmcustom.` by Envoy).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Clone, Copy)]
pub enum Counter {
    Allowed,
    Denied,
    LocalReplies,
    JwksFetchOk,
    JwksFetchFailed,
}

const NAMES: [&str; 5] = [
    "mcp_warden.requests_allowed",
    "mcp_warden.requests_denied",
    "mcp_warden.local_replies",
    "mcp_warden.jwks_fetch_ok",
    "mcp_warden.jwks_fetch_failed",
];

pub struct Metrics {
    ids: [Option<u32>; 5],
}

impl Metrics {
    pub fn define() -> Self {
        let mut ids = [None; 5];
        for (slot, name) in ids.iter_mut().zip(NAMES) {
            *slot = hostcalls::define_metric(MetricType::Counter, name).ok();
        }
        Self { ids }
    }

    pub fn inc(&self, counter: Counter) {
        if let Some(id) = self.ids[counter as usize] {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

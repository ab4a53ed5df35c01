//! `telemetry`: what the token service reports about itself. `metrics` (default on) serves
//! Prometheus text at `/metrics` on the internal listener (`metrics.rs`). A leaf: the config
//! module reads it (`Config::telemetry`), serde names an unknown field.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `GET /metrics` on `authorization_server.internal_listen`, without the internal
    /// signature (a scraper holds no credential).
    #[serde(default = "on")]
    pub metrics: bool,
}

fn on() -> bool {
    true
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { metrics: on() }
    }
}

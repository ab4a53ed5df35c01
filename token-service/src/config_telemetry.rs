//! The top-level `telemetry:` block: what the gateway reports about itself. `metrics` (default
//! on) serves Prometheus text at `/metrics` on the internal listener (`metrics.rs`);
//! `otlp_endpoint` is where traces go (`telemetry.rs` installs the exporter, `render::envoy`
//! Envoy's tracer). A leaf: the config module validates it (`Config::validate`), naming the
//! field.

use serde::Deserialize;

/// `service.name` of the token service's spans unless `telemetry.service_name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "mcp-warden-token-service";

/// `service.name` of Envoy's spans.
pub const ENVOY_SERVICE_NAME: &str = "mcp-warden-envoy";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `GET /metrics` on `authorization_server.internal_listen`, without the internal
    /// signature (a scraper holds no credential).
    #[serde(default = "on")]
    pub metrics: bool,
    /// An OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`): the token service and
    /// Envoy post spans to `{otlp_endpoint}/v1/traces`. Absent: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the token service's spans (default `mcp-warden-token-service`).
    #[serde(default)]
    pub service_name: Option<String>,
}

fn on() -> bool {
    true
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: on(),
            otlp_endpoint: None,
            service_name: None,
        }
    }
}

impl TelemetryConfig {
    /// `{otlp_endpoint}/v1/traces`, when traces are on.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_deref()
            .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
    }

    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or(DEFAULT_SERVICE_NAME)
    }

    /// The field at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(e) = &self.otlp_endpoint {
            check_endpoint(e).map_err(|m| ("otlp_endpoint", m))?;
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            return Err(("service_name", "must not be empty".into()));
        }
        Ok(())
    }
}

fn check_endpoint(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL (OTLP/HTTP), not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must have no query, fragment or credentials".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(endpoint.into()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn an_http_collector_is_accepted_and_gets_the_traces_path() {
        let t = with("http://127.0.0.1:4318/");
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(
            t.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn an_ftp_endpoint_is_refused_naming_the_field() {
        let (field, why) = with("ftp://x").validate().unwrap_err();
        assert_eq!(field, "otlp_endpoint");
        assert!(why.contains("http"), "{why}");
    }

    #[test]
    fn the_operator_config_refuses_an_ftp_endpoint_naming_telemetry_otlp_endpoint() {
        let yaml = format!(
            "{}\ntelemetry:\n  otlp_endpoint: ftp://x\n",
            crate::config::DEFAULT_CONFIG_YAML
        );
        let e = crate::config::Config::from_yaml_without_secret_files(&yaml).unwrap_err();
        assert_eq!(e.path, "telemetry.otlp_endpoint", "{e}");
        let unknown = format!(
            "{}\ntelemetry:\n  otlp_endpiont: http://x\n",
            crate::config::DEFAULT_CONFIG_YAML
        );
        assert!(crate::config::Config::from_yaml_without_secret_files(&unknown).is_err());
        let good = format!(
            "{}\ntelemetry:\n  otlp_endpoint: http://127.0.0.1:4318\n",
            crate::config::DEFAULT_CONFIG_YAML
        );
        let c = crate::config::Config::from_yaml_without_secret_files(&good).unwrap();
        assert_eq!(
            c.telemetry.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn no_endpoint_means_no_traces() {
        assert_eq!(TelemetryConfig::default().traces_url(), None);
        assert_eq!(TelemetryConfig::default().validate(), Ok(()));
    }
}

//! Discovered upstream OAuth: a route's `mcp.server.upstream_oauth2: {discover: true, …}` and
//! the top-level `upstream_discovery:` block (the allowed authorization servers, the cache).
//! A leaf the config validates; `upstream_discovery` does the discovery.

use serde::Deserialize;

/// `routes[].mcp.server.upstream_oauth2` with `discover: true`: the endpoints come from the
/// upstream's RFC 9728 metadata and its authorization server's RFC 8414 metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredUpstreamOAuth2 {
    /// Scopes to ask for; empty: what the protected resource metadata advertises.
    pub scopes: Vec<String>,
    /// A client id registered at the upstream's AS beforehand; absent: CIMD, then DCR.
    pub client_id: Option<String>,
}

/// The top-level `upstream_discovery:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDiscoveryConfig {
    /// Issuers a discovered upstream may name (exact match): the SSRF guard.
    #[serde(default)]
    pub allowed_authorization_servers: Vec<String>,
    /// How long a discovery result is used at most; a shorter `Cache-Control: max-age` wins.
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u64,
}

impl Default for UpstreamDiscoveryConfig {
    fn default() -> Self {
        Self {
            allowed_authorization_servers: Vec::new(),
            cache_seconds: default_cache_seconds(),
        }
    }
}

fn default_cache_seconds() -> u64 {
    3600
}

const MAX_CACHE_SECONDS: u64 = 86_400;

impl UpstreamDiscoveryConfig {
    /// The block's own rules, `(field, message)`; `check_url` is the config's rule for a
    /// provider URL (https, or http on a loopback host).
    pub fn validate(
        &self,
        check_url: impl Fn(&str) -> Result<(), String>,
    ) -> Result<(), (String, String)> {
        if self.allowed_authorization_servers.is_empty() {
            return Err((
                "allowed_authorization_servers".into(),
                "must name at least one authorization server when a route has upstream_oauth2.discover".into(),
            ));
        }
        for (i, a) in self.allowed_authorization_servers.iter().enumerate() {
            check_url(a).map_err(|m| (format!("allowed_authorization_servers[{i}]"), m))?;
            if a.contains('?') {
                return Err((
                    format!("allowed_authorization_servers[{i}]"),
                    "an issuer has no query".into(),
                ));
            }
        }
        if self.cache_seconds == 0 || self.cache_seconds > MAX_CACHE_SECONDS {
            return Err((
                "cache_seconds".into(),
                format!("must be between 1 and {MAX_CACHE_SECONDS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn the_block_needs_an_authorization_server_and_a_sane_cache() {
        let mut c = UpstreamDiscoveryConfig::default();
        assert_eq!(
            c.validate(ok).map_err(|e| e.0),
            Err("allowed_authorization_servers".into())
        );
        c.allowed_authorization_servers = vec!["https://as.example".into()];
        assert!(c.validate(ok).is_ok());
        c.cache_seconds = 0;
        assert_eq!(c.validate(ok).map_err(|e| e.0), Err("cache_seconds".into()));
        c.cache_seconds = 60;
        c.allowed_authorization_servers = vec!["https://as.example?x=1".into()];
        assert_eq!(
            c.validate(ok).map_err(|e| e.0),
            Err("allowed_authorization_servers[0]".into())
        );
    }
}

//! `authorization_server.client_id_metadata_documents`: clients whose `client_id` is an https
//! URL serving their metadata (CIMD). A leaf the config validates.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDocumentsConfig {
    /// Accept such clients, and advertise `client_id_metadata_document_supported`.
    #[serde(default)]
    pub enabled: bool,
    /// Hosts documents may be served from: exact names or `*.example.com` (any subdomain);
    /// empty: any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Fetch documents from loopback, private and link-local addresses too (tests, labs).
    #[serde(default)]
    pub allow_private_addresses: bool,
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
    /// How long a fetched document is used at most; a shorter `Cache-Control` wins.
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u64,
}

impl Default for ClientDocumentsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            max_document_bytes: default_max_document_bytes(),
            cache_seconds: default_cache_seconds(),
        }
    }
}

fn default_max_document_bytes() -> usize {
    5120
}

fn default_cache_seconds() -> u64 {
    3600
}

/// Bounds that keep a document fetch cheap.
/// With at most `client_documents::MAX_ENTRIES` documents cached, 64 MiB at worst.
const MAX_DOCUMENT_BYTES: usize = 64 << 10;
const MAX_CACHE_SECONDS: u64 = 86_400;

impl ClientDocumentsConfig {
    /// The block's own rules: `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(256..=MAX_DOCUMENT_BYTES).contains(&self.max_document_bytes) {
            return Err((
                "max_document_bytes".into(),
                format!("must be between 256 and {MAX_DOCUMENT_BYTES}"),
            ));
        }
        if self.cache_seconds > MAX_CACHE_SECONDS {
            return Err((
                "cache_seconds".into(),
                format!("must be at most {MAX_CACHE_SECONDS} (a day)"),
            ));
        }
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let valid = !name.is_empty()
                && !name.contains('*')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err((
                    format!("allowed_hosts[{i}]"),
                    "must be a host name (no port) or `*.` followed by one".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether a document may be served from `host` (`allowed_hosts`; empty allows any).
    pub fn allows_host(&self, host: &str) -> bool {
        if self.allowed_hosts.is_empty() {
            return true;
        }
        let host = host.to_ascii_lowercase();
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix("*.") {
                Some(parent) => host
                    .strip_suffix(parent)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == allowed,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn allowed_hosts_match_exactly_or_by_subdomain() {
        let c = ClientDocumentsConfig {
            allowed_hosts: vec!["client.example.org".into(), "*.example.com".into()],
            ..ClientDocumentsConfig::default()
        };
        assert!(c.allows_host("client.example.org"));
        assert!(c.allows_host("Client.Example.org"));
        assert!(!c.allows_host("other.example.org"));
        assert!(c.allows_host("a.example.com"));
        assert!(c.allows_host("a.b.example.com"));
        assert!(!c.allows_host("example.com"));
        assert!(!c.allows_host("evilexample.com"));
        assert!(ClientDocumentsConfig::default().allows_host("anything.test"));
    }

    #[test]
    fn bounds_are_checked() {
        let mut c = ClientDocumentsConfig::default();
        assert!(c.validate().is_ok());
        c.max_document_bytes = 10;
        assert_eq!(c.validate().unwrap_err().0, "max_document_bytes");
        c.max_document_bytes = 5120;
        c.allowed_hosts = vec!["*.*.example.com".into()];
        assert_eq!(c.validate().unwrap_err().0, "allowed_hosts[0]");
    }
}

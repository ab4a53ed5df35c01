//! The `kubernetes:` block of `warden.yaml`: names, images and Secrets the
//! `render --target kubernetes|istio` output uses. `serve` ignores it. A leaf: the config
//! module validates it through [`KubernetesConfig::validate`], which names the field.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The token service's namespace.
    pub namespace: String,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    pub images: Images,
    #[serde(default)]
    pub token_service: TokenServiceDeployment,
    #[serde(default)]
    pub gateway: GatewayConfig,
    pub secrets: SecretNames,
    /// Pods let in to the internal port besides the gateway's, to scrape `/metrics`
    /// (`telemetry.metrics`).
    #[serde(default)]
    pub metrics_scrapers: Vec<PeerPods>,
}

/// `metrics_scrapers[]`: pods by namespace and labels, as a NetworkPolicy peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPods {
    pub namespace: String,
    /// Their labels; empty: every pod of the namespace.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// The filter's repository, without tag: `render --filter-digest` gives the digest.
    pub filter: String,
    /// The token service's image; `render --token-service-digest` pins it by digest.
    pub token_service: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceDeployment {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The Service port of the public listener.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub resources: Resources,
    /// The PodDisruptionBudget's `minAvailable`; default: 1 with several replicas, else 0
    /// (one replica with `minAvailable: 1` would block every node drain).
    #[serde(default)]
    pub min_available: Option<u32>,
    /// The PersistentVolumeClaim holding the SQLite database (`storage.sqlite`).
    #[serde(default)]
    pub sqlite_claim: Option<String>,
}

impl Default for TokenServiceDeployment {
    fn default() -> Self {
        Self {
            name: default_name(),
            replicas: default_replicas(),
            port: default_port(),
            resources: Resources::default(),
            min_available: None,
            sqlite_claim: None,
        }
    }
}

impl TokenServiceDeployment {
    pub fn min_available(&self) -> u32 {
        self.min_available
            .unwrap_or(if self.replicas > 1 { 1 } else { 0 })
    }
}

/// A container's `resources` (quantities as Kubernetes writes them: `100m`, `128Mi`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            requests: [("cpu", "100m"), ("memory", "128Mi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            limits: [("memory".to_string(), "512Mi".to_string())].into(),
        }
    }
}

/// The Istio ingress gateway the filter runs in and the routes bind to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_gateway_namespace")]
    pub namespace: String,
    /// The Gateway object the render writes and the routes bind to.
    #[serde(default = "default_gateway_name")]
    pub name: String,
    /// The gateway pods' labels.
    #[serde(default = "default_gateway_selector")]
    pub selector: BTreeMap<String, String>,
    /// The TLS Secret (in the gateway's namespace) of the HTTPS servers; required when a
    /// host is https.
    #[serde(default)]
    pub tls_secret: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            namespace: default_gateway_namespace(),
            name: default_gateway_name(),
            selector: default_gateway_selector(),
            tls_secret: None,
        }
    }
}

/// Secret names (never values). Each key the render uses is fixed: see the `*_KEY` constants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretNames {
    #[serde(default)]
    pub encryption_key: Option<String>,
    #[serde(default)]
    pub signing_key: Option<String>,
    /// Mounted in the token service and set as the gateway's
    /// `MCP_WARDEN_INTERNAL_CREDENTIAL`: required, the filter always polls the feed.
    pub internal_credential: String,
    /// The gateway's `MCP_WARDEN_SESSION_KEY`.
    pub session_key: String,
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Keys `oidc`, `route.<route name>`, `client.<client_id>` and `initial-access-token`.
    #[serde(default)]
    pub client_secrets: Option<String>,
    /// Key `ca.pem`: the CA certificates of `outbound.extra_ca_file` (not secret, but mounted
    /// like the rest).
    #[serde(default)]
    pub outbound_ca: Option<String>,
}

/// The key of each Secret the render reads a file from.
pub const ENCRYPTION_KEY_KEY: &str = "key";
pub const SIGNING_KEY_KEY: &str = "key";
pub const INTERNAL_CREDENTIAL_KEY: &str = "credential";
pub const SESSION_KEY_KEY: &str = "key";
pub const POSTGRES_URL_KEY: &str = "url";
pub const OIDC_CLIENT_SECRET_KEY: &str = "oidc";
pub const INITIAL_ACCESS_TOKEN_KEY: &str = "initial-access-token";
pub const OUTBOUND_CA_KEY: &str = "ca.pem";

/// The `client_secrets` key of a pre-registered client's secret (`clients[].client_secret_file`).
pub fn client_secret_key(client_id: &str) -> String {
    format!("client.{client_id}")
}

/// The `client_secrets` key of a route's upstream OAuth client secret.
pub fn route_client_secret_key(route: &str) -> String {
    format!("route.{route}")
}

/// The volume names the Deployment uses besides one per Secret (named as the Secret).
pub const RESERVED_VOLUMES: [&str; 3] = ["warden-config", "warden-tmp", "warden-data"];

fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_name() -> String {
    "warden-token-service".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_port() -> u16 {
    80
}
fn default_gateway_namespace() -> String {
    "istio-system".into()
}
fn default_gateway_name() -> String {
    "mcp-gateway".into()
}
fn default_gateway_selector() -> BTreeMap<String, String> {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

/// Most replicas a render writes (a typo guard, not a capacity limit).
pub const MAX_REPLICAS: u32 = 100;

/// A DNS-1123 label: what Kubernetes accepts as a namespace, Service or volume name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (dot-separated labels, at most 253 bytes).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label key (`[prefix/]name`) or value as Kubernetes accepts them.
fn is_label_part(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_part(name, false),
        None => is_label_part(s, false),
    }
}

/// An image reference without spaces or a digest (the render adds the digest).
fn check_image(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be an image reference (no spaces)".into());
    }
    if s.contains('@') {
        return Err("must not carry a digest: render's --*-digest option adds it".into());
    }
    Ok(())
}

/// A Kubernetes quantity as people write them (`100m`, `0.5`, `128Mi`, `1G`).
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

impl KubernetesConfig {
    /// The block on its own; the rules that involve the rest of the config (replicas and
    /// storage) are the config's. Errors are (field under `kubernetes.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if !is_dns_label(&self.namespace) {
            return err("namespace", "must be a namespace name (a DNS label)");
        }
        if self.cluster_domain.is_empty() || !is_dns_subdomain(&self.cluster_domain) {
            return err("cluster_domain", "must be a DNS name (cluster.local)");
        }
        check_image(&self.images.filter).map_err(|m| ("images.filter".to_string(), m))?;
        if self
            .images
            .filter
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            return err(
                "images.filter",
                "must be a repository without a tag: --filter-digest pins it",
            );
        }
        check_image(&self.images.token_service)
            .map_err(|m| ("images.token_service".to_string(), m))?;
        let t = &self.token_service;
        // `<name>-config` (the ConfigMap) must be a valid name too.
        if !is_dns_label(&t.name) || t.name.len() > 56 {
            return err(
                "token_service.name",
                "must be a DNS label of at most 56 characters",
            );
        }
        if !(1..=MAX_REPLICAS).contains(&t.replicas) {
            return err(
                "token_service.replicas",
                &format!("must be between 1 and {MAX_REPLICAS}"),
            );
        }
        if t.port == 0 {
            return err("token_service.port", "must be between 1 and 65535");
        }
        if t.min_available() >= t.replicas {
            return err(
                "token_service.min_available",
                "must be less than token_service.replicas (else no pod may ever be evicted: node drains would hang)",
            );
        }
        for (kind, map) in [
            ("requests", &t.resources.requests),
            ("limits", &t.resources.limits),
        ] {
            for (k, v) in map {
                if !["cpu", "memory", "ephemeral-storage"].contains(&k.as_str()) {
                    return err(
                        &format!("token_service.resources.{kind}.{k}"),
                        "only cpu, memory and ephemeral-storage",
                    );
                }
                if !is_quantity(v) {
                    return err(
                        &format!("token_service.resources.{kind}.{k}"),
                        "not a Kubernetes quantity (100m, 128Mi)",
                    );
                }
            }
        }
        if let Some(claim) = &t.sqlite_claim {
            if !is_dns_subdomain(claim) || claim.is_empty() {
                return err(
                    "token_service.sqlite_claim",
                    "must be a PersistentVolumeClaim name",
                );
            }
        }
        let g = &self.gateway;
        if !is_dns_label(&g.namespace) {
            return err(
                "gateway.namespace",
                "must be a namespace name (a DNS label)",
            );
        }
        if !is_dns_label(&g.name) {
            return err("gateway.name", "must be a DNS label");
        }
        if g.selector.is_empty() {
            return err(
                "gateway.selector",
                "must name the gateway pods' labels (else the filter would run in every proxy)",
            );
        }
        for (k, v) in &g.selector {
            if !is_label_key(k) || !is_label_part(v, true) {
                return err(
                    &format!("gateway.selector.{k}"),
                    "not a valid label key and value",
                );
            }
        }
        for (i, p) in self.metrics_scrapers.iter().enumerate() {
            if !is_dns_label(&p.namespace) {
                return err(
                    &format!("metrics_scrapers[{i}].namespace"),
                    "must be a namespace name (a DNS label)",
                );
            }
            for (k, v) in &p.selector {
                if !is_label_key(k) || !is_label_part(v, true) {
                    return err(
                        &format!("metrics_scrapers[{i}].selector.{k}"),
                        "not a valid label key and value",
                    );
                }
            }
        }
        if let Some(tls) = &g.tls_secret {
            if !is_dns_subdomain(tls) || tls.is_empty() {
                return err("gateway.tls_secret", "must be a Secret name");
            }
        }
        for (field, name) in self.secrets.named() {
            if !is_dns_label(name) {
                return err(
                    &format!("secrets.{field}"),
                    "must be a Secret name (a DNS label: it names the volume too)",
                );
            }
            if RESERVED_VOLUMES.contains(&name) {
                return err(
                    &format!("secrets.{field}"),
                    "is a volume name of the Deployment: choose another",
                );
            }
        }
        Ok(())
    }
}

impl SecretNames {
    /// Every Secret named, with its field.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![];
        for (field, name) in [
            ("encryption_key", self.encryption_key.as_deref()),
            ("signing_key", self.signing_key.as_deref()),
            (
                "internal_credential",
                Some(self.internal_credential.as_str()),
            ),
            ("session_key", Some(self.session_key.as_str())),
            ("postgres_url", self.postgres_url.as_deref()),
            ("client_secrets", self.client_secrets.as_deref()),
            ("outbound_ca", self.outbound_ca.as_deref()),
        ] {
            if let Some(name) = name {
                out.push((field, name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quantities() {
        assert!(is_dns_label("warden-token-service"));
        assert!(!is_dns_label("Warden"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("cluster.local"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("istio"));
        assert!(is_quantity("100m") && is_quantity("128Mi") && is_quantity("0.5"));
        assert!(!is_quantity("lots") && !is_quantity("1.2.3") && !is_quantity("5Qi"));
    }
}

//! Operator configuration (`warden.yaml`): the parts the token service reads.
//!
//! Parsing goes through `serde_path_to_error` and validation names the field path, so an
//! operator sees `authorization_server.issuer: ...` rather than a bare serde message.
//! Sections owned by other components (`envoy`, the MCP and policy parts of `routes`,
//! `kubernetes` for `render`) are accepted and ignored here.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

/// RFC 7523's grant (the identity assertion grant, ID-JAG), defined with its config block.
pub use crate::config_id_jag::JWT_BEARER_GRANT;

/// The configuration used when neither `--config` nor `WARDEN_CONFIG` is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../default-config.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub authorization_server: AuthorizationServerConfig,
    /// Where `render-envoy` puts Envoy's listener and admin interface.
    #[serde(default)]
    pub envoy: EnvoyConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub identity_provider: IdentityProviderConfig,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The revocation feed the filter polls (`poll_ms`, `grace_seconds`, `fail_open`),
    /// rendered into the plugin configuration as it is.
    #[serde(default)]
    pub revocation: warden_core::revocation::FeedRules,
    /// Names, images and Secrets for `render --target kubernetes|istio`; `serve` ignores it.
    #[serde(default)]
    pub kubernetes: Option<crate::config_kubernetes::KubernetesConfig>,
    /// What every outbound HTTPS call trusts (`extra_ca_file`).
    #[serde(default)]
    pub outbound: crate::outbound::OutboundConfig,
    /// Discovered upstream OAuth (`upstream_oauth2.discover`): the allowed authorization
    /// servers, the cache.
    #[serde(default)]
    pub upstream_discovery: Option<crate::config_upstream_discovery::UpstreamDiscoveryConfig>,
    /// What the gateway reports about itself: metrics (`metrics`) and traces
    /// (`otlp_endpoint`, `service_name`: the token service's and Envoy's).
    #[serde(default)]
    pub telemetry: crate::config_telemetry::TelemetryConfig,
}

/// Whether loading reads the files secrets live in (`*_file`). A render runs where they do
/// not exist (they are mounted into the pod): it checks everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretFiles {
    Read,
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationServerConfig {
    /// Used byte for byte in metadata, the `iss` parameter and the token `iss` claim.
    pub issuer: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_access_ttl")]
    pub access_token_ttl_seconds: u64,
    /// Absolute lifetime of a refresh-token family, counted from the code exchange;
    /// rotation does not extend it.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_token_ttl_seconds: u64,
    /// Optional idle timeout: a refresh token unused this long stops working, even inside
    /// the family's lifetime.
    #[serde(default)]
    pub refresh_token_idle_seconds: Option<u64>,
    #[serde(default)]
    pub signing_key: Option<SigningKeyConfig>,
    /// Argon2 password checks running at once (each holds its memory cost, 19 MiB with the
    /// default parameters); default: the number of CPUs, at most 4.
    #[serde(default)]
    pub max_concurrent_password_checks: Option<usize>,
    /// Dynamic Client Registration (`POST /register`): who may register, how fast, how much.
    #[serde(default, deserialize_with = "deserialize_registration")]
    pub registration: RegistrationConfig,
    /// The internal listener: upstream-token look-ups for the filter only, never on the
    /// public issuer URL. Requests need the internal credential.
    #[serde(default = "default_internal_listen")]
    pub internal_listen: SocketAddr,
    /// The credential the filter presents on the internal listener (base64url text).
    /// Defaults to `<dir of the sqlite db>/internal-credential`, created on first start.
    #[serde(default)]
    pub internal_credential_file: Option<PathBuf>,
    /// The proxies (load balancer, ingress, Envoy) whose `X-Forwarded-For` names the client
    /// for the per-address limits: CIDR networks or single addresses.
    #[serde(default)]
    pub trusted_proxies: Vec<crate::client_address::ProxyNetwork>,
    /// Bounds on pending sign-ins (`/authorize`, `/app/sign-in`, `/mcp/connect`,
    /// `/login/idp`), which anyone may start and each of which is stored for 10 minutes.
    #[serde(default)]
    pub pending_flows: PendingFlowsConfig,
    /// On SIGTERM: how long requests in progress may take to finish before they are cut and
    /// the process exits (under Kubernetes' `terminationGracePeriodSeconds`).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
    /// Clients whose `client_id` is the URL of their metadata document (CIMD).
    #[serde(default)]
    pub client_id_metadata_documents: crate::config_client_documents::ClientDocumentsConfig,
    /// ID-JAGs (the jwt-bearer grant) from these identity providers.
    #[serde(default)]
    pub identity_assertion_grant: crate::config_id_jag::IdentityAssertionGrantConfig,
}

/// `authorization_server.pending_flows`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingFlowsConfig {
    /// Requests that may start a flow, per minute from one client address (IPv6: per /64),
    /// as a burst of this many that refills evenly over the minute.
    #[serde(default = "default_flows_per_minute")]
    pub rate_limit_per_minute: u32,
    /// Pending records (sign-ins, upstream connects, identity-provider sign-ins, together)
    /// stored at once, at most.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
}

impl Default for PendingFlowsConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: default_flows_per_minute(),
            max_pending: default_max_pending(),
        }
    }
}

fn default_flows_per_minute() -> u32 {
    30
}
fn default_max_pending() -> u64 {
    10_000
}

impl PendingFlowsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        const AT: &str = "authorization_server.pending_flows";
        if !(1..=10_000).contains(&self.rate_limit_per_minute) {
            return Err(ConfigError::new(
                format!("{AT}.rate_limit_per_minute"),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_pending) {
            return Err(ConfigError::new(
                format!("{AT}.max_pending"),
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
}

/// Who may use `POST /register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    /// Anyone may register (MCP clients expect this), within the limits below.
    #[default]
    Open,
    /// No registration: only pre-registered clients.
    Closed,
    /// Only with `Authorization: Bearer <initial access token>` (RFC 7591 §3).
    InitialAccessToken,
}

/// `authorization_server.registration`: a mode (`registration: closed`) or a mapping.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default)]
    pub mode: RegistrationMode,
    /// The initial access token, inline or (`initial_access_token_file`) read at load.
    #[serde(default)]
    pub initial_access_token: Option<String>,
    #[serde(default)]
    pub initial_access_token_file: Option<PathBuf>,
    /// Registrations per minute from one client address (IPv6: per /64), as a burst of
    /// this many that refills evenly over the minute.
    #[serde(default = "default_registrations_per_minute")]
    pub rate_limit_per_minute: u32,
    #[serde(default = "default_max_redirect_uris")]
    pub max_redirect_uris: usize,
    /// Largest registration request body.
    #[serde(default = "default_max_metadata_bytes")]
    pub max_metadata_bytes: usize,
    /// Registered clients that have not obtained a grant yet, at most; further
    /// registrations wait until some expire.
    #[serde(default = "default_max_unused_clients")]
    pub max_unused_clients: u64,
    /// A registered client that never obtained a grant is deleted after this long.
    #[serde(default = "default_unused_client_ttl")]
    pub unused_client_ttl_seconds: u64,
    /// A client whose grants have all ended is deleted after this long.
    #[serde(default = "default_idle_client_ttl")]
    pub idle_client_ttl_seconds: u64,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            mode: RegistrationMode::default(),
            initial_access_token: None,
            initial_access_token_file: None,
            rate_limit_per_minute: default_registrations_per_minute(),
            max_redirect_uris: default_max_redirect_uris(),
            max_metadata_bytes: default_max_metadata_bytes(),
            max_unused_clients: default_max_unused_clients(),
            unused_client_ttl_seconds: default_unused_client_ttl(),
            idle_client_ttl_seconds: default_idle_client_ttl(),
        }
    }
}

impl fmt::Debug for RegistrationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of any debug output.
        f.debug_struct("RegistrationConfig")
            .field("mode", &self.mode)
            .field(
                "initial_access_token",
                &self.initial_access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("initial_access_token_file", &self.initial_access_token_file)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("max_redirect_uris", &self.max_redirect_uris)
            .field("max_metadata_bytes", &self.max_metadata_bytes)
            .field("max_unused_clients", &self.max_unused_clients)
            .field("unused_client_ttl_seconds", &self.unused_client_ttl_seconds)
            .field("idle_client_ttl_seconds", &self.idle_client_ttl_seconds)
            .finish()
    }
}

/// Reads `registration: <mode>` as shorthand for `registration: {mode: <mode>}`, and a
/// mapping as itself (unknown keys still refused, errors still naming the field).
fn deserialize_registration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<RegistrationConfig, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = RegistrationConfig;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("open, closed, initial_access_token, or a mapping with `mode`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let mode =
                RegistrationMode::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
            Ok(RegistrationConfig {
                mode,
                ..RegistrationConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RegistrationConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Defaults to `<dir of the sqlite db>/signing-key.json`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub alg: SigningAlg,
    /// `rotate-signing-key` publishes the new key this long before it starts signing, so
    /// every filter has it first; default: twice `envoy.jwks_refresh_seconds`.
    #[serde(default)]
    pub rotation_publish_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub enum SigningAlg {
    #[default]
    ES256,
    EdDSA,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::ES256 => "ES256",
            SigningAlg::EdDSA => "EdDSA",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The embedded SQLite database (the default, at `var/warden.db`, when neither this nor
    /// `postgres` is given).
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL database, for several replicas sharing state.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// The key upstream tokens are encrypted with at rest (32 random bytes, base64url).
    /// Defaults to `<dir of the sqlite db>/encryption-key`, created on first start; required
    /// with `postgres` (every replica must hold the same key).
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
    /// Keys `encryption_key_file` replaced: what was sealed with them still opens, and the
    /// service re-seals it with the current key in the background. Each file must exist.
    #[serde(default)]
    pub previous_encryption_key_files: Vec<PathBuf>,
}

/// Which database the store lives in (`StorageConfig::backend`).
#[derive(Debug, Clone, Copy)]
pub enum StorageBackend<'a> {
    Sqlite(&'a Path),
    Postgres(&'a PostgresConfig),
}

impl StorageConfig {
    pub fn backend(&self) -> StorageBackend<'_> {
        match (&self.postgres, &self.sqlite) {
            (Some(pg), _) => StorageBackend::Postgres(pg),
            (None, Some(path)) => StorageBackend::Sqlite(path),
            (None, None) => StorageBackend::Sqlite(Path::new(DEFAULT_SQLITE)),
        }
    }
}

/// `storage.postgres`. The URL may hold a password: it is a secret, kept out of `Debug`
/// and of every log line.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=…`.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL (read at load, trimmed), instead of `url`.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default = "default_pg_max_connections")]
    pub max_connections: u32,
}

impl PostgresConfig {
    /// The URL (read from `url_file` at load).
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or_default()
    }

    fn read_url_file(&mut self, files: SecretFiles) -> Result<(), ConfigError> {
        let Some(path) = &self.url_file else {
            return Ok(());
        };
        if self.url.is_some() {
            return Err(ConfigError::new(
                "storage.postgres.url_file",
                "give url or url_file, not both",
            ));
        }
        if files == SecretFiles::Skip {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "storage.postgres.url_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        self.url = Some(text.trim().to_owned());
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = self.url.as_deref() else {
            // Left unread (`SecretFiles::Skip`): the pod reads it; the rest is checked.
            if self.url_file.is_some() {
                return self.validate_max_connections();
            }
            return Err(ConfigError::new(
                "storage.postgres.url",
                "required (or url_file)",
            ));
        };
        crate::pg_url::parse(url).map_err(|m| ConfigError::new("storage.postgres.url", m))?;
        self.validate_max_connections()
    }

    fn validate_max_connections(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_PG_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::new(
                "storage.postgres.max_connections",
                format!("must be between 1 and {MAX_PG_CONNECTIONS}"),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_file", &self.url_file)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

const MAX_PG_CONNECTIONS: u32 = 1024;

fn default_pg_max_connections() -> u32 {
    16
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// Users with passwords in this file; beside `oidc` optional (absent: only the provider).
    #[serde(default)]
    pub local: LocalIdpConfig,
    /// The organisation's OpenID Connect provider (Okta, Entra ID, Google, Keycloak, …).
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// `identity_provider.oidc`: the token service as the provider's relying party.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Discovery at `{issuer}/.well-known/openid-configuration`; ID tokens must name it exactly.
    pub issuer: String,
    pub client_id: String,
    /// Inline, or (`client_secret_file`) read at load. Neither: a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim holding the user's groups; a dotted path reaches into nested objects.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Shown on the sign-in page (default: the issuer's host).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Sign in users whose provider says `email_verified: false` (default: refused).
    #[serde(default)]
    pub allow_unverified_email: bool,
    /// A signed-in user is checked again at the provider at most this often (deprovisioning):
    /// refused there, they lose every grant and session here.
    #[serde(default = "default_recheck_seconds")]
    pub recheck_seconds: u64,
}

/// Bounds of `identity_provider.oidc.recheck_seconds`: often enough to matter, rarely enough
/// not to hammer the provider, and at least once a month.
pub const MIN_RECHECK_SECONDS: u64 = 60;
pub const MAX_RECHECK_SECONDS: u64 = 30 * 86_400;

fn default_recheck_seconds() -> u64 {
    3600
}

fn default_oidc_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(str::to_owned).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of any debug output.
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("display_name", &self.display_name)
            .field("allow_unverified_email", &self.allow_unverified_email)
            .field("recheck_seconds", &self.recheck_seconds)
            .finish()
    }
}

impl OidcConfig {
    /// `recheck_seconds` as the clock counts.
    pub fn recheck_every(&self) -> i64 {
        i64::try_from(self.recheck_seconds).unwrap_or(i64::MAX / 4)
    }

    pub fn display_name(&self) -> &str {
        match &self.display_name {
            Some(n) => n,
            None => {
                let rest = self.issuer.split_once("://").map_or("", |(_, r)| r);
                rest.split(['/', ':']).next().unwrap_or(rest)
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        const AT: &str = "identity_provider.oidc";
        validate_provider_url(&self.issuer)
            .map_err(|m| ConfigError::new(format!("{AT}.issuer"), m))?;
        if self.issuer.ends_with('/') || self.issuer.contains(['?', '#']) {
            return Err(ConfigError::new(
                format!("{AT}.issuer"),
                "must be the provider's issuer exactly, without a trailing slash, query or fragment",
            ));
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                format!("{AT}.client_id"),
                "must not be empty",
            ));
        }
        if self.client_secret.as_deref() == Some("") {
            return Err(ConfigError::new(
                format!("{AT}.client_secret"),
                "must not be empty (leave it out for a public client)",
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(ConfigError::new(
                format!("{AT}.scopes"),
                "must include openid",
            ));
        }
        for (j, s) in self.scopes.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(is_scope_char) {
                return Err(ConfigError::new(
                    format!("{AT}.scopes[{j}]"),
                    "not a valid scope token",
                ));
            }
        }
        if self.groups_claim.is_empty() {
            return Err(ConfigError::new(
                format!("{AT}.groups_claim"),
                "must not be empty",
            ));
        }
        if self
            .display_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("{AT}.display_name"),
                "must not be empty",
            ));
        }
        if !(MIN_RECHECK_SECONDS..=MAX_RECHECK_SECONDS).contains(&self.recheck_seconds) {
            return Err(ConfigError::new(
                format!("{AT}.recheck_seconds"),
                format!(
                    "must be between {MIN_RECHECK_SECONDS} and {MAX_RECHECK_SECONDS} (30 days)"
                ),
            ));
        }
        Ok(())
    }
}

/// Reads a `client_secret_file` into its `client_secret` (trailing line end dropped), so a
/// missing file fails at load, naming the field.
fn read_secret_file(
    secret: &mut Option<String>,
    file: Option<&Path>,
    at: &str,
    files: SecretFiles,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    if secret.is_some() {
        return Err(ConfigError::new(
            format!("{at}.client_secret_file"),
            "give client_secret or client_secret_file, not both",
        ));
    }
    if files == SecretFiles::Skip {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            format!("{at}.client_secret_file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    *secret = Some(text.trim_end_matches(['\r', '\n']).to_owned());
    Ok(())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIdpConfig {
    #[serde(default)]
    pub users: Vec<LocalUser>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalUser {
    pub email: String,
    #[serde(default)]
    pub name: String,
    /// Argon2 PHC string (`warden-token-service hash-password`).
    pub password_hash: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    /// RFC 7523 §2.2: a JWT signed with one of the client's keys (`jwks` / `jwks_uri`).
    PrivateKeyJwt,
}

impl TokenEndpointAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenEndpointAuthMethod::None => "none",
            TokenEndpointAuthMethod::ClientSecretBasic => "client_secret_basic",
            TokenEndpointAuthMethod::ClientSecretPost => "client_secret_post",
            TokenEndpointAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "private_key_jwt" => Some(Self::PrivateKeyJwt),
            _ => None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A file holding the secret, read at load (trailing line end dropped), instead of
    /// `client_secret`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Defaults to `client_secret_basic` with a secret, `private_key_jwt` with keys, `none`
    /// without either.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// Required with the authorization_code grant; none with client_credentials.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Issue codes without asking the user to approve this client (operator-trusted clients
    /// only; DCR clients always get the consent page).
    #[serde(default)]
    pub skip_consent: bool,
    /// The client's public keys for `private_key_jwt`: an inline JWKS object…
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// …or where to fetch it (https, or http on a loopback host).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The grants the client may use (`GRANT_TYPES`); empty: authorization_code and
    /// refresh_token.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// Who a client_credentials client is, as route policies see it (required with that grant).
    #[serde(default)]
    pub identity: Option<ClientIdentity>,
}

/// `clients[].identity`: the subject a client_credentials client's tokens name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentity {
    pub email: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Default: the client's `client_name`, else its `client_id`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The grant types a configured client may list.
pub const GRANT_TYPES: [&str; 4] = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    JWT_BEARER_GRANT,
];

/// The prefix of a service client's key (`identity`): no local user's email starts so.
pub const CLIENT_SUB_PREFIX: &str = "client:";

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of any debug output.
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("client_name", &self.client_name)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("skip_consent", &self.skip_consent)
            .field("jwks", &self.jwks.as_ref().map(|_| "<keys>"))
            .field("jwks_uri", &self.jwks_uri)
            .field("grant_types", &self.grant_types)
            .field("identity", &self.identity)
            .finish()
    }
}

impl ClientConfig {
    pub fn auth_method(&self) -> TokenEndpointAuthMethod {
        match (self.token_endpoint_auth_method, self.has_secret()) {
            (Some(m), _) => m,
            (None, true) => TokenEndpointAuthMethod::ClientSecretBasic,
            (None, false) if self.jwks.is_some() || self.jwks_uri.is_some() => {
                TokenEndpointAuthMethod::PrivateKeyJwt
            }
            (None, false) => TokenEndpointAuthMethod::None,
        }
    }

    /// A secret inline or in a file (left unread by a render, `SecretFiles::Skip`).
    fn has_secret(&self) -> bool {
        self.client_secret.is_some() || self.client_secret_file.is_some()
    }

    /// The grants the client may use: as configured, or authorization_code and refresh_token.
    pub fn grants(&self) -> Vec<String> {
        if self.grant_types.is_empty() {
            vec!["authorization_code".into(), "refresh_token".into()]
        } else {
            self.grant_types.clone()
        }
    }

    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grants().iter().any(|g| g == grant_type)
    }

    /// `grant_types`, `identity` and `redirect_uris` together: each grant's needs, and nothing
    /// a grant the client may not use would need.
    fn validate_grants(&self, at: &str) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (j, g) in self.grant_types.iter().enumerate() {
            if !GRANT_TYPES.contains(&g.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.grant_types[{j}]"),
                    format!("unknown grant type {g:?}: use {}", GRANT_TYPES.join(", ")),
                ));
            }
            if !seen.insert(g.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.grant_types[{j}]"),
                    "listed twice",
                ));
            }
        }
        let code = self.allows_grant("authorization_code");
        if self.allows_grant("refresh_token") && !code {
            return Err(ConfigError::new(
                format!("{at}.grant_types"),
                "refresh_token comes with authorization_code (the other grants issue no refresh token)",
            ));
        }
        let credentials = self.allows_grant("client_credentials");
        if credentials && code {
            return Err(ConfigError::new(
                format!("{at}.grant_types"),
                "client_credentials and authorization_code are for different clients: a service acting for itself, or an app acting for its users",
            ));
        }
        if code && self.redirect_uris.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.redirect_uris"),
                "at least one is required (for authorization_code)",
            ));
        }
        if credentials && !self.redirect_uris.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.redirect_uris"),
                "a client_credentials client is redirected nowhere: leave them out",
            ));
        }
        if !code && self.skip_consent {
            return Err(ConfigError::new(
                format!("{at}.skip_consent"),
                "only authorization_code shows a consent page",
            ));
        }
        if (credentials || self.allows_grant(JWT_BEARER_GRANT))
            && self.auth_method() == TokenEndpointAuthMethod::None
        {
            return Err(ConfigError::new(
                format!("{at}.client_secret"),
                "required: a client using client_credentials or the jwt-bearer grant must authenticate",
            ));
        }
        match (&self.identity, credentials) {
            (None, true) => Err(ConfigError::new(
                format!("{at}.identity"),
                "required with client_credentials: the email and groups route policies see",
            )),
            (Some(_), false) => Err(ConfigError::new(
                format!("{at}.identity"),
                "only for client_credentials clients (other clients act for a user)",
            )),
            (Some(id), true) => id.validate(&format!("{at}.identity")),
            (None, false) => Ok(()),
        }
    }
}

impl ClientIdentity {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.email.trim().is_empty() || !self.email.contains('@') {
            return Err(ConfigError::new(
                format!("{at}.email"),
                "must be an email address",
            ));
        }
        for (j, g) in self.groups.iter().enumerate() {
            if g.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.groups[{j}]"),
                    "must not be empty",
                ));
            }
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "must not be empty (leave it out for the client's name)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfig {
    #[serde(default = "default_envoy_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_envoy_admin")]
    pub admin: SocketAddr,
    /// Time a client gets to send its request headers (slow-header clients are cut).
    #[serde(default = "default_request_headers_timeout")]
    pub request_headers_timeout_seconds: u32,
    /// Time a client gets to send its whole request (headers and body). Responses, such as
    /// long tool calls and SSE streams, are not limited by it.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u32,
    /// A connection with no request in progress is closed after this long. Open MCP streams
    /// (SSE) are requests in progress: they are not cut.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u32,
    /// Downstream connections Envoy accepts at once (overload manager); further ones are
    /// closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Envoy's heap budget (overload manager `fixed_heap`): near it, streams holding the most
    /// buffered memory are reset, and at 95 % new requests are refused.
    #[serde(default = "default_max_heap_bytes")]
    pub max_heap_bytes: u64,
    /// Proxies in front of Envoy whose `X-Forwarded-For` entries it trusts (Envoy's
    /// `xff_num_trusted_hops`); 0: Envoy's downstream peer is the client.
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    /// How often the filter re-fetches the token service's JWKS (it also re-fetches, at most
    /// every 5 s per worker, when a token names a key it does not know).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u32,
    /// The filter's duration histogram records about one request in this many per worker
    /// (the plugin's `duration_sample_every`; 1 records every one).
    #[serde(default = "default_duration_sample_every")]
    pub duration_sample_every: u32,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        Self {
            listen: default_envoy_listen(),
            admin: default_envoy_admin(),
            request_headers_timeout_seconds: default_request_headers_timeout(),
            request_timeout_seconds: default_request_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_heap_bytes: default_max_heap_bytes(),
            xff_num_trusted_hops: 0,
            jwks_refresh_seconds: default_jwks_refresh(),
            duration_sample_every: default_duration_sample_every(),
        }
    }
}

fn default_duration_sample_every() -> u32 {
    warden_core::config::DEFAULT_DURATION_SAMPLE_EVERY
}

fn default_envoy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000))
}
fn default_envoy_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_request_headers_timeout() -> u32 {
    10
}
fn default_request_timeout() -> u32 {
    60
}
fn default_idle_timeout() -> u32 {
    60
}
fn default_jwks_refresh() -> u32 {
    300
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_heap_bytes() -> u64 {
    1 << 30
}

/// A route in the shape of Pomerium's: `from` (+ `prefix`) is what clients use, `to` the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub from: String,
    #[serde(default)]
    pub prefix: String,
    /// Upstream URL: the MCP server, or the web app of an `mcp: client` route.
    pub to: String,
    /// `server: {...}` marks an MCP server route, `client: {}` an MCP-enabled web app.
    pub mcp: McpRouteConfig,
    /// Shown in the server listing (`/.warden/mcp/routes`).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// PPL policy (Pomerium's shape): one rule or a list. Required, so no route is open or
    /// shut by accident; `allow: {and: [{authenticated_user: true}]}` admits every signed-in user.
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    /// Add `X-Warden-Jwt-Assertion` (the user's identity, signed with the token service's
    /// key) to the requests this route forwards. Pomerium's option name.
    #[serde(default)]
    pub pass_identity_headers: bool,
    /// The headers the assertion goes in: `x-warden-jwt-assertion` (default),
    /// `x-pomerium-jwt-assertion` (servers migrating from Pomerium), or both.
    #[serde(default = "warden_core::config::default_identity_header_names")]
    pub identity_header_names: Vec<String>,
}

/// `routes[].mcp`: exactly one of `server` and `client`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpRouteConfig {
    #[serde(default)]
    pub server: Option<McpServerConfig>,
    #[serde(default)]
    pub client: Option<McpClientConfig>,
}

/// `mcp.client`: a web app behind the gateway that acts for its signed-in users (no options yet).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpClientConfig {}

/// MCP server route options (the filter enforces them; defaults as in the plugin config).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Largest POST body inspected (default 1 MiB); larger bodies get 413.
    #[serde(default)]
    pub max_request_bytes: Option<u32>,
    /// `forbidden` (403, default) or `jsonrpc_200` (HTTP 200 + JSON-RPC -32602, like Pomerium).
    #[serde(default)]
    pub deny_response: Option<warden_core::config::DenyStyle>,
    /// Filter `tools/list` down to the tools the caller may call (default true).
    #[serde(default)]
    pub filter_tools_list: Option<bool>,
    /// Log tool-call arguments in the authorize log (default false).
    #[serde(default)]
    pub log_tool_parameters: Option<bool>,
    /// Argument keys whose values the log redacts.
    #[serde(default)]
    pub redact_parameters: Vec<String>,
    /// The MCP server needs the user's own token from an OAuth provider (GitHub, Google, …):
    /// the gateway gets it during sign-in, keeps and refreshes it, and sends it upstream.
    /// With `discover: true`, the endpoints are discovered instead (`upstream_discovery`).
    #[serde(default)]
    pub upstream_oauth2: Option<UpstreamOAuth2>,
}

/// `mcp.server.upstream_oauth2`, in one of its two exclusive shapes.
#[derive(Debug, Clone)]
pub enum UpstreamOAuth2 {
    /// The provider's endpoints and the client are configured.
    Static(UpstreamOAuth2Config),
    /// `discover: true`: found from the upstream's metadata.
    Discovered(crate::config_upstream_discovery::DiscoveredUpstreamOAuth2),
}

/// Both shapes' fields, split by `discover` (the errors name the field that does not belong).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamOAuth2 {
    #[serde(default)]
    discover: bool,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    endpoint: Option<UpstreamEndpoint>,
}

impl<'de> Deserialize<'de> for UpstreamOAuth2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawUpstreamOAuth2::deserialize(d)?;
        raw.split().map_err(serde::de::Error::custom)
    }
}

impl RawUpstreamOAuth2 {
    fn split(self) -> Result<UpstreamOAuth2, String> {
        if self.discover {
            let given = [
                ("endpoint", self.endpoint.is_some()),
                ("client_secret", self.client_secret.is_some()),
                ("client_secret_file", self.client_secret_file.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, g)| *g) {
                return Err(format!(
                    "{field}: not with discover: true (the endpoints come from the upstream's metadata; a discovered client is public)"
                ));
            }
            return Ok(UpstreamOAuth2::Discovered(
                crate::config_upstream_discovery::DiscoveredUpstreamOAuth2 {
                    scopes: self.scopes,
                    client_id: self.client_id,
                },
            ));
        }
        let Some(client_id) = self.client_id else {
            return Err("client_id: missing (or set discover: true)".into());
        };
        let Some(endpoint) = self.endpoint else {
            return Err("endpoint: missing (or set discover: true)".into());
        };
        Ok(UpstreamOAuth2::Static(UpstreamOAuth2Config {
            client_id,
            client_secret: self.client_secret,
            client_secret_file: self.client_secret_file,
            scopes: self.scopes,
            endpoint,
        }))
    }
}

/// `mcp.server.upstream_oauth2`: the gateway as an OAuth client of the upstream provider.
#[derive(Clone)]
pub struct UpstreamOAuth2Config {
    pub client_id: String,
    /// Inline, or (`client_secret_file`) read at load. Neither: a public client (PKCE only).
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    pub endpoint: UpstreamEndpoint,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEndpoint {
    pub auth_url: String,
    pub token_url: String,
    /// How the client authenticates at `token_url`; absent: HTTP Basic first, then form
    /// parameters, and the one that worked is remembered.
    #[serde(default)]
    pub auth_style: Option<AuthStyle>,
    /// RFC 7009 revocation endpoint, used when a user disconnects (optional).
    #[serde(default)]
    pub revocation_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// HTTP Basic (`client_secret_basic`).
    Header,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Params,
}

impl fmt::Debug for UpstreamOAuth2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of any debug output.
        f.debug_struct("UpstreamOAuth2Config")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl UpstreamOAuth2Config {
    fn read_secret_file(&mut self, at: &str, files: SecretFiles) -> Result<(), ConfigError> {
        read_secret_file(
            &mut self.client_secret,
            self.client_secret_file.as_deref(),
            at,
            files,
        )
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.client_id"),
                "must not be empty",
            ));
        }
        if self.client_secret.as_deref() == Some("") {
            return Err(ConfigError::new(
                format!("{at}.client_secret"),
                "must not be empty (leave it out for a public client)",
            ));
        }
        let e = &self.endpoint;
        let mut urls = vec![("auth_url", &e.auth_url), ("token_url", &e.token_url)];
        if let Some(r) = &e.revocation_url {
            urls.push(("revocation_url", r));
        }
        for (field, value) in urls {
            validate_provider_url(value)
                .map_err(|m| ConfigError::new(format!("{at}.endpoint.{field}"), m))?;
        }
        for (j, s) in self.scopes.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(is_scope_char) {
                return Err(ConfigError::new(
                    format!("{at}.scopes[{j}]"),
                    "not a valid scope token",
                ));
            }
        }
        Ok(())
    }

    /// The provider as people know it: the host of `auth_url` (shown on the consent page).
    pub fn provider_name(&self) -> String {
        Url::parse(&self.endpoint.auth_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// `upstream_oauth2` with `discover: true`: a client id, if given, is not empty; scopes are
/// scope tokens.
fn validate_discovered(
    d: &crate::config_upstream_discovery::DiscoveredUpstreamOAuth2,
    at: &str,
) -> Result<(), ConfigError> {
    if d.client_id.as_deref() == Some("") {
        return Err(ConfigError::new(
            format!("{at}.client_id"),
            "must not be empty (leave it out to use CIMD or DCR)",
        ));
    }
    for (j, s) in d.scopes.iter().enumerate() {
        if s.is_empty() || !s.bytes().all(is_scope_char) {
            return Err(ConfigError::new(
                format!("{at}.scopes[{j}]"),
                "not a valid scope token",
            ));
        }
    }
    Ok(())
}

/// A provider endpoint: https, or plain http on a loopback host (in-repo providers, tests).
/// `clients[].jwks` / `jwks_uri`: exactly one, for (and only for) a `private_key_jwt` client;
/// an inline JWKS must hold a key that can verify an assertion.
fn validate_client_keys(c: &ClientConfig, at: &str) -> Result<(), ConfigError> {
    let private_key_jwt = c.auth_method() == TokenEndpointAuthMethod::PrivateKeyJwt;
    match (&c.jwks, &c.jwks_uri) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{at}.jwks_uri"),
            "give jwks or jwks_uri, not both",
        )),
        (None, None) if private_key_jwt => Err(ConfigError::new(
            format!("{at}.jwks"),
            "a private_key_jwt client needs jwks or jwks_uri",
        )),
        (Some(_), None) | (None, Some(_)) if !private_key_jwt => Err(ConfigError::new(
            format!("{at}.token_endpoint_auth_method"),
            "keys (jwks, jwks_uri) are for private_key_jwt clients",
        )),
        (Some(jwks), None) => {
            let keys = crate::jws::parse_jwks(jwks.to_string().as_bytes())
                .map_err(|m| ConfigError::new(format!("{at}.jwks"), m))?;
            if !keys
                .iter()
                .any(|k| crate::jws::ASSERTION_ALGS.iter().any(|a| k.allows(a)))
            {
                return Err(ConfigError::new(
                    format!("{at}.jwks"),
                    "holds no key that can sign with RS256, PS256, ES256 or EdDSA",
                ));
            }
            Ok(())
        }
        (None, Some(uri)) => {
            validate_provider_url(uri).map_err(|m| ConfigError::new(format!("{at}.jwks_uri"), m))
        }
        (None, None) => Ok(()),
    }
}

fn validate_provider_url(value: &str) -> Result<(), String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a fragment or credentials".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err("must have a host".into()),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be an https URL (plain http only on a loopback host)".into()),
    }
}

impl RouteConfig {
    /// The MCP server options, for a server route.
    pub fn server(&self) -> Option<&McpServerConfig> {
        self.mcp.server.as_ref()
    }

    /// Whether this is an `mcp: client` route (a web app).
    pub fn is_client(&self) -> bool {
        self.mcp.client.is_some() && self.mcp.server.is_none()
    }

    /// The upstream OAuth settings of a server route.
    pub fn upstream_oauth2(&self) -> Option<&UpstreamOAuth2Config> {
        match self.server().and_then(|s| s.upstream_oauth2.as_ref()) {
            Some(UpstreamOAuth2::Static(u)) => Some(u),
            _ => None,
        }
    }

    /// Whether the server acts with each user's own upstream token: `upstream_oauth2` in
    /// either shape (configured or discovered).
    pub fn has_upstream_oauth(&self) -> bool {
        self.server().is_some_and(|s| s.upstream_oauth2.is_some())
    }

    /// `upstream_oauth2: {discover: true}`: the upstream's OAuth is discovered.
    pub fn discovered_upstream_oauth2(
        &self,
    ) -> Option<&crate::config_upstream_discovery::DiscoveredUpstreamOAuth2> {
        match self.server().and_then(|s| s.upstream_oauth2.as_ref()) {
            Some(UpstreamOAuth2::Discovered(d)) => Some(d),
            _ => None,
        }
    }

    /// RFC 8707 resource identifier: `from` + `prefix`, byte for byte.
    pub fn resource(&self) -> String {
        format!("{}{}", self.from, self.prefix)
    }

    /// The upstream's origin (`scheme://host[:port]` of `to`, default port left out): the
    /// `aud` of the route's identity assertions.
    pub fn upstream_origin(&self) -> String {
        Url::parse(&self.to)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| self.to.clone())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
fn default_internal_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9101))
}
fn default_shutdown_grace() -> u64 {
    20
}
/// Upper bound for `shutdown_grace_seconds`.
const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 300;
fn default_access_ttl() -> u64 {
    300
}
fn default_refresh_ttl() -> u64 {
    30 * 24 * 3600
}
fn default_registrations_per_minute() -> u32 {
    10
}
fn default_max_redirect_uris() -> usize {
    10
}
fn default_max_metadata_bytes() -> usize {
    4096
}
fn default_max_unused_clients() -> u64 {
    10_000
}
fn default_unused_client_ttl() -> u64 {
    86_400
}
fn default_idle_client_ttl() -> u64 {
    30 * 86_400
}
const DEFAULT_SQLITE: &str = "var/warden.db";

/// Hard limits for the registration settings.
pub const MAX_REDIRECT_URIS: usize = 20;
pub const MAX_METADATA_BYTES: usize = 65_536;
const MIN_METADATA_BYTES: usize = 512;
const MIN_INITIAL_ACCESS_TOKEN_LEN: usize = 16;

impl RegistrationConfig {
    /// Reads `initial_access_token_file` into `initial_access_token` (trailing line end
    /// dropped), so a missing or unreadable file fails at load, naming the field.
    fn read_token_file(&mut self, files: SecretFiles) -> Result<(), ConfigError> {
        const AT: &str = "authorization_server.registration";
        let Some(path) = &self.initial_access_token_file else {
            return Ok(());
        };
        if self.initial_access_token.is_some() {
            return Err(ConfigError::new(
                format!("{AT}.initial_access_token_file"),
                "set initial_access_token or initial_access_token_file, not both",
            ));
        }
        if files == SecretFiles::Skip {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                format!("{AT}.initial_access_token_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token);
        self.initial_access_token = Some(token.to_owned());
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        const AT: &str = "authorization_server.registration";
        let field = |name: &str| format!("{AT}.{name}");
        let token_field = if self.initial_access_token_file.is_some() {
            field("initial_access_token_file")
        } else {
            field("initial_access_token")
        };
        // The file left unread (`SecretFiles::Skip`): its content is checked where it is read.
        let unread =
            self.initial_access_token.is_none() && self.initial_access_token_file.is_some();
        match (&self.mode, &self.initial_access_token) {
            (RegistrationMode::InitialAccessToken, None) if unread => {}
            (RegistrationMode::InitialAccessToken, None) => {
                return Err(ConfigError::new(
                    field("initial_access_token"),
                    "required with mode initial_access_token (or initial_access_token_file)",
                ))
            }
            (RegistrationMode::InitialAccessToken, Some(t)) => {
                if t.len() < MIN_INITIAL_ACCESS_TOKEN_LEN {
                    return Err(ConfigError::new(
                        token_field,
                        format!("must be at least {MIN_INITIAL_ACCESS_TOKEN_LEN} characters"),
                    ));
                }
                // RFC 6750 b64token: what a client can send after `Bearer `.
                let body = t.trim_end_matches('=');
                if body.is_empty()
                    || !body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
                {
                    return Err(ConfigError::new(
                        token_field,
                        "must be a bearer token: letters, digits and - . _ ~ + / (then = padding)",
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    token_field,
                    "is used only with mode initial_access_token",
                ))
            }
            (_, None) if unread => {
                return Err(ConfigError::new(
                    token_field,
                    "is used only with mode initial_access_token",
                ))
            }
            (_, None) => {}
        }
        let check = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field(name),
                    format!("must be between {min} and {max}"),
                ))
            }
        };
        check(
            "rate_limit_per_minute",
            u64::from(self.rate_limit_per_minute),
            1,
            10_000,
        )?;
        check(
            "max_redirect_uris",
            self.max_redirect_uris as u64,
            1,
            MAX_REDIRECT_URIS as u64,
        )?;
        check(
            "max_metadata_bytes",
            self.max_metadata_bytes as u64,
            MIN_METADATA_BYTES as u64,
            MAX_METADATA_BYTES as u64,
        )?;
        check("max_unused_clients", self.max_unused_clients, 1, 1_000_000)?;
        check(
            "unused_client_ttl_seconds",
            self.unused_client_ttl_seconds,
            1,
            i64::MAX as u64 / 2,
        )?;
        check(
            "idle_client_ttl_seconds",
            self.idle_client_ttl_seconds,
            1,
            i64::MAX as u64 / 2,
        )?;
        Ok(())
    }
}

/// Upper bound for `envoy.xff_num_trusted_hops`.
pub const MAX_XFF_TRUSTED_HOPS: u32 = 10;

/// Upper bound for `max_concurrent_password_checks` (64 × 19 MiB is already 1.2 GiB).
pub const MAX_CONCURRENT_PASSWORD_CHECKS: usize = 64;
/// Longer than a week between publishing a key and signing with it is a typo, not a plan.
pub const MAX_ROTATION_PUBLISH_SECONDS: u64 = 7 * 86_400;

/// A configuration error that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates YAML, reading the secret files it names.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, SecretFiles::Read)
    }

    /// Parses and validates YAML without reading any secret file (`*_file`: the client
    /// secrets, the initial access token, the PostgreSQL URL, the previous encryption keys),
    /// for `render`, which runs where they do not exist. Everything else is checked as in
    /// [`Config::from_yaml`]; the secrets those files hold are left `None`.
    pub fn from_yaml_without_secret_files(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, SecretFiles::Skip)
    }

    fn parse(text: &str, files: SecretFiles) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        config
            .authorization_server
            .registration
            .read_token_file(files)?;
        if let Some(o) = &mut config.identity_provider.oidc {
            let file = o.client_secret_file.clone();
            read_secret_file(
                &mut o.client_secret,
                file.as_deref(),
                "identity_provider.oidc",
                files,
            )?;
        }
        for (i, r) in config.routes.iter_mut().enumerate() {
            if let Some(u) = r
                .mcp
                .server
                .as_mut()
                .and_then(|s| s.upstream_oauth2.as_mut())
                .and_then(|u| match u {
                    UpstreamOAuth2::Static(u) => Some(u),
                    UpstreamOAuth2::Discovered(_) => None,
                })
            {
                u.read_secret_file(&format!("routes[{i}].mcp.server.upstream_oauth2"), files)?;
            }
        }
        if let Some(pg) = &mut config.storage.postgres {
            pg.read_url_file(files)?;
        }
        for (i, c) in config.clients.iter_mut().enumerate() {
            let file = c.client_secret_file.clone();
            read_secret_file(
                &mut c.client_secret,
                file.as_deref(),
                &format!("clients[{i}]"),
                files,
            )?;
        }
        config.validate()?;
        if files == SecretFiles::Read {
            // Read at load too, so `check-config` catches a CA file that is missing or wrong.
            if let Some(path) = &config.outbound.extra_ca_file {
                crate::outbound::read_extra_roots(path)
                    .map_err(|m| ConfigError::new("outbound.extra_ca_file", m))?;
            }
            // Read at load, so `check-config` catches a key file that is missing or wrong.
            let current = crate::secrets::read_existing(&config.encryption_key_file()).ok();
            config.previous_encryption_keys(current.as_ref())?;
        }
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&text)
    }

    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::from_yaml(DEFAULT_CONFIG_YAML)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry
            .validate()
            .map_err(|(field, m)| ConfigError::new(format!("telemetry.{field}"), m))?;
        self.revocation
            .validate()
            .map_err(|(field, m)| ConfigError::new(format!("revocation.{field}"), m))?;
        let a = &self.authorization_server;
        validate_issuer(&a.issuer)
            .map_err(|m| ConfigError::new("authorization_server.issuer", m))?;
        if a.access_token_ttl_seconds == 0 {
            return Err(ConfigError::new(
                "authorization_server.access_token_ttl_seconds",
                "must be greater than 0",
            ));
        }
        if a.refresh_token_ttl_seconds == 0 {
            return Err(ConfigError::new(
                "authorization_server.refresh_token_ttl_seconds",
                "must be greater than 0",
            ));
        }
        if a.refresh_token_idle_seconds == Some(0) {
            return Err(ConfigError::new(
                "authorization_server.refresh_token_idle_seconds",
                "must be greater than 0 (leave it out for no idle timeout)",
            ));
        }
        let e = &self.envoy;
        for (field, value, max) in [
            (
                "envoy.request_headers_timeout_seconds",
                e.request_headers_timeout_seconds,
                3600,
            ),
            (
                "envoy.request_timeout_seconds",
                e.request_timeout_seconds,
                3600,
            ),
            ("envoy.idle_timeout_seconds", e.idle_timeout_seconds, 86_400),
            ("envoy.max_connections", e.max_connections, 10_000_000),
            ("envoy.jwks_refresh_seconds", e.jwks_refresh_seconds, 86_400),
            (
                "envoy.duration_sample_every",
                e.duration_sample_every,
                warden_core::config::MAX_DURATION_SAMPLE_EVERY,
            ),
        ] {
            // 0 would mean "no limit" to Envoy: the protection this setting exists for.
            if value == 0 || value > max {
                return Err(ConfigError::new(
                    field,
                    format!("must be between 1 and {max}"),
                ));
            }
        }
        if e.max_heap_bytes < 64 << 20 {
            return Err(ConfigError::new(
                "envoy.max_heap_bytes",
                "must be at least 67108864 (64 MiB): Envoy itself needs that much",
            ));
        }
        if e.request_headers_timeout_seconds > e.request_timeout_seconds {
            return Err(ConfigError::new(
                "envoy.request_headers_timeout_seconds",
                "must not exceed envoy.request_timeout_seconds (the headers are part of the request)",
            ));
        }
        if let Some(p) = a
            .signing_key
            .as_ref()
            .and_then(|k| k.rotation_publish_seconds)
        {
            if !(1..=MAX_ROTATION_PUBLISH_SECONDS).contains(&p) {
                return Err(ConfigError::new(
                    "authorization_server.signing_key.rotation_publish_seconds",
                    format!("must be between 1 and {MAX_ROTATION_PUBLISH_SECONDS} (a week)"),
                ));
            }
        }
        if let Some(n) = a.max_concurrent_password_checks {
            if !(1..=MAX_CONCURRENT_PASSWORD_CHECKS).contains(&n) {
                return Err(ConfigError::new(
                    "authorization_server.max_concurrent_password_checks",
                    format!("must be between 1 and {MAX_CONCURRENT_PASSWORD_CHECKS}"),
                ));
            }
        }
        if !(1..=MAX_SHUTDOWN_GRACE_SECONDS).contains(&a.shutdown_grace_seconds) {
            return Err(ConfigError::new(
                "authorization_server.shutdown_grace_seconds",
                format!("must be between 1 and {MAX_SHUTDOWN_GRACE_SECONDS}"),
            ));
        }
        a.registration.validate()?;
        a.pending_flows.validate()?;
        a.client_id_metadata_documents
            .validate()
            .map_err(|(field, m)| {
                ConfigError::new(
                    format!("authorization_server.client_id_metadata_documents.{field}"),
                    m,
                )
            })?;
        if e.xff_num_trusted_hops > MAX_XFF_TRUSTED_HOPS {
            return Err(ConfigError::new(
                "envoy.xff_num_trusted_hops",
                format!("must be between 0 and {MAX_XFF_TRUSTED_HOPS}"),
            ));
        }
        self.validate_storage()?;

        if let Some(o) = &self.identity_provider.oidc {
            o.validate()?;
        }
        let mut emails = BTreeSet::new();
        for (i, u) in self.identity_provider.local.users.iter().enumerate() {
            let at = format!("identity_provider.local.users[{i}]");
            if u.email.trim().is_empty() || !u.email.contains('@') {
                return Err(ConfigError::new(
                    format!("{at}.email"),
                    "must be an email address",
                ));
            }
            // Identity-provider users are keyed `{iss}#{sub}`: a local key never has a `#`.
            if u.email.contains('#') {
                return Err(ConfigError::new(
                    format!("{at}.email"),
                    "must not contain '#'",
                ));
            }
            // Service clients are keyed `client:{client_id}`.
            if u.email.to_ascii_lowercase().starts_with(CLIENT_SUB_PREFIX) {
                return Err(ConfigError::new(
                    format!("{at}.email"),
                    format!("must not start with {:?}", CLIENT_SUB_PREFIX),
                ));
            }
            if !emails.insert(u.email.to_ascii_lowercase()) {
                return Err(ConfigError::new(format!("{at}.email"), "duplicate user"));
            }
            let hash = argon2::PasswordHash::new(&u.password_hash).map_err(|e| {
                ConfigError::new(
                    format!("{at}.password_hash"),
                    format!(
                        "not a PHC password hash ({e}); use `warden-token-service hash-password`"
                    ),
                )
            })?;
            check_hash_cost(&hash)
                .map_err(|m| ConfigError::new(format!("{at}.password_hash"), m))?;
        }

        let mut ids = BTreeSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let at = format!("clients[{i}]");
            if c.client_id.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.client_id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(c.client_id.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.client_id"),
                    "duplicate client_id",
                ));
            }
            match (c.auth_method(), &c.client_secret) {
                (TokenEndpointAuthMethod::None, _) if c.has_secret() => {
                    return Err(ConfigError::new(
                        format!("{at}.client_secret"),
                        "a client with token_endpoint_auth_method none must not have a secret",
                    ))
                }
                (TokenEndpointAuthMethod::None, _) => {}
                (TokenEndpointAuthMethod::PrivateKeyJwt, _) if c.has_secret() => {
                    return Err(ConfigError::new(
                        format!("{at}.client_secret"),
                        "a private_key_jwt client has keys (jwks or jwks_uri), not a secret",
                    ))
                }
                (TokenEndpointAuthMethod::PrivateKeyJwt, _) => {}
                // In a file a render does not read: checked where it is read.
                (_, None) if c.client_secret_file.is_some() => {}
                (_, None) => {
                    return Err(ConfigError::new(
                        format!("{at}.client_secret"),
                        "required for client_secret_basic / client_secret_post",
                    ))
                }
                (_, Some(s)) if s.is_empty() => {
                    let field = match c.client_secret_file {
                        Some(_) => "client_secret_file",
                        None => "client_secret",
                    };
                    return Err(ConfigError::new(
                        format!("{at}.{field}"),
                        "must not be empty",
                    ));
                }
                _ => {}
            }
            validate_client_keys(c, &at)?;
            c.validate_grants(&at)?;
            for (j, r) in c.redirect_uris.iter().enumerate() {
                crate::redirect_uri::validate_redirect_uri(r)
                    .map_err(|m| ConfigError::new(format!("{at}.redirect_uris[{j}]"), m))?;
            }
        }

        self.validate_listeners()?;
        self.validate_kubernetes()?;
        self.validate_identity_assertion_grant()?;

        let mut names = BTreeSet::new();
        let mut resources = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            match (&r.mcp.server, &r.mcp.client) {
                (Some(_), None) => {}
                (None, Some(_)) => {
                    if !r.scopes.is_empty() {
                        return Err(ConfigError::new(
                            format!("{at}.scopes"),
                            "an mcp: client route has no scopes (they belong to MCP server routes)",
                        ));
                    }
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.mcp"),
                        "must be exactly one of `server: {...}` (an MCP server) or `client: {}` (an MCP-enabled web app)",
                    ))
                }
            }
            if r.description
                .as_deref()
                .is_some_and(|d| d.chars().any(|c| c.is_control()))
            {
                return Err(ConfigError::new(
                    format!("{at}.description"),
                    "must not contain control characters",
                ));
            }
            validate_route_name(&r.name).map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
            warden_core::assertion::header_names(&r.identity_header_names).map_err(
                |(j, m)| match j {
                    Some(j) => ConfigError::new(format!("{at}.identity_header_names[{j}]"), m),
                    None => ConfigError::new(format!("{at}.identity_header_names"), m),
                },
            )?;
            // Envoy names the route `mcp-warden:<name>` and logs show the name: two names that
            // differ only by case would be told apart by Envoy but not by people.
            if !names.insert(r.name.to_lowercase()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "duplicate route name {:?} (names are compared ignoring case)",
                        r.name
                    ),
                ));
            }
            let from = Url::parse(&r.from)
                .map_err(|e| ConfigError::new(format!("{at}.from"), format!("not a URL: {e}")))?;
            if !matches!(from.scheme(), "http" | "https") || from.host_str().is_none() {
                return Err(ConfigError::new(
                    format!("{at}.from"),
                    "must be an http(s) URL with a host",
                ));
            }
            if from.path() != "/" || r.from.ends_with('/') || from.query().is_some() {
                return Err(ConfigError::new(
                    format!("{at}.from"),
                    "must be scheme + authority only (put the path in `prefix`)",
                ));
            }
            if !r.prefix.is_empty() && !r.prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{at}.prefix"),
                    "must start with '/'",
                ));
            }
            // The filter matches on the parsed resource: refuse here what it would refuse.
            warden_core::url::ResourceUrl::parse(&r.resource())
                .map_err(|m| ConfigError::new(format!("{at}.prefix"), m))?;
            if !resources.insert(r.resource()) {
                return Err(ConfigError::new(
                    format!("{at}.prefix"),
                    "another route already has this resource (from + prefix)",
                ));
            }
            match &r.policy {
                None => {
                    return Err(ConfigError::new(
                        format!("{at}.policy"),
                        "required: a route needs a policy (`allow: {and: [{authenticated_user: true}]}` admits every signed-in user)",
                    ))
                }
                Some(doc) => {
                    warden_core::policy::Policy::compile(doc, &format!("{at}.policy"))
                        .map_err(|e| ConfigError::new(e.path, e.message))?;
                }
            }
            if let Some(max) = r.server().and_then(|s| s.max_request_bytes) {
                if max == 0 || max > warden_core::config::MAX_MAX_REQUEST_BYTES {
                    return Err(ConfigError::new(
                        format!("{at}.mcp.server.max_request_bytes"),
                        format!(
                            "must be between 1 and {}",
                            warden_core::config::MAX_MAX_REQUEST_BYTES
                        ),
                    ));
                }
            }
            let to = warden_core::url::ResourceUrl::parse(&r.to)
                .map_err(|m| ConfigError::new(format!("{at}.to"), m))?;
            if to.scheme != "http" {
                return Err(ConfigError::new(
                    format!("{at}.to"),
                    "only http upstreams are supported so far (TLS to upstreams is not built yet)",
                ));
            }
            if let Some((field, addr)) = self.listener_behind(&r.to) {
                return Err(ConfigError::new(
                    format!("{at}.to"),
                    format!("points at {field} ({addr}): an upstream cannot be one of this deployment's own listeners"),
                ));
            }
            for (j, s) in r.scopes.iter().enumerate() {
                if s.is_empty() || !s.bytes().all(is_scope_char) {
                    return Err(ConfigError::new(
                        format!("{at}.scopes[{j}]"),
                        "not a valid scope token",
                    ));
                }
            }
            if let Some(u) = r.upstream_oauth2() {
                u.validate(&format!("{at}.mcp.server.upstream_oauth2"))?;
            }
            if let Some(d) = r.discovered_upstream_oauth2() {
                validate_discovered(d, &format!("{at}.mcp.server.upstream_oauth2"))?;
            }
        }
        if self.uses_upstream_discovery() {
            let Some(d) = &self.upstream_discovery else {
                return Err(ConfigError::new(
                    "upstream_discovery",
                    "required when a route has upstream_oauth2.discover (allowed_authorization_servers names the authorization servers discovery may find)",
                ));
            };
            d.validate(validate_provider_url)
                .map_err(|(f, m)| ConfigError::new(format!("upstream_discovery.{f}"), m))?;
        }
        Ok(())
    }

    /// Every socket the deployment binds, with the field that sets it. A new listener is one
    /// line here, and is then checked against all the others.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![
            ("envoy.listen", self.envoy.listen),
            ("envoy.admin", self.envoy.admin),
            (
                "authorization_server.listen",
                self.authorization_server.listen,
            ),
            (
                "authorization_server.internal_listen",
                self.authorization_server.internal_listen,
            ),
        ]
    }

    /// The listener an upstream URL would reach, when its host is an address (or
    /// `localhost`) that one of ours serves: a route to it would loop through Envoy or
    /// expose the token service or Envoy's admin interface as an MCP server.
    fn listener_behind(&self, upstream: &str) -> Option<(&'static str, SocketAddr)> {
        let url = Url::parse(upstream).ok()?;
        let port = url.port_or_known_default()?;
        let ips: Vec<std::net::IpAddr> = match url.host()? {
            url::Host::Ipv4(ip) => vec![ip.into()],
            url::Host::Ipv6(ip) => vec![ip.into()],
            url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            url::Host::Domain(_) => return None,
        };
        self.listeners().into_iter().find(|(_, l)| {
            l.port() == port
                && ips.iter().any(|ip| {
                    let (ip, lip) = (ip.to_canonical(), l.ip().to_canonical());
                    ip == lip || (lip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
                })
        })
    }

    /// Two listeners on one address cannot both start (the second fails to bind, or worse,
    /// one answers for the other), so each needs its own.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let listeners = self.listeners();
        for (i, (field, addr)) in listeners.iter().enumerate() {
            if let Some((other, other_addr)) = listeners[..i]
                .iter()
                .find(|(_, a)| addresses_collide(*a, *addr))
            {
                return Err(ConfigError::new(
                    *field,
                    format!(
                        "{addr} collides with {other} ({other_addr}): every listener needs its own address and port"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `kubernetes`: the block's own rules, and the replicas the storage allows.
    fn validate_identity_assertion_grant(&self) -> Result<(), ConfigError> {
        const AT: &str = "authorization_server.identity_assertion_grant";
        let mut seen = BTreeSet::new();
        for (i, issuer) in self
            .authorization_server
            .identity_assertion_grant
            .issuers
            .iter()
            .enumerate()
        {
            let at = format!("{AT}.issuers[{i}]");
            validate_provider_url(&issuer.issuer)
                .map_err(|m| ConfigError::new(format!("{at}.issuer"), m))?;
            if issuer.issuer.contains('#') {
                return Err(ConfigError::new(
                    format!("{at}.issuer"),
                    "must not contain '#' (users are keyed {issuer}#{sub})",
                ));
            }
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(ConfigError::new(format!("{at}.issuer"), "duplicate issuer"));
            }
            if let Some(u) = &issuer.jwks_uri {
                validate_provider_url(u)
                    .map_err(|m| ConfigError::new(format!("{at}.jwks_uri"), m))?;
            }
            if issuer.groups_claim.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.groups_claim"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }

    fn validate_kubernetes(&self) -> Result<(), ConfigError> {
        let Some(k) = &self.kubernetes else {
            return Ok(());
        };
        k.validate()
            .map_err(|(field, m)| ConfigError::new(format!("kubernetes.{field}"), m))?;
        let t = &k.token_service;
        match self.storage.backend() {
            StorageBackend::Sqlite(_) => {
                if t.replicas > 1 {
                    return Err(ConfigError::new(
                        "kubernetes.token_service.replicas",
                        "more than 1 needs storage.postgres: SQLite is one process's database",
                    ));
                }
                if t.sqlite_claim.is_none() {
                    return Err(ConfigError::new(
                        "kubernetes.token_service.sqlite_claim",
                        "required with SQLite storage: the PersistentVolumeClaim the database lives on",
                    ));
                }
            }
            StorageBackend::Postgres(_) => {
                if t.sqlite_claim.is_some() {
                    return Err(ConfigError::new(
                        "kubernetes.token_service.sqlite_claim",
                        "is for SQLite storage; storage.postgres needs no volume",
                    ));
                }
            }
        }
        let internal = self.authorization_server.internal_listen.port();
        if t.port == internal {
            return Err(ConfigError::new(
                "kubernetes.token_service.port",
                format!("must differ from the internal listener's port ({internal}): the Service has both"),
            ));
        }
        Ok(())
    }

    /// How many Argon2 checks may run at once: configured, or the CPUs (at most 4).
    pub fn password_check_concurrency(&self) -> usize {
        self.authorization_server
            .max_concurrent_password_checks
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(4)
            })
    }

    /// `storage`: one backend, and with PostgreSQL every file the replicas must share named
    /// (they default next to the SQLite file, which a PostgreSQL deployment has none of).
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        let Some(pg) = &s.postgres else {
            if s.sqlite.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::new("storage.sqlite", "must not be empty"));
            }
            return Ok(());
        };
        if s.sqlite.is_some() {
            return Err(ConfigError::new(
                "storage.postgres",
                "give storage.sqlite or storage.postgres, not both",
            ));
        }
        pg.validate()?;
        let shared = "required with storage.postgres: every replica must use the same file";
        // The signing keys are sealed with it, so every deployment needs it. (The signing key
        // file is only an import source: the keys live in the store.)
        if s.encryption_key_file.is_none() {
            return Err(ConfigError::new("storage.encryption_key_file", shared));
        }
        if self.uses_internal_listener()
            && self.authorization_server.internal_credential_file.is_none()
        {
            return Err(ConfigError::new(
                "authorization_server.internal_credential_file",
                shared,
            ));
        }
        Ok(())
    }

    /// A file next to the SQLite database (the default home of generated secrets; with
    /// PostgreSQL, validation requires these files to be named).
    fn beside_database(&self, name: &str) -> PathBuf {
        let db = match self.storage.backend() {
            StorageBackend::Sqlite(path) => path,
            StorageBackend::Postgres(_) => Path::new(DEFAULT_SQLITE),
        };
        db.parent()
            .map(|d| d.join(name))
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Where the key for upstream tokens at rest lives: configured, or next to the database.
    pub fn encryption_key_file(&self) -> PathBuf {
        self.storage
            .encryption_key_file
            .clone()
            .unwrap_or_else(|| self.beside_database("encryption-key"))
    }

    /// Reads `storage.previous_encryption_key_files`, in order. Each must hold a key, none
    /// twice, and none may be `current` (the key in `encryption_key_file`, when it exists).
    pub(crate) fn previous_encryption_keys(
        &self,
        current: Option<&[u8; crate::secrets::SECRET_BYTES]>,
    ) -> Result<Vec<[u8; crate::secrets::SECRET_BYTES]>, ConfigError> {
        let mut keys: Vec<[u8; crate::secrets::SECRET_BYTES]> = Vec::new();
        for (i, path) in self
            .storage
            .previous_encryption_key_files
            .iter()
            .enumerate()
        {
            let at = format!("storage.previous_encryption_key_files[{i}]");
            if path.as_os_str().is_empty() {
                return Err(ConfigError::new(at, "must not be empty"));
            }
            let key = crate::secrets::read_existing(path).map_err(|m| ConfigError::new(&at, m))?;
            if current == Some(&key) {
                return Err(ConfigError::new(
                    at,
                    "holds the current key (storage.encryption_key_file); list only keys it replaced",
                ));
            }
            if let Some(j) = keys.iter().position(|k| *k == key) {
                return Err(ConfigError::new(
                    at,
                    format!("holds the same key as storage.previous_encryption_key_files[{j}]"),
                ));
            }
            keys.push(key);
        }
        Ok(keys)
    }

    /// Where the filter's credential for the internal listener lives.
    pub fn internal_credential_file(&self) -> PathBuf {
        self.authorization_server
            .internal_credential_file
            .clone()
            .unwrap_or_else(|| self.beside_database("internal-credential"))
    }

    /// Whether any route discovers its upstream's OAuth (`upstream_oauth2.discover`).
    pub fn uses_upstream_discovery(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.discovered_upstream_oauth2().is_some())
    }

    /// Whether any route needs tokens from an upstream provider.
    pub fn uses_upstream_oauth(&self) -> bool {
        self.routes.iter().any(|r| r.upstream_oauth2().is_some())
    }

    /// The MCP server routes.
    pub fn server_routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.routes.iter().filter(|r| r.server().is_some())
    }

    /// The `mcp: client` routes (web apps).
    pub fn client_routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.routes.iter().filter(|r| r.is_client())
    }

    /// Whether any route is an `mcp: client` route.
    pub fn uses_client_routes(&self) -> bool {
        self.client_routes().next().is_some()
    }

    /// The client route named `name`.
    pub fn client_route(&self, name: &str) -> Option<&RouteConfig> {
        self.client_routes().find(|r| r.name == name)
    }

    /// Whether any route passes identity headers (the identity assertion).
    pub fn uses_identity_assertions(&self) -> bool {
        self.routes.iter().any(|r| r.pass_identity_headers)
    }

    /// Whether the filter needs the internal listener: always, for the revocation feed
    /// (and for upstream tokens, identity assertions, the app sessions of `mcp: client`
    /// routes, and `telemetry.metrics`' `/metrics`). Bound, rendered (cluster and credential)
    /// and given a credential file then.
    pub fn uses_internal_listener(&self) -> bool {
        true
    }

    /// Until when a revocation made `at` must be kept in the feed: every TE issued before it
    /// has expired by then, with the leeway the filter allows.
    pub fn revocation_expires_at(&self, at: i64) -> i64 {
        let ttl = i64::try_from(self.authorization_server.access_token_ttl_seconds)
            .unwrap_or(i64::MAX / 4);
        at.saturating_add(ttl)
            .saturating_add(i64::from(warden_core::config::DEFAULT_CLOCK_SKEW_SECONDS))
    }

    pub fn route_by_name(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Where the signing key lives: configured, or next to the SQLite database.
    pub fn signing_key_file(&self) -> PathBuf {
        match self
            .authorization_server
            .signing_key
            .as_ref()
            .and_then(|k| k.file.clone())
        {
            Some(f) => f,
            None => self.beside_database("signing-key.json"),
        }
    }

    /// How long a rotated-in key is published before it signs (see `SigningKeyConfig`).
    pub fn rotation_publish_seconds(&self) -> u64 {
        self.authorization_server
            .signing_key
            .as_ref()
            .and_then(|k| k.rotation_publish_seconds)
            .unwrap_or(2 * u64::from(self.envoy.jwks_refresh_seconds))
    }

    pub fn signing_alg(&self) -> SigningAlg {
        self.authorization_server
            .signing_key
            .as_ref()
            .map(|k| k.alg)
            .unwrap_or_default()
    }

    /// Union of all route scopes, sorted, for `scopes_supported`.
    pub fn scopes_supported(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .server_routes()
            .flat_map(|r| r.scopes.iter().map(String::as_str))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// `grant_types_supported`: the code and refresh grants, client_credentials when some
    /// client may use it, and the jwt-bearer grant when ID-JAG issuers are configured.
    pub fn grant_types_supported(&self) -> Vec<&'static str> {
        let mut grants = vec!["authorization_code", "refresh_token"];
        if self
            .clients
            .iter()
            .any(|c| c.allows_grant("client_credentials"))
        {
            grants.push("client_credentials");
        }
        if self.authorization_server.identity_assertion_grant.enabled() {
            grants.push(JWT_BEARER_GRANT);
        }
        grants
    }

    /// The MCP server route whose resource is `resource` (client routes are no resources).
    pub fn route_by_resource(&self, resource: &str) -> Option<&RouteConfig> {
        self.server_routes().find(|r| r.resource() == resource)
    }

    pub fn user(&self, email: &str) -> Option<&LocalUser> {
        self.identity_provider
            .local
            .users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(email))
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

/// Whether binding `a` and `b` at once would fail: same port, and the same address or a
/// wildcard on either side (a wildcard takes the port on every address; on Linux `[::]`
/// takes IPv4 too). Port 0 asks the kernel for a free port and never collides.
fn addresses_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    ia == ib || ia.is_unspecified() || ib.is_unspecified()
}

/// Route names reach Envoy's config, logs and the RFC 9728 `resource_name`: they must read
/// the same to people as to machines.
fn validate_route_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace".into());
    }
    // Spaces are fine inside a name; other whitespace, control and invisible characters are not.
    if name
        .chars()
        .any(|c| c != ' ' && warden_core::names::is_invisible(c))
    {
        return Err("must not contain control or invisible characters".into());
    }
    Ok(())
}

/// Every sign-in runs one password check, and a few run at once: a hash whose cost parameters
/// are out of bounds would break the service's memory and time budget (or its availability).
fn check_hash_cost(hash: &argon2::PasswordHash<'_>) -> Result<(), String> {
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "algorithm {} is not accepted: use argon2id (`warden-token-service hash-password`)",
            hash.algorithm
        ));
    }
    let params =
        argon2::Params::try_from(hash).map_err(|e| format!("bad Argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_HASH_MEMORY_KIB || params.t_cost() > 10 || params.p_cost() > 4 {
        return Err(format!(
            "Argon2 cost too high (m={}, t={}, p={}): at most m={MAX_HASH_MEMORY_KIB} (64 MiB), t=10, p=4",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// Largest Argon2 memory cost accepted in a password hash, KiB.
const MAX_HASH_MEMORY_KIB: u32 = 64 * 1024;

/// RFC 6749 §3.3 scope-token characters.
pub fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

fn validate_issuer(issuer: &str) -> Result<(), String> {
    let url = Url::parse(issuer).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if crate::redirect_uri::is_loopback_host(&url) => {}
        "http" => return Err("must be https (http is allowed only on loopback)".into()),
        _ => return Err("must be an https URL".into()),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment (RFC 8414)".into());
    }
    if issuer.ends_with('/') {
        return Err("must not end with '/' (clients compare it byte for byte)".into());
    }
    Ok(())
}

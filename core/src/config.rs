//! The filter's plugin configuration (Envoy `configuration`, Istio `pluginConfig`): a versioned
//! JSON interface of its own. It is parsed strictly and compiled once; any error names the field.

use serde::{Deserialize, Serialize};

use crate::keys::KeySet;
use crate::revocation::FeedRules;
use crate::token::TokenRules;
use crate::url::ResourceUrl;

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Interface version; only `1` exists.
    pub version: u32,
    /// The token service's issuer URL: TEs must carry exactly this `iss`.
    pub issuer: String,
    /// Where to fetch the token service's JWKS. Either this or `jwks_static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksFetch>,
    /// A JWKS document given inline (air-gapped setups, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_static: Option<serde_json::Value>,
    /// Allowed clock difference for `exp` / `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub clock_skew_seconds: u32,
    /// Verified tokens kept per worker.
    #[serde(default = "default_cache_entries")]
    pub token_cache_entries: u32,
    /// Signature checks that may fail per second per worker (each client address at most a
    /// quarter of them); past it, tokens not already verified are refused unchecked.
    #[serde(
        default = "default_failed_signature_checks",
        skip_serializing_if = "is_default_failed_signature_checks"
    )]
    pub failed_signature_checks_per_second: u32,
    /// The duration histogram samples about one request in this many per worker, at random
    /// gaps (1: every one), whatever the log level. A sample costs two clock reads and a
    /// histogram record: three of the seven host calls a sampled warm call makes. The request
    /// counters count every request.
    #[serde(
        default = "default_duration_sample_every",
        skip_serializing_if = "is_default_duration_sample_every"
    )]
    pub duration_sample_every: u32,
    /// Publish each authorize record as Envoy filter state `wasm.mcp_warden.authorize`, for an
    /// access log that prints it. Off, the record is rendered only when Envoy's `wasm` log
    /// level shows info lines: a record nobody reads costs nothing.
    #[serde(default)]
    pub authorize_filter_state: bool,
    /// Publish each judged call's method, tool, route and decision as Envoy filter state
    /// (`trace_context::SPAN_TAGS`), for the tracer's `custom_tags`. `render-envoy` sets it
    /// when `telemetry.otlp_endpoint` is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub span_tags: bool,
    /// A request header Envoy sets on every route of the listener (overwriting any value a
    /// client sent) to the route's name, `mcp-warden:<route>` on the filter's routes: the
    /// filter then reads Envoy's routing decision from the headers it reads anyway, instead of
    /// the `xds.route_name` property (a host call that costs more than the rest of the warm
    /// path). Only set it when Envoy really sets the header on every route (`render-envoy`
    /// does, with the `header_mutation` filter); absent, the property is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_header: Option<String>,
    /// Where the filter asks for users' upstream tokens (TI) on routes with `upstream_oauth`,
    /// and for identity assertions on routes with `pass_identity_headers`: the token service's
    /// internal listener. Required when any route has either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_service: Option<TokenServiceConfig>,
    /// The revocation feed, polled from `token_service` (off without one).
    #[serde(default)]
    pub revocation: FeedRules,
    pub routes: Vec<RouteConfig>,
}

/// The token service's internal API (`/internal/v1/...`), reached through an Envoy cluster.
/// The credential calls are signed with comes from Envoy's environment
/// (`internal_api::CREDENTIAL_ENV`), never from here: Envoy's admin `/config_dump` shows this.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConfig {
    /// Envoy cluster that reaches the internal listener.
    pub cluster: String,
    /// `:authority` sent with each call.
    pub authority: String,
    /// Refused when present (it was accepted before): named here so the error says why.
    #[serde(default, skip_serializing)]
    pub credential: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

impl std::fmt::Debug for TokenServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServiceConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksFetch {
    /// Envoy cluster that reaches the token service.
    pub cluster: String,
    /// `:authority` sent with the fetch.
    pub authority: String,
    #[serde(default = "default_jwks_path")]
    pub path: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// Periodic refresh, seconds; unknown `kid`s also trigger a (rate-limited) refetch.
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// `server` (an MCP server, the default) or `client` (a web app whose browser users sign
    /// in with a cookie and whose backend receives their TE). A client route takes only
    /// `name`, `resource`, `policy` and `pass_identity_headers`.
    #[serde(default, skip_serializing_if = "RouteKind::is_server")]
    pub kind: RouteKind,
    /// The URL clients use for this MCP server, byte for byte (RFC 8707 resource, TE `aud`).
    /// Requests are matched on its authority and path prefix.
    pub resource: String,
    /// Human-readable name for RFC 9728 `resource_name`; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// Scopes advertised in metadata and in `WWW-Authenticate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Browser origins allowed besides the resource's own (DNS-rebinding protection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// PPL policy (one rule or a list). Required: an MCP route without one would be either
    /// open or shut by accident.
    pub policy: serde_json::Value,
    /// Largest POST body inspected; bigger bodies are refused with 413, never passed unread.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u32,
    /// `forbidden` (HTTP 403) or `jsonrpc_200` (HTTP 200 + JSON-RPC -32602, as Pomerium does).
    #[serde(default)]
    pub deny_response: DenyStyle,
    /// Filter `tools/list` results down to the tools the caller may call (when the policy has
    /// tool rules).
    #[serde(default = "default_true")]
    pub filter_tools_list: bool,
    /// Put `params.arguments` of tool calls in the authorize log.
    #[serde(default)]
    pub log_tool_parameters: bool,
    /// Argument keys (at any depth) whose values the log shows as `[redacted]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_parameters: Vec<String>,
    /// The MCP server wants the user's own token from an upstream OAuth provider (TI): the
    /// filter gets it from `token_service` and sends it as `Authorization: Bearer <TI>`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub upstream_oauth: bool,
    /// Add `X-Warden-Jwt-Assertion` (the user's identity, signed by the token service) to
    /// requests forwarded on this route; the filter gets it from `token_service`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pass_identity_headers: bool,
    /// The headers the assertion goes in (`x-warden-jwt-assertion`, Pomerium's
    /// `x-pomerium-jwt-assertion`, or both), so servers migrating from the reference work as
    /// they are.
    #[serde(
        default = "default_identity_header_names",
        skip_serializing_if = "is_default_identity_header_names"
    )]
    pub identity_header_names: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn default_identity_header_names() -> Vec<String> {
    vec![crate::internal_api::ASSERTION_HEADER.to_string()]
}

fn is_default_identity_header_names(names: &[String]) -> bool {
    names == [crate::internal_api::ASSERTION_HEADER]
}

/// What a route fronts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// An MCP server: bearer TEs, MCP inspection.
    #[default]
    Server,
    /// An MCP-enabled web app (`mcp: client`): browser sign-in with a cookie, the user's TE
    /// sent to the app.
    Client,
}

impl RouteKind {
    pub fn is_server(&self) -> bool {
        *self == RouteKind::Server
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyStyle {
    #[default]
    Forbidden,
    #[serde(rename = "jsonrpc_200")]
    JsonRpc200,
}

/// Default inspection limit: 1 MiB (Envoy's default per-connection buffer).
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 1024 * 1024;
/// Upper bound for `max_request_bytes`: bodies are held in the worker's memory.
pub const MAX_MAX_REQUEST_BYTES: u32 = 16 * 1024 * 1024;

fn default_max_request_bytes() -> u32 {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_true() -> bool {
    true
}

/// The leeway `render-envoy` gives the filter: a revocation must outlive it (a TE is usable
/// until `exp` + this).
pub const DEFAULT_CLOCK_SKEW_SECONDS: u32 = 30;

fn default_leeway() -> u32 {
    DEFAULT_CLOCK_SKEW_SECONDS
}
fn default_cache_entries() -> u32 {
    10_000
}
pub const DEFAULT_FAILED_SIGNATURE_CHECKS: u32 = 32;
/// One request in 16 is sampled: a few hundred samples a minute per worker at a modest load,
/// for a sixteenth of the timing's host calls.
pub const DEFAULT_DURATION_SAMPLE_EVERY: u32 = 16;
pub const MAX_DURATION_SAMPLE_EVERY: u32 = 65_536;
fn default_failed_signature_checks() -> u32 {
    DEFAULT_FAILED_SIGNATURE_CHECKS
}
fn is_default_failed_signature_checks(n: &u32) -> bool {
    *n == DEFAULT_FAILED_SIGNATURE_CHECKS
}
fn default_duration_sample_every() -> u32 {
    DEFAULT_DURATION_SAMPLE_EVERY
}
fn is_default_duration_sample_every(n: &u32) -> bool {
    *n == DEFAULT_DURATION_SAMPLE_EVERY
}
fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}
fn default_timeout_ms() -> u32 {
    2_000
}
fn default_refresh_seconds() -> u32 {
    300
}

/// A configuration error with the path of the offending field (`routes[1].resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid plugin configuration: {}: {}",
            self.path, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// A route ready for matching, with everything derived from its config precomputed.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// `Server` (MCP) or `Client` (web app behind browser sign-in).
    pub kind: RouteKind,
    /// The app session cookie's name on a client route (`warden_app_<hash8>`, with `__Host-`
    /// in front on an https resource).
    pub cookie_name: String,
    pub resource: String,
    pub url: ResourceUrl,
    pub resource_name: String,
    pub scopes: Vec<String>,
    pub allowed_origins: Vec<String>,
    /// `https://host/.well-known/oauth-protected-resource/<path>` (RFC 9728 path-inserted form).
    pub metadata_url: String,
    /// The `WWW-Authenticate` value for a request without credentials.
    pub challenge: String,
    /// The `WWW-Authenticate` value for a request with a bad token.
    pub challenge_invalid_token: String,
    /// The RFC 9728 document, serialized once.
    pub metadata_document: String,
    pub policy: crate::policy::Policy,
    pub max_request_bytes: usize,
    pub deny_style: DenyStyle,
    pub filter_tools_list: bool,
    pub log_tool_parameters: bool,
    pub redact_parameters: Vec<String>,
    /// Requests carry the user's upstream token (TI) from the token service.
    pub upstream_oauth: bool,
    /// Requests carry the user's identity assertion from the token service.
    pub pass_identity_headers: bool,
    /// The request headers the assertion is set in.
    pub identity_headers: Vec<&'static str>,
}

/// The compiled configuration the filter works from.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    pub rules: TokenRules,
    pub jwks: Option<JwksFetch>,
    pub static_keys: Option<KeySet>,
    pub token_cache_entries: usize,
    pub failed_signature_checks_per_second: u32,
    pub duration_sample_every: u32,
    pub authorize_filter_state: bool,
    pub span_tags: bool,
    pub route_header: Option<String>,
    /// Where upstream tokens and identity assertions come from (present when a route has
    /// `upstream_oauth` or `pass_identity_headers`).
    pub token_service: Option<TokenService>,
    /// The revocation feed's rules; the feed runs when `token_service` is set.
    pub revocation: FeedRules,
    pub routes: Vec<Route>,
}

/// The token service's internal API, ready for call-outs (signed with the key the filter
/// reads from `internal_api::CREDENTIAL_ENV`).
#[derive(Debug, Clone)]
pub struct TokenService {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u32,
}

impl CompiledConfig {
    /// Parses and validates plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: PluginConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // An unknown field named "" ends the path in nothing: name its object instead.
            let path = e.path().to_string();
            let path = match path.trim_end_matches('.') {
                "" => "(root)".to_string(),
                p => p.to_string(),
            };
            err(path, e.into_inner().to_string())
        })?;
        // One document: anything after it is an error, not ignored.
        de.end().map_err(|e| err("(root)", e.to_string()))?;
        compile(raw)
    }

    /// The client route named `name` that serves `authority` (the app sign-in callback).
    pub fn client_route(&self, name: &str, authority: &str) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| {
            r.kind == RouteKind::Client && r.name == name && r.url.matches_host(authority)
        })
    }

    /// Whether some client route serves `authority`.
    pub fn has_client_route_on(&self, authority: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.kind == RouteKind::Client && r.url.matches_host(authority))
    }

    /// The route a request belongs to: same authority, path under the resource's prefix.
    /// The longest prefix wins so `/mcp/admin` can be a route of its own beside `/mcp`.
    pub fn route_for(&self, authority: &str, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.url.matches_host(authority) && r.url.covers_path(path))
            .max_by_key(|(_, r)| r.url.path.len())
    }

    /// The route Envoy's router chose, when its name marks it as ours (`mcp-warden:<name>`).
    pub fn route_named(&self, envoy_route_name: &str) -> Option<(usize, &Route)> {
        let name = envoy_route_name.strip_prefix(ENVOY_ROUTE_PREFIX)?;
        self.routes.iter().enumerate().find(|(_, r)| r.name == name)
    }

    /// The route whose RFC 9728 metadata a `/.well-known/oauth-protected-resource[/path]`
    /// request asks for. The root form names the route at the root, or the only route on the host.
    pub fn metadata_route(&self, authority: &str, path: &str) -> Option<&Route> {
        let rest = path.strip_prefix(WELL_KNOWN_PRM)?;
        let on_host = || {
            self.routes
                .iter()
                .filter(move |r| r.kind == RouteKind::Server && r.url.authority == authority)
        };
        if rest.is_empty() || rest == "/" {
            let mut candidates = on_host();
            if let Some(root) = on_host().find(|r| r.url.path.is_empty()) {
                return Some(root);
            }
            let first = candidates.next()?;
            return candidates.next().is_none().then_some(first);
        }
        on_host().find(|r| r.url.path == rest)
    }
}

pub const WELL_KNOWN_PRM: &str = "/.well-known/oauth-protected-resource";
/// Envoy route names with this prefix name a warden route; the filter then follows Envoy's
/// routing decision instead of matching the request itself (they can never disagree).
pub const ENVOY_ROUTE_PREFIX: &str = "mcp-warden:";

/// Request headers the filter reads for what they say; none of them can carry the route.
const READ_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "origin",
    "access-control-request-method",
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "x-request-id",
    "cookie",
    crate::internal_api::CLIENT_ASSERTION_HEADERS[0],
    crate::internal_api::CLIENT_ASSERTION_HEADERS[1],
    crate::internal_api::CLIENT_ASSERTION_HEADERS[2],
];

/// The request header `render-envoy` has Envoy set to the route's name (`route_header`).
pub const ROUTE_HEADER: &str = "x-mcp-warden-route";

/// The first server-only field a client route sets to anything but its default. Defaults are
/// allowed so that a `RouteConfig` serialized whole (`render-envoy`) is a valid client route.
fn server_only_field(r: &RouteConfig) -> Option<&'static str> {
    [
        ("resource_name", r.resource_name.is_some()),
        ("scopes", !r.scopes.is_empty()),
        ("allowed_origins", !r.allowed_origins.is_empty()),
        (
            "max_request_bytes",
            r.max_request_bytes != DEFAULT_MAX_REQUEST_BYTES,
        ),
        ("deny_response", r.deny_response != DenyStyle::default()),
        ("filter_tools_list", !r.filter_tools_list),
        ("log_tool_parameters", r.log_tool_parameters),
        ("redact_parameters", !r.redact_parameters.is_empty()),
        ("upstream_oauth", r.upstream_oauth),
    ]
    .into_iter()
    .find(|(_, set)| *set)
    .map(|(field, _)| field)
}

fn compile(raw: PluginConfig) -> Result<CompiledConfig, ConfigError> {
    let route_header = match &raw.route_header {
        None => None,
        Some(h) if READ_HEADERS.contains(&h.as_str()) => {
            return Err(err(
                "route_header",
                format!("{h:?} is a header the filter reads for itself; name another"),
            ))
        }
        Some(h)
            if !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Some(h.clone())
        }
        Some(_) => {
            return Err(err(
                "route_header",
                "must be a lower-case header name (letters, digits, '-')",
            ))
        }
    };
    if raw.version != CONFIG_VERSION {
        return Err(err(
            "version",
            format!(
                "unsupported version {}, expected {CONFIG_VERSION}",
                raw.version
            ),
        ));
    }
    ResourceUrl::parse(&raw.issuer).map_err(|m| err("issuer", m))?;
    let static_keys = match (&raw.jwks, &raw.jwks_static) {
        (Some(_), Some(_)) => {
            return Err(err(
                "jwks_static",
                "set either jwks or jwks_static, not both",
            ))
        }
        (None, None) => return Err(err("jwks", "missing: set jwks (fetch) or jwks_static")),
        (None, Some(doc)) => {
            Some(KeySet::from_jwks(doc.to_string().as_bytes()).map_err(|m| err("jwks_static", m))?)
        }
        (Some(fetch), None) => {
            if fetch.cluster.is_empty() {
                return Err(err("jwks.cluster", "must not be empty"));
            }
            if fetch.authority.is_empty() {
                return Err(err("jwks.authority", "must not be empty"));
            }
            if !fetch.path.starts_with('/') {
                return Err(err("jwks.path", "must start with '/'"));
            }
            if fetch.timeout_ms == 0 {
                // Envoy reads 0 as "no timeout": a stalled fetch would hold requests forever.
                return Err(err("jwks.timeout_ms", "must be at least 1"));
            }
            if fetch.refresh_seconds == 0 {
                return Err(err("jwks.refresh_seconds", "must be at least 1"));
            }
            None
        }
    };
    let token_service = match &raw.token_service {
        None => None,
        Some(ts) => {
            if ts.cluster.is_empty() {
                return Err(err("token_service.cluster", "must not be empty"));
            }
            if ts.authority.is_empty() {
                return Err(err("token_service.authority", "must not be empty"));
            }
            if ts.credential.is_some() {
                // The message never shows the value.
                return Err(err(
                    "token_service.credential",
                    format!("not accepted in the plugin configuration (Envoy's admin interface shows it): set {} in Envoy's environment instead", crate::internal_api::CREDENTIAL_ENV),
                ));
            }
            if ts.timeout_ms == 0 {
                // Envoy reads 0 as "no timeout": a stalled call would hold requests forever.
                return Err(err("token_service.timeout_ms", "must be at least 1"));
            }
            Some(TokenService {
                cluster: ts.cluster.clone(),
                authority: ts.authority.clone(),
                timeout_ms: ts.timeout_ms,
            })
        }
    };
    raw.revocation
        .validate()
        .map_err(|(field, m)| err(format!("revocation.{field}"), m))?;
    if raw.clock_skew_seconds > 300 {
        return Err(err(
            "clock_skew_seconds",
            "at most 300: a larger leeway would disable exp checks",
        ));
    }
    if raw.routes.is_empty() {
        return Err(err("routes", "at least one route is required"));
    }
    if !(1..=10_000).contains(&raw.failed_signature_checks_per_second) {
        return Err(err(
            "failed_signature_checks_per_second",
            "must be between 1 and 10000",
        ));
    }
    if !(1..=MAX_DURATION_SAMPLE_EVERY).contains(&raw.duration_sample_every) {
        return Err(err(
            "duration_sample_every",
            format!("must be between 1 and {MAX_DURATION_SAMPLE_EVERY}"),
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        if r.name.is_empty() {
            return Err(err(at("name"), "must not be empty"));
        }
        let url = ResourceUrl::parse(&r.resource).map_err(|m| err(at("resource"), m))?;
        if routes.iter().any(|other| other.name == r.name) {
            return Err(err(
                at("name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        if routes.iter().any(|other| other.url == url) {
            return Err(err(
                at("resource"),
                format!("duplicate resource {:?}", r.resource),
            ));
        }
        for (j, scope) in r.scopes.iter().enumerate() {
            if scope.is_empty()
                || !scope
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                return Err(err(
                    at(&format!("scopes[{j}]")),
                    "scope tokens are printable ASCII without quotes",
                ));
            }
        }
        for (j, origin) in r.allowed_origins.iter().enumerate() {
            let parsed = ResourceUrl::parse(origin)
                .map_err(|m| err(at(&format!("allowed_origins[{j}]")), m))?;
            if !parsed.path.is_empty() {
                return Err(err(
                    at(&format!("allowed_origins[{j}]")),
                    "an origin has no path",
                ));
            }
        }
        let metadata_url = format!("{}{WELL_KNOWN_PRM}{}", url.origin(), url.path);
        let scope_param = if r.scopes.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{}\"", r.scopes.join(" "))
        };
        let challenge = format!("Bearer resource_metadata=\"{metadata_url}\"{scope_param}");
        let challenge_invalid_token = format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{metadata_url}\"{scope_param}"
        );
        let policy = crate::policy::Policy::compile(&r.policy, &at("policy"))
            .map_err(|e| err(e.path, e.message))?;
        if r.max_request_bytes == 0 || r.max_request_bytes > MAX_MAX_REQUEST_BYTES {
            return Err(err(
                at("max_request_bytes"),
                format!("must be between 1 and {MAX_MAX_REQUEST_BYTES}"),
            ));
        }
        if r.upstream_oauth && token_service.is_none() {
            return Err(err(
                at("upstream_oauth"),
                "needs token_service: the upstream token comes from the token service",
            ));
        }
        if r.kind == RouteKind::Client {
            if let Some(field) = server_only_field(&r) {
                return Err(err(
                    at(field),
                    "only server routes (kind \"server\") take this field; a client route has name, resource, policy and pass_identity_headers",
                ));
            }
        }
        if r.kind == RouteKind::Client && token_service.is_none() {
            return Err(err(
                at("kind"),
                "a client route needs token_service: app sessions and their TEs come from the token service",
            ));
        }
        if r.pass_identity_headers && token_service.is_none() {
            return Err(err(
                at("pass_identity_headers"),
                "needs token_service: the identity assertion comes from the token service",
            ));
        }
        let identity_headers = crate::internal_api::assertion_header_names(
            &r.identity_header_names,
        )
        .map_err(|(j, m)| match j {
            Some(j) => err(at(&format!("identity_header_names[{j}]")), m),
            None => err(at("identity_header_names"), m),
        })?;
        let resource_name = r.resource_name.clone().unwrap_or_else(|| r.name.clone());
        let metadata_document = serde_json::json!({
            "resource": r.resource,
            "authorization_servers": [raw.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": r.scopes,
            "resource_name": resource_name,
        })
        .to_string();
        // `__Host-` on https: the browser then takes the cookie only from this host (no
        // cookie tossing from a sibling subdomain). It needs Secure, which https cookies have.
        let cookie_name = if url.scheme == "https" {
            format!(
                "{}{}",
                crate::internal_api::HOST_PREFIX,
                crate::internal_api::app_cookie_name(&r.name)
            )
        } else {
            crate::internal_api::app_cookie_name(&r.name)
        };
        routes.push(Route {
            kind: r.kind,
            cookie_name,
            name: r.name,
            resource: r.resource,
            url,
            resource_name,
            scopes: r.scopes,
            allowed_origins: r
                .allowed_origins
                .iter()
                .map(|o| normalize_origin(o))
                .collect(),
            metadata_url,
            challenge,
            challenge_invalid_token,
            metadata_document,
            policy,
            max_request_bytes: r.max_request_bytes as usize,
            deny_style: r.deny_response,
            filter_tools_list: r.filter_tools_list,
            log_tool_parameters: r.log_tool_parameters,
            redact_parameters: r.redact_parameters,
            upstream_oauth: r.upstream_oauth,
            pass_identity_headers: r.pass_identity_headers,
            identity_headers,
        });
    }
    Ok(CompiledConfig {
        rules: TokenRules {
            issuer: raw.issuer,
            leeway_seconds: i64::from(raw.clock_skew_seconds),
        },
        jwks: raw.jwks,
        static_keys,
        token_cache_entries: raw.token_cache_entries as usize,
        failed_signature_checks_per_second: raw.failed_signature_checks_per_second,
        duration_sample_every: raw.duration_sample_every,
        authorize_filter_state: raw.authorize_filter_state,
        span_tags: raw.span_tags,
        route_header,
        token_service,
        revocation: raw.revocation,
        routes,
    })
}

/// Origins compare after the same normalization as authorities (case, default port).
pub fn normalize_origin(origin: &str) -> String {
    match origin.split_once("://") {
        Some((scheme, authority)) => format!(
            "{scheme}://{}",
            crate::url::normalize_authority(scheme, authority)
        ),
        None => origin.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "issuer": "http://127.0.0.1:9100",
            "jwks": {"cluster": "warden_token_service", "authority": "127.0.0.1:9100"},
            "routes": [
                {"name": "demo", "resource": "http://127.0.0.1:9000/mcp", "scopes": ["mcp"], "policy": {"allow": {"and": [{"authenticated_user": true}]}}},
                {"name": "admin", "resource": "http://127.0.0.1:9000/mcp/admin", "policy": {"allow": {"and": [{"groups": {"has": "admins"}}]}}}
            ]
        })
    }

    fn load(v: serde_json::Value) -> Result<CompiledConfig, ConfigError> {
        CompiledConfig::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn bytes_after_the_document_are_refused() {
        // Found by the fuzz target `plugin_config`: `{...}"oc` compiled, the rest ignored.
        for tail in ["\"oc", "{}", "x", "]"] {
            let doc = format!("{}{tail}", sample());
            let e = CompiledConfig::from_json(doc.as_bytes()).unwrap_err();
            assert_eq!(e.path, "(root)", "{tail}");
            assert!(e.message.contains("trailing characters"), "{e}");
        }
        let spaced = format!(" {} \n", sample());
        assert!(CompiledConfig::from_json(spaced.as_bytes()).is_ok());
    }

    #[test]
    fn an_unknown_field_with_an_empty_name_still_names_a_field() {
        // Found by the fuzz target `plugin_config`: `{"": 1, ...}` was refused with path "".
        let e = CompiledConfig::from_json(br#"{"": 1, "version": 1}"#).unwrap_err();
        assert_eq!(e.path, "(root)");
        assert!(e.message.contains("unknown field"), "{e}");
        let mut doc = sample();
        doc["routes"][0][""] = 1.into();
        let e = CompiledConfig::from_json(doc.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.path, "routes[0]");
    }

    #[test]
    fn compiles_sample() {
        let c = load(sample()).unwrap();
        let demo = &c.routes[0];
        assert_eq!(
            demo.metadata_url,
            "http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            demo.challenge,
            "Bearer resource_metadata=\"http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\""
        );
        let doc: serde_json::Value = serde_json::from_str(&demo.metadata_document).unwrap();
        assert_eq!(doc["resource"], "http://127.0.0.1:9000/mcp");
        assert_eq!(doc["authorization_servers"][0], "http://127.0.0.1:9100");
        assert_eq!(doc["bearer_methods_supported"][0], "header");
        assert_eq!(c.jwks.as_ref().unwrap().path, "/.well-known/jwks.json");
        // Without `route_header`, Envoy's route is read from `xds.route_name`.
        assert_eq!(c.route_header, None);
        assert!(!c.authorize_filter_state);
        assert!(!c.span_tags);
        assert_eq!(c.duration_sample_every, DEFAULT_DURATION_SAMPLE_EVERY);
        let mut v = sample();
        v["duration_sample_every"] = 1.into();
        assert_eq!(load(v).unwrap().duration_sample_every, 1);
        let mut v = sample();
        v["route_header"] = ROUTE_HEADER.into();
        assert_eq!(load(v).unwrap().route_header.as_deref(), Some(ROUTE_HEADER));
    }

    #[test]
    fn matches_longest_prefix_and_metadata_forms() {
        let c = load(sample()).unwrap();
        assert_eq!(
            c.route_for("127.0.0.1:9000", "/mcp").unwrap().1.name,
            "demo"
        );
        assert_eq!(
            c.route_for("127.0.0.1:9000", "/mcp/admin/x")
                .unwrap()
                .1
                .name,
            "admin"
        );
        assert!(c.route_for("127.0.0.1:9000", "/other").is_none());
        assert!(c.route_for("evil:9000", "/mcp").is_none());
        let prm = |p: &str| {
            c.metadata_route("127.0.0.1:9000", p)
                .map(|r| r.name.clone())
        };
        assert_eq!(
            prm("/.well-known/oauth-protected-resource/mcp").as_deref(),
            Some("demo")
        );
        assert_eq!(
            prm("/.well-known/oauth-protected-resource/mcp/admin").as_deref(),
            Some("admin")
        );
        // Two routes on the host and none at the root: the root form is ambiguous.
        assert_eq!(prm("/.well-known/oauth-protected-resource"), None);
        assert_eq!(prm("/.well-known/oauth-protected-resource/nope"), None);
    }

    #[test]
    fn root_form_serves_single_route() {
        let mut v = sample();
        v["routes"].as_array_mut().unwrap().pop();
        let c = load(v).unwrap();
        assert_eq!(
            c.metadata_route("127.0.0.1:9000", "/.well-known/oauth-protected-resource")
                .unwrap()
                .name,
            "demo"
        );
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|v| v["version"] = 2.into()), "version"),
            (
                Box::new(|v| v["revocation"] = serde_json::json!({"poll_ms": 0})),
                "revocation.poll_ms",
            ),
            (
                Box::new(|v| v["revocation"] = serde_json::json!({"grace_seconds": 0})),
                "revocation.grace_seconds",
            ),
            (
                Box::new(|v| v["revocation"] = serde_json::json!({"fail_open": "yes"})),
                "revocation.fail_open",
            ),
            (
                Box::new(|v| v["revocation"] = serde_json::json!({"poll": 1})),
                "revocation",
            ),
            (
                Box::new(|v| v["route_header"] = "X-Route".into()),
                "route_header",
            ),
            (Box::new(|v| v["route_header"] = "".into()), "route_header"),
            (
                Box::new(|v| v["route_header"] = "authorization".into()),
                "route_header",
            ),
            (
                Box::new(|v| v["route_header"] = ":authority".into()),
                "route_header",
            ),
            (
                Box::new(|v| v["routes"][1]["resource"] = "nope".into()),
                "routes[1].resource",
            ),
            (
                Box::new(|v| {
                    v["routes"][0].as_object_mut().unwrap().remove("resource");
                }),
                "routes[0]",
            ),
            (
                Box::new(|v| v["routes"][0]["colour"] = "red".into()),
                "routes[0]",
            ),
            (
                Box::new(|v| v["routes"][0]["scopes"] = serde_json::json!(["a b"])),
                "routes[0].scopes[0]",
            ),
            (
                Box::new(|v| v["routes"][1]["name"] = "demo".into()),
                "routes[1].name",
            ),
            (
                Box::new(|v| v["jwks"]["cluster"] = "".into()),
                "jwks.cluster",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("jwks");
                }),
                "jwks",
            ),
            (
                Box::new(|v| v["clock_skew_seconds"] = "x".into()),
                "clock_skew_seconds",
            ),
            (
                Box::new(|v| v["duration_sample_every"] = 0.into()),
                "duration_sample_every",
            ),
            (
                Box::new(|v| v["duration_sample_every"] = 65_537.into()),
                "duration_sample_every",
            ),
            (Box::new(|v| v["routes"] = serde_json::json!([])), "routes"),
            (
                Box::new(|v| {
                    v["routes"][0].as_object_mut().unwrap().remove("policy");
                }),
                "routes[0]",
            ),
            (
                Box::new(|v| {
                    v["routes"][1]["policy"] =
                        serde_json::json!({"allow": {"and": [{"emial": "x"}]}})
                }),
                "routes[1].policy.allow.and[0].emial",
            ),
            (
                Box::new(|v| v["routes"][0]["max_request_bytes"] = 0.into()),
                "routes[0].max_request_bytes",
            ),
            (
                Box::new(|v| v["routes"][0]["deny_response"] = "teapot".into()),
                "routes[0].deny_response",
            ),
        ];
        for (mutate, field) in cases {
            let mut v = sample();
            mutate(&mut v);
            let e = load(v).unwrap_err();
            assert!(e.path.starts_with(field), "expected {field}, got {e}");
            assert!(
                e.to_string().starts_with("invalid plugin configuration: "),
                "{e}"
            );
        }
        let missing = load(serde_json::json!({"version": 1})).unwrap_err();
        assert!(missing.to_string().contains("issuer"), "{missing}");
        assert!(CompiledConfig::from_json(b"{").is_err());
    }

    fn with_upstream_oauth() -> serde_json::Value {
        let mut v = sample();
        v["token_service"] = serde_json::json!({
            "cluster": "warden_token_service_internal",
            "authority": "127.0.0.1:9101",
        });
        v["routes"][0]["upstream_oauth"] = true.into();
        v
    }

    #[test]
    fn upstream_oauth_routes_get_the_token_service() {
        let c = load(with_upstream_oauth()).unwrap();
        assert!(c.routes[0].upstream_oauth);
        assert!(!c.routes[1].upstream_oauth);
        let ts = c.token_service.as_ref().unwrap();
        assert_eq!(ts.cluster, "warden_token_service_internal");
        assert_eq!(ts.authority, "127.0.0.1:9101");
        assert_eq!(ts.timeout_ms, 2_000);
        // Without the new fields the configuration is what it was (the fields are additive).
        let plain = load(sample()).unwrap();
        assert!(plain.token_service.is_none());
        assert!(plain.routes.iter().all(|r| !r.upstream_oauth));
    }

    #[test]
    fn upstream_oauth_without_token_service_is_refused_naming_the_field() {
        let mut v = with_upstream_oauth();
        v.as_object_mut().unwrap().remove("token_service");
        let e = load(v).unwrap_err();
        assert_eq!(e.path, "routes[0].upstream_oauth", "{e}");
    }

    #[test]
    fn token_service_is_strict_and_names_its_fields() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| v["token_service"]["colour"] = "red".into()),
                "token_service",
            ),
            (
                Box::new(|v| v["token_service"]["cluster"] = "".into()),
                "token_service.cluster",
            ),
            (
                Box::new(|v| v["token_service"]["authority"] = "".into()),
                "token_service.authority",
            ),
            (
                Box::new(|v| v["token_service"]["credential"] = "s3cr3t-credential".into()),
                "token_service.credential",
            ),
            (
                Box::new(|v| v["token_service"]["credential"] = "".into()),
                "token_service.credential",
            ),
            (
                Box::new(|v| v["token_service"]["timeout_ms"] = 0.into()),
                "token_service.timeout_ms",
            ),
            (
                Box::new(|v| v["routes"][0]["upstream_oauth"] = "yes".into()),
                "routes[0].upstream_oauth",
            ),
        ];
        for (mutate, field) in cases {
            let mut v = with_upstream_oauth();
            mutate(&mut v);
            let e = load(v).unwrap_err();
            assert!(e.path.starts_with(field), "expected {field}, got {e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn a_credential_in_the_plugin_configuration_is_refused_and_never_shown() {
        // Envoy's admin `/config_dump` shows the plugin configuration to anyone who can reach
        // the admin port: the credential comes from Envoy's environment instead.
        let mut v = with_upstream_oauth();
        v["token_service"]["credential"] = "s3cr3t-credential".into();
        let raw: PluginConfig = serde_json::from_value(v.clone()).unwrap();
        let shown = format!("{raw:?}");
        assert!(shown.contains("warden_token_service_internal"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let e = load(v).unwrap_err();
        assert_eq!(e.path, "token_service.credential");
        assert!(
            e.message.contains(crate::internal_api::CREDENTIAL_ENV),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        // Serializing never writes one.
        assert!(!serde_json::to_string(&raw).unwrap().contains("s3cr3t"));
    }

    #[test]
    fn serializing_leaves_the_new_fields_out_when_unused() {
        let raw: PluginConfig = serde_json::from_value(sample()).unwrap();
        let text = serde_json::to_string(&raw).unwrap();
        assert!(!text.contains("upstream_oauth"), "{text}");
        assert!(!text.contains("pass_identity_headers"), "{text}");
        assert!(!text.contains("\"token_service\""), "{text}");
    }

    #[test]
    fn pass_identity_headers_needs_the_token_service_and_names_the_field() {
        let mut v = with_upstream_oauth();
        v["routes"][1]["pass_identity_headers"] = true.into();
        let c = load(v.clone()).unwrap();
        assert!(c.routes[1].pass_identity_headers);
        assert!(!c.routes[0].pass_identity_headers);
        // Both on one route: the TI and the assertion.
        v["routes"][0]["pass_identity_headers"] = true.into();
        let c = load(v.clone()).unwrap();
        assert!(c.routes[0].upstream_oauth && c.routes[0].pass_identity_headers);
        // Without a token service there is nowhere to get it from.
        let mut alone = sample();
        alone["routes"][1]["pass_identity_headers"] = true.into();
        let e = load(alone).unwrap_err();
        assert_eq!(e.path, "routes[1].pass_identity_headers", "{e}");
        v["routes"][0]["pass_identity_headers"] = "yes".into();
        let e = load(v).unwrap_err();
        assert!(e.path.starts_with("routes[0].pass_identity_headers"), "{e}");
    }

    fn with_client_route() -> serde_json::Value {
        let mut v = with_upstream_oauth();
        v["routes"].as_array_mut().unwrap().push(serde_json::json!({
            "name": "chat",
            "kind": "client",
            "resource": "https://chat.example",
            "pass_identity_headers": true,
            "policy": {"allow": {"and": [{"domain": {"is": "example.com"}}]}}
        }));
        v
    }

    #[test]
    fn client_routes_compile_with_their_cookie_name() {
        let c = load(with_client_route()).unwrap();
        assert_eq!(c.routes[0].kind, RouteKind::Server);
        assert_eq!(c.routes[1].kind, RouteKind::Server);
        let chat = &c.routes[2];
        assert_eq!(chat.kind, RouteKind::Client);
        assert!(chat.pass_identity_headers);
        assert_eq!(
            chat.cookie_name,
            format!("__Host-{}", crate::internal_api::app_cookie_name("chat"))
        );
        assert_eq!(
            c.client_route("chat", "chat.example:443").map(|(i, _)| i),
            Some(2)
        );
        assert!(c.client_route("demo", "127.0.0.1:9000").is_none());
        assert!(c.client_route("chat", "other.example").is_none());
        assert!(c.has_client_route_on("CHAT.example"));
        assert!(!c.has_client_route_on("127.0.0.1:9000"));
        // No RFC 9728 metadata for an app.
        assert!(c
            .metadata_route("chat.example", "/.well-known/oauth-protected-resource")
            .is_none());
        // `kind` is left out for server routes, so older configurations read the same.
        let raw: PluginConfig = serde_json::from_value(with_client_route()).unwrap();
        let text = serde_json::to_string(&raw).unwrap();
        assert_eq!(text.matches("\"kind\"").count(), 1, "{text}");
        let explicit = {
            let mut v = with_client_route();
            v["routes"][0]["kind"] = "server".into();
            v
        };
        assert_eq!(load(explicit).unwrap().routes[0].kind, RouteKind::Server);
    }

    #[test]
    fn client_route_errors_name_the_field() {
        for (field, value) in [
            ("scopes", serde_json::json!(["mcp"])),
            ("resource_name", "x".into()),
            ("allowed_origins", serde_json::json!(["https://a.example"])),
            ("max_request_bytes", 1024.into()),
            ("deny_response", "jsonrpc_200".into()),
            ("filter_tools_list", false.into()),
            ("log_tool_parameters", true.into()),
            ("redact_parameters", serde_json::json!(["a"])),
            ("upstream_oauth", true.into()),
        ] {
            let mut v = with_client_route();
            v["routes"][2][field] = value;
            let e = load(v).unwrap_err();
            assert_eq!(e.path, format!("routes[2].{field}"), "{e}");
        }
        // At their defaults (as a whole `RouteConfig` serializes them) they are accepted.
        let raw: PluginConfig = serde_json::from_value(with_client_route()).unwrap();
        let whole = serde_json::to_value(&raw).unwrap();
        assert!(whole["routes"][2].get("max_request_bytes").is_some());
        assert_eq!(load(whole).unwrap().routes[2].kind, RouteKind::Client);
        let mut v = with_client_route();
        v.as_object_mut().unwrap().remove("token_service");
        v["routes"][0]["upstream_oauth"] = false.into();
        v["routes"][2]["pass_identity_headers"] = false.into();
        let e = load(v).unwrap_err();
        assert_eq!(e.path, "routes[2].kind", "{e}");
        let mut v = with_client_route();
        v["routes"][2]["kind"] = "app".into();
        let e = load(v).unwrap_err();
        assert!(e.path.starts_with("routes[2].kind"), "{e}");
        let mut v = with_client_route();
        v["routes"][2].as_object_mut().unwrap().remove("policy");
        assert!(load(v).is_err());
    }
}

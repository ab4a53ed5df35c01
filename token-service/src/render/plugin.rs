//! What every render shares: the render input taken from the operator config, and the
//! filter's plugin configuration, the same for the Envoy bootstrap and Istio's EnvoyFilter
//! (only the cluster names differ), so the filter's matching comes from one source.

use warden_core::config::{
    JwksFetch, PluginConfig, RouteConfig, RouteKind, TokenServiceConfig, CONFIG_VERSION,
    DEFAULT_MAX_REQUEST_BYTES, ROUTE_HEADER,
};
use warden_core::url::ResourceUrl;

/// How long an MCP stream (an SSE response) may stay silent. Tool calls may run long and
/// servers send nothing on an idle GET stream; the route timeout is off.
pub const STREAM_IDLE_TIMEOUT_SECONDS: u32 = 3600;

/// The environment variable holding the session-binding key (read by the filter).
pub const SESSION_KEY_ENV: &str = "MCP_WARDEN_SESSION_KEY";

/// The environment variable holding the internal credential (read by the filter).
pub use warden_core::internal_api::CREDENTIAL_ENV as INTERNAL_CREDENTIAL_ENV;

/// The `header_mutation` filter, first in the chain, that removes any client-sent identity
/// assertion.
pub const STRIP_ASSERTION_FILTER: &str = "mcp-warden.strip-identity-assertion";

/// The cluster name the filter fetches the JWKS through.
pub const TOKEN_SERVICE_CLUSTER: &str = "warden_token_service";

/// The cluster name the filter reaches the token service's internal listener through.
pub const TOKEN_SERVICE_INTERNAL_CLUSTER: &str = "warden_token_service_internal";

/// The name of the Envoy routes that send `/.warden/mcp/` and `/.pomerium/mcp/` (server
/// listing, connect, disconnect) to the token service on every virtual host. It has no
/// `mcp-warden:` prefix: no warden route is named, and the filter lets these requests pass.
pub const TOKEN_SERVICE_ROUTE: &str = "mcp-warden.token-service";

/// The path prefixes served by the token service on every host the gateway fronts.
pub const TOKEN_SERVICE_PREFIXES: [&str; 2] = ["/.warden/mcp/", "/.pomerium/mcp/"];

/// The leeway the rendered filter allows on a token's `exp` and `nbf` (the keyring keeps a
/// replaced key published this much longer).
pub const FILTER_CLOCK_SKEW_SECONDS: u32 = warden_core::config::DEFAULT_CLOCK_SKEW_SECONDS;

/// What the renderer needs, already validated.
#[derive(Debug, Clone)]
pub struct EnvoyInput {
    /// Listener, admin interface and the self-protection limits.
    pub envoy: crate::config::EnvoyConfig,
    pub issuer: String,
    /// Where Envoy reaches the token service (its listen address).
    pub token_service: std::net::SocketAddr,
    pub wasm_path: String,
    pub routes: Vec<RouteInput>,
    /// The internal listener, when a route needs upstream tokens or identity assertions.
    pub internal: Option<InternalListener>,
    /// The revocation feed's rules for the filter.
    pub revocation: warden_core::revocation::FeedRules,
    /// `{telemetry.otlp_endpoint}/v1/traces`: Envoy traces requests and the filter offers
    /// span tags. `None`: no tracing.
    pub traces_url: Option<String>,
}

/// Where the filter asks for upstream tokens. The credential it signs its calls with is
/// not part of the render: Envoy gets it from its environment (`INTERNAL_CREDENTIAL_ENV`).
#[derive(Debug, Clone)]
pub struct InternalListener {
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone)]
pub struct RouteInput {
    pub name: String,
    /// `from` + `prefix`: the resource clients use.
    pub resource: String,
    /// Upstream URL (`to`).
    pub to: String,
    pub scopes: Vec<String>,
    pub policy: serde_json::Value,
    pub server: crate::config::McpServerConfig,
    /// The route has `upstream_oauth2`: the filter sends the user's upstream token.
    pub upstream_oauth: bool,
    /// The route has `pass_identity_headers`: the filter adds the identity assertion.
    pub pass_identity_headers: bool,
    /// The headers the assertion goes in.
    pub identity_header_names: Vec<String>,
    /// An `mcp: client` route (a web app): `"kind": "client"` in the plugin configuration,
    /// no body inspection; `scopes` and `server` are unused.
    pub client: bool,
}

impl EnvoyInput {
    /// The render input for an operator config (already validated). It holds no secret.
    pub fn from_config(config: &crate::config::Config, wasm_path: &str) -> Self {
        let internal = config.uses_internal_listener().then_some(InternalListener {
            listen: config.authorization_server.internal_listen,
        });
        EnvoyInput {
            envoy: config.envoy.clone(),
            issuer: config.authorization_server.issuer.clone(),
            token_service: config.authorization_server.listen,
            wasm_path: wasm_path.to_string(),
            routes: config
                .routes
                .iter()
                .map(|r| RouteInput {
                    name: r.name.clone(),
                    resource: r.resource(),
                    to: r.to.clone(),
                    scopes: r.scopes.clone(),
                    policy: r.policy.clone().unwrap_or_default(),
                    server: r.server().cloned().unwrap_or_default(),
                    upstream_oauth: r.has_upstream_oauth(),
                    pass_identity_headers: r.pass_identity_headers,
                    identity_header_names: r.identity_header_names.clone(),
                    client: r.is_client(),
                })
                .collect(),
            internal,
            revocation: config.revocation,
            traces_url: config.telemetry.traces_url(),
        }
    }
}

/// Where the filter reaches the token service, and how it learns Envoy's route: what differs
/// between the Envoy bootstrap and Istio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTargets {
    /// The cluster of the public listener (the JWKS).
    pub jwks_cluster: String,
    /// The cluster of the internal listener, and the authority the filter calls it with.
    pub token_service_cluster: String,
    pub token_service_authority: String,
    /// The header Envoy sets to the route's name; `None`: the filter reads `xds.route_name`.
    pub route_header: Option<String>,
}

impl FilterTargets {
    /// The clusters `render-envoy` defines, and its route header.
    pub fn envoy(input: &EnvoyInput) -> Self {
        FilterTargets {
            jwks_cluster: TOKEN_SERVICE_CLUSTER.into(),
            token_service_cluster: TOKEN_SERVICE_INTERNAL_CLUSTER.into(),
            token_service_authority: input
                .internal
                .as_ref()
                .map(|i| i.listen.to_string())
                .unwrap_or_default(),
            route_header: Some(ROUTE_HEADER.into()),
        }
    }
}

/// The filter's plugin configuration for the Envoy bootstrap.
pub fn plugin_config(input: &EnvoyInput) -> PluginConfig {
    plugin_config_for(input, &FilterTargets::envoy(input))
}

/// The filter's plugin configuration: every route, `mcp: client` ones as `kind: client`,
/// reaching the token service through `targets`.
pub fn plugin_config_for(input: &EnvoyInput, targets: &FilterTargets) -> PluginConfig {
    let issuer_authority = input
        .issuer
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    PluginConfig {
        version: CONFIG_VERSION,
        issuer: input.issuer.clone(),
        jwks: Some(JwksFetch {
            cluster: targets.jwks_cluster.clone(),
            authority: issuer_authority,
            path: "/.well-known/jwks.json".into(),
            timeout_ms: 2_000,
            refresh_seconds: input.envoy.jwks_refresh_seconds,
        }),
        jwks_static: None,
        clock_skew_seconds: warden_core::config::DEFAULT_CLOCK_SKEW_SECONDS,
        token_cache_entries: 10_000,
        failed_signature_checks_per_second: warden_core::config::DEFAULT_FAILED_SIGNATURE_CHECKS,
        duration_sample_every: input.envoy.duration_sample_every,
        // The rendered access log prints it (`%FILTER_STATE(wasm.mcp_warden.authorize:PLAIN)%`).
        authorize_filter_state: true,
        // Envoy's tracer tags the request's span from them (`custom_tags`).
        span_tags: input.traces_url.is_some(),
        route_header: targets.route_header.clone(),
        token_service: input.internal.as_ref().map(|_| TokenServiceConfig {
            cluster: targets.token_service_cluster.clone(),
            authority: targets.token_service_authority.clone(),
            credential: None,
            timeout_ms: 2_000,
        }),
        revocation: input.revocation,
        routes: input
            .routes
            .iter()
            .map(|r| RouteConfig {
                name: r.name.clone(),
                kind: if r.client {
                    RouteKind::Client
                } else {
                    RouteKind::Server
                },
                resource: r.resource.clone(),
                resource_name: None,
                scopes: r.scopes.clone(),
                allowed_origins: vec![],
                policy: r.policy.clone(),
                max_request_bytes: r
                    .server
                    .max_request_bytes
                    .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
                deny_response: r.server.deny_response.unwrap_or_default(),
                filter_tools_list: r.server.filter_tools_list.unwrap_or(true),
                log_tool_parameters: r.server.log_tool_parameters.unwrap_or(false),
                redact_parameters: r.server.redact_parameters.clone(),
                upstream_oauth: r.upstream_oauth,
                pass_identity_headers: r.pass_identity_headers,
                identity_header_names: r.identity_header_names.clone(),
            })
            .collect(),
    }
}

/// Splits an upstream URL into (host, port, path).
pub fn upstream(to: &str) -> Result<(String, u16, String), String> {
    let url = ResourceUrl::parse(to)?;
    if url.scheme != "http" {
        return Err("only http upstreams are rendered for now".into());
    }
    let (host, port) = match url.authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || url.authority.starts_with('[') => (
            host.to_string(),
            port.parse::<u16>().map_err(|_| "bad port".to_string())?,
        ),
        _ => (url.authority.clone(), 80),
    };
    Ok((host.trim_matches(['[', ']']).to_string(), port, url.path))
}

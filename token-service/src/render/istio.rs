//! `render --target istio`: the token service's objects (as `--target kubernetes`, without
//! the HTTPRoute), and the gateway's: a Gateway, a VirtualService per host with the routing
//! the Envoy bootstrap has, ServiceEntries for upstreams outside the cluster, and the
//! EnvoyFilter that loads the filter with its plugin configuration, its clusters named as Istio
//! names them.

use serde_json::{json, Value};
use warden_core::config::ENVOY_ROUTE_PREFIX;
use warden_core::url::ResourceUrl;

use super::kubernetes::{check_digest, gateway_host, header, issuer_host, to_yaml, Plan};

use super::plugin::{
    plugin_config_for, upstream, EnvoyInput, FilterTargets, INTERNAL_CREDENTIAL_ENV,
    SESSION_KEY_ENV, STREAM_IDLE_TIMEOUT_SECONDS, TOKEN_SERVICE_PREFIXES, TOKEN_SERVICE_ROUTE,
};

/// The EnvoyFilter's name, the extension config's and the filter's root id (as in the Envoy
/// bootstrap).
pub const WASM_FILTER: &str = "mcp-warden";

const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The VirtualService http route sending the issuer's host to the token service.
pub const ISSUER_ROUTE: &str = "mcp-warden.issuer";

/// Where the filter reaches the token service inside Istio: the Service's outbound clusters,
/// and Envoy's route name (`xds.route_name`, the VirtualService http route's name) instead of
/// a route header, which only the Envoy bootstrap sets.
pub fn filter_targets(plan: &Plan<'_>) -> FilterTargets {
    FilterTargets {
        jwks_cluster: plan.cluster(plan.http_port()),
        token_service_cluster: plan.cluster(plan.internal_port()),
        token_service_authority: format!("{}:{}", plan.fqdn(), plan.internal_port()),
        route_header: None,
    }
}

/// The filter's plugin configuration, compiled as the filter compiles it: a render the filter
/// would refuse is an error here.
pub fn plugin_config(plan: &Plan<'_>) -> Result<Value, String> {
    let input = EnvoyInput::from_config(plan.config, "");
    let plugin = plugin_config_for(&input, &filter_targets(plan));
    let text = serde_json::to_string(&plugin).map_err(|e| e.to_string())?;
    warden_core::config::CompiledConfig::from_json(text.as_bytes())
        .map_err(|e| format!("the filter refuses the rendered plugin configuration: {e}"))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// One host the gateway serves, with its routes (indices into `config.routes`).
struct Host {
    name: String,
    https: bool,
    routes: Vec<(usize, String)>,
    issuer: bool,
}

fn hosts(plan: &Plan<'_>) -> Result<Vec<Host>, String> {
    let config = plan.config;
    let (issuer, issuer_https) = gateway_host(
        &config.authorization_server.issuer,
        "authorization_server.issuer",
    )?;
    let mut hosts = vec![Host {
        name: issuer,
        https: issuer_https,
        routes: vec![],
        issuer: true,
    }];
    for (i, r) in config.routes.iter().enumerate() {
        let (name, https) = gateway_host(&r.from, &format!("routes[{i}].from"))?;
        let path = ResourceUrl::parse(&r.resource())
            .map_err(|e| format!("routes[{i}].prefix: {e}"))?
            .path;
        if path.is_empty() && name == hosts[0].name {
            return Err(format!(
                "routes[{i}].prefix: a route for all of {name} would take the issuer's paths from the token service: give it a prefix, or another host"
            ));
        }
        match hosts.iter_mut().find(|h| h.name == name) {
            Some(h) => {
                if h.https != https {
                    return Err(format!(
                        "routes[{i}].from: {name} is served over both http and https: one scheme per host"
                    ));
                }
                h.routes.push((i, path));
            }
            None => hosts.push(Host {
                name,
                https,
                routes: vec![(i, path)],
                issuer: false,
            }),
        }
    }
    Ok(hosts)
}

fn gateway_ref(plan: &Plan<'_>) -> String {
    format!("{}/{}", plan.k.gateway.namespace, plan.k.gateway.name)
}

fn gateway(plan: &Plan<'_>, hosts: &[Host]) -> Result<Value, String> {
    let g = &plan.k.gateway;
    let mut servers = vec![];
    let http: Vec<&str> = hosts
        .iter()
        .filter(|h| !h.https)
        .map(|h| h.name.as_str())
        .collect();
    let https: Vec<&str> = hosts
        .iter()
        .filter(|h| h.https)
        .map(|h| h.name.as_str())
        .collect();
    if !http.is_empty() {
        servers.push(json!({
            "port": {"number": 80, "name": "http", "protocol": "HTTP"},
            "hosts": http,
        }));
    }
    if !https.is_empty() {
        let tls = g.tls_secret.as_ref().ok_or_else(|| {
            format!(
                "kubernetes.gateway.tls_secret: required: {} is served over https",
                https[0]
            )
        })?;
        servers.push(json!({
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "tls": {"mode": "SIMPLE", "credentialName": tls},
            "hosts": https,
        }));
    }
    Ok(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": g.name, "namespace": g.namespace},
        "spec": {"selector": g.selector, "servers": servers},
    }))
}

/// A Kubernetes object name for a host's objects (`mcp-warden.<host>`: a DNS subdomain).
fn object_name(host: &str) -> Result<String, String> {
    let name = format!("{WASM_FILTER}.{host}");
    if name.len() > 253 {
        return Err(format!("{host}: too long for an object name"));
    }
    Ok(name)
}

fn destination(host: &str, port: u16) -> Value {
    json!([{"destination": {"host": host, "port": {"number": port}}}])
}

/// The routes of one host, in the Envoy bootstrap's order: the token service's paths, then
/// the warden routes longest prefix first (each as two http routes, exact and below, named
/// `mcp-warden:<name>` so the filter follows Istio's choice), then for the issuer's host the
/// token service for everything else.
fn virtual_service(plan: &Plan<'_>, host: &Host) -> Result<Value, String> {
    let mut http = vec![];
    let token_service = destination(&plan.fqdn(), plan.http_port());
    if !host.routes.is_empty() {
        http.push(json!({
            "name": TOKEN_SERVICE_ROUTE,
            "match": TOKEN_SERVICE_PREFIXES.map(|p| json!({"uri": {"prefix": p}})),
            "route": token_service,
        }));
    }
    let mut sorted = host.routes.clone();
    sorted.sort_by_key(|(_, path)| std::cmp::Reverse(path.len()));
    for (i, path) in &sorted {
        let route = &plan.config.routes[*i];
        let (to_host, port, to_path) =
            upstream(&route.to).map_err(|e| format!("routes[{i}].to: {e}"))?;
        let authority = if port == 80 {
            to_host.clone()
        } else {
            format!("{to_host}:{port}")
        };
        let name = format!("{ENVOY_ROUTE_PREFIX}{}", route.name);
        let exact = if path.is_empty() { "/" } else { path.as_str() };
        let below = format!("{path}/");
        let exact_to = if to_path.is_empty() {
            "/".to_string()
        } else {
            to_path.clone()
        };
        let below_to = format!("{to_path}/");
        for (matcher, rewrite) in [
            (json!({"uri": {"exact": exact}}), exact_to),
            (json!({"uri": {"prefix": below}}), below_to),
        ] {
            http.push(json!({
                "name": name,
                "match": [matcher],
                "rewrite": {"uri": rewrite, "authority": authority},
                // No `timeout`: Istio's default is none (a long tool call or SSE stream is
                // not cut), and its validation refuses `0s`.
                "route": destination(&to_host, port),
            }));
        }
    }
    if host.issuer {
        http.push(json!({
            "name": ISSUER_ROUTE,
            "match": [{"uri": {"prefix": "/"}}],
            "route": token_service,
        }));
    }
    Ok(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": object_name(&host.name)?, "namespace": plan.k.gateway.namespace},
        "spec": {"hosts": [host.name], "gateways": [gateway_ref(plan)], "http": http},
    }))
}

/// Upstream hosts outside the cluster (not `*.svc.<cluster_domain>`), with their ports:
/// Istio has an outbound cluster for them only with a ServiceEntry.
fn service_entries(plan: &Plan<'_>) -> Result<Vec<Value>, String> {
    let suffix = format!(".svc.{}", plan.k.cluster_domain);
    let mut external: Vec<(String, Vec<u16>)> = vec![];
    for (i, r) in plan.config.routes.iter().enumerate() {
        let (host, port, _) = upstream(&r.to).map_err(|e| format!("routes[{i}].to: {e}"))?;
        if host.parse::<std::net::IpAddr>().is_ok()
            || !crate::config_kubernetes::is_dns_subdomain(&host)
        {
            return Err(format!(
                "routes[{i}].to: name a host (a Service's <name>.<namespace>{suffix}, or a DNS name outside the cluster), not {host}"
            ));
        }
        if host.ends_with(&suffix) {
            continue;
        }
        // A Service's short names (`<name>`, `<name>.<namespace>.svc`) resolve only through a
        // pod's search path; as a ServiceEntry they would become an external DNS host.
        if !host.contains('.') || host.ends_with(".svc") {
            return Err(format!(
                "routes[{i}].to: {host} looks like a short Service name: give the full <name>.<namespace>{suffix}"
            ));
        }
        match external.iter_mut().find(|(h, _)| *h == host) {
            Some((_, ports)) if !ports.contains(&port) => ports.push(port),
            Some(_) => {}
            None => external.push((host, vec![port])),
        }
    }
    external
        .into_iter()
        .map(|(host, ports)| {
            Ok(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": object_name(&host)?, "namespace": plan.k.gateway.namespace},
                "spec": {
                    "hosts": [host],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    "ports": ports.iter().map(|p| json!({"number": p, "name": format!("http-{p}"), "protocol": "HTTP"})).collect::<Vec<_>>(),
                },
            }))
        })
        .collect()
}

/// The filter in the gateway, as an EnvoyFilter rather than a WasmPlugin: the filter holds a
/// request's headers while it reads the body (to judge the call before anything goes
/// upstream), which needs the Wasm filter's `allow_on_headers_stop_iteration`. Istio's
/// WasmPlugin never sets it, and without it Envoy turns the filter's pause into "stop all" and
/// never hands it the body: every POST would wait for its timeout. So the render gives the
/// filter's whole configuration as the extension config istiod serves (ECDS, the module pulled
/// from `oci://` by the agent as for a WasmPlugin) and puts it first in the gateway's chain
/// (where a WasmPlugin's AUTHN phase would be), failing closed.
fn envoy_filter(plan: &Plan<'_>, filter_digest: &str) -> Result<Value, String> {
    let g = &plan.k.gateway;
    let s = &plan.k.secrets;
    let plugin = serde_json::to_string(&plugin_config(plan)?).map_err(|e| e.to_string())?;
    Ok(json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {
            "name": WASM_FILTER,
            "namespace": g.namespace,
            // Where the gateway's environment comes from (the gateway's Deployment is not
            // rendered): names, never values.
            "annotations": {
                "mcp-warden.dev/session-key-secret": s.session_key,
                "mcp-warden.dev/internal-credential-secret": s.internal_credential,
            },
        },
        "spec": {
            "workloadSelector": {"labels": g.selector},
            "configPatches": [
                {
                    "applyTo": "EXTENSION_CONFIG",
                    "patch": {"operation": "ADD", "value": {
                        "name": WASM_FILTER,
                        "typed_config": {
                            "@type": WASM_TYPE_URL,
                            "config": {
                                "name": WASM_FILTER,
                                "root_id": WASM_FILTER,
                                "failure_policy": "FAIL_CLOSED",
                                "allow_on_headers_stop_iteration": true,
                                "configuration": {
                                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                                    "value": plugin,
                                },
                                "vm_config": {
                                    "vm_id": WASM_FILTER,
                                    "runtime": "envoy.wasm.runtime.v8",
                                    // As istiod writes a WasmPlugin's: the agent pulls it (the
                                    // cluster is never used).
                                    "code": {"remote": {"http_uri": {
                                        "uri": format!("oci://{}@{filter_digest}", plan.k.images.filter),
                                        "cluster": "_",
                                        "timeout": "30s",
                                    }}},
                                    "environment_variables": {
                                        "host_env_keys": [SESSION_KEY_ENV, INTERNAL_CREDENTIAL_ENV],
                                        "key_values": {"ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent"},
                                    },
                                },
                            },
                        },
                    }},
                },
                {
                    // MCP streams (SSE) may stay silent long: Envoy's default 5 min stream
                    // idle timeout would cut them; the Envoy bootstrap's hour, as there.
                    "applyTo": "NETWORK_FILTER",
                    "match": {
                        "context": "GATEWAY",
                        "listener": {"filterChain": {"filter": {"name": HCM}}},
                    },
                    "patch": {"operation": "MERGE", "value": {"typed_config": {
                        "@type": HCM_TYPE_URL,
                        "stream_idle_timeout": format!("{STREAM_IDLE_TIMEOUT_SECONDS}s"),
                    }}},
                },
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "GATEWAY",
                        "listener": {"filterChain": {"filter": {"name": HCM}}},
                    },
                    "patch": {"operation": "INSERT_FIRST", "value": {
                        "name": WASM_FILTER,
                        // No timeout: until the filter is loaded, the listener takes no traffic.
                        "config_discovery": {
                            "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                            "type_urls": [WASM_TYPE_URL],
                        },
                    }},
                },
            ],
        },
    }))
}

/// `render --target istio`. `filter_digest` is the filter image's manifest digest.
pub fn render(plan: &Plan<'_>, filter_digest: &str) -> Result<String, String> {
    check_digest(filter_digest, "--filter-digest")?;
    issuer_host(plan.config)?;
    let hosts = hosts(plan)?;
    let mut objects = plan.token_service_objects();
    objects.push(gateway(plan, &hosts)?);
    for host in &hosts {
        objects.push(virtual_service(plan, host)?);
    }
    objects.extend(service_entries(plan)?);
    objects.push(envoy_filter(plan, filter_digest)?);
    to_yaml(&header(plan, "istio"), &objects)
}

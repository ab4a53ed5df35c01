//! A gateway pod of Istio's shape, built from the objects `render --target istio` prints, the
//! way istiod and its agent would configure the pod's Envoy. There is no cluster here, so this
//! is the closest we get: it reads the rendered objects only, never the operator config.
//!
//! What it follows of Istio (pilot/pkg/networking/core and pilot/pkg/model/extensions.go):
//! - one listener per `Gateway` server port; each `VirtualService` bound to the gateway gives a
//!   virtual host per host (`host` and `host:*`), its http routes in order, each Envoy route
//!   named after the http route (`xds.route_name`), `uri.exact` as `path`, `uri.prefix` as
//!   `prefix`, `rewrite.uri` as `prefix_rewrite`, `rewrite.authority` as
//!   `host_rewrite_literal`, the http route's `timeout` (none by default; under 1 ms refused,
//!   as istiod's validation does);
//! - clusters named `outbound|<port>||<host>` for every `Service` port (the host being
//!   `<name>.<namespace>.svc.<cluster domain>`) and every `ServiceEntry` host and port, and
//!   only those: a name the render computed wrongly reaches no cluster;
//! - the `EnvoyFilter`s of the gateway's namespace whose `workloadSelector` matches the pod:
//!   an `EXTENSION_CONFIG` `ADD` is the extension istiod serves over ECDS, its remote module
//!   pulled by the agent into a local file (`ISTIO_META_` variables consumed and removed); an
//!   `HTTP_FILTER` patch (`INSERT_FIRST`, or `INSERT_BEFORE` the router) puts the filter in
//!   the gateway's chain, its `config_discovery` answered with that extension (inlined here:
//!   a static bootstrap has no ECDS server); a `NETWORK_FILTER` `MERGE` into the connection
//!   manager changes its fields.
//!
//! - HTTPS servers terminate TLS with the certificate of the Secret their `credentialName`
//!   names, a filter chain per server chosen by SNI.
//!
//! What it does not: mutual TLS between the gateway and the token service's sidecar, EDS,
//! the other filters of Istio's chain (metadata exchange, stats, RBAC).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

/// The rendered objects, in order.
pub struct Objects(pub Vec<Value>);

impl Objects {
    /// Parses multi-document YAML.
    pub fn parse(yaml: &str) -> Objects {
        let docs = serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
            .filter(|v| !v.is_null())
            .collect();
        Objects(docs)
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0.iter().filter(move |o| o["kind"] == kind)
    }

    /// The one object of `kind`; panics naming the kind when there is none or several.
    pub fn one(&self, kind: &str) -> &Value {
        let all: Vec<_> = self.0.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "expected one {kind}, found {}", all.len());
        all[0]
    }
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or("default")
}

/// Istio's outbound cluster name.
pub fn outbound_cluster(port: u64, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// Where the pods behind a host listen on this machine: `(host, service port)` → address.
/// The token service's entries come from [`GatewayPod::service_endpoints`]; the test adds the
/// upstream MCP servers' Services (not rendered: they are the operator's).
pub type Endpoints = BTreeMap<(String, u64), SocketAddr>;

/// The pod istiod would configure: the gateway's labels and where its ports listen here.
pub struct GatewayPod<'a> {
    pub objects: &'a Objects,
    pub cluster_domain: &'a str,
    /// `Gateway` server port → the local address its listener takes.
    pub listeners: BTreeMap<u64, SocketAddr>,
    pub admin: SocketAddr,
    /// The TLS Secrets of the gateway's namespace: `credentialName` → (certificate chain, key)
    /// files, as istiod's SDS would serve them.
    pub tls_secrets: BTreeMap<String, (PathBuf, PathBuf)>,
    /// The agent's image pull: an `oci://` URL → the module's file.
    pub pull: &'a dyn Fn(&str) -> PathBuf,
}

impl GatewayPod<'_> {
    /// The `outbound|…` endpoints of every rendered `Service`, given where each container
    /// port of its pods listens here (`targetPort` by number or by the container port's name).
    pub fn service_endpoints(
        objects: &Objects,
        cluster_domain: &str,
        container_ports: &BTreeMap<u64, SocketAddr>,
    ) -> Endpoints {
        let mut named = BTreeMap::new();
        for deployment in objects.of_kind("Deployment") {
            for c in deployment["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for p in c["ports"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64())
                    {
                        named.insert(n.to_owned(), port);
                    }
                }
            }
        }
        let mut out = Endpoints::new();
        for service in objects.of_kind("Service") {
            let host = format!(
                "{}.{}.svc.{cluster_domain}",
                name_of(service),
                namespace_of(service)
            );
            for p in service["spec"]["ports"].as_array().into_iter().flatten() {
                let port = p["port"].as_u64().expect("Service port number");
                let target = match &p["targetPort"] {
                    Value::Number(n) => n.as_u64().expect("targetPort"),
                    Value::String(s) => *named
                        .get(s)
                        .unwrap_or_else(|| panic!("targetPort {s} names no container port")),
                    _ => port,
                };
                if let Some(addr) = container_ports.get(&target) {
                    out.insert((host.clone(), port), *addr);
                }
            }
        }
        out
    }

    /// The Envoy bootstrap (JSON) for the pod. Panics, naming what is wrong, where istiod
    /// would reject or ignore an object the render made.
    pub fn bootstrap(&self, pod_labels: &BTreeMap<String, String>, endpoints: &Endpoints) -> Value {
        let objects = self.objects;
        let gateway = objects.one("Gateway");
        let gateway_ref = format!("{}/{}", namespace_of(gateway), name_of(gateway));
        let selects = |selector: &Value| {
            selector.as_object().is_some_and(|m| {
                m.iter()
                    .all(|(k, v)| pod_labels.get(k).map(String::as_str) == v.as_str())
            })
        };
        assert!(
            selects(&gateway["spec"]["selector"]),
            "the Gateway's selector does not select the gateway pod ({pod_labels:?})"
        );

        // Clusters: what Istio would create, and nothing else.
        let mut clusters: BTreeMap<String, SocketAddr> = BTreeMap::new();
        for service in objects.of_kind("Service") {
            let host = format!(
                "{}.{}.svc.{}",
                name_of(service),
                namespace_of(service),
                self.cluster_domain
            );
            for p in service["spec"]["ports"].as_array().into_iter().flatten() {
                let port = p["port"].as_u64().expect("Service port");
                if let Some(addr) = endpoints.get(&(host.clone(), port)) {
                    clusters.insert(outbound_cluster(port, &host), *addr);
                }
            }
        }
        for entry in objects.of_kind("ServiceEntry") {
            for host in entry["spec"]["hosts"].as_array().into_iter().flatten() {
                let host = host.as_str().expect("ServiceEntry host");
                for p in entry["spec"]["ports"].as_array().into_iter().flatten() {
                    let port = p["number"].as_u64().expect("ServiceEntry port number");
                    if let Some(addr) = endpoints.get(&(host.to_owned(), port)) {
                        clusters.insert(outbound_cluster(port, host), *addr);
                    }
                }
            }
        }
        // The operator's own Services (the upstream MCP servers), as the test placed them.
        for ((host, port), addr) in endpoints {
            if host.ends_with(&format!(".svc.{}", self.cluster_domain)) {
                clusters
                    .entry(outbound_cluster(*port, host))
                    .or_insert(*addr);
            }
        }

        // Virtual hosts from the VirtualServices bound to this gateway.
        let mut hosts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for vs in objects.of_kind("VirtualService") {
            let bound = vs["spec"]["gateways"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|g| {
                    g == gateway_ref
                        || (g == name_of(gateway) && namespace_of(vs) == namespace_of(gateway))
                });
            if !bound {
                continue;
            }
            let mut routes = Vec::new();
            for http in vs["spec"]["http"].as_array().into_iter().flatten() {
                routes.extend(envoy_routes(http));
            }
            for host in vs["spec"]["hosts"].as_array().into_iter().flatten() {
                let host = host.as_str().expect("VirtualService host").to_owned();
                hosts
                    .entry(host)
                    .or_default()
                    .extend(routes.iter().cloned());
            }
        }
        let virtual_hosts: Vec<Value> = hosts
            .into_iter()
            .map(|(host, routes)| {
                json!({ "name": format!("{host}:80"), "domains": [host.clone(), format!("{host}:*")], "routes": routes })
            })
            .collect();

        let (mut http_filters, hcm_merges) = self.patched_filters(pod_labels);
        assert!(
            !http_filters.is_empty(),
            "no EnvoyFilter inserts an HTTP filter into the gateway pod's chain"
        );
        http_filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }));
        // One listener per server port; a filter chain per server, TLS ones chosen by SNI and
        // terminated with the Secret their `credentialName` names (istiod's SDS).
        let mut ports: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
        for server in gateway["spec"]["servers"].as_array().into_iter().flatten() {
            let port = server["port"]["number"]
                .as_u64()
                .expect("Gateway server port");
            if !self.listeners.contains_key(&port) {
                continue;
            }
            let mut hcm = json!({
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": format!("outbound_0.0.0.0_{port}"),
                    // Istio's gateway defaults (mesh config `pathNormalization: BASE`).
                    "use_remote_address": true,
                    "normalize_path": true,
                    "route_config": { "name": format!("http.{port}"), "virtual_hosts": virtual_hosts.clone() },
                    "http_filters": http_filters.clone()
                }
            });
            // An EnvoyFilter's MERGE of scalar fields into the connection manager.
            for merge in &hcm_merges {
                assert_eq!(merge["@type"], hcm["typed_config"]["@type"], "{merge}");
                for (k, v) in merge.as_object().into_iter().flatten() {
                    assert!(
                        v.is_string() || v.is_number() || v.is_boolean(),
                        "only scalar merges are modelled: {merge}"
                    );
                    hcm["typed_config"][k] = v.clone();
                }
            }
            let chain = match server["tls"]["mode"].as_str() {
                None => json!({ "filters": [hcm] }),
                Some("SIMPLE") => {
                    let secret = server["tls"]["credentialName"].as_str().unwrap_or_else(|| {
                        panic!("an HTTPS server without credentialName: {server}")
                    });
                    let (chain, key) = self.tls_secrets.get(secret).unwrap_or_else(|| {
                        panic!("no TLS Secret {secret} in the gateway's namespace")
                    });
                    json!({
                        "filter_chain_match": { "server_names": server["hosts"].clone() },
                        "transport_socket": {
                            "name": "envoy.transport_sockets.tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                                "common_tls_context": {
                                    "alpn_protocols": ["h2", "http/1.1"],
                                    "tls_certificates": [{
                                        "certificate_chain": { "filename": chain.display().to_string() },
                                        "private_key": { "filename": key.display().to_string() }
                                    }]
                                }
                            }
                        },
                        "filters": [hcm]
                    })
                }
                Some(other) => panic!("TLS mode {other} is not modelled here: {server}"),
            };
            ports.entry(port).or_default().push(chain);
        }
        let listeners: Vec<Value> = ports
            .into_iter()
            .map(|(port, chains)| {
                let addr = self.listeners[&port];
                json!({
                    "name": format!("0.0.0.0_{port}"),
                    "address": { "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } },
                    "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                    "filter_chains": chains
                })
            })
            .collect();
        assert!(!listeners.is_empty(), "no Gateway server port was placed");

        let clusters: Vec<Value> = clusters
            .into_iter()
            .map(|(name, addr)| {
                json!({
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "10s",
                    "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } } } }] }] }
                })
            })
            .collect();
        json!({
            "admin": { "address": { "socket_address": { "address": self.admin.ip().to_string(), "port_value": self.admin.port() } } },
            "static_resources": { "listeners": listeners, "clusters": clusters }
        })
    }

    /// The HTTP filters the `EnvoyFilter`s selecting the pod insert into the gateway's chain
    /// (before the router, which Istio's chain always ends with), each `config_discovery`
    /// answered with the `EXTENSION_CONFIG` it names, as istiod's ECDS would, its remote code
    /// pulled as the agent would (the `ISTIO_META_` variables consumed and removed).
    fn patched_filters(&self, pod_labels: &BTreeMap<String, String>) -> (Vec<Value>, Vec<Value>) {
        let gateway_namespace = namespace_of(self.objects.one("Gateway"));
        let mut extensions: BTreeMap<String, Value> = BTreeMap::new();
        let mut first = Vec::new();
        let mut before_router = Vec::new();
        let mut hcm_merges = Vec::new();
        for filter in self.objects.of_kind("EnvoyFilter") {
            let spec = &filter["spec"];
            let labels = &spec["workloadSelector"]["labels"];
            let selects = labels.as_object().is_some_and(|m| {
                m.iter()
                    .all(|(k, v)| pod_labels.get(k).map(String::as_str) == v.as_str())
            });
            // An EnvoyFilter applies to workloads of its own namespace (or every namespace
            // from the root namespace, which the render never uses).
            if !selects || namespace_of(filter) != gateway_namespace {
                continue;
            }
            for patch in spec["configPatches"].as_array().into_iter().flatten() {
                let value = &patch["patch"]["value"];
                match (
                    patch["applyTo"].as_str().unwrap_or_default(),
                    patch["patch"]["operation"].as_str().unwrap_or_default(),
                ) {
                    ("EXTENSION_CONFIG", "ADD") => {
                        let name = value["name"].as_str().expect("extension config name");
                        extensions.insert(
                            name.to_owned(),
                            self.agent_pulled(value["typed_config"].clone()),
                        );
                    }
                    ("HTTP_FILTER", op) => {
                        let context = patch["match"]["context"].as_str().unwrap_or("ANY");
                        assert!(
                            context == "GATEWAY" || context == "ANY",
                            "an HTTP_FILTER patch for {context} does not reach a gateway: {patch}"
                        );
                        match op {
                            "INSERT_FIRST" => first.push(value.clone()),
                            "INSERT_BEFORE"
                                if patch["match"]["listener"]["filterChain"]["filter"]
                                    ["subFilter"]["name"]
                                    == "envoy.filters.http.router" =>
                            {
                                before_router.push(value.clone())
                            }
                            other => panic!(
                                "HTTP_FILTER operation {other} is not modelled here: {patch}"
                            ),
                        }
                    }
                    ("NETWORK_FILTER", "MERGE")
                        if patch["match"]["listener"]["filterChain"]["filter"]["name"]
                            == "envoy.filters.network.http_connection_manager"
                            && patch["match"]["context"] == "GATEWAY" =>
                    {
                        hcm_merges.push(value["typed_config"].clone());
                    }
                    other => panic!("EnvoyFilter patch {other:?} is not modelled here: {patch}"),
                }
            }
        }
        let filters = first
            .into_iter()
            .chain(before_router)
            .map(|mut filter| {
                if let Some(discovery) = filter.get("config_discovery").cloned() {
                    let name = filter["name"].as_str().expect("filter name").to_owned();
                    let config = extensions
                        .get(&name)
                        .unwrap_or_else(|| {
                            panic!(
                                "config_discovery names {name}: no EXTENSION_CONFIG of that name"
                            )
                        })
                        .clone();
                    let type_url = config["@type"].as_str().unwrap_or_default().to_owned();
                    assert!(
                        discovery["type_urls"]
                            .as_array()
                            .is_some_and(|urls| urls.iter().any(|u| u == type_url.as_str())),
                        "the filter's config_discovery does not accept {type_url}: {discovery}"
                    );
                    filter = json!({ "name": name, "typed_config": config });
                }
                filter
            })
            .collect();
        (filters, hcm_merges)
    }

    /// The agent's rewrite of a remote Wasm module to the file it pulled
    /// (istio pkg/wasm/convert.go `rewriteVMConfig`).
    fn agent_pulled(&self, mut typed_config: Value) -> Value {
        let vm = &mut typed_config["config"]["vm_config"];
        let uri = vm["code"]["remote"]["http_uri"]["uri"]
            .as_str()
            .unwrap_or_else(|| panic!("the Wasm module is not remote: {vm}"))
            .to_owned();
        vm["code"] = json!({ "local": { "filename": (self.pull)(&uri).display().to_string() } });
        if let Some(values) = vm["environment_variables"]["key_values"].as_object_mut() {
            values.retain(|k, _| !k.starts_with("ISTIO_META_"));
            if values.is_empty() {
                vm["environment_variables"]
                    .as_object_mut()
                    .expect("environment_variables")
                    .remove("key_values");
            }
        }
        typed_config
    }
}

/// The Envoy routes Istio makes of one VirtualService http route (one per match).
fn envoy_routes(http: &Value) -> Vec<Value> {
    let name = http["name"].as_str().unwrap_or_default();
    let destinations = http["route"].as_array().expect("http route destinations");
    assert_eq!(
        destinations.len(),
        1,
        "one destination per route is rendered: {http}"
    );
    let destination = &destinations[0]["destination"];
    let host = destination["host"].as_str().expect("destination host");
    let port = destination["port"]["number"]
        .as_u64()
        .unwrap_or_else(|| panic!("destination without a port number: {http}"));
    // Istio's route timeout: the http route's, or none. istiod refuses one under 1 ms.
    let timeout = match http["timeout"].as_str() {
        None => "0s".to_owned(),
        Some(t) => {
            let seconds: f64 = t
                .strip_suffix('s')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a timeout in seconds (\"30s\"): {http}"));
            assert!(
                seconds >= 0.001,
                "istiod refuses a timeout under 1 ms: {http}"
            );
            t.to_owned()
        }
    };
    let mut action = json!({ "cluster": outbound_cluster(port, host), "timeout": timeout });
    if let Some(uri) = http["rewrite"]["uri"].as_str() {
        action["prefix_rewrite"] = json!(uri);
    }
    if let Some(authority) = http["rewrite"]["authority"].as_str() {
        action["host_rewrite_literal"] = json!(authority);
    }
    let matches: Vec<Value> = match http["match"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|m| {
                let uri = &m["uri"];
                if let Some(exact) = uri["exact"].as_str() {
                    json!({ "path": exact })
                } else if let Some(prefix) = uri["prefix"].as_str() {
                    json!({ "prefix": prefix })
                } else {
                    panic!("only uri exact and prefix matches are rendered: {m}")
                }
            })
            .collect(),
        _ => vec![json!({ "prefix": "/" })],
    };
    matches
        .into_iter()
        .map(|m| json!({ "name": name, "match": m, "route": action.clone() }))
        .collect()
}

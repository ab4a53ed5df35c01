//! Renders the Envoy bootstrap (listener, routes, clusters, the warden filter with its plugin
//! configuration) from the operator config, so Envoy's routing and the filter's matching come
//! from one source and cannot disagree.

use std::fmt::Write as _;

use warden_core::app::CALLBACK_PATH as APP_CALLBACK_PATH;
use warden_core::assertion::CLIENT_HEADERS as CLIENT_ASSERTION_HEADERS;
use warden_core::config::{DEFAULT_MAX_REQUEST_BYTES, ENVOY_ROUTE_PREFIX, ROUTE_HEADER};
use warden_core::url::ResourceUrl;

use super::plugin::{
    plugin_config, upstream, EnvoyInput, INTERNAL_CREDENTIAL_ENV, SESSION_KEY_ENV,
    STREAM_IDLE_TIMEOUT_SECONDS, STRIP_ASSERTION_FILTER, TOKEN_SERVICE_CLUSTER,
    TOKEN_SERVICE_INTERNAL_CLUSTER, TOKEN_SERVICE_PREFIXES, TOKEN_SERVICE_ROUTE,
};

/// The per-route `header_mutation` config with one request mutation.
fn route_header_mutation(mutation: &str) -> String {
    format!(
        "typed_per_filter_config: {{ envoy.filters.http.header_mutation: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute, mutations: {{ request_mutations: [ {mutation} ] }} }} }}"
    )
}

/// `s` as a literal in an RE2 pattern.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '/' && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The filter's labelled metrics carry their labels in the name (`warden_core::metrics`):
/// Envoy takes each out as a tag, so `/stats/prometheus` shows them as labels, and the
/// duration histogram gets buckets in microseconds.
fn write_stats_config(w: &mut String) {
    use warden_core::metrics::{DURATION_BUCKETS_US, REQUEST_DURATION, STATS_TAGS};
    let _ = writeln!(w, "stats_config:\n  stats_tags:");
    for (tag, regex) in STATS_TAGS {
        let _ = writeln!(
            w,
            "  - {{ tag_name: {}, regex: {} }}",
            json_string(tag),
            json_string(regex)
        );
    }
    let buckets: Vec<String> = DURATION_BUCKETS_US.iter().map(u64::to_string).collect();
    let _ = writeln!(
        w,
        "  histogram_bucket_settings:\n  - match: {{ prefix: {} }}\n    buckets: [ {} ]",
        json_string(&format!("wasmcustom.{REQUEST_DURATION}")),
        buckets.join(", ")
    );
}

/// Renders the bootstrap YAML. Field names are Envoy's; values are JSON-quoted so YAML never
/// reinterprets them.
pub fn render(input: &EnvoyInput) -> Result<String, String> {
    // Compile what we render: a render that the filter would refuse is a bug here, not in Envoy.
    let plugin = serde_json::to_string(&plugin_config(input)).map_err(|e| e.to_string())?;
    warden_core::config::CompiledConfig::from_json(plugin.as_bytes()).map_err(|e| e.to_string())?;

    // Routes grouped by authority: one virtual host each, plus a catch-all that fails closed.
    let mut hosts: Vec<(String, Vec<(usize, ResourceUrl)>)> = Vec::new();
    for (i, r) in input.routes.iter().enumerate() {
        let url = ResourceUrl::parse(&r.resource).map_err(|e| format!("routes[{i}]: {e}"))?;
        match hosts.iter_mut().find(|(a, _)| *a == url.authority) {
            Some((_, list)) => list.push((i, url)),
            None => hosts.push((url.authority.clone(), vec![(i, url)])),
        }
    }

    let mut y = String::new();
    let w = &mut y;
    let _ = writeln!(
        w,
        "# Rendered by `warden-token-service render-envoy`; edit warden.yaml, not this file."
    );
    let _ = writeln!(
        w,
        "admin:\n  address:\n    socket_address: {{ address: {}, port_value: {} }}",
        input.envoy.admin.ip(),
        input.envoy.admin.port()
    );
    // The connection limit below must never lock the operator out of the admin interface.
    let _ = writeln!(w, "  ignore_global_conn_limit: true");
    write_stats_config(w);
    // Overload manager: a cap on downstream connections, so a flood of sockets cannot exhaust
    // file descriptors, and a heap budget: each connection (each HTTP/2 stream) may buffer up
    // to a body limit, so near the budget the streams holding the most are reset, and close
    // to it no new request is taken.
    let _ = writeln!(w, "overload_manager:\n  refresh_interval: 0.25s\n  buffer_factory_config:\n    minimum_account_to_track_power_of_two: 20");
    let _ = writeln!(w, "  actions:\n  - name: envoy.overload_actions.reset_high_memory_stream\n    triggers:\n    - name: envoy.resource_monitors.fixed_heap\n      scaled: {{ scaling_threshold: 0.85, saturation_threshold: 0.95 }}");
    let _ = writeln!(w, "  - name: envoy.overload_actions.stop_accepting_requests\n    triggers:\n    - name: envoy.resource_monitors.fixed_heap\n      threshold: {{ value: 0.95 }}");
    let _ = writeln!(w, "  resource_monitors:\n  - name: envoy.resource_monitors.fixed_heap\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig\n      max_heap_size_bytes: {}", input.envoy.max_heap_bytes);
    let _ = writeln!(w, "  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: {}", input.envoy.max_connections);
    let _ = writeln!(w, "static_resources:\n  listeners:\n  - name: mcp\n    address:\n      socket_address: {{ address: {}, port_value: {} }}", input.envoy.listen.ip(), input.envoy.listen.port());
    // The filter buffers POST bodies up to each route's limit; Envoy must allow that much
    // (plus headroom for headers) or it would answer 413 itself, without the JSON-RPC error.
    let largest_body = input
        .routes
        .iter()
        .filter(|r| !r.client)
        .map(|r| {
            r.server
                .max_request_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
        })
        .max()
        .unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
    let _ = writeln!(
        w,
        "    per_connection_buffer_limit_bytes: {}",
        u64::from(largest_body) + 64 * 1024
    );
    let _ = writeln!(w, "    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:");
    let _ = writeln!(w, "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    let _ = writeln!(w, "          stat_prefix: mcp");
    // The client is Envoy's TCP peer, or with `xff_num_trusted_hops` proxies in front, the
    // address they forwarded for; Envoy appends its peer to `X-Forwarded-For`, so the token
    // service (with Envoy in `trusted_proxies`) keys its per-address limits on the client.
    // The client's own `X-Request-Id` is kept for log correlation, as before.
    let _ = writeln!(
        w,
        "          use_remote_address: true\n          xff_num_trusted_hops: {}\n          preserve_external_request_id: true",
        input.envoy.xff_num_trusted_hops
    );
    // The filter matches paths itself: make Envoy normalize them first so both see one path.
    let _ = writeln!(w, "          normalize_path: true\n          merge_slashes: true\n          path_with_escaped_slashes_action: REJECT_REQUEST");
    // Request trailers reach the filter over HTTP/1 too (it judges the body when they come).
    let _ = writeln!(
        w,
        "          http_protocol_options: {{ enable_trailers: true }}"
    );
    // Self-protection against slow and idle clients. The headers and the whole request must
    // arrive in time, and a connection without a request in progress is closed when idle.
    // Responses are not limited by these: long tool calls and SSE streams are requests in
    // progress, and an SSE stream may stay silent for an hour (stream and route idle timeouts).
    let _ = writeln!(
        w,
        "          request_headers_timeout: {}s\n          request_timeout: {}s",
        input.envoy.request_headers_timeout_seconds, input.envoy.request_timeout_seconds
    );
    if let Some(url) = &input.traces_url {
        render_tracing(w, url);
    }
    // `Mcp_Session_Id` is `Mcp-Session-Id` to CGI/WSGI-style servers: no header with '_' gets
    // past Envoy (the filter refuses the ones it reads in any bootstrap).
    let _ = writeln!(
        w,
        "          common_http_protocol_options: {{ idle_timeout: {}s, headers_with_underscores_action: REJECT_REQUEST }}",
        input.envoy.idle_timeout_seconds
    );
    let _ = writeln!(
        w,
        "          http2_protocol_options: {{ max_concurrent_streams: 100, initial_stream_window_size: 65536, initial_connection_window_size: 1048576 }}"
    );
    let _ = writeln!(
        w,
        "          stream_idle_timeout: {STREAM_IDLE_TIMEOUT_SECONDS}s"
    );
    // The filter's authorize decision (JSON) rides along in filter state for each MCP call.
    // A client route's sign-in callback carries a one-time code in its query: that line
    // shows the path without it (a second logger, chosen by the path).
    let _ = writeln!(w, "          access_log:");
    for (path, invert) in [
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", true),
        ("%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%", false),
    ] {
        let _ = writeln!(w, "          - name: envoy.access_loggers.stdout\n            filter: {{ header_filter: {{ header: {{ name: \":path\", string_match: {{ prefix: {} }}, invert_match: {invert} }} }} }}\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", json_string(APP_CALLBACK_PATH));
        let _ = writeln!(w, "              log_format:\n                text_format_source:\n                  inline_string: \"[%START_TIME%] \\\"%REQ(:METHOD)% {path} %PROTOCOL%\\\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%ms %REQ(X-REQUEST-ID)% %UPSTREAM_HOST% mcp=%FILTER_STATE(wasm.mcp_warden.authorize:PLAIN)%\\n\"");
        if !invert {
            let _ = writeln!(w, "                formatters:\n                - name: envoy.formatter.req_without_query\n                  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery }}");
        }
    }
    let _ = writeln!(
        w,
        "          route_config:\n            name: mcp\n            virtual_hosts:"
    );
    for (authority, routes) in &hosts {
        // Exactly the hosts the filter matches (the authority, plus the scheme's default port
        // spelled out when the authority has none): any other Host falls to the catch-all.
        let mut domains = vec![json_string(authority)];
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.ends_with(']'));
        if !has_port {
            let port = if routes[0].1.scheme == "https" {
                443
            } else {
                80
            };
            domains.push(json_string(&format!("{authority}:{port}")));
        }
        let _ = writeln!(w, "            - name: {}", json_string(authority));
        let _ = writeln!(w, "              domains: [{}]", domains.join(", "));
        let _ = writeln!(w, "              routes:");
        // Server listing, connect and disconnect: answered by the token service on every host
        // the gateway fronts, path unchanged, with no warden route named (the filter lets them
        // pass untouched).
        for prefix in TOKEN_SERVICE_PREFIXES {
            let _ = writeln!(
                w,
                "              - name: {}\n                match: {{ prefix: {} }}\n                route: {{ cluster: {TOKEN_SERVICE_CLUSTER} }}\n                {}",
                json_string(TOKEN_SERVICE_ROUTE),
                json_string(prefix),
                route_header_mutation(&format!("{{ remove: {ROUTE_HEADER} }}"))
            );
        }
        // Longest prefix first, as the filter matches.
        let mut sorted = routes.clone();
        sorted.sort_by_key(|(_, url)| std::cmp::Reverse(url.path.len()));
        for (i, url) in &sorted {
            let route = &input.routes[*i];
            let (host, port, to_path) =
                upstream(&route.to).map_err(|e| format!("routes[{i}].to: {e}"))?;
            let cluster = format!("route_{i}");
            let to_authority = if port == 80 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            // The name tells the filter which warden route Envoy chose: as the route name
            // (`xds.route_name`) and in the route header the filter reads with the others.
            let route_name = json_string(&format!("{ENVOY_ROUTE_PREFIX}{}", route.name));
            let prefix_rewrite = |to: &str| format!("prefix_rewrite: {}", json_string(to));
            // A web app's sign-in callback carries a one-time code in its query, and Envoy's
            // span shows the whole URL: `mcp: client` routes are not traced.
            let untraced = if route.client && input.traces_url.is_some() {
                "\n                tracing: { client_sampling: { numerator: 0 }, random_sampling: { numerator: 0 }, overall_sampling: { numerator: 0 } }"
            } else {
                ""
            };
            let action = |rewrite: String| {
                format!(
                    "route: {{ cluster: {cluster}, {rewrite}, host_rewrite_literal: {}, timeout: 0s, idle_timeout: {STREAM_IDLE_TIMEOUT_SECONDS}s }}\n                request_headers_to_remove: [{ROUTE_HEADER}]\n                {}{untraced}",
                    json_string(&to_authority),
                    route_header_mutation(&format!(
                        "{{ append: {{ header: {{ key: {ROUTE_HEADER}, value: {route_name} }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }} }}"
                    ))
                )
            };
            if url.path.is_empty() {
                // A root resource: `/` maps to the upstream path itself, `/x` to `<path>/x`.
                let exact = if to_path.is_empty() {
                    "/".to_string()
                } else {
                    to_path.clone()
                };
                let _ = writeln!(
                    w,
                    "              - name: {route_name}\n                match: {{ path: \"/\" }}\n                {}",
                    action(prefix_rewrite(&exact))
                );
                let _ = writeln!(
                    w,
                    "              - name: {route_name}\n                match: {{ prefix: \"/\" }}\n                {}",
                    action(prefix_rewrite(&format!("{to_path}/")))
                );
            } else {
                let rewrite = if to_path.is_empty() {
                    // `/app`, `/app/` → `/` and `/app/x` → `/x` (a prefix rewrite to `/`
                    // would make `/app/` into `//`).
                    format!(
                        "regex_rewrite: {{ pattern: {{ regex: {} }}, substitution: \"/\" }}",
                        json_string(&format!("^{}/?", regex_escape(&url.path)))
                    )
                } else {
                    prefix_rewrite(&to_path)
                };
                let _ = writeln!(
                    w,
                    "              - name: {route_name}\n                match: {{ path_separated_prefix: {} }}\n                {}",
                    json_string(&url.path),
                    action(rewrite)
                );
            }
        }
        let _ = writeln!(w, "              - match: {{ prefix: \"/\" }}\n                direct_response: {{ status: 404, body: {{ inline_string: \"no MCP route here\\n\" }} }}\n                {}", route_header_mutation(&format!("{{ remove: {ROUTE_HEADER} }}")));
    }
    // Unknown hosts get nothing (the filter answers metadata only for known hosts anyway).
    let _ = writeln!(w, "            - name: unknown-host\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                direct_response: {{ status: 404, body: {{ inline_string: \"unknown host\\n\" }} }}\n                {}", route_header_mutation(&format!("{{ remove: {ROUTE_HEADER} }}")));
    // A client never sends the identity assertion, ours or Pomerium's: removed before any
    // filter runs, on every route (the warden filter removes them too, and adds the real one
    // where configured).
    // Route-level `request_headers_to_remove` would not do: the router applies it after the
    // filters, so it would also remove the assertion the filter adds.
    let _ = writeln!(w, "          http_filters:\n          - name: {STRIP_ASSERTION_FILTER}\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              mutations: {{ request_mutations: [ {} ] }}", CLIENT_ASSERTION_HEADERS.map(|h| format!("{{ remove: {h} }}")).join(", "));
    // Sets the route header per route (above), so a client's own value never survives.
    let _ = writeln!(w, "          - name: envoy.filters.http.header_mutation\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation");
    let _ = writeln!(
        w,
        "          - name: envoy.filters.http.wasm\n            typed_config:"
    );
    let _ = writeln!(w, "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:");
    let _ = writeln!(w, "                name: mcp-warden\n                root_id: mcp-warden\n                fail_open: false");
    // Lets the filter pause in the headers phase and still see (and buffer) the body.
    let _ = writeln!(w, "                allow_on_headers_stop_iteration: true");
    let _ = writeln!(w, "                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue");
    let _ = writeln!(w, "                  value: {}", json_string(&plugin));
    let _ = writeln!(w, "                vm_config:\n                  vm_id: mcp-warden\n                  runtime: envoy.wasm.runtime.v8");
    // The session-binding key and the internal credential come from Envoy's environment,
    // never from this file (Envoy's admin `/config_dump` shows it): set the session key to
    // the same random value on every Envoy replica (else each process makes its own).
    let env_keys = if input.internal.is_some() {
        format!("{SESSION_KEY_ENV}, {INTERNAL_CREDENTIAL_ENV}")
    } else {
        SESSION_KEY_ENV.to_string()
    };
    let _ = writeln!(
        w,
        "                  environment_variables: {{ host_env_keys: [{env_keys}] }}"
    );
    let _ = writeln!(
        w,
        "                  code: {{ local: {{ filename: {} }} }}",
        json_string(&input.wasm_path)
    );
    let _ = writeln!(w, "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router");
    let _ = writeln!(w, "  clusters:");
    let cluster = |w: &mut String, name: &str, host: &str, port: u16| {
        let _ = writeln!(w, "  - name: {name}\n    type: STRICT_DNS\n    connect_timeout: 2s\n    dns_lookup_family: V4_PREFERRED");
        let _ = writeln!(w, "    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {port} }}", json_string(host));
    };
    cluster(
        w,
        TOKEN_SERVICE_CLUSTER,
        &input.token_service.ip().to_string(),
        input.token_service.port(),
    );
    if let Some(internal) = &input.internal {
        cluster(
            w,
            TOKEN_SERVICE_INTERNAL_CLUSTER,
            &internal.listen.ip().to_string(),
            internal.listen.port(),
        );
    }
    for (i, route) in input.routes.iter().enumerate() {
        let (host, port, _) = upstream(&route.to).map_err(|e| format!("routes[{i}].to: {e}"))?;
        cluster(w, &format!("route_{i}"), &host, port);
    }
    if let Some(url) = &input.traces_url {
        // Envoy posts over plain http: an https collector serves the token service alone.
        let (host, port, _) = upstream(url).map_err(|e| {
            format!("telemetry.otlp_endpoint: {e} (Envoy posts spans over http: point it at a collector beside it)")
        })?;
        cluster(w, OTLP_CLUSTER, &host, port);
    }
    Ok(y)
}

/// The cluster Envoy posts its spans through.
pub const OTLP_CLUSTER: &str = "warden_otlp";

/// The listener's tracer: OpenTelemetry over OTLP/HTTP to `url`, every request sampled, and
/// the span tagged from the filter state the filter sets (`trace_context::SPAN_TAGS`).
fn render_tracing(w: &mut String, url: &str) {
    let _ = writeln!(w, "          tracing:\n            random_sampling: {{ value: 100 }}\n            provider:\n              name: envoy.tracers.opentelemetry\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig");
    let _ = writeln!(
        w,
        "                http_service: {{ http_uri: {{ uri: {}, cluster: {OTLP_CLUSTER}, timeout: 1s }} }}\n                service_name: {}",
        json_string(url),
        json_string(crate::config_telemetry::ENVOY_SERVICE_NAME)
    );
    let _ = writeln!(w, "            custom_tags:");
    for (tag, key) in warden_core::trace_context::SPAN_TAGS {
        let _ = writeln!(
            w,
            "            - {{ tag: {}, value: {} }}",
            json_string(tag),
            json_string(&format!("%FILTER_STATE(wasm.{key}:PLAIN)%"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::plugin::*;

    pub(super) fn sample() -> EnvoyInput {
        EnvoyInput {
            envoy: crate::config::EnvoyConfig::default(),
            issuer: "http://127.0.0.1:9100".into(),
            token_service: "127.0.0.1:9100".parse().unwrap(),
            wasm_path: "target/wasm32-wasip1/release/warden_filter.wasm".into(),
            routes: vec![
                RouteInput {
                    name: "demo".into(),
                    resource: "http://127.0.0.1:9000/mcp".into(),
                    to: "http://127.0.0.1:9200/mcp".into(),
                    scopes: vec![],
                    policy: serde_json::json!({"allow": {"and": [{"authenticated_user": true}]}}),
                    server: Default::default(),
                    upstream_oauth: false,
                    pass_identity_headers: false,
                    identity_header_names: warden_core::config::default_identity_header_names(),
                    client: false,
                },
                RouteInput {
                    name: "root".into(),
                    resource: "http://localhost:9000".into(),
                    to: "http://127.0.0.1:9200/mcp".into(),
                    scopes: vec!["mcp".into()],
                    policy: serde_json::json!({"allow": {"and": [{"authenticated_user": true}]}}),
                    server: Default::default(),
                    upstream_oauth: false,
                    pass_identity_headers: false,
                    identity_header_names: warden_core::config::default_identity_header_names(),
                    client: false,
                },
            ],
            internal: None,
            revocation: Default::default(),
            traces_url: None,
        }
    }

    #[test]
    fn telemetry_adds_the_opentelemetry_tracer_its_cluster_and_the_span_tags() {
        let mut input = sample();
        input.traces_url = Some("http://127.0.0.1:4318/v1/traces".into());
        let y = render(&input).unwrap();
        assert!(y.contains("name: envoy.tracers.opentelemetry"), "{y}");
        assert!(y.contains(
            "http_uri: { uri: \"http://127.0.0.1:4318/v1/traces\", cluster: warden_otlp, timeout: 1s }"
        ));
        assert!(y.contains("service_name: \"mcp-warden-envoy\""));
        assert!(y.contains("random_sampling: { value: 100 }"));
        assert!(y.contains("- name: warden_otlp"));
        assert!(y.contains("port_value: 4318"));
        for (tag, key) in warden_core::trace_context::SPAN_TAGS {
            assert!(
                y.contains(&format!(
                    "- {{ tag: \"{tag}\", value: \"%FILTER_STATE(wasm.{key}:PLAIN)%\" }}"
                )),
                "{tag}"
            );
        }
        assert!(y.contains("span_tags"), "the filter is told to set them");
        let plain = render(&sample()).unwrap();
        for absent in [
            "tracing:",
            "warden_otlp",
            "span_tags",
            "FILTER_STATE(wasm.mcp_warden.tool",
        ] {
            assert!(!plain.contains(absent), "{absent}");
        }
    }

    #[test]
    fn web_app_routes_are_not_traced_for_their_callback_carries_a_code() {
        let mut input = with_client_route();
        input.traces_url = Some("http://127.0.0.1:4318/v1/traces".into());
        let y = render(&input).unwrap();
        let off = "tracing: { client_sampling: { numerator: 0 }, random_sampling: { numerator: 0 }, overall_sampling: { numerator: 0 } }";
        // The one client route is a root resource: two Envoy routes (`/` and the prefix).
        assert_eq!(y.matches(off).count(), 2, "{y}");
        assert!(!render(&with_client_route()).unwrap().contains(off));
    }

    #[test]
    fn envoy_is_not_pointed_at_an_https_collector() {
        let mut input = sample();
        input.traces_url = Some("https://collector.example/v1/traces".into());
        let e = render(&input).unwrap_err();
        assert!(e.starts_with("telemetry.otlp_endpoint"), "{e}");
    }

    #[test]
    fn renders_matching_routes_and_plugin_config() {
        let yaml = render(&sample()).unwrap();
        assert!(yaml.contains("path_separated_prefix: \"/mcp\""), "{yaml}");
        assert!(yaml.contains("allow_on_headers_stop_iteration: true"));
        assert!(yaml.contains("path_with_escaped_slashes_action: REJECT_REQUEST"));
        // Only the exact authority: a port-less Host must not reach an MCP route unchecked.
        assert!(yaml.contains("domains: [\"localhost:9000\"]"), "{yaml}");
        assert!(yaml.contains("name: \"mcp-warden:demo\""), "{yaml}");
        // The embedded plugin configuration is exactly what the filter compiles.
        let plugin = serde_json::to_string(&plugin_config(&sample())).unwrap();
        let compiled = warden_core::config::CompiledConfig::from_json(plugin.as_bytes()).unwrap();
        assert_eq!(compiled.routes.len(), 2);
        assert_eq!(compiled.jwks.unwrap().authority, "127.0.0.1:9100");
    }

    #[test]
    fn the_histograms_sampling_reaches_the_filter() {
        let compiled = |input: &EnvoyInput| {
            let plugin = serde_json::to_string(&plugin_config(input)).unwrap();
            warden_core::config::CompiledConfig::from_json(plugin.as_bytes()).unwrap()
        };
        assert_eq!(
            compiled(&sample()).duration_sample_every,
            warden_core::config::DEFAULT_DURATION_SAMPLE_EVERY
        );
        let mut input = sample();
        input.envoy.duration_sample_every = 1;
        assert_eq!(compiled(&input).duration_sample_every, 1);
    }

    #[test]
    fn bootstrap_turns_the_filters_metric_names_into_labels() {
        let yaml = render(&sample()).unwrap();
        for expected in [
            "stats_config:\n  stats_tags:\n",
            r#"- { tag_name: "route", regex: "(;route=([^;]*))" }"#,
            r#"- { tag_name: "mcp.method.name", regex: "(;mcp_method_name=([^;]*))" }"#,
            r#"- { tag_name: "gen_ai.tool.name", regex: "(;gen_ai_tool_name=([^;]*))" }"#,
            r#"- { tag_name: "decision", regex: "(;decision=([^;]*))" }"#,
            r#"- match: { prefix: "wasmcustom.mcp_warden_request_duration" }"#,
            "buckets: [ 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000, 250000, 1000000 ]",
        ] {
            assert!(yaml.contains(expected), "missing {expected}:\n{yaml}");
        }
    }

    #[test]
    fn bootstrap_protects_itself_and_keeps_long_streams() {
        let yaml = render(&sample()).unwrap();
        for expected in [
            "request_headers_timeout: 10s",
            "request_timeout: 60s",
            "common_http_protocol_options: { idle_timeout: 60s, headers_with_underscores_action: REJECT_REQUEST }",
            "max_heap_size_bytes: 1073741824",
            "envoy.overload_actions.reset_high_memory_stream",
            "max_active_downstream_connections: 10000",
            "ignore_global_conn_limit: true",
            "max_concurrent_streams: 100",
            "host_env_keys: [MCP_WARDEN_SESSION_KEY]",
        ] {
            assert!(yaml.contains(expected), "missing {expected}:\n{yaml}");
        }
        // A 70 s tool call and an SSE stream silent for minutes: no route timeout, and stream
        // idle timeouts of an hour at both levels.
        assert!(yaml.contains("stream_idle_timeout: 3600s"));
        assert!(yaml.contains("timeout: 0s, idle_timeout: 3600s"));
        let mut input = sample();
        input.envoy.idle_timeout_seconds = 7;
        input.envoy.max_connections = 3;
        let yaml = render(&input).unwrap();
        assert!(yaml.contains("idle_timeout: 7s,"));
        assert!(yaml.contains("max_active_downstream_connections: 3"));
    }

    #[test]
    fn envoy_appends_its_client_to_x_forwarded_for_trusting_the_configured_hops() {
        let yaml = render(&sample()).unwrap();
        assert!(
            yaml.contains("          use_remote_address: true\n          xff_num_trusted_hops: 0\n          preserve_external_request_id: true\n"),
            "{yaml}"
        );
        let mut input = sample();
        input.envoy.xff_num_trusted_hops = 2;
        assert!(render(&input)
            .unwrap()
            .contains("          xff_num_trusted_hops: 2\n"));
    }

    #[test]
    fn rejects_unrenderable_upstream() {
        let mut input = sample();
        input.routes[0].to = "https://api.example.com/mcp".into();
        assert!(render(&input).unwrap_err().contains("routes[0].to"));
    }

    fn with_upstream_oauth() -> EnvoyInput {
        let mut input = sample();
        input.routes[0].upstream_oauth = true;
        input.internal = Some(InternalListener {
            listen: "127.0.0.1:9101".parse().unwrap(),
        });
        input
    }

    #[test]
    fn upstream_oauth_routes_get_the_internal_listener() {
        let input = with_upstream_oauth();
        let yaml = render(&input).unwrap();
        assert!(
            yaml.contains(&format!("  - name: {TOKEN_SERVICE_INTERNAL_CLUSTER}\n")),
            "{yaml}"
        );
        assert!(
            yaml.contains("socket_address: { address: \"127.0.0.1\", port_value: 9101 }"),
            "{yaml}"
        );
        let plugin = serde_json::to_string(&plugin_config(&input)).unwrap();
        let compiled = warden_core::config::CompiledConfig::from_json(plugin.as_bytes()).unwrap();
        let ts = compiled.token_service.as_ref().unwrap();
        assert_eq!(ts.cluster, TOKEN_SERVICE_INTERNAL_CLUSTER);
        assert_eq!(ts.authority, "127.0.0.1:9101");
        assert!(compiled.routes[0].upstream_oauth);
        assert!(!compiled.routes[1].upstream_oauth);
        // The filter gets the credential from Envoy's environment, never from the bootstrap.
        assert!(yaml.contains(&format!(
            "host_env_keys: [{SESSION_KEY_ENV}, {INTERNAL_CREDENTIAL_ENV}]"
        )));
        assert!(!plugin.contains("credential"), "{plugin}");
    }

    #[test]
    fn routes_without_upstream_oauth_render_as_before() {
        let yaml = render(&sample()).unwrap();
        assert!(!yaml.contains(TOKEN_SERVICE_INTERNAL_CLUSTER), "{yaml}");
        assert!(!yaml.contains("upstream_oauth"), "{yaml}");
        let plugin = plugin_config(&sample());
        assert!(plugin.token_service.is_none());
        assert!(plugin.routes.iter().all(|r| !r.upstream_oauth));
    }

    #[test]
    fn a_client_sent_assertion_is_removed_before_the_filters_on_every_route() {
        let yaml = render(&sample()).unwrap();
        let strip = yaml.find(STRIP_ASSERTION_FILTER).unwrap();
        let wasm = yaml.find("name: envoy.filters.http.wasm").unwrap();
        let router = yaml.find("name: envoy.filters.http.router").unwrap();
        assert!(strip < wasm && wasm < router, "{yaml}");
        assert!(
            yaml.contains(
                "mutations: { request_mutations: [ { remove: x-warden-jwt-assertion }, { remove: x-pomerium-jwt-assertion }, { remove: x-pomerium-assertion } ] }"
            ),
            "{yaml}"
        );
        // Never in a route's `request_headers_to_remove`: the router would apply it after the
        // filter added the real assertion.
        assert!(!yaml.contains("request_headers_to_remove: [x-warden-jwt-assertion"));
    }

    #[test]
    fn identity_assertion_routes_get_the_internal_listener() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("internal-credential");
        let yaml = format!(
            r#"
authorization_server:
  issuer: http://127.0.0.1:9100
  internal_credential_file: {file}
routes:
- name: who
  from: http://127.0.0.1:9000
  prefix: /who
  to: http://127.0.0.1:9200/mcp
  pass_identity_headers: true
  mcp: {{server: {{}}}}
  policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
- name: plain
  from: http://127.0.0.1:9000
  prefix: /plain
  to: http://127.0.0.1:9200/mcp
  mcp: {{server: {{}}}}
  policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#,
            file = file.display()
        );
        let config = crate::config::Config::from_yaml(&yaml).unwrap();
        assert!(!config.uses_upstream_oauth());
        assert!(config.uses_internal_listener());
        let input = EnvoyInput::from_config(&config, "filter.wasm");
        assert!(input.internal.is_some());
        assert!(render(&input)
            .unwrap()
            .contains(&format!("  - name: {TOKEN_SERVICE_INTERNAL_CLUSTER}\n")));
        let plugin = serde_json::to_string(&plugin_config(&input)).unwrap();
        let compiled = warden_core::config::CompiledConfig::from_json(plugin.as_bytes()).unwrap();
        assert!(compiled.token_service.is_some());
        assert!(compiled.routes[0].pass_identity_headers);
        assert!(!compiled.routes[0].upstream_oauth);
        assert!(!compiled.routes[1].pass_identity_headers);
        // Without the option anywhere: no internal listener, no flag in the plugin config.
        let plain = render(&sample()).unwrap();
        assert!(!plain.contains("pass_identity_headers"), "{plain}");
    }

    #[test]
    fn the_render_never_holds_or_creates_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("internal-credential");
        std::fs::write(&file, "zBeZPpy8Obod9yzT34isNbgKwF6m_JevaZ2UFro94aw").unwrap();
        let yaml = format!(
            r#"
authorization_server:
  issuer: http://127.0.0.1:9100
  internal_credential_file: {file}
routes:
- name: gh
  from: http://127.0.0.1:9000
  prefix: /gh
  to: http://127.0.0.1:9200/mcp
  mcp:
    server:
      upstream_oauth2:
        client_id: abc
        endpoint: {{auth_url: "https://github.com/login/oauth/authorize", token_url: "https://github.com/login/oauth/access_token"}}
  policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#,
            file = file.display()
        );
        let config = crate::config::Config::from_yaml(&yaml).unwrap();
        let input = EnvoyInput::from_config(&config, "filter.wasm");
        assert!(input.routes[0].upstream_oauth);
        let rendered = render(&input).unwrap();
        assert!(rendered.contains(TOKEN_SERVICE_INTERNAL_CLUSTER));
        assert!(
            !rendered.contains("zBeZPpy8Obod9yzT34isNbgKwF6m"),
            "{rendered}"
        );
        assert!(rendered.contains(INTERNAL_CREDENTIAL_ENV));
        // Nor does rendering create the file: the token service does, at its first start.
        let elsewhere = dir.path().join("none-yet");
        let config = crate::config::Config::from_yaml(&yaml.replace(
            &file.display().to_string(),
            &elsewhere.display().to_string(),
        ))
        .unwrap();
        render(&EnvoyInput::from_config(&config, "filter.wasm")).unwrap();
        assert!(!elsewhere.exists());
    }

    fn with_client_route() -> EnvoyInput {
        let mut input = sample();
        input.routes.push(RouteInput {
            name: "chat".into(),
            resource: "http://chat.example.com".into(),
            to: "http://127.0.0.1:3000".into(),
            scopes: vec![],
            policy: serde_json::json!({"allow": {"and": [{"domain": {"is": "example.com"}}]}}),
            server: Default::default(),
            upstream_oauth: false,
            pass_identity_headers: true,
            identity_header_names: warden_core::config::default_identity_header_names(),
            client: true,
        });
        input.internal = Some(InternalListener {
            listen: "127.0.0.1:9101".parse().unwrap(),
        });
        input
    }

    #[test]
    fn client_routes_are_kind_client_in_the_plugin_config() {
        let input = with_client_route();
        let plugin = serde_json::to_value(plugin_config(&input)).unwrap();
        let routes = plugin["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 3);
        // Server routes are unchanged: no `kind`.
        assert!(routes[0].get("kind").is_none());
        assert_eq!(routes[0]["name"], "demo");
        let chat = &routes[2];
        assert_eq!(chat["name"], "chat");
        assert_eq!(chat["kind"], "client");
        assert_eq!(chat["resource"], "http://chat.example.com");
        assert_eq!(chat["pass_identity_headers"], true);
        assert_eq!(
            chat["policy"],
            serde_json::json!({"allow": {"and": [{"domain": {"is": "example.com"}}]}})
        );
        assert!(chat.get("scopes").is_none(), "{chat}");
        // The filter's call-outs for app sessions need the internal listener.
        assert_eq!(
            plugin["token_service"]["cluster"],
            TOKEN_SERVICE_INTERNAL_CLUSTER
        );
        // The filter compiles the whole configuration, client route included.
        let json = serde_json::to_string(&plugin_config(&input)).unwrap();
        let compiled = warden_core::config::CompiledConfig::from_json(json.as_bytes()).unwrap();
        assert_eq!(compiled.routes.len(), 3);
    }

    #[test]
    fn client_routes_get_an_envoy_route_to_the_app() {
        let yaml = render(&with_client_route()).unwrap();
        assert!(yaml.contains("- name: \"chat.example.com\""), "{yaml}");
        assert!(
            yaml.contains("domains: [\"chat.example.com\", \"chat.example.com:80\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("name: \"mcp-warden:chat\""), "{yaml}");
        assert!(yaml.contains("cluster: route_2,"), "{yaml}");
        assert!(
            yaml.contains("socket_address: { address: \"127.0.0.1\", port_value: 3000 }"),
            "{yaml}"
        );
        // The embedded plugin configuration carries the client route.
        assert!(yaml.contains("\\\"kind\\\":\\\"client\\\""), "{yaml}");
    }

    #[test]
    fn every_host_sends_the_listing_paths_to_the_token_service() {
        let yaml = render(&with_client_route()).unwrap();
        for prefix in TOKEN_SERVICE_PREFIXES {
            let line = format!(
                "match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {TOKEN_SERVICE_CLUSTER} }}"
            );
            // One per configured virtual host (127.0.0.1:9000, localhost:9000, chat.example.com).
            assert_eq!(yaml.matches(&line).count(), 3, "{prefix}:\n{yaml}");
        }
        // They come before the hosts' own routes (a root route would take them otherwise).
        let listing = yaml.find("prefix: \"/.warden/mcp/\"").unwrap();
        let root = yaml.find("match: { path: \"/\" }").unwrap();
        assert!(listing < root);
    }
}

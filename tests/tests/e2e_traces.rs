//! One trace end to end (issue 22): real Envoy with the filter and its OpenTelemetry tracer,
//! the token service exporting over OTLP/HTTP, the in-repo OAuth provider, and a small OTLP
//! receiver here. A client's `tools/call` whose upstream token needs a refresh carries a
//! `traceparent`; Envoy's span, the token service's handling of the filter's call-out and its
//! call to the provider's token endpoint all land in that one trace, and no span holds a token.
//! A key-set fetch a call sets off goes on in that call's trace too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{json, Value};
use warden_e2e::*;

/// One test of this file at a time: on a slow 2-core machine the other's sign-ins delayed the
/// key-rotation test until the filter's own JWKS refresh had fetched the new key, so no fetch
/// was left for the traced call to set off.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFIX: &str = "/gh";
const ALICE: UpstreamLogin<'static> = UpstreamLogin {
    user: PROVIDER_USER,
    password: PROVIDER_PASSWORD,
    approve: true,
};
/// A tool argument: it must appear in no span.
const ARGUMENT: &str = "tool-argument-never-in-a-span-7f3a";

/// One span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on 127.0.0.1.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let kept = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut spans = kept.spans.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .as_ref()
                            .and_then(|r| text(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                spans.push(Received {
                                    service: service.clone(),
                                    span,
                                });
                            }
                        }
                    }
                    (axum::http::StatusCode::OK, Vec::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (collector, url)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn value_text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| value_text(&a.value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).unwrap();
    b[0] |= 1; // never all zeros
    hex(&b)
}

/// Everything a span shows: its name, attributes, events and links, as text.
fn shown(r: &Received) -> String {
    let mut out = format!("{} {}", r.service, r.span.name);
    let mut attrs = |list: &[KeyValue]| {
        for a in list {
            out.push_str(&format!(
                " {}={}",
                a.key,
                value_text(&a.value).unwrap_or_default()
            ));
        }
    };
    attrs(&r.span.attributes);
    for e in &r.span.events {
        attrs(&e.attributes);
    }
    for l in &r.span.links {
        attrs(&l.attributes);
    }
    for e in &r.span.events {
        out.push_str(&format!(" event:{}", e.name));
    }
    out
}

/// The `authorization` header the MCP server received, from a `whoami` answer.
#[tokio::test]
async fn one_trace_runs_from_the_client_through_envoy_and_the_token_service_to_the_provider() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (collector, collector_url) = Collector::start().await;
    let dir = tempfile::Builder::new()
        .prefix("warden-e2e-traces-")
        .tempdir()
        .unwrap();
    // Provider tokens live 3 s: the test waits for that expiry, so the traced call refreshes.
    let provider = OAuthProvider::start(dir.path(), free_port(), &["--access-ttl", "3"]).await;
    let gated_dir = dir.path().join("gated");
    std::fs::create_dir_all(&gated_dir).unwrap();
    let introspect = provider.introspect_url();
    let gated = DemoServer::start_with(
        &gated_dir,
        free_port(),
        &["--require-bearer-introspect", introspect.as_str()],
    )
    .await;
    let internal = format!("127.0.0.1:{}", free_port());
    let (provider_url, gated_url, internal_listen, endpoint) = (
        provider.url(),
        gated.mcp_url(),
        internal.clone(),
        collector_url.clone(),
    );
    let opts = StackOptions {
        config_hook: Some(Box::new(move |c: &mut Value| {
            c["authorization_server"]["internal_listen"] = json!(internal_listen);
            c["telemetry"] = json!({"otlp_endpoint": endpoint});
            let from = c["routes"][0]["from"].clone();
            c["routes"].as_array_mut().unwrap().push(json!({
                "name": "gh",
                "from": from,
                "prefix": PREFIX,
                "to": gated_url,
                "mcp": {"server": {"upstream_oauth2": {
                    "client_id": PROVIDER_CLIENT_ID,
                    "client_secret": PROVIDER_CLIENT_SECRET,
                    "scopes": ["repo"],
                    "endpoint": {
                        "auth_url": format!("{provider_url}/authorize"),
                        "token_url": format!("{provider_url}/token"),
                    },
                }}},
                "policy": {"allow": {"and": [{"authenticated_user": true}]}},
            }));
        })),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(opts).await;
    let url = stack.route_url(PREFIX);
    let logs = || format!("{}\n{}", stack.envoy_log(), stack.token_service.log());

    let signed = sign_in_with(&url, (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await;
    let te = signed.access_token.clone();
    let bearer = format!("Bearer {te}");
    let whoami = |extra: Vec<(&'static str, String)>| {
        let (url, bearer) = (url.clone(), bearer.clone());
        async move {
            let mut headers: Vec<(&str, &str)> = vec![("authorization", bearer.as_str())];
            headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
            mcp_post(
                &url,
                &headers,
                "tools/call",
                json!({"name": "whoami", "arguments": {}}),
            )
            .await
        }
    };
    let first = received_bearer(&whoami(vec![]).await);

    // Wait for the TI's own expiry, as the vault reports it.
    let credential = internal_credential(stack.dir.path()).unwrap();
    let path = "/internal/v1/upstream-token";
    let body = json!({"sub": DEMO_EMAIL, "route": "gh"}).to_string();
    let looked: Value = http_client()
        .post(format!("http://{internal}{path}"))
        .header(
            "authorization",
            internal_authorization(&credential, path, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expires_at = looked["expires_at"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unix_now() <= expires_at {
        assert!(Instant::now() < deadline, "the TI never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The traced call: the client's own trace context.
    let trace_id = random_hex(16);
    let client_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let refreshed = received_bearer(
        &whoami(vec![
            ("traceparent", traceparent.clone()),
            ("tracestate", "warden=e2e".into()),
        ])
        .await,
    );
    assert_ne!(refreshed, first, "the traced call refreshed the TI");
    // A tool argument in the same trace.
    let echoed = mcp_post(
        &url,
        &[
            ("authorization", bearer.as_str()),
            ("traceparent", traceparent.as_str()),
        ],
        "tools/call",
        json!({"name": "echo", "arguments": {"text": ARGUMENT}}),
    )
    .await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);

    // Poll the receiver (bounded): the batch exporters post every few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (envoy_span, internal_span, provider_call, trace) = loop {
        let spans = collector.spans();
        let trace: Vec<Received> = spans
            .iter()
            .filter(|r| hex(&r.span.trace_id) == trace_id)
            .cloned()
            .collect();
        let envoy_span = trace.iter().find(|r| {
            r.service == "mcp-warden-envoy"
                && text(&r.span.attributes, "gen_ai.tool.name").as_deref() == Some("whoami")
        });
        let internal_span = trace.iter().find(|r| {
            r.service == "mcp-warden-token-service"
                && r.span.name == "HTTP POST /internal/v1/upstream-token"
        });
        let provider_call = trace.iter().find(|r| {
            r.service == "mcp-warden-token-service"
                && r.span.name == "HTTP POST"
                && text(&r.span.attributes, "url.full").as_deref()
                    == Some(&format!("{}/token", provider.url()))
        });
        if let (Some(e), Some(i), Some(p)) = (envoy_span, internal_span, provider_call) {
            break (e.clone(), i.clone(), p.clone(), trace);
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = spans
                .iter()
                .map(|r| format!("{} {}", hex(&r.span.trace_id), shown(r)))
                .collect();
            panic!(
                "trace {trace_id} incomplete after 30 s; spans seen:\n{}\n{}",
                seen.join("\n"),
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Envoy's span: the MCP attributes the filter offered.
    let tag = |r: &Received, k: &str| text(&r.span.attributes, k);
    assert_eq!(
        tag(&envoy_span, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(tag(&envoy_span, "mcp_warden.route").as_deref(), Some("gh"));
    assert_eq!(
        tag(&envoy_span, "mcp_warden.decision").as_deref(),
        Some("allowed")
    );
    assert_eq!(hex(&envoy_span.span.parent_span_id), client_span);

    // The token service's handling of the filter's call-out: a child of the client's span
    // (the filter forwarded its traceparent), a server span with the HTTP attributes.
    assert_eq!(hex(&internal_span.span.parent_span_id), client_span);
    assert_eq!(tag(&internal_span, "http.route").as_deref(), Some(path));
    assert_eq!(
        tag(&internal_span, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        tag(&internal_span, "http.response.status_code").as_deref(),
        Some("200")
    );

    // Its call to the provider's token endpoint descends from it.
    let by_id = |id: &[u8]| trace.iter().find(|r| r.span.span_id == id);
    let mut chain = vec![provider_call.span.name.clone()];
    let mut at = provider_call.clone();
    while at.span.span_id != internal_span.span.span_id {
        at = by_id(&at.span.parent_span_id)
            .unwrap_or_else(|| panic!("the provider call's parents end at {chain:?}"))
            .clone();
        chain.push(at.span.name.clone());
    }
    assert!(
        chain.iter().any(|n| n == "upstream token look-up"),
        "{chain:?}"
    );
    assert!(chain.iter().any(|n| n == "upstream refresh"), "{chain:?}");
    assert_eq!(
        tag(&provider_call, "http.response.status_code").as_deref(),
        Some("200")
    );

    // No span, in any trace, holds a token, a secret or a tool argument.
    let mut secrets = vec![
        te.clone(),
        first.trim_start_matches("Bearer ").to_owned(),
        refreshed.trim_start_matches("Bearer ").to_owned(),
        ARGUMENT.to_owned(),
        PROVIDER_CLIENT_SECRET.to_owned(),
        PROVIDER_PASSWORD.to_owned(),
        DEMO_PASSWORD.to_owned(),
        credential.clone(),
    ];
    secrets.extend(signed.refresh_token.clone());
    for r in collector.spans() {
        let s = shown(&r);
        for secret in &secrets {
            assert!(!s.contains(secret.as_str()), "a span holds a secret: {s}");
        }
        // Nor an authorization code or flow state (the OAuth callbacks' queries).
        for query in ["?code=", "&code=", "?state=", "&state="] {
            assert!(!s.contains(query), "a span shows a query: {s}");
        }
    }
}

#[tokio::test]
async fn a_jwks_fetch_a_request_set_off_goes_on_in_its_trace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (collector, endpoint) = Collector::start().await;
    let opts = StackOptions {
        config_hook: Some(Box::new(move |c: &mut Value| {
            c["telemetry"] = json!({"otlp_endpoint": endpoint});
        })),
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with(opts).await;
    // A new signing key: the filter knows only the old one, so the first call with a token
    // signed by the new key makes it fetch the key set, for that call.
    stack.replace_signing_key().await;
    let signed = stack.sign_in().await;
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    let call = mcp_post(
        &stack.mcp_url(),
        &[
            ("authorization", &format!("Bearer {}", signed.access_token)),
            ("traceparent", &traceparent),
        ],
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(call.status, 200, "{}", call.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = collector.spans();
        let fetch = spans.iter().find(|r| {
            hex(&r.span.trace_id) == trace_id
                && r.service == "mcp-warden-token-service"
                && r.span.name.starts_with("HTTP GET")
                && text(&r.span.attributes, "http.route")
                    .is_some_and(|route| route.contains("jwks"))
        });
        if fetch.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no JWKS fetch in trace {trace_id}; spans seen:\n{}",
            spans
                .iter()
                .map(|r| format!("{} {}", hex(&r.span.trace_id), shown(r)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

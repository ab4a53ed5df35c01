//! The token service's Prometheus metrics (README, "Token service metrics"): what sign-ins,
//! token grants, registrations and upstream look-ups did, scraped at `/metrics` on the
//! internal listener over a real socket. The flows run through the service's router as the
//! other tests drive it; the upstream provider is the in-repo demo provider over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::served::{get, Answer};
use common::upstream_route::*;
use common::*;
use demo_oauth_provider::{AuthStyle, ProviderConfig};
use serde_json::{json, Value};
use tower::ServiceExt;
use warden_token_service::config::Config;

const GH: &str = "http://127.0.0.1:9000/gh";
const PUBLIC_REDIRECT: &str = "http://127.0.0.1/callback";

/// `router` on a real socket of its own, until the test ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warden_token_service::listener::serve(
        listener,
        router,
        warden_token_service::listener::Limits::default(),
        std::future::pending(),
    ));
    addr
}

/// Sign-in for the `gh` resource through the upstream consent: the MCP client's code.
async fn sign_in_with_upstream(env: &TestEnv, provider: &Provider) -> String {
    let form = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            PUBLIC_REDIRECT,
            &[("resource", GH)],
        ))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let flow_cookie = form.cookie("warden_flow").unwrap();
    let consent = env.login(&form, EMAIL, PASSWORD).await;
    let session = consent.cookie("warden_session").unwrap();
    let cookies = format!("{flow_cookie}; {session}");
    let to_provider = env.decide(&consent, &cookies, "approve").await;
    assert_eq!(
        to_provider.status,
        StatusCode::FOUND,
        "{}",
        to_provider.body
    );
    let back = provider
        .answer(&to_provider.header("location"), "approve")
        .await;
    let r = env
        .get_with_cookie(
            &format!("{}?{}", back.path(), back.query().unwrap()),
            &cookies,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    r.location_query()["code"].clone()
}

/// A scrape's samples: series (name and labels, as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Every label value in a scrape.
fn label_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let labels = &rest[..rest.rfind('}').unwrap()];
        for pair in labels.split("\",") {
            let (_, v) = pair.split_once("=\"").unwrap();
            out.push(v.trim_end_matches('"').to_owned());
        }
    }
    out
}

/// `name{labels}`'s value, the label set exactly as given; absent is a failure.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = series(name, labels);
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} in the scrape: {samples:#?}"))
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(addr: SocketAddr) -> Answer {
    get(addr, "/metrics").await.unwrap()
}

#[tokio::test]
async fn the_internal_listener_reports_what_sign_ins_grants_registrations_and_lookups_came_to() {
    let provider = Provider::serve(ProviderConfig {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{ISSUER}/upstream/callback")],
        auth_style: AuthStyle::Any,
        access_ttl: Duration::from_secs(60),
        ..ProviderConfig::default()
    })
    .await;
    let env = TestEnv::with(|dir| upstream_yaml(dir, &provider.url));
    let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned();
    let public = serve(warden_token_service::app(env.state.clone())).await;
    let internal = serve(warden_token_service::internal::router(env.state.clone())).await;

    // A wrong password, then the right one (through the upstream consent).
    let form = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            PUBLIC_REDIRECT,
            &[("resource", RESOURCE)],
        ))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let wrong = env.login(&form, EMAIL, "not the password").await;
    assert!(
        wrong.body.contains("Incorrect email or password"),
        "{}",
        wrong.body
    );
    let code = sign_in_with_upstream(&env, &provider).await;

    // The code exchange, a refresh, and a refresh with a token that does not exist.
    let t = env
        .exchange_public("public-app", &code, PUBLIC_REDIRECT)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let access_token = t.json()["access_token"].as_str().unwrap().to_owned();
    let r = env
        .refresh_public("public-app", t.json()["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let refresh_token = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let refused = env.refresh_public("public-app", "no-such-token").await;
    assert_eq!(refused.json()["error"], "invalid_grant");

    // A registration, and one refused for its redirect URI.
    let dcr_client = env.register_public("http://127.0.0.1:7777/cb").await;
    let bad = env
        .post_json(
            "/register",
            json!({"redirect_uris": ["not a url"], "token_endpoint_auth_method": "none"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);

    // Upstream look-ups: the token as stored; expired, refreshed; expired with the provider
    // down, unavailable, then refreshed when it is back; refused at the provider, dropped.
    let (status, first) = lookup(&env, &credential).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let upstream_token = first["access_token"].as_str().unwrap().to_owned();
    env.advance(61);
    assert_eq!(lookup(&env, &credential).await.0, StatusCode::OK);
    env.advance(61);
    provider.hook("/_test/fail-token?status=503&count=1").await;
    let (status, answer) = lookup(&env, &credential).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(lookup(&env, &credential).await.0, StatusCode::OK);
    provider.hook("/_test/revoke-user?user=alice").await;
    env.advance(61);
    let (status, answer) = lookup(&env, &credential).await;
    assert_eq!(answer["error"], "no_token", "{status}: {answer}");

    // The client revokes its grant: one entry in the revocation feed, 7 s old at the scrape.
    let revoked = env
        .post_form(
            "/revoke",
            &[("token", &refresh_token), ("client_id", "public-app")],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    env.advance(7);

    let answer = scrape(internal).await;
    assert_eq!(answer.status(), 200, "{}", answer.raw);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = answer.body().to_owned();
    let s = samples(&text);
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(value(&s, name, labels), want, "{}", series(name, labels));
    };
    expect(
        "warden_sign_ins_total",
        &[("method", "password"), ("result", "failure")],
        1.0,
    );
    expect(
        "warden_sign_ins_total",
        &[("method", "password"), ("result", "success")],
        1.0,
    );
    let grants = "warden_token_grants_total";
    expect(
        grants,
        &[("grant_type", "authorization_code"), ("result", "issued")],
        1.0,
    );
    expect(
        grants,
        &[("grant_type", "refresh_token"), ("result", "issued")],
        1.0,
    );
    expect(
        grants,
        &[("grant_type", "refresh_token"), ("result", "invalid_grant")],
        1.0,
    );
    let registrations = "warden_client_registrations_total";
    expect(registrations, &[("result", "registered")], 1.0);
    expect(registrations, &[("result", "refused")], 1.0);
    let lookups = "warden_upstream_token_lookups_total";
    expect(lookups, &[("result", "hit")], 1.0);
    expect(lookups, &[("result", "refreshed")], 2.0);
    expect(lookups, &[("result", "unavailable")], 1.0);
    expect(lookups, &[("result", "no_token")], 1.0);
    let refreshes = "warden_upstream_refreshes_total";
    expect(refreshes, &[("result", "refreshed")], 2.0);
    expect(refreshes, &[("result", "unavailable")], 1.0);
    expect(refreshes, &[("result", "refused")], 1.0);
    expect("warden_revocation_feed_entries", &[], 1.0);
    expect("warden_revocation_feed_newest_age_seconds", &[], 7.0);
    // Nothing failed in the store.
    assert!(
        !text.contains("warden_store_errors_total{"),
        "no store error: {text}"
    );
    // The HTTP histogram, by route template, method and status class, on both listeners.
    let durations = "warden_http_request_duration_seconds_count";
    expect(
        durations,
        &[
            ("listener", "public"),
            ("route", "/token"),
            ("method", "POST"),
            ("status", "2xx"),
        ],
        2.0,
    );
    expect(
        durations,
        &[
            ("listener", "public"),
            ("route", "/token"),
            ("method", "POST"),
            ("status", "4xx"),
        ],
        1.0,
    );
    expect(
        durations,
        &[
            ("listener", "internal"),
            ("route", "/internal/v1/upstream-token"),
            ("method", "POST"),
            ("status", "2xx"),
        ],
        3.0,
    );
    // The series with no other label set.
    for (name, total) in [
        ("warden_sign_ins_total", 2.0),
        ("warden_token_grants_total", 3.0),
        ("warden_client_registrations_total", 2.0),
        ("warden_upstream_token_lookups_total", 5.0),
        ("warden_upstream_refreshes_total", 4.0),
    ] {
        let sum: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(sum, total, "{name}: {text}");
    }

    // The public issuer has no /metrics: 404 like any unknown path, counted as unmatched.
    let on_public = get(public, "/metrics").await.unwrap();
    assert_eq!(on_public.status(), 404, "{}", on_public.raw);
    let s = samples(scrape(internal).await.body());
    expect_in(
        &s,
        durations,
        &[
            ("listener", "public"),
            ("route", "unmatched"),
            ("method", "GET"),
            ("status", "4xx"),
        ],
        1.0,
    );

    // No label names a user, a client or a token.
    for v in label_values(&text) {
        for secret in [
            EMAIL,
            "alice",
            "public-app",
            "basic-app",
            &dcr_client,
            &access_token,
            &refresh_token,
            &upstream_token,
        ] {
            assert!(!v.contains(secret), "label value {v:?} holds {secret:?}");
        }
        assert!(!v.contains('@') && !v.contains("://"), "label value {v:?}");
    }
}

fn expect_in(s: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)], want: f64) {
    assert_eq!(value(s, name, labels), want, "{}", series(name, labels));
}

#[tokio::test]
async fn with_metrics_off_there_is_no_metrics_path() {
    let env = TestEnv::with(|dir| {
        format!(
            "{}telemetry: {{metrics: false}}\n",
            config_yaml(dir, "", "ES256")
        )
    });
    assert!(!env.state.config().telemetry.metrics);
    let internal = serve(warden_token_service::internal::router(env.state.clone())).await;
    // Not served without the signature any more: the path is an internal one like others.
    let unsigned = scrape(internal).await;
    assert_eq!(unsigned.status(), 401, "{}", unsigned.raw);
    // Signed, it does not exist.
    let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned();
    let req = Request::get("/metrics")
        .header(
            header::AUTHORIZATION,
            sign_internal(&credential, "GET", "/metrics", b"", env.state.now()),
        )
        .body(Body::empty())
        .unwrap();
    let resp = warden_token_service::internal::router(env.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_on_by_default() {
    let env = TestEnv::new();
    assert!(env.state.config().telemetry.metrics);
    let internal = serve(warden_token_service::internal::router(env.state.clone())).await;
    let answer = scrape(internal).await;
    assert_eq!(answer.status(), 200, "{}", answer.raw);
    // Families with no series yet are not written; the gauges always are.
    assert!(
        answer.body().contains("warden_revocation_feed_entries 0\n"),
        "{}",
        answer.body()
    );
}

#[test]
fn an_unknown_telemetry_field_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}telemetry: {{bogus: 1}}\n",
        config_yaml(dir.path(), "", "ES256")
    );
    let e = Config::from_yaml(&yaml).unwrap_err().to_string();
    assert!(e.contains("telemetry"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}

/// The metric names the committed Grafana dashboard's queries use, starting with `prefix`.
fn dashboard_metrics(prefix: &str) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with(prefix) && !names.iter().any(|n| n == word) {
                    names.push(word.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_service_exports() {
    let names = dashboard_metrics("warden_");
    assert!(names.len() >= 8, "{names:?}");
    use warden_token_service::metrics::*;
    // A family is written once it has a series: count one of each.
    let metrics = std::sync::Arc::new(Metrics::new());
    metrics.sign_in(SignInMethod::Password, true);
    metrics.token_grant(GrantType::AuthorizationCode, GrantResult::Issued);
    metrics.client_registration(RegistrationResult::Registered);
    metrics.upstream_token_lookup(UpstreamLookupResult::Hit);
    metrics.upstream_refresh(UpstreamRefreshResult::Refreshed);
    metrics.identity_provider_call(IdentityProviderCall::Token, CallResult::Ok);
    metrics.store_error(StoreErrorKind::Other);
    let app = Router::new()
        .route("/x", axum::routing::get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(
            (metrics.clone(), Listener::Public),
            track,
        ));
    let req = Request::builder().uri("/x").body(Body::empty()).unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::OK);
    let text = metrics.encode(Default::default()).unwrap();
    for name in names {
        let exported = text.lines().any(|line| {
            line.strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        assert!(
            exported,
            "the dashboard queries {name}, which the service does not export:\n{text}"
        );
    }
}

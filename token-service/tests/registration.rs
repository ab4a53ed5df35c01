#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;

#[tokio::test]
async fn dcr_public_client_is_echoed_without_secret() {
    let env = TestEnv::new();
    let r = env
        .post_json(
            "/register",
            json!({
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "VS Code",
                "application_type": "native",
                "some_unknown_field": true
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let b = r.json();
    assert!(b["client_id"].as_str().unwrap().len() >= 16);
    assert!(b.get("client_secret").is_none());
    assert_eq!(b["token_endpoint_auth_method"], "none");
    assert_eq!(
        b["redirect_uris"],
        json!(["http://127.0.0.1:33418/callback"])
    );
    assert_eq!(
        b["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(b["response_types"], json!(["code"]));
    assert_eq!(b["client_name"], "VS Code");
    assert_eq!(b["application_type"], "native");
}

#[tokio::test]
async fn dcr_confidential_clients_get_a_secret() {
    let env = TestEnv::new();
    for method in ["client_secret_basic", "client_secret_post"] {
        let r = env
            .post_json(
                "/register",
                json!({"redirect_uris": ["https://app.example.com/cb"], "token_endpoint_auth_method": method}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let b = r.json();
        assert_eq!(b["token_endpoint_auth_method"], method);
        assert!(b["client_secret"].as_str().unwrap().len() >= 32);
        assert_eq!(b["client_secret_expires_at"], 0);
    }
    // RFC 7591 default when omitted.
    let b = env
        .post_json(
            "/register",
            json!({"redirect_uris": ["https://app.example.com/cb"]}),
        )
        .await
        .json();
    assert_eq!(b["token_endpoint_auth_method"], "client_secret_basic");
    assert!(b["client_secret"].is_string());
    // Two registrations never share an id.
    let other = env.register_public("https://app.example.com/cb").await;
    assert_ne!(other, b["client_id"].as_str().unwrap());
}

#[tokio::test]
async fn dcr_rejects_bad_redirect_uris() {
    let env = TestEnv::new();
    for bad in [
        json!(["http://evil.example.com/cb"]),
        json!(["javascript:alert(1)"]),
        json!(["https://app.example.com/cb#frag"]),
        json!(["not a url"]),
        json!([]),
    ] {
        let r = env
            .post_json("/register", json!({"redirect_uris": bad}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "invalid_redirect_uri", "{bad}");
    }
    let r = env
        .post_json("/register", json!({"client_name": "no uris"}))
        .await;
    assert_eq!(r.json()["error"], "invalid_redirect_uri");
}

#[tokio::test]
async fn dcr_rejects_bad_metadata() {
    let env = TestEnv::new();
    for bad in [
        json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
        json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
        json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
        json!({"redirect_uris": "https://a.example/cb"}),
    ] {
        let r = env.post_json("/register", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "invalid_client_metadata", "{bad}");
    }
    let r = env
        .send(
            axum::http::Request::post("/register")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_client_metadata");
}

#[tokio::test]
async fn registered_client_can_authorize() {
    let env = TestEnv::new();
    let id = env.register_public("http://localhost:8765/cb").await;
    let r = env
        .get(&TestEnv::authorize_uri(
            &id,
            "http://localhost:8765/cb",
            &[],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Test Client"));
}

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use warden_token_service::{Config, SqliteStore};

/// `POST /register` as if from `peer` (what `serve_on` records for a real connection).
async fn register_from(
    env: &TestEnv,
    peer: &str,
    metadata: serde_json::Value,
    bearer: Option<&str>,
) -> Resp {
    let mut req = Request::post("/register").header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", t);
    }
    let mut req = req.body(Body::from(metadata.to_string())).unwrap();
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    env.send(req).await
}

fn ten_uris_and_a_long_name() -> serde_json::Value {
    let uris: Vec<String> = (0..10)
        .map(|i| format!("http://127.0.0.1:{}/callback", 40000 + i))
        .collect();
    json!({
        "redirect_uris": uris,
        "token_endpoint_auth_method": "none",
        "client_name": "n".repeat(200),
    })
}

fn registered_clients(env: &TestEnv) -> u64 {
    SqliteStore::open(&env.dir.path().join("warden.db"))
        .unwrap()
        .registered_clients()
        .unwrap()
}

fn with_registration(settings: &str) -> TestEnv {
    TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "  refresh_token_ttl_seconds: 3600\n",
            &format!("  refresh_token_ttl_seconds: 3600\n  registration: {settings}\n"),
        )
    })
}

/// Issue 18: the limit is the deployment's, not each replica's.
#[tokio::test]
async fn the_registration_rate_limit_holds_across_replicas() {
    let env = TestEnv::new();
    let other = env.replica();
    let mut created = [0, 0];
    for i in 0..40 {
        let on = if i % 2 == 0 { &env } else { &other };
        let r = register_from(on, "203.0.113.7:5000", ten_uris_and_a_long_name(), None).await;
        match r.status {
            StatusCode::CREATED => created[i % 2] += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(r.headers.contains_key("retry-after")),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(created[0] + created[1], 10, "{created:?}");
    assert!(
        created[0] > 0 && created[1] > 0,
        "both replicas served: {created:?}"
    );
    env.advance(6);
    let r = register_from(&other, "203.0.113.7:5000", ten_uris_and_a_long_name(), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_burst_of_registrations_from_one_address_is_cut_at_the_limit() {
    let env = TestEnv::new();
    let mut created = 0;
    let mut limited = 0;
    for _ in 0..300 {
        let r = register_from(&env, "203.0.113.7:5000", ten_uris_and_a_long_name(), None).await;
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.json()["error"], "temporarily_unavailable");
                assert_eq!(r.header("retry-after"), "6");
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!((created, limited), (10, 290));
    assert_eq!(registered_clients(&env), 10);
    // Another address has its own budget; an IPv6 host's whole /64 shares one.
    let r = register_from(&env, "203.0.113.8:5000", ten_uris_and_a_long_name(), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    for i in 0..10 {
        let peer = format!("[2001:db8:1:2::{i:x}]:5000");
        let r = register_from(&env, &peer, ten_uris_and_a_long_name(), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{peer}");
    }
    let r = register_from(
        &env,
        "[2001:db8:1:2:ffff::1]:5000",
        ten_uris_and_a_long_name(),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_metrics(
        &env.state,
        &[
            "warden_client_registrations_total{result=\"registered\"} 21",
            "warden_client_registrations_total{result=\"rate_limited\"} 291",
        ],
    );
    // The budget refills: one registration every 6 s.
    env.advance(6);
    let r = register_from(&env, "203.0.113.7:5000", ten_uris_and_a_long_name(), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn registrations_are_bounded_in_size() {
    let env = TestEnv::new();
    let peer = "198.51.100.1:1";
    let uris = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("http://127.0.0.1:{}/cb", 30000 + i))
            .collect()
    };
    let cases = [
        (json!({"redirect_uris": uris(11)}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": [format!("https://app.example.com/{}", "a".repeat(2000))]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": uris(1), "client_name": "n".repeat(201)}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": uris(1), "padding": "p".repeat(4096)}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": uris(1), "application_type": "x".repeat(65)}),
            "invalid_client_metadata",
        ),
    ];
    for (metadata, error) in cases {
        let r = register_from(&env, peer, metadata, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert_eq!(r.json()["error"], error, "{}", r.body);
        env.advance(6);
    }
    assert_eq!(registered_clients(&env), 0);
    // Repeated types are stored and echoed once.
    let r = register_from(
        &env,
        peer,
        json!({"redirect_uris": uris(1), "token_endpoint_auth_method": "none",
               "grant_types": ["authorization_code", "refresh_token", "authorization_code"],
               "response_types": ["code", "code"]}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.json()["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(r.json()["response_types"], json!(["code"]));
}

#[tokio::test]
async fn registrations_waiting_for_their_first_grant_are_capped_across_addresses() {
    let env = with_registration("{max_unused_clients: 3}");
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = register_from(
            &env,
            &format!("192.0.2.{i}:1"),
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        ids.push(r.json()["client_id"].as_str().unwrap().to_owned());
    }
    let r = register_from(
        &env,
        "192.0.2.9:1",
        json!({"redirect_uris": [REDIRECT]}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    // Once one of them is used, there is room again.
    let (q, _) = env.sign_in(&ids[0], REDIRECT, &[]).await;
    let t = env.exchange_public(&ids[0], &q["code"], REDIRECT).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let r = register_from(
        &env,
        "192.0.2.9:1",
        json!({"redirect_uris": [REDIRECT]}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn closed_registration_is_refused_and_not_advertised() {
    for setting in ["closed", "{mode: closed}"] {
        let env = with_registration(setting);
        let r = register_from(
            &env,
            "192.0.2.1:1",
            json!({"redirect_uris": [REDIRECT]}),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{setting}: {}", r.body);
        assert_eq!(r.json()["error"], "access_denied");
        let meta = env
            .get("/.well-known/oauth-authorization-server")
            .await
            .json();
        assert!(meta.get("registration_endpoint").is_none(), "{meta}");
        // Pre-registered clients still sign in.
        let code = env.code("public-app", REDIRECT).await;
        let t = env.exchange_public("public-app", &code, REDIRECT).await;
        assert_eq!(t.status, StatusCode::OK);
    }
    let env = TestEnv::new();
    let meta = env
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["registration_endpoint"], format!("{ISSUER}/register"));
}

#[tokio::test]
async fn initial_access_token_mode_requires_the_bearer_token() {
    const TOKEN: &str = "iat-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("iat");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    for setting in [
        format!("{{mode: initial_access_token, initial_access_token: {TOKEN}}}"),
        format!(
            "{{mode: initial_access_token, initial_access_token_file: '{}'}}",
            file.display()
        ),
    ] {
        let env = with_registration(&setting);
        assert!(!format!("{:?}", env.state.config()).contains(TOKEN));
        let md = || json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
        let r = register_from(&env, "192.0.2.1:1", md(), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{setting}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_token");
        assert_eq!(r.header("www-authenticate"), "Bearer");
        for wrong in [
            "Bearer iat-0123456789abcdeX".to_owned(),
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            "Bearer".to_owned(),
        ] {
            let r = register_from(&env, "192.0.2.1:1", md(), Some(&wrong)).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{wrong}");
            assert_eq!(r.json()["error"], "invalid_token");
        }
        let r = register_from(&env, "192.0.2.1:1", md(), Some(&format!("Bearer {TOKEN}x"))).await;
        assert_eq!(
            r.header("www-authenticate"),
            "Bearer error=\"invalid_token\""
        );
        let r = register_from(&env, "192.0.2.2:1", md(), Some(&format!("bearer {TOKEN}"))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{setting}: {}", r.body);
        let meta = env
            .get("/.well-known/oauth-authorization-server")
            .await
            .json();
        assert_eq!(meta["registration_endpoint"], format!("{ISSUER}/register"));
    }
}

#[test]
fn registration_settings_are_checked_at_load_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |settings: &str| {
        config_yaml(dir.path(), "", "ES256").replace(
            "  refresh_token_ttl_seconds: 3600\n",
            &format!("  refresh_token_ttl_seconds: 3600\n  registration: {settings}\n"),
        )
    };
    let at = "authorization_server.registration";
    for (settings, field) in [
        ("sometimes", at.to_owned()),
        ("{mode: sometimes}", format!("{at}.mode")),
        (
            "{mode: initial_access_token}",
            format!("{at}.initial_access_token"),
        ),
        (
            "{mode: initial_access_token, initial_access_token: short}",
            format!("{at}.initial_access_token"),
        ),
        (
            "{mode: initial_access_token, initial_access_token: 'has spaces in it, sixteen+'}",
            format!("{at}.initial_access_token"),
        ),
        (
            "{initial_access_token: 0123456789abcdef0}",
            format!("{at}.initial_access_token"),
        ),
        (
            "{mode: initial_access_token, initial_access_token_file: /nonexistent/iat}",
            format!("{at}.initial_access_token_file"),
        ),
        (
            "{rate_limit_per_minute: 0}",
            format!("{at}.rate_limit_per_minute"),
        ),
        ("{max_redirect_uris: 0}", format!("{at}.max_redirect_uris")),
        ("{max_redirect_uris: 21}", format!("{at}.max_redirect_uris")),
        (
            "{max_metadata_bytes: 100}",
            format!("{at}.max_metadata_bytes"),
        ),
        (
            "{max_metadata_bytes: 70000}",
            format!("{at}.max_metadata_bytes"),
        ),
        (
            "{max_unused_clients: 0}",
            format!("{at}.max_unused_clients"),
        ),
        (
            "{unused_client_ttl_seconds: 0}",
            format!("{at}.unused_client_ttl_seconds"),
        ),
        (
            "{idle_client_ttl_seconds: 0}",
            format!("{at}.idle_client_ttl_seconds"),
        ),
        ("{rate_limit: 5}", at.to_owned()),
    ] {
        let e = Config::from_yaml(&yaml(settings)).unwrap_err().to_string();
        assert!(e.starts_with(&field), "{settings}: {e}");
        if settings == "{rate_limit: 5}" {
            assert!(e.contains("rate_limit"), "{e}");
        }
    }
    let c = Config::from_yaml(&yaml("open")).unwrap();
    let r = &c.authorization_server.registration;
    assert_eq!(
        (
            r.rate_limit_per_minute,
            r.max_redirect_uris,
            r.max_metadata_bytes
        ),
        (10, 10, 4096)
    );
    assert_eq!(
        (
            r.unused_client_ttl_seconds,
            r.idle_client_ttl_seconds,
            r.max_unused_clients
        ),
        (86_400, 2_592_000, 10_000)
    );
}

#[tokio::test]
async fn an_unused_registration_expires_after_a_day_while_one_with_a_live_grant_stays() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "refresh_token_ttl_seconds: 3600",
            "refresh_token_ttl_seconds: 864000",
        )
    });
    let unused = env.register_public(REDIRECT).await;
    let used = env.register_public(REDIRECT).await;
    let (q, _) = env.sign_in(&used, REDIRECT, &[]).await;
    let t = env.exchange_public(&used, &q["code"], REDIRECT).await;
    assert_eq!(t.status, StatusCode::OK);

    env.advance(86_400 - 1);
    env.state.sweep().unwrap();
    assert_eq!(registered_clients(&env), 2, "not before the day is over");
    env.advance(1);
    env.state.sweep().unwrap();
    assert_eq!(registered_clients(&env), 1);
    let r = env
        .get(&TestEnv::authorize_uri(&unused, REDIRECT, &[]))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("unknown client"), "{}", r.body);
    // The used one still refreshes.
    let r = env
        .refresh_public(&used, t.json()["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_client_whose_grants_have_all_ended_is_deleted_after_the_idle_ttl() {
    // Grants end after 100 s (refresh family), or when revoked; idle clients go after 1000 s.
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256")
            .replace("refresh_token_ttl_seconds: 3600", "refresh_token_ttl_seconds: 100")
            .replace(
                "  refresh_token_ttl_seconds: 100\n",
                "  refresh_token_ttl_seconds: 100\n  registration: {idle_client_ttl_seconds: 1000}\n",
            )
    });
    let expiring = env.register_public(REDIRECT).await;
    let revoked = env.register_public(REDIRECT).await;
    let active = env.register_public(REDIRECT).await;
    let mut refresh = std::collections::HashMap::new();
    for id in [&expiring, &revoked, &active] {
        let (q, _) = env.sign_in(id, REDIRECT, &[]).await;
        let t = env.exchange_public(id, &q["code"], REDIRECT).await.json();
        refresh.insert(id.clone(), t["refresh_token"].as_str().unwrap().to_owned());
    }
    let r = env
        .post_form(
            "/revoke",
            &[("token", &refresh[&revoked]), ("client_id", &revoked)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let t0 = env.state.now();
    // `revoked` has had no live grant since t0; the others none since t0 + 101 (their
    // refresh families last 100 s). Each sweep notes it.
    env.state.sweep().unwrap();
    env.advance(101);
    env.state.sweep().unwrap();
    // `active` signs in again just in time: a new grant makes it live again.
    env.advance(898);
    let (q, _) = env.sign_in(&active, REDIRECT, &[]).await;
    let r = env.exchange_public(&active, &q["code"], REDIRECT).await;
    assert_eq!(r.status, StatusCode::OK);
    env.state.sweep().unwrap();
    assert_eq!(env.state.now() - t0, 999);
    assert_eq!(registered_clients(&env), 3);
    env.advance(1);
    env.state.sweep().unwrap();
    assert_eq!(
        registered_clients(&env),
        2,
        "revoked: gone 1000 s after its grant ended"
    );
    env.advance(100);
    env.state.sweep().unwrap();
    assert_eq!(registered_clients(&env), 2);
    env.advance(1);
    env.state.sweep().unwrap();
    assert_eq!(
        registered_clients(&env),
        1,
        "expiring: gone 1000 s after its family ended"
    );
    let r = env
        .get(&TestEnv::authorize_uri(&active, REDIRECT, &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

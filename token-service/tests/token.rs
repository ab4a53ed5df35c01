#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use jwt_compact::alg::{Ed25519, Es256};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, UntrustedToken};

fn assert_oauth_error(r: &Resp, status: StatusCode, error: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.json()["error"], error, "{}", r.body);
}

#[tokio::test]
async fn public_client_code_exchange() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let r = env.exchange_public("public-app", &code, REDIRECT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["scope"], "tools.read tools.call");
    assert!(t["refresh_token"].as_str().unwrap().len() >= 40);
    assert_eq!(t["access_token"].as_str().unwrap().split('.').count(), 3);
}

/// Verifies the TE against the published JWKS, as the filter does.
async fn verify_te(env: &TestEnv, token: &str) -> serde_json::Value {
    let jwks = env.get("/.well-known/jwks.json").await.json();
    let untrusted = UntrustedToken::new(token).unwrap();
    assert_eq!(
        untrusted.header().key_id.as_deref(),
        jwks["keys"][0]["kid"].as_str()
    );
    assert_eq!(untrusted.header().token_type.as_deref(), Some("at+jwt"));
    let jwk: JsonWebKey<'_> = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let claims = match untrusted.algorithm() {
        "ES256" => {
            let vk = p256::ecdsa::VerifyingKey::try_from(&jwk).unwrap();
            Es256
                .validator::<serde_json::Value>(&vk)
                .validate(&untrusted)
                .unwrap()
                .claims()
                .clone()
        }
        "EdDSA" => {
            let vk = ed25519_compact::PublicKey::try_from(&jwk).unwrap();
            Ed25519
                .validator::<serde_json::Value>(&vk)
                .validate(&untrusted)
                .unwrap()
                .claims()
                .clone()
        }
        other => panic!("unexpected alg {other}"),
    };
    let mut c = claims.custom.clone();
    let obj = c.as_object_mut().unwrap();
    obj.insert("exp".into(), claims.expiration.unwrap().timestamp().into());
    obj.insert("iat".into(), claims.issued_at.unwrap().timestamp().into());
    obj.insert("nbf".into(), claims.not_before.unwrap().timestamp().into());
    c
}

#[tokio::test]
async fn access_token_claims_verify_against_jwks() {
    for alg in ["ES256", "EdDSA"] {
        let env = TestEnv::with(|d| config_yaml(d, "", alg));
        let now = env.state.now();
        let code = env.code("public-app", REDIRECT).await;
        let t = env
            .exchange_public("public-app", &code, REDIRECT)
            .await
            .json();
        let token = t["access_token"].as_str().unwrap();
        assert_eq!(UntrustedToken::new(token).unwrap().algorithm(), alg);
        let c = verify_te(&env, token).await;
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["sub"], EMAIL);
        assert_eq!(c["aud"], RESOURCE);
        assert_eq!(c["iat"], now);
        assert_eq!(c["nbf"], now);
        assert_eq!(c["exp"], now + 300);
        assert_eq!(c["client_id"], "public-app");
        assert_eq!(c["scope"], "tools.read tools.call");
        assert_eq!(c["email"], EMAIL);
        assert_eq!(c["name"], "Alice");
        assert_eq!(c["groups"], serde_json::json!(["admins", "demo"]));
        assert!(c["jti"].as_str().unwrap().len() >= 16);
        assert!(!c["sid"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn requested_scope_is_narrowed_to_the_route() {
    let env = TestEnv::new();
    let (q, _) = env
        .sign_in("public-app", REDIRECT, &[("scope", "tools.read")])
        .await;
    let t = env
        .exchange_public("public-app", &q["code"], REDIRECT)
        .await
        .json();
    assert_eq!(t["scope"], "tools.read");
}

#[tokio::test]
async fn wrong_verifier_is_rejected() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-app"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                (
                    "code_verifier",
                    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
                ),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // Missing verifier too.
    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-app"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn code_reuse_fails_and_revokes_the_grant() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let first = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    let second = env.exchange_public("public-app", &code, REDIRECT).await;
    assert_oauth_error(&second, StatusCode::BAD_REQUEST, "invalid_grant");
    // The refresh token issued from the code is dead now.
    let r = env
        .refresh_public("public-app", first["refresh_token"].as_str().unwrap())
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn code_expires_after_60_seconds() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    env.advance(61);
    let r = env.exchange_public("public-app", &code, REDIRECT).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn code_is_bound_to_redirect_uri_client_and_resource() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .exchange_public("public-app", &code, "http://127.0.0.1:1/callback")
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");

    let other = env.register_public(REDIRECT).await;
    let code = env.code("public-app", REDIRECT).await;
    let r = env.exchange_public(&other, &code, REDIRECT).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");

    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-app"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("resource", "http://127.0.0.1:9000/other"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_target");

    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-app"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("resource", RESOURCE),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn client_secret_basic_is_verified() {
    let env = TestEnv::new();
    let exchange = |code: String, basic: Option<(&'static str, &'static str)>| {
        let env = &env;
        async move {
            env.post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ],
                basic,
            )
            .await
        }
    };
    let r = exchange(
        env.code("basic-app", REDIRECT).await,
        Some(("basic-app", "wrong")),
    )
    .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(r.header("www-authenticate").starts_with("Basic"));
    // No credentials at all.
    let r = exchange(env.code("basic-app", REDIRECT).await, None).await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    // Right secret.
    let r = exchange(
        env.code("basic-app", REDIRECT).await,
        Some(("basic-app", "basic-secret")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The right secret sent with the wrong method.
    let code = env.code("basic-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "basic-app"),
                ("client_secret", "basic-secret"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(r.header("www-authenticate").starts_with("Basic"));
}

#[tokio::test]
async fn client_secret_post_is_verified() {
    let env = TestEnv::new();
    let redirect = "https://app.example.com/cb";
    for (secret, ok) in [("wrong", false), ("post-secret", true)] {
        let code = env.code("post-app", redirect).await;
        let r = env
            .post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", "post-app"),
                    ("client_secret", secret),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", VERIFIER),
                ],
                None,
            )
            .await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        } else {
            assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
        }
    }
    // Basic for a post client is refused.
    let code = env.code("post-app", redirect).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("code_verifier", VERIFIER),
            ],
            Some(("post-app", "post-secret")),
        )
        .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn dcr_client_secret_is_verified() {
    let env = TestEnv::new();
    let reg = env
        .post_json(
            "/register",
            serde_json::json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .await
        .json();
    let id: &'static str = Box::leak(
        reg["client_id"]
            .as_str()
            .unwrap()
            .to_owned()
            .into_boxed_str(),
    );
    let secret: &'static str = Box::leak(
        reg["client_secret"]
            .as_str()
            .unwrap()
            .to_owned()
            .into_boxed_str(),
    );
    for (s, status) in [("nope", StatusCode::UNAUTHORIZED), (secret, StatusCode::OK)] {
        let code = env.code(id, REDIRECT).await;
        let r = env
            .post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ],
                Some((id, s)),
            )
            .await;
        assert_eq!(r.status, status, "{}", r.body);
    }
}

#[tokio::test]
async fn public_client_must_not_present_a_secret_and_unknown_client_fails() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some(("public-app", "whatever")),
        )
        .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let r = env.exchange_public("ghost", &code, REDIRECT).await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let r = env
        .post_form("/token", &[("grant_type", "authorization_code")], None)
        .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let r = env
        .post_form(
            "/token",
            &[("grant_type", "password"), ("client_id", "public-app")],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "unsupported_grant_type");
}

#[tokio::test]
async fn refresh_rotates_and_replay_revokes_the_family() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let t0 = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    let rt0 = t0["refresh_token"].as_str().unwrap().to_owned();

    let r1 = env.refresh_public("public-app", &rt0).await;
    assert_eq!(r1.status, StatusCode::OK, "{}", r1.body);
    assert_eq!(r1.header("cache-control"), "no-store");
    let t1 = r1.json();
    let rt1 = t1["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt0, rt1, "every refresh returns a new refresh token");
    assert_eq!(t1["scope"], "tools.read tools.call");
    let c = verify_te(&env, t1["access_token"].as_str().unwrap()).await;
    assert_eq!(c["aud"], RESOURCE, "refresh inherits the resource");

    let t2 = env.refresh_public("public-app", &rt1).await.json();
    let rt2 = t2["refresh_token"].as_str().unwrap().to_owned();

    // Replaying a rotated-out token fails and kills the whole family, including the newest.
    let replay = env.refresh_public("public-app", &rt0).await;
    assert_oauth_error(&replay, StatusCode::BAD_REQUEST, "invalid_grant");
    let r = env.refresh_public("public-app", &rt2).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");

    // Other families are unaffected.
    let code = env.code("public-app", REDIRECT).await;
    let other = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    let r = env
        .refresh_public("public-app", other["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_checks_resource_scope_and_client() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let rt = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "public-app"),
                ("refresh_token", &rt),
                ("resource", "http://127.0.0.1:9000/other"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_target");
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "public-app"),
                ("refresh_token", &rt),
                ("scope", "admin"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_scope");
    // A failed resource/scope check does not consume the token.
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "public-app"),
                ("refresh_token", &rt),
                ("resource", RESOURCE),
                ("scope", "tools.read"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["scope"], "tools.read");
    let rt = r.json()["refresh_token"].as_str().unwrap().to_owned();

    // Presented by another client: refused (and treated as leaked).
    let other = env.register_public(REDIRECT).await;
    let r = env.refresh_public(&other, &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    let r = env.refresh_public("public-app", &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn refresh_token_expires() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let rt = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    env.advance(3601);
    let r = env.refresh_public("public-app", &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn revocation_kills_the_refresh_family() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let rt = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = env.refresh_public("public-app", &rt).await.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Unknown tokens and other clients' tokens: 200 and no effect.
    let other = env.register_public(REDIRECT).await;
    let r = env
        .post_form(
            "/revoke",
            &[("client_id", &other), ("token", &rotated)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env
        .post_form(
            "/revoke",
            &[("client_id", "public-app"), ("token", "garbage")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env
        .post_form(
            "/revoke",
            &[
                ("client_id", "public-app"),
                ("token", &rotated),
                ("token_type_hint", "refresh_token"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env.refresh_public("public-app", &rotated).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // Client authentication applies to revocation as well.
    let r = env
        .post_form(
            "/revoke",
            &[("token", &rotated)],
            Some(("basic-app", "wrong")),
        )
        .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn empty_scope_is_omitted_from_the_token_response() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace("scopes: [tools.read, tools.call]", "scopes: []")
    });
    let code = env.code("public-app", REDIRECT).await;
    let t = env
        .exchange_public("public-app", &code, REDIRECT)
        .await
        .json();
    assert!(t.get("scope").is_none(), "{t}");
    let c = verify_te(&env, t["access_token"].as_str().unwrap()).await;
    assert_eq!(c["scope"], "");
}

fn refresh_token_of(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn refresh_token_lifetime_counts_from_the_code_exchange_not_the_last_rotation() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "refresh_token_ttl_seconds: 3600",
            "refresh_token_ttl_seconds: 4",
        )
    });
    let code = env.code("public-app", REDIRECT).await;
    let rt = refresh_token_of(&env.exchange_public("public-app", &code, REDIRECT).await);
    env.advance(3);
    let rt = refresh_token_of(&env.refresh_public("public-app", &rt).await);
    // 5 s after the exchange: past the family's 4 s, however recent the rotation.
    env.advance(2);
    let r = env.refresh_public("public-app", &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn refresh_token_family_ends_on_time_even_if_rotated_every_second() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "refresh_token_ttl_seconds: 3600",
            "refresh_token_ttl_seconds: 10",
        )
    });
    let code = env.code("public-app", REDIRECT).await;
    let mut rt = refresh_token_of(&env.exchange_public("public-app", &code, REDIRECT).await);
    for _ in 0..9 {
        env.advance(1);
        rt = refresh_token_of(&env.refresh_public("public-app", &rt).await);
    }
    env.advance(1);
    let r = env.refresh_public("public-app", &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn refresh_token_idle_timeout_ends_a_family_left_unused() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "refresh_token_ttl_seconds: 3600",
            "refresh_token_ttl_seconds: 3600\n  refresh_token_idle_seconds: 10",
        )
    });
    let code = env.code("public-app", REDIRECT).await;
    let rt = refresh_token_of(&env.exchange_public("public-app", &code, REDIRECT).await);
    // Used within the idle timeout, again and again: the family lives on.
    env.advance(9);
    let rt = refresh_token_of(&env.refresh_public("public-app", &rt).await);
    env.advance(9);
    let rt = refresh_token_of(&env.refresh_public("public-app", &rt).await);
    // Left unused for longer than the idle timeout: gone.
    env.advance(11);
    let r = env.refresh_public("public-app", &rt).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[test]
fn refresh_token_idle_seconds_of_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(dir.path(), "", "ES256").replace(
        "refresh_token_ttl_seconds: 3600",
        "refresh_token_ttl_seconds: 3600\n  refresh_token_idle_seconds: 0",
    );
    let e = warden_token_service::Config::from_yaml(&yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("authorization_server.refresh_token_idle_seconds:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raced_code_replay_always_revokes_the_winners_grant() {
    let env = std::sync::Arc::new(TestEnv::with(|d| {
        many_sign_ins(config_yaml(d, "", "ES256"))
    }));
    for i in 0..40 {
        let code = env.code("public-app", REDIRECT).await;
        let exchange = |env: std::sync::Arc<TestEnv>, code: String| {
            tokio::spawn(async move { env.exchange_public("public-app", &code, REDIRECT).await })
        };
        let (a, b) = (
            exchange(env.clone(), code.clone()),
            exchange(env.clone(), code.clone()),
        );
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let winners: Vec<&Resp> = [&a, &b]
            .into_iter()
            .filter(|r| r.status == StatusCode::OK)
            .collect();
        assert_eq!(winners.len(), 1, "race {i}: {} / {}", a.body, b.body);
        let loser = if a.status == StatusCode::OK { &b } else { &a };
        assert_oauth_error(loser, StatusCode::BAD_REQUEST, "invalid_grant");
        // Whichever came second was a replay: the winner's family is dead.
        let rt = winners[0].json()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = env.refresh_public("public-app", &rt).await;
        assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    }
}

#[tokio::test]
async fn a_code_presented_with_a_wrong_verifier_is_used_up() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let bad = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-app"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                (
                    "code_verifier",
                    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
                ),
            ],
            None,
        )
        .await;
    assert_oauth_error(&bad, StatusCode::BAD_REQUEST, "invalid_grant");
    // The right verifier comes too late: the code is spent.
    let r = env.exchange_public("public-app", &code, REDIRECT).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;

fn assert_error_page(r: &Resp) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.headers.get("location").is_none(), "must never redirect");
    assert!(r.header("content-type").starts_with("text/html"));
    assert_eq!(r.header("x-frame-options"), "DENY");
}

/// An error sent back to the client: redirect_uri with error, state and iss.
fn assert_error_redirect(r: &Resp, redirect: &str, error: &str) {
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, redirect);
    assert_eq!(q["error"], error, "{q:?}");
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], ISSUER);
}

#[tokio::test]
async fn unknown_client_or_redirect_shows_a_page() {
    let env = TestEnv::new();
    assert_error_page(
        &env.get(&TestEnv::authorize_uri("nope", REDIRECT, &[]))
            .await,
    );
    assert_error_page(&env.get("/authorize?response_type=code").await);
    // Not registered (different path / host) -> page, never a redirect.
    assert_error_page(
        &env.get(&TestEnv::authorize_uri(
            "public-app",
            "http://127.0.0.1:5000/other",
            &[],
        ))
        .await,
    );
    assert_error_page(
        &env.get(&TestEnv::authorize_uri(
            "post-app",
            "https://evil.example.com/cb",
            &[],
        ))
        .await,
    );
    // Port may differ only for loopback.
    assert_error_page(
        &env.get(&TestEnv::authorize_uri(
            "post-app",
            "https://app.example.com:8443/cb",
            &[],
        ))
        .await,
    );
}

#[tokio::test]
async fn loopback_redirect_port_may_differ() {
    let env = TestEnv::new();
    for uri in [
        "http://127.0.0.1:40000/callback",
        "http://127.0.0.1/callback",
    ] {
        let r = env
            .get(&TestEnv::authorize_uri("public-app", uri, &[]))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    }
}

#[tokio::test]
async fn pkce_is_required_and_s256_only() {
    let env = TestEnv::new();
    let redirect = "http://127.0.0.1:40000/callback";
    let base = format!(
        "/authorize?response_type=code&client_id=public-app&redirect_uri={}&state=xyz",
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let ch = challenge(VERIFIER);
    // Missing challenge.
    assert_error_redirect(&env.get(&base).await, redirect, "invalid_request");
    // Missing method (would mean plain).
    assert_error_redirect(
        &env.get(&format!("{base}&code_challenge={ch}")).await,
        redirect,
        "invalid_request",
    );
    // plain.
    assert_error_redirect(
        &env.get(&format!(
            "{base}&code_challenge={VERIFIER}&code_challenge_method=plain"
        ))
        .await,
        redirect,
        "invalid_request",
    );
    // S256 with a malformed challenge.
    assert_error_redirect(
        &env.get(&format!(
            "{base}&code_challenge=short&code_challenge_method=S256"
        ))
        .await,
        redirect,
        "invalid_request",
    );
}

#[tokio::test]
async fn response_type_and_duplicates() {
    let env = TestEnv::new();
    let uri = TestEnv::authorize_uri("public-app", REDIRECT, &[])
        .replace("response_type=code", "response_type=token");
    assert_error_redirect(&env.get(&uri).await, REDIRECT, "unsupported_response_type");
    let uri = TestEnv::authorize_uri("public-app", REDIRECT, &[("scope", "a"), ("scope", "b")]);
    assert_error_redirect(&env.get(&uri).await, REDIRECT, "invalid_request");
}

#[tokio::test]
async fn resource_must_name_a_route() {
    let env = TestEnv::new();
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("resource", "http://127.0.0.1:9000/mcp/")],
        ))
        .await;
    assert_error_redirect(&r, REDIRECT, "invalid_target");
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("resource", "http://127.0.0.1:9000/other")],
        ))
        .await;
    assert_error_redirect(&r, REDIRECT, "invalid_target");
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("resource", RESOURCE)],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn resource_is_required_with_several_routes() {
    let env = TestEnv::with(|d| {
        config_yaml(
            d,
            "  - name: second\n    from: http://127.0.0.1:9000\n    prefix: /other\n    to: http://127.0.0.1:9300/mcp\n    mcp:\n      server: {}\n    policy: {allow: {and: [{authenticated_user: true}]}}\n",
            "ES256",
        )
    });
    let r = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    assert_error_redirect(&r, REDIRECT, "invalid_target");
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("resource", "http://127.0.0.1:9000/other")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn login_form_is_protected_against_framing() {
    let env = TestEnv::new();
    let r = env
        .get(&TestEnv::authorize_uri("basic-app", REDIRECT, &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(r.body.contains("Basic App"));
    assert!(r.body.contains("name=\"password\""));
    assert!(!r.hidden("csrf").is_empty());
    assert!(!r.hidden("flow").is_empty());
}

#[tokio::test]
async fn sign_in_redirects_with_code_state_and_iss() {
    let env = TestEnv::new();
    // trusted-app skips consent: the login answers with the redirect itself.
    let form = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let flow_cookie = form.set_cookie("warden_flow").unwrap();
    assert!(flow_cookie.contains("HttpOnly"), "{flow_cookie}");
    assert!(flow_cookie.contains("SameSite=Lax"), "{flow_cookie}");
    assert!(flow_cookie.contains("Path=/"), "{flow_cookie}");
    assert!(!flow_cookie.contains("Secure"), "{flow_cookie}");
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, REDIRECT);
    assert!(q["code"].len() >= 40);
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], ISSUER);
    let cookie = r.set_cookie("warden_session").unwrap();
    assert!(cookie.starts_with("warden_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    assert!(
        !cookie.contains("Secure"),
        "http issuer: no Secure attribute"
    );

    // The same form cannot be submitted twice.
    let again = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn wrong_password_and_bad_csrf() {
    let env = TestEnv::new();
    let form = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let flow = form.hidden("flow");
    let flow_cookie = form.cookie("warden_flow").unwrap();
    let r = env.login(&form, EMAIL, "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("Incorrect email or password"));
    assert!(r.headers.get("set-cookie").is_none());
    let r = env.login(&form, "bob@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = env
        .post_browser(
            "/login",
            &[
                ("flow", &flow),
                ("csrf", "forged"),
                ("email", EMAIL),
                ("password", PASSWORD),
            ],
            &flow_cookie,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The flow survived the failures: the right password still works.
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FOUND);
}

#[tokio::test]
async fn too_many_failed_attempts_drop_the_flow() {
    let env = TestEnv::new();
    let form = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    for _ in 0..4 {
        let r = env.login(&form, "mallory@example.com", "x").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = env.login(&form, "mallory@example.com", "x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expired_flow_is_refused() {
    let env = TestEnv::new();
    let form = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    env.advance(601);
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn existing_session_skips_the_form() {
    let env = TestEnv::new();
    let (_, cookie) = env.sign_in("public-app", REDIRECT, &[]).await;
    // Approved once: the next request for the same client goes straight back.
    for client in ["public-app", "trusted-app"] {
        let r = env
            .get_with_cookie(&TestEnv::authorize_uri(client, REDIRECT, &[]), &cookie)
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{client}: {}", r.body);
        let (base, q) = r.location();
        assert_eq!(base, REDIRECT);
        assert!(q.contains_key("code"));
        assert_eq!(q["iss"], ISSUER);
    }
    // A forged cookie gets the form.
    let r = env
        .get_with_cookie(
            &TestEnv::authorize_uri("basic-app", REDIRECT, &[]),
            "warden_session=forged",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("name=\"password\""));
}

#[tokio::test]
async fn https_issuer_uses_host_prefixed_secure_cookie() {
    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            &format!("issuer: {ISSUER}"),
            "issuer: https://auth.example.com",
        )
    });
    let (q, _) = env.sign_in("public-app", REDIRECT, &[]).await;
    assert_eq!(q["iss"], "https://auth.example.com");
    let form = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let flow_cookie = form.set_cookie("warden_flow").unwrap();
    assert!(
        flow_cookie.starts_with("__Host-warden_flow="),
        "{flow_cookie}"
    );
    assert!(flow_cookie.contains("; Secure"));
    assert!(flow_cookie.contains("Path=/"));
    // The unprefixed name is not accepted in place of the __Host- one.
    let plain = form.cookie("warden_flow").unwrap().replace("__Host-", "");
    let r = env
        .post_browser(
            "/login",
            &[
                ("flow", &form.hidden("flow")),
                ("csrf", &form.hidden("csrf")),
                ("email", EMAIL),
                ("password", PASSWORD),
            ],
            &plain,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let cookie = r.set_cookie("warden_session").unwrap();
    assert!(cookie.starts_with("__Host-warden_session="), "{cookie}");
    assert!(cookie.contains("; Secure"));
    assert!(cookie.contains("Path=/"));
}

#[tokio::test]
async fn unknown_scope_is_invalid_scope() {
    let env = TestEnv::new();
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("scope", "tools.read admin")],
        ))
        .await;
    assert_error_redirect(&r, REDIRECT, "invalid_scope");
    // Offered scopes are fine.
    let r = env
        .get(&TestEnv::authorize_uri(
            "public-app",
            REDIRECT,
            &[("scope", "tools.read")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// `/authorize` as `mcp-remote` probes it before opening a browser: `Accept: application/json`.
async fn probe(env: &TestEnv, uri: &str, accept: &str) -> Resp {
    env.send(
        axum::http::Request::get(uri)
            .header(axum::http::header::ACCEPT, accept)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_deleted_client_probed_for_json_gets_invalid_client_and_a_browser_the_page() {
    let env = TestEnv::new();
    let client_id = env.register_public(REDIRECT).await;
    let uri = TestEnv::authorize_uri(&client_id, REDIRECT, &[]);
    assert_eq!(
        probe(&env, &uri, "application/json").await.status,
        StatusCode::OK
    );
    // Unused for a day: the sweep deletes the registration.
    env.advance(86_400);
    env.state.sweep().unwrap();

    let r = probe(&env, &uri, "application/json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.header("content-type").starts_with("application/json"));
    assert!(r.headers.get("location").is_none());
    assert_eq!(r.json()["error"], "invalid_client");
    assert_eq!(r.json()["error_description"], "unknown client_id");
    // A browser gets the page.
    let r = probe(
        &env,
        &uri,
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )
    .await;
    assert_error_page(&r);
    assert!(r.body.contains("unknown client_id"));
    // The other errors that may not redirect, as JSON with their code.
    let r = probe(
        &env,
        &TestEnv::authorize_uri("public-app", "https://evil.example/cb", &[]),
        "application/json",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request", "{}", r.body);
}

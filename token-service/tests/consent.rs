//! Security regressions: per-client consent (confused deputy / DCR account takeover),
//! browser-bound pending flows (login CSRF), and the per-account sign-in throttle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;

const EVIL_REDIRECT: &str = "https://attacker.example/cb";

/// An attacker registers a client through open DCR, with a name that tries markup.
async fn register_evil(env: &TestEnv) -> String {
    let r = env
        .post_json(
            "/register",
            json!({
                "redirect_uris": [EVIL_REDIRECT],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "<b>Official</b> \"App\"",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json()["client_id"].as_str().unwrap().to_owned()
}

/// The victim is signed in (through a client that skips consent); returns the session cookie.
async fn victim_session(env: &TestEnv) -> String {
    let (q, cookie) = env.sign_in("trusted-app", REDIRECT, &[]).await;
    assert!(q.contains_key("code"));
    cookie
}

fn assert_consent_page(r: &Resp) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.headers.get("location").is_none());
    assert!(r
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(r.body.contains("name=\"decision\" value=\"approve\""));
    assert!(r.body.contains("name=\"decision\" value=\"deny\""));
    assert!(!r.body.contains("name=\"password\""));
}

#[tokio::test]
async fn signed_in_user_is_asked_before_a_dcr_client_gets_a_code() {
    let env = TestEnv::new();
    let session = victim_session(&env).await;
    let evil = register_evil(&env).await;

    // The lure: the victim's browser opens the attacker's authorization URL.
    let page = env
        .get_with_cookie(&TestEnv::authorize_uri(&evil, EVIL_REDIRECT, &[]), &session)
        .await;
    assert_consent_page(&page);
    assert!(
        page.body
            .contains("&lt;b&gt;Official&lt;/b&gt; &quot;App&quot;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<b>Official</b>"));
    assert!(page.body.contains("unverified"));
    assert!(page.body.contains("attacker.example"));
    assert!(page.body.contains(RESOURCE));
    assert!(page.body.contains("tools.read") && page.body.contains("tools.call"));
    assert!(page.body.contains(EMAIL));
    let flow_cookie = page.cookie("warden_flow").unwrap();
    let cookies = format!("{flow_cookie}; {session}");

    // Deny: back to the client with access_denied, state and iss; nothing remembered.
    let r = env.decide(&page, &cookies, "deny").await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, EVIL_REDIRECT);
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], ISSUER);
    assert!(!q.contains_key("code"));
    // The decision is single use.
    let again = env.decide(&page, &cookies, "approve").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let page = env
        .get_with_cookie(&TestEnv::authorize_uri(&evil, EVIL_REDIRECT, &[]), &cookies)
        .await;
    assert_consent_page(&page);

    // Approve: code, state and iss; the approval is remembered for this client.
    let r = env.decide(&page, &cookies, "approve").await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, EVIL_REDIRECT);
    assert!(q["code"].len() >= 40);
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], ISSUER);
    let r = env
        .get_with_cookie(&TestEnv::authorize_uri(&evil, EVIL_REDIRECT, &[]), &session)
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r.location_query().contains_key("code"));

    // ...but only for that client: another DCR client is asked again.
    let other = env.register_public(REDIRECT).await;
    let r = env
        .get_with_cookie(&TestEnv::authorize_uri(&other, REDIRECT, &[]), &session)
        .await;
    assert_consent_page(&r);
    assert!(r.body.contains("Test Client"));
}

#[tokio::test]
async fn consent_follows_sign_in_and_the_code_works() {
    let env = TestEnv::new();
    let client = env.register_public(REDIRECT).await;
    let form = env
        .get(&TestEnv::authorize_uri(&client, REDIRECT, &[]))
        .await;
    let flow_cookie = form.cookie("warden_flow").unwrap();
    let page = env.login(&form, EMAIL, PASSWORD).await;
    assert_consent_page(&page);
    let session = page.cookie("warden_session").expect("signed in");
    // The consent form is not a login form.
    let r = env
        .post_browser(
            "/login",
            &[
                ("flow", &page.hidden("flow")),
                ("csrf", &page.hidden("csrf")),
                ("email", EMAIL),
                ("password", PASSWORD),
            ],
            &format!("{flow_cookie}; {session}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = env
        .decide(&page, &format!("{flow_cookie}; {session}"), "approve")
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let code = r.location_query()["code"].clone();
    let t = env.exchange_public(&client, &code, REDIRECT).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    assert_eq!(t.json()["scope"], "tools.read tools.call");
}

#[tokio::test]
async fn consent_covers_one_scope_set_and_resource() {
    let env = TestEnv::with(|d| {
        config_yaml(
            d,
            "  - name: second\n    from: http://127.0.0.1:9000\n    prefix: /other\n    to: http://127.0.0.1:9300/mcp\n    mcp:\n      server: {}\n    policy: {allow: {and: [{authenticated_user: true}]}}\n    scopes: [files.read]\n",
            "ES256",
        )
    });
    let (_, session) = env
        .sign_in("trusted-app", REDIRECT, &[("resource", RESOURCE)])
        .await;
    let client = env.register_public(REDIRECT).await;
    let ask = |extra: Vec<(&'static str, &'static str)>| {
        let uri = TestEnv::authorize_uri(&client, REDIRECT, &extra);
        let env = &env;
        let session = session.clone();
        async move { env.get_with_cookie(&uri, &session).await }
    };
    let read = vec![("resource", RESOURCE), ("scope", "tools.read")];
    let both = vec![("resource", RESOURCE), ("scope", "tools.read tools.call")];
    let page = ask(read.clone()).await;
    assert_consent_page(&page);
    assert!(!page.body.contains("tools.call"));
    let cookies = format!("{}; {session}", page.cookie("warden_flow").unwrap());
    let r = env.decide(&page, &cookies, "approve").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(ask(read.clone()).await.status, StatusCode::FOUND);
    // More scopes: asked again.
    let page = ask(both.clone()).await;
    assert_consent_page(&page);
    let cookies = format!("{}; {session}", page.cookie("warden_flow").unwrap());
    assert_eq!(
        env.decide(&page, &cookies, "approve").await.status,
        StatusCode::FOUND
    );
    assert_eq!(ask(both).await.status, StatusCode::FOUND);
    assert_eq!(
        ask(vec![("resource", RESOURCE), ("scope", "tools.call")])
            .await
            .status,
        StatusCode::FOUND
    );
    // Another resource: asked again.
    let page = ask(vec![("resource", "http://127.0.0.1:9000/other")]).await;
    assert_consent_page(&page);
    assert!(page.body.contains("files.read"));
}

#[tokio::test]
async fn consent_form_is_bound_to_flow_browser_and_session() {
    let env = TestEnv::new();
    let session = victim_session(&env).await;
    let client = env.register_public(REDIRECT).await;
    let page = env
        .get_with_cookie(&TestEnv::authorize_uri(&client, REDIRECT, &[]), &session)
        .await;
    assert_consent_page(&page);
    let flow_cookie = page.cookie("warden_flow").unwrap();
    let cookies = format!("{flow_cookie}; {session}");
    let post = |form: Vec<(&'static str, String)>, cookie: String| {
        let env = &env;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            env.post_browser("/consent", &form, &cookie).await
        }
    };
    let fields = |csrf: &str| {
        vec![
            ("flow", page.hidden("flow")),
            ("csrf", csrf.to_owned()),
            ("decision", "approve".to_owned()),
        ]
    };
    let csrf = page.hidden("csrf");
    // Forged CSRF token.
    let r = post(fields("forged"), cookies.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Missing browser cookie (a cross-site POST carries no SameSite=Lax cookies).
    let r = post(fields(&csrf), session.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another browser's binding cookie.
    let other_form = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    let other_flow_cookie = other_form.cookie("warden_flow").unwrap();
    assert_ne!(other_flow_cookie, flow_cookie);
    let r = post(fields(&csrf), format!("{other_flow_cookie}; {session}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // No session, or another session of the same user: the token is bound to this one.
    let r = post(fields(&csrf), flow_cookie.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let other_session = victim_session(&env).await;
    assert_ne!(other_session, session);
    let r = post(fields(&csrf), format!("{flow_cookie}; {other_session}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Neither decision: refused, and the flow is still usable.
    let r = post(
        vec![
            ("flow", page.hidden("flow")),
            ("csrf", csrf.clone()),
            ("decision", "maybe".to_owned()),
        ],
        cookies.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The right browser, session and token.
    let r = post(fields(&csrf), cookies).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r.location_query().contains_key("code"));
}

#[tokio::test]
async fn pre_registered_clients_ask_unless_configured_to_skip() {
    let env = TestEnv::new();
    let session = victim_session(&env).await;
    // basic-app has no skip_consent: asked, but not labelled unverified.
    let page = env
        .get_with_cookie(
            &TestEnv::authorize_uri("basic-app", REDIRECT, &[]),
            &session,
        )
        .await;
    assert_consent_page(&page);
    assert!(page.body.contains("Basic App"));
    assert!(!page.body.contains("unverified"));
    // trusted-app has skip_consent: true.
    let r = env
        .get_with_cookie(
            &TestEnv::authorize_uri("trusted-app", REDIRECT, &[]),
            &session,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    // The field defaults to false.
    assert!(env
        .state
        .config()
        .clients
        .iter()
        .all(|c| c.skip_consent == (c.client_id == "trusted-app")));
}

#[tokio::test]
async fn login_form_only_works_in_the_browser_that_opened_it() {
    let env = TestEnv::new();
    // The attacker opens a flow and would make the victim's browser post its credentials.
    let attacker = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let form = [
        ("flow", attacker.hidden("flow")),
        ("csrf", attacker.hidden("csrf")),
        ("email", EMAIL.to_owned()),
        ("password", PASSWORD.to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Victim's browser without a binding cookie.
    let r = env.post_form("/login", &form, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.headers.get("set-cookie").is_none());
    // Victim's browser with its own binding cookie (from its own, unrelated flow).
    let victim = env
        .get(&TestEnv::authorize_uri("public-app", REDIRECT, &[]))
        .await;
    let victim_cookie = victim.cookie("warden_flow").unwrap();
    let r = env.post_browser("/login", &form, &victim_cookie).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // The browser that opened the form can use it.
    let r = env
        .post_browser("/login", &form, &attacker.cookie("warden_flow").unwrap())
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}

#[tokio::test]
async fn one_browser_can_run_several_flows() {
    let env = TestEnv::new();
    let first = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let cookie = first.cookie("warden_flow").unwrap();
    let second = env
        .get_with_cookie(
            &TestEnv::authorize_uri("trusted-app", REDIRECT, &[]),
            &cookie,
        )
        .await;
    assert_eq!(second.cookie("warden_flow").unwrap(), cookie);
    assert_eq!(
        env.login(&second, EMAIL, PASSWORD).await.status,
        StatusCode::FOUND
    );
    assert_eq!(
        env.login(&first, EMAIL, PASSWORD).await.status,
        StatusCode::FOUND
    );
}

#[tokio::test]
async fn failed_sign_ins_throttle_the_account_across_flows() {
    let env = TestEnv::new();
    // Five wrong guesses, each from a fresh flow (the per-flow limit never triggers).
    for (i, email) in [
        EMAIL,
        EMAIL,
        "ALICE@example.com",
        EMAIL,
        " alice@EXAMPLE.com",
    ]
    .iter()
    .enumerate()
    {
        let form = env
            .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
            .await;
        let r = env.login(&form, email, &format!("guess {i}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        env.advance(60);
    }
    // Now even the right password is refused for this account, with the error page.
    let form = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(r.body.contains("Too many failed sign-in attempts"));
    assert!(r.headers.get("set-cookie").is_none());
    // Other accounts are not affected.
    let other = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let r = env.login(&other, "bob@example.com", "x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Once the failures are older than 15 minutes, the account signs in again.
    env.advance(15 * 60);
    let form = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    let r = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}

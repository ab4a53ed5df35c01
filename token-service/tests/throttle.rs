#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The sign-in throttle: parallel guesses, device cookies, and no account enumeration.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;

/// A fresh browser's login form for the trusted app.
async fn form(env: &TestEnv) -> Resp {
    let f = env
        .get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]))
        .await;
    assert_eq!(f.status, StatusCode::OK, "{}", f.body);
    f
}

/// Submits `form` with the browser's flow cookie plus `device` (a `warden_device=…` pair).
async fn login_as(
    env: &TestEnv,
    form: &Resp,
    email: &str,
    password: &str,
    device: Option<&str>,
) -> Resp {
    let mut cookie = form.cookie("warden_flow").unwrap();
    if let Some(d) = device {
        cookie = format!("{cookie}; {d}");
    }
    env.post_browser(
        "/login",
        &[
            ("flow", &form.hidden("flow")),
            ("csrf", &form.hidden("csrf")),
            ("email", email),
            ("password", password),
        ],
        &cookie,
    )
    .await
}

/// Signs in with the right password from a fresh browser; returns its device cookie.
async fn owner_browser(env: &TestEnv) -> String {
    let f = form(env).await;
    let r = login_as(env, &f, EMAIL, PASSWORD, None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    r.cookie("warden_device").expect("a device cookie")
}

/// A stranger's wrong guesses, each from a fresh browser.
async fn strangers_guesses(env: &TestEnv, email: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for i in 0..n {
        let f = form(env).await;
        out.push(
            login_as(env, &f, email, &format!("guess {i}"), None)
                .await
                .status,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_guesses_for_one_account_get_at_most_five_password_checks() {
    // A real Argon2 cost (small, but not trivial) keeps each check busy for a while, as an
    // attacker's parallel guesses would find it.
    let env = Arc::new(TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(&cheap_hash(PASSWORD), &hash_with(PASSWORD, 2048, 2))
    }));
    let mut forms = Vec::new();
    for _ in 0..16 {
        forms.push(form(&env).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(forms.len()));
    let tasks: Vec<_> = forms
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let (env, barrier) = (env.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                login_as(&env, &f, EMAIL, &format!("guess {i}"), None)
                    .await
                    .status
            })
        })
        .collect();
    let mut checked = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((checked, refused), (5, 11));
}

#[tokio::test]
async fn a_strangers_failures_lock_untrusted_browsers_but_not_the_owners_browser() {
    let env = TestEnv::new();
    let device = owner_browser(&env).await;

    let statuses = strangers_guesses(&env, EMAIL, 6).await;
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // Any browser without the owner's device cookie is locked out, right password or not.
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);

    // The owner's browser still signs in, and gets a fresh device cookie.
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, Some(&device)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let renewed = r.cookie("warden_device").unwrap();
    assert_ne!(renewed, device);

    // The stranger keeps guessing: untrusted browsers stay locked, the owner's does not.
    assert_eq!(
        strangers_guesses(&env, EMAIL, 10).await,
        vec![StatusCode::TOO_MANY_REQUESTS; 10]
    );
    // A replaced device cookie is worth nothing, even to the browser that held it.
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, Some(&device)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, Some(&renewed)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}

#[tokio::test]
async fn a_device_cookie_that_racks_up_failures_is_locked_on_its_own() {
    let env = TestEnv::new();
    let device = owner_browser(&env).await;
    for i in 0..5 {
        let f = form(&env).await;
        let r = login_as(&env, &f, EMAIL, &format!("typo {i}"), Some(&device)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, Some(&device)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    // Its failures are its own: other browsers are not locked by them.
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    // And it comes back once its failures age out.
    env.advance(15 * 60 + 1);
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, Some(&device)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}

#[tokio::test]
async fn a_device_cookie_counts_only_for_the_account_that_earned_it() {
    let env = TestEnv::new();
    let device = owner_browser(&env).await;
    let victim = "bob@example.com";
    assert_eq!(
        strangers_guesses(&env, victim, 5).await,
        vec![StatusCode::UNAUTHORIZED; 5]
    );
    let f = form(&env).await;
    let r = login_as(&env, &f, victim, "another guess", Some(&device)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    // A made-up device cookie is no better.
    let f = form(&env).await;
    let forged = "warden_device=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = login_as(&env, &f, victim, "another guess", Some(forged)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
}

#[tokio::test]
async fn the_device_cookie_is_long_lived_http_only_and_host_bound_on_https() {
    let env = TestEnv::new();
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, PASSWORD, None).await;
    let c = r.set_cookie("warden_device").unwrap();
    for attr in ["Max-Age=31536000", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(c.contains(attr), "{c}");
    }
    // No device cookie for a failed attempt.
    let f = form(&env).await;
    let r = login_as(&env, &f, EMAIL, "wrong", None).await;
    assert!(r.set_cookie("warden_device").is_none());

    let env = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "issuer: http://127.0.0.1:9100",
            "issuer: https://auth.example.com",
        )
    });
    let f = form(&env).await;
    let flow = f.cookie("warden_flow").unwrap();
    let r = env
        .post_browser(
            "/login",
            &[
                ("flow", &f.hidden("flow")),
                ("csrf", &f.hidden("csrf")),
                ("email", EMAIL),
                ("password", PASSWORD),
            ],
            &flow,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let c = r.set_cookie("warden_device").unwrap();
    assert!(c.starts_with("__Host-warden_device="), "{c}");
    assert!(c.contains("; Secure"), "{c}");
}

/// The login page with what differs per flow or per typed email blanked out.
fn normalised(r: &Resp, form: &Resp, email: &str) -> String {
    let mut body = r.body.clone();
    if r.status == StatusCode::UNAUTHORIZED {
        body = body
            .replace(&form.hidden("flow"), "FLOW")
            .replace(&form.hidden("csrf"), "CSRF");
    }
    body.replace(email, "EMAIL")
}

#[tokio::test]
async fn unknown_and_known_emails_get_the_same_answers_and_the_same_throttle() {
    let env = TestEnv::new();
    let mut answers: Vec<Vec<(StatusCode, String, Option<String>)>> = Vec::new();
    for email in [EMAIL, "nobody@example.com"] {
        let mut seen = Vec::new();
        for i in 0..7 {
            let f = form(&env).await;
            let r = login_as(&env, &f, email, &format!("guess {i}"), None).await;
            seen.push((
                r.status,
                normalised(&r, &f, email),
                r.headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ));
            assert!(r.headers.get("set-cookie").is_none());
        }
        answers.push(seen);
    }
    let statuses: Vec<StatusCode> = answers[0].iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [
            vec![StatusCode::UNAUTHORIZED; 5],
            vec![StatusCode::TOO_MANY_REQUESTS; 2]
        ]
        .concat()
    );
    assert_eq!(answers[0], answers[1]);
    // Both unlock the same way.
    env.advance(15 * 60 + 1);
    for email in [EMAIL, "nobody@example.com"] {
        let f = form(&env).await;
        let r = login_as(&env, &f, email, "wrong again", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_checks_beyond_the_queue_are_refused_with_503_not_piled_up() {
    // One check at a time, each a default-cost Argon2 (19 MiB): 17 may be admitted (1
    // running + 16 queued); a burst of 60 finds the queue full.
    let env = Arc::new(TestEnv::with(|d| {
        many_sign_ins(config_yaml(d, "", "ES256"))
            .replace(&cheap_hash(PASSWORD), &hash_with(PASSWORD, 19456, 2))
            .replace(
                "refresh_token_ttl_seconds: 3600",
                "refresh_token_ttl_seconds: 3600\n  max_concurrent_password_checks: 1",
            )
    }));
    let mut forms = Vec::new();
    for _ in 0..60 {
        forms.push(form(&env).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(forms.len()));
    let tasks: Vec<_> = forms
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let (env, barrier) = (env.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                // Distinct unknown accounts: the per-account throttle stays out of the way.
                login_as(&env, &f, &format!("user{i}@example.com"), "x", None).await
            })
        })
        .collect();
    let (mut checked, mut busy) = (0, Vec::new());
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.header("retry-after"), "1");
                busy.push(i);
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(checked >= 17, "{checked} checked, {} busy", busy.len());
    assert!(!busy.is_empty(), "{checked} checked, none busy");
    // A refused attempt never counted as a failure: that account still gets 5 checks.
    let email = format!("user{}@example.com", busy[0]);
    for i in 0..5 {
        let f = form(&env).await;
        let r = login_as(&env, &f, &email, &format!("again {i}"), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
}

//! Ending access (issue 18): a user's sign-out at the issuer ends everything they hold, in
//! every browser and client, and an administrator's `revoke` ends what it names. Both put
//! what they ended in the revocation feed the filters poll.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::*;
use warden_core::internal_api::RevokedKind;

const APP_REDIRECT: &str = "http://127.0.0.1/callback";

/// A signed-in client: its refresh token, and the browser session it signed in with.
struct Signed {
    refresh_token: String,
    cookie: String,
}

async fn signed_in(env: &TestEnv, client: &str) -> Signed {
    let (q, cookie) = env.sign_in(client, APP_REDIRECT, &[]).await;
    let t = env.exchange_public(client, &q["code"], APP_REDIRECT).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    Signed {
        refresh_token: t.json()["refresh_token"].as_str().unwrap().to_owned(),
        cookie,
    }
}

/// The revocation feed as a filter would read it at `now`.
fn feed_at(env: &TestEnv, now: i64) -> Vec<(RevokedKind, String)> {
    env.state
        .store()
        .revocations_after(0, 100, now)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.id))
        .collect()
}

fn feed(env: &TestEnv) -> Vec<(RevokedKind, String)> {
    feed_at(env, env.state.now())
}

#[tokio::test]
async fn signing_out_at_the_issuer_ends_every_grant_session_and_code_of_the_user() {
    let env = TestEnv::new();
    let other_client = env.register_public(APP_REDIRECT).await;
    // Two clients in two browsers, and a code issued and not yet redeemed.
    let a = signed_in(&env, "public-app").await;
    let b = signed_in(&env, &other_client).await;
    let pending_code = env.code("public-app", APP_REDIRECT).await;

    // The sign-in page links to the sign-out.
    let form = env
        .get(&TestEnv::authorize_uri("public-app", APP_REDIRECT, &[]))
        .await;
    assert!(form.body.contains("href=\"/sign-out\""), "{}", form.body);

    let page = env.get_with_cookie("/sign-out", &a.cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Sign out everywhere"), "{}", page.body);
    let csrf = page.hidden("csrf");

    // Without the page's token, or from another origin, nothing ends.
    let r = env
        .post_browser("/sign-out", &[("csrf", "forged")], &a.cookie)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        env.refresh_public("public-app", &a.refresh_token)
            .await
            .status,
        StatusCode::OK,
        "a refused sign-out ends nothing"
    );
    let a = signed_in(&env, "public-app").await;
    let csrf_a = env
        .get_with_cookie("/sign-out", &a.cookie)
        .await
        .hidden("csrf");
    assert_ne!(csrf, csrf_a, "bound to the session");

    let r = env
        .post_browser("/sign-out", &[("csrf", &csrf_a)], &a.cookie)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("signed out of the MCP gateway everywhere"));
    assert!(
        r.set_cookie("warden_session")
            .unwrap()
            .contains("Max-Age=0"),
        "the browser forgets its session"
    );

    // Every grant of the user, in either browser and client, is over.
    for (client, rt) in [
        ("public-app", &a.refresh_token),
        (other_client.as_str(), &b.refresh_token),
    ] {
        let r = env.refresh_public(client, rt).await;
        assert_eq!(r.json()["error"], "invalid_grant", "{client}: {}", r.body);
    }
    let r = env
        .exchange_public("public-app", &pending_code, APP_REDIRECT)
        .await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    // The other browser's session too: it is asked to sign in again.
    let r = env
        .get_with_cookie(
            &TestEnv::authorize_uri("public-app", APP_REDIRECT, &[]),
            &b.cookie,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "the sign-in form again");
    assert!(r.body.contains("name=\"password\""), "{}", r.body);
    // And the filters learn of it: the user's every TE issued until now.
    assert!(
        feed(&env).contains(&(RevokedKind::User, EMAIL.to_owned())),
        "{:?}",
        feed(&env)
    );

    // Signing in again works, and the new grant is not caught by the old revocation.
    env.advance(1);
    let again = signed_in(&env, "public-app").await;
    let r = env.refresh_public("public-app", &again.refresh_token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_sign_out_page_without_a_session_has_nothing_to_end() {
    let env = TestEnv::new();
    let r = env.get("/sign-out").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("<form"), "{}", r.body);
}

/// `warden-token-service revoke`, the real binary, against the deployment's store.
#[tokio::test]
async fn an_administrator_revokes_a_user_a_client_or_a_route() {
    let env = TestEnv::new();
    let config = env.dir.path().join("warden.yaml");
    std::fs::write(&config, config_yaml(env.dir.path(), "", "ES256")).unwrap();
    let revoke = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
            .arg("revoke")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let other_client = env.register_public(APP_REDIRECT).await;
    let a = signed_in(&env, "public-app").await;
    let b = signed_in(&env, &other_client).await;

    let (ok, out) = revoke(&["--user", EMAIL, "--route", "nope"]);
    assert!(!ok && out.contains("--route nope"), "{out}");

    // One client's grants only.
    let (ok, out) = revoke(&["--user", EMAIL, "--client", &other_client]);
    assert!(ok && out.contains("revoked 1 grant(s)"), "{out}");
    assert_eq!(
        env.refresh_public(&other_client, &b.refresh_token)
            .await
            .json()["error"],
        "invalid_grant"
    );
    let r = env.refresh_public("public-app", &a.refresh_token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let a_rt = r.json()["refresh_token"].as_str().unwrap().to_owned();

    // A route's grants (the demo route's MCP server).
    let (ok, out) = revoke(&["--user", EMAIL, "--route", "demo"]);
    assert!(ok && out.contains("revoked 1 grant(s)"), "{out}");
    assert_eq!(
        env.refresh_public("public-app", &a_rt).await.json()["error"],
        "invalid_grant"
    );
    let narrowed = feed_at(&env, warden_token_service::now_unix());
    assert_eq!(narrowed.len(), 2, "{narrowed:?}");
    assert!(
        narrowed.iter().all(|(kind, _)| *kind == RevokedKind::Grant),
        "narrowed revocations name grants: {:?}",
        feed_at(&env, warden_token_service::now_unix())
    );

    // The whole user: sessions too.
    let c = signed_in(&env, "public-app").await;
    let (ok, out) = revoke(&["--user", EMAIL]);
    assert!(
        ok && out.contains("revoked 1 grant(s)") && !out.contains(" 0 session(s)"),
        "{out}"
    );
    assert_eq!(
        env.refresh_public("public-app", &c.refresh_token)
            .await
            .json()["error"],
        "invalid_grant"
    );
    assert!(feed_at(&env, warden_token_service::now_unix())
        .contains(&(RevokedKind::User, EMAIL.to_owned())));
}

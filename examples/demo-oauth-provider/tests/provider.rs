//! The demo OAuth provider over real HTTP: code flow with PKCE, refresh rotation and reuse
//! detection, client authentication styles, revocation, userinfo, introspection, test hooks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use demo_oauth_provider::{AuthStyle, ProviderConfig};
use reqwest::{header::LOCATION, StatusCode};
use serde_json::Value;

impl Provider {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET /authorize → the consent page's request id.
    async fn authorize_page(&self, scope: &str, verifier: Option<&str>) -> String {
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", ID.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("state", "st-1".to_owned()),
            ("scope", scope.to_owned()),
        ];
        if let Some(v) = verifier {
            params.push(("code_challenge", challenge(v)));
            params.push(("code_challenge_method", "S256".to_owned()));
        }
        let resp = self
            .http
            .get(self.url("/authorize"))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("<title>Demo OAuth Provider</title>"),
            "{html}"
        );
        for s in scope.split_whitespace() {
            assert!(html.contains(&format!("<li>{s}</li>")), "{html}");
        }
        hidden(&html, "request")
    }

    async fn submit(
        &self,
        request: &str,
        user: &str,
        password: &str,
        decision: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/authorize"))
            .form(&[
                ("request", request),
                ("username", user),
                ("password", password),
                ("decision", decision),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Approves as alice → the code.
    async fn code(&self, scope: &str, verifier: Option<&str>) -> String {
        let request = self.authorize_page(scope, verifier).await;
        let resp = self
            .submit(&request, "alice", "alice-password", "approve")
            .await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with(REDIRECT), "{location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
        query_param(&location, "code").unwrap()
    }

    /// POST /token with params-style client authentication.
    async fn token(&self, params: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = params.to_vec();
        form.push(("client_id", ID));
        form.push(("client_secret", SECRET));
        self.post_form("/token", &form, None).await
    }

    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    async fn exchange(&self, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .await
    }

    async fn tokens(&self, scope: &str) -> Value {
        let code = self.code(scope, Some(VERIFIER)).await;
        let (status, body) = self.exchange(&code, VERIFIER).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    async fn userinfo(&self, access_token: &str) -> reqwest::Response {
        self.http
            .get(self.url("/userinfo"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    async fn introspect(&self, token: &str) -> Value {
        self.post_form("/introspect", &[("token", token)], None)
            .await
            .1
    }

    async fn stats(&self) -> Value {
        self.http
            .get(self.url("/_test/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn hook(&self, path_and_query: &str) -> StatusCode {
        self.http
            .post(self.url(path_and_query))
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("{name} in {v}"))
}

#[tokio::test]
async fn code_flow_with_pkce_userinfo_and_introspection() {
    let p = start(ProviderConfig::default()).await;
    assert_eq!(
        p.http
            .get(p.url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let code = p.code("repo read:user", Some(VERIFIER)).await;
    assert!(code.starts_with("dac_"), "{code}");
    let resp = p
        .http
        .post(p.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", ID),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let access = str_field(&body, "access_token");
    let refresh = str_field(&body, "refresh_token");
    assert!(access.starts_with("dat_"), "{body}");
    assert!(refresh.starts_with("drt_"), "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["scope"], "repo read:user");

    let resp = p.userinfo(access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["scope"], "repo read:user");

    let info = p.introspect(access).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["client_id"], ID);
    assert_eq!(info["scope"], "repo read:user");
    assert!(info["exp"].as_u64().unwrap() > 0);
    assert_eq!(p.introspect(refresh).await["active"], false);
    assert_eq!(p.introspect("dat_junk").await["active"], false);

    let resp = p.userinfo("dat_junk").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );

    let stats = p.stats().await;
    assert_eq!(stats["authorization_code"], 1, "{stats}");
    assert_eq!(stats["auth_styles"]["params"], 1, "{stats}");
    assert_eq!(stats["auth_styles"]["header"], 0, "{stats}");
}

#[tokio::test]
async fn wrong_verifier_missing_verifier_and_code_reuse_are_refused() {
    let p = start(ProviderConfig::default()).await;

    let code = p.code("read", Some(VERIFIER)).await;
    let (status, body) = p
        .exchange(&code, "another-verifier-another-verifier-another-verifier")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body["error_description"].is_string());

    let code = p.code("read", Some(VERIFIER)).await;
    let (status, body) = p
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");

    let code = p.code("read", Some(VERIFIER)).await;
    let (status, body) = p
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:1/other"),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "redirect mismatch: {body}");

    let code = p.code("read", Some(VERIFIER)).await;
    let (status, body) = p.exchange(&code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = p.exchange(&code, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "reused code: {body}");

    let (status, body) = p.token(&[("grant_type", "password")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
}

#[tokio::test]
async fn authorize_validates_client_and_redirect_and_handles_deny_and_bad_password() {
    let p = start(ProviderConfig {
        redirect_uris: vec![REDIRECT.to_owned()],
        ..ProviderConfig::default()
    })
    .await;
    for (client, redirect) in [("nobody", REDIRECT), (ID, "http://evil.example/cb")] {
        let resp = p
            .http
            .get(p.url("/authorize"))
            .query(&[
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", redirect),
                ("state", "s"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{client} {redirect}"
        );
        assert!(resp.headers().get(LOCATION).is_none());
        assert!(resp.text().await.unwrap().contains("Demo OAuth Provider"));
    }

    let request = p.authorize_page("read", None).await;
    let resp = p.submit(&request, "alice", "wrong", "approve").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Wrong username or password"), "{html}");
    assert_eq!(hidden(&html, "request"), request);

    let resp = p.submit(&request, "", "", "deny").await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied")
    );
    assert!(query_param(&location, "error_description").is_some());
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
    assert!(query_param(&location, "code").is_none());

    // The request is gone after the decision.
    let resp = p
        .submit(&request, "alice", "alice-password", "approve")
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Without PKCE the flow works too (confidential client).
    let code = p.code("read", None).await;
    let (status, body) = p
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_grant() {
    let p = start(ProviderConfig::default()).await;
    let first = p.tokens("read write").await;
    let r1 = str_field(&first, "refresh_token");

    let (status, second) = p.refresh(r1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r2 = str_field(&second, "refresh_token");
    let a2 = str_field(&second, "access_token");
    assert_ne!(r1, r2);
    assert!(r2.starts_with("drt_") && a2.starts_with("dat_"));
    assert_eq!(second["scope"], "read write");

    // Narrower scope on refresh; wider is refused.
    let (status, third) = p
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r2),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(third["scope"], "read");
    let r3 = str_field(&third, "refresh_token");
    let a3 = str_field(&third, "access_token");
    let (status, body) = p
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r3),
            ("scope", "admin"),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope", "{body}");
    assert_eq!(p.userinfo(a3).await.status(), StatusCode::OK);

    // r1 was used: presenting it again is refused and kills the whole grant.
    let (status, body) = p.refresh(r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let (status, body) = p.refresh(r3).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(p.userinfo(a2).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(p.userinfo(a3).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(p.introspect(a3).await["active"], false);

    let stats = p.stats().await;
    assert_eq!(stats["refresh_token"], 2, "{stats}");
    assert_eq!(stats["refresh_failures"], 3, "{stats}");
    assert_eq!(stats["reuse_detected"], 1, "{stats}");
}

async fn token_with(p: &Provider, refresh: &str, basic: bool, params: bool) -> (StatusCode, Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh)];
    if params {
        form.push(("client_id", ID));
        form.push(("client_secret", SECRET));
    }
    p.post_form("/token", &form, basic.then_some((ID, SECRET)))
        .await
}

#[tokio::test]
async fn auth_styles_accept_only_their_own_style() {
    // header
    let p = start(ProviderConfig {
        auth_style: AuthStyle::Header,
        ..ProviderConfig::default()
    })
    .await;
    let code = p.code("read", Some(VERIFIER)).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, tokens) = p.post_form("/token", &form, Some((ID, SECRET))).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let refresh = str_field(&tokens, "refresh_token").to_owned();
    let (status, body) = token_with(&p, &refresh, false, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
    let (status, body) = p
        .post_form(
            "/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            Some((ID, "wrong")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
    let (status, body) = token_with(&p, &refresh, true, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = p.stats().await;
    assert_eq!(stats["auth_styles"]["header"], 2, "{stats}");
    assert_eq!(stats["auth_styles"]["params"], 0, "{stats}");
    drop(p);

    // params
    let p = start(ProviderConfig {
        auth_style: AuthStyle::Params,
        ..ProviderConfig::default()
    })
    .await;
    let tokens = p.tokens("read").await;
    let refresh = str_field(&tokens, "refresh_token").to_owned();
    let (status, body) = token_with(&p, &refresh, true, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
    let (status, body) = p
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", ID),
                ("client_secret", "wrong"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
    let (status, body) = token_with(&p, &refresh, false, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = p.stats().await;
    assert_eq!(stats["auth_styles"]["params"], 2, "{stats}");
    assert_eq!(stats["auth_styles"]["header"], 0, "{stats}");
    drop(p);

    // any
    let p = start(ProviderConfig::default()).await;
    let tokens = p.tokens("read").await;
    let refresh = str_field(&tokens, "refresh_token").to_owned();
    let (status, body) = token_with(&p, &refresh, true, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refresh = str_field(&body, "refresh_token").to_owned();
    let (status, body) = token_with(&p, &refresh, false, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refresh = str_field(&body, "refresh_token").to_owned();
    let (status, body) = token_with(&p, &refresh, false, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
    let stats = p.stats().await;
    assert_eq!(stats["auth_styles"]["header"], 1, "{stats}");
    assert_eq!(stats["auth_styles"]["params"], 2, "{stats}");
}

#[tokio::test]
async fn revoke_kills_the_whole_grant() {
    let p = start(ProviderConfig::default()).await;
    let keep = p.tokens("read").await;
    let tokens = p.tokens("read").await;
    let access = str_field(&tokens, "access_token");
    let refresh = str_field(&tokens, "refresh_token");

    // Client authentication is required.
    let (status, _) = p
        .post_form(
            "/revoke",
            &[("token", access), ("client_secret", "x"), ("client_id", ID)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(p.userinfo(access).await.status(), StatusCode::OK);

    // Revoking the access token kills the refresh token too.
    let (status, _) = p
        .post_form("/revoke", &[("token", access)], Some((ID, SECRET)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p.userinfo(access).await.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = p.refresh(refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // Unknown tokens: 200 as well. Another grant is untouched.
    let (status, _) = p
        .post_form(
            "/revoke",
            &[
                ("token", "drt_unknown"),
                ("client_id", ID),
                ("client_secret", SECRET),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        p.userinfo(str_field(&keep, "access_token")).await.status(),
        StatusCode::OK
    );

    // Revoking by refresh token.
    let (status, _) = p
        .post_form(
            "/revoke",
            &[("token", str_field(&keep, "refresh_token"))],
            Some((ID, SECRET)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        p.userinfo(str_field(&keep, "access_token")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        p.stats().await["revocations"],
        3,
        "authenticated /revoke requests"
    );
}

#[tokio::test]
async fn access_tokens_expire_after_the_ttl() {
    let p = start(ProviderConfig {
        access_ttl: Duration::from_secs(1),
        ..ProviderConfig::default()
    })
    .await;
    let tokens = p.tokens("read").await;
    assert_eq!(tokens["expires_in"], 1);
    let access = str_field(&tokens, "access_token");
    assert_eq!(p.userinfo(access).await.status(), StatusCode::OK);
    // Expiry is the feature under test: wait for it (just over the 1 s lifetime).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = p.userinfo(access).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(p.introspect(access).await["active"], false);
    // The refresh token still works and yields a fresh access token.
    let (status, body) = p.refresh(str_field(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        p.userinfo(str_field(&body, "access_token")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn fail_token_and_revoke_user_hooks() {
    let p = start(ProviderConfig {
        users: vec![
            ("alice".into(), "alice-password".into()),
            ("bob".into(), "bob-password".into()),
        ],
        ..ProviderConfig::default()
    })
    .await;
    let tokens = p.tokens("read").await;
    let refresh = str_field(&tokens, "refresh_token").to_owned();

    assert_eq!(
        p.hook("/_test/fail-token?status=503&count=2").await,
        StatusCode::OK
    );
    for _ in 0..2 {
        let (status, body) = p.refresh(&refresh).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    // The injected failures did not consume the refresh token.
    let (status, body) = p.refresh(&refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = p.stats().await;
    assert_eq!(stats["injected_failures"], 2, "{stats}");
    assert_eq!(stats["refresh_failures"], 2, "{stats}");
    assert_eq!(stats["refresh_token"], 1, "{stats}");

    // Bob's grant survives alice's revocation.
    let request = p.authorize_page("read", None).await;
    let resp = p.submit(&request, "bob", "bob-password", "approve").await;
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let bob_code = query_param(&location, "code").unwrap();
    let (status, bob) = p
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", bob_code.as_str()),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{bob}");
    let bob_access = str_field(&bob, "access_token");
    let me: Value = p.userinfo(bob_access).await.json().await.unwrap();
    assert_eq!(me["sub"], "bob");

    let alice_access = str_field(&body, "access_token");
    let alice_refresh = str_field(&body, "refresh_token");
    let resp = p
        .http
        .post(p.url("/_test/revoke-user?user=alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked: Value = resp.json().await.unwrap();
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    assert_eq!(
        p.userinfo(alice_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = p.refresh(alice_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(p.userinfo(bob_access).await.status(), StatusCode::OK);

    // A 4xx status injects invalid_grant; statuses outside 400..=599 are refused.
    assert_eq!(
        p.hook("/_test/fail-token?status=400&count=1").await,
        StatusCode::OK
    );
    let (status, body) = p.refresh(str_field(&bob, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        p.hook("/_test/fail-token?status=700").await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn delay_token_makes_concurrent_refreshes_overlap() {
    let p = start(ProviderConfig::default()).await;
    let tokens = p.tokens("read").await;
    let refresh = str_field(&tokens, "refresh_token").to_owned();
    assert_eq!(p.hook("/_test/delay-token?ms=500").await, StatusCode::OK);
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(p.refresh(&refresh), p.refresh(&refresh));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    // One after the other would take at least 1 s.
    assert!(
        elapsed < Duration::from_millis(990),
        "overlapped: {elapsed:?}"
    );
    // One wins, the other is a reuse, which revokes the grant.
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::BAD_REQUEST],
        "{a:?} {b:?}"
    );
    assert_eq!(p.stats().await["reuse_detected"], 1);
    assert_eq!(p.hook("/_test/delay-token?ms=0").await, StatusCode::OK);
}

//! The client_credentials grant (issue 20): configured service clients get a TE for one
//! route, naming themselves (`sub: client:{id}`, `sub_kind: client`) with their configured
//! identity; the configuration's rules for `grant_types` and `identity`; the metadata; the
//! identity assertion of a service client; and every refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use jwt_compact::UntrustedToken;
use serde_json::{json, Value};
use tower::ServiceExt;
use warden_token_service::config::Config;

const REPORTS: &str = "http://127.0.0.1:9000/reports";

/// The service clients, and routes beside `demo`: one that passes identity headers, one
/// whose server acts with each user's upstream account.
fn yaml(dir: &std::path::Path) -> String {
    let routes = r#"  - name: reports
    from: http://127.0.0.1:9000
    prefix: /reports
    to: http://127.0.0.1:9300/mcp
    pass_identity_headers: true
    mcp: {server: {}}
    scopes: [reports.read, reports.write]
    policy: {allow: {and: [{groups: {has: reporting}}]}}
  - name: github
    from: http://127.0.0.1:9000
    prefix: /github
    to: http://127.0.0.1:9400/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: gh
          endpoint: {auth_url: "https://github.com/login/oauth/authorize", token_url: "https://github.com/login/oauth/access_token"}
    policy: {allow: {and: [{authenticated_user: true}]}}
"#;
    config_yaml(dir, routes, "ES256").replace(
        "clients:\n",
        r#"clients:
  - client_id: nightly-report
    client_name: Nightly report
    client_secret: nightly-secret
    grant_types: [client_credentials]
    identity: {email: nightly-report@svc.example.com, groups: [reporting]}
  - client_id: poster
    client_secret: poster-secret
    token_endpoint_auth_method: client_secret_post
    grant_types: [client_credentials]
    identity: {email: poster@svc.example.com, name: The Poster}
"#,
    )
}

fn env() -> TestEnv {
    TestEnv::with(yaml)
}

async fn credentials(env: &TestEnv, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Resp {
    let mut all = vec![("grant_type", "client_credentials")];
    all.extend_from_slice(form);
    env.post_form("/token", &all, basic).await
}

/// A TE's claims, `iat` included.
fn claims_of(token: &str) -> Value {
    let untrusted = UntrustedToken::new(token).unwrap();
    assert_eq!(untrusted.header().token_type.as_deref(), Some("at+jwt"));
    let claims = untrusted.deserialize_claims_unchecked::<Value>().unwrap();
    let mut c = claims.custom;
    c["iat"] = claims.issued_at.unwrap().timestamp().into();
    c
}

fn assert_oauth_error(r: &Resp, status: StatusCode, error: &str, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.json()["error"], error, "{}", r.body);
    let description = r.json()["error_description"].as_str().unwrap().to_owned();
    assert!(description.contains(says), "{description}");
}

#[tokio::test]
async fn a_service_client_gets_a_te_naming_itself_for_the_route_and_no_refresh_token() {
    let env = env();
    let now = env.state.now();
    let r = credentials(
        &env,
        &[("resource", REPORTS)],
        Some(("nightly-report", "nightly-secret")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert!(t.get("refresh_token").is_none(), "{t}");
    assert_eq!(t["scope"], "reports.read reports.write", "all the route's");
    let c = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["aud"], REPORTS);
    assert_eq!(c["sub"], "client:nightly-report");
    assert_eq!(c["sub_kind"], "client");
    assert_eq!(c["client_id"], "nightly-report");
    assert_eq!(c["email"], "nightly-report@svc.example.com");
    assert_eq!(c["name"], "Nightly report", "client_name by default");
    assert_eq!(c["groups"], json!(["reporting"]));
    assert_eq!(c["sid"], "", "no sign-in session");
    assert_eq!(c["gid"], "", "no stored grant");
    assert_eq!(c["iat"], now);
    // What the filter makes of it: a service client.
    let te: warden_core::token::TeClaims = serde_json::from_value(c).unwrap();
    assert!(te.is_service_client());

    // client_secret_post, a subset of the scopes, and the identity's own name.
    let r = credentials(
        &env,
        &[
            ("resource", REPORTS),
            ("scope", "reports.read"),
            ("client_id", "poster"),
            ("client_secret", "poster-secret"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["scope"], "reports.read");
    let c = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(c["name"], "The Poster");
    assert_eq!(c["groups"], json!([]));
    assert_eq!(c["scope"], "reports.read");
}

#[tokio::test]
async fn users_tes_carry_no_sub_kind() {
    let env = TestEnv::new();
    let code = env.code("public-app", REDIRECT).await;
    let r = env.exchange_public("public-app", &code, REDIRECT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let c = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], EMAIL);
    assert!(c.get("sub_kind").is_none(), "{c}");
}

#[tokio::test]
async fn client_credentials_refusals_name_the_reason() {
    let env = env();
    let nightly = Some(("nightly-report", "nightly-secret"));
    let r = credentials(&env, &[], nightly).await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_target",
        "resource is required",
    );
    let r = credentials(
        &env,
        &[("resource", "http://127.0.0.1:9000/nowhere")],
        nightly,
    )
    .await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_target",
        "unknown resource",
    );
    let r = credentials(
        &env,
        &[("resource", "http://127.0.0.1:9000/github")],
        nightly,
    )
    .await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_target",
        "a service client has none",
    );
    let r = credentials(
        &env,
        &[("resource", REPORTS), ("scope", "reports.read admin")],
        nightly,
    )
    .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_scope", "scope admin");
    // Authentication as registered: a wrong secret, no secret, the other method.
    let r = credentials(
        &env,
        &[("resource", REPORTS)],
        Some(("nightly-report", "wrong")),
    )
    .await;
    assert_oauth_error(&r, StatusCode::UNAUTHORIZED, "invalid_client", "failed");
    let r = credentials(
        &env,
        &[("resource", REPORTS), ("client_id", "nightly-report")],
        None,
    )
    .await;
    assert_oauth_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client_secret_basic",
    );
    let r = credentials(
        &env,
        &[("resource", REPORTS)],
        Some(("poster", "poster-secret")),
    )
    .await;
    assert_oauth_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client_secret_post",
    );
    // Clients without the grant: a configured app, and a DCR client.
    let r = credentials(
        &env,
        &[("resource", RESOURCE)],
        Some(("basic-app", "basic-secret")),
    )
    .await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        "may not use client_credentials",
    );
    let dcr = env.register_public(REDIRECT).await;
    let r = credentials(&env, &[("resource", RESOURCE), ("client_id", &dcr)], None).await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        "may not use client_credentials",
    );
    // And a service client may use no other grant, nor sign users in.
    let r = env
        .post_form(
            "/token",
            &[("grant_type", "authorization_code"), ("code", "x")],
            nightly,
        )
        .await;
    assert_oauth_error(
        &r,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        "authorization_code",
    );
    let r = env
        .get(&TestEnv::authorize_uri("nightly-report", REDIRECT, &[]))
        .await;
    assert_ne!(r.status, StatusCode::FOUND, "never a redirect: {}", r.body);
}

#[tokio::test]
async fn metadata_lists_client_credentials_when_a_client_has_it() {
    let env = env();
    let m = env
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    let plain = TestEnv::new();
    let m = plain
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
}

/// `POST /internal/v1/identity-assertion` for `sub`, as the filter asks on a cache miss.
async fn assertion_for(env: &TestEnv, sub: &str) -> (StatusCode, Value) {
    const PATH: &str = "/internal/v1/identity-assertion";
    let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned();
    let body = json!({"sub": sub, "route": "reports"}).to_string();
    let authorization = env.internal_authorization(&credential, PATH, body.as_bytes());
    let resp = warden_token_service::internal::router(env.state.clone())
        .oneshot(
            Request::post(PATH)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, authorization)
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_service_clients_identity_assertion_names_it_and_a_removed_client_is_gone() {
    let env = env();
    let (status, answer) = assertion_for(&env, "client:nightly-report").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let c = claims_of_assertion(answer["assertion"].as_str().unwrap());
    assert_eq!(c["sub"], "client:nightly-report");
    assert_eq!(c["sub_kind"], "client");
    assert_eq!(c["email"], "nightly-report@svc.example.com");
    assert_eq!(c["groups"], json!(["reporting"]));
    // A user's carries no sub_kind.
    let (status, answer) = assertion_for(&env, EMAIL).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(claims_of_assertion(answer["assertion"].as_str().unwrap())
        .get("sub_kind")
        .is_none());
    // Clients that are no service clients, and ones the config does not name, are nobody.
    for sub in ["client:basic-app", "client:gone", "client:"] {
        let (status, answer) = assertion_for(&env, sub).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{sub}: {answer}");
        assert_eq!(answer["error"], "unknown_user", "{sub}");
    }
    let config = env.state.config();
    assert!(warden_token_service::identity::configured(
        config,
        "client:nightly-report"
    ));
    assert!(!warden_token_service::identity::configured(
        config,
        "client:basic-app"
    ));
    // The same deployment without the client: it is gone.
    let removed = Config::from_yaml(&yaml(env.dir.path()).replace(
        "  - client_id: nightly-report\n",
        "  - client_id: renamed-report\n",
    ))
    .unwrap();
    assert!(!warden_token_service::identity::configured(
        &removed,
        "client:nightly-report"
    ));
}

fn claims_of_assertion(jwt: &str) -> Value {
    let untrusted = UntrustedToken::new(jwt).unwrap();
    assert_eq!(untrusted.header().token_type.as_deref(), Some("JWT"));
    untrusted
        .deserialize_claims_unchecked::<Value>()
        .unwrap()
        .custom
}

/// The config error for `yaml`'s clients with `client` appended.
fn client_error(client: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(dir.path()).replace("clients:\n", &format!("clients:\n{client}"));
    Config::from_yaml(&text).unwrap_err().to_string()
}

#[test]
fn the_config_names_the_field_of_a_wrong_grant_or_identity() {
    let cases = [
        (
            "  - {client_id: x, client_secret: s, grant_types: [password], redirect_uris: [\"https://a.example/cb\"]}\n",
            "clients[0].grant_types[0]: unknown grant type \"password\"",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials, client_credentials], identity: {email: x@y}}\n",
            "clients[0].grant_types[1]: listed twice",
        ),
        (
            "  - {client_id: x, grant_types: [client_credentials], identity: {email: x@y}}\n",
            "clients[0].client_secret: required",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials]}\n",
            "clients[0].identity: required with client_credentials",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials], identity: {email: nobody}}\n",
            "clients[0].identity.email: must be an email address",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials], identity: {email: x@y, groups: [\"\"]}}\n",
            "clients[0].identity.groups[0]: must not be empty",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials], identity: {email: x@y}, redirect_uris: [\"https://a.example/cb\"]}\n",
            "clients[0].redirect_uris: a client_credentials client is redirected nowhere",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials, authorization_code], identity: {email: x@y}, redirect_uris: [\"https://a.example/cb\"]}\n",
            "clients[0].grant_types: client_credentials and authorization_code are for different clients",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [refresh_token], identity: {email: x@y}}\n",
            "clients[0].grant_types: refresh_token comes with authorization_code",
        ),
        (
            "  - {client_id: x, redirect_uris: [\"https://a.example/cb\"], identity: {email: x@y}}\n",
            "clients[0].identity: only for client_credentials clients",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [authorization_code]}\n",
            "clients[0].redirect_uris: at least one is required",
        ),
        (
            "  - {client_id: x, client_secret: s, grant_types: [client_credentials], identity: {email: x@y, role: admin}}\n",
            "unknown field `role`",
        ),
    ];
    for (client, want) in cases {
        let got = client_error(client);
        assert!(
            got.contains(want),
            "{client}\n  got:  {got}\n  want: {want}"
        );
    }
    // The secret from a file (one trailing line end dropped), named in errors as the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nightly-secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let from_file = |secret_file: &std::path::Path| {
        yaml(dir.path()).replace(
            "    client_secret: nightly-secret\n",
            &format!("    client_secret_file: {}\n", secret_file.display()),
        )
    };
    let config = Config::from_yaml(&from_file(&file)).unwrap();
    assert_eq!(
        config
            .client("nightly-report")
            .unwrap()
            .client_secret
            .as_deref(),
        Some("from-a-file")
    );
    let got = Config::from_yaml(&from_file(&dir.path().join("missing")))
        .unwrap_err()
        .to_string();
    assert!(
        got.starts_with("clients[0].client_secret_file: cannot read"),
        "{got}"
    );
    std::fs::write(&file, "\n").unwrap();
    let got = Config::from_yaml(&from_file(&file))
        .unwrap_err()
        .to_string();
    assert!(
        got.contains("clients[0].client_secret_file: must not be empty"),
        "{got}"
    );
    // A local user may not take a service client's key.
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(dir.path()).replace(
        &format!("      - email: {EMAIL}\n"),
        "      - email: Client:nightly-report@svc.example.com\n",
    );
    let got = Config::from_yaml(&text).unwrap_err().to_string();
    assert!(
        got.contains("identity_provider.local.users[0].email: must not start with \"client:\""),
        "{got}"
    );
    // Without grant_types a client is what it always was.
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml(&yaml(dir.path())).unwrap();
    let app = config.client("basic-app").unwrap();
    assert_eq!(app.grants(), ["authorization_code", "refresh_token"]);
    // And the secret stays out of Debug.
    let debug = format!("{:?}", config.client("nightly-report").unwrap());
    assert!(!debug.contains("nightly-secret"), "{debug}");
    assert!(debug.contains("client_credentials"), "{debug}");
}

#[tokio::test]
async fn revoking_a_service_client_puts_it_in_the_revocation_feed() {
    use warden_token_service::flows::sign_out::{revoke, Revocation};
    use warden_token_service::store::RevokedKind;
    let env = env();
    let now = env.state.now();
    let ended = revoke(
        env.state.config(),
        env.state.store().as_ref(),
        &Revocation {
            user: "client:nightly-report".into(),
            ..Revocation::default()
        },
        now,
    )
    .unwrap();
    assert!(ended.grant_ids.is_empty(), "no grant is stored");
    let feed = env.state.store().revocations_after(0, 10, now).unwrap();
    let entries: Vec<_> = feed.iter().map(|e| (e.kind, e.id.as_str())).collect();
    assert_eq!(entries, [(RevokedKind::User, "client:nightly-report")]);
}

//! `mcp: client` routes (issue 10), token-service side: the config, browser sign-in on an app
//! route (app codes, app sessions, the route's policy), the app's TEs (every usable server in
//! `aud`, renewal), the server listing filtered per user with `connected`, connect through
//! the upstream provider and disconnect with revocation, and the open-redirect refusal. The
//! router runs in-process with a clock the tests move; the upstream provider is the in-repo
//! demo provider over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use demo_oauth_provider::{AuthStyle, ProviderConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warden_token_service::config::Config;

/// The digest of the browser's nonce cookie the filter would send (64 hex digits).
const NONCE: &str = "6e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f";
const BOB: &str = "bob@other.org";
const CHAT: &str = "http://chat.example.com";
const SECRET_APP: &str = "http://secret.example.com";
const DEMO: &str = "http://127.0.0.1:9000/mcp";
const GH: &str = "http://127.0.0.1:9000/gh";
const CLIENT_ID: &str = "warden-test";
const CLIENT_SECRET: &str = "warden-test-secret";

/// Two users (alice at example.com, bob elsewhere); servers `demo` (everyone), `gh` (alice
/// only, upstream OAuth at `provider`) and `solo` (nobody, on a host of its own); apps `chat` (everyone) and `secret`
/// (example.com only, under `/app`).
fn yaml(dir: &std::path::Path, provider: &str) -> String {
    format!(
        r#"
authorization_server:
  issuer: {ISSUER}
  listen: 127.0.0.1:0
  access_token_ttl_seconds: 300
storage:
  sqlite: {db}
identity_provider:
  local:
    users:
      - {{email: {EMAIL}, name: Alice, password_hash: "{hash}", groups: [demo]}}
      - {{email: {BOB}, name: Bob, password_hash: "{hash}", groups: []}}
clients:
  - client_id: public-app
    redirect_uris: [http://127.0.0.1/callback]
    skip_consent: true
envoy:
  listen: 127.0.0.1:9000
routes:
  - name: demo
    description: The demo server
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:9200/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
  - name: gh
    from: http://127.0.0.1:9000
    prefix: /gh
    to: http://127.0.0.1:9300/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: {CLIENT_ID}
          client_secret: {CLIENT_SECRET}
          scopes: [repo]
          endpoint:
            auth_url: {provider}/authorize
            token_url: {provider}/token
            revocation_url: {provider}/revoke
    policy: {{allow: {{and: [{{email: {{is: {EMAIL}}}}}]}}}}
  - name: solo
    from: http://solo.example.com
    to: http://127.0.0.1:9400/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{email: {{is: nobody@example.com}}}}]}}}}
  - name: chat
    from: {CHAT}
    to: http://127.0.0.1:3000
    mcp: {{client: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
  - name: secret
    from: {SECRET_APP}
    prefix: /app
    to: http://127.0.0.1:3001
    mcp: {{client: {{}}}}
    pass_identity_headers: true
    policy: {{allow: {{and: [{{domain: {{is: example.com}}}}]}}}}
"#,
        db = dir.join("warden.db").display(),
        hash = cheap_hash(PASSWORD),
    )
}

struct App {
    env: TestEnv,
    provider: Provider,
    credential: String,
}

impl App {
    async fn start() -> Self {
        let provider = Provider::serve(ProviderConfig {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![format!("{ISSUER}/upstream/callback")],
            // Form parameters only: revocation must authenticate as the token endpoint did.
            auth_style: AuthStyle::Params,
            access_ttl: Duration::from_secs(60),
            ..ProviderConfig::default()
        })
        .await;
        let env = TestEnv::with(|dir| yaml(dir, &provider.url));
        let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
            .unwrap()
            .trim()
            .to_owned();
        Self {
            env,
            provider,
            credential,
        }
    }

    async fn internal(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let body = body.to_string();
        let authorization =
            self.env
                .internal_authorization(&self.credential, path, body.as_bytes());
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, authorization)
            .body(Body::from(body))
            .unwrap();
        let resp = warden_token_service::internal::router(self.env.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn sign_in_uri(route: &str, return_to: &str) -> String {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("route", route)
            .append_pair("return_to", return_to)
            .append_pair("nonce", NONCE)
            .finish();
        format!("/app/sign-in?{q}")
    }

    /// Browser sign-in on an app route with the password form; returns the last answer and
    /// the browser's cookies (flow and session).
    async fn browser_sign_in(&self, route: &str, return_to: &str, email: &str) -> (Resp, String) {
        let form = self.env.get(&Self::sign_in_uri(route, return_to)).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let flow = form.cookie("warden_flow").unwrap();
        let r = self.env.login(&form, email, PASSWORD).await;
        let session = r.cookie("warden_session").expect("session cookie");
        (r, format!("{flow}; {session}"))
    }

    /// Signs in on `chat` and trades the code for an app session; returns the session secret.
    async fn app_session(&self, email: &str) -> String {
        let (r, _) = self
            .browser_sign_in("chat", &format!("{CHAT}/"), email)
            .await;
        let (_, q) = callback(&r, CHAT);
        let (status, body) = self
            .internal(
                "/internal/v1/app-session",
                json!({"route": "chat", "code": q["code"], "nonce": NONCE}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["session"].as_str().unwrap().to_owned()
    }

    async fn app_token(&self, session: &str) -> (StatusCode, Value) {
        self.internal(
            "/internal/v1/app-token",
            json!({"route": "chat", "session": session}),
        )
        .await
    }

    async fn te(&self, email: &str) -> String {
        let session = self.app_session(email).await;
        let (status, body) = self.app_token(&session).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn with_bearer(
        &self,
        method: &str,
        path: &str,
        te: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = te {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.env.send(req.unwrap()).await
    }

    async fn servers(&self, te: &str) -> Vec<Value> {
        let r = self
            .with_bearer("GET", "/.warden/mcp/routes", Some(te), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json()["servers"].as_array().unwrap().clone()
    }
}

/// The redirect to the filter's callback on `origin`: (path, query).
fn callback(r: &Resp, origin: &str) -> (String, std::collections::HashMap<String, String>) {
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, format!("{origin}/.warden/app/callback"));
    (base, q)
}

fn claims(te: &str) -> Value {
    let payload = te.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(te: &str) -> Value {
    let h = te.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

fn config_error(routes: &str) -> String {
    let yaml = format!(
        r#"
authorization_server: {{issuer: "{ISSUER}"}}
routes:
  - name: demo
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:9200/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
{routes}
"#
    );
    Config::from_yaml(&yaml).unwrap_err().to_string()
}

#[test]
fn config_accepts_client_routes_and_names_the_field_on_errors() {
    let ok = Config::from_yaml(&format!(
        r#"
authorization_server: {{issuer: "{ISSUER}"}}
routes:
  - name: chat
    description: The chat app
    from: {CHAT}
    to: http://127.0.0.1:3000
    mcp: {{client: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#
    ))
    .unwrap();
    assert_eq!(ok.client_routes().count(), 1);
    assert_eq!(ok.server_routes().count(), 0);
    assert!(ok.routes[0].is_client());
    assert_eq!(ok.routes[0].description.as_deref(), Some("The chat app"));
    // The filter calls app-session / app-token: the internal listener is needed.
    assert!(ok.uses_internal_listener());
    assert!(ok.route_by_resource(CHAT).is_none());

    let route = |mcp: &str, extra: &str| {
        format!(
            "  - name: chat\n    from: {CHAT}\n    to: http://127.0.0.1:3000\n    mcp: {mcp}\n{extra}"
        )
    };
    let policy = "    policy: {allow: {and: [{authenticated_user: true}]}}\n";
    let both = config_error(&route("{server: {}, client: {}}", policy));
    assert!(both.starts_with("routes[1].mcp: "), "{both}");
    let neither = config_error(&route("{}", policy));
    assert!(neither.starts_with("routes[1].mcp: "), "{neither}");
    let unknown = config_error(&route("{client: {upstream_oauth2: {}}}", policy));
    assert!(unknown.starts_with("routes[1].mcp.client"), "{unknown}");
    let scopes = config_error(&route(
        "{client: {}}",
        &format!("{policy}    scopes: [x]\n"),
    ));
    assert!(scopes.starts_with("routes[1].scopes: "), "{scopes}");
    let no_policy = config_error(&route("{client: {}}", ""));
    assert!(no_policy.starts_with("routes[1].policy: "), "{no_policy}");
    let bad_description = config_error(&route(
        "{client: {}}",
        &format!("{policy}    description: \"a\\u0007b\"\n"),
    ));
    assert!(
        bad_description.starts_with("routes[1].description: "),
        "{bad_description}"
    );
}

#[tokio::test]
async fn browser_sign_in_without_a_session_ends_at_the_filters_callback() {
    let app = App::start().await;
    let (r, _) = app
        .browser_sign_in("chat", &format!("{CHAT}/inbox?x=1"), EMAIL)
        .await;
    let (_, q) = callback(&r, CHAT);
    assert_eq!(q["state"], "chat");
    let code = q["code"].clone();
    let (status, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["session"].as_str().unwrap().len(), 43);
    assert_eq!(body["max_age"], 12 * 3600);
    assert_eq!(body["return_to"], format!("{CHAT}/inbox?x=1"));
    // Single use.
    let (status, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_code");
}

#[tokio::test]
async fn an_app_code_is_bound_to_its_route_and_expires() {
    let app = App::start().await;
    let (r, _) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let code = callback(&r, CHAT).1["code"].clone();
    let (status, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "secret", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_code"))
    );
    // Presented to the wrong route, it is used up too.
    let (status, _) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (r, _) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let code = callback(&r, CHAT).1["code"].clone();
    app.env.advance(61);
    let (status, _) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Login CSRF: a code presented with another browser's nonce (or none) opens nothing,
    // and is used up.
    let (r, _) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let code = callback(&r, CHAT).1["code"].clone();
    for other in [
        "",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let (status, _) = app
            .internal(
                "/internal/v1/app-session",
                json!({"route": "chat", "code": code, "nonce": other}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "nonce {other:?}");
    }
    let (status, _) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "used up by the wrong nonce"
    );
    // A sign-in link without a nonce is refused before any sign-in.
    let r = app
        .env
        .get(&format!(
            "/app/sign-in?route=chat&return_to={}",
            url::form_urlencoded::byte_serialize(format!("{CHAT}/").as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // Malformed requests are named as such.
    let (status, body) = app
        .internal("/internal/v1/app-session", json!({"route": "chat"}))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
}

#[tokio::test]
async fn browser_sign_in_with_a_session_skips_the_form() {
    let app = App::start().await;
    let (_, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let r = app
        .env
        .get_with_cookie(
            &App::sign_in_uri("secret", &format!("{SECRET_APP}/app/x")),
            &cookies,
        )
        .await;
    let (_, q) = callback(&r, SECRET_APP);
    assert_eq!(q["state"], "secret");
    let (status, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "secret", "code": q["code"], "nonce": NONCE}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return_to"], format!("{SECRET_APP}/app/x"));
}

#[tokio::test]
async fn return_to_must_lie_under_the_route() {
    let app = App::start().await;
    for (route, return_to) in [
        ("chat", "https://chat.example.com/"),
        ("chat", "http://chat.example.com.evil.test/"),
        ("chat", "http://evil.test/"),
        ("chat", "/relative"),
        ("chat", "http://user:pw@chat.example.com/"),
        ("secret", "http://secret.example.com/apple"),
        ("secret", "http://secret.example.com/"),
        ("nope", "http://chat.example.com/"),
        ("demo", "http://127.0.0.1:9000/mcp"),
    ] {
        let r = app.env.get(&App::sign_in_uri(route, return_to)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route} {return_to}");
        assert!(r.headers.get(header::LOCATION).is_none());
    }
    for ok in [
        "http://secret.example.com/app",
        "http://secret.example.com/app/a/b?c",
    ] {
        let r = app.env.get(&App::sign_in_uri("secret", ok)).await;
        assert_eq!(r.status, StatusCode::OK, "{ok}: {}", r.body);
    }
}

#[tokio::test]
async fn a_user_the_apps_policy_denies_gets_a_403_page() {
    let app = App::start().await;
    let (r, _) = app
        .browser_sign_in("secret", &format!("{SECRET_APP}/app/"), BOB)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("not allowed to use secret"), "{}", r.body);
    assert!(r.headers.get(header::LOCATION).is_none());
    // Bob may use the other app.
    let (r, _) = app.browser_sign_in("chat", &format!("{CHAT}/"), BOB).await;
    callback(&r, CHAT);
}

#[tokio::test]
async fn app_tokens_name_every_usable_server_and_are_renewed() {
    let app = App::start().await;
    let session = app.app_session(EMAIL).await;
    let (status, body) = app.app_token(&session).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let te = body["access_token"].as_str().unwrap();
    assert_eq!(header_of(te)["typ"], "at+jwt");
    let c = claims(te);
    assert_eq!(c["aud"], json!([DEMO, GH]));
    assert_eq!(c["client_id"], "warden-app:chat");
    assert_eq!(c["sub"], EMAIL);
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(body["expires_at"], c["exp"]);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    // The TE verifies like any of ours (the listing accepts it).
    assert_eq!(app.servers(te).await.len(), 2);

    // Bob's TE names only the server his policy allows.
    let bob = app.te(BOB).await;
    assert_eq!(claims(&bob)["aud"], json!([DEMO]));

    // Past the TE's lifetime: the old one is refused, a new one comes for the same session.
    app.env.advance(301 + 30);
    let r = app
        .with_bearer("GET", "/.warden/mcp/routes", Some(te), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.app_token(&session).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = body["access_token"].as_str().unwrap();
    assert!(claims(renewed)["exp"].as_i64().unwrap() > c["exp"].as_i64().unwrap());
    assert_eq!(claims(renewed)["sid"], c["sid"]);

    // The app session ends with the issuer session (12 h).
    app.env.advance(12 * 3600);
    let (status, body) = app.app_token(&session).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("session_expired"))
    );
    // Another route's name does not open the session either.
    let session = app.app_session(EMAIL).await;
    let (status, _) = app
        .internal(
            "/internal/v1/app-token",
            json!({"route": "secret", "session": session}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_out_ends_the_app_session() {
    let app = App::start().await;
    let session = app.app_session(EMAIL).await;
    let end = json!({"route": "chat", "session": session});
    let (status, body) = app
        .internal("/internal/v1/app-session/end", end.clone())
        .await;
    assert_eq!((status, &body["ended"]), (StatusCode::OK, &json!(true)));
    assert!(body["ticket"].is_string(), "{body}");
    let (status, body) = app.app_token(&session).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("session_expired"))
    );
    let (_, body) = app.internal("/internal/v1/app-session/end", end).await;
    assert_eq!(body, json!({"ended": false, "ticket": null}));
}

#[tokio::test]
async fn the_listing_is_filtered_per_user_and_follows_connect_and_disconnect() {
    let app = App::start().await;
    let alice = app.te(EMAIL).await;
    let servers = app.servers(&alice).await;
    assert_eq!(
        servers,
        vec![
            json!({"name": "demo", "description": "The demo server", "url": DEMO, "connected": true, "connect_url": null}),
            json!({"name": "gh", "description": "", "url": GH, "connected": false, "connect_url": format!("{ISSUER}/mcp/connect?route=gh"),
                "token_expires_at": null, "refresh_token_available": false, "authorization_server": app.provider.url.trim_end_matches('/')}),
        ]
    );
    let bob = app.te(BOB).await;
    let names: Vec<_> = app
        .servers(&bob)
        .await
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("demo")]);
    // The reference's path answers the same.
    let r = app
        .with_bearer("GET", "/.pomerium/mcp/routes", Some(&alice), None)
        .await;
    assert_eq!(r.json()["servers"].as_array().unwrap().len(), 2);

    // Connect: the browser (signed in at the issuer) goes to the provider and back to the app.
    let (_, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let done = format!("{CHAT}/settings?connected=gh");
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("route", "gh")
        .append_pair("redirect_url", &done)
        .finish();
    // Any host's `/.warden/mcp/connect` leads to the issuer's.
    let r = app.env.get(&format!("/.warden/mcp/connect?{q}")).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), format!("{ISSUER}/mcp/connect?{q}"));
    let r = app
        .env
        .get_with_cookie(&format!("/mcp/connect?{q}"), &cookies)
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let to_provider = r.header("location");
    assert!(to_provider.starts_with(&app.provider.url), "{to_provider}");
    let back = app.provider.answer(&to_provider, "approve").await;
    assert_eq!(back.path(), "/upstream/callback");
    let flow = r.cookie("warden_flow").unwrap_or_else(|| cookies.clone());
    let r = app
        .env
        .get_with_cookie(
            &format!("/upstream/callback?{}", back.query().unwrap()),
            &flow,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), done);
    let gh = &app.servers(&alice).await[1];
    assert_eq!(gh["connected"], true);
    // Connected already: straight back to the app.
    let r = app
        .env
        .get_with_cookie(&format!("/mcp/connect?{q}"), &cookies)
        .await;
    assert_eq!(r.header("location"), done);

    // Disconnect: the TI is gone and revoked at the provider (form parameters, as it wants).
    let revocations = app.provider.stats().await["revocations"].as_u64().unwrap();
    let r = app
        .with_bearer(
            "POST",
            "/.warden/mcp/disconnect",
            Some(&alice),
            Some(json!({"url": GH})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"disconnected": true}));
    assert_eq!(
        app.provider.stats().await["revocations"].as_u64().unwrap(),
        revocations + 1
    );
    assert_eq!(app.servers(&alice).await[1]["connected"], false);
    let (status, _) = app
        .internal(
            "/internal/v1/upstream-token",
            json!({"sub": EMAIL, "route": "gh"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Again (form body): nothing left to disconnect.
    let r = app
        .env
        .send(
            Request::post("/.pomerium/mcp/disconnect")
                .header(header::AUTHORIZATION, format!("Bearer {alice}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("url={}", urlencode(GH))))
                .unwrap(),
        )
        .await;
    assert_eq!(r.json(), json!({"disconnected": false}));
    // An unknown server url.
    let r = app
        .with_bearer(
            "POST",
            "/.warden/mcp/disconnect",
            Some(&alice),
            Some(json!({"url": "http://127.0.0.1:9000/nope"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn connect_without_a_session_signs_in_first() {
    let app = App::start().await;
    let done = format!("{CHAT}/done");
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("route", "gh")
        .append_pair("redirect_url", &done)
        .finish();
    let form = app.env.get(&format!("/mcp/connect?{q}")).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let r = app.env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r.header("location").starts_with(&app.provider.url));
    // A user the server's policy denies is not sent to the provider.
    let form = app.env.get(&format!("/mcp/connect?{q}")).await;
    let r = app.env.login(&form, BOB, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

#[tokio::test]
async fn connect_never_redirects_off_the_apps() {
    let app = App::start().await;
    let (_, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    for bad in [
        "https://evil.test/",
        "http://chat.example.com.evil.test/",
        "https://chat.example.com/",
        "//evil.test/",
        "javascript:alert(1)",
        "http://127.0.0.1:9000/mcp",
        "",
    ] {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("route", "gh")
            .append_pair("redirect_url", bad)
            .finish();
        let r = app
            .env
            .get_with_cookie(&format!("/mcp/connect?{q}"), &cookies)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.headers.get(header::LOCATION).is_none(), "{bad}");
    }
    // An unknown server, even with a good redirect_url.
    let r = app
        .env
        .get_with_cookie(
            &format!("/mcp/connect?route=nope&redirect_url={}", urlencode(CHAT)),
            &cookies,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_listing_and_disconnect_want_a_te() {
    let app = App::start().await;
    for te in [None, Some("garbage"), Some("a.b.c")] {
        let r = app
            .with_bearer("GET", "/.warden/mcp/routes", te, None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{te:?}");
        assert!(r.header("www-authenticate").starts_with("Bearer"));
        let r = app
            .with_bearer(
                "POST",
                "/.warden/mcp/disconnect",
                te,
                Some(json!({"url": GH})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{te:?}");
    }
    // A TE from another issuer's key (a fresh key of the same shape) is refused.
    let other = warden_token_service::SigningKey::generate(Default::default()).unwrap();
    let forged = other
        .sign_jwt(
            "at+jwt",
            &json!({"iss": ISSUER, "sub": EMAIL, "aud": [DEMO], "exp": 4_000_000_000i64}),
        )
        .unwrap();
    let r = app
        .with_bearer("GET", "/.warden/mcp/routes", Some(&forged), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // An MCP client's TE (one audience) works for the listing.
    let redirect = "http://127.0.0.1/callback";
    let (q, _) = app
        .env
        .sign_in("public-app", redirect, &[("resource", DEMO)])
        .await;
    let r = app
        .env
        .exchange_public("public-app", &q["code"], redirect)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let te = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.servers(&te).await.len(), 2);
}

#[tokio::test]
async fn signing_out_ends_the_issuer_session_and_its_app_sessions() {
    let app = App::start().await;
    let (r, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let code = callback(&r, CHAT).1["code"].clone();
    let (_, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    // The filter ended the app session on the app's sign-out POST; the answer carries the
    // ticket it sends the browser to the issuer with.
    let (status, ended) = app
        .internal(
            "/internal/v1/app-session/end",
            json!({"route": "chat", "session": session}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["ended"], true);
    let ticket = ended["ticket"].as_str().unwrap().to_owned();
    let r = app
        .env
        .get_with_cookie(&format!("/app/signed-out?ticket={ticket}"), &cookies)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("signed out"), "{}", r.body);
    let cleared = r.set_cookie("warden_session").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // Every app session of that sign-in is over, and the next visit signs in again.
    let (status, body) = app.app_token(&session).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("session_expired"))
    );
    let r = app
        .env
        .get_with_cookie(&App::sign_in_uri("chat", &format!("{CHAT}/")), &cookies)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the sign-in form, not a silent sign-in"
    );
    assert!(r.body.contains("name=\"password\""), "{}", r.body);
    // An app session ended twice gives no second ticket; without a session it is just the
    // page.
    let (_, again) = app
        .internal(
            "/internal/v1/app-session/end",
            json!({"route": "chat", "session": session}),
        )
        .await;
    assert_eq!(again, json!({"ended": false, "ticket": null}));
    assert_eq!(app.env.get("/app/signed-out").await.status, StatusCode::OK);
}

#[tokio::test]
async fn another_site_cannot_sign_a_user_out_of_the_issuer() {
    let app = App::start().await;
    let (r, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let code = callback(&r, CHAT).1["code"].clone();
    let (_, body) = app
        .internal(
            "/internal/v1/app-session",
            json!({"route": "chat", "code": code, "nonce": NONCE}),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let still_signed_in = |r: &Resp| {
        assert!(r.set_cookie("warden_session").is_none(), "{:?}", r.headers);
    };
    // A cross-site GET (a link, an image, a top-level navigation with the Lax cookie): a
    // page that asks, nothing ended. A forged or expired ticket changes nothing.
    for uri in [
        "/app/signed-out".to_owned(),
        "/app/signed-out?ticket=9999999999.c2lk.AAAA".to_owned(),
        "/app/signed-out?ticket=garbage".to_owned(),
    ] {
        let r = app.env.get_with_cookie(&uri, &cookies).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("Sign out?"), "{}", r.body);
        still_signed_in(&r);
    }
    // A cross-site POST: without the page's CSRF token (another site cannot read it), or
    // from a foreign Origin, refused.
    let page = app.env.get_with_cookie("/app/signed-out", &cookies).await;
    let csrf = page.hidden("csrf");
    for (form, origin) in [
        (vec![], None),
        (vec![("csrf", "forged")], None),
        (vec![("csrf", csrf.as_str())], Some("https://evil.example")),
    ] {
        let mut req = axum::http::Request::post("/app/signed-out")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookies);
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let r = app.env.send(req.body(Body::from(body)).unwrap()).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{form:?} {origin:?}: {}",
            r.body
        );
        still_signed_in(&r);
    }
    let (status, _) = app.app_token(&session).await;
    assert_eq!(status, StatusCode::OK, "nobody was signed out");
    // The page's own button signs out.
    let r = app
        .env
        .post_form_with_cookie(
            "/app/signed-out",
            &[("csrf", csrf.as_str())],
            None,
            Some(&cookies),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r
        .set_cookie("warden_session")
        .unwrap()
        .contains("Max-Age=0"));
    let (status, _) = app.app_token(&session).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_app_codes_and_sessions_are_swept() {
    use warden_token_service::store::{AppCode, AppSession};
    let app = App::start().await;
    let store = app.env.state.store();
    let now = app.env.state.now();
    store
        .insert_app_code(
            "code-hash",
            &AppCode {
                route: "chat".into(),
                user: EMAIL.into(),
                sid: "sid".into(),
                return_to: format!("{CHAT}/"),
                nonce: NONCE.into(),
                session_expires_at: now + 3600,
                expires_at: now + 60,
            },
        )
        .unwrap();
    store
        .insert_app_session(
            "session-hash",
            &AppSession {
                route: "chat".into(),
                user: EMAIL.into(),
                sid: "sid".into(),
                created_at: now,
                expires_at: now + 3600,
            },
        )
        .unwrap();
    app.env.advance(3600);
    app.env.state.sweep().unwrap();
    // Asked as of before they expired, they are gone all the same: the rows were deleted.
    assert!(store.take_app_code("code-hash", now).unwrap().is_none());
    assert!(store.app_session("session-hash", now).unwrap().is_none());
}

#[tokio::test]
async fn the_references_connect_on_the_servers_host_finds_the_route() {
    let app = App::start().await;
    let get = |host: &'static str, q: String| {
        let app = &app;
        async move {
            app.env
                .send(
                    Request::get(format!("/.pomerium/mcp/connect?{q}"))
                        .header(header::HOST, host)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
        }
    };
    let redirect = format!("redirect_url={}", urlencode(&format!("{CHAT}/cb")));
    // Pomerium's form names no route: on a host with one server route, it is that one. Here
    // the host has two (demo and gh), so the issuer's connect gets the query as it is.
    let r = get("127.0.0.1:9000", redirect.clone()).await;
    assert_eq!(
        r.header("location"),
        format!("{ISSUER}/mcp/connect?{redirect}")
    );
    let r = app.env.get(&r.header("location").replace(ISSUER, "")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The reference's form on a host with one server route: that route.
    for host in ["solo.example.com", "SOLO.example.com:80"] {
        let r = get(host, redirect.clone()).await;
        assert_eq!(
            r.header("location"),
            format!("{ISSUER}/mcp/connect?route=solo&{redirect}"),
            "{host}"
        );
    }
    // A named route is kept.
    let r = get("127.0.0.1:9000", format!("route=gh&{redirect}")).await;
    assert_eq!(
        r.header("location"),
        format!("{ISSUER}/mcp/connect?route=gh&{redirect}")
    );
}

#[tokio::test]
async fn app_sign_in_through_the_identity_provider() {
    let provider = Provider::serve(ProviderConfig {
        client_id: "warden-sso".into(),
        client_secret: "warden-sso-secret".into(),
        redirect_uris: vec![format!("{ISSUER}/login/callback")],
        ..ProviderConfig::default()
    })
    .await;
    let env = TestEnv::with(|dir| {
        format!(
            r#"
authorization_server: {{issuer: "{ISSUER}", listen: "127.0.0.1:0"}}
storage: {{sqlite: {db}}}
identity_provider:
  oidc: {{issuer: "{p}", client_id: warden-sso, client_secret: warden-sso-secret}}
routes:
  - name: chat
    from: {CHAT}
    to: http://127.0.0.1:3000
    mcp: {{client: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
"#,
            db = dir.join("warden.db").display(),
            p = provider.url
        )
    });
    // ID tokens are checked against the provider's clock, the real one.
    env.clock.store(
        warden_token_service::clock::now_unix(),
        std::sync::atomic::Ordering::SeqCst,
    );
    // Only the identity provider: straight to it.
    let r = env
        .get(&App::sign_in_uri("chat", &format!("{CHAT}/a")))
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let flow = r.cookie("warden_flow").unwrap();
    let start = r.header("location");
    let r = env
        .get_with_cookie(start.strip_prefix(ISSUER).unwrap(), &flow)
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let back = provider.answer(&r.header("location"), "approve").await;
    let r = env
        .get_with_cookie(&format!("{}?{}", back.path(), back.query().unwrap()), &flow)
        .await;
    let (_, q) = callback(&r, CHAT);
    assert!(r.cookie("warden_session").is_some());
    let credential = std::fs::read_to_string(env.state.config().internal_credential_file())
        .unwrap()
        .trim()
        .to_owned();
    let call = |path: &'static str, body: Value| {
        let body = body.to_string();
        let authorization = env.internal_authorization(&credential, path, body.as_bytes());
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, authorization)
            .body(Body::from(body))
            .unwrap();
        let router = warden_token_service::internal::router(env.state.clone());
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let opened = call(
        "/internal/v1/app-session",
        json!({"route": "chat", "code": q["code"], "nonce": NONCE}),
    )
    .await;
    assert_eq!(opened["return_to"], format!("{CHAT}/a"));
    let minted = call(
        "/internal/v1/app-token",
        json!({"route": "chat", "session": opened["session"]}),
    )
    .await;
    let c = claims(minted["access_token"].as_str().unwrap());
    assert!(
        c["sub"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}#", provider.url)),
        "{c}"
    );
    // No server routes at all: an empty audience.
    assert_eq!(c["aud"], json!([]));
}

#[tokio::test]
async fn a_wrong_password_on_an_app_sign_in_shows_the_form_again() {
    let app = App::start().await;
    let form = app
        .env
        .get(&App::sign_in_uri("chat", &format!("{CHAT}/")))
        .await;
    let r = app.env.login(&form, EMAIL, "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("chat"), "{}", r.body);
    assert!(!r.body.contains("warden-app:"), "{}", r.body);
    // The same flow still signs in.
    let r = app.env.login(&form, EMAIL, PASSWORD).await;
    callback(&r, CHAT);
}

#[tokio::test]
async fn a_refused_connect_returns_to_the_app_with_the_error() {
    let app = App::start().await;
    let (_, cookies) = app
        .browser_sign_in("chat", &format!("{CHAT}/"), EMAIL)
        .await;
    let done = format!("{CHAT}/settings?tab=servers");
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("route", "gh")
        .append_pair("redirect_url", &done)
        .finish();
    let r = app
        .env
        .get_with_cookie(&format!("/mcp/connect?{q}"), &cookies)
        .await;
    let back = app.provider.answer(&r.header("location"), "deny").await;
    let r = app
        .env
        .get_with_cookie(
            &format!("/upstream/callback?{}", back.query().unwrap()),
            &cookies,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let (base, q) = r.location();
    assert_eq!(base, format!("{CHAT}/settings"));
    assert_eq!(q["tab"], "servers");
    assert_eq!(q["error"], "access_denied");
    assert!(!q.contains_key("code"));
    let alice = app.te(EMAIL).await;
    assert_eq!(app.servers(&alice).await[1]["connected"], false);
    // The callback is single use, and only in the browser that started it.
    let r = app
        .env
        .get(&format!("/upstream/callback?{}", back.query().unwrap()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_expired_ti_the_provider_will_not_refresh_lists_as_not_connected() {
    let app = App::start().await;
    app.connect_gh(EMAIL).await;
    let alice = app.te(EMAIL).await;
    assert_eq!(app.servers(&alice).await[1]["connected"], true);
    // Past the TI's lifetime it is still "connected": the gateway holds a refresh token.
    app.env.advance(120);
    let alice = app.te(EMAIL).await;
    assert_eq!(app.servers(&alice).await[1]["connected"], true);
    // The user revoked the app at the provider: the next refresh is refused, the TI dropped.
    app.provider.hook("/_test/revoke-user?user=alice").await;
    let (status, _) = app
        .internal(
            "/internal/v1/upstream-token",
            json!({"sub": EMAIL, "route": "gh"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.servers(&alice).await[1]["connected"], false);
}

impl App {
    /// Connects `user`'s `gh` account through the provider (signed in on `chat`).
    async fn connect_gh(&self, user: &str) {
        let (_, cookies) = self
            .browser_sign_in("chat", &format!("{CHAT}/"), user)
            .await;
        let q = format!("route=gh&redirect_url={}", urlencode(&format!("{CHAT}/")));
        let r = self
            .env
            .get_with_cookie(&format!("/mcp/connect?{q}"), &cookies)
            .await;
        let back = self.provider.answer(&r.header("location"), "approve").await;
        let r = self
            .env
            .get_with_cookie(
                &format!("/upstream/callback?{}", back.query().unwrap()),
                &cookies,
            )
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    }

    async fn refresh_gh(&self, te: &str) -> Resp {
        self.with_bearer(
            "POST",
            "/.warden/mcp/refresh",
            Some(te),
            Some(json!({"url": GH})),
        )
        .await
    }

    async fn refreshes(&self) -> u64 {
        self.provider.stats().await["refresh_token"]
            .as_u64()
            .unwrap()
    }

    async fn ti(&self) -> Value {
        let (status, body) = self
            .internal(
                "/internal/v1/upstream-token",
                json!({"sub": EMAIL, "route": "gh"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// Issue 21, item 6: the listing shows the upstream token's expiry, whether a refresh token
/// is held, and the provider; `POST /.warden/mcp/refresh` refreshes it now, once however many
/// ask at once, and says why when it cannot.
#[tokio::test]
async fn the_listing_shows_the_upstream_token_and_refresh_forces_one() {
    let app = App::start().await;
    app.connect_gh(EMAIL).await;
    let alice = app.te(EMAIL).await;
    let connected_at = app.env.state.now();
    let servers = app.servers(&alice).await;
    // A server without upstream OAuth has no token state.
    assert!(
        servers[0].get("token_expires_at").is_none(),
        "{}",
        servers[0]
    );
    assert!(servers[0].get("refresh_token_available").is_none());
    let gh = &servers[1];
    assert_eq!(gh["connected"], true);
    assert_eq!(gh["token_expires_at"], json!(connected_at + 60), "{gh}");
    assert_eq!(gh["refresh_token_available"], true);
    assert_eq!(
        gh["authorization_server"],
        json!(app.provider.url.trim_end_matches('/'))
    );
    let before = app.ti().await["access_token"].clone();

    // Not due (50 s left): forced all the same, and the new token is what the filter gets.
    app.env.advance(10);
    let refreshes = app.refreshes().await;
    let r = app.refresh_gh(&alice).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let now = app.env.state.now();
    assert_eq!(
        r.json(),
        json!({"name": "gh", "url": GH, "connected": true, "refreshed": true,
            "token_expires_at": now + 60, "refresh_token_available": true,
            "authorization_server": app.provider.url.trim_end_matches('/')})
    );
    assert_eq!(app.refreshes().await, refreshes + 1);
    let after = app.ti().await;
    assert_ne!(after["access_token"], before);
    assert_eq!(after["expires_at"], json!(now + 60));
    assert_eq!(
        app.servers(&alice).await[1]["token_expires_at"],
        json!(now + 60)
    );

    // Again at once: the token is under 10 s old, so no provider call, `refreshed: false`.
    let r = app.refresh_gh(&alice).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["refreshed"], false);
    assert_eq!(r.json()["token_expires_at"], json!(now + 60));
    assert_eq!(app.refreshes().await, refreshes + 1);

    // Several at once, the provider slow: one refresh of the grant, every caller answered.
    app.env.advance(10);
    app.provider.hook("/_test/delay-token?ms=400").await;
    let (a, b, c) = tokio::join!(
        app.refresh_gh(&alice),
        app.refresh_gh(&alice),
        app.refresh_gh(&alice)
    );
    for r in [&a, &b, &c] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["refreshed"], true);
    }
    assert_eq!(app.refreshes().await, refreshes + 2);
    app.provider.hook("/_test/delay-token?ms=0").await;

    // The provider down: 503 with the reason, the token kept.
    app.env.advance(10);
    app.provider.hook("/_test/fail-token?status=503").await;
    let r = app.refresh_gh(&alice).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("kept"));
    assert_eq!(app.servers(&alice).await[1]["connected"], true);

    // Servers that cannot be refreshed, and callers without a TE.
    let r = app
        .with_bearer(
            "POST",
            "/.pomerium/mcp/refresh",
            Some(&alice),
            Some(json!({"url": DEMO})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.json()["error"], "no_upstream_oauth");
    let r = app
        .with_bearer(
            "POST",
            "/.warden/mcp/refresh",
            Some(&alice),
            Some(json!({"url": "http://127.0.0.1:9000/nope"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .with_bearer(
            "POST",
            "/.warden/mcp/refresh",
            None,
            Some(json!({"url": GH})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Bob never connected.
    let bob = app.te(BOB).await;
    let r = app.refresh_gh(&bob).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.json()["error"], "not_connected");

    // The user revoked the app at the provider: the refresh is refused, the token dropped.
    app.provider.hook("/_test/revoke-user?user=alice").await;
    let r = app.refresh_gh(&alice).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.json()["error"], "refresh_refused");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("dropped"));
    let gh = &app.servers(&alice).await[1];
    assert_eq!(
        (
            &gh["connected"],
            &gh["token_expires_at"],
            &gh["refresh_token_available"]
        ),
        (&json!(false), &Value::Null, &json!(false))
    );
    let r = app.refresh_gh(&alice).await;
    assert_eq!(r.json()["error"], "not_connected");
}

/// Forced refreshes of one grant at two replicas at once (the provider slow): one provider
/// call; the replica that lost the lease waits for it and answers its result.
#[tokio::test]
async fn forced_refreshes_at_two_replicas_make_one_provider_call() {
    let app = App::start().await;
    app.connect_gh(EMAIL).await;
    let alice = app.te(EMAIL).await;
    let other = app.env.replica();
    app.env.advance(10);
    let refreshes = app.refreshes().await;
    app.provider.hook("/_test/delay-token?ms=600").await;
    let at_other = async {
        let req = Request::post("/.warden/mcp/refresh")
            .header(header::AUTHORIZATION, format!("Bearer {alice}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"url": GH}).to_string()))
            .unwrap();
        other.send(req).await
    };
    let (here, there) = tokio::join!(app.refresh_gh(&alice), at_other);
    for r in [&here, &there] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["refreshed"], true);
    }
    assert_eq!(
        here.json()["token_expires_at"],
        there.json()["token_expires_at"]
    );
    assert_eq!(app.refreshes().await, refreshes + 1);
}

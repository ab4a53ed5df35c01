//! `mcp: client` routes end to end (issue 10), the flows around the app's TE, with real Envoy
//! and the real token service: the TE on an allowed and a denied server route, the per-user
//! server listing, connecting and disconnecting an upstream account (demo OAuth provider),
//! the connect redirect's open-redirect refusal, the user the app's policy denies, and TE
//! renewal past the TE lifetime.
//!
//! The app behind the client route is the stack's demo server (it records every request), so
//! the TE the app received is read from its recording.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use warden_e2e::*;

/// The client route's prefix (rewritten to the demo server's root: `/app/mcp` → `/mcp`).
const APP: &str = "/app";
/// A server route the policy admits for nobody who signs in here.
const ADMINS: &str = "/admins";
/// A server route with upstream OAuth at the demo provider.
const GH: &str = "/gh";

/// The provider's user approving.
const ALICE: UpstreamLogin<'static> = UpstreamLogin {
    user: PROVIDER_USER,
    password: PROVIDER_PASSWORD,
    approve: true,
};

/// The stack: route `demo` (`/mcp`, every signed-in user), the `extra` server routes
/// (`from` and `to` filled in when absent: the gateway's origin and the demo MCP server), and
/// the client route `chat` on `/app` with `app_policy`.
async fn app_stack(app_policy: Value, extra: Vec<Value>, ttl: u64) -> Stack {
    app_stack_with(app_policy, extra, ttl, false).await
}

/// [`app_stack`], the client route passing identity headers when `pass_identity` is set.
async fn app_stack_with(
    app_policy: Value,
    extra: Vec<Value>,
    ttl: u64,
    pass_identity: bool,
) -> Stack {
    Stack::start_with(StackOptions {
        access_token_ttl_seconds: ttl,
        config_hook: Some(Box::new(move |c: &mut Value| {
            // Parallel stacks must not share the internal listener's default port.
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", free_port()));
            let from = c["routes"][0]["from"].clone();
            let mcp_upstream = c["routes"][0]["to"].clone();
            let demo_origin = mcp_upstream
                .as_str()
                .unwrap()
                .trim_end_matches("/mcp")
                .to_string();
            let routes = c["routes"].as_array_mut().unwrap();
            for mut r in extra {
                if r.get("from").is_none() {
                    r["from"] = from.clone();
                }
                if r.get("to").is_none() {
                    r["to"] = mcp_upstream.clone();
                }
                routes.push(r);
            }
            routes.push(json!({
                "name": "chat",
                "from": from,
                "prefix": APP,
                "to": demo_origin,
                "mcp": {"client": {}},
                "policy": app_policy,
                "pass_identity_headers": pass_identity,
            }));
        })),
        ..StackOptions::default()
    })
    .await
}

fn everyone() -> Value {
    json!({"allow": {"and": [{"authenticated_user": true}]}})
}

fn only(email: &str) -> Value {
    json!({"allow": {"and": [{"email": {"is": email}}]}})
}

/// A browser without a cookie jar (cookies are passed by hand) that does not follow
/// redirects.
fn browser() -> reqwest::Client {
    warden_e2e::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `name=value` of a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

fn logs(stack: &Stack) -> String {
    format!("{}\n{}", stack.envoy_log(), stack.token_service.log())
}

/// Opens the app without a session: the filter's `302` to the token service's app sign-in,
/// and the sign-in nonce cookie it binds the sign-in to.
async fn open_app(stack: &Stack) -> (String, String) {
    let resp = browser()
        .get(format!("{}{APP}/", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{}", logs(stack));
    let sign_in = header(&resp, "location").unwrap();
    assert!(
        sign_in.starts_with(&format!("{}/app/sign-in?route=chat&", stack.issuer())),
        "{sign_in}"
    );
    let nonce = cookie_pair(&header(&resp, "set-cookie").unwrap());
    assert!(nonce.contains("_n="), "{nonce}");
    (sign_in, nonce)
}

/// The browser sign-in on the app route as the demo user (as in `e2e_app.rs`): the app
/// session cookie (`name=value`).
async fn app_sign_in(stack: &Stack) -> String {
    let envoy = stack.envoy_url();
    let (sign_in, nonce) = open_app(stack).await;
    let callback = browser_authorize_to(
        &sign_in,
        &format!("{envoy}/.warden/app/callback"),
        (DEMO_EMAIL, DEMO_PASSWORD),
        None,
    )
    .await;
    let resp = browser()
        .get(&callback)
        .header("cookie", &nonce)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{}", logs(stack));
    assert_eq!(header(&resp, "location").unwrap(), format!("{envoy}{APP}/"));
    let session = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("warden_app_") && !c.contains("_n="))
        .unwrap_or_else(|| panic!("no app session cookie: {:?}", resp.headers()));
    cookie_pair(&session)
}

/// One request of the app's page (an MCP `tools/list` the app's backend answers: the demo
/// server's `/mcp`) with the session cookie: asserts `200` and returns the TE the app
/// received.
async fn app_request_te(stack: &Stack, session: &str) -> String {
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &stack.route_url(&format!("{APP}/mcp")),
        &[("cookie", session)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "the app answers: {} {:?}\n{}",
        resp.body,
        resp.headers,
        logs(stack)
    );
    assert!(resp.json()["result"]["tools"].is_array(), "{}", resp.body);
    let recorded = stack.demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["path"], "/mcp", "{recorded:?}");
    let auth = recorded_header(&recorded[0], "authorization")
        .unwrap_or_else(|| panic!("the app got no Authorization: {recorded:?}"));
    let te = auth.strip_prefix("Bearer ").unwrap().to_string();
    // Whatever the app gets, it is a TE for this user and this app.
    let claims = jwt::decode_claims(&te);
    assert_eq!(claims["client_id"], "warden-app:chat", "{claims}");
    assert_eq!(claims["sub"], DEMO_EMAIL, "{claims}");
    te
}

fn aud(te: &str) -> Vec<String> {
    let claims = jwt::decode_claims(te);
    claims["aud"]
        .as_array()
        .unwrap_or_else(|| panic!("aud is an array: {claims}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// `GET {envoy}{path}` (the server listing) with `bearer`: status and body.
async fn listing(stack: &Stack, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = browser().get(format!("{}{path}", stack.envoy_url()));
    if let Some(te) = bearer {
        req = req.bearer_auth(te);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The listing's entry for the server with `url` (panics when absent).
async fn listed(stack: &Stack, te: &str, url: &str) -> Value {
    let (status, body) = listing(stack, "/.warden/mcp/routes", Some(te)).await;
    assert_eq!(status, 200, "{body}");
    body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("{url} not listed: {body}"))
}

/// `base` with `key=value` appended to its query.
fn with_query(base: &str, key: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse(base).unwrap();
    url.query_pairs_mut().append_pair(key, value);
    url.to_string()
}

fn server_urls(body: &Value) -> Vec<String> {
    body["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no servers array: {body}"))
        .iter()
        .map(|s| s["url"].as_str().unwrap().to_string())
        .collect()
}

/// Plays a browser (with a cookie jar) from `url`: follows redirects and fills the gateway's
/// login form with the demo user's credentials, until a page that is not a login form or not
/// a success. Returns the final status, URL, `Location` and body.
async fn browse_until_page(url: &str) -> (u16, String, Option<String>, String) {
    let b = warden_e2e::client_builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut url = reqwest::Url::parse(url).unwrap();
    let mut form: Option<Vec<(String, String)>> = None;
    let mut logins = 0;
    for _ in 0..10 {
        let resp = match form.take() {
            Some(fields) => b.post(url.clone()).form(&fields).send().await,
            None => b.get(url.clone()).send().await,
        }
        .unwrap();
        let status = resp.status().as_u16();
        let location = header(&resp, "location");
        if resp.status().is_redirection() {
            url = url.join(location.as_deref().unwrap()).unwrap();
            continue;
        }
        let body = resp.text().await.unwrap();
        let forms = html::forms(&body);
        let login = forms.iter().find(|f| f.has_password());
        match login {
            Some(f) if status == 200 && logins == 0 => {
                logins += 1;
                let fields = f
                    .inputs
                    .iter()
                    .map(|i| {
                        let value = match i.name.as_str() {
                            "email" => DEMO_EMAIL.to_string(),
                            "password" => DEMO_PASSWORD.to_string(),
                            _ => i.value.clone(),
                        };
                        (i.name.clone(), value)
                    })
                    .collect();
                url = url.join(f.action.as_deref().unwrap_or("")).unwrap();
                form = Some(fields);
            }
            _ => return (status, url.to_string(), location, body),
        }
    }
    panic!("no final page after 10 steps from {url}");
}

// =============================================================================================
// 1. The TE on an allowed server route and on one the policy denies
// =============================================================================================

/// The app's TE is audience-bound to the servers the user may use: it works on `/mcp` (raw
/// MCP POST and an rmcp client), and `/admins` (whose policy admits someone else) refuses it,
/// its resource not being in `aud`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_te_works_on_an_allowed_server_and_is_refused_on_a_denied_one() {
    let stack = app_stack(
        everyone(),
        vec![json!({
            "name": "admins",
            "prefix": ADMINS,
            "mcp": {"server": {}},
            "policy": only("someone-else@example.com"),
        })],
        300,
    )
    .await;
    let mcp = stack.mcp_url();
    let admins = stack.route_url(ADMINS);
    let session = app_sign_in(&stack).await;
    let te = app_request_te(&stack, &session).await;

    let aud = aud(&te);
    assert!(aud.contains(&mcp), "aud lists {mcp}: {aud:?}");
    assert!(!aud.contains(&admins), "aud leaves out {admins}: {aud:?}");

    // Allowed: a raw MCP POST and an rmcp client, as an LLM API holding the TE would.
    let bearer = format!("Bearer {te}");
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &mcp,
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, logs(&stack));
    assert!(resp.json()["result"]["tools"].is_array(), "{}", resp.body);
    let client = connect(&mcp, &Era::Stateless, ClientAuth::Bearer(te.clone())).await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "from the app"})).await,
        "from the app"
    );
    client.cancel().await.unwrap();

    // Denied: refused at the gateway, nothing reaches the server.
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &admins,
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert!(
        matches!(resp.status, 401 | 403),
        "{admins} refuses the TE: {} {}",
        resp.status,
        resp.body
    );
    assert!(
        try_connect(&admins, &Era::Stateless, ClientAuth::Bearer(te.clone()))
            .await
            .is_err(),
        "an rmcp client with the TE cannot use {admins}"
    );
    stack
        .demo
        .assert_nothing_recorded("requests to the denied server")
        .await;
}

// =============================================================================================
// 2. The listing, filtered per user
// =============================================================================================

/// `/.warden/mcp/routes` and `/.pomerium/mcp/routes` on the gateway, with the app's TE: the
/// server the user may use is listed, the one its policy denies is not; without a TE (or with
/// a made-up one), `401`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_is_filtered_per_user() {
    let stack = app_stack(
        everyone(),
        vec![json!({
            "name": "admins",
            "prefix": ADMINS,
            "mcp": {"server": {}},
            "policy": only("someone-else@example.com"),
        })],
        300,
    )
    .await;
    let mcp = stack.mcp_url();
    let admins = stack.route_url(ADMINS);
    let session = app_sign_in(&stack).await;
    let te = app_request_te(&stack, &session).await;

    for path in ["/.warden/mcp/routes", "/.pomerium/mcp/routes"] {
        let (status, body) = listing(&stack, path, Some(&te)).await;
        assert_eq!(status, 200, "{path}: {body}\n{}", logs(&stack));
        let urls = server_urls(&body);
        assert!(urls.contains(&mcp), "{path} lists {mcp}: {body}");
        assert!(!urls.contains(&admins), "{path} hides {admins}: {body}");
        let demo = body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == mcp.as_str())
            .unwrap();
        assert_eq!(demo["name"], "demo", "{demo}");
        assert_eq!(demo["connected"], true, "no upstream OAuth: {demo}");
        assert!(demo["connect_url"].is_null(), "{demo}");

        let (status, _) = listing(&stack, path, None).await;
        assert_eq!(status, 401, "{path} without a TE");
        let (status, _) = listing(&stack, path, Some("not-a-te")).await;
        assert_eq!(status, 401, "{path} with a made-up bearer");
    }
}

// =============================================================================================
// 3. Connect and disconnect an upstream account
// =============================================================================================

/// The app stack plus a server route `gh` with upstream OAuth at the demo provider (with its
/// RFC 7009 revocation endpoint).
async fn connect_stack(dir: &std::path::Path) -> (Stack, OAuthProvider) {
    let provider = OAuthProvider::start(dir, free_port(), &[]).await;
    let p = provider.url();
    let stack = app_stack(
        everyone(),
        vec![json!({
            "name": "gh",
            "prefix": GH,
            "mcp": {"server": {"upstream_oauth2": {
                "client_id": PROVIDER_CLIENT_ID,
                "client_secret": PROVIDER_CLIENT_SECRET,
                "scopes": ["repo"],
                "endpoint": {
                    "auth_url": format!("{p}/authorize"),
                    "token_url": format!("{p}/token"),
                    "revocation_url": format!("{p}/revoke"),
                },
            }}},
            "policy": everyone(),
        })],
        300,
    )
    .await;
    (stack, provider)
}

/// Listing says `connected: false` with a `connect_url`; the browser follows it (signing in
/// at the token service, then at the provider) and lands on the app's page; listing says
/// `connected: true`; disconnect → `200`; `connected: false` again, and the provider counted a
/// revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_before_and_after_connect_and_after_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, provider) = connect_stack(dir.path()).await;
    let gh = stack.route_url(GH);
    let session = app_sign_in(&stack).await;
    let te = app_request_te(&stack, &session).await;
    assert!(aud(&te).contains(&gh), "{:?}", aud(&te));

    let before = listed(&stack, &te, &gh).await;
    assert_eq!(before["name"], "gh", "{before}");
    assert_eq!(before["connected"], false, "{before}");
    let connect_url = before["connect_url"]
        .as_str()
        .unwrap_or_else(|| panic!("a connect_url: {before}"))
        .to_string();
    assert_eq!(
        connect_url,
        format!("{}/mcp/connect?route=gh", stack.issuer())
    );
    assert_eq!(provider.stats().await["authorization_code"], 0);
    // Not connected: the server route has no upstream token to send for the TE.
    let bearer = format!("Bearer {te}");
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &gh,
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    stack.demo.assert_nothing_recorded("no TI yet").await;

    // The app sends the browser to connect, with its own page to come back to.
    let app_page = format!("{}{APP}/servers?tab=1", stack.envoy_url());
    let go = with_query(&connect_url, "redirect_url", &app_page);
    let landed =
        browser_authorize_with(&go, &app_page, (DEMO_EMAIL, DEMO_PASSWORD), Some(ALICE)).await;
    assert_eq!(landed, app_page, "back on the app's page");
    let stats = provider.stats().await;
    assert_eq!(
        stats["authorization_code"], 1,
        "the provider's flow ran: {stats}"
    );

    let after = listed(&stack, &te, &gh).await;
    assert_eq!(after["connected"], true, "{after}\n{}", logs(&stack));
    // The app's TE now reaches the server, which receives the user's upstream token.
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &gh,
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, logs(&stack));
    let recorded = stack.demo.recorded().await;
    let upstream_auth = recorded_header(&recorded[0], "authorization").unwrap_or_default();
    assert!(upstream_auth.starts_with("Bearer dat_"), "{recorded:?}");
    // Connected: following connect_url again goes straight back to the app.
    let again = browser_authorize_with(&go, &app_page, (DEMO_EMAIL, DEMO_PASSWORD), None).await;
    assert_eq!(again, app_page);
    assert_eq!(provider.stats().await["authorization_code"], 1);

    // Disconnect: without a TE 401; with it 200, and the token revoked at the provider.
    let disconnect = format!("{}/.warden/mcp/disconnect", stack.envoy_url());
    let resp = browser()
        .post(&disconnect)
        .json(&json!({"url": gh}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(listed(&stack, &te, &gh).await["connected"], true);
    assert_eq!(provider.stats().await["revocations"], 0);
    let resp = browser()
        .post(&disconnect)
        .bearer_auth(&te)
        .json(&json!({"url": gh}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["disconnected"], true, "{body}");

    let gone = listed(&stack, &te, &gh).await;
    assert_eq!(gone["connected"], false, "{gone}");
    assert_eq!(gone["connect_url"], connect_url.as_str(), "{gone}");
    let stats = provider.stats().await;
    assert_eq!(stats["revocations"], 1, "revoked at the provider: {stats}");
}

// =============================================================================================
// 4. The connect redirect is no open redirect
// =============================================================================================

/// `redirect_url` off the app's origin (another site, the app's host on another port or
/// scheme) gets a `400` page and no `Location`, at the issuer and through the gateway's
/// `/.warden/mcp/connect`; a page of the app is accepted (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_to_redirect_off_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, _provider) = connect_stack(dir.path()).await;
    let issuer = stack.issuer();
    let envoy = stack.envoy_url();
    let port = stack.ports.envoy;
    let b = browser();
    let connect = |redirect: &str| {
        with_query(
            &format!("{issuer}/mcp/connect?route=gh"),
            "redirect_url",
            redirect,
        )
    };

    let other_port = free_port();
    for evil in [
        "https://evil.example/".to_string(),
        "https://evil.example/app/".to_string(),
        format!("http://127.0.0.1:{other_port}{APP}/"),
        format!("https://127.0.0.1:{port}{APP}/"),
        format!("http://evil.example@127.0.0.1:{port}{APP}/"),
        format!("//127.0.0.1:{port}{APP}/"),
        format!("{APP}/"),
    ] {
        let resp = b.get(connect(&evil)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "redirect_url={evil}");
        assert!(header(&resp, "location").is_none(), "redirect_url={evil}");
        assert!(
            header(&resp, "content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "a page: {evil}"
        );
        // The same through the gateway's connect (it forwards to the issuer's).
        let resp = b
            .get(with_query(
                &format!("{envoy}/.warden/mcp/connect?route=gh"),
                "redirect_url",
                &evil,
            ))
            .send()
            .await
            .unwrap();
        let hop = header(&resp, "location").unwrap_or_default();
        assert!(hop.starts_with(&format!("{issuer}/mcp/connect?")), "{hop}");
        let resp = b.get(&hop).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "via the gateway: {evil}");
        assert!(header(&resp, "location").is_none());
    }
    // Without redirect_url: 400 too.
    let resp = b
        .get(format!("{issuer}/mcp/connect?route=gh"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(header(&resp, "location").is_none());

    // The control: a page of the app is accepted (the sign-in page, no session yet).
    let resp = b
        .get(connect(&format!("{envoy}{APP}/servers")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        html::forms(&body).iter().any(|f| f.has_password()),
        "{body}"
    );
}

// =============================================================================================
// 5. The user the app's policy denies
// =============================================================================================

/// A client route whose policy admits only someone else: after signing in, the browser gets
/// a `403` page and never a code or a redirect back; the app receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_the_app_policy_denies_gets_a_403_page() {
    let stack = app_stack(only("nobody@example.com"), vec![], 300).await;
    let (sign_in, _nonce) = open_app(&stack).await;
    let (status, url, location, body) = browse_until_page(&sign_in).await;
    assert_eq!(status, 403, "at {url}: {body}\n{}", logs(&stack));
    assert!(location.is_none(), "{location:?}");
    assert!(url.starts_with(&stack.issuer()), "{url}");
    assert!(body.contains("not allowed"), "{body}");
    assert!(!body.contains("/.warden/app/callback"), "{body}");
    stack
        .demo
        .assert_nothing_recorded("a user the app's policy denies")
        .await;
    // The app itself still sends the browser to sign in; nothing reaches it.
    let resp = browser()
        .get(format!("{}{APP}/", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    stack
        .demo
        .assert_nothing_recorded("a user the app's policy denies")
        .await;
}

// =============================================================================================
// 6. TE renewal past the TE lifetime
// =============================================================================================

/// With 2-second TEs: the app receives TE1; once TE1's `exp` has passed, the next request is
/// answered (`200`) and the app receives a new TE2 with a later `exp`, the browser never
/// signing in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_te_is_renewed_past_its_lifetime() {
    let stack = app_stack(everyone(), vec![], 2).await;
    let session = app_sign_in(&stack).await;
    let te1 = app_request_te(&stack, &session).await;
    let exp1 = jwt::decode_claims(&te1)["exp"].as_u64().unwrap();
    assert!(exp1 <= jwt::now() + 3, "a 2 s TE: exp {exp1}");

    // Wait for real expiry (JWT exp is in whole seconds: strictly past it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jwt::now() <= exp1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let te2 = app_request_te(&stack, &session).await;
    assert_ne!(te2, te1, "a new TE");
    let exp2 = jwt::decode_claims(&te2)["exp"].as_u64().unwrap();
    assert!(exp2 > exp1, "exp {exp2} after {exp1}");
    assert!(exp2 > jwt::now(), "TE2 is live");
    assert_eq!(
        jwt::decode_claims(&te2)["sid"],
        jwt::decode_claims(&te1)["sid"],
        "the same sign-in session"
    );
    // TE2 works on the server route.
    let resp = mcp_post(
        &stack.mcp_url(),
        &[("authorization", &format!("Bearer {te2}"))],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_gets_the_identity_assertion_with_pass_identity_headers() {
    let stack = app_stack_with(everyone(), vec![], 300, true).await;
    let session = app_sign_in(&stack).await;
    stack.demo.clear_recorded().await;
    // A client's own assertion never arrives: the gateway's replaces it.
    let resp = mcp_post(
        &stack.route_url(&format!("{APP}/mcp")),
        &[
            ("cookie", session.as_str()),
            ("x-warden-jwt-assertion", "forged.by.client"),
        ],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, logs(&stack));
    let recorded = stack.demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let assertion = recorded_header(&recorded[0], "x-warden-jwt-assertion")
        .unwrap_or_else(|| panic!("the app got no assertion: {recorded:?}"))
        .to_string();
    assert_ne!(assertion, "forged.by.client");
    let claims = jwt::decode_claims(&assertion);
    assert_eq!(claims["sub"], DEMO_EMAIL, "{claims}");
    assert_eq!(claims["email"], DEMO_EMAIL, "{claims}");
    assert_eq!(claims["route"], "chat", "{claims}");
    assert_eq!(claims["iss"], stack.issuer(), "{claims}");
    assert_eq!(
        claims["aud"],
        stack.demo.url(),
        "the app's origin: {claims}"
    );
    // Signed with the token service's published key.
    let kid = jwt::decode_header(&assertion)["kid"].clone();
    assert_eq!(kid, stack.jwks().await["keys"][0]["kid"], "{kid}");
}

//! `mcp: client` routes end to end (issue 10), the filter's side: a browser (a cookie-less
//! reqwest client that keeps cookies by hand) opens the app behind the gateway, is sent through
//! the token service's sign-in, comes back through `/.warden/app/callback` with the app
//! session cookie, and the app (the demo server, which records every request) receives the
//! user's TE instead of the cookie. Written against /work/issue10-contract.md; it needs the
//! token service's side (internal endpoints, `/app/sign-in`, render) to run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use warden_e2e::*;

const APP: &str = "/app";

async fn app_stack() -> Stack {
    Stack::start_with(StackOptions {
        config_hook: Some(Box::new(|c: &mut Value| {
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", free_port()));
            let from = c["routes"][0]["from"].clone();
            let demo_origin = c["routes"][0]["to"]
                .as_str()
                .unwrap()
                .trim_end_matches("/mcp")
                .to_string();
            c["routes"].as_array_mut().unwrap().push(json!({
                "name": "chat",
                "from": from,
                "prefix": APP,
                "to": demo_origin,
                "mcp": {"client": {}},
                "policy": {"allow": {"and": [{"authenticated_user": true}]}},
            }));
        })),
        ..StackOptions::default()
    })
    .await
}

fn browser() -> reqwest::Client {
    warden_e2e::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_and_the_app_receives_the_te() {
    let stack = app_stack().await;
    let envoy = stack.envoy_url();
    let issuer = stack.issuer();
    let b = browser();
    let page = format!("{envoy}{APP}/page?x=1&y=a%20b");

    // 1. No cookie: GET goes to sign-in, anything else gets 401 JSON.
    let resp = b.get(&page).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let sign_in = header(&resp, "location").unwrap();
    assert!(
        sign_in.starts_with(&format!("{issuer}/app/sign-in?route=chat&return_to=")),
        "{sign_in}"
    );
    // The sign-in is bound to this browser by a nonce cookie (its digest is in the URL).
    let nonce_cookie = cookie_pair(&header(&resp, "set-cookie").unwrap());
    assert!(
        nonce_cookie.starts_with("warden_app_") && nonce_cookie.contains("_n="),
        "{nonce_cookie}"
    );
    let resp = b
        .post(format!("{envoy}{APP}/api"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "sign_in_required");
    assert!(body["sign_in_url"].as_str().unwrap().contains("route=chat"));
    stack.demo.assert_nothing_recorded("before sign-in").await;

    // 2.–3. The token service signs the user in and sends the browser to the callback.
    let callback_endpoint = format!("{envoy}/.warden/app/callback");
    let callback = browser_authorize_to(
        &sign_in,
        &callback_endpoint,
        (DEMO_EMAIL, DEMO_PASSWORD),
        None,
    )
    .await;
    assert!(callback.contains("code="), "{callback}");

    // Login CSRF: the callback in a browser without the nonce cookie (a victim sent the
    // link) opens nothing, and uses the code up.
    let stolen = browser_authorize_to(
        &sign_in,
        &callback_endpoint,
        (DEMO_EMAIL, DEMO_PASSWORD),
        None,
    )
    .await;
    let resp = b.get(&stolen).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(header(&resp, "set-cookie").is_none());
    let resp = b
        .get(&stolen)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "the code is used up");

    // 4. The callback sets the cookie and returns to the page asked for.
    let resp = b
        .get(&callback)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert_eq!(header(&resp, "location").unwrap(), page);
    let set_cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    // The session cookie, and the nonce cookie cleared.
    assert!(
        set_cookies
            .iter()
            .any(|c| c.contains("_n=;") && c.contains("Max-Age=0")),
        "{set_cookies:?}"
    );
    let set_cookie = set_cookies
        .iter()
        .find(|c| !c.contains("_n="))
        .unwrap()
        .clone();
    assert!(set_cookie.starts_with("warden_app_"), "{set_cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "http resource: {set_cookie}"
    );
    let ours = cookie_pair(&set_cookie);
    // The code is one-time.
    let again = b
        .get(&callback)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 400);
    assert!(header(&again, "set-cookie").is_none());

    // 5. With the cookie: the app gets the TE, never the cookie or the client's Authorization.
    stack.demo.clear_recorded().await;
    let resp = b
        .get(&page)
        .header("cookie", format!("theme=dark; {ours}; lang=en"))
        .header("authorization", "Bearer client-made-this-up")
        .send()
        .await
        .unwrap();
    let shown_headers = format!("{:?}", resp.headers());
    let shown_body = resp.text().await.unwrap();
    let recorded = stack.demo.recorded().await;
    assert_eq!(
        recorded.len(),
        1,
        "{recorded:?} {shown_headers} {shown_body}\n{}\n{}",
        stack.envoy_log(),
        stack.token_service.log()
    );
    let auth = recorded_header(&recorded[0], "authorization")
        .unwrap()
        .to_string();
    let te = auth.strip_prefix("Bearer ").unwrap().to_string();
    assert_ne!(te, "client-made-this-up");
    assert_eq!(
        recorded_header(&recorded[0], "cookie"),
        Some("theme=dark; lang=en")
    );
    let claims = jwt::decode_claims(&te);
    assert_eq!(claims["client_id"], "warden-app:chat");
    assert_eq!(claims["sub"], DEMO_EMAIL);
    assert!(
        claims["aud"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == stack.mcp_url().as_str()),
        "{claims}"
    );
    // No TE in anything the browser sees.
    for seen in [
        &set_cookie,
        &shown_headers,
        &shown_body,
        &callback,
        &sign_in,
    ] {
        assert!(!seen.contains(&te), "TE visible to the browser: {seen}");
    }
    // The next request uses the worker's cache: the same TE.
    stack.demo.clear_recorded().await;
    b.get(&page).header("cookie", &ours).send().await.unwrap();
    let recorded = stack.demo.recorded().await;
    assert_eq!(
        recorded_header(&recorded[0], "authorization"),
        Some(auth.as_str())
    );

    // The TE works on the MCP server route it is audience-bound to.
    let bearer = format!("Bearer {te}");
    let resp = mcp_post(
        &stack.mcp_url(),
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);

    // Another site cannot sign the user out: a GET is a page with a button, and a POST
    // from another origin (or with none) is refused; the session stays.
    let sign_out = format!("{envoy}{APP}/.warden/sign-out");
    let resp = b
        .get(&sign_out)
        .header("cookie", &ours)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(header(&resp, "set-cookie").is_none());
    assert!(resp.text().await.unwrap().contains("method=\"post\""));
    for origin in [Some("https://evil.example"), None] {
        let mut req = b.post(&sign_out).header("cookie", &ours);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{origin:?}");
        assert!(header(&resp, "set-cookie").is_none());
    }
    // Still signed in: the request reaches the app (whose own answer it is), not sign-in.
    let resp = b.get(&page).header("cookie", &ours).send().await.unwrap();
    assert_ne!(resp.status().as_u16(), 302, "still signed in");
    assert!(header(&resp, "location").is_none());

    // The page's own button (a same-origin POST) ends the session and clears the cookie, and
    // sends the browser to the issuer with a ticket that ends the sign-in there too.
    let resp = b
        .post(&sign_out)
        .header("cookie", &ours)
        .header("origin", &envoy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let signed_out = header(&resp, "location").unwrap();
    assert!(
        signed_out.starts_with(&format!("{issuer}/app/signed-out?ticket=")),
        "{signed_out}"
    );
    assert!(header(&resp, "set-cookie").unwrap().contains("Max-Age=0"));
    // The old cookie is worth nothing now.
    let resp = b.get(&page).header("cookie", &ours).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert!(header(&resp, "location")
        .unwrap()
        .starts_with(&format!("{issuer}/app/sign-in")));
    assert!(header(&resp, "set-cookie").unwrap().contains("Max-Age=0"));
    let resp = b.get(&signed_out).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("signed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_and_listing_paths() {
    let stack = app_stack().await;
    let envoy = stack.envoy_url();
    let b = browser();
    // A made-up code: 400 page, no cookie.
    let resp = b
        .get(format!("{envoy}/.warden/app/callback?code=nope&state=chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(header(&resp, "set-cookie").is_none());
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("text/html"));
    // `state` must name a client route.
    let resp = b
        .get(format!("{envoy}/.warden/app/callback?code=x&state=demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A cookie with a session nobody issued: sign in again, the cookie cleared.
    let name = format!("warden_app_{}", &sha256_hex(b"chat")[..8]);
    let resp = b
        .get(format!("{envoy}{APP}/"))
        .header(
            "cookie",
            format!("{name}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert!(header(&resp, "set-cookie").unwrap().contains("Max-Age=0"));
    stack.demo.assert_nothing_recorded("unknown session").await;
    // The server listing is the token service's, on the gateway's host too: without a TE, 401.
    for path in ["/.warden/mcp/routes", "/.pomerium/mcp/routes"] {
        let resp = b.get(format!("{envoy}{path}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
}

/// A second client route at the host's root (beside `chat` under `/app`): everything else on
/// the host is that app's.
async fn root_app_stack() -> Stack {
    Stack::start_with(StackOptions {
        config_hook: Some(Box::new(|c: &mut Value| {
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", free_port()));
            let from = c["routes"][0]["from"].clone();
            let demo_origin = c["routes"][0]["to"]
                .as_str()
                .unwrap()
                .trim_end_matches("/mcp")
                .to_string();
            c["routes"].as_array_mut().unwrap().push(json!({
                "name": "home",
                "from": from,
                "to": demo_origin,
                "mcp": {"client": {}},
                "policy": {"allow": {"and": [{"authenticated_user": true}]}},
            }));
        })),
        ..StackOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_token_service_prefix_is_the_root_apps_request() {
    let stack = root_app_stack().await;
    let envoy = stack.envoy_url();
    let b = browser();
    // Envoy sends `/.warden/mcp/` (with the slash) to the token service; the bare
    // `/.warden/mcp` is the root app's, and must not reach it unchecked.
    for path in ["/.warden/mcp", "/.pomerium/mcp", "/.warden/mcp?x=1"] {
        stack.demo.clear_recorded().await;
        let resp = b
            .get(format!("{envoy}{path}"))
            .header("authorization", "Bearer client-made-this-up")
            .send()
            .await
            .unwrap();
        stack.demo.assert_nothing_recorded(path).await;
        assert_eq!(resp.status().as_u16(), 302, "{path}");
    }
    // The listing itself is still the token service's.
    let resp = b
        .get(format!("{envoy}/.warden/mcp/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_gets_an_app_session_cookie() {
    let stack = app_stack().await;
    // A browser sends an app's cookies (Path=/) to an MCP server on the app's host too.
    let chat = format!("warden_app_{}", &sha256_hex(b"chat")[..8]);
    let cookies =
        format!("a=1; {chat}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; {chat}_n=BBBBBBBBBBBBBBBBBBBBBB; b=2");
    let bearer = format!("Bearer {}", stack.mint_token(&stack.mcp_url()).await);
    stack.demo.clear_recorded().await;
    let resp = mcp_post(
        &stack.mcp_url(),
        &[("authorization", &bearer), ("cookie", &cookies)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let recorded = stack.demo.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded_header(&recorded[0], "cookie"), Some("a=1; b=2"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

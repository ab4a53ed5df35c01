//! The demo MCP app behind an `mcp: client` route (issue 10) in a real headless browser
//! (Debian's Chromium through chromedriver): sign-in, the server list, a tool call made by the
//! app with its TE, and no TE anywhere the browser can see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use warden_e2e::webdriver::{browser_paths, Browser};
use warden_e2e::{Binaries, Ports, Proc, Stack, StackOptions, DEMO_EMAIL, DEMO_PASSWORD};

#[tokio::test]
async fn the_demo_app_in_a_real_browser() {
    let Some((chromium, driver)) = browser_paths() else {
        eprintln!(
            "SKIPPED: /usr/bin/chromium or /usr/bin/chromedriver is missing \
             (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        return;
    };
    let ports = Ports::pick();
    let app_port = warden_e2e::free_port();
    let envoy = format!("http://127.0.0.1:{}", ports.envoy);
    let app_url = format!("{envoy}/app");
    let stack = Stack::start_with(StackOptions {
        ports: Some(ports),
        config_hook: Some(Box::new(move |config: &mut Value| {
            config["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", warden_e2e::free_port()));
            let from = config["routes"][0]["from"].clone();
            config["routes"].as_array_mut().unwrap().push(json!({
                "name": "app",
                "from": from,
                "prefix": "/app",
                "to": format!("http://127.0.0.1:{app_port}/"),
                "mcp": {"client": {}},
                "policy": {"allow": {"and": [{"domain": {"is": "example.com"}}]}},
            }));
        })),
        ..StackOptions::default()
    })
    .await;
    let mut app = Proc::spawn(
        "demo-mcp-app",
        stack.dir.path(),
        &Binaries::demo_app(),
        &[
            "--listen".into(),
            format!("127.0.0.1:{app_port}").into(),
            "--gateway".into(),
            envoy.clone().into(),
            "--app-url".into(),
            app_url.clone().into(),
        ],
        &[],
    );
    app.wait_http_ok(&format!("http://127.0.0.1:{app_port}/healthz"))
        .await;

    let browser = Browser::start(stack.dir.path(), &chromium, &driver).await;
    // Opening the app signs the browser in through the token service first.
    browser.goto(&format!("{app_url}/")).await;
    browser.wait_for_url(&stack.issuer()).await;
    browser.type_into("input[name=email]", DEMO_EMAIL).await;
    browser
        .type_into("input[name=password]", DEMO_PASSWORD)
        .await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url(&app_url).await;
    assert!(
        browser.text("#user").await.contains(DEMO_EMAIL),
        "{}",
        browser.source().await
    );
    // The server list the app got with its TE names the demo route.
    let servers = browser.text("#servers").await;
    assert!(servers.contains(&stack.mcp_url()), "{servers}");

    // The app calls a tool on the server with its TE, as an LLM API would.
    browser
        .click(&format!(
            "tr[data-server=\"{}\"] button.call",
            stack.mcp_url()
        ))
        .await;
    browser.wait_for_url(&format!("{app_url}/call")).await;
    let result = browser.text("#result").await;
    assert!(result.contains("\"method\""), "whoami answered: {result}");

    // No TE (a JWT) in any cookie or page the browser saw.
    for c in browser.cookies().await {
        let v = c["value"].as_str().unwrap_or_default();
        assert!(!v.starts_with("eyJ"), "a token in cookie {c}");
        assert_eq!(c["httpOnly"], true, "cookie {c}");
    }
    assert!(
        !browser.source().await.contains("eyJ"),
        "a token in the page"
    );

    // Sign-out is the app page's button: the browser's own POST (with its Origin) ends the
    // app session and, through the ticket, the sign-in at the issuer.
    browser.goto(&format!("{app_url}/")).await;
    browser.wait_for_url(&app_url).await;
    browser.click("button.sign-out").await;
    browser
        .wait_for_url(&format!("{}/app/signed-out", stack.issuer()))
        .await;
    assert!(
        browser.source().await.contains("You are signed out"),
        "{}",
        browser.source().await
    );
    // The next visit asks for the password again.
    browser.goto(&format!("{app_url}/")).await;
    browser.wait_for_url(&stack.issuer()).await;
    assert!(browser.find("input[name=password]").await.is_some());
    browser.quit().await;
    drop(app);
}

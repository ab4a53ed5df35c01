//! No secret of the gateway is readable where Envoy or the token service exposes or writes
//! anything (issue 16, item 1). A stack with every kind of secret (the internal credential,
//! the session key, client secrets of a pre-registered client, an upstream provider and the
//! identity provider, the encryption and signing keys) runs every flow that uses them, with
//! Envoy and the token service logging at trace level; then every secret is looked for in
//! every place: Envoy's admin `/config_dump` (all variants), `/stats` (all formats), the
//! access log and Envoy's log, the rendered bootstrap, every process's command line, and the
//! token service's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use serde_json::{json, Value};
use warden_e2e::*;

const SESSION_KEY: &str = "a-session-key-of-forty-characters-000042";
const APP: &str = "/app";
const WHO: &str = "/who";
const GH: &str = "/gh";

fn browser() -> reqwest::Client {
    warden_e2e::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

/// Every form a secret takes in text: as it is, and for key files holding base64url bytes,
/// the bytes in standard base64 and hex too.
fn spellings(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    if let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret) {
        out.push(base64::engine::general_purpose::STANDARD.encode(&bytes));
        out.push(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_readable_in_admin_logs_rendered_files_or_command_lines() {
    let provider_dir = tempfile::tempdir().unwrap();
    let provider = OAuthProvider::start(provider_dir.path(), free_port(), &[]).await;
    let provider_url = provider.url();
    let client_secret = format!("pre-registered-secret-{}", std::process::id());
    let registered_secret = client_secret.clone();
    let mut stack = Stack::start_with(StackOptions {
        envoy_env: vec![("MCP_WARDEN_SESSION_KEY".into(), SESSION_KEY.into())],
        envoy_log_level: Some("trace".into()),
        token_service_env: vec![("RUST_LOG".into(), "trace".into())],
        config_hook: Some(Box::new(move |c: &mut Value| {
            c["authorization_server"]["internal_listen"] =
                json!(format!("127.0.0.1:{}", free_port()));
            c["storage"]["encryption_key_file"] = json!(c["storage"]["sqlite"]
                .as_str()
                .unwrap()
                .replace("warden.db", "enc-key"));
            c["clients"] = json!([{
                "client_id": "registered",
                "client_secret": registered_secret,
                "token_endpoint_auth_method": "client_secret_basic",
                "redirect_uris": ["https://app.example.com/callback"],
            }]);
            c["identity_provider"]["oidc"] = json!({
                "issuer": provider_url,
                "client_id": PROVIDER_CLIENT_ID,
                "client_secret": PROVIDER_CLIENT_SECRET,
            });
            let from = c["routes"][0]["from"].clone();
            let to = c["routes"][0]["to"].clone();
            let app_to = to.as_str().unwrap().trim_end_matches("/mcp").to_owned();
            let allow = json!({"allow": {"and": [{"authenticated_user": true}]}});
            let routes = c["routes"].as_array_mut().unwrap();
            routes.push(json!({"name": "who", "from": from, "prefix": WHO, "to": to,
                "pass_identity_headers": true, "mcp": {"server": {}}, "policy": allow}));
            routes.push(json!({"name": "gh", "from": from, "prefix": GH, "to": to,
                "mcp": {"server": {"upstream_oauth2": {
                    "client_id": PROVIDER_CLIENT_ID,
                    "client_secret": PROVIDER_CLIENT_SECRET,
                    "scopes": ["repo"],
                    "endpoint": {
                        "auth_url": format!("{provider_url}/authorize"),
                        "token_url": format!("{provider_url}/token"),
                    },
                }}},
                "policy": allow}));
            routes.push(
                json!({"name": "chat", "from": from, "prefix": APP, "to": app_to,
                "mcp": {"client": {}}, "policy": allow}),
            );
        })),
        ..StackOptions::default()
    })
    .await;
    let envoy = stack.envoy_url();

    // Every flow that uses a secret. An MCP sign-in and call (signing key, session key).
    let signed = stack.sign_in().await;
    let bearer = format!("Bearer {}", signed.access_token);
    let r = mcp_post(
        &stack.mcp_url(),
        &[("authorization", &bearer)],
        "tools/list",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The identity assertion (internal credential).
    let who = stack.route_url(WHO);
    let te = stack.mint_token(&who).await;
    let r = mcp_post(
        &who,
        &[("authorization", &format!("Bearer {te}"))],
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Upstream OAuth (the provider's client secret, the encryption key).
    let gh = stack.route_url(GH);
    let alice = UpstreamLogin {
        user: PROVIDER_USER,
        password: PROVIDER_PASSWORD,
        approve: true,
    };
    let gh_signed = sign_in_with(&gh, (DEMO_EMAIL, DEMO_PASSWORD), Some(alice)).await;
    let r = mcp_post(
        &gh,
        &[(
            "authorization",
            &format!("Bearer {}", gh_signed.access_token),
        )],
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A pre-registered client authenticating with its secret (a wrong one too).
    for secret in [client_secret.as_str(), "wrong-secret"] {
        let r = http_client()
            .post(stack.token_endpoint())
            .basic_auth("registered", Some(secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "nope")])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
    }
    // A client route: browser sign-in through the callback (a one-time code in its query),
    // the app's TE, sign-out.
    let b = browser();
    let page = format!("{envoy}{APP}/page");
    let resp = b.get(&page).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let nonce_cookie = cookie_pair(&header(&resp, "set-cookie"));
    let callback = browser_authorize_to(
        &header(&resp, "location"),
        &format!("{envoy}/.warden/app/callback"),
        (DEMO_EMAIL, DEMO_PASSWORD),
        None,
    )
    .await;
    let code = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let resp = b
        .get(&callback)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let session_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| cookie_pair(v.to_str().unwrap()))
        .find(|c| !c.contains("_n="))
        .unwrap();
    let resp = b
        .get(&page)
        .header("cookie", &session_cookie)
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status().as_u16(), 302);
    let resp = b
        .post(format!("{envoy}{APP}/.warden/sign-out"))
        .header("cookie", &session_cookie)
        .header("origin", &envoy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    // Let Envoy flush its access log.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // The secrets.
    let dir = stack.dir.path().to_owned();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let signing: Value = serde_json::from_str(&read("signing-key.json")).unwrap();
    let private = signing["d"]
        .as_str()
        .or_else(|| signing["private"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the signing key's private part: {signing}"));
    let mut secrets: Vec<(&str, String)> = vec![
        ("internal credential", read("internal-credential")),
        ("encryption key", read("enc-key")),
        ("signing key", private),
        ("session key", SESSION_KEY.to_owned()),
        ("a pre-registered client's secret", client_secret.clone()),
        (
            "the upstream and identity provider's client secret",
            PROVIDER_CLIENT_SECRET.into(),
        ),
        ("an app callback's one-time code", code),
    ];
    secrets.retain(|(_, s)| !s.is_empty());

    // The places.
    let admin = format!("http://127.0.0.1:{}", stack.ports.envoy_admin);
    let mut places: Vec<(String, String)> = Vec::new();
    for path in [
        "/config_dump",
        "/config_dump?include_eds",
        "/config_dump?resource=static_listeners",
        "/config_dump?resource=static_clusters",
        "/config_dump?resource=dynamic_active_clusters",
        "/config_dump?mask=static_resources",
        "/config_dump?include_eds&resource=static_listeners",
        "/stats",
        "/stats?format=json",
        "/stats/prometheus",
        "/server_info",
        "/clusters",
        "/listeners",
    ] {
        let text = http_client()
            .get(format!("{admin}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.is_empty(), "{path} answered nothing");
        places.push((format!("Envoy admin {path}"), text));
    }
    places.push((
        "the rendered bootstrap".into(),
        std::fs::read_to_string(&stack.bootstrap_path).unwrap(),
    ));
    places.push((
        "Envoy's log and access log (trace)".into(),
        stack.envoy_log(),
    ));
    places.push((
        "the token service's log (trace)".into(),
        stack.token_service.log(),
    ));
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // The stand-in for GitHub is no part of the gateway.
            if !cmdline.contains("demo-oauth-provider") {
                places.push((
                    format!("/proc/{}/cmdline", entry.file_name().to_string_lossy()),
                    cmdline,
                ));
            }
        }
    }
    assert!(
        stack.envoy_log().contains("trace"),
        "Envoy logged at trace level"
    );
    assert!(
        stack.token_service.log().contains("TRACE"),
        "the token service logged at trace level"
    );
    // The callback's line is in the access log, without its query.
    let callback_line = stack
        .envoy_log()
        .lines()
        .find(|l| l.contains("\"GET /.warden/app/callback"))
        .map(str::to_owned)
        .expect("the app callback in the access log");
    assert!(!callback_line.contains("code="), "{callback_line}");

    let mut found = Vec::new();
    for (what, secret) in &secrets {
        for spelling in spellings(secret) {
            for (place, text) in &places {
                if place.starts_with("Envoy's log") && *what == "an app callback's one-time code" {
                    // Envoy's own debug and trace levels print every request's headers,
                    // `:path` included: checked in the access log line above instead.
                    continue;
                }
                if text.contains(&spelling) {
                    found.push(format!("{what} in {place}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "secrets found: {found:#?}");
    stack.token_service.kill().await;
    drop(provider);
}

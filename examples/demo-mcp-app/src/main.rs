//! `demo-mcp-app`: a small MCP-enabled web app for an `mcp: client` route (README, "MCP-enabled
//! applications"). The gateway signs the browser in and sends every request here with
//! `Authorization: Bearer <TE>`; the app never runs an OAuth flow. Its page lists the MCP
//! servers the user may use (`/.warden/mcp/routes`), links to connect upstream accounts,
//! disconnects them, and calls a tool on a server with the TE, as an LLM API would.
//!
//! The TE is used only server-side: no page, link or cookie of the app carries it.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt as _;
use serde::Deserialize;
use serde_json::Value;

const USAGE: &str = "usage: demo-mcp-app [options]\n\
  --listen ADDR     loopback address to bind (default 127.0.0.1:9210)\n\
  --gateway URL     the gateway (Envoy) origin, for /.warden/mcp/routes and /disconnect (default http://127.0.0.1:9000)\n\
  --app-url URL     the app's URL as browsers see it, behind the gateway (default http://127.0.0.1:9000/app)";

#[derive(Clone)]
struct App {
    gateway: String,
    app_url: String,
    http: reqwest::Client,
}

fn parse_args() -> anyhow::Result<Option<(SocketAddr, App)>> {
    let mut listen = "127.0.0.1:9210".to_owned();
    let mut gateway = "http://127.0.0.1:9000".to_owned();
    let mut app_url = "http://127.0.0.1:9000/app".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(None);
        }
        let Some(value) = args.next() else {
            bail!("{flag} needs a value\n{USAGE}");
        };
        match flag.as_str() {
            "--listen" => listen = value,
            "--gateway" => gateway = value,
            "--app-url" => app_url = value,
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    let addr: SocketAddr = listen.parse().context("--listen")?;
    if !addr.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    Ok(Some((
        addr,
        App {
            gateway: gateway.trim_end_matches('/').to_owned(),
            app_url: app_url.trim_end_matches('/').to_owned(),
            http,
        },
    )))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let Some((addr, app)) = parse_args()? else {
        return Ok(());
    };
    let router = Router::new()
        .route("/", get(home))
        .route("/call", post(call))
        .route("/disconnect", post(disconnect))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "demo MCP app listening");
    // Small answers go out at once (no Nagle delay behind a proxy's delayed ACKs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, body: &str) -> Response {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Demo MCP app</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto}}\
         td,th{{padding:.3rem .6rem;text-align:left}}form{{display:inline}}</style></head>\
         <body><h1>Demo MCP app</h1>{body}</body></html>"
    );
    let mut resp = (status, Html(doc)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The TE the gateway sent; the app only ever uses it server-side.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn no_token() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "<p>No token from the gateway: open this app through its <code>mcp: client</code> route.</p>",
    )
}

/// Display only (the gateway verified the token): who is signed in.
fn email_of(te: &str) -> String {
    te.split('.')
        .nth(1)
        .and_then(|p| B64.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["email"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn servers(app: &App, te: &str) -> anyhow::Result<Vec<Value>> {
    let resp = app
        .http
        .get(format!("{}/.warden/mcp/routes", app.gateway))
        .bearer_auth(te)
        .header(header::ACCEPT, "application/json")
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("the gateway answered {} for the server list", resp.status());
    }
    let body: Value = resp.json().await?;
    Ok(body["servers"].as_array().cloned().unwrap_or_default())
}

fn row(app: &App, s: &Value) -> String {
    let name = s["name"].as_str().unwrap_or_default();
    let url = s["url"].as_str().unwrap_or_default();
    let connected = s["connected"].as_bool().unwrap_or(false);
    let action = if connected {
        match s["connect_url"].as_str() {
            // An upstream account: it can be disconnected.
            Some(_) => format!(
                "<form method=\"post\" action=\"{app}/disconnect\"><input type=\"hidden\" name=\"url\" value=\"{u}\">\
                 <button type=\"submit\" class=\"disconnect\">Disconnect</button></form>",
                app = escape(&app.app_url),
                u = escape(url)
            ),
            None => String::new(),
        }
    } else {
        let connect = s["connect_url"].as_str().unwrap_or_default();
        let sep = if connect.contains('?') { '&' } else { '?' };
        let href = format!(
            "{connect}{sep}redirect_url={}",
            url::form_urlencoded::byte_serialize(format!("{}/", app.app_url).as_bytes())
                .collect::<String>()
        );
        format!(
            "<a class=\"connect\" href=\"{}\">Connect</a>",
            escape(&href)
        )
    };
    format!(
        "<tr data-server=\"{u}\"><td>{n}</td><td><code>{u}</code></td><td class=\"connected\">{c}</td><td>{action} \
         <form method=\"post\" action=\"{app}/call\"><input type=\"hidden\" name=\"url\" value=\"{u}\">\
         <button type=\"submit\" class=\"call\">Call whoami</button></form></td></tr>",
        n = escape(name),
        u = escape(url),
        c = if connected { "connected" } else { "not connected" },
        app = escape(&app.app_url),
    )
}

async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(te) = bearer(&headers) else {
        return no_token();
    };
    match servers(&app, &te).await {
        Ok(list) => {
            let rows: String = list.iter().map(|s| row(&app, s)).collect();
            page(
                StatusCode::OK,
                &format!(
                    "<p id=\"user\">Signed in as <strong>{}</strong>. \
                     <form method=\"post\" action=\"{}/.warden/sign-out\"><button type=\"submit\" class=\"sign-out\">Sign out</button></form></p>\
                     <table id=\"servers\"><tr><th>Server</th><th>URL</th><th>Account</th><th></th></tr>{rows}</table>",
                    escape(&email_of(&te)),
                    escape(&app.app_url)
                ),
            )
        }
        Err(e) => page(
            StatusCode::BAD_GATEWAY,
            &format!("<p class=\"error\">{}</p>", escape(&e.to_string())),
        ),
    }
}

#[derive(Deserialize)]
struct ServerForm {
    url: String,
}

/// Calls `whoami` on the server at `url` with the TE, as an LLM API given the TE would.
async fn call_whoami(url: &str, te: &str) -> anyhow::Result<String> {
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(te.to_owned()),
    );
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("demo-mcp-app", env!("CARGO_PKG_VERSION")),
    );
    let client = info
        .serve(transport)
        .await
        .map_err(|e| anyhow::anyhow!("could not connect: {e}"))?;
    let result = client
        .call_tool(CallToolRequestParams::new("whoami".to_owned()))
        .await;
    let _ = client.cancel().await;
    let result = result.map_err(|e| anyhow::anyhow!("tools/call failed: {e}"))?;
    let v = serde_json::to_value(&result)?;
    let text: Vec<String> = v["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(redact_bearers(&text.join("\n")))
}

/// The demo server's `whoami` echoes the request's headers, the upstream credential included:
/// a page is no place for it.
fn redact_bearers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("Bearer ") {
        let (head, tail) = rest.split_at(i + "Bearer ".len());
        out.push_str(head);
        out.push_str("[redacted]");
        let end = tail
            .find(|c: char| c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

async fn call(State(app): State<App>, headers: HeaderMap, Form(f): Form<ServerForm>) -> Response {
    let Some(te) = bearer(&headers) else {
        return no_token();
    };
    // Only servers the gateway lists for this user.
    let listed = servers(&app, &te)
        .await
        .map(|l| l.iter().any(|s| s["url"] == f.url.as_str()))
        .unwrap_or(false);
    if !listed {
        return page(
            StatusCode::BAD_REQUEST,
            "<p class=\"error\">Unknown server.</p>",
        );
    }
    let (status, out) = match call_whoami(&f.url, &te).await {
        Ok(text) => (
            StatusCode::OK,
            format!("<pre id=\"result\">{}</pre>", escape(&text)),
        ),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "<p class=\"error\" id=\"result\">{}</p>",
                escape(&e.to_string())
            ),
        ),
    };
    page(
        status,
        &format!(
            "<p>whoami on <code>{}</code>:</p>{out}<p><a href=\"{}/\">Back</a></p>",
            escape(&f.url),
            escape(&app.app_url)
        ),
    )
}

async fn disconnect(
    State(app): State<App>,
    headers: HeaderMap,
    Form(f): Form<ServerForm>,
) -> Response {
    let Some(te) = bearer(&headers) else {
        return no_token();
    };
    let resp = app
        .http
        .post(format!("{}/.warden/mcp/disconnect", app.gateway))
        .bearer_auth(&te)
        .json(&serde_json::json!({ "url": f.url }))
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => {
            Redirect::to(&format!("{}/", app.app_url)).into_response()
        }
        Ok(r) => page(
            StatusCode::BAD_GATEWAY,
            &format!(
                "<p class=\"error\">The gateway answered {}.</p>",
                r.status()
            ),
        ),
        Err(e) => page(
            StatusCode::BAD_GATEWAY,
            &format!("<p class=\"error\">{}</p>", escape(&e.to_string())),
        ),
    }
}

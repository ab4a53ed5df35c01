//! Clients other than the configured one: RFC 7591 dynamic registration (`--dcr`) and Client
//! ID Metadata Documents (`--cimd`), plus the RFC 8414 metadata that advertises them.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::{random_token, unix_now, AuthStyle, Provider, Shared};

/// At most this many registered clients and cached metadata documents each.
pub const MAX_CLIENTS: usize = 1_000;
/// A client metadata document is read for at most this long…
pub const CIMD_TIMEOUT: Duration = Duration::from_secs(5);
/// …and may be at most this large.
pub const CIMD_MAX_BYTES: usize = 64 * 1024;

/// How a client authenticates at `/token` and `/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// The configured client: per its [`AuthStyle`].
    Configured(AuthStyle),
    Basic,
    Post,
    /// A public client: `client_id` only, PKCE mandatory.
    None,
}

impl Method {
    fn parse(name: &str) -> Option<Method> {
        match name {
            "client_secret_basic" => Some(Method::Basic),
            "client_secret_post" => Some(Method::Post),
            "none" => Some(Method::None),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Basic | Method::Configured(_) => "client_secret_basic",
            Method::Post => "client_secret_post",
            Method::None => "none",
        }
    }
}

/// A client the provider knows, whichever way it came.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub id: String,
    pub secret: Option<String>,
    pub method: Method,
    /// Exact redirect URIs; empty only for the configured client (then any absolute URL).
    pub redirect_uris: Vec<String>,
}

/// A registered (DCR) client.
pub(crate) struct Registered {
    secret: Option<String>,
    method: Method,
    redirect_uris: Vec<String>,
}

/// A fetched, valid client metadata document.
pub(crate) struct Document {
    redirect_uris: Vec<String>,
}

impl Provider {
    /// The configured client, a registered one, or a cached metadata document's (never fetches).
    pub(crate) fn client(&self, id: &str) -> Option<Client> {
        if id == self.config.client_id {
            return Some(Client {
                id: id.to_owned(),
                secret: Some(self.config.client_secret.clone()),
                method: Method::Configured(self.config.auth_style),
                redirect_uris: self.config.redirect_uris.clone(),
            });
        }
        let store = self.store();
        if let Some(r) = store.registered.get(id) {
            return Some(Client {
                id: id.to_owned(),
                secret: r.secret.clone(),
                method: r.method,
                redirect_uris: r.redirect_uris.clone(),
            });
        }
        store.documents.get(id).map(|d| Client {
            id: id.to_owned(),
            secret: None,
            method: Method::None,
            redirect_uris: d.redirect_uris.clone(),
        })
    }

    /// The client for an authorization request: with `--cimd`, a URL `client_id` not seen yet
    /// has its document fetched. `Err` names why the client is refused.
    pub(crate) async fn authorize_client(&self, id: &str) -> Result<Client, String> {
        if let Some(client) = self.client(id) {
            return Ok(client);
        }
        let is_url = id.starts_with("https://") || id.starts_with("http://");
        if !(self.config.cimd && is_url) {
            return Err("Unknown or missing client_id.".to_owned());
        }
        let document = self.fetch_document(id).await?;
        let client = Client {
            id: id.to_owned(),
            secret: None,
            method: Method::None,
            redirect_uris: document.redirect_uris.clone(),
        };
        self.store().documents.insert(id.to_owned(), document);
        Ok(client)
    }

    async fn fetch_document(&self, id: &str) -> Result<Document, String> {
        let url =
            url::Url::parse(id).map_err(|_| "The client_id is not a valid URL.".to_owned())?;
        // Plain http only to this machine: a demo AS, but not an open fetcher.
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err("A client metadata document must be https (http only on loopback).".into());
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err("The client_id URL must have no fragment or credentials.".into());
        }
        self.store().stats.cimd_fetches += 1;
        let body = fetch_bounded(&self.cimd_http, url)
            .await
            .map_err(|e| format!("The client metadata document could not be fetched: {e}."))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| "The client metadata document is not JSON.".to_owned())?;
        if doc.get("client_id").and_then(Value::as_str) != Some(id) {
            return Err("The client metadata document's client_id is not its URL.".into());
        }
        match doc
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
        {
            None | Some("none") => {}
            Some(other) => {
                return Err(format!(
                "The client metadata document's token_endpoint_auth_method is {other}, not none."
            ))
            }
        }
        let redirect_uris = string_list(&doc, "redirect_uris")
            .filter(|uris| !uris.is_empty())
            .ok_or("The client metadata document has no redirect_uris.")?;
        Ok(Document { redirect_uris })
    }
}

/// GET `url` without redirects, at most [`CIMD_MAX_BYTES`] of a `200` body.
async fn fetch_bounded(http: &reqwest::Client, url: url::Url) -> Result<Vec<u8>, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > CIMD_MAX_BYTES {
            return Err(format!("larger than {CIMD_MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The client for `--cimd` fetches: bounded, no redirects, system roots plus `extra_ca`.
pub(crate) fn cimd_client(extra_ca: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(CIMD_TIMEOUT)
        .no_proxy();
    if let Some(pem) = extra_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder.build()?)
}

fn string_list(doc: &Value, name: &str) -> Option<Vec<String>> {
    doc.get(name)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn metadata_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `POST /register` (RFC 7591, `--dcr`).
pub(crate) async fn register(State(p): State<Shared>, body: Bytes) -> Response {
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return metadata_error("invalid_client_metadata", "the body is not a JSON object");
    };
    if !doc.is_object() {
        return metadata_error("invalid_client_metadata", "the body is not a JSON object");
    }
    let Some(redirect_uris) = string_list(&doc, "redirect_uris").filter(|u| !u.is_empty()) else {
        return metadata_error(
            "invalid_redirect_uri",
            "redirect_uris must be a non-empty array of strings",
        );
    };
    if let Some(bad) = redirect_uris.iter().find(|u| {
        url::Url::parse(u).map_or(true, |url| {
            url.fragment().is_some() || url.cannot_be_a_base()
        })
    }) {
        return metadata_error(
            "invalid_redirect_uri",
            &format!("{bad:?} is not an absolute URL without a fragment"),
        );
    }
    let method = match doc.get("token_endpoint_auth_method") {
        None => Method::Basic,
        Some(v) => match v.as_str().and_then(Method::parse) {
            Some(m) => m,
            None => {
                return metadata_error(
                    "invalid_client_metadata",
                    "token_endpoint_auth_method must be client_secret_basic, client_secret_post or none",
                )
            }
        },
    };
    let list_or = |name: &str, default: &str| match doc.get(name) {
        None => Some(vec![default.to_owned()]),
        Some(_) => string_list(&doc, name),
    };
    let (Some(grant_types), Some(response_types)) = (
        list_or("grant_types", "authorization_code"),
        list_or("response_types", "code"),
    ) else {
        return metadata_error(
            "invalid_client_metadata",
            "grant_types and response_types must be arrays of strings",
        );
    };
    let client_name = match doc.get("client_name") {
        None => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return metadata_error("invalid_client_metadata", "client_name is not a string"),
    };
    let id = random_token("dcr_");
    let secret = (method != Method::None).then(|| random_token("dcs_"));
    {
        let mut store = p.store();
        store.registered.insert(
            id.clone(),
            Registered {
                secret: secret.clone(),
                method,
                redirect_uris: redirect_uris.clone(),
            },
        );
        store.stats.registrations += 1;
    }
    tracing::info!(client = %id, method = method.name(), "client registered");
    let mut answer = json!({
        "client_id": id,
        "client_id_issued_at": unix_now(),
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": response_types,
        "token_endpoint_auth_method": method.name(),
    });
    if let Some(secret) = secret {
        answer["client_secret"] = json!(secret);
        answer["client_secret_expires_at"] = json!(0);
    }
    if let Some(name) = client_name {
        answer["client_name"] = json!(name);
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub(crate) async fn metadata(State(p): State<Shared>) -> Response {
    let issuer = &p.issuer;
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    });
    if p.config.dcr {
        doc["registration_endpoint"] = json!(format!("{issuer}/register"));
    }
    if p.config.cimd {
        doc["client_id_metadata_document_supported"] = json!(true);
    }
    Json(doc).into_response()
}

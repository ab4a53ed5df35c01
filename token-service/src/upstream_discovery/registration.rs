//! The gateway's registration at an upstream authorization server by RFC 7591 DCR, once per
//! server: `Registrar::register_once` opens the one stored for the server's issuer, or posts
//! the gateway's metadata to its `registration_endpoint` and keeps the answer, sealed with the
//! encryption key (`store::UpstreamRegistrations`). Replicas registering at once each post, but
//! the store keeps the first stored and the others use it. Same bounds as discovery: through
//! `Outbound::client` (the extra CA applies), no redirects, at most `MAX_DOCUMENT_BYTES`,
//! `FETCH_TIMEOUT`.
//!
//! Not wired into sign-in yet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::documents::{AuthorizationServer, CLIENT_NAME};
use super::fetch::read;
use crate::outbound::Outbound;
use crate::store::{Store, UpstreamRegistrationRecord};
use crate::vault::seal::{Kind, Sealer};

/// What the sealed value is bound to, with the issuer.
const BINDING: &str = "dcr";
/// Longest text of the server's own quoted in an error.
const MAX_QUOTED: usize = 200;

/// The gateway's client at an upstream authorization server. The secret is never shown by
/// `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub registered_at: i64,
    /// The redirect URI registered (the upstream callback).
    pub redirect_uri: String,
    /// `none` or `client_secret_basic`: how the gateway authenticates at the token endpoint.
    pub token_endpoint_auth_method: String,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("registered_at", &self.registered_at)
            .field("redirect_uri", &self.redirect_uri)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .finish()
    }
}

/// Why registering at a server failed: its issuer and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationError {
    pub issuer: String,
    pub reason: String,
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registering the gateway at the authorization server {} (RFC 7591 dynamic client registration) failed: {}",
            self.issuer, self.reason
        )
    }
}

impl std::error::Error for RegistrationError {}

/// The gateway's registration request: a public client unless the server lists
/// `client_secret_basic` and not `none`.
pub fn registration_request(server: &AuthorizationServer, redirect_uri: &str) -> serde_json::Value {
    serde_json::json!({
        "client_name": CLIENT_NAME,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method(server),
    })
}

fn auth_method(server: &AuthorizationServer) -> &'static str {
    let listed = |m: &str| {
        server
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|x| x == m)
    };
    if !listed("none") && listed("client_secret_basic") {
        "client_secret_basic"
    } else {
        "none"
    }
}

/// The parts of an RFC 7591 answer the gateway keeps.
#[derive(Deserialize)]
struct Answer {
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// An RFC 7591 error answer.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Text of the server's own, cut short and without control characters.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED)
        .collect()
}

/// Checks a registration answer: a success status, JSON with a non-empty `client_id`, and a
/// secret when one was asked for.
pub fn parse_registration(
    status: u16,
    body: &[u8],
    method: &str,
    redirect_uri: &str,
    now: i64,
) -> Result<Registration, String> {
    if !(200..300).contains(&status) {
        let detail = serde_json::from_slice::<ErrorAnswer>(body)
            .ok()
            .and_then(|e| {
                e.error.map(|code| match e.error_description {
                    Some(d) => format!(": {} ({})", quoted(&code), quoted(&d)),
                    None => format!(": {}", quoted(&code)),
                })
            })
            .unwrap_or_default();
        return Err(format!("it answered HTTP {status}{detail}"));
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("its answer is not a registration (RFC 7591): {e}"))?;
    let client_id = a
        .client_id
        .filter(|id| !id.is_empty())
        .ok_or("its answer has no client_id")?;
    let client_secret = a.client_secret.filter(|s| !s.is_empty());
    if method == "client_secret_basic" && client_secret.is_none() {
        return Err("its answer has no client_secret, and the server authenticates clients with client_secret_basic only".into());
    }
    Ok(Registration {
        client_id,
        client_secret,
        registered_at: now,
        redirect_uri: redirect_uri.to_owned(),
        token_endpoint_auth_method: method.to_owned(),
    })
}

/// Seals `r` for the server `issuer`.
pub fn seal(sealer: &Sealer, issuer: &str, r: &Registration) -> anyhow::Result<Vec<u8>> {
    sealer.seal(
        issuer,
        BINDING,
        Kind::Registration,
        &serde_json::to_string(r)?,
    )
}

/// Opens what `seal` sealed for `issuer`; `None` when no configured key opens it.
pub fn open(sealer: &Sealer, issuer: &str, sealed: &[u8]) -> Option<Registration> {
    let plain = sealer.open(issuer, BINDING, Kind::Registration, sealed)?;
    serde_json::from_str(&plain).ok()
}

/// Registers the gateway at upstream authorization servers.
pub struct Registrar {
    http: reqwest::Client,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar").finish_non_exhaustive()
    }
}

impl Registrar {
    /// With `FETCH_TIMEOUT` in production; tests may pass a shorter one.
    pub fn new(outbound: &Outbound, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: outbound.client(timeout)?,
        })
    }

    /// The gateway's registration at `server`: the stored one if it opens and names
    /// `redirect_uri`, else a new one by DCR at its `registration_endpoint`, stored sealed
    /// (when another replica stored one first, that one).
    pub async fn register_once(
        &self,
        store: Arc<dyn Store>,
        sealer: &Sealer,
        server: &AuthorizationServer,
        redirect_uri: &str,
        now: i64,
    ) -> Result<Registration, RegistrationError> {
        let issuer = server.issuer.clone();
        let fail = |reason: String| RegistrationError {
            issuer: issuer.clone(),
            reason,
        };
        if let Some(r) = stored(&store, sealer, &issuer, redirect_uri)
            .await
            .map_err(fail)?
        {
            return Ok(r);
        }
        let endpoint = server
            .registration_endpoint
            .as_deref()
            .ok_or_else(|| fail("its metadata has no registration_endpoint".into()))?;
        let method = auth_method(server);
        let req = self
            .http
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&registration_request(server, redirect_uri));
        let answer = read(req, endpoint).await.map_err(fail)?;
        let r = parse_registration(answer.status, &answer.body, method, redirect_uri, now)
            .map_err(|e| fail(format!("{endpoint}: {e}")))?;
        let record = UpstreamRegistrationRecord {
            issuer: issuer.clone(),
            sealed: seal(sealer, &issuer, &r).map_err(|e| fail(e.to_string()))?,
            registered_at: now,
        };
        let inserted = blocking(&store, move |s| s.insert_upstream_registration(&record))
            .await
            .map_err(fail)?;
        if inserted {
            tracing::info!(issuer = %issuer, client_id = %r.client_id, "registered at the upstream authorization server");
            return Ok(r);
        }
        // Another replica stored one first: use it.
        stored(&store, sealer, &issuer, redirect_uri)
            .await
            .map_err(fail)?
            .ok_or_else(|| {
                fail("another registration was stored meanwhile, and it does not open".into())
            })
    }
}

/// The registration stored for `issuer`, if it opens and names `redirect_uri`; one that does
/// not (sealed with a key no longer configured, or for another callback) is deleted.
async fn stored(
    store: &Arc<dyn Store>,
    sealer: &Sealer,
    issuer: &str,
    redirect_uri: &str,
) -> Result<Option<Registration>, String> {
    let key = issuer.to_owned();
    let Some(record) = blocking(store, move |s| s.upstream_registration(&key)).await? else {
        return Ok(None);
    };
    match open(sealer, issuer, &record.sealed) {
        Some(r) if r.redirect_uri == redirect_uri => Ok(Some(r)),
        _ => {
            tracing::warn!(issuer = %issuer, "the stored upstream registration does not open or names another redirect URI: registering again");
            let key = issuer.to_owned();
            blocking(store, move |s| s.delete_upstream_registration(&key)).await?;
            Ok(None)
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> crate::store::Result<T> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| format!("the store call failed: {e}"))?
        .map_err(|e| format!("the store: {e}"))
}

//! The gateway as an OAuth client of an upstream provider (GitHub, Google, …), built on the
//! `oauth2` crate: the authorization URL, the code exchange and the refresh, with the
//! provider's client authentication style (`auth_style`, detected when not configured).

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};

use crate::config::{AuthStyle, UpstreamOAuth2Config};

/// How long a call to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest provider response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Tokens a provider issued.
#[derive(Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    /// The scope granted, when the provider says (else the one asked for).
    pub scope: Option<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why the provider gave no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// The provider refused for good (`invalid_grant`, another 4xx): the grant is gone.
    Refused(String),
    /// A 5xx, a timeout, or no answer: try again later, keep what we have.
    Unavailable(String),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::Refused(m) => write!(f, "refused: {m}"),
            ProviderError::Unavailable(m) => write!(f, "unavailable: {m}"),
        }
    }
}

/// The transport error our HTTP client gives the `oauth2` crate.
#[derive(Debug)]
struct Transport(String);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Transport {}

/// What `auth_style` detection has learned (absent `auth_style` only).
const STYLE_UNKNOWN: u8 = 0;
const STYLE_HEADER: u8 = 1;
const STYLE_PARAMS: u8 = 2;

/// An `oauth2` client with the authorization and token endpoints set.
type ConfiguredClient = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

pub struct Provider {
    config: UpstreamOAuth2Config,
    redirect_uri: String,
    http: reqwest::Client,
    learned_style: AtomicU8,
    /// RFC 8707 `resource` sent on the authorization, code and refresh requests (a
    /// discovered upstream's resource identifier).
    resource: Option<String>,
}

impl Provider {
    pub fn new(config: UpstreamOAuth2Config, redirect_uri: String, http: reqwest::Client) -> Self {
        Self {
            config,
            redirect_uri,
            http,
            learned_style: AtomicU8::new(STYLE_UNKNOWN),
            resource: None,
        }
    }

    /// The same provider, asking for tokens for `resource` (RFC 8707).
    pub fn for_resource(mut self, resource: String) -> Self {
        self.resource = Some(resource);
        self
    }

    pub fn scopes(&self) -> &[String] {
        &self.config.scopes
    }

    pub fn name(&self) -> String {
        self.config.provider_name()
    }

    /// The origin of the token endpoint (the listing's `authorization_server` of a
    /// configured provider).
    pub fn token_origin(&self) -> Option<String> {
        url::Url::parse(&self.config.endpoint.token_url)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    }

    fn client(&self, style: AuthType) -> anyhow::Result<ConfiguredClient> {
        let e = &self.config.endpoint;
        let mut client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_auth_uri(AuthUrl::new(e.auth_url.clone())?)
            .set_token_uri(TokenUrl::new(e.token_url.clone())?)
            .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone())?)
            .set_auth_type(style);
        if let Some(secret) = &self.config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        Ok(client)
    }

    /// The provider's authorization URL for `state`, with PKCE S256; returns the URL and the
    /// verifier to keep until the callback. `extra_scopes` are added to the configured ones
    /// (a server asked for them with `insufficient_scope`).
    pub fn authorization_url(
        &self,
        state: &str,
        extra_scopes: &[String],
    ) -> anyhow::Result<(String, String)> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut scopes: Vec<&String> = self.config.scopes.iter().collect();
        for s in extra_scopes {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let state = state.to_owned();
        let client = self.client(AuthType::BasicAuth)?;
        let mut request = client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(scopes.into_iter().map(|s| Scope::new(s.clone())))
            .set_pkce_challenge(challenge);
        if let Some(r) = &self.resource {
            request = request.add_extra_param("resource", r.clone());
        }
        let (url, _) = request.url();
        Ok((url.into(), verifier.secret().clone()))
    }

    pub async fn exchange_code(&self, code: &str, verifier: &str) -> Result<Issued, ProviderError> {
        self.with_auth_style(|client, http| {
            let code = AuthorizationCode::new(code.to_owned());
            let verifier = PkceCodeVerifier::new(verifier.to_owned());
            let resource = self.resource.clone();
            async move {
                let mut request = client.exchange_code(code).set_pkce_verifier(verifier);
                if let Some(r) = resource {
                    request = request.add_extra_param("resource", r);
                }
                request
                    .request_async(&http.sender())
                    .await
                    .map_err(|e| http.classify(e))
            }
        })
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Issued, ProviderError> {
        self.with_auth_style(|client, http| {
            let token = RefreshToken::new(refresh_token.to_owned());
            let resource = self.resource.clone();
            async move {
                let mut request = client.exchange_refresh_token(&token);
                if let Some(r) = resource {
                    request = request.add_extra_param("resource", r);
                }
                request
                    .request_async(&http.sender())
                    .await
                    .map_err(|e| http.classify(e))
            }
        })
        .await
    }

    /// Revokes `token` at the provider's RFC 7009 endpoint, authenticating as at the token
    /// endpoint (HTTP Basic unless the style is, or was learned to be, form parameters; a
    /// public client sends its `client_id`). Ok(false) when no `revocation_url` is configured.
    pub async fn revoke(&self, token: &str, hint: &str) -> Result<bool, ProviderError> {
        let Some(url) = &self.config.endpoint.revocation_url else {
            return Ok(false);
        };
        let params_style = match self.config.endpoint.auth_style {
            Some(AuthStyle::Params) => true,
            Some(AuthStyle::Header) => false,
            None => self.learned_style.load(Ordering::Relaxed) == STYLE_PARAMS,
        };
        let mut form: Vec<(&str, &str)> = vec![("token", token), ("token_type_hint", hint)];
        let mut req = self.http.post(url.as_str());
        match &self.config.client_secret {
            Some(secret) if !params_style => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic.
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.config.client_id), Some(enc(secret)));
            }
            Some(secret) => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", secret));
            }
            None => form.push(("client_id", &self.config.client_id)),
        }
        let resp = crate::outbound::send(req.form(&form))
            .await
            .map_err(|e| ProviderError::Unavailable(format!("no answer from the provider: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            Ok(true)
        } else if status.is_server_error() {
            Err(ProviderError::Unavailable(format!(
                "the provider answered {status}"
            )))
        } else {
            Err(ProviderError::Refused(format!(
                "the provider answered {status}"
            )))
        }
    }

    /// Runs a token request in the configured style, or (none configured) in the learned
    /// one, or HTTP Basic and then form parameters, remembering the one that worked.
    async fn with_auth_style<F, Fut>(&self, request: F) -> Result<Issued, ProviderError>
    where
        F: Fn(ConfiguredClient, Call) -> Fut,
        Fut: std::future::Future<Output = Result<BasicTokenResponse, Attempt>>,
    {
        let styles: &[u8] = match (
            self.config.endpoint.auth_style,
            self.learned_style.load(Ordering::Relaxed),
        ) {
            (Some(AuthStyle::Header), _) => &[STYLE_HEADER],
            (Some(AuthStyle::Params), _) => &[STYLE_PARAMS],
            (None, STYLE_HEADER) => &[STYLE_HEADER],
            (None, STYLE_PARAMS) => &[STYLE_PARAMS],
            (None, _) => &[STYLE_HEADER, STYLE_PARAMS],
        };
        let mut last = ProviderError::Unavailable("no attempt made".into());
        for &style in styles {
            let auth = if style == STYLE_HEADER {
                AuthType::BasicAuth
            } else {
                AuthType::RequestBody
            };
            let client = self
                .client(auth)
                .map_err(|e| ProviderError::Refused(format!("bad provider configuration: {e}")))?;
            let call = Call {
                http: self.http.clone(),
                status: Arc::new(AtomicU16::new(0)),
            };
            match request(client, call).await {
                Ok(response) => {
                    if self.config.endpoint.auth_style.is_none() {
                        self.learned_style.store(style, Ordering::Relaxed);
                    }
                    return issued(response);
                }
                // Another style may work where this one was refused as a client.
                Err(Attempt::WrongClientAuth(m)) => last = ProviderError::Refused(m),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(last)
    }
}

fn issued(r: BasicTokenResponse) -> Result<Issued, ProviderError> {
    if !r.token_type().as_ref().eq_ignore_ascii_case("bearer") {
        return Err(ProviderError::Refused(format!(
            "the provider issued a {:?} token, not a bearer token",
            r.token_type().as_ref()
        )));
    }
    Ok(Issued {
        access_token: r.access_token().secret().clone(),
        refresh_token: r.refresh_token().map(|t| t.secret().clone()),
        expires_in: r.expires_in().map(|d| d.as_secs()),
        scope: r
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    })
}

/// One token request's outcome when it failed.
pub enum Attempt {
    /// The provider refused the client authentication (`invalid_client` / 401).
    WrongClientAuth(String),
    Failed(ProviderError),
}

/// One token request's HTTP side: our client, and the status it saw (to tell a 4xx from a
/// 5xx when the body is not an OAuth error).
#[derive(Clone)]
pub struct Call {
    http: reqwest::Client,
    status: Arc<AtomicU16>,
}

impl Call {
    fn sender(
        &self,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, Transport>> + Send>,
    > {
        let http = self.http.clone();
        let status = self.status.clone();
        move |req| Box::pin(send(http.clone(), status.clone(), req))
    }

    fn classify(
        &self,
        e: RequestTokenError<Transport, oauth2::basic::BasicErrorResponse>,
    ) -> Attempt {
        let status = self.status.load(Ordering::Relaxed);
        match e {
            RequestTokenError::ServerResponse(r) => {
                let what = match r.error_description() {
                    Some(d) => format!("{}: {d}", r.error()),
                    None => r.error().to_string(),
                };
                if *r.error() == BasicErrorResponseType::InvalidClient || status == 401 {
                    Attempt::WrongClientAuth(what)
                } else {
                    Attempt::Failed(ProviderError::Refused(what))
                }
            }
            RequestTokenError::Request(t) => {
                Attempt::Failed(ProviderError::Unavailable(t.to_string()))
            }
            RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => {
                if status == 401 {
                    Attempt::WrongClientAuth(format!("HTTP {status}"))
                } else if (400..500).contains(&status) {
                    Attempt::Failed(ProviderError::Refused(format!("HTTP {status}")))
                } else {
                    Attempt::Failed(ProviderError::Unavailable(format!(
                        "unreadable answer (HTTP {status})"
                    )))
                }
            }
        }
    }
}

/// Sends one request to the provider: no redirects, bounded time and size; a 5xx is a
/// transport failure (transient), whatever its body.
async fn send(
    http: reqwest::Client,
    status_seen: Arc<AtomicU16>,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, Transport> {
    let req = reqwest::Request::try_from(req).map_err(|e| Transport(e.to_string()))?;
    let mut resp = crate::outbound::execute(&http, req)
        .await
        .map_err(|e| Transport(format!("no answer from the provider: {e}")))?;
    let status = resp.status();
    status_seen.store(status.as_u16(), Ordering::Relaxed);
    if status.is_server_error() {
        return Err(Transport(format!("the provider answered {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Transport(format!("reading the provider's answer: {e}")))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Transport("the provider's answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let mut out = oauth2::HttpResponse::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = resp.headers().clone();
    Ok(out)
}

/// The HTTP client for providers: no redirects (a token endpoint never redirects), bounded
/// time, TLS with the system's roots and `outbound.extra_ca_file`.
pub fn http_client(outbound: &crate::outbound::Outbound) -> anyhow::Result<reqwest::Client> {
    outbound.client(PROVIDER_TIMEOUT)
}

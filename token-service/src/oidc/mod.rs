//! Sign-in through the organisation's OpenID Connect provider (`identity_provider.oidc`): the
//! token service is its relying party. Authorization code flow with PKCE S256, `state` and
//! `nonce`; the ID token is checked against the provider's JWKS (cached, fetched again for an
//! unknown `kid`), and `email`, `name` and groups come from it or, when it lacks them, from
//! the userinfo endpoint. A signed-in user is checked again later (`recheck`): with the
//! provider's refresh token, or its access token at userinfo.

pub mod claims;
pub mod error;
pub mod tokens;

// Moved to a leaf (client assertions and ID-JAGs use it too); `oidc::jws` keeps working.
pub use crate::jws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::config::OidcConfig;
use crate::metrics::{CallResult, IdentityProviderCall, Metrics};
use claims::IdpUser;
pub use error::IdpError;
use jws::Jwk;
use tokens::IdpTokens;

/// Where the provider sends the browser back; operators register it with the provider.
pub const CALLBACK_PATH: &str = "/login/callback";

pub fn callback_url(config: &crate::config::Config) -> String {
    format!("{}{CALLBACK_PATH}", config.authorization_server.issuer)
}

/// Discovery and JWKS documents are used this long before they are fetched again.
const DOCUMENT_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` fetches the JWKS again at most this often.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `iat`.
pub const LEEWAY: i64 = 60;
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The provider's discovery document (the fields the flow uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

struct Cached<T> {
    value: T,
    fetched: Instant,
}

/// The relying party of one OIDC provider.
pub struct OidcProvider {
    config: OidcConfig,
    redirect_uri: String,
    http: reqwest::Client,
    discovery: tokio::sync::Mutex<DiscoveryCache>,
    jwks: tokio::sync::Mutex<JwksState>,
    /// Counts each call to the provider (`warden_identity_provider_calls_total`).
    metrics: Arc<Metrics>,
}

/// A call's answer as a metric: a check the answer failed, or claims that do not allow the
/// user, are the provider's refusal; only no answer (or a server error) is `unavailable`.
fn call_result<T>(r: &Result<T, IdpError>) -> CallResult {
    match r {
        Ok(_) => CallResult::Ok,
        Err(IdpError::Unavailable(_)) => CallResult::Unavailable,
        Err(IdpError::Refused(_) | IdpError::Invalid(_) | IdpError::Claims(_)) => {
            CallResult::Refused
        }
    }
}

#[derive(Default)]
struct JwksState {
    cache: Option<JwksCache>,
    /// When the last fetch failed, and why (as `DiscoveryCache::failed`).
    failed: Option<(Instant, IdpError)>,
}

#[derive(Default)]
struct DiscoveryCache {
    doc: Option<Cached<Arc<Discovery>>>,
    /// When the last fetch failed, and why: callers that waited for the lock meanwhile take
    /// this answer instead of each waiting out another timeout in turn.
    failed: Option<(Instant, IdpError)>,
}

struct JwksCache {
    keys: Vec<Jwk>,
    fetched: Instant,
    /// When an unknown `kid` last made us fetch the JWKS again.
    unknown_kid_refetch: Option<Instant>,
}

/// What a check at the provider came to (`OidcProvider::recheck`).
#[derive(Debug)]
pub struct Recheck {
    /// The tokens to keep: those stored, or what a refresh gave (a rotated refresh token),
    /// even when the check failed after it.
    pub tokens: IdpTokens,
    /// The user's claims now, or why there are none.
    pub user: Result<IdpUser, IdpError>,
}

impl Recheck {
    fn failed(tokens: &IdpTokens, error: IdpError) -> Self {
        Self {
            tokens: tokens.clone(),
            user: Err(error),
        }
    }
}

/// A token endpoint's answer (code exchange or refresh): the parts the service uses.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl OidcProvider {
    pub fn new(config: OidcConfig, redirect_uri: String, http: reqwest::Client) -> Self {
        Self {
            config,
            redirect_uri,
            http,
            discovery: tokio::sync::Mutex::new(DiscoveryCache::default()),
            jwks: tokio::sync::Mutex::new(JwksState::default()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts into `metrics` (the service's) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn count<T>(&self, call: IdentityProviderCall, r: Result<T, IdpError>) -> Result<T, IdpError> {
        self.metrics.identity_provider_call(call, call_result(&r));
        r
    }

    /// The name the sign-in page shows.
    pub fn display_name(&self) -> &str {
        self.config.display_name()
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The discovery document, cached; a stale copy serves while the provider is unreachable.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, IdpError> {
        let asked = Instant::now();
        let mut cache = self.discovery.lock().await;
        if let Some(c) = cache.doc.as_ref() {
            if c.fetched.elapsed() < DOCUMENT_TTL {
                return Ok(c.value.clone());
            }
        }
        // A fetch that failed while this caller waited for the lock is its answer too.
        if let Some((at, e)) = &cache.failed {
            if *at >= asked {
                return match cache.doc.as_ref() {
                    Some(c) => Ok(c.value.clone()),
                    None => Err(e.clone()),
                };
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let fetched = self.fetch_discovery(&url).await;
        match self.count(IdentityProviderCall::Discovery, fetched) {
            Ok(d) => {
                let d = Arc::new(d);
                cache.doc = Some(Cached {
                    value: d.clone(),
                    fetched: Instant::now(),
                });
                cache.failed = None;
                Ok(d)
            }
            Err(e) => {
                cache.failed = Some((Instant::now(), e.clone()));
                match cache.doc.as_ref() {
                    Some(c) => {
                        tracing::warn!(error = %e, "identity provider discovery failed; using the cached document");
                        Ok(c.value.clone())
                    }
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch_discovery(&self, url: &str) -> Result<Discovery, IdpError> {
        let body = self.get(url, None).await?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
            IdpError::Unavailable(format!("the provider's discovery document is invalid: {e}"))
        })?;
        // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
        if d.issuer != self.config.issuer {
            return Err(IdpError::Unavailable(format!(
                "the provider's discovery document names issuer {:?}, not the configured {:?}",
                d.issuer, self.config.issuer
            )));
        }
        Ok(d)
    }

    /// Where to send the browser: the provider's authorization endpoint with this sign-in's
    /// `state`, `nonce` and PKCE challenge.
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Result<String, IdpError> {
        let d = self.discovery().await?;
        let mut url = url::Url::parse(&d.authorization_endpoint).map_err(|e| {
            IdpError::Unavailable(format!(
                "the provider's authorization endpoint is invalid: {e}"
            ))
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Exchanges the callback's code and checks the answer: the signed-in user and their
    /// claims, and the provider's tokens to check them again with.
    pub async fn sign_in(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: i64,
    ) -> Result<(IdpUser, IdpTokens), IdpError> {
        let d = self.discovery().await?;
        let answer = self.exchange(&d, code, verifier).await?;
        let id_token = answer
            .id_token
            .ok_or_else(|| IdpError::Invalid("the provider's answer has no ID token".into()))?;
        let claims = self
            .verify_id_token(&d, &id_token, Some(nonce), now)
            .await?;
        let sub = claims::string(&claims, "sub").unwrap_or_default();
        let userinfo = if claims::lacks_profile(&claims, &self.config.groups_claim) {
            match (&d.userinfo_endpoint, &answer.access_token) {
                (Some(endpoint), Some(at)) => Some(self.userinfo(endpoint, at, &sub).await?),
                _ => None,
            }
        } else {
            None
        };
        let user = claims::user(&self.config, &d.issuer, &claims, userinfo.as_ref())?;
        let tokens = IdpTokens {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
        };
        Ok((user, tokens))
    }

    async fn exchange(
        &self,
        d: &Discovery,
        code: &str,
        verifier: &str,
    ) -> Result<TokenAnswer, IdpError> {
        let r = self.exchange_code(d, code, verifier).await;
        self.count(IdentityProviderCall::Token, r)
    }

    async fn exchange_code(
        &self,
        d: &Discovery,
        code: &str,
        verifier: &str,
    ) -> Result<TokenAnswer, IdpError> {
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let (ok, answer) = self.token_request(d, form).await?;
        if !ok || answer.error.is_some() {
            return Err(IdpError::Refused(
                format!(
                    "the provider refused the code: {}",
                    refusal_words(&answer, "no error code")
                )
                .trim_end()
                .to_owned(),
            ));
        }
        Ok(answer)
    }

    /// `form` to the token endpoint, with the client's authentication: whether the status
    /// was a success, and the JSON answer. A server error is `Unavailable`.
    async fn token_request<'a>(
        &'a self,
        d: &Discovery,
        mut form: Vec<(&'a str, &'a str)>,
    ) -> Result<(bool, TokenAnswer), IdpError> {
        let mut req = self.http.post(&d.token_endpoint);
        let secret = self.config.client_secret.as_deref();
        // RFC 8414: absent means client_secret_basic.
        let basic = d
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == "client_secret_basic"));
        match secret {
            Some(secret) if basic => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.config.client_id), Some(enc(secret)));
            }
            Some(secret) => {
                form.push(("client_id", self.config.client_id.as_str()));
                form.push(("client_secret", secret));
            }
            None => form.push(("client_id", self.config.client_id.as_str())),
        }
        let resp = crate::outbound::send(req.header("accept", "application/json").form(&form))
            .await
            .map_err(|e| IdpError::Unavailable(format!("no answer from the provider: {e}")))?;
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(IdpError::Unavailable(format!(
                "the provider answered {status}"
            )));
        }
        let body = read_bounded(resp).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            IdpError::Invalid(format!(
                "the provider's token answer is not JSON ({status}): {e}"
            ))
        })?;
        Ok((status.is_success(), answer))
    }

    /// Checks the user `known` again at the provider (deprovisioning): the refresh token is
    /// redeemed when there is one (`invalid_grant` is the provider's refusal), else the access
    /// token is shown to userinfo (`401` is the refusal). Either refusal, and having nothing to
    /// check with, is `Refused`; an unreachable provider is `Unavailable`.
    pub async fn recheck(&self, known: &IdpUser, tokens: &IdpTokens, now: i64) -> Recheck {
        let r = self.check_again(known, tokens, now).await;
        // As `recheck.rs` acts on it: only a refusal (or claims that no longer allow the
        // user) ends access; anything else is tried again.
        let result = match &r.user {
            Ok(_) => CallResult::Ok,
            Err(IdpError::Refused(_) | IdpError::Claims(_)) => CallResult::Refused,
            Err(IdpError::Unavailable(_) | IdpError::Invalid(_)) => CallResult::Unavailable,
        };
        self.metrics
            .identity_provider_call(IdentityProviderCall::Recheck, result);
        r
    }

    async fn check_again(&self, known: &IdpUser, tokens: &IdpTokens, now: i64) -> Recheck {
        let sub = match known
            .key
            .strip_prefix(&self.config.issuer)
            .and_then(|rest| rest.strip_prefix('#'))
        {
            Some(sub) => sub,
            None => {
                return Recheck::failed(
                    tokens,
                    IdpError::Invalid("not a user of this provider".into()),
                )
            }
        };
        let d = match self.discovery().await {
            Ok(d) => d,
            Err(e) => return Recheck::failed(tokens, e),
        };
        let (id_token, kept) = match (&tokens.refresh_token, &tokens.access_token) {
            (Some(refresh), _) => {
                let answer = match self.refresh(&d, refresh).await {
                    Ok(a) => a,
                    Err(e) => return Recheck::failed(tokens, e),
                };
                let Some(access) = answer.access_token else {
                    let e = IdpError::Invalid(
                        "the provider's refresh answer has no access token".into(),
                    );
                    return Recheck::failed(tokens, e);
                };
                // From here on the provider may have rotated the refresh token: whatever
                // happens next, the new one is what must be kept.
                let kept = IdpTokens {
                    access_token: Some(access),
                    // A provider that does not rotate refresh tokens answers without one.
                    refresh_token: Some(answer.refresh_token.unwrap_or_else(|| refresh.clone())),
                };
                (answer.id_token, kept)
            }
            (None, Some(_)) => (None, tokens.clone()),
            (None, None) => {
                let e = IdpError::Refused(
                    "no token of the provider's is stored to check the user with".into(),
                );
                return Recheck::failed(tokens, e);
            }
        };
        let user = self
            .rechecked_claims(&d, known, sub, id_token.as_deref(), &kept, now)
            .await;
        Recheck { tokens: kept, user }
    }

    /// The claims after a check's token request: the refreshed ID token's (verified), then
    /// userinfo's with the access token.
    async fn rechecked_claims(
        &self,
        d: &Discovery,
        known: &IdpUser,
        sub: &str,
        id_token: Option<&str>,
        tokens: &IdpTokens,
        now: i64,
    ) -> Result<IdpUser, IdpError> {
        let id_claims = match id_token {
            Some(t) => Some(self.verify_refreshed_id_token(d, t, sub, now).await?),
            None => None,
        };
        let wants_userinfo = id_claims
            .as_ref()
            .is_none_or(|c| claims::lacks_profile(c, &self.config.groups_claim));
        let userinfo = match (&d.userinfo_endpoint, &tokens.access_token, wants_userinfo) {
            (Some(endpoint), Some(access), true) => {
                Some(self.checked_userinfo(endpoint, access, sub).await?)
            }
            (None, _, true) if tokens.refresh_token.is_none() => {
                return Err(IdpError::Refused(
                    "no refresh token is stored and the provider has no userinfo endpoint".into(),
                ))
            }
            _ => None,
        };
        claims::rechecked_user(
            &self.config,
            &d.issuer,
            sub,
            id_claims.as_ref(),
            userinfo.as_ref(),
            known,
        )
    }

    /// The refresh grant. Only `invalid_grant` refuses the user: any other error (say
    /// `invalid_client` after a secret rotation) is the service's problem, not theirs.
    async fn refresh(&self, d: &Discovery, refresh_token: &str) -> Result<TokenAnswer, IdpError> {
        let r = self.refresh_grant(d, refresh_token).await;
        self.count(IdentityProviderCall::Token, r)
    }

    async fn refresh_grant(
        &self,
        d: &Discovery,
        refresh_token: &str,
    ) -> Result<TokenAnswer, IdpError> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let (ok, answer) = self.token_request(d, form).await?;
        match answer.error.as_deref() {
            Some("invalid_grant") => Err(IdpError::Refused(format!(
                "the provider refused the refresh token: {}",
                refusal_words(&answer, "")
            ))),
            _ if !ok || answer.error.is_some() => Err(IdpError::Invalid(format!(
                "the provider refused the refresh: {}",
                refusal_words(&answer, "no error code")
            ))),
            _ => Ok(answer),
        }
    }

    /// A refreshed ID token (OIDC Core §12.2): signed by the provider, for us, unexpired, and
    /// about the same user.
    async fn verify_refreshed_id_token(
        &self,
        d: &Discovery,
        token: &str,
        sub: &str,
        now: i64,
    ) -> Result<serde_json::Map<String, Value>, IdpError> {
        let claims = self.verify_id_token(d, token, None, now).await?;
        if claims::string(&claims, "sub").as_deref() != Some(sub) {
            return Err(IdpError::Invalid(
                "the refreshed ID token is about another user".into(),
            ));
        }
        Ok(claims)
    }

    /// Userinfo at a check: `401` is the provider's refusal of the token, and so of the user.
    async fn checked_userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
        sub: &str,
    ) -> Result<serde_json::Map<String, Value>, IdpError> {
        let r = self
            .checked_userinfo_call(endpoint, access_token, sub)
            .await;
        self.count(IdentityProviderCall::Userinfo, r)
    }

    async fn checked_userinfo_call(
        &self,
        endpoint: &str,
        access_token: &str,
        sub: &str,
    ) -> Result<serde_json::Map<String, Value>, IdpError> {
        let resp = crate::outbound::send(
            self.http
                .get(endpoint)
                .header("accept", "application/json")
                .bearer_auth(access_token),
        )
        .await
        .map_err(|e| IdpError::Unavailable(format!("no answer from the provider: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(IdpError::Refused(
                "the provider's userinfo endpoint refused the access token (401)".into(),
            ));
        }
        if !status.is_success() {
            return Err(IdpError::Unavailable(format!(
                "the provider answered {status} at userinfo"
            )));
        }
        userinfo_claims(&read_bounded(resp).await?, sub)
    }

    /// OIDC Core §3.1.3.7: signature by the provider's key, `iss`, `aud`/`azp`, `exp`, `iat`
    /// and `nonce`.
    async fn verify_id_token(
        &self,
        d: &Discovery,
        token: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<serde_json::Map<String, Value>, IdpError> {
        let jws = jws::decode(token).map_err(IdpError::Invalid)?;
        let key = self.key_for(d, &jws).await?;
        id_token_claims(jws, &key, &d.issuer, &self.config.client_id, nonce, now)
    }

    /// The JWKS key the token names; an unknown `kid` fetches the JWKS again, since providers
    /// rotate keys (at most once per `JWKS_REFETCH_INTERVAL`, so a provider signing with
    /// keys it does not publish cannot make every sign-in fetch).
    async fn key_for(&self, d: &Discovery, jws: &jws::Jws<'_>) -> Result<Jwk, IdpError> {
        let unpublished = || {
            IdpError::Invalid(
                "the ID token is signed with a key the provider does not publish".into(),
            )
        };
        let asked = Instant::now();
        let mut state = self.jwks.lock().await;
        let now = Instant::now();
        if let Some(c) = state.cache.as_ref() {
            if now.duration_since(c.fetched) < DOCUMENT_TTL {
                if let Some(k) = jws.key_in(&c.keys) {
                    return Ok(k.clone());
                }
                if c.unknown_kid_refetch
                    .is_some_and(|t| now.duration_since(t) < JWKS_REFETCH_INTERVAL)
                {
                    return Err(unpublished());
                }
            }
        }
        // A fetch that failed while this caller waited for the lock is its answer too.
        if let Some((at, e)) = &state.failed {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        let refetch_for_unknown = state.cache.is_some();
        let fetched = match self.get(&d.jwks_uri, None).await {
            Ok(body) => jws::parse_jwks(&body).map_err(IdpError::Unavailable),
            Err(e) => Err(e),
        };
        let fetched = self.count(IdentityProviderCall::Jwks, fetched);
        let keys = match fetched {
            Ok(keys) => keys,
            Err(e) => {
                state.failed = Some((Instant::now(), e.clone()));
                // Past its hour, a cached key still verifies while the provider is unreachable.
                if let Some(k) = state.cache.as_ref().and_then(|c| jws.key_in(&c.keys)) {
                    tracing::warn!(error = %e, "identity provider JWKS refresh failed; using the cached keys");
                    return Ok(k.clone());
                }
                return Err(e);
            }
        };
        let key = jws.key_in(&keys).cloned();
        state.cache = Some(JwksCache {
            keys,
            fetched: now,
            unknown_kid_refetch: refetch_for_unknown.then_some(now),
        });
        state.failed = None;
        key.ok_or_else(unpublished)
    }

    async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
        sub: &str,
    ) -> Result<serde_json::Map<String, Value>, IdpError> {
        let r = match self.get(endpoint, Some(access_token)).await {
            Ok(body) => userinfo_claims(&body, sub),
            Err(e) => Err(e),
        };
        self.count(IdentityProviderCall::Userinfo, r)
    }

    async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Vec<u8>, IdpError> {
        let mut req = self.http.get(url).header("accept", "application/json");
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = crate::outbound::send(req)
            .await
            .map_err(|e| IdpError::Unavailable(format!("no answer from the provider: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(IdpError::Unavailable(format!(
                "the provider answered {status} for {url}"
            )));
        }
        read_bounded(resp).await
    }
}

/// The claims of an ID token whose key is known: its signature by `key`, then OIDC Core
/// §3.1.3.7 (`iss`, `aud`/`azp`, `exp`, `iat`, `nonce`, `sub`). The claims only when every
/// check passed.
pub fn id_token_claims(
    jws: jws::Jws<'_>,
    key: &Jwk,
    issuer: &str,
    client_id: &str,
    nonce: Option<&str>,
    now: i64,
) -> Result<serde_json::Map<String, Value>, IdpError> {
    jws.verify_with(key).map_err(IdpError::Invalid)?;
    claims::check_id_token(&jws.claims, issuer, client_id, nonce, now, LEEWAY)?;
    Ok(jws.claims)
}

/// A refusal's error code and description, for logs and pages (the provider's words, never a
/// token).
fn refusal_words(answer: &TokenAnswer, no_code: &str) -> String {
    format!(
        "{} {}",
        answer.error.as_deref().unwrap_or(no_code),
        answer.error_description.as_deref().unwrap_or("")
    )
    .trim()
    .to_owned()
}

/// A userinfo answer: a JSON object about the ID token's subject `sub` (OIDC Core §5.3.2).
pub fn userinfo_claims(body: &[u8], sub: &str) -> Result<serde_json::Map<String, Value>, IdpError> {
    let info: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        IdpError::Invalid(format!(
            "the provider's userinfo answer is not a JSON object: {e}"
        ))
    })?;
    if claims::string(&info, "sub").as_deref() != Some(sub) {
        return Err(IdpError::Invalid(
            "the provider's userinfo answer is about another user".into(),
        ));
    }
    Ok(info)
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, IdpError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| IdpError::Unavailable(format!("reading the provider's answer: {e}")))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(IdpError::Unavailable(
                "the provider's answer is too large".into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    #[tokio::test]
    async fn jwks_fetches_waiting_on_an_unresponsive_provider_share_one_timeout() {
        // Accepts connections, never answers: each fetch runs into the 10 s timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let config: OidcConfig =
            serde_yaml::from_str(&format!("{{issuer: '{url}', client_id: warden}}")).unwrap();
        let p = OidcProvider::new(
            config,
            "http://127.0.0.1/login/callback".into(),
            crate::vault::provider::http_client(&crate::outbound::Outbound::default()).unwrap(),
        );
        let d = Discovery {
            issuer: url.clone(),
            authorization_endpoint: format!("{url}/authorize"),
            token_endpoint: format!("{url}/token"),
            userinfo_endpoint: None,
            jwks_uri: format!("{url}/jwks"),
            token_endpoint_auth_methods_supported: None,
        };
        let token = format!(
            "{}.{}.{}",
            B64.encode(br#"{"alg":"RS256","kid":"k1"}"#),
            B64.encode(br#"{"sub":"u1"}"#),
            B64.encode([0u8; 256])
        );
        let jws = jws::decode(&token).unwrap();
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            p.key_for(&d, &jws),
            p.key_for(&d, &jws),
            p.key_for(&d, &jws)
        );
        let elapsed = started.elapsed();
        for r in [a, b, c] {
            assert!(matches!(r, Err(IdpError::Unavailable(_))), "{r:?}");
        }
        assert!(
            elapsed < Duration::from_secs(19),
            "three sign-ins waited {elapsed:?}: one timeout each, in turn"
        );
        drop(silent);
    }
}

//! HTTP handlers: parse, call into `flows`, render. No OAuth decisions are made here.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use url::Url;

use crate::client_address::TrustedProxies;
use crate::config::RegistrationMode;
use crate::error::{Error, Result};
use crate::flows::authorize::{self, AuthorizeError, AuthorizeGrant, Params};
use crate::flows::token::{self, ClientCredentials, TokenContext};
use crate::flows::{
    self, constant_time_eq, hash_secret, lookup_client, random_id, random_token, split_scope,
    RegisteredClient,
};
use crate::flows::{consent, login};
use crate::html;
use crate::identity;
use crate::oidc;
use crate::ratelimit::ClientKey;
use crate::store::{FlowUser, IdpLogin, IdpUserRecord, PendingFlow, Session};
use crate::vault::provider::ProviderError;
use crate::AppState;

/// A pending sign-in (login form) stays usable this long.
const FLOW_TTL: i64 = 600;
/// A sign-in session (cookie) lasts this long.
const SESSION_TTL: i64 = 12 * 3600;
/// Wrong passwords allowed per pending sign-in before it is dropped. (Per account, the
/// throttle in `flows::login` applies on top.)
const MAX_LOGIN_ATTEMPTS: u32 = 5;
const BODY_LIMIT: usize = 64 * 1024;

mod app;

pub fn router(state: AppState) -> Router {
    let base = issuer_path(&state.config().authorization_server.issuer);
    // Endpoints browser-based MCP clients call from script: CORS without credentials.
    let api = Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/register", post(register))
        .route("/token", post(token_endpoint))
        .route("/revoke", post(revoke_endpoint))
        .layer(middleware::from_fn(cors));
    // Browser navigation only: no CORS.
    let endpoints = Router::new()
        .route("/healthz", get(healthz))
        .route("/authorize", get(authorize))
        .route("/login", post(login))
        .route("/consent", post(consent_endpoint))
        .route(crate::vault::CALLBACK_PATH, get(upstream_callback))
        .route(IDP_START_PATH, get(idp_start))
        .route(crate::oidc::CALLBACK_PATH, get(idp_callback))
        .route(app::SIGN_IN_PATH, get(app::sign_in))
        .route(app::CONNECT_PATH, get(app::connect))
        .route(
            app::SIGNED_OUT_PATH,
            get(app::signed_out).post(app::signed_out_post),
        )
        .merge(api);
    let router = if base.is_empty() {
        endpoints
    } else {
        // Issuer with a path: endpoints live under it, and RFC 8414 §3 puts the metadata at
        // the path-inserted well-known URL.
        Router::new()
            .route("/healthz", get(healthz))
            .route(
                &format!("/.well-known/oauth-authorization-server{base}"),
                get(metadata).layer(middleware::from_fn(cors)),
            )
            .nest(&base, endpoints)
    };
    router
        .merge(app::gateway_paths())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Answers CORS preflights and marks responses readable from any origin. No credentials are
/// ever allowed cross-origin, so cookies never ride along.
async fn cors(req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, MCP-Protocol-Version"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}

/// The issuer's path without a trailing slash ("" for a bare origin).
fn issuer_path(issuer: &str) -> String {
    Url::parse(issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

async fn healthz() -> &'static str {
    "ok"
}

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn metadata(State(s): State<AppState>) -> Response {
    let c = s.config();
    let iss = &c.authorization_server.issuer;
    let mut metadata = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "registration_endpoint": format!("{iss}/register"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": c.scopes_supported(),
        "client_id_metadata_document_supported": false,
    });
    // Closed registration is not advertised (RFC 8414: the endpoint is optional).
    if c.authorization_server.registration.mode == RegistrationMode::Closed {
        if let Some(m) = metadata.as_object_mut() {
            m.remove("registration_endpoint");
        }
    }
    Json(metadata).into_response()
}

async fn jwks(State(s): State<AppState>) -> Response {
    let mut resp = Json(s.keys().jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

/// The client a request's per-address limits count it against (README, "Client addresses
/// behind proxies"): the TCP peer, or, when the peer is a trusted proxy, the client it
/// forwards for. Requests without a peer address (the router driven in-process) share one.
struct ClientAddr(ClientKey);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let trusted = TrustedProxies(&s.config().authorization_server.trusted_proxies);
        let forwarded_for = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes);
        Ok(ClientAddr(ClientKey::of(
            peer.map(|p| trusted.client_address(p, forwarded_for)),
        )))
    }
}

/// A request that may start a sign-in (leave a pending record behind) draws one from its
/// client's budget (`pending_flows.rate_limit_per_minute`); spent: `429` with a page.
fn admit_new_flow(s: &AppState, client: ClientKey) -> Result<()> {
    s.new_flow_limit()
        .check(client, s.now())
        .map_err(|retry_after| {
            tracing::warn!(?client, "sign-in refused: rate limit for this address");
            Error::RetryLater {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "temporarily_unavailable",
                description: "Too many sign-ins were started from your network. Wait a minute, then return to the application and start again.".into(),
                retry_after,
                page: true,
            }
        })
}

/// The pending records are at `pending_flows.max_pending`.
fn pending_full() -> Error {
    tracing::warn!("sign-in refused: too many sign-ins are pending");
    Error::RetryLater {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "temporarily_unavailable",
        description: "Too many sign-ins are in progress. Wait a minute, then return to the application and start again.".into(),
        retry_after: 60,
        page: true,
    }
}

/// Stores a pending flow within `pending_flows.max_pending`.
fn store_flow(s: &AppState, flow: &PendingFlow) -> Result<()> {
    if s.store().insert_flow(flow, s.pending_limit())? {
        Ok(())
    } else {
        Err(pending_full())
    }
}

async fn register(
    State(s): State<AppState>,
    ClientAddr(client_key): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let now = s.now();
    let limits = &s.config().authorization_server.registration;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    flows::register::admit(limits, authorization)?;
    if let Err(retry_after) = s.registration_limit().check(client_key, now) {
        tracing::warn!(?client_key, "registration refused: rate limit");
        return Err(registration_later(
            retry_after,
            "too many registrations from this address",
        ));
    }
    let (client, body) = flows::register::register(&body, now, limits)?;
    let max_unused = limits.max_unused_clients;
    let stored = s
        .blocking(move |st| Ok(st.store().insert_client(&client, max_unused)?))
        .await?;
    if !stored {
        tracing::warn!(
            max_unused,
            "registration refused: too many unused registrations"
        );
        return Err(registration_later(
            60,
            "too many registrations are waiting to be used",
        ));
    }
    tracing::info!(client_id = %body["client_id"], "client registered");
    Ok(no_store((StatusCode::CREATED, Json(body)).into_response()))
}

fn registration_later(retry_after: u64, description: &str) -> Error {
    Error::RetryLater {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "temporarily_unavailable",
        description: description.into(),
        retry_after,
        page: false,
    }
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = StatusCode::FOUND.into_response();
            resp.headers_mut().insert(header::LOCATION, v);
            html::secure_headers(&mut resp);
            resp
        }
        Err(_) => Error::page(StatusCode::BAD_REQUEST, "invalid redirect").into_response(),
    }
}

/// The sign-in session cookie (base name; `__Host-` is prefixed for an https issuer).
const SESSION_COOKIE: &str = "warden_session";
/// The browser-binding cookie pending flows are tied to (login CSRF protection).
const FLOW_COOKIE: &str = "warden_flow";
/// Marks a browser that signed in to an account before (`flows::login`).
const DEVICE_COOKIE: &str = "warden_device";

fn https_issuer(s: &AppState) -> bool {
    s.config()
        .authorization_server
        .issuer
        .starts_with("https://")
}

fn cookie_name(s: &AppState, base: &str) -> String {
    // `__Host-` pins the cookie to this origin; browsers accept it only with `Secure`.
    if https_issuer(s) {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

fn cookie_value(s: &AppState, headers: &HeaderMap, base: &str) -> Option<String> {
    let name = cookie_name(s, base);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

fn set_cookie(s: &AppState, base: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
    let secure = if https_issuer(s) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(s, base)
    ))
    .ok()
}

fn with_cookie(mut resp: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The cookies of the browser driving an authorization.
struct BrowserCookies {
    session: Option<String>,
    flow: Option<String>,
    device: Option<String>,
}

impl BrowserCookies {
    fn from_headers(s: &AppState, headers: &HeaderMap) -> Self {
        Self {
            session: cookie_value(s, headers, SESSION_COOKIE),
            flow: cookie_value(s, headers, FLOW_COOKIE),
            device: cookie_value(s, headers, DEVICE_COOKIE),
        }
    }
}

/// The browser's binding secret: the one it already carries (so several tabs can sign in at
/// once), or a fresh one.
fn browser_binding(existing: Option<String>) -> String {
    existing
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(random_token)
}

/// A pending flow continues only in the browser that started it.
fn check_browser(flow: &PendingFlow, cookie: Option<&str>) -> Result<()> {
    check_browser_binding(&flow.browser, cookie)
}

/// `browser` is the SHA-256 of the binding cookie the flow was started with.
fn check_browser_binding(browser: &str, cookie: Option<&str>) -> Result<()> {
    let bound = match cookie {
        Some(c) if !browser.is_empty() => {
            constant_time_eq(hash_secret(c).as_bytes(), browser.as_bytes())
        }
        _ => false,
    };
    if bound {
        Ok(())
    } else {
        tracing::info!("pending flow presented without its browser cookie");
        Err(Error::page(
            StatusCode::FORBIDDEN,
            "This sign-in was started in another browser, or the browser did not send its sign-in cookie. Return to the application and start again.",
        ))
    }
}

fn endpoint(s: &AppState, path: &str) -> String {
    format!(
        "{}{path}",
        issuer_path(&s.config().authorization_server.issuer)
    )
}

fn redirect_host(uri: &str) -> String {
    Url::parse(uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

fn expired_page() -> Error {
    Error::page(
        StatusCode::BAD_REQUEST,
        "This sign-in request is unknown or has expired. Return to the application and start again.",
    )
}

fn too_many_attempts() -> Error {
    Error::page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many failed sign-in attempts. Wait a few minutes, then return to the application and start again.",
    )
}

/// The consent page for a flow waiting on `user`'s decision; `session_secret` is the
/// browser's session cookie, which the CSRF token is bound to.
fn consent_page(
    s: &AppState,
    client: &RegisteredClient,
    flow: &PendingFlow,
    user: &FlowUser,
    session_secret: &str,
) -> Response {
    let scopes = split_scope(&flow.request.scope);
    html::consent_form(
        StatusCode::OK,
        &html::ConsentForm {
            action: &endpoint(s, "/consent"),
            flow_id: &flow.id,
            csrf: &consent::csrf_token(&flow.csrf, session_secret),
            client_name: client.display_name(),
            client_id: &client.client_id,
            verified: client.pre_registered,
            redirect_host: &redirect_host(&flow.request.redirect_uri),
            resource: &flow.request.resource,
            scopes: &scopes,
            email: &shown_email(s, &user.user),
            upstream: s
                .config()
                .route_by_resource(&flow.request.resource)
                .and_then(|r| r.upstream_oauth2())
                .map(|u| u.provider_name())
                .as_deref(),
        },
    )
}

/// Starts the consent step: a new single-use flow bound to this browser and session.
fn begin_consent(
    s: &AppState,
    client: &RegisteredClient,
    request: AuthorizeGrant,
    browser_hash: String,
    user: FlowUser,
    session_secret: &str,
) -> Result<Response> {
    let flow = PendingFlow {
        id: random_token(),
        csrf: random_token(),
        request,
        expires_at: s.now() + FLOW_TTL,
        browser: browser_hash,
        user: Some(user.clone()),
        next: None,
    };
    store_flow(s, &flow)?;
    tracing::info!(client_id = %flow.request.client_id, sub = %user.user, "asking for consent");
    Ok(consent_page(s, client, &flow, &user, session_secret))
}

/// A browser request's query parameters (repeats detected).
fn query_params(query: Option<String>) -> Params {
    Params::new(
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
    )
}

/// The user approved (or needs not approve) the client: issue the code, unless the server
/// needs an upstream account the user has not connected, in which case the browser goes to
/// the provider first and the code is issued at `/upstream/callback`.
fn finish_authorization(
    s: &AppState,
    grant: AuthorizeGrant,
    email: &str,
    sid: &str,
    browser_hash: &str,
) -> Result<Response> {
    let config = s.config();
    let now = s.now();
    let upstream_route = config
        .route_by_resource(&grant.resource)
        .filter(|r| r.upstream_oauth2().is_some())
        .map(|r| r.name.clone());
    if let Some(route) = upstream_route {
        if !s.vault().holds_usable(email, &route, now)? {
            let url = s
                .vault()
                .begin(
                    &route,
                    grant,
                    email,
                    sid,
                    browser_hash,
                    s.pending_limit(),
                    None,
                )?
                .ok_or_else(pending_full)?;
            tracing::info!(sub = %email, route = %route, "connecting the upstream account");
            return Ok(redirect(&url));
        }
    }
    let code = authorize::issue_code(s.store().as_ref(), &grant, email, sid, now)?;
    tracing::info!(client_id = %grant.client_id, sub = %email, scope = %grant.scope, "code issued");
    Ok(redirect(&authorize::success_url(
        &grant,
        &config.authorization_server.issuer,
        &code,
    )?))
}

async fn authorize(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    admit_new_flow(&s, client)?;
    browser_query(s, &headers, query, authorize_blocking).await
}

fn authorize_blocking(s: &AppState, params: Params, cookies: BrowserCookies) -> Result<Response> {
    let config = s.config();
    let issuer = &config.authorization_server.issuer;
    let now = s.now();
    let client = match params.get("client_id") {
        Some(id) => lookup_client(config, s.store().as_ref(), id)?,
        None => None,
    };
    let grant = match authorize::validate(config, &params, client.as_ref()) {
        Ok(g) => g,
        Err(AuthorizeError::Page(msg)) => return Err(Error::page(StatusCode::BAD_REQUEST, msg)),
        Err(e) => {
            tracing::info!(error = ?e, "authorization request rejected");
            return match authorize::error_url(&e, issuer) {
                Some(url) => Ok(redirect(&url?)),
                None => Err(Error::page(StatusCode::BAD_REQUEST, "invalid request")),
            };
        }
    };
    let Some(client) = client else {
        return Err(Error::page(StatusCode::BAD_REQUEST, "unknown client_id"));
    };
    let browser = browser_binding(cookies.flow);
    let flow_cookie = set_cookie(s, FLOW_COOKIE, &browser, FLOW_TTL);

    // Already signed in: issue the code straight away if this client is approved,
    // otherwise ask for consent.
    if let Some(secret) = cookies.session {
        if let Some(session) = s.store().session(&hash_secret(&secret), now)? {
            if user_exists(s, &session.user)? {
                if !consent::required(s.store().as_ref(), &client, &grant, &session.user)? {
                    let resp = finish_authorization(
                        s,
                        grant,
                        &session.user,
                        &session.sid,
                        &hash_secret(&browser),
                    )?;
                    return Ok(with_cookie(resp, flow_cookie));
                }
                let user = FlowUser {
                    user: session.user,
                    sid: session.sid,
                };
                let resp = begin_consent(s, &client, grant, hash_secret(&browser), user, &secret)?;
                return Ok(with_cookie(resp, flow_cookie));
            }
        }
    }

    let flow = PendingFlow {
        id: random_token(),
        csrf: random_token(),
        request: grant,
        expires_at: now + FLOW_TTL,
        browser: hash_secret(&browser),
        user: None,
        next: None,
    };
    store_flow(s, &flow)?;
    // Only the identity provider: straight to it.
    if s.oidc().is_some() && config.identity_provider.local.users.is_empty() {
        return Ok(with_cookie(redirect(&idp_start_url(s, &flow)), flow_cookie));
    }
    let resp = sign_in_page(s, StatusCode::OK, &flow, client.display_name(), "", None);
    Ok(with_cookie(resp, flow_cookie))
}

/// The sign-in page: the password form, and the identity provider's button when there is one.
fn sign_in_page(
    s: &AppState,
    status: StatusCode,
    flow: &PendingFlow,
    client_name: &str,
    email: &str,
    error: Option<&str>,
) -> Response {
    let idp_href = idp_start_url(s, flow);
    html::login_form(
        status,
        &html::LoginForm {
            action: &endpoint(s, "/login"),
            flow_id: &flow.id,
            csrf: &flow.csrf,
            client_name,
            redirect_host: &redirect_host(&flow.request.redirect_uri),
            email,
            error,
            idp: s.oidc().map(|o| (o.display_name(), idp_href.as_str())),
        },
    )
}

/// Where a flow's sign-in at the identity provider starts (the flow id is bound to the
/// browser's cookie, so the link is useless elsewhere).
fn idp_start_url(s: &AppState, flow: &PendingFlow) -> String {
    format!(
        "{}{IDP_START_PATH}?flow={}",
        s.config().authorization_server.issuer,
        flow.id
    )
}

/// Whether the user behind a key (email, or `{iss}#{sub}`) still exists.
fn user_exists(s: &AppState, key: &str) -> Result<bool> {
    Ok(identity::resolve(s.config(), s.store().as_ref(), key)?.is_some())
}

/// The email a page shows for a user's key.
fn shown_email(s: &AppState, key: &str) -> String {
    identity::resolve(s.config(), s.store().as_ref(), key)
        .ok()
        .flatten()
        .map(|i| i.email)
        .unwrap_or_else(|| key.to_owned())
}

async fn login(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let cookies = BrowserCookies::from_headers(&s, &headers);
    let attempt = s
        .blocking(move |st| login_begin(st, Params::new(pairs), cookies))
        .await?;
    // The check and its bookkeeping run to the end even if the browser goes away, so a
    // reservation never outlives its attempt.
    let task = tokio::spawn(async move {
        let password = attempt.password.clone();
        match s.authenticate(attempt.email.clone(), password).await {
            Ok(user) => s.blocking(move |st| login_finish(st, attempt, user)).await,
            Err(e) => {
                let r = attempt.reservation;
                s.blocking(move |st| Ok(login::abandoned(st.store().as_ref(), &r)?))
                    .await?;
                Err(e)
            }
        }
    });
    task.await
        .map_err(|e| Error::Internal(anyhow::anyhow!("sign-in task failed: {e}")))?
}

/// Runs a browser form post (consent) on the blocking pool with its fields and cookies.
async fn browser_form(
    s: AppState,
    headers: &HeaderMap,
    body: &[u8],
    handle: fn(&AppState, Params, BrowserCookies) -> Result<Response>,
) -> Result<Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let cookies = BrowserCookies::from_headers(&s, headers);
    s.blocking(move |st| handle(st, Params::new(pairs), cookies))
        .await
}

/// Runs a browser navigation (`/authorize`, app sign-in, connect) on the blocking pool with
/// its query parameters and cookies.
async fn browser_query(
    s: AppState,
    headers: &HeaderMap,
    query: Option<String>,
    handle: fn(&AppState, Params, BrowserCookies) -> Result<Response>,
) -> Result<Response> {
    let params = query_params(query);
    let cookies = BrowserCookies::from_headers(&s, headers);
    s.blocking(move |st| handle(st, params, cookies)).await
}

/// A sign-in whose form checked out and whose attempt is reserved; its password is next.
struct LoginAttempt {
    flow: PendingFlow,
    email: String,
    password: String,
    throttle: login::Throttle,
    reservation: login::Reservation,
    /// The device cookie the browser presented, replaced on success.
    device_cookie: Option<String>,
}

/// Checks the form and reserves the attempt (or refuses it: 429 while its bucket is locked).
fn login_begin(s: &AppState, params: Params, cookies: BrowserCookies) -> Result<LoginAttempt> {
    let now = s.now();
    let flow_id = params.get("flow").ok_or_else(expired_page)?;
    let flow = s.store().flow(flow_id, now)?.ok_or_else(expired_page)?;
    if flow.user.is_some() {
        // A flow waiting for consent is past sign-in.
        return Err(expired_page());
    }
    check_browser(&flow, cookies.flow.as_deref())?;
    let csrf = params.get("csrf").unwrap_or("");
    if !constant_time_eq(csrf.as_bytes(), flow.csrf.as_bytes()) {
        return Err(Error::page(
            StatusCode::FORBIDDEN,
            "The sign-in form is invalid (CSRF check failed).",
        ));
    }
    let email = params.get("email").unwrap_or("").trim().to_owned();
    let password = params.get("password").unwrap_or("").to_owned();
    let throttle = login::throttle_for(s.store().as_ref(), &email, cookies.device.as_deref(), now)?;
    let Some(reservation) = login::reserve(s.store().as_ref(), &throttle, now)? else {
        tracing::warn!(
            trusted_device = throttle.device.is_some(),
            "sign-in refused: too many recent failures for this account"
        );
        return Err(too_many_attempts());
    };
    Ok(LoginAttempt {
        flow,
        email,
        password,
        throttle,
        reservation,
        device_cookie: cookies.device,
    })
}

/// Records the verdict on a reserved attempt and answers it; `user` is the signed-in
/// user's email when the password was right.
fn login_finish(s: &AppState, attempt: LoginAttempt, user: Option<String>) -> Result<Response> {
    let config = s.config();
    let now = s.now();
    let store = s.store().as_ref();
    let LoginAttempt {
        flow,
        email,
        throttle,
        reservation,
        device_cookie,
        ..
    } = attempt;
    let Some(user) = user.and_then(|e| config.user(&e)) else {
        login::failed(store, &reservation, now)?;
        let attempts = store.record_failed_login(&flow.id)?;
        tracing::info!(attempts, "sign-in failed");
        if attempts >= MAX_LOGIN_ATTEMPTS {
            store.delete_flow(&flow.id)?;
            return Err(too_many_attempts());
        }
        let name = match &flow.next {
            // An app sign-in or a connect: the stand-in request names the app.
            Some(_) => flow
                .request
                .client_id
                .strip_prefix(crate::flows::app::APP_CLIENT_PREFIX)
                .unwrap_or(&flow.request.client_id)
                .to_owned(),
            None => lookup_client(config, store, &flow.request.client_id)?
                .map(|c| c.display_name().to_owned())
                .unwrap_or_else(|| flow.request.client_id.clone()),
        };
        return Ok(sign_in_page(
            s,
            StatusCode::UNAUTHORIZED,
            &flow,
            &name,
            &email,
            Some("Incorrect email or password."),
        ));
    };
    login::succeeded(store, &reservation)?;

    // The flow is single use: a second submission of the same form does nothing.
    if !store.delete_flow(&flow.id)? {
        return Err(expired_page());
    }
    let device = login::remember_device(store, &throttle, device_cookie.as_deref(), now)?;
    let device_cookie = set_cookie(s, DEVICE_COOKIE, &device, login::DEVICE_TTL);
    let resp = signed_in(s, flow, &user.email)?;
    Ok(with_cookie(resp, device_cookie))
}

/// A user proved who they are (password or identity provider) in the browser of `flow`:
/// start their session, then ask for consent or answer the client (or, for an app sign-in
/// or a connect, continue there).
fn signed_in(s: &AppState, flow: PendingFlow, user: &str) -> Result<Response> {
    let store = s.store().as_ref();
    let now = s.now();
    let client = match &flow.next {
        Some(_) => None,
        None => Some(
            lookup_client(s.config(), store, &flow.request.client_id)?.ok_or_else(expired_page)?,
        ),
    };
    let secret = random_token();
    let session = Session {
        sid: random_id(),
        user: user.to_owned(),
        created_at: now,
        expires_at: now + SESSION_TTL,
    };
    store.insert_session(&hash_secret(&secret), &session)?;
    tracing::info!(client_id = %flow.request.client_id, sub = %user, sid = %session.sid, "signed in");
    let session_cookie = set_session_cookie(s, &secret);
    let client = match (client, flow.next.clone()) {
        (_, Some(next)) => {
            // The sign-in stands even when the app or server refuses the user (403 page).
            let resp = app::continue_signed_in(s, next, &session, &flow.browser)
                .unwrap_or_else(IntoResponse::into_response);
            return Ok(with_cookie(resp, session_cookie));
        }
        (Some(c), None) => c,
        (None, None) => return Err(expired_page()),
    };
    let client = &client;
    let resp = if consent::required(store, client, &flow.request, user)? {
        let who = FlowUser {
            user: user.to_owned(),
            sid: session.sid.clone(),
        };
        begin_consent(s, client, flow.request, flow.browser, who, &secret)?
    } else {
        finish_authorization(s, flow.request, user, &session.sid, &flow.browser)?
    };
    Ok(with_cookie(resp, session_cookie))
}

fn set_session_cookie(s: &AppState, secret: &str) -> Option<HeaderValue> {
    set_cookie(s, SESSION_COOKIE, secret, SESSION_TTL)
}

async fn consent_endpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    browser_form(s, &headers, &body, consent_blocking).await
}

fn consent_blocking(s: &AppState, params: Params, cookies: BrowserCookies) -> Result<Response> {
    let config = s.config();
    let issuer = &config.authorization_server.issuer;
    let now = s.now();
    let flow_id = params.get("flow").ok_or_else(expired_page)?;
    let flow = s.store().flow(flow_id, now)?.ok_or_else(expired_page)?;
    let Some(user) = flow.user.clone() else {
        // Not signed in yet: this flow belongs to the login form.
        return Err(expired_page());
    };
    check_browser(&flow, cookies.flow.as_deref())?;
    let forged = || {
        Error::page(
            StatusCode::FORBIDDEN,
            "The consent form is invalid (CSRF check failed). Return to the application and start again.",
        )
    };
    // The decision must come from the session the flow was started in.
    let secret = cookies.session.ok_or_else(forged)?;
    let session = s
        .store()
        .session(&hash_secret(&secret), now)?
        .filter(|se| se.sid == user.sid && se.user == user.user)
        .ok_or_else(forged)?;
    let csrf = params.get("csrf").unwrap_or("");
    let expected = consent::csrf_token(&flow.csrf, &secret);
    if !constant_time_eq(csrf.as_bytes(), expected.as_bytes()) {
        return Err(forged());
    }
    let approved = match params.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return Err(Error::page(
                StatusCode::BAD_REQUEST,
                "Choose Approve or Deny.",
            ))
        }
    };
    // Single use, whatever the decision.
    if !s.store().delete_flow(&flow.id)? {
        return Err(expired_page());
    }
    let grant = flow.request;
    if !approved {
        tracing::info!(client_id = %grant.client_id, sub = %session.user, "consent denied");
        let url = authorize::response_url(
            &grant.redirect_uri,
            issuer,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied the request"),
            ],
            grant.state.as_deref(),
        )?;
        return Ok(redirect(&url));
    }
    if !user_exists(s, &session.user)? {
        return Err(expired_page());
    }
    consent::remember(s.store().as_ref(), &grant, &session.user, now)?;
    tracing::info!(client_id = %grant.client_id, sub = %session.user, scope = %grant.scope, "consent given");
    finish_authorization(s, grant, &session.user, &session.sid, &flow.browser)
}

/// The upstream provider sends the browser back here (`{issuer}/upstream/callback`): store
/// the user's token, then answer the MCP client's authorization request.
async fn upstream_callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let params = query_params(query);
    let cookies = BrowserCookies::from_headers(&s, &headers);
    let Some(state) = params.get("state").map(str::to_owned) else {
        return Err(expired_page());
    };
    let flow = s
        .blocking(move |st| Ok(st.vault().take_flow(&state, st.now())?))
        .await?
        .ok_or_else(expired_page)?;
    check_browser_binding(&flow.browser, cookies.flow.as_deref())?;
    let provider = s
        .vault()
        .provider(&flow.route)
        .map(|p| p.name())
        .unwrap_or_default();
    let issuer = s.config().authorization_server.issuer.clone();
    let fail = |error: &str, description: String| -> Result<Response> {
        let url = authorize::response_url(
            &flow.request.redirect_uri,
            &issuer,
            &[("error", error), ("error_description", &description)],
            flow.request.state.as_deref(),
        )?;
        Ok(redirect(&url))
    };
    if let Some(e) = params.get("error") {
        tracing::info!(sub = %flow.user, route = %flow.route, error = %e, "upstream consent refused");
        return fail(
            "access_denied",
            format!("{provider} refused to connect the account ({e})"),
        );
    }
    let Some(code) = params.get("code") else {
        return fail(
            "server_error",
            format!("{provider} sent no authorization code"),
        );
    };
    // The sign-in must still stand (the session may have ended, the user been removed)
    // before anything is exchanged or stored for it.
    let (email, sid) = (flow.user.clone(), flow.sid.clone());
    let live = s
        .blocking(
            move |st| Ok(user_exists(st, &email)? && st.store().session_live(&sid, st.now())?),
        )
        .await?;
    if !live {
        return Err(expired_page());
    }
    match s.vault().complete(&flow, code, s.now()).await? {
        Ok(()) => {}
        Err(ProviderError::Refused(why)) => {
            tracing::info!(sub = %flow.user, route = %flow.route, reason = %why, "upstream code exchange refused");
            return fail(
                "access_denied",
                format!("{provider} refused to issue a token ({why})"),
            );
        }
        Err(ProviderError::Unavailable(why)) => {
            tracing::warn!(sub = %flow.user, route = %flow.route, reason = %why, "upstream code exchange failed");
            return fail(
                "temporarily_unavailable",
                format!("{provider} could not be reached; try again"),
            );
        }
    }
    s.blocking(move |st| {
        let now = st.now();
        // The sign-in must still stand: the session may have ended meanwhile.
        let live = user_exists(st, &flow.user)? && st.store().session_live(&flow.sid, now)?;
        if !live {
            return Err(expired_page());
        }
        // A connect from an app: back to the app's page (checked when the connect began).
        if let Some(url) = &flow.redirect_url {
            tracing::info!(sub = %flow.user, route = %flow.route, "upstream account connected from an app");
            return Ok(redirect(url));
        }
        let code = authorize::issue_code(
            st.store().as_ref(),
            &flow.request,
            &flow.user,
            &flow.sid,
            now,
        )?;
        tracing::info!(client_id = %flow.request.client_id, sub = %flow.user, "upstream account connected; code issued");
        Ok(redirect(&authorize::success_url(
            &flow.request,
            &st.config().authorization_server.issuer,
            &code,
        )?))
    })
    .await
}

/// A pending flow's sign-in at the identity provider starts here (the sign-in page links it).
const IDP_START_PATH: &str = "/login/idp";
/// A sign-in at the identity provider must come back within this long.
const IDP_LOGIN_TTL: i64 = 600;

fn no_identity_provider() -> Error {
    Error::page(StatusCode::NOT_FOUND, "No identity provider is configured.")
}

/// The page for a sign-in the identity provider could not complete. The provider's own words
/// are logged, not shown beyond a short error code.
fn idp_failure_page(name: &str, e: &oidc::IdpError) -> Error {
    match e {
        oidc::IdpError::Unavailable(_) => Error::page(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name} cannot be reached right now. Wait a moment, then return to the application and start again."),
        ),
        oidc::IdpError::Refused(_) => Error::page(
            StatusCode::BAD_GATEWAY,
            format!("{name} did not complete the sign-in. Return to the application and start again."),
        ),
        oidc::IdpError::Invalid(why) => Error::page(
            StatusCode::FORBIDDEN,
            format!("The answer from {name} failed a security check: {why}. Return to the application and start again."),
        ),
        oidc::IdpError::Claims(why) => Error::page(
            StatusCode::FORBIDDEN,
            format!("You cannot sign in: {why}."),
        ),
    }
}

/// Sends the browser to the identity provider for a pending flow, with a fresh `state`,
/// `nonce` and PKCE verifier bound to this browser.
async fn idp_start(
    State(s): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let oidc = s.oidc().cloned().ok_or_else(no_identity_provider)?;
    // Each start stores a sign-in of its own, so it is a new pending record like a flow.
    admit_new_flow(&s, client)?;
    let params = query_params(query);
    let cookies = BrowserCookies::from_headers(&s, &headers);
    let flow_id = params
        .get("flow")
        .map(str::to_owned)
        .ok_or_else(expired_page)?;
    let flow = s
        .blocking(move |st| Ok(st.store().flow(&flow_id, st.now())?))
        .await?
        .ok_or_else(expired_page)?;
    if flow.user.is_some() {
        // Past sign-in, waiting for consent.
        return Err(expired_page());
    }
    check_browser(&flow, cookies.flow.as_deref())?;
    let (state, nonce, verifier) = (random_token(), random_token(), random_token());
    let url = match oidc
        .authorization_url(&state, &nonce, &flows::pkce::s256_challenge(&verifier))
        .await
    {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(error = %e, "identity provider unavailable");
            return Err(idp_failure_page(oidc.display_name(), &e));
        }
    };
    let login = IdpLogin {
        flow_id: flow.id.clone(),
        browser: flow.browser.clone(),
        nonce,
        pkce_verifier: s.vault().seal_login_verifier(&flow.id, &verifier)?,
        expires_at: flow.expires_at.min(s.now() + IDP_LOGIN_TTL),
    };
    let stored = s
        .blocking(move |st| {
            Ok(st
                .store()
                .insert_idp_login(&hash_secret(&state), &login, st.pending_limit())?)
        })
        .await?;
    if !stored {
        return Err(pending_full());
    }
    Ok(redirect(&url))
}

/// The identity provider sends the browser back here (`{issuer}/login/callback`): check its
/// answer, record the user's claims, then continue the pending flow as after a password.
async fn idp_callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let oidc = s.oidc().cloned().ok_or_else(no_identity_provider)?;
    let name = oidc.display_name().to_owned();
    let params = query_params(query);
    let cookies = BrowserCookies::from_headers(&s, &headers);
    let unknown = || {
        Error::page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, was already used, or has expired (state mismatch). Return to the application and start again.",
        )
    };
    let state = params.get("state").map(str::to_owned).ok_or_else(unknown)?;
    let login = s
        .blocking(move |st| Ok(st.store().take_idp_login(&hash_secret(&state), st.now())?))
        .await?
        .ok_or_else(unknown)?;
    check_browser_binding(&login.browser, cookies.flow.as_deref())?;
    if let Some(e) = params.get("error") {
        let code: String = e
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(error = %code, "identity provider sign-in refused");
        return Err(if code == "access_denied" {
            Error::page(
                StatusCode::FORBIDDEN,
                format!(
                    "The sign-in was declined at {name}. Return to the application to try again."
                ),
            )
        } else {
            Error::page(
                StatusCode::BAD_GATEWAY,
                format!("{name} could not sign you in ({code}). Return to the application and start again."),
            )
        });
    }
    let Some(code) = params.get("code") else {
        return Err(Error::page(
            StatusCode::BAD_GATEWAY,
            format!(
                "{name} sent no authorization code. Return to the application and start again."
            ),
        ));
    };
    let verifier = s
        .vault()
        .open_login_verifier(&login.flow_id, &login.pkce_verifier)
        .ok_or_else(unknown)?;
    let user = match oidc.sign_in(code, &verifier, &login.nonce, s.now()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "identity provider sign-in failed");
            return Err(idp_failure_page(&name, &e));
        }
    };
    s.blocking(move |st| {
        let now = st.now();
        let store = st.store().as_ref();
        let flow = store.flow(&login.flow_id, now)?.ok_or_else(expired_page)?;
        // Single use, like the password form: a flow past sign-in does not sign in again.
        if flow.user.is_some() || !store.delete_flow(&flow.id)? {
            return Err(expired_page());
        }
        store.put_idp_user(&IdpUserRecord {
            key: user.key.clone(),
            email: user.email,
            name: user.name,
            groups: user.groups,
            updated_at: now,
        })?;
        signed_in(st, flow, &user.key)
    })
    .await
}

/// The form body and the client credentials of a `/token` or `/revoke` request.
fn client_request(headers: &HeaderMap, body: &[u8]) -> Result<(ClientCredentials, Params)> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(token::parse_basic) {
            Some(b) => Some(b),
            None => {
                return Err(Error::invalid_client(
                    "malformed Authorization header",
                    true,
                ))
            }
        },
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let params = Params::new(pairs);
    let creds = ClientCredentials {
        basic,
        client_id: params.get("client_id").map(str::to_owned),
        client_secret: params.get("client_secret").map(str::to_owned),
    };
    Ok((creds, params))
}

async fn revoke_endpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (creds, params) = client_request(&headers, &body)?;
    s.blocking(move |st| {
        let ctx = TokenContext {
            config: st.config(),
            keys: st.keys(),
            store: st.store().as_ref(),
            vault: st.vault(),
            now: st.now(),
        };
        token::revoke(&ctx, &creds, &params)
    })
    .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

async fn token_endpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (creds, params) = client_request(&headers, &body)?;
    let response = s
        .blocking(move |st| {
            let ctx = TokenContext {
                config: st.config(),
                keys: st.keys(),
                store: st.store().as_ref(),
                vault: st.vault(),
                now: st.now(),
            };
            token::token(&ctx, &creds, &params)
        })
        .await?;
    Ok(no_store(Json(response).into_response()))
}

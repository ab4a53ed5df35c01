//! HTTP handlers: parse, call into `flows`, render. No OAuth decisions are made here.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use url::Url;

use crate::error::{Error, Result};
use crate::flows::authorize::{self, AuthorizeError, Params};
use crate::flows::token::{self, ClientCredentials, TokenContext};
use crate::flows::{self, constant_time_eq, hash_secret, lookup_client, random_id, random_token};
use crate::html;
use crate::store::{PendingFlow, Session};
use crate::AppState;

/// A pending sign-in (login form) stays usable this long.
const FLOW_TTL: i64 = 600;
/// A sign-in session (cookie) lasts this long.
const SESSION_TTL: i64 = 12 * 3600;
/// Wrong passwords allowed per pending sign-in before it is dropped.
const MAX_LOGIN_ATTEMPTS: u32 = 5;
const BODY_LIMIT: usize = 64 * 1024;

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
    Json(serde_json::json!({
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
    }))
    .into_response()
}

async fn jwks(State(s): State<AppState>) -> Response {
    let mut resp = Json(s.keys().jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

async fn register(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let now = s.now();
    let (client, body) = flows::register::register(&body, now)?;
    s.blocking(move |st| Ok(st.store().insert_client(&client)?))
        .await?;
    tracing::info!(client_id = %body["client_id"], "client registered");
    Ok(no_store((StatusCode::CREATED, Json(body)).into_response()))
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

fn cookie_name(s: &AppState) -> &'static str {
    // `__Host-` pins the cookie to this origin; browsers accept it only with `Secure`.
    if s.config()
        .authorization_server
        .issuer
        .starts_with("https://")
    {
        "__Host-warden_session"
    } else {
        "warden_session"
    }
}

fn session_cookie_value(s: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(s);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_session_cookie(s: &AppState, value: &str) -> Option<HeaderValue> {
    let secure = if s
        .config()
        .authorization_server
        .issuer
        .starts_with("https://")
    {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; Max-Age={SESSION_TTL}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(s)
    ))
    .ok()
}

fn login_action(s: &AppState) -> String {
    format!(
        "{}/login",
        issuer_path(&s.config().authorization_server.issuer)
    )
}

fn redirect_host(uri: &str) -> String {
    Url::parse(uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn authorize(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let cookie = session_cookie_value(&s, &headers);
    s.blocking(move |st| authorize_blocking(st, Params::new(pairs), cookie))
        .await
}

fn authorize_blocking(s: &AppState, params: Params, cookie: Option<String>) -> Result<Response> {
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

    // Already signed in: issue the code straight away.
    if let Some(cookie) = cookie {
        if let Some(session) = s.store().session(&hash_secret(&cookie), now)? {
            if config.user(&session.email).is_some() {
                let code = authorize::issue_code(
                    s.store().as_ref(),
                    &grant,
                    &session.email,
                    &session.sid,
                    now,
                )?;
                tracing::info!(client_id = %grant.client_id, sub = %session.email, "code issued (existing session)");
                return Ok(redirect(&authorize::success_url(&grant, issuer, &code)?));
            }
        }
    }

    let flow = PendingFlow {
        id: random_token(),
        csrf: random_token(),
        request: grant,
        expires_at: now + FLOW_TTL,
    };
    s.store().insert_flow(&flow)?;
    Ok(html::login_form(
        StatusCode::OK,
        &html::LoginForm {
            action: &login_action(s),
            flow_id: &flow.id,
            csrf: &flow.csrf,
            client_name: client.display_name(),
            redirect_host: &redirect_host(&flow.request.redirect_uri),
            email: "",
            error: None,
        },
    ))
}

async fn login(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    s.blocking(move |st| login_blocking(st, Params::new(pairs)))
        .await
}

fn login_blocking(s: &AppState, params: Params) -> Result<Response> {
    let config = s.config();
    let issuer = &config.authorization_server.issuer;
    let now = s.now();
    let expired = || {
        Error::page(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired. Return to the application and start again.",
        )
    };
    let flow_id = params.get("flow").ok_or_else(expired)?;
    let flow = s.store().flow(flow_id, now)?.ok_or_else(expired)?;
    let csrf = params.get("csrf").unwrap_or("");
    if !constant_time_eq(csrf.as_bytes(), flow.csrf.as_bytes()) {
        return Err(Error::page(
            StatusCode::FORBIDDEN,
            "The sign-in form is invalid (CSRF check failed).",
        ));
    }
    let email = params.get("email").unwrap_or("").trim().to_owned();
    let password = params.get("password").unwrap_or("");

    let Some(user) = crate::password::authenticate(config, &email, password) else {
        let attempts = s.store().record_failed_login(&flow.id)?;
        tracing::info!(attempts, "sign-in failed");
        if attempts >= MAX_LOGIN_ATTEMPTS {
            s.store().delete_flow(&flow.id)?;
            return Err(Error::page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-in attempts. Return to the application and start again.",
            ));
        }
        let client = lookup_client(config, s.store().as_ref(), &flow.request.client_id)?;
        let name = client
            .as_ref()
            .map(|c| c.display_name().to_owned())
            .unwrap_or_else(|| flow.request.client_id.clone());
        return Ok(html::login_form(
            StatusCode::UNAUTHORIZED,
            &html::LoginForm {
                action: &login_action(s),
                flow_id: &flow.id,
                csrf: &flow.csrf,
                client_name: &name,
                redirect_host: &redirect_host(&flow.request.redirect_uri),
                email: &email,
                error: Some("Incorrect email or password."),
            },
        ));
    };

    // The flow is single use: a second submission of the same form does nothing.
    if !s.store().delete_flow(&flow.id)? {
        return Err(expired());
    }
    let secret = random_token();
    let session = Session {
        sid: random_id(),
        email: user.email.clone(),
        created_at: now,
        expires_at: now + SESSION_TTL,
    };
    s.store().insert_session(&hash_secret(&secret), &session)?;
    let code = authorize::issue_code(
        s.store().as_ref(),
        &flow.request,
        &user.email,
        &session.sid,
        now,
    )?;
    tracing::info!(client_id = %flow.request.client_id, sub = %user.email, sid = %session.sid, "signed in; code issued");
    let mut resp = redirect(&authorize::success_url(&flow.request, issuer, &code)?);
    if let Some(c) = set_session_cookie(s, &secret) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
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
                now: st.now(),
            };
            token::token(&ctx, &creds, &params)
        })
        .await?;
    Ok(no_store(Json(response).into_response()))
}

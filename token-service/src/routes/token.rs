//! The client's back channel: `POST /token` and `POST /revoke`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::http::{form_params, no_store, resolve_document_client};
use crate::config_id_jag::JWT_BEARER_GRANT;
use crate::error::{Error, Result};
use crate::flows::authorize::Params;
use crate::flows::client_auth::{self, AssertionKeys, ClientAssertion};
use crate::flows::token::{self, ClientCredentials, TokenContext};
use crate::flows::{id_jag, lookup_client};
use crate::jwks_cache::Origin;
use crate::metrics::{GrantResult, GrantType, SignInMethod};
use crate::state::AppState;

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
    let params = form_params(body);
    let assertion = match (
        params.get("client_assertion"),
        params.get("client_assertion_type"),
    ) {
        (None, None) => None,
        (Some(jwt), Some(t)) => Some(ClientAssertion {
            assertion_type: t.to_owned(),
            jwt: jwt.to_owned(),
            keys: AssertionKeys::NotFetched,
        }),
        _ => {
            return Err(Error::invalid_request(
                "client_assertion and client_assertion_type go together",
            ))
        }
    };
    let creds = ClientCredentials {
        basic,
        client_id: params.get("client_id").map(str::to_owned),
        client_secret: params.get("client_secret").map(str::to_owned),
        assertion,
    };
    Ok((creds, params))
}

/// Fetches the keys a client assertion is checked with, when its client publishes them at a
/// `jwks_uri` (the flow is synchronous: it gets them from here).
async fn fetch_client_keys(s: &AppState, creds: &mut ClientCredentials) -> Result<()> {
    let Some(assertion) = creds.assertion.as_mut() else {
        return Ok(());
    };
    let Some(client_id) = creds
        .client_id
        .clone()
        .or_else(|| client_auth::claimed_client(&assertion.jwt))
    else {
        return Ok(());
    };
    let client = s
        .blocking(move |st| {
            Ok(lookup_client(
                st.config(),
                st.store().as_ref(),
                st.client_documents(),
                &client_id,
                st.now(),
            )?)
        })
        .await?;
    let Some((uri, origin)) = client.and_then(|c| {
        let origin = if c.pre_registered {
            Origin::Operator
        } else {
            Origin::Client
        };
        c.jwks_uri.map(|u| (u, origin))
    }) else {
        return Ok(());
    };
    let kid = client_auth::claimed_kid(&assertion.jwt);
    assertion.keys = fetched(
        s.jwks_cache()
            .keys(&uri, origin, kid.as_deref(), s.now())
            .await,
    );
    Ok(())
}

/// Fetches the keys of the ID-JAG issuer a jwt-bearer grant's assertion names.
async fn fetch_grant_keys(s: &AppState, params: &Params) -> AssertionKeys {
    let grant = &s.config().authorization_server.identity_assertion_grant;
    if params.get("grant_type") != Some(JWT_BEARER_GRANT) || !grant.enabled() {
        return AssertionKeys::NotFetched;
    }
    let Some(jwt) = params.get("assertion") else {
        return AssertionKeys::NotFetched;
    };
    let Some(issuer) = id_jag::claimed_issuer(jwt).and_then(|i| grant.issuer(&i).cloned()) else {
        return AssertionKeys::NotFetched;
    };
    let now = s.now();
    let uri = match &issuer.jwks_uri {
        Some(u) => u.clone(),
        None => match s.jwks_cache().issuer_jwks_uri(&issuer.issuer, now).await {
            Ok(u) => u,
            Err(e) => return AssertionKeys::Unavailable(e),
        },
    };
    let kid = client_auth::claimed_kid(jwt);
    fetched(
        s.jwks_cache()
            .keys(&uri, Origin::Operator, kid.as_deref(), now)
            .await,
    )
}

fn fetched(r: std::result::Result<std::sync::Arc<Vec<crate::jws::Jwk>>, String>) -> AssertionKeys {
    match r {
        Ok(k) => AssertionKeys::Fetched(k),
        Err(e) => AssertionKeys::Unavailable(e),
    }
}

/// Fetches a metadata-document client's document (unless cached) before the blocking flow
/// authenticates the client: its failure is `invalid_client` with the reason.
async fn resolve_client(s: &AppState, creds: &ClientCredentials) -> Result<()> {
    let basic = creds.basic.is_some();
    // A private_key_jwt client may name itself only in its assertion (`sub`).
    let claimed = creds
        .assertion
        .as_ref()
        .and_then(|a| client_auth::claimed_client(&a.jwt));
    let id = match &creds.basic {
        Some((id, _)) => Some(id.as_str()),
        None => creds.client_id.as_deref().or(claimed.as_deref()),
    };
    resolve_document_client(s, id)
        .await
        .map_err(|e| match e.code() {
            "invalid_client" => Error::invalid_client(e.to_string(), basic),
            _ => Error::invalid_request(e.to_string()),
        })
}

fn context(st: &AppState, grant_keys: AssertionKeys) -> TokenContext<'_> {
    TokenContext {
        config: st.config(),
        keys: st.keys(),
        store: st.store().as_ref(),
        vault: st.vault(),
        documents: st.client_documents(),
        now: st.now(),
        grant_keys,
    }
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (mut creds, params) = client_request(&headers, &body)?;
    resolve_client(&s, &creds).await?;
    fetch_client_keys(&s, &mut creds).await?;
    s.blocking(move |st| token::revoke(&context(st, AssertionKeys::NotFetched), &creds, &params))
        .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

/// `POST /token`, counted by grant type and answer (`warden_token_grants_total`; a jwt-bearer
/// grant is also the ID-JAG user's sign-in), in the span `token grant`.
#[tracing::instrument(name = "token grant", skip_all, fields(grant_type = tracing::field::Empty, client_id = tracing::field::Empty, result = tracing::field::Empty))]
pub(super) async fn token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let granted = counted(&s, &headers, &body).await;
    crate::telemetry::record_result(&granted);
    granted
}

async fn counted(s: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<Response> {
    let (creds, params) = client_request(headers, body).inspect_err(|e| {
        let grant_type = form_params(body).get("grant_type").map(str::to_owned);
        count_grant(s, GrantType::of_parameter(grant_type.as_deref()), Err(e));
    })?;
    let grant_type = GrantType::of_parameter(params.get("grant_type"));
    let answer = grant(s, creds, params).await;
    count_grant(s, grant_type, answer.as_ref().map(|_| ()));
    answer
}

fn count_grant(s: &AppState, grant_type: GrantType, answer: std::result::Result<(), &Error>) {
    let result = match answer {
        Ok(()) => GrantResult::Issued,
        Err(e) => GrantResult::refused(e.grant_error_code()),
    };
    s.metrics().token_grant(grant_type, result);
    // The ID-JAG names the user: the grant refused for what the assertion says
    // (`invalid_grant`) is their failed sign-in; a client's own failure is not.
    if grant_type == GrantType::JwtBearer {
        match result {
            GrantResult::Issued => s.metrics().sign_in(SignInMethod::IdJag, true),
            GrantResult::InvalidGrant => s.metrics().sign_in(SignInMethod::IdJag, false),
            _ => {}
        }
    }
}

async fn grant(s: &AppState, mut creds: ClientCredentials, params: Params) -> Result<Response> {
    let span = tracing::Span::current();
    span.record(
        "grant_type",
        crate::telemetry::grant_type_name(params.get("grant_type").unwrap_or("")),
    );
    if let Some(id) = creds
        .basic
        .as_ref()
        .map(|(id, _)| id.as_str())
        .or(creds.client_id.as_deref())
    {
        span.record("client_id", crate::telemetry::bounded(id));
    }
    resolve_client(s, &creds).await?;
    fetch_client_keys(s, &mut creds).await?;
    let grant_keys = fetch_grant_keys(s, &params).await;
    let response = s
        .blocking(move |st| token::token(&context(st, grant_keys), &creds, &params))
        .await?;
    Ok(no_store(Json(response).into_response()))
}

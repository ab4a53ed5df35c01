//! The client's back channel: `POST /token` and `POST /revoke`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::http::{form_params, no_store, resolve_document_client};
use crate::error::{Error, Result};
use crate::flows::authorize::Params;
use crate::flows::token::{self, ClientCredentials, TokenContext};
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
    let creds = ClientCredentials {
        basic,
        client_id: params.get("client_id").map(str::to_owned),
        client_secret: params.get("client_secret").map(str::to_owned),
    };
    Ok((creds, params))
}

/// Fetches a metadata-document client's document (unless cached) before the blocking flow
/// authenticates the client: its failure is `invalid_client` with the reason.
async fn resolve_client(s: &AppState, creds: &ClientCredentials) -> Result<()> {
    let basic = creds.basic.is_some();
    let id = match &creds.basic {
        Some((id, _)) => Some(id.as_str()),
        None => creds.client_id.as_deref(),
    };
    resolve_document_client(s, id)
        .await
        .map_err(|e| match e.code() {
            "invalid_client" => Error::invalid_client(e.to_string(), basic),
            _ => Error::invalid_request(e.to_string()),
        })
}

fn context(st: &AppState) -> TokenContext<'_> {
    TokenContext {
        config: st.config(),
        keys: st.keys(),
        store: st.store().as_ref(),
        vault: st.vault(),
        documents: st.client_documents(),
        now: st.now(),
    }
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (creds, params) = client_request(&headers, &body)?;
    resolve_client(&s, &creds).await?;
    s.blocking(move |st| token::revoke(&context(st), &creds, &params))
        .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

pub(super) async fn token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (creds, params) = client_request(&headers, &body)?;
    resolve_client(&s, &creds).await?;
    let response = s
        .blocking(move |st| token::token(&context(st), &creds, &params))
        .await?;
    Ok(no_store(Json(response).into_response()))
}

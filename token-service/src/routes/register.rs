//! Dynamic client registration (`POST /register`, RFC 7591).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::http::{no_store, ClientAddr};
use crate::error::{Error, Result};
use crate::flows;
use crate::metrics::RegistrationResult;
use crate::state::{AppState, Limit};

/// `POST /register`, counted by answer (`warden_client_registrations_total`): registered, a
/// per-address or unused-registration limit, or refused.
pub(super) async fn register(
    State(s): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let answer = registration(&s, client, &headers, &body).await;
    s.metrics().client_registration(match &answer {
        Ok(_) => RegistrationResult::Registered,
        Err(Error::RetryLater { .. }) => RegistrationResult::RateLimited,
        Err(_) => RegistrationResult::Refused,
    });
    answer
}

async fn registration(
    s: &AppState,
    ClientAddr(client_key): ClientAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let now = s.now();
    let limits = &s.config().authorization_server.registration;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    flows::register::admit(limits, authorization)?;
    if let Err(retry_after) = s.admit(Limit::Registrations, client_key).await? {
        tracing::warn!(?client_key, "registration refused: rate limit");
        return Err(registration_later(
            retry_after,
            "too many registrations from this address",
        ));
    }
    let (client, body) = flows::register::register(body, now, limits)?;
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

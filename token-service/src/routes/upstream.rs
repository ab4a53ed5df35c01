//! The upstream provider's callback (`GET {issuer}/upstream/callback`): the vault exchanges
//! the code between the two steps of `flows::upstream`.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::answer::respond;
use super::http::{browser, browser_cookies, query_params};
use crate::error::Result;
use crate::flows::browser::Step;
use crate::flows::upstream;
use crate::state::AppState;

#[tracing::instrument(name = "upstream consent", skip_all)]
pub(super) async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query = query_params(query);
    let cookies = browser_cookies(&s, &headers);
    let answer = match s
        .blocking(move |st| Ok(upstream::callback(&browser(st), &query, cookies)?))
        .await?
    {
        Step::Answer(answer) => return Ok(respond(&s, answer)),
        Step::Next(answer) => answer,
    };
    let exchange = s
        .vault()
        .complete(&answer.flow, &answer.code, s.now())
        .await?;
    let answer = s
        .blocking(move |st| Ok(upstream::connected(&browser(st), answer, exchange)?))
        .await?;
    Ok(respond(&s, answer))
}

//! `REVOCATIONS_PATH`: the revocation feed the filter polls (`GET ?after=<cursor>`), a page
//! at a time (`RevocationPage::of` bounds it), only entries still covering a valid TE.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use warden_core::internal_api::{
    parse_revocations_query, ErrorCode, RevocationPage, MAX_REVOCATIONS_PER_PAGE,
};

use super::answer::{answer, refuse, server_error};
use crate::state::AppState;

pub async fn revocations(State(s): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let Some(after) = query.as_deref().and_then(parse_revocations_query) else {
        return refuse(
            ErrorCode::InvalidRequest,
            "expected the query after=<cursor>",
        );
    };
    let read = s
        .blocking(move |st| {
            // One more than a page: it tells whether there are more.
            Ok(st
                .store()
                .revocations_after(after, MAX_REVOCATIONS_PER_PAGE + 1, st.now())?)
        })
        .await;
    match read {
        Ok(entries) => answer(&RevocationPage::of(after, entries)),
        Err(e) => server_error(&e, "reading the revocation feed", e.store_error_kind()),
    }
}

//! `GET /metrics` (`metrics::METRICS_PATH`): the Prometheus scrape, with the revocation feed's
//! gauges read from the store at scrape time. Outside the signature check: a scraper holds no
//! credential, and the internal listener is the one place it is served.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::metrics::{FeedState, CONTENT_TYPE};
use crate::state::AppState;

pub async fn metrics(State(s): State<AppState>) -> Response {
    let now = s.now();
    let summary = s
        .blocking(move |st| Ok(st.store().revocation_feed_summary(now)?))
        .await;
    let feed = match summary {
        Ok((entries, newest)) => FeedState {
            entries,
            newest_age_seconds: newest.map_or(0, |at| now.saturating_sub(at)),
        },
        Err(e) => {
            // The counters are still worth a scrape; the feed's gauges read 0 meanwhile.
            tracing::warn!(error = %e, "metrics: the revocation feed cannot be read");
            if let Some(kind) = e.store_error_kind() {
                s.metrics().store_error(kind);
            }
            FeedState::default()
        }
    };
    match s.metrics().encode(feed) {
        Ok(text) => {
            let mut resp = (StatusCode::OK, text).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics: encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

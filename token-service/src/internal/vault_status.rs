//! `VAULT_STATUS_PATH`: whether values sealed with previous encryption keys remain (key
//! rotation), as the re-seal counts them.

use axum::extract::State;
use axum::response::Response;

use super::answer::answer;
use crate::state::AppState;

pub async fn vault_status(State(s): State<AppState>) -> Response {
    answer(&s.vault().reseal_counters().snapshot())
}

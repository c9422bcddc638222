//! `/v1/contacts` (the contacts of the last sync, a page at a time), `/v1/contacts/sync` (read
//! them from WhatsApp Web now) and `/v1/numbers/check` (which numbers are on WhatsApp: from the
//! store, else through the page, paced; see `crate::directory`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use whatsapp_crds::SessionState;

use super::outbox::store_error;
use super::{ApiState, error};
use crate::directory::{DirectoryError, MAX_WAIT};

/// The most numbers one check may carry.
pub const MAX_NUMBERS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// 503 `SESSION_NOT_READY` unless the session is READY: only a linked page knows contacts and
/// may ask WhatsApp about numbers.
pub(super) fn not_ready(state: &ApiState) -> Option<Response> {
    let current = state.reports.borrow().state;
    (current != SessionState::Ready).then(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SESSION_NOT_READY",
            format!("the session is {current}, not READY"),
        )
    })
}

fn page_error(e: DirectoryError) -> Response {
    match e {
        DirectoryError::Store(e) => store_error(e),
        DirectoryError::Page(why) => error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", why),
        DirectoryError::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "WHATSAPP_TIMEOUT", e.to_string()),
        DirectoryError::Stopped => error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", e.to_string()),
    }
}

/// `GET /v1/contacts?cursor=&limit=`: `{contacts, nextCursor, syncedAt}`.
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", "this route takes cursor and limit");
    };
    let (cursor, limit) = match super::page(query.cursor.as_deref(), query.limit.as_deref()) {
        Ok(paging) => paging,
        Err(why) => return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", why),
    };
    match state.directory.contacts(cursor, limit) {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_error(e),
    }
}

/// `POST /v1/contacts/sync`: `{count, syncedAt}`.
pub async fn sync(State(state): State<ApiState>) -> Response {
    if let Some(refused) = not_ready(&state) {
        return refused;
    }
    match state.directory.sync_contacts().await {
        Ok((count, at)) => Json(json!({"count": count, "syncedAt": at})).into_response(),
        Err(e) => page_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    numbers: Vec<String>,
}

/// `POST /v1/numbers/check` `{numbers: [...]}` (1 to 1000): `{results: [...]}` in the order given.
pub async fn check(
    State(state): State<ApiState>,
    body: Result<Json<CheckRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return error(StatusCode::BAD_REQUEST, "INVALID_BODY", "expected JSON {numbers: [\"5491...\", ...]}");
    };
    if request.numbers.is_empty() || request.numbers.len() > MAX_NUMBERS {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_NUMBERS",
            format!("numbers must hold 1 to {MAX_NUMBERS} numbers (it has {})", request.numbers.len()),
        );
    }
    if let Some(refused) = not_ready(&state) {
        return refused;
    }
    match state.directory.check(&request.numbers, MAX_WAIT).await {
        Ok(results) => Json(json!({"results": results})).into_response(),
        Err(e) => store_error(e),
    }
}

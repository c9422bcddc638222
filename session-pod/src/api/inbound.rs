//! `/v1/inbound`: the incoming messages the session stored, newest first, and one by its
//! WhatsApp id.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::outbox::store_error;
use super::{ApiState, error};

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", "expected ?cursor=&limit=");
    };
    let (cursor, limit) = match super::page(q.cursor.as_deref(), q.limit.as_deref()) {
        Ok(page) => page,
        Err(why) => return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", why),
    };
    match state.outbox.inbound(cursor, limit) {
        Ok(page) => Json(json!({"messages": page.messages, "nextCursor": page.next_cursor})).into_response(),
        Err(e) => store_error(e),
    }
}

pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.outbox.incoming(&id) {
        Ok(Some(m)) => Json(m).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND", format!("no incoming message {id}")),
        Err(e) => store_error(e),
    }
}

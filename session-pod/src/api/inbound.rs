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

/// The cursor and the limit of a listing, or why they are not ones this API takes.
fn page_of(q: &ListQuery) -> Result<(Option<u64>, usize), &'static str> {
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| "cursor is not one this API gave")?),
    };
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => {
            l.parse::<usize>().ok().filter(|l| (1..=1000).contains(l)).ok_or("limit must be 1 to 1000")?
        }
    };
    Ok((cursor, limit))
}

pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", "expected ?cursor=&limit=");
    };
    let (cursor, limit) = match page_of(&q) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(cursor: Option<&str>, limit: Option<&str>) -> ListQuery {
        ListQuery { cursor: cursor.map(String::from), limit: limit.map(String::from) }
    }

    #[test]
    fn cursors_and_limits_are_checked() {
        assert_eq!(page_of(&query(None, None)), Ok((None, 100)));
        assert_eq!(page_of(&query(Some("42"), Some("1000"))), Ok((Some(42), 1000)));
        assert!(page_of(&query(Some("abc"), None)).is_err());
        assert!(page_of(&query(None, Some("0"))).is_err());
        assert!(page_of(&query(None, Some("1001"))).is_err());
        assert!(page_of(&query(None, Some("-1"))).is_err());
    }
}

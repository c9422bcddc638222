//! `/v1/webhooks/deliveries`: each event's delivery to each endpoint (pending, delivered, or
//! dead after a day of failures), and redelivery.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::outbox::store_error;
use super::{ApiState, error};
use crate::webhooks::{Delivery, DeliveryStatus};

/// A delivery as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryJson<'a> {
    id: String,
    endpoint: &'a str,
    event_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    status: DeliveryStatus,
    attempts: u32,
    last_error: Option<&'a str>,
    last_status: Option<u16>,
    next_attempt_at: Option<Timestamp>,
    created_at: Timestamp,
    delivered_at: Option<Timestamp>,
}

impl<'a> From<&'a Delivery> for DeliveryJson<'a> {
    fn from(d: &'a Delivery) -> Self {
        DeliveryJson {
            id: d.id.to_string(),
            endpoint: &d.endpoint,
            event_id: &d.event_id,
            kind: &d.kind,
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error.as_deref(),
            last_status: d.last_status,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    endpoint: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn invalid(why: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_QUERY", why)
}

/// A listing's filters, cursor and page size.
struct Filters {
    status: Option<DeliveryStatus>,
    endpoint: Option<String>,
    cursor: Option<u64>,
    limit: usize,
}

/// The query checked, or why it is refused.
fn filters(q: ListQuery) -> Result<Filters, String> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| format!("unknown status {s}: one of pending, delivered, dead"))?,
        ),
    };
    let (cursor, limit) = super::page(q.cursor.as_deref(), q.limit.as_deref())?;
    Ok(Filters { status, endpoint: q.endpoint, cursor, limit })
}

pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return invalid("the query takes status, endpoint, cursor and limit");
    };
    let f = match filters(query) {
        Ok(f) => f,
        Err(why) => return invalid(why),
    };
    match state.webhooks.list(f.status, f.endpoint.as_deref(), f.cursor, f.limit) {
        Ok(page) => {
            let deliveries: Vec<DeliveryJson> = page.deliveries.iter().map(DeliveryJson::from).collect();
            Json(json!({"deliveries": deliveries, "nextCursor": page.next_cursor})).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub async fn redeliver(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let not_found = || error(StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND", format!("no delivery {id}"));
    let Ok(number) = id.parse::<u64>() else { return not_found() };
    match state.webhooks.redeliver(number) {
        Ok(Some(d)) => (StatusCode::ACCEPTED, Json(DeliveryJson::from(&d))).into_response(),
        Ok(None) => not_found(),
        Err(e) => store_error(e),
    }
}

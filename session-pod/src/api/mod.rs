//! The session pod's HTTP API. `/v1/*` is for the hub only (its bearer token); the probes and
//! the metrics are open to the kubelet and the scraper.

mod contacts;
mod events;
mod inbound;
mod media;
mod outbox;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use whatsapp_crds::SessionState;

use crate::driver::Command;
use crate::metrics::Metrics;
use crate::outbox::{Message, NewMessage, Outbox, Status, reason};
use crate::tracker::Report;

/// A send waits at most this long for WhatsApp Web.
const SEND_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Clone)]
pub struct ApiState {
    pub hub_token: Arc<String>,
    pub commands: mpsc::Sender<Command>,
    pub reports: watch::Receiver<Report>,
    pub metrics: Metrics,
    /// Milliseconds since the epoch of the last successful read of the page.
    pub last_poll_ms: Arc<AtomicU64>,
    pub outbox: Outbox,
    /// Turns true when the pod is stopping: live streams end so the server can stop.
    pub shutdown: watch::Receiver<bool>,
    /// Contacts and number checks.
    pub directory: crate::directory::Directory,
    /// Webhook deliveries: listed and redelivered.
    pub webhooks: crate::webhooks::Webhooks,
    /// Media URLs may point at private addresses (see `--media-from-private-networks`).
    pub media_from_private_networks: bool,
}

pub fn router(state: ApiState) -> Router {
    let hub_only = Router::new()
        .route("/v1/messages", post(send))
        .route(
            "/v1/outbox",
            post(outbox::accept)
                .get(outbox::list)
                .layer(axum::extract::DefaultBodyLimit::max(outbox::MAX_BODY_BYTES)),
        )
        .route("/v1/outbox/events", get(events::events))
        .route("/v1/outbox/{id}", get(outbox::get).delete(outbox::cancel))
        .route("/v1/outbox/batches/{batch}", get(outbox::batch))
        .route("/v1/logout", post(logout))
        .route("/v1/inbound", get(inbound::list))
        .route("/v1/inbound/{id}", get(inbound::get))
        .route("/v1/inbound/{id}/media", get(media::download))
        .route("/v1/contacts", get(contacts::list))
        .route("/v1/contacts/sync", post(contacts::sync))
        .route("/v1/numbers/check", post(contacts::check))
        .route("/v1/webhooks/deliveries", get(webhooks::list))
        .route("/v1/webhooks/deliveries/{id}/redeliver", post(webhooks::redeliver))
        .layer(middleware::from_fn_with_state(state.clone(), require_hub));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(hub_only)
        .with_state(state)
}

/// The cursor and size of a page of a listing (`?cursor=&limit=`), or why they are not ones
/// this API takes: a cursor is one a previous page gave (a positive number; empty means the
/// first page), a limit 1 to 1000 (default 100).
fn page(cursor: Option<&str>, limit: Option<&str>) -> Result<(Option<u64>, usize), &'static str> {
    let cursor = match cursor.filter(|c| !c.is_empty()).map(str::parse::<u64>) {
        None => None,
        Some(Ok(c)) if c > 0 => Some(c),
        Some(_) => return Err("cursor is not one this API gave"),
    };
    let limit = match limit.map(str::parse::<usize>) {
        None => 100,
        Some(Ok(l)) if (1..=1000).contains(&l) => l,
        Some(_) => return Err("limit must be 1 to 1000"),
    };
    Ok((cursor, limit))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": code, "message": message.into()}))).into_response()
}

async fn require_hub(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the hub's bearer token is required"),
        Some(token) if !constant_time_eq(token.as_bytes(), state.hub_token.as_bytes()) => {
            error(StatusCode::FORBIDDEN, "FORBIDDEN", "only the hub may call this route")
        }
        Some(_) => next.run(request).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let age = now_ms().saturating_sub(state.last_poll_ms.load(Ordering::Relaxed));
    if age < 10_000 {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the browser is not answering").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, whatsapp_runtime::telemetry::METRICS_CONTENT_TYPE)], state.metrics.render())
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendRequest {
    pub to: String,
    pub message: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Serialize)]
pub struct SendResponse {
    pub id: String,
    pub status: &'static str,
    pub duplicate: bool,
}

/// The synchronous send: through the outbox like every message (so it is sent exactly once,
/// whatever happens to this request), answered once WhatsApp Web has it.
async fn send(
    State(state): State<ApiState>,
    body: Result<Json<SendRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "expected JSON {to, message, idempotencyKey?}",
        );
    };
    let new = match outbox::validate(&req.to, &req.message) {
        Ok((to, message)) => {
            NewMessage { to, message, idempotency_key: req.idempotency_key, ..NewMessage::default() }
        }
        Err((code, why)) => return error(StatusCode::BAD_REQUEST, code, why),
    };
    // A retry with a known key learns what became of its message, whatever the state now.
    let known = match new.idempotency_key.as_deref().map(|k| state.outbox.by_key(k)) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return outbox::store_error(e),
        None => None,
    };
    let current = state.reports.borrow().state;
    if known.is_none() && current != SessionState::Ready {
        return error(
            StatusCode::CONFLICT,
            "SESSION_NOT_READY",
            format!("the session is {current}, not READY"),
        );
    }
    // Subscribed before accepting: no change of the message can be missed.
    let mut updates = state.outbox.subscribe();
    let accepted = match state.outbox.accept(vec![new], None).await {
        Ok(mut a) if !a.is_empty() => a.remove(0),
        Ok(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "OUTBOX_ERROR", "nothing accepted"),
        Err(e) => return outbox::store_error(e),
    };
    let (id, duplicate) = (accepted.message.id.clone(), accepted.duplicate);
    let answer = |m: &Message| -> Option<Response> {
        if m.status.is_sent() {
            return Some(Json(SendResponse { id: m.id.clone(), status: "sent", duplicate }).into_response());
        }
        if m.status != Status::Failed {
            return None;
        }
        let text = m.error.clone().unwrap_or_default();
        Some(match m.reason.as_deref() {
            Some(reason::NOT_ON_WHATSAPP) => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "NOT_ON_WHATSAPP",
                format!("{} is not on WhatsApp", m.to),
            ),
            Some(why) => error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", format!("{why}: {text}")),
            None => error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", text),
        })
    };
    if let Some(done) = answer(&accepted.message) {
        return done;
    }
    let waited = tokio::time::timeout(SEND_TIMEOUT, async {
        loop {
            match updates.recv().await {
                Ok(m) if m.id == id => {
                    if let Some(done) = answer(&m) {
                        return done;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(Some(m)) = state.outbox.get(&id)
                        && let Some(done) = answer(&m)
                    {
                        return done;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "DRIVER_STOPPED",
                        "the session is shutting down",
                    );
                }
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        error(
            StatusCode::GATEWAY_TIMEOUT,
            "SEND_TIMEOUT",
            format!("not sent yet; it stays queued as {id} and will be sent once: retry with the same idempotency key to learn the outcome"),
        )
    })
}

async fn logout(State(state): State<ApiState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.commands.send(Command::Logout { reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the session is shutting down");
    }
    match tokio::time::timeout(SEND_TIMEOUT, answer).await {
        Ok(Ok(Ok(()))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(Err(e))) => error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", e),
        _ => error(StatusCode::GATEWAY_TIMEOUT, "LOGOUT_TIMEOUT", "WhatsApp Web did not log out in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_take_a_cursor_this_api_gave_and_1_to_1000() {
        assert_eq!(page(None, None), Ok((None, 100)));
        assert_eq!(page(Some(""), None), Ok((None, 100)));
        assert_eq!(page(Some("42"), Some("1000")), Ok((Some(42), 1000)));
        for (cursor, limit) in [
            (Some("0"), None),
            (Some("abc"), None),
            (None, Some("0")),
            (None, Some("1001")),
            (None, Some("-1")),
        ] {
            assert!(page(cursor, limit).is_err(), "{cursor:?} {limit:?}");
        }
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

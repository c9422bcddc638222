//! The session pod's HTTP API. `/v1/*` is for the hub only (its bearer token); the probes and
//! the metrics are open to the kubelet and the scraper.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use whatsapp_crds::WhatsAppSessionSpec;

use crate::driver::{Command, SendError};
use crate::metrics::Metrics;

/// A send waits at most this long for WhatsApp Web.
const SEND_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Clone)]
pub struct ApiState {
    pub hub_token: Arc<String>,
    pub commands: mpsc::Sender<Command>,
    pub spec: watch::Receiver<WhatsAppSessionSpec>,
    pub metrics: Metrics,
    /// Milliseconds since the epoch of the last successful read of the page.
    pub last_poll_ms: Arc<AtomicU64>,
    pub sends: Arc<Mutex<Sends>>,
}

/// Idempotency keys already sent (persisted next to the profile, so a restart never sends a
/// message twice) and the recent send times for the rate limit.
pub struct Sends {
    path: PathBuf,
    done: HashMap<String, String>,
    order: VecDeque<String>,
    recent: VecDeque<Instant>,
}

const KEYS_KEPT: usize = 10_000;

impl Sends {
    pub fn load(path: PathBuf) -> Sends {
        let done: Vec<(String, String)> =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let order = done.iter().map(|(k, _)| k.clone()).collect();
        Sends { path, done: done.into_iter().collect(), order, recent: VecDeque::new() }
    }

    fn remember(&mut self, key: String, id: String) -> std::io::Result<()> {
        self.order.push_back(key.clone());
        self.done.insert(key, id);
        while self.order.len() > KEYS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.done.remove(&old);
            }
        }
        let list: Vec<(&String, &String)> =
            self.order.iter().filter_map(|k| self.done.get_key_value(k)).collect();
        // Write then rename: a crash leaves the old file or the new one, never half of one.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&list)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

pub fn router(state: ApiState) -> Router {
    let hub_only = Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/logout", post(logout))
        .layer(middleware::from_fn_with_state(state.clone(), require_hub));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(hub_only)
        .with_state(state)
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
    ([(header::CONTENT_TYPE, whatsapp_crds::telemetry::METRICS_CONTENT_TYPE)], state.metrics.render())
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

/// Digits only, 8 to 15 of them, after removing a leading + and spaces or dashes.
fn normalize_number(to: &str) -> Option<String> {
    let digits: String =
        to.trim().trim_start_matches('+').chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    ((8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

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
    let Some(to) = normalize_number(&req.to) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_NUMBER",
            "to must be a phone number of 8 to 15 digits, country code first",
        );
    };
    if req.message.is_empty() || req.message.len() > 65_536 {
        return error(StatusCode::BAD_REQUEST, "INVALID_MESSAGE", "message must be 1 to 65536 bytes");
    }
    // One send at a time: the browser sends serially anyway, and a repeated key waits for the
    // first attempt's outcome instead of racing it.
    let mut sends = state.sends.lock().await;
    if let Some(id) = req.idempotency_key.as_ref().and_then(|k| sends.done.get(k)) {
        return Json(SendResponse { id: id.clone(), status: "sent", duplicate: true }).into_response();
    }
    let per_minute = state.spec.borrow().send.rate_per_minute.max(1) as usize;
    let now = Instant::now();
    while sends.recent.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
        sends.recent.pop_front();
    }
    if sends.recent.len() >= per_minute {
        state.metrics.messages.with_label_values(&["rate_limited"]).inc();
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!("at most {per_minute} messages a minute (spec.send.ratePerMinute)"),
        );
    }
    let started = Instant::now();
    let (reply, answer) = oneshot::channel();
    if state.commands.send(Command::Send { to: to.clone(), body: req.message, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the session is shutting down");
    }
    let outcome = tokio::time::timeout(SEND_TIMEOUT, answer).await;
    let (result, response) = match outcome {
        Err(_) => (
            "timeout",
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "SEND_TIMEOUT",
                "WhatsApp Web did not confirm the message in time",
            ),
        ),
        Ok(Err(_)) => (
            "error",
            error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the browser restarted during the send"),
        ),
        Ok(Ok(Err(SendError::NotReady(s)))) => (
            "not_ready",
            error(StatusCode::CONFLICT, "SESSION_NOT_READY", format!("the session is {s}, not READY")),
        ),
        Ok(Ok(Err(SendError::NotOnWhatsApp(n)))) => (
            "not_on_whatsapp",
            error(StatusCode::UNPROCESSABLE_ENTITY, "NOT_ON_WHATSAPP", format!("{n} is not on WhatsApp")),
        ),
        Ok(Ok(Err(SendError::Page(e)))) => ("error", error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", e)),
        Ok(Ok(Ok(id))) => {
            sends.recent.push_back(now);
            if let Some(key) = req.idempotency_key
                && let Err(e) = sends.remember(key, id.clone())
            {
                tracing::error!(error = %e, "could not persist the idempotency key");
            }
            ("sent", Json(SendResponse { id, status: "sent", duplicate: false }).into_response())
        }
    };
    state.metrics.messages.with_label_values(&[result]).inc();
    state.metrics.send_duration.with_label_values(&[result]).observe(started.elapsed().as_secs_f64());
    response
}

async fn logout(State(state): State<ApiState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.commands.send(Command::Logout { reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the session is shutting down");
    }
    match tokio::time::timeout(SEND_TIMEOUT, answer).await {
        Ok(Ok(Ok(()))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(Err(e))) => error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", e.to_string()),
        _ => error(StatusCode::GATEWAY_TIMEOUT, "LOGOUT_TIMEOUT", "WhatsApp Web did not log out in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalized_or_refused() {
        assert_eq!(normalize_number("+54 9 11 2233-4455").as_deref(), Some("5491122334455"));
        assert_eq!(normalize_number("1234567"), None);
        assert_eq!(normalize_number("12345678901234567"), None);
        assert_eq!(normalize_number("54911abc"), None);
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn idempotency_keys_survive_a_restart() {
        let path = std::env::temp_dir().join(format!("wao-sends-{}.json", std::process::id()));
        let mut sends = Sends::load(path.clone());
        sends.remember("k1".into(), "id-1".into()).unwrap();
        let again = Sends::load(path.clone());
        assert_eq!(again.done.get("k1").map(String::as_str), Some("id-1"));
        std::fs::remove_file(path).unwrap();
    }
}

//! `GET /api/whatsapp/{clienteId}/events`: Server-Sent Events with the session's status the
//! moment the resource changes (pushed from the watch cache, no polling), and every change of
//! its messages (from the session pod, over one connection shared by all the clienteId's
//! streams: see `crate::feeds`). The first event is the current status, so a client needs no
//! separate read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;

use super::AuthErrors;
use super::extract::{ClienteId, ClienteIdParam};
use crate::auth::{Principal, TokenExpiry};
use crate::cache::SessionView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::feeds::FeedEvent;
use crate::metrics::Metrics;
use crate::model::SessionStatus;
use crate::state::AppState;

/// Live status and messages, as Server-Sent Events:
///
/// - `event: status`, data: the same JSON as `/status` (a SessionStatus), at once and on every
///   change; `event: removed` (`{"clienteId": n}`) when the clienteId has no session (now or
///   any more);
/// - `event: message`, data: the message as `GET /api/whatsapp/{clienteId}/messages/{id}`
///   shows it (an OutboxMessage), on every change of one of the session's messages: `queued`,
///   `sending`, `sent`, `delivered`, `read`, `played` or `failed` with a `reason`, in order;
///   and each message the session receives, as `GET .../messages?direction=in` lists it (an
///   IncomingMessage: `direction` is `in`);
/// - `event: lagged`, data `{"clienteId": n, "reason": "connected" | "behind", "missed"?: n}`:
///   message changes may have been missed, re-list them (`GET .../messages`). `connected`: the
///   hub (re)connected to the session's pod (after its restart, say; also once shortly after a
///   stream opens, when it is the clienteId's first); from then on every change arrives.
///   `behind`: the stream fell behind and skipped `missed` changes.
///
/// - `event: expired`, data `{"clienteId": n}`, last: the stream ends when the token expires
///   (reconnect with a fresh token).
///
/// Message changes flow while the session's pod runs (not while it is suspended or starting).
/// A comment every 15 s keeps proxies from closing an idle stream.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/events", tag = "whatsapp", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream: `status` events (data: a SessionStatus), `removed`, `message` (data: an OutboxMessage, or an IncomingMessage for a received one) and `lagged` events", content_type = "text/event-stream", body = SessionStatus),
        (status = 400, description = "`INVALID_CLIENT_ID`", body = ErrorBody),
        AuthErrors,
    ))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    TokenExpiry(expires): TokenExpiry,
    ClienteId(id): ClienteId,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.authorize(id)?;
    if !state.cache.synced() {
        return Err(ApiError::NotReady);
    }
    // Subscribe before reading the current status: a change in between is then sent, not lost.
    let changes = state.cache.subscribe(id);
    let first = state.cache.get(id);
    let gauge = ClientGauge::new(&state.metrics);
    let cache = state.cache.clone();
    let updates = stream::unfold((changes, cache, gauge), move |(mut changes, cache, gauge)| async move {
        let now = match changes.recv().await {
            Ok(change) => change.session,
            // Too slow to keep up: skip to the present.
            Err(RecvError::Lagged(_)) => cache.get(id),
            Err(RecvError::Closed) => return None,
        };
        Some((event_of(id, now.as_ref()), (changes, cache, gauge)))
    });
    // The session's message changes, from the one connection to its pod.
    let messages = stream::unfold(state.message_changes(id), move |mut changes| async move {
        let event = changes.recv().await?;
        Some((message_event(id, event), changes))
    });
    let mut shutdown = state.shutdown.clone();
    let statuses = stream::once(async move { event_of(id, first.as_ref()) }).chain(updates);
    // The token's life, on this process' clock.
    let left = Duration::from_secs(expires).saturating_sub(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
    );
    let deadline = tokio::time::Instant::now() + left;
    let stream = stream::select(statuses, messages)
        .map(Some)
        .take_until(async move {
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        })
        .chain(stream::once(async move {
            (tokio::time::Instant::now() >= deadline)
                .then(|| Event::default().event("expired").data(format!("{{\"clienteId\":{id}}}")))
        }))
        .filter_map(futures::future::ready)
        .map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn event_of(id: i64, session: Option<&Arc<SessionView>>) -> Event {
    match session {
        Some(session) => match std::str::from_utf8(&session.status_json) {
            Ok(json) => Event::default().event("status").data(json),
            Err(_) => Event::default().event("error"),
        },
        None => Event::default().event("removed").data(format!("{{\"clienteId\":{id}}}")),
    }
}

fn message_event(id: i64, event: FeedEvent) -> Event {
    match event {
        FeedEvent::Message(json) => Event::default().event("message").data(&*json),
        FeedEvent::Lagged { reason, missed } => {
            let mut data = serde_json::json!({"clienteId": id, "reason": reason});
            if let Some(missed) = missed {
                data["missed"] = missed.into();
            }
            Event::default().event("lagged").data(data.to_string())
        }
    }
}

/// Counts a stream in the SSE clients gauge for as long as it lives.
struct ClientGauge(Metrics);

impl ClientGauge {
    fn new(metrics: &Metrics) -> ClientGauge {
        metrics.sse_clients.inc();
        ClientGauge(metrics.clone())
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}

//! `GET /api/whatsapp/{clienteId}/events`: Server-Sent Events with the session's status the
//! moment the resource changes (pushed from the watch cache, no polling). The first event is
//! the current status, so a client needs no separate read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;

use super::AuthErrors;
use super::extract::{ClienteId, ClienteIdParam};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::metrics::Metrics;
use crate::model::SessionStatus;
use crate::state::AppState;

/// Live status: `event: status` with the same JSON as `/status` on every change, or
/// `event: removed` when the clienteId has no session (now or any more). A comment every 15 s
/// keeps proxies from closing an idle stream.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/events", tag = "whatsapp", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream; each `status` event's data is a SessionStatus", content_type = "text/event-stream", body = SessionStatus),
        (status = 400, description = "`INVALID_CLIENT_ID`", body = ErrorBody),
        AuthErrors,
    ))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.authorize(id)?;
    if !state.cache.synced() {
        return Err(ApiError::NotReady);
    }
    // Subscribe before reading the current status: a change in between is then sent, not lost.
    let changes = state.cache.subscribe();
    let first = state.cache.get(id);
    let gauge = ClientGauge::new(&state.metrics);
    let cache = state.cache.clone();
    let updates = stream::unfold((changes, cache, gauge), move |(mut changes, cache, gauge)| async move {
        loop {
            match changes.recv().await {
                Ok(change) if change.cliente_id == id => {
                    return Some((event_of(id, change.session.as_ref()), (changes, cache, gauge)));
                }
                Ok(_) => continue,
                // Too slow to keep up: skip to the present.
                Err(RecvError::Lagged(_)) => {
                    let now = cache.get(id);
                    return Some((event_of(id, now.as_ref()), (changes, cache, gauge)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let mut shutdown = state.shutdown.clone();
    let stream = stream::once(async move { event_of(id, first.as_ref()) })
        .chain(updates)
        .take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        })
        .map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn event_of(id: i64, session: Option<&Arc<SessionView>>) -> Event {
    match session {
        Some(session) => Event::default()
            .event("status")
            .json_data(&session.status)
            .unwrap_or_else(|_| Event::default().event("error")),
        None => Event::default().event("removed").data(format!("{{\"clienteId\":{id}}}")),
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

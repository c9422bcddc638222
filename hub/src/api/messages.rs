//! Messages through the session's durable outbox: queue one or up to 10,000 (answered as soon
//! as they are stored on the session's volume, sent at the session's pace once it is READY),
//! follow them, page through them, cancel one still queued.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{ApiJson, ApiQuery, ClienteId, ClienteIdParam, PathId};
use super::{AuthErrors, BodyErrors, GatewayErrors, SessionErrors};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::inbound::{Direction, MessageList, paging};
use crate::outbox::{Accepted, ListQuery, OutboxMessage, Submit, check_key};
use crate::state::AppState;

/// The session of `cliente_id` with its pod running: the outbox lives on its volume, so
/// without the pod (suspended, not started yet) there is nothing to queue into or read from:
/// 409 `SESSION_NOT_READY`.
pub fn with_outbox(state: &AppState, cliente_id: i64) -> ApiResult<Arc<SessionView>> {
    let session = state.session(cliente_id)?;
    if session.status.suspended {
        return Err(ApiError::SessionNotReady(
            "suspended: connect it first (its outbox is on its volume, read by its pod)".into(),
        ));
    }
    if session.endpoint.is_none() {
        return Err(ApiError::SessionNotReady("starting: its pod has not published its address yet".into()));
    }
    Ok(session)
}

fn message_id(PathId(id): &PathId) -> ApiResult<&str> {
    check_key("id", id).map_err(|m| ApiError::validation("INVALID_MESSAGE_ID", m))?;
    // The pod's `/v1/outbox/events` is its live stream, never a message (ids are WhatsApp's).
    if id == "events" {
        return Err(ApiError::Upstream {
            status: StatusCode::NOT_FOUND,
            code: "MESSAGE_NOT_FOUND".into(),
            message: format!("no message {id}"),
            index: None,
            retry_after: None,
        });
    }
    Ok(id)
}

/// Queues one message (`{to, message, ...}`) or a batch (`{messages: [...], batch?}`, 1 to
/// 10,000, all or none; bodies up to 8 MiB). The answer comes once they are stored on the
/// session's volume: they are sent at the session's pace (`send.ratePerMinute`) while it is
/// READY, survive restarts, and are never sent twice.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/messages", tag = "messages", params(ClienteIdParam),
    request_body(content = Submit, description = "One message, or a batch",
        examples(
            ("one" = (summary = "One message", value = json!({"to": "5491155550000", "message": "Hola", "idempotencyKey": "order-1234"}))),
            ("batch" = (summary = "A batch", value = json!({"batch": "promo-december", "messages": [
                {"to": "5491155550000", "message": "Hola Ana"},
                {"to": "5491155550001", "message": "Hola Luis", "notBefore": "2026-12-02T10:00:00Z", "expiresAt": "2026-12-02T18:00:00Z"}]}))),
        )),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Stored; ids in the order given (a known `idempotencyKey` gives the message queued with it, `duplicate: true`)", body = Accepted),
        (status = 400, description = "`INVALID_CLIENT_ID`, `INVALID_JSON`, `INVALID_BODY`, `INVALID_NUMBER` or `INVALID_MESSAGE` (`index`: the first bad message); nothing is queued", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running (suspended or starting)", body = ErrorBody),
        (status = 507, description = "`OUTBOX_FULL` (too many messages waiting; see `Retry-After`) or `STORAGE_FULL` (the session's volume is full); nothing is queued", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        AuthErrors, SessionErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Response> {
    principal.authorize(id)?;
    state.session(id)?;
    let batch = Submit::from_json(body)?.into_batch()?;
    let session = with_outbox(&state, id)?;
    let accepted: Accepted = state.pods.outbox_submit(&session, &batch).await?;
    tracing::info!(cliente_id = id, messages = accepted.messages.len(), batch = ?accepted.batch, "messages queued");
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// One message and what happened to it (`queued`, `sending`, `sent`, `delivered`, `read`,
/// `played`, `failed` with a `reason`).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/messages/{id}", tag = "messages",
    params(ClienteIdParam, ("id" = String, Path, description = "WhatsApp's id of the message", example = "3EB0A1B2C3D4E5F60718293A", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The message", body = OutboxMessage),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_MESSAGE_ID`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND` or `MESSAGE_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    id: PathId,
) -> ApiResult<Json<OutboxMessage>> {
    principal.authorize(cliente_id)?;
    let id = message_id(&id)?;
    let session = with_outbox(&state, cliente_id)?;
    Ok(Json(state.pods.outbox_get(&session, id).await?))
}

/// The session's messages, newest first, a page at a time (`nextCursor` → `cursor`): those
/// sent through its outbox (`direction=out`, the default; by status and batch), or those it
/// received (`direction=in`).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/messages", tag = "messages", params(ClienteIdParam, ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page: a MessagePage of OutboxMessages (`direction=out`) or an InboundPage of IncomingMessages (`direction=in`)", body = MessageList),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_QUERY`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<MessageList>> {
    principal.authorize(cliente_id)?;
    if query.direction == Some(Direction::In) {
        if query.status.is_some() || query.batch.is_some() {
            return Err(ApiError::validation(
                "INVALID_QUERY",
                "`status` and `batch` are for sent messages (`direction=out`)",
            ));
        }
        let query = paging(query.cursor.as_deref(), query.limit)?;
        let session = with_outbox(&state, cliente_id)?;
        return Ok(Json(MessageList::In(state.pods.inbound_list(&session, &query).await?)));
    }
    let query = query.to_pod()?;
    let session = with_outbox(&state, cliente_id)?;
    Ok(Json(MessageList::Out(state.pods.outbox_list(&session, &query).await?)))
}

/// The file of a received message (its `media` in `GET .../messages?direction=in`), fetched
/// from WhatsApp when asked, with its content type (and its name, for a document).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/messages/{id}/media", tag = "messages",
    params(ClienteIdParam, ("id" = String, Path, description = "WhatsApp's id of the received message", example = "3A0B1C2D3E4F5A6B7C8D", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The file, with its `Content-Type` (and `Content-Disposition` when it has a name)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_MESSAGE_ID`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`, `MESSAGE_NOT_FOUND` or `MEDIA_NOT_FOUND` (no file, or WhatsApp no longer has it)", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running, or not linked", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn media(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    id: PathId,
) -> ApiResult<Response> {
    principal.authorize(cliente_id)?;
    let id = message_id(&id)?;
    let session = with_outbox(&state, cliente_id)?;
    let file = state.pods.inbound_media(&session, id).await?;
    let headers = file.headers().clone();
    let mut response = Response::new(axum::body::Body::from_stream(file.bytes_stream()));
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::CONTENT_DISPOSITION] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
        .headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    Ok(response)
}

/// Cancels a message still `queued`: it turns `failed` with reason `CANCELLED` and is never
/// sent. 409 `NOT_CANCELLABLE` once it is on its way.
#[utoipa::path(delete, path = "/api/whatsapp/{clienteId}/messages/{id}", tag = "messages",
    params(ClienteIdParam, ("id" = String, Path, description = "WhatsApp's id of the message", example = "3EB0A1B2C3D4E5F60718293A", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = OutboxMessage),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_MESSAGE_ID`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND` or `MESSAGE_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`NOT_CANCELLABLE` (no longer queued) or `SESSION_NOT_READY` (the session's pod is not running)", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    id: PathId,
) -> ApiResult<Json<OutboxMessage>> {
    principal.authorize(cliente_id)?;
    let id = message_id(&id)?;
    let session = with_outbox(&state, cliente_id)?;
    let cancelled: OutboxMessage = state.pods.outbox_cancel(&session, id).await?;
    tracing::info!(cliente_id, id, by = principal.subject(), "message cancelled");
    Ok(Json(cancelled))
}

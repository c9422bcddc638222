//! Today's routes, with today's paths, JSON shapes and status codes, so an existing frontend
//! works unchanged: health, status, QR, send, and the admin session's status and
//! connect/disconnect.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{ApiJson, ClienteId, ClienteIdParam, parse_cliente_id};
use super::sessions::set_suspended;
use super::{AuthErrors, BodyErrors, GatewayErrors, SessionErrors};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{
    ActionResponse, Health, Qr, SendRequest, SendResponse, SessionStatus, State as SessionState,
};
use crate::outbox::{check_message, check_number};
use crate::state::AppState;

/// Whether the hub serves: 200 once its session cache has synced (`degraded` while the
/// Kubernetes API is unreachable and the last known state is served), 503 before.
#[utoipa::path(get, path = "/health", tag = "whatsapp", security(()), responses(
    (status = 200, description = "Serving", body = Health),
    (status = 503, description = "Starting: the cache has not synced yet", body = Health),
))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let staleness = state.cache.staleness();
    let (code, status) = match (state.cache.synced(), staleness.is_zero()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        (true, true) => (StatusCode::OK, "ok"),
        (true, false) => (StatusCode::OK, "degraded"),
    };
    let health = Health {
        status: status.into(),
        service: "whatsapp-hub".into(),
        timestamp: jiff_now(),
        sessions: state.cache.len(),
        staleness_seconds: staleness.as_secs_f64(),
    };
    (code, Json(health))
}

/// The same as `/health`, at the original hub's other address.
#[utoipa::path(get, path = "/api/health", tag = "whatsapp", security(()), responses(
    (status = 200, description = "Serving", body = Health),
    (status = 503, description = "Starting: the cache has not synced yet", body = Health),
))]
pub async fn api_health(state: State<AppState>) -> (StatusCode, Json<Health>) {
    health(state).await
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The session's status: `{connected, state, session}`, plus `qr` while `QR_REQUIRED`.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/status", tag = "whatsapp", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 200, description = "The status", body = SessionStatus), AuthErrors, SessionErrors))]
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Response> {
    principal.authorize(id)?;
    Ok(status_response(&*state.session(id)?))
}

/// A session's status as a response: its JSON as serialized once per change.
pub(super) fn status_response(session: &SessionView) -> Response {
    let json = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, json)], session.status_json.clone()).into_response()
}

/// The QR code to scan.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QrResponse {
    pub qr: Qr,
    pub state: SessionState,
    pub session: String,
    pub cliente_id: i64,
}

/// The QR code while the session waits for a scan; 409 `ALREADY_CONNECTED` once linked, 404
/// `QR_NOT_AVAILABLE` while there is none (starting, phone-code pairing, failed).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/qr", tag = "whatsapp", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The QR code", body = QrResponse),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        AuthErrors, SessionErrors,
    ))]
pub async fn qr(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Json<QrResponse>> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    qr_of(&session).map(Json)
}

/// The same as `/api/whatsapp/{clienteId}/qr` (today's alternative path).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/qr-code", tag = "whatsapp", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The QR code", body = QrResponse),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        AuthErrors, SessionErrors,
    ))]
pub async fn qr_code(
    state: State<AppState>,
    principal: Principal,
    id: ClienteId,
) -> ApiResult<Json<QrResponse>> {
    qr(state, principal, id).await
}

/// The QR code of the clienteId in the `X-Cliente-Id` header.
#[utoipa::path(get, path = "/qr-code", tag = "whatsapp",
    params(("X-Cliente-Id" = i64, Header, description = "The tenant's id: a positive integer", minimum = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The QR code", body = QrResponse),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        AuthErrors, SessionErrors,
    ))]
pub async fn qr_by_header(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> ApiResult<Json<QrResponse>> {
    let raw = headers.get("x-cliente-id").map(|v| v.to_str().unwrap_or("?")).unwrap_or("");
    let id = parse_cliente_id(raw)?;
    principal.authorize(id)?;
    let session = state.session(id)?;
    qr_of(&session).map(Json)
}

pub fn qr_of(session: &SessionView) -> ApiResult<QrResponse> {
    let status = &session.status;
    if status.connected {
        return Err(ApiError::AlreadyConnected);
    }
    match &status.qr {
        Some(qr) => Ok(QrResponse {
            qr: qr.clone(),
            state: status.state,
            session: status.session.clone(),
            cliente_id: status.cliente_id,
        }),
        None => Err(ApiError::QrNotAvailable(describe(status))),
    }
}

pub(super) fn describe(status: &SessionStatus) -> String {
    let state = serde_json::to_value(status.state).ok().and_then(|v| v.as_str().map(str::to_owned));
    let mut text = state.unwrap_or_default();
    if status.pairing_code.is_some() {
        text.push_str(" (pairing by phone code: see pairingCode)");
    } else if let Some(reason) = &status.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// Sends a text message. Optional `Idempotency-Key` header: a retry with the same key
/// never sends twice.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/send", tag = "whatsapp",
    params(ClienteIdParam, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    request_body = SendRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Sent", body = SendResponse),
        (status = 409, description = "`SESSION_NOT_READY`: the session is not linked", body = ErrorBody),
        (status = 422, description = "`NOT_ON_WHATSAPP`: the number has no WhatsApp account", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: over the session's sends per minute", body = ErrorBody),
        AuthErrors, SessionErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn send(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SendRequest>,
) -> ApiResult<Json<SendResponse>> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    send_now(&state, &session, &body.to, &body.message, key).await
}

/// Checks a message and sends it at once through the session's pod: answers when WhatsApp
/// has it (also `POST /sender/send`).
pub async fn send_now(
    state: &AppState,
    session: &SessionView,
    to: &str,
    message: &str,
    idempotency_key: Option<&str>,
) -> ApiResult<Json<SendResponse>> {
    let to = check_number(to).map_err(|m| ApiError::validation("INVALID_NUMBER", m))?;
    check_message(message).map_err(|m| ApiError::validation("INVALID_MESSAGE", m))?;
    if !session.status.connected {
        return Err(ApiError::SessionNotReady(describe(&session.status)));
    }
    let sent = state.pods.send(session, &to, message, idempotency_key).await?;
    Ok(Json(SendResponse { success: true, message: "Message sent".into(), data: sent }))
}

/// The admin session's status.
#[utoipa::path(get, path = "/api/admin/whatsapp/status", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The status", body = SessionStatus), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND`: no admin session (configured or created)", body = ErrorBody)))]
pub async fn admin_status(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    principal.require_admin()?;
    Ok(status_response(&*admin_session(&state)?))
}

/// Starts the admin session (resumes it; the login is kept).
#[utoipa::path(post, path = "/api/admin/whatsapp/connect", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Resumed", body = ActionResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn admin_connect(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    principal.require_admin()?;
    let session = admin_session(&state)?;
    set_suspended(&state, &session, false).await.map(IntoResponse::into_response)
}

/// Stops the admin session (suspends it; the login is kept).
#[utoipa::path(post, path = "/api/admin/whatsapp/disconnect", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Suspended", body = ActionResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn admin_disconnect(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    principal.require_admin()?;
    let session = admin_session(&state)?;
    set_suspended(&state, &session, true).await.map(IntoResponse::into_response)
}

pub(super) fn admin_session(state: &AppState) -> ApiResult<std::sync::Arc<SessionView>> {
    let id = state
        .admin_cliente_id
        .ok_or(ApiError::NotFound("no admin session is configured (--admin-cliente-id)".into()))?;
    state.session(id)
}

/// Used by the native routes too.
pub fn action(message: &str, session: &SessionView, already: Option<bool>) -> Json<ActionResponse> {
    Json(ActionResponse {
        success: true,
        message: message.into(),
        session: session.name.clone(),
        state: session.status.state,
        already_connected: already,
    })
}

//! Sessions as Kubernetes resources: list, create, delete, suspend/resume, logout, phone-code
//! pairing and the QR as an image.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::compat::{action, qr_of};
use super::extract::{ApiJson, ClienteId, ClienteIdParam};
use super::{AuthErrors, BodyErrors, GatewayErrors, SessionErrors};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{ActionResponse, CreateSession, PairingRequest, SessionStatus};
use crate::qr;
use crate::state::AppState;

/// The sessions the caller may see (admins: all; a tenant: its own), by clienteId.
#[utoipa::path(get, path = "/api/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "The sessions", body = Vec<SessionStatus>), AuthErrors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<SessionStatus>>> {
    if !state.cache.synced() {
        return Err(ApiError::NotReady);
    }
    Ok(Json(state.cache.list(principal.scope()).iter().map(|s| s.status.clone()).collect()))
}

/// Creates the WhatsAppSession of a clienteId (named `cliente-<id>`). With `phoneNumber` it
/// pairs by phone code instead of QR.
#[utoipa::path(post, path = "/api/sessions", tag = "sessions", request_body = CreateSession,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; it starts at once", body = SessionStatus),
        (status = 400, description = "`INVALID_CLIENT_ID`, `INVALID_BODY`, `INVALID_JSON` or `INVALID_SESSION` (refused by the resource's rules)", body = ErrorBody),
        (status = 409, description = "`SESSION_EXISTS`: the clienteId has a session", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody),
        AuthErrors, BodyErrors,
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateSession>,
) -> ApiResult<Response> {
    if body.cliente_id <= 0 {
        return Err(ApiError::InvalidClientId(body.cliente_id.to_string()));
    }
    principal.authorize(body.cliente_id)?;
    if !state.cache.synced() {
        return Err(ApiError::NotReady);
    }
    if state.cache.get(body.cliente_id).is_some() {
        return Err(ApiError::SessionExists(body.cliente_id));
    }
    let created = state.writer.create(body.cliente_id, body.phone_number).await?;
    tracing::info!(cliente_id = body.cliente_id, by = principal.subject(), "session created");
    Ok((StatusCode::CREATED, Json(SessionView::of(&created, None).status)).into_response())
}

/// One session's status (the same as `/api/whatsapp/{clienteId}/status`).
#[utoipa::path(get, path = "/api/sessions/{clienteId}", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 200, description = "The status", body = SessionStatus), AuthErrors, SessionErrors))]
pub async fn get(state: State<AppState>, principal: Principal, id: ClienteId) -> ApiResult<Response> {
    super::compat::status(state, principal, id).await
}

/// Deletes the session: its pod stops; its volume (the WhatsApp login) is kept or deleted as
/// its `storage.whenDeleted` says.
#[utoipa::path(delete, path = "/api/sessions/{clienteId}", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleting"), AuthErrors, SessionErrors,
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<StatusCode> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    state.writer.delete(&session).await?;
    tracing::info!(cliente_id = id, session = %session.name, by = principal.subject(), "session deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes a suspended session (its pod starts again on the same login).
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/connect", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 200, description = "Resumed", body = ActionResponse), AuthErrors, SessionErrors,
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn connect(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Json<ActionResponse>> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    set_suspended(&state, &session, false).await
}

/// Suspends a session: its pod stops, the login is kept.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/disconnect", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 200, description = "Suspended", body = ActionResponse), AuthErrors, SessionErrors,
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn disconnect(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Json<ActionResponse>> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    set_suspended(&state, &session, true).await
}

pub async fn set_suspended(
    state: &AppState,
    session: &SessionView,
    suspended: bool,
) -> ApiResult<Json<ActionResponse>> {
    let already = session.status.suspended == suspended;
    if !already {
        state.writer.set_suspended(session, suspended).await?;
    }
    Ok(if suspended {
        action("Disconnected", session, None)
    } else {
        action("Connected", session, Some(session.status.connected))
    })
}

/// Logs the session out of WhatsApp: the phone's linked device is removed and a new QR follows.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/logout", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses((status = 200, description = "Logged out", body = ActionResponse),
        (status = 409, description = "`SESSION_NOT_READY`: not linked", body = ErrorBody),
        AuthErrors, SessionErrors, GatewayErrors))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Json<ActionResponse>> {
    principal.authorize(id)?;
    log_out(&state, &*state.session(id)?).await
}

/// Unlinks the session's phone through its pod (also `/api/session-manager/logout`).
pub async fn log_out(state: &AppState, session: &SessionView) -> ApiResult<Json<ActionResponse>> {
    if !session.status.connected {
        return Err(ApiError::SessionNotReady("not linked: nothing to log out".into()));
    }
    let _: serde_json::Value = state.pods.logout(session).await?;
    tracing::info!(cliente_id = session.cliente_id, session = %session.name, "logged out");
    Ok(action("Logged out", session, None))
}

/// Pairs by phone code: the session shows an 8-character code in `pairingCode` (status and
/// events) to type into the phone (WhatsApp > Linked devices > Link with phone number).
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/pairing-code", tag = "sessions", params(ClienteIdParam),
    request_body = PairingRequest, security(("bearer" = [])),
    responses((status = 202, description = "Switching to phone-code pairing", body = ActionResponse),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody),
        AuthErrors, SessionErrors, BodyErrors))]
pub async fn pairing_code(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
    ApiJson(body): ApiJson<PairingRequest>,
) -> ApiResult<Response> {
    principal.authorize(id)?;
    let session = state.session(id)?;
    let phone = whatsapp_crds::normalize_phone(&body.phone_number).ok_or_else(|| {
        ApiError::validation("INVALID_NUMBER", "phoneNumber must be 8 to 15 digits with country code")
    })?;
    if session.status.connected {
        return Err(ApiError::AlreadyConnected);
    }
    state.writer.pair_by_phone(&session, &phone).await?;
    Ok((StatusCode::ACCEPTED, action("Pairing by phone code", &session, None)).into_response())
}

/// The QR code as a PNG image.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/qr.png", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The QR code", content_type = "image/png", body = Vec<u8>),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        AuthErrors, SessionErrors,
    ))]
pub async fn qr_png(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Response> {
    let code = qr_code(&state, &principal, id)?;
    let png = qr::png(&code).map_err(ApiError::SessionManagerError)?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], png).into_response())
}

/// The QR code as an SVG image.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/qr.svg", tag = "sessions", params(ClienteIdParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The QR code", content_type = "image/svg+xml", body = String),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody),
        AuthErrors, SessionErrors,
    ))]
pub async fn qr_svg(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(id): ClienteId,
) -> ApiResult<Response> {
    let code = qr_code(&state, &principal, id)?;
    let svg = qr::svg(&code).map_err(ApiError::SessionManagerError)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")], svg).into_response())
}

fn qr_code(state: &AppState, principal: &Principal, id: i64) -> ApiResult<String> {
    principal.authorize(id)?;
    let session: Arc<SessionView> = state.session(id)?;
    Ok(qr_of(&session)?.qr.url)
}

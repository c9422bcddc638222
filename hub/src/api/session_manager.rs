//! The original hub's internal session-manager routes, on the session of the token's tenant
//! (an admin's token: the `--admin-cliente-id` session), mapped onto today's behaviour: status,
//! state and QR from the watch cache (as `/api/whatsapp/{clienteId}/status` and `/qr`), login
//! starts the session (resumes it; the login is kept) and answers its state, logout unlinks the
//! phone (as `/api/whatsapp/{clienteId}/logout`). Served at `/api/session-manager/*` and, as the
//! original reverse proxy passed both, at `/session-manager/*`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::Response;

use super::compat::{QrResponse, admin_session, qr_of, status_response};
use super::sessions::{log_out, set_suspended};
use super::{AuthErrors, GatewayErrors};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::error::{ApiResult, ErrorBody};
use crate::model::{ActionResponse, SessionStatus};
use crate::state::AppState;

/// The session these routes act on: the tenant's own, or the admin session for an admin.
fn own_session(state: &AppState, principal: &Principal) -> ApiResult<Arc<SessionView>> {
    match principal.scope() {
        Some(cliente_id) => state.session(cliente_id),
        None => admin_session(state),
    }
}

async fn status_of(state: State<AppState>, principal: Principal) -> ApiResult<Response> {
    Ok(status_response(&*own_session(&state, &principal)?))
}

async fn qr_now(state: State<AppState>, principal: Principal) -> ApiResult<Json<QrResponse>> {
    qr_of(&*own_session(&state, &principal)?).map(Json)
}

async fn log_in(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    let session = own_session(&state, &principal)?;
    let started = set_suspended(&state, &session, false).await?;
    tracing::info!(cliente_id = session.cliente_id, by = principal.subject(), "session-manager login");
    Ok(started)
}

async fn log_out_own(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    log_out(&state, &*own_session(&state, &principal)?).await
}

/// The session's status: `{connected, state, session}`, plus `qr` while `QR_REQUIRED`.
#[utoipa::path(get, path = "/api/session-manager/status", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The status", body = SessionStatus), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` (the tenant has no session) or `NOT_FOUND` (an admin, and no admin session is configured)", body = ErrorBody)))]
pub async fn status(state: State<AppState>, principal: Principal) -> ApiResult<Response> {
    status_of(state, principal).await
}

/// The session's state (the same JSON as `status`).
#[utoipa::path(get, path = "/api/session-manager/state", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The state", body = SessionStatus), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody)))]
pub async fn state(state: State<AppState>, principal: Principal) -> ApiResult<Response> {
    status_of(state, principal).await
}

/// The QR code while the session waits for a scan.
#[utoipa::path(get, path = "/api/session-manager/qr", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The QR code", body = QrResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND`, `NOT_FOUND` (no admin session) or `QR_NOT_AVAILABLE`", body = ErrorBody),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody)))]
pub async fn qr(state: State<AppState>, principal: Principal) -> ApiResult<Json<QrResponse>> {
    qr_now(state, principal).await
}

/// Starts the session (resumes it if suspended; the login is kept) and answers its state; a
/// QR follows at `qr` when it is not linked.
#[utoipa::path(post, path = "/api/session-manager/login", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "Running", body = ActionResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn login(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    log_in(state, principal).await
}

/// Logs the session out of WhatsApp: the phone's linked device is removed, a new QR follows.
#[utoipa::path(post, path = "/api/session-manager/logout", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "Logged out", body = ActionResponse), AuthErrors, GatewayErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: not linked", body = ErrorBody)))]
pub async fn logout(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    log_out_own(state, principal).await
}

/// `/api/session-manager/status` at the original hub's other address.
#[utoipa::path(get, path = "/session-manager/status", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The status", body = SessionStatus), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody)))]
pub async fn status_alias(state: State<AppState>, principal: Principal) -> ApiResult<Response> {
    status_of(state, principal).await
}

/// `/api/session-manager/state` at the original hub's other address.
#[utoipa::path(get, path = "/session-manager/state", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The state", body = SessionStatus), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody)))]
pub async fn state_alias(state: State<AppState>, principal: Principal) -> ApiResult<Response> {
    status_of(state, principal).await
}

/// `/api/session-manager/qr` at the original hub's other address.
#[utoipa::path(get, path = "/session-manager/qr", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "The QR code", body = QrResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND`, `NOT_FOUND` (no admin session) or `QR_NOT_AVAILABLE`", body = ErrorBody),
        (status = 409, description = "`ALREADY_CONNECTED`", body = ErrorBody)))]
pub async fn qr_alias(state: State<AppState>, principal: Principal) -> ApiResult<Json<QrResponse>> {
    qr_now(state, principal).await
}

/// `/api/session-manager/login` at the original hub's other address.
#[utoipa::path(post, path = "/session-manager/login", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "Running", body = ActionResponse), AuthErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody),
        (status = 502, description = "`KUBERNETES_ERROR`", body = ErrorBody)))]
pub async fn login_alias(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    log_in(state, principal).await
}

/// `/api/session-manager/logout` at the original hub's other address.
#[utoipa::path(post, path = "/session-manager/logout", tag = "session-manager", security(("bearer" = [])),
    responses((status = 200, description = "Logged out", body = ActionResponse), AuthErrors, GatewayErrors,
        (status = 404, description = "`SESSION_NOT_FOUND` or `NOT_FOUND` (no admin session)", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: not linked", body = ErrorBody)))]
pub async fn logout_alias(state: State<AppState>, principal: Principal) -> ApiResult<Json<ActionResponse>> {
    log_out_own(state, principal).await
}

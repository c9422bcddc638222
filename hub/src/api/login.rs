//! `POST /auth/login` (only when a users file is configured).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;

use super::BodyErrors;
use super::extract::ApiJson;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{LoginRequest, LoginResponse};
use crate::state::AppState;

/// Exchanges a username and password for a JWT. Five failures for a username or from an
/// address within 15 minutes block further attempts (429 with `Retry-After`); so does a burst
/// while earlier passwords are still being checked.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses(
        (status = 200, description = "The token", body = LoginResponse),
        (status = 400, description = "`INVALID_JSON` or `INVALID_BODY`", body = ErrorBody),
        (status = 401, description = "`INVALID_CREDENTIALS`", body = ErrorBody),
        (status = 429, description = "`TOO_MANY_ATTEMPTS`", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let logins = state.logins.as_ref().ok_or_else(|| ApiError::NotFound("/auth/login".into()))?;
    let client = logins.client_address(&headers, peer.ip());
    let user = logins.check(&body.username, &body.password, client).await?;
    let role = user.role.clone().unwrap_or_else(|| "tenant".into());
    let token = state
        .auth
        .issue(&user.username, &role, user.cliente_id, logins.token_ttl_seconds)
        .map_err(|e| ApiError::SessionManagerError(e.to_string()))?;
    tracing::info!(user = %user.username, "login");
    Ok(Json(LoginResponse {
        token,
        expires_in: logins.token_ttl_seconds,
        role: user.role,
        cliente_id: user.cliente_id,
    }))
}

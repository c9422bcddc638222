//! The deliveries of the session's webhooks (`spec.webhooks`), through its pod: follow them,
//! and send one again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{ApiQuery, ClienteId, ClienteIdParam, PathId};
use super::messages::with_outbox;
use super::{AuthErrors, GatewayErrors};
use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use crate::inbound::{DeliveriesQuery, Delivery, DeliveryPage, delivery_id};
use crate::state::AppState;

/// The session's webhook deliveries (one per event and endpoint), newest first, a page at a
/// time (`nextCursor` → `cursor`), by status and endpoint: `pending` (retried with backoff),
/// `delivered`, or `dead` (given up; see `lastError`, `lastStatus`).
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/webhooks/deliveries", tag = "webhooks",
    params(ClienteIdParam, DeliveriesQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page", body = DeliveryPage),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_QUERY`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn deliveries(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryPage>> {
    principal.authorize(cliente_id)?;
    let query = query.to_pod()?;
    let session = with_outbox(&state, cliente_id)?;
    Ok(Json(state.pods.deliveries(&session, &query).await?))
}

/// Sends a delivery again (a `dead` one, or a `delivered` one the receiver lost): it is
/// `pending` again, with the same event id (`webhook-id`), so a receiver that has it can tell.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/webhooks/deliveries/{id}/redeliver", tag = "webhooks",
    params(ClienteIdParam, ("id" = String, Path, description = "The delivery's `id`", example = "42", pattern = "^[0-9]{1,20}$")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again", body = Delivery),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_DELIVERY_ID`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND` or `DELIVERY_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    PathId(id): PathId,
) -> ApiResult<Response> {
    principal.authorize(cliente_id)?;
    let id = delivery_id(&id)?;
    let session = with_outbox(&state, cliente_id)?;
    let delivery: Delivery = state.pods.redeliver(&session, id).await?;
    tracing::info!(cliente_id, id, endpoint = %delivery.endpoint, by = principal.subject(), "webhook delivery queued again");
    Ok((StatusCode::ACCEPTED, Json(delivery)).into_response())
}

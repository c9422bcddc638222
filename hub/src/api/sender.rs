//! The original system's sender routes: `POST /sender/send` (one message, answered once sent),
//! `POST /sender/send-bulk` (a job: messages queued in the session's outbox) and
//! `GET /sender/jobs/{id}` (how far a job got). The clienteId comes from a tenant's token; an
//! admin names it in the body. A job id is `<clienteId>-<random>`: the session it ran on is in
//! it, so the hub keeps no state for jobs.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::compat::send_now;
use super::extract::{ApiJson, PathId};
use super::messages::with_outbox;
use super::{AuthErrors, BodyErrors, GatewayErrors};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::SendResponse;
use crate::outbox::{
    Accepted, BatchCounts, BulkAccepted, JobProgress, NewBatch, SenderBulk, SenderSend, check_key,
    new_job_id, parse_job_id,
};
use crate::state::AppState;

/// The clienteId a `/sender` (or `/sync-contacts`) request acts on: a tenant's own (the body may repeat it; another
/// one is 403), or the one an admin names in the body.
pub(super) fn cliente_of(principal: &Principal, in_body: Option<i64>) -> ApiResult<i64> {
    let id = match (in_body, principal.scope()) {
        (Some(id), _) => id,
        (None, Some(own)) => own,
        (None, None) => {
            return Err(ApiError::validation(
                "INVALID_CLIENT_ID",
                "`clienteId` is required in the body with an admin token",
            ));
        }
    };
    if id <= 0 {
        return Err(ApiError::InvalidClientId(id.to_string()));
    }
    principal.authorize(id)?;
    Ok(id)
}

/// Sends one message and answers once WhatsApp has it (as `/api/whatsapp/{clienteId}/send`).
#[utoipa::path(post, path = "/sender/send", tag = "sender",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (or `idempotencyKey` in the body)")),
    request_body = SenderSend, security(("bearer" = [])),
    responses(
        (status = 200, description = "Sent", body = SendResponse),
        (status = 400, description = "`INVALID_CLIENT_ID` (an admin gave none), `INVALID_JSON`, `INVALID_BODY`, `INVALID_NUMBER` or `INVALID_MESSAGE`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session is not linked", body = ErrorBody),
        (status = 422, description = "`NOT_ON_WHATSAPP`: the number has no WhatsApp account", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: over the session's sends per minute", body = ErrorBody),
        AuthErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn send(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SenderSend>,
) -> ApiResult<Json<SendResponse>> {
    let id = cliente_of(&principal, body.cliente_id)?;
    let session = state.session(id)?;
    let key = body
        .idempotency_key
        .as_deref()
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()));
    if let Some(key) = body.idempotency_key.as_deref() {
        check_key("idempotencyKey", key).map_err(|m| ApiError::validation("INVALID_BODY", m))?;
    }
    send_now(&state, &session, &body.to, &body.message, key).await
}

/// Queues messages as one job (1 to 10,000, all or none; bodies up to 8 MiB) and answers at
/// once with the job id and each message's id; they are sent at the session's pace while it
/// is READY. Follow the job at `GET /sender/jobs/{jobId}`, a message at
/// `GET /api/whatsapp/{clienteId}/messages/{id}`.
#[utoipa::path(post, path = "/sender/send-bulk", tag = "sender", request_body = SenderBulk, security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued", body = BulkAccepted),
        (status = 400, description = "`INVALID_CLIENT_ID` (an admin gave none), `INVALID_JSON`, `INVALID_BODY`, `INVALID_NUMBER` or `INVALID_MESSAGE` (`index`: the first bad message); nothing is queued", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running (suspended or starting)", body = ErrorBody),
        (status = 507, description = "`OUTBOX_FULL` (see `Retry-After`) or `STORAGE_FULL`; nothing is queued", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        AuthErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn send_bulk(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<SenderBulk>,
) -> ApiResult<Response> {
    let id = cliente_of(&principal, body.cliente_id)?;
    state.session(id)?;
    let job_id = new_job_id(id);
    let batch = NewBatch { messages: body.messages, batch: Some(job_id.clone()) }.validated()?;
    let session = with_outbox(&state, id)?;
    let accepted: Accepted = state.pods.outbox_submit(&session, &batch).await?;
    tracing::info!(cliente_id = id, job = %job_id, messages = accepted.messages.len(), "job queued");
    let response = BulkAccepted {
        success: true,
        message: "Messages queued".into(),
        job_id,
        total: accepted.messages.len(),
        messages: accepted.messages,
    };
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}

/// How far a job got: its messages counted by status; `done` once none is pending.
#[utoipa::path(get, path = "/sender/jobs/{id}", tag = "sender",
    params(("id" = String, Path, description = "The `jobId` of `/sender/send-bulk`", example = "51-8f3a2c1d9e7b6a5f4c3d2e1f0a9b8c7d", pattern = "^[1-9][0-9]*-[A-Za-z0-9_.:-]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job's progress", body = JobProgress),
        (status = 404, description = "`JOB_NOT_FOUND` or `SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn job(
    State(state): State<AppState>,
    principal: Principal,
    PathId(job_id): PathId,
) -> ApiResult<Json<JobProgress>> {
    let id = parse_job_id(&job_id)?;
    principal.authorize(id)?;
    let session = with_outbox(&state, id)?;
    let counts: BatchCounts = state.pods.outbox_batch(&session, &job_id).await.map_err(|e| match e {
        ApiError::Upstream { status: StatusCode::NOT_FOUND, .. } => ApiError::JobNotFound(job_id.clone()),
        e => e,
    })?;
    Ok(Json(JobProgress::of(&job_id, id, counts)))
}

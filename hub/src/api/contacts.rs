//! The session's contacts (synced from WhatsApp Web, the phone's address book included) and
//! number checks, through its pod: `GET /api/whatsapp/{clienteId}/contacts`, the original
//! system's `POST /sync-contacts/sync`, and `POST /api/whatsapp/{clienteId}/numbers/check`.

use axum::Json;
use axum::extract::State;

use super::compat::describe;
use super::extract::{ApiJson, ApiQuery, ClienteId, ClienteIdParam, OptionalJson};
use super::messages::with_outbox;
use super::sender::cliente_of;
use super::{AuthErrors, BodyErrors, GatewayErrors};
use crate::auth::Principal;
use crate::cache::SessionView;
use crate::contacts::{
    ContactPage, ContactsQuery, NumbersCheck, NumbersChecked, SyncRequest, SyncResponse, Synced,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::inbound::paging;
use crate::state::AppState;

/// 409 `SESSION_NOT_READY` unless linked: only a linked session reads contacts and asks
/// WhatsApp about numbers.
fn linked(session: &SessionView) -> ApiResult<()> {
    if session.status.connected {
        return Ok(());
    }
    Err(ApiError::SessionNotReady(describe(&session.status)))
}

/// The contacts of the session's last sync (`POST /sync-contacts/sync`), by name, a page at a
/// time (`nextCursor` → `cursor`); `syncedAt` says when they were read.
#[utoipa::path(get, path = "/api/whatsapp/{clienteId}/contacts", tag = "contacts", params(ClienteIdParam, ContactsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page", body = ContactPage),
        (status = 400, description = "`INVALID_CLIENT_ID` or `INVALID_QUERY`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session's pod is not running", body = ErrorBody),
        AuthErrors, GatewayErrors,
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    ApiQuery(query): ApiQuery<ContactsQuery>,
) -> ApiResult<Json<ContactPage>> {
    principal.authorize(cliente_id)?;
    let query = paging(query.cursor.as_deref(), query.limit)?;
    let session = with_outbox(&state, cliente_id)?;
    Ok(Json(state.pods.contacts(&session, &query).await?))
}

/// Reads the contacts WhatsApp Web knows (the phone's address book and the users the account
/// talked with) into the session's store, in place of the last sync's; then page them at
/// `GET /api/whatsapp/{clienteId}/contacts`. The clienteId comes from a tenant's token; an
/// admin names it in the body. The session must be linked.
#[utoipa::path(post, path = "/sync-contacts/sync", tag = "contacts",
    request_body(content = Option<SyncRequest>, description = "Optional; an admin's names the clienteId"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Synced", body = SyncResponse),
        (status = 400, description = "`INVALID_CLIENT_ID` (an admin gave none), `INVALID_JSON` or `INVALID_BODY`", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session is not linked", body = ErrorBody),
        AuthErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn sync(
    State(state): State<AppState>,
    principal: Principal,
    OptionalJson(body): OptionalJson<SyncRequest>,
) -> ApiResult<Json<SyncResponse>> {
    let cliente_id = cliente_of(&principal, body.unwrap_or_default().cliente_id)?;
    linked(&*state.session(cliente_id)?)?;
    let session = with_outbox(&state, cliente_id)?;
    let synced: Synced = state.pods.contacts_sync(&session).await?;
    tracing::info!(cliente_id, contacts = synced.count, "contacts synced");
    Ok(Json(SyncResponse { ok: true, count: synced.count, synced_at: synced.synced_at }))
}

/// Which numbers are on WhatsApp (up to 1000 at once), in the order given. WhatsApp bans
/// accounts that look numbers up fast, so the session asks one at a time, 1 to 2 s apart, and
/// keeps each answer a day: numbers asked before answer at once, the others as far as the
/// session got in about 20 s; the rest answer `pending` and keep being checked, so asking
/// again later finds them. `invalid`: not a phone number, never asked.
#[utoipa::path(post, path = "/api/whatsapp/{clienteId}/numbers/check", tag = "contacts", params(ClienteIdParam),
    request_body = NumbersCheck, security(("bearer" = [])),
    responses(
        (status = 200, description = "The answers", body = NumbersChecked),
        (status = 400, description = "`INVALID_CLIENT_ID`, `INVALID_JSON`, `INVALID_BODY` or `INVALID_NUMBERS` (none, more than 1000, or one longer than 32 characters)", body = ErrorBody),
        (status = 404, description = "`SESSION_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`SESSION_NOT_READY`: the session is not linked", body = ErrorBody),
        AuthErrors, BodyErrors, GatewayErrors,
    ))]
pub async fn check(
    State(state): State<AppState>,
    principal: Principal,
    ClienteId(cliente_id): ClienteId,
    ApiJson(body): ApiJson<NumbersCheck>,
) -> ApiResult<Json<NumbersChecked>> {
    principal.authorize(cliente_id)?;
    let check = body.validated()?;
    linked(&*state.session(cliente_id)?)?;
    let session = with_outbox(&state, cliente_id)?;
    Ok(Json(state.pods.numbers_check(&session, &check).await?))
}

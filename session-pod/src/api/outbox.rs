//! `/v1/outbox`: messages handed in for sending, one or a batch, answered as soon as they are
//! persisted; their state, listings, cancellation and batch progress.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::media::{self, MediaInput};
use super::{ApiState, error};
use crate::outbox::{Accepted, NewMessage, Status, StoreError};

/// The most messages one call may hand in.
pub const MAX_BATCH: usize = 10_000;
/// The largest body of a call: a batch of 10,000 typical messages, or an image, video or audio
/// of 16 MiB as base64, fits (larger documents come by URL; the hub's own limit is lower).
pub const MAX_BODY_BYTES: usize = 24 * 1024 * 1024;
/// The largest message text, in bytes.
const MAX_MESSAGE_BYTES: usize = 65_536;

/// A number and a text as WhatsApp takes them, or the refusal's code and words.
pub(crate) fn validate(to: &str, message: &str) -> Result<(String, String), (&'static str, &'static str)> {
    let to = number(to)?;
    if message.is_empty() || message.len() > MAX_MESSAGE_BYTES {
        return Err(("INVALID_MESSAGE", "message must be 1 to 65536 bytes"));
    }
    Ok((to, message.to_string()))
}

fn number(to: &str) -> Result<String, (&'static str, &'static str)> {
    whatsapp_crds::normalize_phone(to)
        .ok_or(("INVALID_NUMBER", "to must be a phone number of 8 to 15 digits, country code first"))
}

/// How a store failure reaches the caller: never a silent drop.
pub(crate) fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Full { .. } => {
            let mut response = error(StatusCode::INSUFFICIENT_STORAGE, "OUTBOX_FULL", e.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            response
        }
        StoreError::StorageFull(_) => error(StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL", e.to_string()),
        StoreError::NotCancellable(_) => error(StatusCode::CONFLICT, "NOT_CANCELLABLE", e.to_string()),
        StoreError::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "OUTBOX_ERROR", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    to: String,
    /// The text; with media its caption, and optional.
    #[serde(default)]
    message: String,
    #[serde(default)]
    media: Option<MediaInput>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    not_before: Option<Timestamp>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    messages: Vec<Entry>,
    #[serde(default)]
    batch: Option<String>,
}

/// Why a batch was refused: the first bad entry.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    index: Option<usize>,
}

impl Refusal {
    fn at(index: usize, status: StatusCode, code: &'static str, why: &str) -> Refusal {
        Refusal { status, code, message: format!("messages[{index}]: {why}"), index: Some(index) }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "message": self.message, "index": self.index});
        (self.status, Json(body)).into_response()
    }
}

/// A new message, with the media it still needs stored.
type Checked = (NewMessage, Option<media::Source>);

/// Checks every entry (all or nothing) and turns them into new messages.
fn entries(batch: Vec<Entry>) -> Result<Vec<Checked>, Refusal> {
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_BODY",
            message: format!("messages must hold 1 to {MAX_BATCH} entries"),
            index: None,
        });
    }
    batch.into_iter().enumerate().map(|(index, e)| entry(index, e)).collect()
}

fn entry(index: usize, e: Entry) -> Result<Checked, Refusal> {
    let bad = |code, why: &str| Refusal::at(index, StatusCode::BAD_REQUEST, code, why);
    let to = match &e.media {
        None => validate(&e.to, &e.message).map_err(|(code, why)| bad(code, why))?.0,
        // With media the text is a caption, and may be empty.
        Some(_) if e.message.len() > MAX_MESSAGE_BYTES => {
            return Err(bad("INVALID_MESSAGE", "a caption may be at most 65536 bytes"));
        }
        Some(_) => number(&e.to).map_err(|(code, why)| bad(code, why))?,
    };
    if let (Some(nb), Some(exp)) = (e.not_before, e.expires_at)
        && exp <= nb
    {
        return Err(bad("INVALID_BODY", "expiresAt must be after notBefore"));
    }
    let source = match e.media.map(media::source).transpose() {
        Ok(source) => source,
        Err(refused) => {
            let (status, code, why) = media::IntakeError::Refused(refused).parts();
            return Err(Refusal::at(index, status, code, &why));
        }
    };
    let new = NewMessage {
        to,
        message: e.message,
        idempotency_key: e.idempotency_key.filter(|k| !k.is_empty()),
        not_before: e.not_before,
        expires_at: e.expires_at,
        media: None,
    };
    Ok((new, source))
}

/// Stores the media of the entries that carry some (each different source once), so every
/// message is accepted with its media already on the volume.
async fn with_media(state: &ApiState, checked: Vec<Checked>) -> Result<Vec<NewMessage>, Refusal> {
    let mut stored: HashMap<String, crate::outbox::media::Media> = HashMap::new();
    let mut out = Vec::with_capacity(checked.len());
    for (index, (mut new, source)) in checked.into_iter().enumerate() {
        if let Some(source) = source {
            let key = source.key();
            if !stored.contains_key(&key) {
                if stored.len() == media::MAX_MEDIA_PER_CALL {
                    let why =
                        format!("a call may carry at most {} different media", media::MAX_MEDIA_PER_CALL);
                    return Err(Refusal::at(index, StatusCode::BAD_REQUEST, "INVALID_BODY", &why));
                }
                let taken = media::store(state, source).await.map_err(|e| {
                    let (status, code, why) = e.parts();
                    Refusal::at(index, status, code, &why)
                })?;
                stored.insert(key.clone(), taken);
            }
            new.media = stored.get(&key).cloned();
        }
        out.push(new);
    }
    Ok(out)
}

pub async fn accept(
    State(state): State<ApiState>,
    body: Result<Json<Batch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!(
                    "a call may carry at most {MAX_BODY_BYTES} bytes: split the batch, or send large media by URL"
                ),
            );
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_BODY",
                "expected JSON {messages: [{to, message, media?, idempotencyKey?, notBefore?, expiresAt?}], batch?}",
            );
        }
    };
    let batch = body.batch.filter(|b| !b.is_empty());
    let checked = match entries(body.messages) {
        Ok(checked) => checked,
        Err(refused) => return refused.into_response(),
    };
    let new = match with_media(&state, checked).await {
        Ok(new) => new,
        Err(refused) => return refused.into_response(),
    };
    match state.outbox.accept(new, batch.clone()).await {
        Ok(accepted) => {
            let messages: Vec<_> = accepted
                .iter()
                .map(|Accepted { message, duplicate }| {
                    json!({"id": message.id, "status": message.status, "idempotencyKey": message.idempotency_key, "duplicate": duplicate})
                })
                .collect();
            (StatusCode::ACCEPTED, Json(json!({"messages": messages, "batch": batch}))).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.outbox.get(&id) {
        Ok(Some(m)) => Json(m).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND", format!("no message {id}")),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    batch: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(state): State<ApiState>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().map(|s| Status::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", format!("unknown status {s}"));
        }
    };
    let cursor = match q.cursor.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => {
            return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", "cursor is not one this API gave");
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "INVALID_QUERY", "limit must be 1 to 1000");
    }
    match state.outbox.list(status, q.batch.as_deref(), cursor, limit) {
        Ok(page) => {
            let next = page.next_cursor.map(|c| c.to_string());
            Json(json!({"messages": page.messages, "nextCursor": next})).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub async fn cancel(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.outbox.cancel(&id) {
        Ok(Some(m)) => Json(m).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND", format!("no message {id}")),
        Err(e) => store_error(e),
    }
}

pub async fn batch(State(state): State<ApiState>, Path(batch): Path<String>) -> Response {
    match state.outbox.batch_summary(&batch) {
        Ok(Some(counts)) => {
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            let by_status: serde_json::Map<String, serde_json::Value> =
                counts.into_iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect();
            Json(json!({"batch": batch, "total": total, "byStatus": by_status})).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "BATCH_NOT_FOUND", format!("no batch {batch}")),
        Err(e) => store_error(e),
    }
}

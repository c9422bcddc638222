//! Messages through the session pods' durable outbox: the JSON shapes of the hub's message
//! routes (native and the original system's `/sender/*`), their validation (numbers and texts
//! checked here the way the session pod checks them, so a batch is refused by the hub with the
//! index of the first bad message before it travels), and the `/sender` job ids.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Longest message text accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Most messages in one request (the session pod's limit too).
pub const MAX_BATCH: usize = 10_000;
/// Longest idempotency key, batch name or message id, in characters.
const MAX_KEY_CHARS: usize = 128;
/// Largest body of the routes that take a batch (the others keep the hub's body limit).
pub const BATCH_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The number of a message to send, or 400 `INVALID_NUMBER`.
pub fn check_number(to: &str) -> Result<String, String> {
    whatsapp_crds::normalize_phone(to)
        .ok_or_else(|| "`to` must be a phone number of 8 to 15 digits, country code first".to_owned())
}

/// The text of a message to send: 1 to 4096 characters, not only blanks; else 400
/// `INVALID_MESSAGE`.
pub fn check_message(message: &str) -> Result<(), String> {
    let chars = message.chars().count();
    if message.trim().is_empty() || chars > MAX_MESSAGE_CHARS {
        return Err(format!("`message` must be 1 to {MAX_MESSAGE_CHARS} characters (it has {chars})"));
    }
    Ok(())
}

/// An idempotency key, batch name or message id: 1 to 128 characters, letters, digits and
/// `-_.:` only (they travel in URLs and logs).
pub fn check_key(what: &str, key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.chars().count() <= MAX_KEY_CHARS
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{what}` must be 1 to {MAX_KEY_CHARS} letters, digits or -_.: characters"))
    }
}

fn check_time(what: &str, value: Option<&str>) -> Result<Option<Timestamp>, String> {
    value
        .map(|v| {
            v.parse::<Timestamp>()
                .map_err(|_| format!("`{what}` must be an RFC 3339 time such as 2026-12-02T10:00:00Z"))
        })
        .transpose()
}

/// What kind of message a file is sent as.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

/// A file sent with a message, whose `message` is then its caption (possibly empty). The
/// session pod fetches `url` (or takes `dataBase64`) when it accepts the message, checks the
/// bytes against `mimetype` and keeps them on the session's volume until sent. Limits: image,
/// video and audio 16 MiB, documents 100 MiB; bodies up to 8 MiB, so larger files by `url`.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"url": "https://files.example/catalogue.pdf", "mimetype": "application/pdf", "filename": "catalogue.pdf"}))]
pub struct NewMedia {
    /// Where the file is (http or https); or `dataBase64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "https://files.example/catalogue.pdf", max_length = 2048)]
    pub url: Option<String>,
    /// The file, base64; or `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The file's content type, such as `image/jpeg` or `application/pdf`.
    #[schema(example = "application/pdf", min_length = 3, max_length = 127)]
    pub mimetype: String,
    /// The name shown with a document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "catalogue.pdf", min_length = 1, max_length = 255)]
    pub filename: Option<String>,
    /// How to send it; default: from `mimetype` (images, videos and audio as such, anything
    /// else as a document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MediaKind>,
}

impl NewMedia {
    fn check(&self) -> Result<(), String> {
        match (&self.url, &self.data_base64) {
            (Some(url), None) => {
                let web = url.starts_with("https://") || url.starts_with("http://");
                if !web || url.len() > 2048 || url.chars().any(char::is_whitespace) {
                    return Err("`media.url` must be an http(s) URL of at most 2048 characters".into());
                }
            }
            (None, Some(data)) if !data.is_empty() => {}
            _ => return Err("`media` needs exactly one of `url` and `dataBase64`".into()),
        }
        let (kind, sub) = self.mimetype.split_once('/').unwrap_or_default();
        let token = |t: &str| {
            !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        if self.mimetype.len() > 127 || !token(kind) || !token(sub) {
            return Err("`media.mimetype` must be a content type such as image/jpeg".into());
        }
        let bad_name = |name: &String| {
            name.is_empty()
                || name.chars().count() > 255
                || name.chars().any(|c| c.is_control() || c == '/' || c == '\\')
        };
        if self.filename.as_ref().is_some_and(bad_name) {
            return Err("`media.filename` must be 1 to 255 characters, without slashes".into());
        }
        Ok(())
    }
}

/// One message to queue.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"to": "5491155550000", "message": "Hola", "idempotencyKey": "order-1234"}))]
pub struct NewMessage {
    /// Destination phone number, 8 to 15 digits, country code first; `+`, spaces and dashes
    /// are ignored.
    #[schema(example = "5491155550000", min_length = 1, max_length = 32)]
    pub to: String,
    /// The text (1 to 4096 characters); with `media`, its caption (may be empty).
    #[serde(default)]
    #[schema(example = "Hola", max_length = 4096)]
    pub message: String,
    /// A file to send (the message is then its caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<NewMedia>,
    /// Makes retries safe: a key seen before returns the message queued with it
    /// (`duplicate: true`), nothing is queued again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "order-1234", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub idempotency_key: Option<String>,
    /// Not sent before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, example = "2026-12-02T10:00:00Z")]
    pub not_before: Option<String>,
    /// Not sent after this time (RFC 3339): it fails with reason `EXPIRED` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, example = "2026-12-02T18:00:00Z")]
    pub expires_at: Option<String>,
}

impl NewMessage {
    /// Checks the message and puts it in the form the pod stores (digits-only number, UTC
    /// times); errors name `index`.
    pub fn validated(&self, index: usize) -> Result<NewMessage, ApiError> {
        let at = |code, message: String| {
            ApiError::invalid_at(index, code, format!("messages[{index}]: {message}"))
        };
        let to = check_number(&self.to).map_err(|m| at("INVALID_NUMBER", m))?;
        match &self.media {
            None => check_message(&self.message).map_err(|m| at("INVALID_MESSAGE", m))?,
            Some(media) => {
                media.check().map_err(|m| at("INVALID_MEDIA", m))?;
                let chars = self.message.chars().count();
                if chars > MAX_MESSAGE_CHARS {
                    let why =
                        format!("a caption has at most {MAX_MESSAGE_CHARS} characters (it has {chars})");
                    return Err(at("INVALID_MESSAGE", why));
                }
            }
        }
        if let Some(key) = &self.idempotency_key {
            check_key("idempotencyKey", key).map_err(|m| at("INVALID_BODY", m))?;
        }
        let not_before =
            check_time("notBefore", self.not_before.as_deref()).map_err(|m| at("INVALID_BODY", m))?;
        let expires_at =
            check_time("expiresAt", self.expires_at.as_deref()).map_err(|m| at("INVALID_BODY", m))?;
        if let (Some(from), Some(until)) = (not_before, expires_at)
            && until <= from
        {
            return Err(at("INVALID_BODY", "`expiresAt` must be after `notBefore`".into()));
        }
        Ok(NewMessage {
            to,
            message: self.message.clone(),
            media: self.media.clone(),
            idempotency_key: self.idempotency_key.clone(),
            not_before: not_before.map(|t| t.to_string()),
            expires_at: expires_at.map(|t| t.to_string()),
        })
    }
}

/// Messages to queue together, optionally named as a batch to follow.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"batch": "promo-december", "messages": [
    {"to": "5491155550000", "message": "Hola Ana"},
    {"to": "5491155550001", "message": "Hola Luis", "notBefore": "2026-12-02T10:00:00Z"}]}))]
pub struct NewBatch {
    /// 1 to 10,000 messages, queued all or none.
    #[schema(min_items = 1, max_items = 10000)]
    pub messages: Vec<NewMessage>,
    /// A name for the batch, to list (`?batch=`) and count its messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "promo-december", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub batch: Option<String>,
}

impl NewBatch {
    /// Checks every message (all or none) and the batch name; the first problem is the answer.
    pub fn validated(&self) -> Result<NewBatch, ApiError> {
        if self.messages.is_empty() || self.messages.len() > MAX_BATCH {
            return Err(ApiError::validation(
                "INVALID_BODY",
                format!("`messages` must hold 1 to {MAX_BATCH} messages (it has {})", self.messages.len()),
            ));
        }
        if let Some(batch) = &self.batch {
            check_key("batch", batch).map_err(|m| ApiError::validation("INVALID_BODY", m))?;
        }
        let messages =
            self.messages.iter().enumerate().map(|(i, m)| m.validated(i)).collect::<Result<Vec<_>, _>>()?;
        Ok(NewBatch { messages, batch: self.batch.clone() })
    }
}

/// `POST /api/whatsapp/{clienteId}/messages`: one message, or a batch (`messages`).
#[derive(Serialize, ToSchema, Debug, PartialEq)]
#[serde(untagged)]
pub enum Submit {
    One(NewMessage),
    Batch(NewBatch),
}

impl Submit {
    /// Reads either shape: a body with `messages` is a batch.
    pub fn from_json(value: serde_json::Value) -> Result<Submit, ApiError> {
        let invalid = |e: serde_json::Error| ApiError::validation("INVALID_BODY", e.to_string());
        if !value.is_object() {
            return Err(ApiError::validation("INVALID_BODY", "expected a JSON object"));
        }
        if value.get("messages").is_some() {
            serde_json::from_value(value).map(Submit::Batch).map_err(invalid)
        } else {
            serde_json::from_value(value).map(Submit::One).map_err(invalid)
        }
    }

    /// The batch the pod is asked to queue, checked.
    pub fn into_batch(self) -> Result<NewBatch, ApiError> {
        match self {
            Submit::One(message) => Ok(NewBatch { messages: vec![message.validated(0)?], batch: None }),
            Submit::Batch(batch) => batch.validated(),
        }
    }
}

/// Where a message is.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting in the outbox (for READY, for `notBefore`, or for its turn at the session's pace).
    Queued,
    /// Being handed to WhatsApp Web.
    Sending,
    /// WhatsApp's servers have it (one tick).
    Sent,
    /// On the recipient's phone (two ticks).
    Delivered,
    /// Read (blue ticks).
    Read,
    /// A voice message played.
    Played,
    /// Not sent: see `reason`.
    Failed,
}

/// One accepted message.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedMessage {
    /// WhatsApp's id of the message, chosen when it was accepted.
    #[schema(example = "3EB0A1B2C3D4E5F60718293A")]
    pub id: String,
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// True when the idempotency key was seen before: this is the message queued then.
    #[serde(default)]
    pub duplicate: bool,
}

/// The messages are stored in the session's outbox (on its volume) and will be sent at the
/// session's pace once it is READY; ids in the order they were given.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"messages": [{"id": "3EB0A1B2C3D4E5F60718293A", "status": "queued", "duplicate": false}], "batch": "promo-december"}))]
pub struct Accepted {
    pub messages: Vec<AcceptedMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

/// A message of the outbox and what happened to it.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "3EB0A1B2C3D4E5F60718293A", "to": "5491155550000", "message": "Hola",
    "status": "delivered", "createdAt": "2026-12-02T10:00:00Z", "sentAt": "2026-12-02T10:00:03Z",
    "deliveredAt": "2026-12-02T10:00:04Z", "attempts": 1}))]
pub struct OutboxMessage {
    #[schema(example = "3EB0A1B2C3D4E5F60718293A")]
    pub id: String,
    pub to: String,
    pub message: String,
    pub status: MessageStatus,
    /// When `failed`: `NOT_ON_WHATSAPP`, `EXPIRED`, `CANCELLED`, `SEND_FAILED` or
    /// `BRIDGE_INCOMPATIBLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "NOT_ON_WHATSAPP")]
    pub reason: Option<String>,
    /// When `failed`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub played_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// Send attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The file sent with it, if any (`message` is its caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<SentMedia>,
}

/// The file of a queued message, as the session pod keeps it.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SentMedia {
    pub kind: MediaKind,
    pub mimetype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// A page of the outbox, newest first.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<OutboxMessage>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/whatsapp/{clienteId}/messages` filters and paging.
#[derive(Deserialize, IntoParams, Debug, Default, PartialEq)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `out` (the default): the messages sent through the outbox; `in`: the messages received
    /// (`status` and `batch` are for sent messages only).
    #[param(inline)]
    pub direction: Option<crate::inbound::Direction>,
    /// Only messages in this status.
    #[param(inline)]
    pub status: Option<MessageStatus>,
    /// Only the messages of this batch.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub batch: Option<String>,
    /// The `nextCursor` of the previous page.
    #[param(min_length = 1, max_length = 512)]
    pub cursor: Option<String>,
    /// Messages per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl ListQuery {
    /// The query the pod is sent, checked.
    pub fn to_pod(&self) -> Result<Vec<(&'static str, String)>, ApiError> {
        let invalid = |m: String| ApiError::validation("INVALID_QUERY", m);
        let mut query = Vec::new();
        if let Some(status) = self.status {
            let text = serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned));
            query.push(("status", text.unwrap_or_default()));
        }
        if let Some(batch) = &self.batch {
            check_key("batch", batch).map_err(invalid)?;
            query.push(("batch", batch.clone()));
        }
        if let Some(cursor) = &self.cursor {
            if cursor.is_empty() || cursor.len() > 512 {
                return Err(invalid("`cursor` must be a `nextCursor` from a previous page".into()));
            }
            query.push(("cursor", cursor.clone()));
        }
        if let Some(limit) = self.limit {
            if !(1..=1000).contains(&limit) {
                return Err(invalid(format!("`limit` must be 1 to 1000 (it is {limit})")));
            }
            query.push(("limit", limit.to_string()));
        }
        Ok(query)
    }
}

/// A batch's messages counted by status (the session pod's answer).
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct BatchCounts {
    pub batch: String,
    pub total: u64,
    #[serde(default)]
    pub by_status: BTreeMap<String, u64>,
}

// ---- The original system's `/sender/*` routes ----

/// `POST /sender/send`: one message, sent before the answer (the original meaning).
#[derive(Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"to": "5491155550000", "message": "Hola"}))]
pub struct SenderSend {
    /// The tenant: a tenant's token names it already (it may be repeated, not changed); an
    /// admin must give it. `cliente_id` is accepted too.
    #[serde(default, alias = "cliente_id")]
    #[schema(minimum = 1, example = 51)]
    pub cliente_id: Option<i64>,
    /// Destination phone number, 8 to 15 digits, country code first.
    #[schema(example = "5491155550000", min_length = 1, max_length = 32)]
    pub to: String,
    /// The text (1 to 4096 characters).
    #[schema(example = "Hola", min_length = 1, max_length = 4096)]
    pub message: String,
    /// Makes retries safe (the `Idempotency-Key` header works too).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub idempotency_key: Option<String>,
}

/// `POST /sender/send-bulk`: messages queued as one job.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"messages": [
    {"to": "5491155550000", "message": "Hola Ana"},
    {"to": "5491155550001", "message": "Hola Luis"}]}))]
pub struct SenderBulk {
    /// The tenant, as in `/sender/send`.
    #[serde(default, alias = "cliente_id")]
    #[schema(minimum = 1, example = 51)]
    pub cliente_id: Option<i64>,
    /// 1 to 10,000 messages, queued all or none.
    #[schema(min_items = 1, max_items = 10000)]
    pub messages: Vec<NewMessage>,
}

/// The job was queued: follow it at `GET /sender/jobs/{jobId}`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"success": true, "message": "Messages queued", "jobId": "51-8f3a2c1d9e7b6a5f4c3d2e1f0a9b8c7d", "total": 1,
    "messages": [{"id": "3EB0A1B2C3D4E5F60718293A", "status": "queued", "duplicate": false}]}))]
pub struct BulkAccepted {
    pub success: bool,
    #[schema(example = "Messages queued")]
    pub message: String,
    #[schema(example = "51-8f3a2c1d9e7b6a5f4c3d2e1f0a9b8c7d")]
    pub job_id: String,
    pub total: usize,
    /// One per message, in the order given.
    pub messages: Vec<AcceptedMessage>,
}

/// How far a job got.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"success": true, "jobId": "51-8f3a2c1d9e7b6a5f4c3d2e1f0a9b8c7d", "clienteId": 51, "total": 20,
    "pending": 5, "sent": 14, "failed": 1, "done": false,
    "byStatus": {"queued": 5, "sent": 10, "delivered": 3, "read": 1, "failed": 1}}))]
pub struct JobProgress {
    pub success: bool,
    pub job_id: String,
    pub cliente_id: i64,
    pub total: u64,
    /// Not sent yet (`queued` and `sending`).
    pub pending: u64,
    /// Sent (`sent`, `delivered`, `read` and `played`).
    pub sent: u64,
    /// Not sent and never will be (`failed`, including cancelled and expired).
    pub failed: u64,
    /// Nothing is pending any more.
    pub done: bool,
    /// Every status with its count.
    pub by_status: BTreeMap<String, u64>,
}

impl JobProgress {
    pub fn of(job_id: &str, cliente_id: i64, counts: BatchCounts) -> JobProgress {
        let sum = |names: &[&str]| names.iter().map(|n| counts.by_status.get(*n).copied().unwrap_or(0)).sum();
        let pending: u64 = sum(&["queued", "sending"]);
        JobProgress {
            success: true,
            job_id: job_id.to_owned(),
            cliente_id,
            total: counts.total,
            pending,
            sent: sum(&["sent", "delivered", "read", "played"]),
            failed: sum(&["failed"]),
            done: pending == 0,
            by_status: counts.by_status,
        }
    }
}

/// A new job id, `<clienteId>-<32 hex digits>`: it names the session, so a job is found (and
/// authorized) without any state in the hub; it is the batch name in the session's outbox.
pub fn new_job_id(cliente_id: i64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // `RandomState` carries keys drawn from the OS for each process (and differs per call).
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(now);
        h.finish()
    };
    format!("{cliente_id}-{:016x}{:016x}", random(1), random(2))
}

/// The clienteId a job id names, or 404 `JOB_NOT_FOUND` for what the hub never issued.
pub fn parse_job_id(job_id: &str) -> Result<i64, ApiError> {
    let not_found = || ApiError::JobNotFound(job_id.chars().take(MAX_KEY_CHARS).collect());
    let (cliente_id, random) = job_id.split_once('-').ok_or_else(not_found)?;
    let ok = !cliente_id.starts_with(['+', '0']) && !random.is_empty() && check_key("jobId", job_id).is_ok();
    match cliente_id.parse::<i64>() {
        Ok(id) if id > 0 && ok => Ok(id),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests;

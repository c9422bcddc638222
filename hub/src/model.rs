//! The JSON the hub speaks. The status shape is today's system's (`connected`, `state`,
//! `session`, `qr`), so an existing frontend works unchanged; fields it does not know are
//! additions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use whatsapp_crds::SessionState;

/// Where a session is in its life.
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Disconnected,
    Connecting,
    QrRequired,
    Ready,
    Failed,
}

impl From<SessionState> for State {
    fn from(s: SessionState) -> State {
        match s {
            SessionState::Disconnected => State::Disconnected,
            SessionState::Connecting => State::Connecting,
            SessionState::QrRequired => State::QrRequired,
            SessionState::Ready => State::Ready,
            SessionState::Failed => State::Failed,
        }
    }
}

/// The QR code to scan, while `state` is `QR_REQUIRED`.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Qr {
    /// The QR as a PNG `data:` URL, for `<img src>`.
    #[schema(example = "data:image/png;base64,iVBORw0KGgo...")]
    pub base64: String,
    /// The raw string encoded in the QR (`2@...`), to render it yourself.
    pub url: String,
    /// How many codes were shown so far (1-based).
    pub attempts: i32,
    /// When this code appeared, in milliseconds since the epoch.
    pub timestamp: i64,
    /// When WhatsApp replaces it, in milliseconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A session's status, as the frontend sees it.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// True when linked and able to send: `state` is `READY` and the session's pod is ready
    /// (after the pod is lost, `reason` and `message` say so while `state` is still `READY`).
    pub connected: bool,
    pub state: State,
    /// The session's name (the WhatsAppSession resource).
    pub session: String,
    /// Present while `state` is `QR_REQUIRED` with QR pairing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr: Option<Qr>,
    pub cliente_id: i64,
    pub namespace: String,
    /// True while the session is stopped on purpose (disconnect); the login is kept.
    pub suspended: bool,
    /// Machine-readable reason of the state (for example `QRAttemptsExhausted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The code to type into the phone, with phone-code pairing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing_code: Option<String>,
    /// The linked phone number, once READY.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_name: Option<String>,
}

/// `POST /api/whatsapp/{clienteId}/send`.
#[derive(Deserialize, Serialize, ToSchema, Debug)]
pub struct SendRequest {
    /// Destination phone number, 8 to 15 digits, country code first; `+`, spaces and dashes
    /// are ignored.
    #[schema(example = "5491123456789", min_length = 1, max_length = 32)]
    pub to: String,
    /// The text to send (1 to 4096 characters).
    #[schema(example = "Hola", min_length = 1, max_length = 4096)]
    pub message: String,
}

/// The message was accepted by WhatsApp Web.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SendResponse {
    pub success: bool,
    #[schema(example = "Message sent")]
    pub message: String,
    pub data: SentMessage,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SentMessage {
    /// WhatsApp's id of the message.
    pub id: String,
    pub status: String,
    /// True when an `Idempotency-Key` was seen before: nothing was sent again.
    pub duplicate: bool,
}

/// Result of connect, disconnect and logout.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ActionResponse {
    pub success: bool,
    #[schema(example = "Connected")]
    pub message: String,
    pub session: String,
    pub state: State,
    /// On connect: the session was already running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_connected: Option<bool>,
}

/// `POST /api/sessions`.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    #[schema(minimum = 1, example = 51)]
    pub cliente_id: i64,
    /// Link by phone code instead of QR: the phone number to link (8 to 15 digits).
    #[serde(default)]
    #[schema(example = "5491123456789", pattern = "^[0-9]{8,15}$")]
    pub phone_number: Option<String>,
}

/// `POST /api/whatsapp/{clienteId}/pairing-code`.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PairingRequest {
    /// The phone number to link, 8 to 15 digits with country code (a leading `+` is fine).
    #[schema(example = "5491123456789", pattern = "^[+]?[0-9]{8,15}$")]
    pub phone_number: String,
}

/// `POST /auth/login`.
#[derive(Deserialize, ToSchema, Debug)]
pub struct LoginRequest {
    /// The username (`email` is accepted as its alias).
    #[serde(alias = "email")]
    #[schema(min_length = 1, max_length = 256)]
    pub username: String,
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The JWT to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cliente_id: Option<i64>,
}

/// `GET /health`.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, `degraded` (serving the last known state: the Kubernetes API is unreachable) or
    /// `starting` (the cache has not synced yet).
    #[schema(example = "ok")]
    pub status: String,
    pub service: String,
    /// RFC 3339 time of this answer.
    pub timestamp: String,
    /// Sessions in the cache.
    pub sessions: usize,
    /// Seconds since the cache last knew it was current (0 when it is).
    pub staleness_seconds: f64,
}

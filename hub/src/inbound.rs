//! What reaches the session from outside, and what it tells others: the JSON of received
//! messages (as the session pod keeps them) and of webhook deliveries, the queries of their
//! routes, checked here before they travel to the pod.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::{AnyOfBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::error::ApiError;
use crate::outbox::MessagePage;

/// A pod's `nextCursor` (a number, or null at the end) as the hub's opaque cursor string.
pub fn cursor<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Cursor {
        Number(u64),
        Text(String),
    }
    Ok(Option::<Cursor>::deserialize(deserializer)?.map(|c| match c {
        Cursor::Number(n) => n.to_string(),
        Cursor::Text(t) => t,
    }))
}

/// The `cursor` and `limit` of a page, checked, as the pod's query.
pub fn paging(cursor: Option<&str>, limit: Option<u32>) -> Result<Vec<(&'static str, String)>, ApiError> {
    let invalid = |m: String| ApiError::validation("INVALID_QUERY", m);
    let mut query = Vec::new();
    if let Some(cursor) = cursor {
        if cursor.is_empty() || cursor.len() > 20 || !cursor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("`cursor` must be a `nextCursor` from a previous page".into()));
        }
        query.push(("cursor", cursor.to_owned()));
    }
    if let Some(limit) = limit {
        if !(1..=1000).contains(&limit) {
            return Err(invalid(format!("`limit` must be 1 to 1000 (it is {limit})")));
        }
        query.push(("limit", limit.to_string()));
    }
    Ok(query)
}

/// Which messages a listing shows.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by the session.
    In,
    /// Sent through the session's outbox.
    #[default]
    Out,
}

/// A message's media, when it has some (the content itself stays on WhatsApp).
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct IncomingMedia {
    #[schema(example = "image/jpeg")]
    pub mimetype: Option<String>,
    /// Bytes.
    pub size: Option<u64>,
    pub filename: Option<String>,
}

/// A message the session received.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "3A1B2C3D4E5F60718293", "direction": "in", "from": "5491155550000", "fromLid": "123456789012345",
    "pushName": "Ana", "chat": "123456789012345@lid", "type": "chat", "body": "Hola", "timestamp": "2026-12-02T10:00:00Z",
    "quotedId": null, "media": null, "receivedAt": "2026-12-02T10:00:01Z"}))]
pub struct IncomingMessage {
    /// WhatsApp's id of the message.
    pub id: String,
    /// Always `in`.
    pub direction: Direction,
    /// The sender's phone number (digits), when WhatsApp tells it.
    pub from: Option<String>,
    /// The sender's LID (its user part), when the chat is addressed by LID.
    pub from_lid: Option<String>,
    /// The name the sender gave themselves.
    pub push_name: Option<String>,
    /// The chat (`<lid>@lid` or `<phone>@c.us`).
    pub chat: String,
    /// WhatsApp's message type: `chat` (text), `image`, `video`, `audio`, `ptt`, `document`,
    /// `sticker`, ...
    #[serde(rename = "type")]
    #[schema(example = "chat")]
    pub kind: String,
    /// The text, or the caption of media.
    pub body: String,
    /// When the sender sent it (RFC 3339).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The id of the message it replies to.
    pub quoted_id: Option<String>,
    pub media: Option<IncomingMedia>,
    /// When the session received it (RFC 3339).
    #[schema(format = DateTime)]
    pub received_at: String,
}

/// A page of received messages, newest first.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct InboundPage {
    pub messages: Vec<IncomingMessage>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, deserialize_with = "cursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/whatsapp/{clienteId}/messages`: a page of sent messages (`direction=out`, the
/// default: OutboxMessage) or of received ones (`direction=in`: IncomingMessage).
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum MessageList {
    Out(MessagePage),
    In(InboundPage),
}

impl PartialSchema for MessageList {
    fn schema() -> RefOr<Schema> {
        // anyOf, not oneOf: an empty page is a page of either.
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(MessagePage::name()))
            .item(Ref::from_schema_name(InboundPage::name()))
            .into()
    }
}

impl ToSchema for MessageList {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MessageList")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((MessagePage::name().into_owned(), MessagePage::schema()));
        MessagePage::schemas(schemas);
        schemas.push((InboundPage::name().into_owned(), InboundPage::schema()));
        InboundPage::schemas(schemas);
    }
}

/// Where a webhook delivery is.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet: retried with backoff.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the last attempt (redeliver to try again).
    Dead,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

/// One event's delivery to one webhook endpoint.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "42", "endpoint": "crm", "eventId": "evt_000000000042a1b2c3d4", "type": "message",
    "status": "pending", "attempts": 2, "lastError": "connection refused", "lastStatus": null,
    "nextAttemptAt": "2026-12-02T10:01:00Z", "createdAt": "2026-12-02T10:00:00Z", "deliveredAt": null}))]
pub struct Delivery {
    #[schema(example = "42")]
    pub id: String,
    /// The webhook's name (`spec.webhooks[].name`).
    pub endpoint: String,
    /// The event's id: the `webhook-id` header, the same on every attempt.
    pub event_id: String,
    /// `message`, `message.ack` or `state`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The HTTP status the endpoint last answered.
    pub last_status: Option<u16>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
}

/// A page of webhook deliveries, newest first.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, deserialize_with = "cursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/whatsapp/{clienteId}/webhooks/deliveries` filters and paging.
#[derive(Deserialize, IntoParams, Debug, Default)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Only deliveries in this status.
    #[param(inline)]
    pub status: Option<DeliveryStatus>,
    /// Only the deliveries to this webhook (its name).
    #[param(min_length = 1, max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub endpoint: Option<String>,
    /// The `nextCursor` of the previous page.
    #[param(min_length = 1, max_length = 20, pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
    /// Deliveries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A webhook name: what `spec.webhooks[].name` allows.
fn is_webhook_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

impl DeliveriesQuery {
    /// The query the pod is sent, checked.
    pub fn to_pod(&self) -> Result<Vec<(&'static str, String)>, ApiError> {
        let mut query = Vec::new();
        if let Some(status) = self.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(endpoint) = &self.endpoint {
            if !is_webhook_name(endpoint) {
                return Err(ApiError::validation(
                    "INVALID_QUERY",
                    "`endpoint` must be a webhook name: lowercase letters, digits and dashes, up to 63",
                ));
            }
            query.push(("endpoint", endpoint.clone()));
        }
        query.extend(paging(self.cursor.as_deref(), self.limit)?);
        Ok(query)
    }
}

/// A delivery's id as given in a path: digits, else 400 `INVALID_DELIVERY_ID`.
pub fn delivery_id(id: &str) -> Result<&str, ApiError> {
    if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(ApiError::validation("INVALID_DELIVERY_ID", "a delivery's id is a number, as its `id` says"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cursors_are_opaque_strings_and_queries_are_checked() {
        let page: InboundPage = serde_json::from_str(r#"{"messages": [], "nextCursor": 17}"#).unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("17"));
        let page: DeliveryPage = serde_json::from_str(r#"{"deliveries": [], "nextCursor": null}"#).unwrap();
        assert_eq!(page.next_cursor, None);
        assert_eq!(serde_json::to_value(&page).unwrap(), serde_json::json!({"deliveries": []}));

        let query = DeliveriesQuery {
            status: Some(DeliveryStatus::Dead),
            endpoint: Some("crm-1".into()),
            cursor: Some("9".into()),
            limit: Some(5),
        };
        let expected: Vec<(&str, String)> = vec![
            ("status", "dead".into()),
            ("endpoint", "crm-1".into()),
            ("cursor", "9".into()),
            ("limit", "5".into()),
        ];
        assert_eq!(query.to_pod().unwrap(), expected);
        for bad in [
            DeliveriesQuery { endpoint: Some("CRM".into()), ..Default::default() },
            DeliveriesQuery { endpoint: Some("-a".into()), ..Default::default() },
            DeliveriesQuery { cursor: Some("x".into()), ..Default::default() },
            DeliveriesQuery { limit: Some(0), ..Default::default() },
        ] {
            assert_eq!(bad.to_pod().unwrap_err().code(), "INVALID_QUERY");
        }
        assert_eq!(delivery_id("42").unwrap(), "42");
        assert_eq!(delivery_id("4a").unwrap_err().code(), "INVALID_DELIVERY_ID");
        assert_eq!(delivery_id("").unwrap_err().code(), "INVALID_DELIVERY_ID");
    }
}

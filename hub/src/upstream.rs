//! The one client of the session pods' API. Every call goes to the address derived from the
//! session's name ([`whatsapp_crds::session_url`]: its pod's DNS name under its headless
//! Service, both created by the operator), never to `status.endpoint`, which the session pod
//! writes and anyone able to patch the status could point anywhere. Calls are authenticated
//! with the hub token derived for that session, with a 5 s
//! connect and a 30 s read timeout; every failure maps to one [`ApiError`]. The outbox's live
//! changes come as a Server-Sent Events stream ([`SessionPods::outbox_events`]), read here.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::{Stream, StreamExt};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::SessionView;
use crate::error::ApiError;

pub struct SessionPods {
    http: reqwest::Client,
    /// For live streams: no total timeout, only one between reads (the pod sends a comment
    /// every 10 s, so a silent stream is a dead one).
    streams: reqwest::Client,
    token_key: Vec<u8>,
}

/// The longest a live stream from a pod may stay silent before it counts as broken (at least;
/// the read timeout when longer).
const STREAM_SILENCE: Duration = Duration::from_secs(30);

/// A pod's live event stream: its events as (name, data), in order.
pub struct PodEvents {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: SseDecoder,
}

impl PodEvents {
    /// The next event; `None` once the pod ended the stream, an error when it broke.
    pub async fn next(&mut self) -> Option<Result<(String, String), ApiError>> {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return Some(Ok(event));
            }
            match self.body.next().await? {
                Ok(chunk) => self.decoder.push(&chunk),
                Err(e) => return Some(Err(transport_error(e))),
            }
        }
    }
}

/// Server-Sent Events, decoded as they arrive (the subset the pods send, with `\r\n` line ends
/// and multi-line data tolerated): each event's name (`message` by default) and data.
#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete event in what was pushed.
    pub fn next_event(&mut self) -> Option<(String, String)> {
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let name = self.name.take();
                if let Some(data) = self.data.take() {
                    return Some((name.unwrap_or_else(|| "message".into()), data));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        None
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSend<'a> {
    to: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

impl SessionPods {
    pub fn new(
        token_key: Vec<u8>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> anyhow::Result<SessionPods> {
        Self::with_dns(token_key, connect_timeout, read_timeout, |b| b)
    }

    /// [`SessionPods::new`] whose pods' names resolve as `dns` says (unit tests).
    #[cfg(test)]
    pub fn resolving(
        token_key: Vec<u8>,
        hosts: &[(String, std::net::SocketAddr)],
    ) -> anyhow::Result<SessionPods> {
        let dns = |builder: reqwest::ClientBuilder| {
            hosts.iter().fold(builder, |b, (host, address)| b.resolve(host, *address))
        };
        Self::with_dns(token_key, Duration::from_secs(1), Duration::from_secs(5), dns)
    }

    fn with_dns(
        token_key: Vec<u8>,
        connect_timeout: Duration,
        read_timeout: Duration,
        dns: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> anyhow::Result<SessionPods> {
        let http = dns(reqwest::Client::builder())
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .timeout(connect_timeout + read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let streams = dns(reqwest::Client::builder())
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout.max(STREAM_SILENCE))
            .build()?;
        Ok(SessionPods { http, streams, token_key })
    }

    /// Sends a text message through the session's WhatsApp Web and answers once it is sent.
    pub async fn send<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        to: &str,
        message: &str,
        idempotency_key: Option<&str>,
    ) -> Result<T, ApiError> {
        let body = PodSend { to, message, idempotency_key };
        self.call(session, Method::POST, &["v1", "messages"], &[], Some(&body)).await
    }

    /// Logs the session out of WhatsApp (unlinks the device).
    pub async fn logout<T: DeserializeOwned>(&self, session: &SessionView) -> Result<T, ApiError> {
        self.call(session, Method::POST, &["v1", "logout"], &[], Some(&serde_json::json!({}))).await
    }

    /// Queues messages in the session pod's durable outbox (all or none).
    pub async fn outbox_submit<B: Serialize, T: DeserializeOwned>(
        &self,
        session: &SessionView,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call(session, Method::POST, &["v1", "outbox"], &[], Some(body)).await
    }

    /// One message of the outbox, by WhatsApp's id.
    pub async fn outbox_get<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        id: &str,
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "outbox", id], &[], None).await
    }

    /// A page of the outbox, newest first.
    pub async fn outbox_list<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "outbox"], query, None).await
    }

    /// Cancels a message still queued.
    pub async fn outbox_cancel<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        id: &str,
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::DELETE, &["v1", "outbox", id], &[], None).await
    }

    /// How far a batch got: its messages counted by status.
    pub async fn outbox_batch<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        batch: &str,
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "outbox", "batches", batch], &[], None).await
    }

    /// A page of the messages the session received, newest first.
    pub async fn inbound_list<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "inbound"], query, None).await
    }

    /// The file of a received message, as the pod streams it (asked from WhatsApp Web then).
    pub async fn inbound_media(
        &self,
        session: &SessionView,
        id: &str,
    ) -> Result<reqwest::Response, ApiError> {
        let url = Self::url(session, &["v1", "inbound", id, "media"], &[])?;
        let response =
            self.authorized(&self.http, session, Method::GET, url).send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        Err(refusal(status, &bytes, None))
    }

    /// A page of the session's webhook deliveries, newest first.
    pub async fn deliveries<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "webhooks", "deliveries"], query, None).await
    }

    /// Queues a webhook delivery again.
    pub async fn redeliver<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        id: &str,
    ) -> Result<T, ApiError> {
        let path = ["v1", "webhooks", "deliveries", id, "redeliver"];
        self.call(session, Method::POST, &path, &[], Some(&serde_json::json!({}))).await
    }

    /// A page of the contacts of the session's last sync.
    pub async fn contacts<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.call::<(), T>(session, Method::GET, &["v1", "contacts"], query, None).await
    }

    /// Reads the contacts WhatsApp Web knows into the session's store.
    pub async fn contacts_sync<T: DeserializeOwned>(&self, session: &SessionView) -> Result<T, ApiError> {
        self.call(session, Method::POST, &["v1", "contacts", "sync"], &[], Some(&serde_json::json!({}))).await
    }

    /// Which numbers are on WhatsApp (the pod checks them paced, and keeps the answers).
    pub async fn numbers_check<B: Serialize, T: DeserializeOwned>(
        &self,
        session: &SessionView,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call(session, Method::POST, &["v1", "numbers", "check"], &[], Some(body)).await
    }

    /// Every change of the outbox's messages from now on, as the pod's Server-Sent Events
    /// (`message`, `lagged`), until the pod ends the stream.
    pub async fn outbox_events(&self, session: &SessionView) -> Result<PodEvents, ApiError> {
        let url = Self::url(session, &["v1", "outbox", "events"], &[])?;
        let response = self
            .authorized(&self.streams, session, Method::GET, url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(transport_error)?;
            return Err(refusal(status, &bytes, None));
        }
        Ok(PodEvents { body: Box::pin(response.bytes_stream()), decoder: SseDecoder::default() })
    }

    /// A request to a session pod with its hub token.
    fn authorized(
        &self,
        client: &reqwest::Client,
        session: &SessionView,
        method: Method,
        url: reqwest::Url,
    ) -> reqwest::RequestBuilder {
        let token = whatsapp_runtime::hub_token(&self.token_key, &session.namespace, &session.name);
        client.request(method, url).bearer_auth(token).header("X-Cliente-Id", session.cliente_id.to_string())
    }

    /// The URL of a route of the session's pod: `segments` are the path's segments
    /// (percent-encoded here, so an id from a caller stays one segment).
    fn url(
        session: &SessionView,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::Url, ApiError> {
        if session.endpoint.is_none() {
            return Err(ApiError::SessionManagerUnavailable("the session pod is not serving yet".into()));
        }
        let base = whatsapp_crds::session_url(&session.namespace, &session.name);
        let mut url = reqwest::Url::parse(&base).map_err(|e| {
            ApiError::SessionManagerUnavailable(format!("the session's address {base:?} is not a URL: {e}"))
        })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// One call: `segments` are the path's segments.
    #[tracing::instrument(skip_all, fields(session = %session.name, path = segments.join("/")))]
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        session: &SessionView,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let url = Self::url(session, segments, query)?;
        let mut request = self.authorized(&self.http, session, method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            // An answer without a body (204) reads as JSON null.
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|e| {
                ApiError::SessionManagerError(format!("unreadable answer from the session pod: {e}"))
            });
        }
        Err(refusal(status, &bytes, retry_after))
    }
}

/// What a session pod's error answer becomes.
fn refusal(status: StatusCode, body: &[u8], retry_after: Option<u64>) -> ApiError {
    let (code, message, index) = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => (
            v["error"].as_str().unwrap_or_default().to_owned(),
            v["message"].as_str().unwrap_or_default().to_owned(),
            v["index"].as_u64().and_then(|i| usize::try_from(i).ok()),
        ),
        Err(_) => (String::new(), String::new(), None),
    };
    match status {
        // The pod refusing the hub means the two disagree on the token key: our fault, not
        // the caller's.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::SessionManagerError(
            "the session pod refused the hub's token (do the hub and the operator share the token key?)"
                .into(),
        ),
        StatusCode::GATEWAY_TIMEOUT => ApiError::GatewayTimeout(message),
        // The pod's session is not linked (any more): the hub's own answer for that.
        StatusCode::SERVICE_UNAVAILABLE if code == "SESSION_NOT_READY" => ApiError::SessionNotReady(message),
        // 507: the outbox or its volume is full; the caller may retry later.
        s if (s.is_client_error() || s == StatusCode::INSUFFICIENT_STORAGE) && !code.is_empty() => {
            ApiError::Upstream { status: s, code, message, index, retry_after }
        }
        s => ApiError::SessionManagerError(if message.is_empty() {
            format!("the session pod answered {s}")
        } else {
            message
        }),
    }
}

fn transport_error(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::GatewayTimeout("no answer from the session pod in time".into())
    } else if e.is_connect() {
        ApiError::SessionManagerUnavailable(format!("cannot reach the session pod: {}", root_cause(&e)))
    } else {
        ApiError::SessionManagerError(root_cause(&e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_refusals_pass_through_with_their_index_and_retry_after() {
        let full = refusal(
            StatusCode::INSUFFICIENT_STORAGE,
            br#"{"error":"OUTBOX_FULL","message":"full"}"#,
            Some(30),
        );
        assert_eq!((full.status(), full.code()), (StatusCode::INSUFFICIENT_STORAGE, "OUTBOX_FULL"));
        assert!(matches!(full, ApiError::Upstream { retry_after: Some(30), .. }));
        let bad =
            refusal(StatusCode::BAD_REQUEST, br#"{"error":"INVALID_NUMBER","message":"no","index":7}"#, None);
        assert!(matches!(bad, ApiError::Upstream { index: Some(7), .. }));
        assert_eq!(refusal(StatusCode::FORBIDDEN, b"{}", None).code(), "SESSION_MANAGER_ERROR");
        assert_eq!(refusal(StatusCode::INTERNAL_SERVER_ERROR, b"oops", None).code(), "SESSION_MANAGER_ERROR");
        assert_eq!(refusal(StatusCode::GATEWAY_TIMEOUT, b"{}", None).code(), "GATEWAY_TIMEOUT");
        let not_ready = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":"SESSION_NOT_READY","message":"QR_REQUIRED"}"#,
            None,
        );
        assert_eq!((not_ready.status(), not_ready.code()), (StatusCode::CONFLICT, "SESSION_NOT_READY"));
        let stopping = refusal(StatusCode::SERVICE_UNAVAILABLE, br#"{"error":"DRIVER_STOPPED"}"#, None);
        assert_eq!(stopping.code(), "SESSION_MANAGER_ERROR");
    }

    #[test]
    fn server_sent_events_are_decoded_across_chunks() {
        let mut decoder = SseDecoder::default();
        decoder.push(b": open\n\nevent: message\ndata: {\"id\":");
        assert_eq!(decoder.next_event(), None, "not complete yet");
        decoder.push(b"\"A\"}\n\n:\n\nevent: lagged\r\ndata: {\"missed\":3}\r\n\r\ndata: a\ndata: b\n\n");
        assert_eq!(decoder.next_event(), Some(("message".into(), r#"{"id":"A"}"#.into())));
        assert_eq!(decoder.next_event(), Some(("lagged".into(), r#"{"missed":3}"#.into())));
        assert_eq!(decoder.next_event(), Some(("message".into(), "a\nb".into())));
        assert_eq!(decoder.next_event(), None);
    }
}

//! The one client of the session pods' API. Every call goes to the session's published
//! `status.endpoint`, authenticated with the hub token derived for that session, with a 5 s
//! connect and a 30 s read timeout; every failure maps to one [`ApiError`].

use std::time::Duration;

use axum::http::StatusCode;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::SessionView;
use crate::error::ApiError;

pub struct SessionPods {
    http: reqwest::Client,
    token_key: Vec<u8>,
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
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .timeout(connect_timeout + read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(SessionPods { http, token_key })
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

    /// One call: `segments` are the path's segments (percent-encoded here, so an id from a
    /// caller stays one segment).
    #[tracing::instrument(skip_all, fields(session = %session.name, path = segments.join("/")))]
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        session: &SessionView,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let endpoint = session.endpoint.as_deref().ok_or_else(|| {
            ApiError::SessionManagerUnavailable("the session pod has not published its address yet".into())
        })?;
        let mut url =
            reqwest::Url::parse(endpoint).ok().filter(|u| !u.cannot_be_a_base()).ok_or_else(|| {
                ApiError::SessionManagerUnavailable(format!(
                    "the session pod's address {endpoint:?} is not a URL"
                ))
            })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let token = whatsapp_crds::hub_token(&self.token_key, &session.namespace, &session.name);
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(token)
            .header("X-Cliente-Id", session.cliente_id.to_string());
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
            return serde_json::from_slice(&bytes).map_err(|e| {
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
    }
}

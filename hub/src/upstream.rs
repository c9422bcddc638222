//! The one client of the session pods' API. Every call goes to the session's published
//! `status.endpoint`, authenticated with the hub token derived for that session, with a 5 s
//! connect and a 30 s read timeout; every failure maps to one [`ApiError`].

use std::time::Duration;

use axum::http::StatusCode;
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

    /// Sends a text message through the session's WhatsApp Web.
    pub async fn send<T: DeserializeOwned>(
        &self,
        session: &SessionView,
        to: &str,
        message: &str,
        idempotency_key: Option<&str>,
    ) -> Result<T, ApiError> {
        self.post(session, "/v1/messages", &PodSend { to, message, idempotency_key }).await
    }

    /// Logs the session out of WhatsApp (unlinks the device).
    pub async fn logout<T: DeserializeOwned>(&self, session: &SessionView) -> Result<T, ApiError> {
        self.post(session, "/v1/logout", &serde_json::json!({})).await
    }

    #[tracing::instrument(skip_all, fields(session = %session.name, path))]
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        session: &SessionView,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let endpoint = session.endpoint.as_deref().ok_or_else(|| {
            ApiError::SessionManagerUnavailable("the session pod has not published its address yet".into())
        })?;
        let token = whatsapp_crds::hub_token(&self.token_key, &session.namespace, &session.name);
        let response = self
            .http
            .post(format!("{endpoint}{path}"))
            .bearer_auth(token)
            .header("X-Cliente-Id", session.cliente_id.to_string())
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::SessionManagerError(format!("unreadable answer from the session pod: {e}"))
            });
        }
        let (code, message) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => (
                v["error"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            ),
            Err(_) => (String::new(), String::new()),
        };
        Err(match status {
            // The pod refusing the hub means the two disagree on the token key: our fault, not
            // the caller's.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::SessionManagerError(
                "the session pod refused the hub's token (do the hub and the operator share the token key?)"
                    .into(),
            ),
            StatusCode::GATEWAY_TIMEOUT => ApiError::GatewayTimeout(message),
            s if s.is_client_error() && !code.is_empty() => ApiError::Upstream { status: s, code, message },
            s => ApiError::SessionManagerError(if message.is_empty() {
                format!("the session pod answered {s}")
            } else {
                message
            }),
        })
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

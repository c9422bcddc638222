//! The hub's one error type and its one mapping to HTTP: every failure leaves the hub as a
//! JSON body `{error: CODE, message}` with a stable code and the status that goes with it.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Serialize, ToSchema, Debug)]
pub struct ErrorBody {
    /// Stable, machine-readable code (for example `SESSION_NOT_FOUND`).
    #[schema(example = "SESSION_NOT_FOUND")]
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// In a batch of messages: the position (0-based) of the first one refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(3))]
    pub index: Option<usize>,
}

#[derive(thiserror::Error, Debug)]
pub enum ApiError {
    #[error("clienteId must be a positive integer, got {0:?}")]
    InvalidClientId(String),
    /// A request body that is not what the route takes: `code` names what is wrong; `index`
    /// the message of a batch it is about.
    #[error("{message}")]
    Validation { code: &'static str, message: String, index: Option<usize> },
    #[error("the request body is larger than the hub accepts")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("a bearer token is required (Authorization: Bearer <JWT>)")]
    MissingToken,
    #[error("the token expired")]
    TokenExpired,
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("{0}")]
    Forbidden(String),
    #[error("no WhatsApp session for clienteId {0}")]
    SessionNotFound(i64),
    #[error("no QR code to show: the session is {0}")]
    QrNotAvailable(String),
    #[error("the session is already connected: no QR code needed")]
    AlreadyConnected,
    #[error("clienteId {0} already has a session")]
    SessionExists(i64),
    #[error("the session is not ready to send: it is {0}")]
    SessionNotReady(String),
    #[error("too many attempts; try again in {} s", .0.as_secs())]
    TooManyAttempts(Duration),
    #[error("no route {0}")]
    NotFound(String),
    #[error("no job {0:?}")]
    JobNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// An error the session pod answered with, passed through (4xx and 507 only), with its
    /// `index` (a batch's refused message) and `Retry-After`.
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        code: String,
        message: String,
        index: Option<usize>,
        retry_after: Option<u64>,
    },
    #[error("the session manager is unavailable: {0}")]
    SessionManagerUnavailable(String),
    #[error("the session manager failed: {0}")]
    SessionManagerError(String),
    #[error("the session manager did not answer in time: {0}")]
    GatewayTimeout(String),
    #[error("the hub is starting: its session cache is not synced yet")]
    NotReady,
    #[error("Kubernetes refused the change: {0}")]
    Kubernetes(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidClientId(_) | ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingToken
            | ApiError::TokenExpired
            | ApiError::InvalidToken(_)
            | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::SessionNotFound(_)
            | ApiError::QrNotAvailable(_)
            | ApiError::NotFound(_)
            | ApiError::JobNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AlreadyConnected | ApiError::SessionExists(_) | ApiError::SessionNotReady(_) => {
                StatusCode::CONFLICT
            }
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream { status, .. } => *status,
            ApiError::SessionManagerUnavailable(_) | ApiError::SessionManagerError(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Kubernetes(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            ApiError::InvalidClientId(_) => "INVALID_CLIENT_ID",
            ApiError::Validation { code, .. } => code,
            ApiError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::MissingToken => "UNAUTHORIZED",
            ApiError::TokenExpired => "TOKEN_EXPIRED",
            ApiError::InvalidToken(_) => "INVALID_TOKEN",
            ApiError::InvalidCredentials => "INVALID_CREDENTIALS",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::SessionNotFound(_) => "SESSION_NOT_FOUND",
            ApiError::QrNotAvailable(_) => "QR_NOT_AVAILABLE",
            ApiError::AlreadyConnected => "ALREADY_CONNECTED",
            ApiError::SessionExists(_) => "SESSION_EXISTS",
            ApiError::SessionNotReady(_) => "SESSION_NOT_READY",
            ApiError::TooManyAttempts(_) => "TOO_MANY_ATTEMPTS",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::JobNotFound(_) => "JOB_NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Upstream { code, .. } => code,
            ApiError::SessionManagerUnavailable(_) => "SESSION_MANAGER_UNAVAILABLE",
            ApiError::SessionManagerError(_) => "SESSION_MANAGER_ERROR",
            ApiError::GatewayTimeout(_) => "GATEWAY_TIMEOUT",
            ApiError::NotReady => "NOT_READY",
            ApiError::Kubernetes(_) => "KUBERNETES_ERROR",
        }
    }

    pub fn validation(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Validation { code, message: message.into(), index: None }
    }

    /// A refused message of a batch, at `index`.
    pub fn invalid_at(index: usize, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Validation { code, message: message.into(), index: Some(index) }
    }

    fn index(&self) -> Option<usize> {
        match self {
            ApiError::Validation { index, .. } | ApiError::Upstream { index, .. } => *index,
            _ => None,
        }
    }

    /// Seconds to wait before trying again, when known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooManyAttempts(wait) => Some(wait.as_secs().max(1)),
            ApiError::Upstream { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let body =
            ErrorBody { error: self.code().to_owned(), message: self.to_string(), index: self.index() };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after()
            && let Ok(value) = HeaderValue::from_str(&wait.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

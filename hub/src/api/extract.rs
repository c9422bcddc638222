//! Request extractors whose rejections are the hub's JSON errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::ApiError;

/// The `{clienteId}` of the path: a positive integer, else 400 `INVALID_CLIENT_ID`.
#[derive(Debug, Clone, Copy)]
pub struct ClienteId(pub i64);

/// The `{clienteId}` path parameter, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, non_snake_case)]
pub struct ClienteIdParam {
    /// The tenant's id: a positive integer.
    #[param(minimum = 1, example = 51)]
    clienteId: i64,
}

pub fn parse_cliente_id(raw: &str) -> Result<i64, ApiError> {
    match raw.trim().parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::InvalidClientId(raw.chars().take(64).collect())),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClienteId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidClientId(String::new()))?;
        let raw = params.iter().find(|(name, _)| *name == "clienteId").map_or("", |(_, value)| value);
        parse_cliente_id(raw).map(ClienteId)
    }
}

/// A JSON body; a missing or wrong content type, bad JSON, a wrong shape or an oversized body
/// get 415, 400 `INVALID_JSON` / `INVALID_BODY` and 413 as JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                JsonRejection::JsonSyntaxError(e) => ApiError::validation("INVALID_JSON", e.body_text()),
                JsonRejection::JsonDataError(e) => ApiError::validation("INVALID_BODY", e.body_text()),
                r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                r => ApiError::validation("INVALID_BODY", r.body_text()),
            }),
        }
    }
}

/// A JSON body a route may go without: `None` when the request has no body, else as
/// [`ApiJson`] (415, 400 `INVALID_JSON` / `INVALID_BODY`, 413).
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::validation("INVALID_BODY", r.body_text())
            }
        })?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&bytes).map(|v| OptionalJson(Some(v))).map_err(|e| {
            let code = if e.is_data() { "INVALID_BODY" } else { "INVALID_JSON" };
            ApiError::validation(code, e.to_string())
        })
    }
}

/// Whether a `Content-Type` is JSON (`application/json`, `application/*+json`), as axum's
/// `Json` takes it.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/').unwrap_or_default();
    kind == "application" && (sub == "json" || sub.ends_with("+json"))
}

/// The `{id}` of the path (a message or a job), as given.
#[derive(Debug, Clone)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::validation("INVALID_ID", "the id in the path is not valid UTF-8"))?;
        let id = params.iter().find(|(name, _)| *name == "id").map(|(_, value)| value.to_owned());
        id.map(PathId).ok_or_else(|| ApiError::validation("INVALID_ID", "the path has no id"))
    }
}

/// A query string; one the route does not take gets 400 `INVALID_QUERY` as a JSON error.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::validation("INVALID_QUERY", e.body_text()))
    }
}

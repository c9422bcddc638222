//! The HTTP API: routes, their OpenAPI document (generated from the handlers, so every
//! route is in it) and the middleware every request goes through.

mod compat;
mod contacts;
mod events;
mod extract;
mod login;
mod messages;
mod sender;
mod session_manager;
mod sessions;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "whatsapp-hub",
        description = "WhatsApp Web sessions as Kubernetes resources: status and QR from a watch cache, live push, sends. Every route but /health, /api/health and /auth/login takes `Authorization: Bearer <JWT>`; errors are `{error: CODE, message}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "whatsapp", description = "Today's routes, unchanged for existing frontends"),
        (name = "admin", description = "The configured admin session"),
        (name = "sessions", description = "Sessions as Kubernetes resources"),
        (name = "messages", description = "The session's durable outbox: queue up to 10,000 messages at once, follow each one, cancel"),
        (name = "sender", description = "The original system's sender routes: send one, send a bulk job, follow the job"),
        (name = "contacts", description = "The session's contacts (synced from WhatsApp Web) and which numbers are on WhatsApp"),
        (name = "webhooks", description = "Deliveries of the session's webhooks (`spec.webhooks`)"),
        (name = "session-manager", description = "The original system's internal session-manager routes, on the token's tenant's session"),
        (name = "auth", description = "Tokens for small installs")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// Errors any authenticated route may answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// `UNAUTHORIZED` (no token), `TOKEN_EXPIRED` or `INVALID_TOKEN` (bad signature, algorithm,
    /// issuer or audience).
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// `FORBIDDEN`: the token is for another clienteId, or the route is for admins.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// `NOT_READY`: the hub's session cache has not synced yet.
    #[response(status = 503)]
    NotReady(#[to_schema] ErrorBody),
}

/// Errors of routes on one clienteId's session.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SessionErrors {
    /// `INVALID_CLIENT_ID` (not a positive integer), or a validation code for a bad body.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// `SESSION_NOT_FOUND`: no session for this clienteId.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
}

/// Errors of routes that call the session pod.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum GatewayErrors {
    /// `SESSION_MANAGER_UNAVAILABLE` (the session pod cannot be reached) or
    /// `SESSION_MANAGER_ERROR` (it failed).
    #[response(status = 502)]
    BadGateway(#[to_schema] ErrorBody),
    /// `GATEWAY_TIMEOUT`: the session pod did not answer in time.
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// Errors of routes that take a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// `PAYLOAD_TOO_LARGE`.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// `UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(#[to_schema] ErrorBody),
}

/// Routes (with their documentation), the OpenAPI document, and the middleware. Bodies are
/// limited to `body_limit`, except on the routes that take a batch of messages:
/// `batch_body_limit`.
pub fn router(
    state: AppState,
    cors_origins: &[String],
    body_limit: usize,
    batch_body_limit: usize,
) -> Router {
    let batches = OpenApiRouter::new()
        .routes(routes!(messages::submit, messages::list))
        .routes(routes!(sender::send_bulk))
        .layer(axum::extract::DefaultBodyLimit::max(batch_body_limit));
    let mut routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(compat::health))
        .routes(routes!(compat::api_health))
        .routes(routes!(compat::status))
        .routes(routes!(compat::qr))
        .routes(routes!(compat::qr_code))
        .routes(routes!(compat::qr_by_header))
        .routes(routes!(compat::send))
        .routes(routes!(compat::admin_status))
        .routes(routes!(compat::admin_connect))
        .routes(routes!(compat::admin_disconnect))
        .routes(routes!(sessions::list, sessions::create))
        .routes(routes!(sessions::get, sessions::delete))
        .routes(routes!(sessions::connect))
        .routes(routes!(sessions::disconnect))
        .routes(routes!(sessions::logout))
        .routes(routes!(sessions::pairing_code))
        .routes(routes!(sessions::qr_png))
        .routes(routes!(sessions::qr_svg))
        .routes(routes!(messages::get, messages::cancel))
        .routes(routes!(messages::media))
        .routes(routes!(sender::send))
        .routes(routes!(sender::job))
        .routes(routes!(contacts::list))
        .routes(routes!(contacts::sync))
        .routes(routes!(contacts::check))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(session_manager::status))
        .routes(routes!(session_manager::state))
        .routes(routes!(session_manager::qr))
        .routes(routes!(session_manager::login))
        .routes(routes!(session_manager::logout))
        .routes(routes!(session_manager::status_alias))
        .routes(routes!(session_manager::state_alias))
        .routes(routes!(session_manager::qr_alias))
        .routes(routes!(session_manager::login_alias))
        .routes(routes!(session_manager::logout_alias))
        .merge(batches)
        .routes(routes!(openapi_json));
    if state.logins.is_some() {
        routes = routes.routes(routes!(login::login));
    }
    let (router, openapi) = routes.routes(routes!(events::events)).split_for_parts();
    let _ = state.openapi.set(openapi.to_pretty_json().expect("the OpenAPI document serializes"));

    let router = router
        .fallback(|request: Request| async move { ApiError::NotFound(request.uri().path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    let router =
        router.layer(middleware::from_fn_with_state((state.clone(), RequestIds::default()), observe));
    // Outermost, so every answer carries its headers, a timeout's 504 included (a preflight is
    // answered before an id or a metric). No origin allowed: no browser may call, so there is
    // nothing for CORS to answer.
    let router = match cors(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(axum::extract::DefaultBodyLimit::max(body_limit)).with_state(state)
}

/// What browsers on `origins` may call (`*`: any); None when no origin is allowed. An origin
/// that cannot be a header value is left out, and said.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<&str> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    let allowed = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| {
                let value = HeaderValue::from_str(o);
                if value.is_err() {
                    tracing::warn!(origin = %o.escape_debug(), "not a valid CORS origin: left out");
                }
                value.ok()
            })
            .collect();
        if list.is_empty() {
            return None;
        }
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static("x-cliente-id"),
                HeaderName::from_static("idempotency-key"),
                REQUEST_ID,
            ])
            .expose_headers([REQUEST_ID])
            .allow_origin(allowed),
    )
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/openapi.json", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<AppState>) -> Response {
    let doc = state.openapi.get().cloned().unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// Request ids: unique per process start and request (`<start>-<n>`, both in hex).
#[derive(Clone)]
struct RequestIds {
    /// When the process started, in microseconds since the epoch.
    start: u64,
    next: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        RequestIds { start, next: Default::default() }
    }
}

impl RequestIds {
    /// The next id, written on the stack (every request without an id of its own takes one).
    fn next(&self) -> HeaderValue {
        use std::io::Write;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 33];
        let mut rest = &mut id[..];
        write!(rest, "{:x}-{n:x}", self.start).expect("two u64 in hex and a dash fit in 33 bytes");
        let len = 33 - rest.len();
        HeaderValue::from_bytes(&id[..len]).expect("hex digits and a dash")
    }
}

/// What every request goes through, in one layer (each layer costs a status read about a fifth
/// of its time): its id (the caller's `x-request-id`, else a new one; echoed in the response),
/// the `request` span that the logs of its handling carry, a deadline until its response starts
/// (past the session pod's own timeouts; a live stream's body then flows for as long as it
/// lives), its count and time by route (a 5xx also logged), and the header telling when the
/// data served may be stale.
async fn observe(
    State((state, ids)): State<(AppState, RequestIds)>,
    request: Request,
    next: Next,
) -> Response {
    let id = request.headers().get(&REQUEST_ID).cloned().unwrap_or_else(|| ids.next());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    // Fields as `&str`: written without the formatting machinery.
    let span = tracing::info_span!(
        "request",
        method = method.as_str(),
        path = request.uri().path(),
        request_id = id.to_str().unwrap_or(""),
        subject = tracing::field::Empty,
    );
    let started = Instant::now();
    let handled = tokio::time::timeout(state.request_timeout, next.run(request).instrument(span.clone()));
    let mut response = handled.await.unwrap_or_else(|_| {
        let limit = state.request_timeout;
        span.in_scope(|| {
            ApiError::GatewayTimeout(format!("the request took longer than {limit:?}")).into_response()
        })
    });
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.observe_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        status.as_u16(),
        seconds,
    );
    if status.is_server_error() {
        span.in_scope(|| {
            tracing::error!(status = status.as_u16(), latency_ms = seconds * 1e3, "response failed")
        });
    }
    response.headers_mut().insert(REQUEST_ID, id);
    let staleness = state.cache.staleness();
    if !staleness.is_zero() {
        // Served from the last known state: the Kubernetes API has been unreachable this long.
        if let Ok(v) = HeaderValue::from_str(&format!("{:.0}", staleness.as_secs_f64())) {
            response.headers_mut().insert(HeaderName::from_static("x-cache-stale-seconds"), v);
        }
    }
    response
}

#[cfg(test)]
mod tests;

//! The HTTP API: routes, their OpenAPI document (generated from the handlers, so every
//! route is in it) and the middleware every request goes through.

mod compat;
mod contacts;
mod events;
mod extract;
mod login;
mod messages;
mod observe;
mod sender;
mod session_manager;
mod sessions;
mod webhooks;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tower::Layer;
use tower::util::Either;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

use observe::{Observe, REQUEST_ID};

/// The API as served: the router, observed, behind CORS when browsers may call.
pub type App = Either<Cors<Observe>, Observe>;

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
pub fn app(state: AppState, cors_origins: &[String], body_limit: usize, batch_body_limit: usize) -> App {
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
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone());
    let api = Observe::new(router, state, openapi.paths.paths.keys().map(String::as_str), body_limit);
    // Outermost, so every answer carries its headers, a timeout's 504 included (a preflight is
    // answered before an id or a metric). No origin allowed: no browser may call, so there is
    // nothing for CORS to answer.
    match cors(cors_origins) {
        Some(cors) => Either::Left(cors.layer(api)),
        None => Either::Right(api),
    }
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

#[cfg(test)]
mod tests;

//! What every request goes through, as one service wrapped once around the router (a layer on
//! the router would wrap each route, and box and clone it on every request): its id (the
//! caller's `x-request-id`, else a new one; echoed in the response), the `request` span that the
//! logs of its handling carry, the body limit of a request with a body, a deadline until its
//! response starts (past the session pod's own timeouts; a live stream's body then flows for as
//! long as it lives), its count and time by route (a 5xx also logged), and the header telling
//! when the data served may be stale.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use tokio::time::Sleep;
use tower::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::error::ApiError;
use crate::metrics::RouteMetrics;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The router, observed.
#[derive(Clone)]
pub struct Observe {
    router: Router,
    shared: Arc<Shared>,
}

struct Shared {
    state: AppState,
    ids: RequestIds,
    /// The route patterns, to label a request's metrics by (the router keeps the pattern it
    /// matched to itself): each pattern's index in `metrics`.
    routes: matchit::Router<usize>,
    /// The metrics of each route, and last those of requests no route matched.
    metrics: Vec<RouteMetrics>,
    body_limit: DefaultBodyLimit,
}

impl Observe {
    /// `router` observed, its requests labelled by the `patterns` it routes (an unknown path is
    /// `unmatched`), and a body limited to `body_limit` bytes unless a route says otherwise.
    pub fn new<'a>(
        router: Router,
        state: AppState,
        patterns: impl IntoIterator<Item = &'a str>,
        body_limit: usize,
    ) -> Observe {
        let (mut routes, mut metrics) = (matchit::Router::new(), Vec::new());
        for pattern in patterns {
            routes.insert(pattern, metrics.len()).expect("the router's own patterns do not conflict");
            metrics.push(state.metrics.route(pattern));
        }
        metrics.push(state.metrics.route("unmatched"));
        let (ids, body_limit) = (RequestIds::default(), DefaultBodyLimit::max(body_limit));
        Observe { router, shared: Arc::new(Shared { state, ids, routes, metrics, body_limit }) }
    }
}

impl Service<Request> for Observe {
    type Response = Response;
    type Error = Infallible;
    type Future = Observed;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Observed {
        let shared = &self.shared;
        let id = request.headers().get(&REQUEST_ID).cloned().unwrap_or_else(|| shared.ids.next());
        // Fields as `&str`: written without the formatting machinery.
        let span = tracing::info_span!(
            "request",
            method = request.method().as_str(),
            path = request.uri().path(),
            request_id = id.to_str().unwrap_or(""),
            subject = tracing::field::Empty,
        );
        if !request.body().is_end_stream() {
            shared.body_limit.apply(&mut request);
        }
        let method = request.method().clone();
        let route = shared.routes.at(request.uri().path()).map_or(shared.metrics.len() - 1, |m| *m.value);
        Observed {
            handled: self.router.call(request).instrument(span),
            deadline: None,
            started: Instant::now(),
            id: Some(id),
            method,
            route,
            shared: shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being handled, observed.
    pub struct Observed {
        #[pin]
        handled: Instrumented<RouteFuture<Infallible>>,
        // The timer of the request's deadline, made once it waits: most are answered at once.
        deadline: Option<Pin<Box<Sleep>>>,
        started: Instant,
        id: Option<HeaderValue>,
        method: Method,
        route: usize,
        shared: Arc<Shared>,
    }
}

impl Future for Observed {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let mut response = match this.handled.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(infallible)) => match infallible {},
            Poll::Pending => {
                let limit = shared.state.request_timeout;
                let deadline = match this.deadline {
                    Some(deadline) => deadline,
                    None => {
                        // A deadline past what a clock can hold is none.
                        let Some(at) = this.started.checked_add(limit) else { return Poll::Pending };
                        this.deadline.insert(Box::pin(tokio::time::sleep_until(at.into())))
                    }
                };
                ready!(deadline.as_mut().poll(cx));
                this.handled.span().in_scope(|| {
                    ApiError::GatewayTimeout(format!("the request took longer than {limit:?}"))
                        .into_response()
                })
            }
        };
        let span = this.handled.span();
        let status = response.status();
        let seconds = this.started.elapsed().as_secs_f64();
        shared.metrics[*this.route].observe(this.method, status.as_u16(), seconds);
        if status.is_server_error() {
            span.in_scope(|| {
                tracing::error!(status = status.as_u16(), latency_ms = seconds * 1e3, "response failed")
            });
        }
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        let staleness = shared.state.cache.staleness();
        if !staleness.is_zero() {
            // Served from the last known state: the Kubernetes API has been unreachable this long.
            if let Ok(v) = HeaderValue::from_str(&format!("{:.0}", staleness.as_secs_f64())) {
                response.headers_mut().insert(HeaderName::from_static("x-cache-stale-seconds"), v);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// Request ids: unique per process start and request (`<start>-<n>`, both in hex).
struct RequestIds {
    /// When the process started, in microseconds since the epoch.
    start: u64,
    next: AtomicU64,
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

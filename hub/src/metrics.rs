//! Prometheus metrics of the hub, served at `/metrics` on the metrics port.

use std::sync::{Mutex, OnceLock};

use axum::http::Method;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use whatsapp_runtime::telemetry::{registered, render};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    pub sse_clients: IntGauge,
    pub pod_event_streams: IntGauge,
    pub cache_sessions: IntGauge,
    pub cache_staleness: Gauge,
    pub cache_synced: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new().expect("the metric definitions are static and valid")
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new("whatsapp_hub_http_requests_total", "HTTP requests, by route, method and status."),
                &["route", "method", "status"],
            ),
        )?;
        let request_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "whatsapp_hub_http_request_duration_seconds",
                    "Time to answer an HTTP request (to the first byte for live streams), by route and method.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["route", "method"],
            ),
        )?;
        let sse_clients = registered(
            &registry,
            IntGauge::new("whatsapp_hub_sse_clients", "Open Server-Sent Events streams."),
        )?;
        let pod_event_streams = registered(
            &registry,
            IntGauge::new(
                "whatsapp_hub_pod_event_streams",
                "Event streams open to session pods (one per session with open SSE clients).",
            ),
        )?;
        let cache_sessions = registered(
            &registry,
            IntGauge::new("whatsapp_hub_cache_sessions", "WhatsAppSession resources in the watch cache."),
        )?;
        let cache_staleness = registered(
            &registry,
            Gauge::new(
                "whatsapp_hub_cache_staleness_seconds",
                "Seconds since the watch cache last knew it was current (0 while the watch is healthy).",
            ),
        )?;
        let cache_synced = registered(
            &registry,
            IntGauge::new(
                "whatsapp_hub_cache_synced",
                "1 once the watch cache was filled from a complete list.",
            ),
        )?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            sse_clients,
            pod_event_streams,
            cache_sessions,
            cache_staleness,
            cache_synced,
        })
    }

    /// The request metrics of `route` (a router pattern, or `unmatched`).
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
            seen: Default::default(),
            adding: Mutex::new(()),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Method and status pairs of a route whose metric children are kept at hand.
const SEEN: usize = 32;

/// The request metrics of one route: each request counts and times itself without hashing a
/// label or taking a lock once its method and status were seen (the children are found by a
/// scan of slots written once, in order).
pub struct RouteMetrics {
    route: Box<str>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    seen: [OnceLock<RequestHandles>; SEEN],
    /// Held to fill the next slot.
    adding: Mutex<()>,
}

impl RouteMetrics {
    /// Counts and times one request.
    pub fn observe(&self, method: &Method, status: u16, seconds: f64) {
        let method = method_label(method);
        match self.find(method, status) {
            Some(handles) => handles.observe(seconds),
            None => self.add(method, status).observe(seconds),
        }
    }

    fn find(&self, method: &str, status: u16) -> Option<&RequestHandles> {
        self.seen.iter().map_while(OnceLock::get).find(|h| h.status == status && h.method == method)
    }

    /// The children of a pair not seen yet, kept in the next free slot (once all are taken,
    /// resolved by their labels each time).
    fn add(&self, method: &'static str, status: u16) -> std::borrow::Cow<'_, RequestHandles> {
        let _adding = self.adding.lock().expect("lock");
        // Added meanwhile by another request.
        if let Some(handles) = self.find(method, status) {
            return std::borrow::Cow::Borrowed(handles);
        }
        let handles = RequestHandles {
            method,
            status,
            requests: self.requests.with_label_values(&[&*self.route, method, &status.to_string()]),
            duration: self.request_duration.with_label_values(&[&*self.route, method]),
        };
        match self.seen.iter().find(|slot| slot.get().is_none()) {
            Some(slot) => std::borrow::Cow::Borrowed(slot.get_or_init(|| handles)),
            None => std::borrow::Cow::Owned(handles),
        }
    }
}

/// A request's method as its metrics label: a method HTTP does not define is `OTHER` (a caller
/// may send any token, and each label value is a series kept for good).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The children of the request metrics for one route, method and status.
#[derive(Clone)]
struct RequestHandles {
    method: &'static str,
    status: u16,
    requests: IntCounter,
    duration: Histogram,
}

impl RequestHandles {
    fn observe(&self, seconds: f64) {
        self.requests.inc();
        self.duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method and status pair is counted under its own labels, past the slots kept at hand
    /// too, and from several threads at once; a method HTTP does not define, as `OTHER`.
    #[test]
    fn a_route_counts_each_method_and_status() {
        let metrics = Metrics::default();
        let route = metrics.route("/api/x/{id}");
        let statuses: Vec<u16> = (0..SEEN as u16 / 2 + 4).map(|i| 200 + i).collect();
        std::thread::scope(|threads| {
            for _ in 0..4 {
                threads.spawn(|| {
                    for status in &statuses {
                        route.observe(&Method::GET, *status, 0.001);
                        route.observe(&Method::POST, *status, 0.001);
                    }
                    route.observe(&Method::from_bytes(b"MADEUP").unwrap(), 405, 0.001);
                });
            }
        });
        let text = metrics.render();
        for status in &statuses {
            for method in ["GET", "POST"] {
                let line = format!(
                    r#"whatsapp_hub_http_requests_total{{method="{method}",route="/api/x/{{id}}",status="{status}"}} 4"#
                );
                assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
            }
        }
        let other = r#"whatsapp_hub_http_requests_total{method="OTHER",route="/api/x/{id}",status="405"} 4"#;
        assert!(text.lines().any(|l| l == other) && !text.contains("MADEUP"), "{other} in\n{text}");
        let count = r#"whatsapp_hub_http_request_duration_seconds_count{method="GET",route="/api/x/{id}"}"#;
        let expected = format!("{count} {}", 4 * statuses.len());
        assert!(text.lines().any(|l| l == expected), "{expected} in\n{text}");
    }
}

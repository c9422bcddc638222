//! Prometheus metrics of the hub, served at `/metrics` on the metrics port.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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
    /// The request metrics' children, by route: resolved once per route, method and status.
    request_handles: Arc<RwLock<HashMap<Box<str>, Vec<RequestHandles>>>>,
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
            request_handles: Default::default(),
            sse_clients,
            pod_event_streams,
            cache_sessions,
            cache_staleness,
            cache_synced,
        })
    }

    /// Counts and times one request of `route` (the router's pattern), without hashing its
    /// labels or allocating once the route, method and status were seen.
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let matches = |h: &&RequestHandles| h.status == status && h.method == method;
        if let Some(h) =
            self.request_handles.read().expect("lock").get(route).and_then(|v| v.iter().find(matches))
        {
            return h.observe(seconds);
        }
        let mut handles = self.request_handles.write().expect("lock");
        let of_route = handles.entry(route.into()).or_default();
        if of_route.iter().find(matches).is_none() {
            of_route.push(RequestHandles {
                method: method.clone(),
                status,
                requests: self.requests.with_label_values(&[route, method.as_str(), &status.to_string()]),
                duration: self.request_duration.with_label_values(&[route, method.as_str()]),
            });
        }
        of_route.iter().find(matches).expect("just added").observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The children of the request metrics for one route, method and status.
struct RequestHandles {
    method: Method,
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

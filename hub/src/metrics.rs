//! Prometheus metrics of the hub, served at `/metrics` on the metrics port.

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use whatsapp_runtime::telemetry::{registered, render};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

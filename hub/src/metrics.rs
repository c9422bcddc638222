//! Prometheus metrics of the hub, served at `/metrics` on the metrics port.

use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub sse_clients: IntGauge,
    pub cache_sessions: IntGauge,
    pub cache_staleness: Gauge,
    pub cache_synced: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new().expect("the metric definitions are static and valid")
    }
}

/// Registers a new collector and hands it back.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> prometheus::Result<C> {
    let collector = collector?;
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
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
            cache_sessions,
            cache_staleness,
            cache_synced,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

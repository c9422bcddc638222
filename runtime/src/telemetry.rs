//! Logs and metrics plumbing shared by every binary, so they log and expose metrics alike.

use prometheus::{Encoder, Registry};

/// `Content-Type` of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

mod json_span_fields;

/// Logs to stderr as `text` or `json`, filtered by `RUST_LOG` (else `default_filter`). Text is
/// colored only on a terminal: a container's log is read as plain text. In JSON, a span's fields
/// are written as one object, and a field recorded later is added to it in place
/// ([`json_span_fields::JsonSpanFields`]).
pub fn init_tracing(format: &str, default_filter: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().fmt_fields(json_span_fields::JsonSpanFields).init()
    } else {
        builder.init()
    }
}

/// Registers a new collector in `registry` and hands it back.
pub fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> prometheus::Result<C> {
    let collector = collector?;
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf).expect("text encoding");
    String::from_utf8(buf).expect("metrics are UTF-8")
}

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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_owned());
    // Directives by target and level only (the usual ones) filter without the locks `EnvFilter`
    // takes on every span's creation, entry, exit and close to follow span-level directives.
    let (targets, env_filter) = match directives.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) => (Some(targets), None),
        Err(_) => (None, Some(tracing_subscriber::EnvFilter::new(directives))),
    };
    let ansi = std::io::stderr().is_terminal();
    let json = (format == "json").then(|| {
        let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
        fmt.json().fmt_fields(json_span_fields::JsonSpanFields)
    });
    let text = (format != "json")
        .then(|| tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr));
    tracing_subscriber::registry().with(json).with(text).with(targets).with(env_filter).init()
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

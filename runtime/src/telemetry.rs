//! Logs and metrics plumbing shared by every binary, so they log and expose metrics alike.

use prometheus::{Encoder, Registry};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;

/// `Content-Type` of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

mod json_span_fields;

/// Logs to stderr as `text` or `json`, filtered by `RUST_LOG` (else `default_filter`; one that
/// does not parse is said and replaced by `default_filter`, as an empty one is). Text is
/// colored only on a terminal: a container's log is read as plain text. In JSON, a span's fields
/// are written as one object, and a field recorded later is added to it without parsing it
/// back ([`json_span_fields::JsonSpanFields`]).
pub fn init_tracing(format: &str, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("RUST_LOG").ok().filter(|d| !d.trim().is_empty());
    let directives = directives.as_deref().unwrap_or(default_filter);
    let (targets, env_filter, refused) = filter(directives, default_filter);
    let ansi = std::io::stderr().is_terminal();
    let json = (format == "json").then(|| {
        let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
        fmt.json().fmt_fields(json_span_fields::JsonSpanFields)
    });
    let text = (format != "json")
        .then(|| tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr));
    tracing_subscriber::registry().with(json).with(text).with(targets).with(env_filter).init();
    if let Some(error) = refused {
        tracing::warn!(%error, directives, "RUST_LOG does not parse: logging as {default_filter}");
    }
}

/// The filter of `directives`: by target and level only (`Targets`) when that is all they say,
/// so no lock is taken per span; else `EnvFilter`, which follows span and field directives (and
/// takes locks every worker shares at each span's creation, entry, exit and close). Directives
/// that do not parse give `default_filter`'s, and the error.
fn filter(
    directives: &str,
    default_filter: &str,
) -> (Option<Targets>, Option<EnvFilter>, Option<tracing_subscriber::filter::ParseError>) {
    let plain = !directives.contains(['[', ']', '{', '}'])
        && directives.split(',').all(|directive| !directive.trim().is_empty());
    if let Some(targets) = plain.then(|| directives.parse::<Targets>().ok()).flatten() {
        return (Some(targets), None, None);
    }
    match EnvFilter::builder().parse(directives) {
        Ok(env_filter) => (None, Some(env_filter), None),
        Err(error) => (None, Some(EnvFilter::new(default_filter)), Some(error)),
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

#[cfg(test)]
mod tests {
    use super::filter;

    /// Which filter each kind of `RUST_LOG` gets: `Targets` only for plain target and level
    /// lists, `EnvFilter` for span and field directives and empty pieces, and the default for
    /// what does not parse.
    #[test]
    fn directives_get_the_filter_that_follows_them() {
        let kind = |directives| match filter(directives, "info") {
            (Some(_), None, None) => "targets",
            (None, Some(_), None) => "env",
            (None, Some(_), Some(_)) => "default",
            other => panic!("{directives}: {other:?}"),
        };
        assert_eq!(kind("info"), "targets");
        assert_eq!(kind("whatsapp_hub=debug,kube=warn"), "targets");
        assert_eq!(kind("info,"), "env", "an empty piece is skipped, not a target of everything");
        assert_eq!(kind("[request]=debug"), "env");
        assert_eq!(kind("whatsapp_hub[request{subject}]=debug"), "env");
        assert_eq!(kind("whatsapp_hub=debgu"), "default");
    }
}

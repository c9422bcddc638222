//! The fields of a span as the JSON logs carry them, written straight into the one string the
//! `fmt` layer keeps per span.
//!
//! tracing-subscriber's own `JsonFields` collects a span's fields into a map and serializes it,
//! and for every field recorded later parses that string back, adds the field and serializes
//! again. The hub opens a span per request and records its caller once the token is verified:
//! that round trip was about half of what a status read cost the hub (2.4 µs of 5.0 µs in
//! process). Here the object is written once, and a later field is spliced in before its
//! closing brace.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Span fields as a JSON object (`{"name":value,...}`): strings and `Debug`/`Display` values
/// as JSON strings, numbers and booleans as themselves. A field recorded twice appears twice;
/// a JSON reader keeps the last.
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        // Gathered first and handed to the `fmt` layer in one piece: its string then takes one
        // allocation of the right size instead of growing from empty (glibc's malloc takes its
        // arena's lock to grow a block, and workers growing theirs at once waited on each other:
        // the hub's request spans were the second cause of its futex calls under load).
        let mut gathered = String::with_capacity(GATHERED);
        let mut object = Members { out: &mut gathered, any: false, result: Ok(()) };
        object.out.push('{');
        fields.record(&mut object);
        object.result?;
        gathered.push('}');
        writer.write_str(&gathered)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Into a new string with room to spare, not grown in place (see `format_fields`).
        let so_far = &current.fields;
        let mut fields_now = String::with_capacity(so_far.len() + LATER_FIELDS);
        // Without its closing brace (a span formatted elsewhere would have its braces).
        fields_now.push_str(so_far.strip_suffix('}').filter(|s| s.starts_with('{')).unwrap_or("{"));
        let any = fields_now.len() > 1;
        let mut object = Members { out: &mut fields_now, any, result: Ok(()) };
        fields.record(&mut object);
        let result = object.result;
        fields_now.push('}');
        current.fields = fields_now;
        result
    }
}

/// Room for the fields a span records after it opens (the hub's request adds its caller).
const LATER_FIELDS: usize = 64;

/// Room for a span's fields as they are gathered (the hub's request span takes about 150 bytes).
const GATHERED: usize = 256;

/// Writes each field it visits as a member of an open JSON object.
struct Members<'a, W: Write> {
    out: &'a mut W,
    /// Whether a member was written before (the next one needs a comma).
    any: bool,
    result: fmt::Result,
}

impl<W: Write> Members<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if std::mem::replace(&mut self.any, true) {
                self.out.write_char(',')?;
            }
            quoted(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| quoted(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as strings.
        if value.is_finite() {
            self.member(field, |out| write!(out, "{value}"));
        } else {
            self.member(field, |out| write!(out, "\"{value}\""));
        }
    }
}

/// `text` as a JSON string.
fn quoted(out: &mut impl Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string.
struct Escaping<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Byte by byte: what needs escaping is ASCII, and no byte of a multi-byte character is.
        let mut plain = 0;
        for (i, b) in text.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                b if b < b' ' => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", b)?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Where the test's subscriber writes its lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// The JSON line an event inside a span with these fields was logged as.
    fn logged(run: impl FnOnce()) -> Value {
        let lines = Lines::default();
        let subscriber =
            tracing_subscriber::fmt().json().fmt_fields(JsonSpanFields).with_writer(lines.clone()).finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn a_span_s_fields_and_the_ones_recorded_later_are_one_json_object() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "request",
                method = %"GET",
                path = "/a \"quoted\"\\ path\n\u{1}",
                attempt = 3u64,
                delta = -2i64,
                ok = true,
                ratio = 0.5f64,
                odd = f64::NAN,
                subject = tracing::field::Empty,
                later = tracing::field::Empty,
            );
            span.record("subject", "user-1");
            span.record("later", 7u64);
            span.in_scope(|| tracing::info!("inside"));
        });
        let span = &line["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["method"], "GET");
        assert_eq!(span["path"], "/a \"quoted\"\\ path\n\u{1}");
        assert_eq!((span["attempt"].as_u64(), span["delta"].as_i64()), (Some(3), Some(-2)));
        assert_eq!((span["ok"].as_bool(), span["ratio"].as_f64()), (Some(true), Some(0.5)));
        assert_eq!(span["odd"], "NaN");
        assert_eq!((span["subject"].as_str(), span["later"].as_u64()), (Some("user-1"), Some(7)));
        assert_eq!(line["spans"][0], *span);
    }

    #[test]
    fn a_span_without_fields_and_one_given_fields_only_later() {
        let line = logged(|| {
            tracing::info_span!("outer").in_scope(|| {
                let inner = tracing::info_span!("inner", who = tracing::field::Empty);
                inner.record("who", "x");
                inner.in_scope(|| tracing::info!("inside"));
            });
        });
        assert_eq!(line["spans"][0], serde_json::json!({"name": "outer"}));
        assert_eq!(line["span"], serde_json::json!({"name": "inner", "who": "x"}));
    }
}

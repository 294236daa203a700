//! The daemon's event log format: `tracing` events to stderr as text lines
//! (`tracing-subscriber`'s own format, with an RFC 3339 UTC timestamp) or, with
//! `up --log-format json`, one JSON object per line:
//!
//! ```json
//! {"timestamp":"2026-12-06T01:02:03.456Z","level":"INFO","message":"edit authorize: ok","owner":"111122223333","command":"authorize","result":"ok","generation":4}
//! ```
//!
//! Contract: every line is one complete JSON object with `timestamp` (UTC,
//! millisecond precision, `Z`), `level` (`ERROR` .. `TRACE`), `message` and the
//! event's fields as top-level keys (numbers and booleans as JSON values, the
//! rest as strings; a field named like a fixed key is prefixed `field.`).
//! Allocates per event (the control plane logs, never the datapath).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How the event log is written (`up --log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (timestamp, level, message, fields).
    Text,
    /// One JSON object per line (see the module docs).
    Json,
}

/// The JSON line format.
pub struct JsonFormat;

struct Fields(Map<String, Value>);

const FIXED: [&str; 3] = ["timestamp", "level", "message"];

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        let name = field.name();
        let key = if name != "message" && FIXED.contains(&name) {
            format!("field.{name}")
        } else {
            name.to_owned()
        };
        self.0.insert(key, v);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields(Map::new());
        event.record(&mut f);
        let mut obj = Map::new();
        obj.insert("timestamp".into(), Value::String(rfc3339_now()));
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        obj.insert(
            "message".into(),
            f.0.remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        obj.extend(f.0);
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(w, "{line}")
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Unix seconds + milliseconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_796_518_923, 456), "2026-12-06T01:02:03.456Z");
    }
}

//! The access log's line (docs/ARCHITECTURE.md §11), formatted by hand.
//!
//! One line per request is most of what fusebox logs, and through tracing-subscriber's
//! formatter it cost about 9,000 instructions a request (15 % of the whole proxied request):
//! a dynamic visitor per field, a fresh `String`, the date computed from scratch for every
//! line. Here the same bytes — checked against tracing-subscriber's own output by the tests
//! below — are written into a reused buffer, with the date and time formatted once a second.
//! Without fusebox's log buffer (an embedding that installs its own subscriber) or with ANSI
//! colours (a terminal), the line goes out as a `tracing` event instead ([`event`]).

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;

/// The fields of one access-log line.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub upstream: &'a str,
    pub destination: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Only on gRPC calls.
    pub grpc_status: Option<&'a str>,
    pub outcome: &'a str,
    pub attempts: u32,
    /// Whole microseconds, logged as milliseconds with at most three decimals (`38.991`,
    /// never `38.990868999999996`).
    pub duration_micros: u64,
    /// Only on local replies.
    pub reason: Option<&'a str>,
    /// Only on local replies: the reply's line — what failed, whose fault, what was sent.
    pub cause: Option<&'a str>,
    /// Only on requests that came through HTTPS interception.
    pub intercepted: bool,
    /// Only when hedges were sent (§18): which copy of the request answered, 1 the first.
    pub copy: Option<u32>,
    /// Only on requests a `[[route]]` of the policy took: its name.
    pub route: Option<&'a str>,
}

/// The line as a `tracing` event (target `fusebox::access`), for whatever subscriber is
/// installed.
pub fn event(line: &AccessLine<'_>) {
    info!(
        target: "fusebox::access",
        upstream = %line.upstream,
        destination = %line.destination,
        method = %line.method,
        path = line.path,
        status = line.status,
        grpc_status = line.grpc_status,
        outcome = line.outcome,
        attempts = line.attempts,
        // An exact conversion for any duration under 285 years.
        duration_ms = line.duration_micros as f64 / 1000.0,
        reason = line.reason,
        cause = line.cause,
        intercepted = line.intercepted.then_some(true),
        copy = line.copy,
        route = line.route,
    );
}

/// Appends the line as tracing-subscriber's text format writes it.
pub fn write_text(out: &mut Vec<u8>, timestamp: &[u8], line: &AccessLine<'_>) {
    out.extend_from_slice(timestamp);
    out.extend_from_slice(b"  INFO fusebox::access: ");
    // As tracing-subscriber does: `Display` fields (`%` in `event`) as they are, strings with
    // `Debug` (quoted, escaped), numbers and floats with `Debug`.
    out.extend_from_slice(b"upstream=");
    out.extend_from_slice(line.upstream.as_bytes());
    out.extend_from_slice(b" destination=");
    out.extend_from_slice(line.destination.as_bytes());
    out.extend_from_slice(b" method=");
    out.extend_from_slice(line.method.as_bytes());
    out.extend_from_slice(b" path=");
    debug_str(out, line.path);
    out.extend_from_slice(b" status=");
    decimal(out, u64::from(line.status));
    if let Some(code) = line.grpc_status {
        out.extend_from_slice(b" grpc_status=");
        debug_str(out, code);
    }
    out.extend_from_slice(b" outcome=");
    debug_str(out, line.outcome);
    out.extend_from_slice(b" attempts=");
    decimal(out, u64::from(line.attempts));
    out.extend_from_slice(b" duration_ms=");
    millis(out, line.duration_micros);
    if let Some(reason) = line.reason {
        out.extend_from_slice(b" reason=");
        debug_str(out, reason);
    }
    if let Some(cause) = line.cause {
        out.extend_from_slice(b" cause=");
        debug_str(out, cause);
    }
    if line.intercepted {
        out.extend_from_slice(b" intercepted=true");
    }
    if let Some(copy) = line.copy {
        out.extend_from_slice(b" copy=");
        decimal(out, u64::from(copy));
    }
    if let Some(route) = line.route {
        out.extend_from_slice(b" route=");
        debug_str(out, route);
    }
    out.push(b'\n');
}

/// Appends the line as tracing-subscriber's JSON format writes it.
pub fn write_json(out: &mut Vec<u8>, timestamp: &[u8], line: &AccessLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    out.extend_from_slice(timestamp);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{");
    json_field(out, "upstream", line.upstream);
    out.push(b',');
    json_field(out, "destination", line.destination);
    out.push(b',');
    json_field(out, "method", line.method);
    out.push(b',');
    json_field(out, "path", line.path);
    out.extend_from_slice(b",\"status\":");
    decimal(out, u64::from(line.status));
    if let Some(code) = line.grpc_status {
        out.push(b',');
        json_field(out, "grpc_status", code);
    }
    out.push(b',');
    json_field(out, "outcome", line.outcome);
    out.extend_from_slice(b",\"attempts\":");
    decimal(out, u64::from(line.attempts));
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, line.duration_micros);
    if let Some(reason) = line.reason {
        out.push(b',');
        json_field(out, "reason", reason);
    }
    if let Some(cause) = line.cause {
        out.push(b',');
        json_field(out, "cause", cause);
    }
    if line.intercepted {
        out.extend_from_slice(b",\"intercepted\":true");
    }
    if let Some(copy) = line.copy {
        out.extend_from_slice(b",\"copy\":");
        decimal(out, u64::from(copy));
    }
    if let Some(route) = line.route {
        out.push(b',');
        json_field(out, "route", route);
    }
    out.extend_from_slice(b"},\"target\":\"fusebox::access\"}\n");
}

/// `value` as `{:?}` writes it: quoted, and escaped when it needs to be (rarely: paths are
/// URI characters).
fn debug_str(out: &mut Vec<u8>, value: &str) {
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

/// Microseconds as milliseconds, written as `{:?}` and JSON write the `f64` `micros / 1000`:
/// the shortest decimal, at least one fractional digit (`0.0`, `1.0`, `38.99`, `0.005`).
fn millis(out: &mut Vec<u8>, micros: u64) {
    decimal(out, micros / 1000);
    out.push(b'.');
    // The fraction's three digits, less its trailing zeros (at least one digit).
    let fraction = micros % 1000;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let keep = match fraction {
        0 => 1,
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    out.extend(digits[..keep].iter().map(|&d| b'0' + d as u8));
}

/// Appends `value` in decimal (what `{}` writes, without the formatting machinery).
fn decimal(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn json_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `2026-12-06T05:48:36.276883Z`, as tracing-subscriber writes it.
const TIMESTAMP_LEN: usize = 27;

/// The current second's `2026-12-06T05:48:36.` (one per thread), so that a line only formats
/// its microseconds.
struct SecondCache {
    second: u64,
    prefix: [u8; 20],
}

thread_local! {
    static SECOND: RefCell<SecondCache> = const {
        RefCell::new(SecondCache { second: u64::MAX, prefix: [0; 20] })
    };
}

/// The wall-clock time now, RFC 3339 with microseconds, in UTC.
pub fn timestamp() -> [u8; TIMESTAMP_LEN] {
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut text = [0u8; TIMESTAMP_LEN];
    SECOND.with_borrow_mut(|cache| {
        if cache.second != since_epoch.as_secs() {
            let whole = humantime::format_rfc3339_micros(now).to_string();
            cache.prefix.copy_from_slice(&whole.as_bytes()[..20]);
            cache.second = since_epoch.as_secs();
        }
        text[..20].copy_from_slice(&cache.prefix);
    });
    let mut micros = since_epoch.subsec_micros();
    for digit in text[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    text[26] = b'Z';
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = Captured;
        fn make_writer(&self) -> Captured {
            self.clone()
        }
    }

    /// What tracing-subscriber writes for the line's event, without its timestamp.
    fn as_tracing_writes(line: &AccessLine<'_>, json: bool) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_writer(captured.clone());
        if json {
            tracing::subscriber::with_default(builder.json().finish(), || event(line));
        } else {
            tracing::subscriber::with_default(builder.finish(), || event(line));
        }
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn lines() -> Vec<AccessLine<'static>> {
        let plain = AccessLine {
            upstream: "payments",
            destination: "api.example.com:443",
            method: "GET",
            path: "/v1/charges",
            status: 200,
            grpc_status: None,
            outcome: "ok",
            attempts: 1,
            duration_micros: 38_991,
            reason: None,
            cause: None,
            intercepted: false,
            copy: None,
            route: None,
        };
        vec![
            plain,
            AccessLine {
                status: 503,
                outcome: "breaker_open",
                attempts: 0,
                duration_micros: 0,
                reason: Some("breaker-open"),
                cause: Some("breaker open for api.example.com:443 \"quoted\" until 12:00:01\u{7}"),
                ..plain
            },
            AccessLine {
                path: "/quote\"back\\slash\u{7}/é",
                duration_micros: 1_000,
                intercepted: true,
                copy: None,
                ..plain
            },
            AccessLine {
                method: "POST",
                path: "/helloworld.Greeter/SayHello",
                grpc_status: Some("unavailable"),
                outcome: "upstream_error",
                attempts: 3,
                duration_micros: 1_234_500,
                ..plain
            },
            AccessLine {
                duration_micros: 5,
                route: Some("reports"),
                ..plain
            },
            AccessLine {
                duration_micros: 120_050,
                ..plain
            },
            AccessLine {
                duration_micros: 987_654_321_001,
                ..plain
            },
        ]
    }

    #[test]
    fn text_lines_are_what_tracing_subscriber_writes() {
        for line in lines() {
            let mut ours = Vec::new();
            write_text(&mut ours, b"", &line);
            let ours = String::from_utf8(ours).unwrap();
            // Without a timer, tracing-subscriber starts at the level: " INFO ...".
            assert_eq!(ours[1..], as_tracing_writes(&line, false), "{line:?}");
        }
    }

    #[test]
    fn json_lines_are_what_tracing_subscriber_writes() {
        for line in lines() {
            let mut ours = Vec::new();
            write_json(&mut ours, b"T", &line);
            let ours = String::from_utf8(ours)
                .unwrap()
                .replacen("\"timestamp\":\"T\",", "", 1);
            assert_eq!(ours, as_tracing_writes(&line, true), "{line:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let before = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let ours = timestamp();
        let after = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let ours = std::str::from_utf8(&ours).unwrap();
        let parsed = humantime::parse_rfc3339(ours).expect(ours);
        assert!(ours.len() == 27 && ours.ends_with('Z'), "{ours}");
        assert!(
            ours[..19] >= before[..19] && ours[..19] <= after[..19],
            "{ours}"
        );
        assert!(parsed <= SystemTime::now());
        // The cached second is reused within the second, the microseconds are not.
        let again = timestamp();
        assert!(std::str::from_utf8(&again).unwrap() >= ours);
    }
}

//! `fusebox status` (docs/ARCHITECTURE.md §2): asks a running agent's admin API for `GET
//! /upstreams` and prints one line per destination — breaker state, window counts, last transition
//! reason.
//!
//! Rendering is a pure function of the rows, the time and whether to colour
//! ([`render_table`]); the rest is fetching and error messages. `--watch` follows the live
//! view's event stream instead ([`watch`]).

mod route_lines;
mod watch;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::admin::json::{DestinationView, ErrorBody, TLS_VERIFY_FAILED};

/// `fusebox status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Admin address of the running agent (`host:port`, or an `http://` URL). An unspecified
    /// address such as 0.0.0.0:9901 (what `run` may listen on) is reached via loopback.
    #[arg(long, env = "FUSEBOX_ADMIN", default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Follow the agent live until Ctrl-C (its `/events`): requests per second, error and
    /// refusal shares, p50/p99 over the last 10 s, trouble on top.
    #[arg(long)]
    pub watch: bool,
    /// Only the destinations of this policy.
    #[arg(long)]
    pub upstream: Option<String>,
}

/// Runs `fusebox status`; returns the exit code: 0 shown, 1 the agent could not be asked.
pub fn run(args: &StatusArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fusebox: cannot start the runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(status(args))
}

async fn status(args: &StatusArgs) -> i32 {
    let target = AdminTarget::parse(&args.admin);
    // No TLS is used here, but when reqwest is built with TLS support (test builds merge the
    // dev-dependency's features) it wants a crypto provider: the binary's one.
    crate::upstream::tls::install_crypto_provider();
    let client = match reqwest::Client::builder()
        // The admin API is local: never send it through HTTP_PROXY (possibly fusebox itself).
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("fusebox: cannot build an HTTP client: {error}");
            return 1;
        }
    };
    let url = target.upstreams_url(args.upstream.as_deref());
    let terminal = std::io::stdout().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());

    if !args.watch {
        return match fetch(&client, &url, &target).await {
            Ok(rows) => {
                let table = render_table(&rows, SystemTime::now(), colour);
                if write_out(&table).is_err() {
                    return 1;
                }
                0
            }
            Err(message) => {
                eprintln!("{message}");
                1
            }
        };
    }

    watch::watch(&target, args.upstream.as_deref(), colour, terminal).await
}

/// Writes to stdout; an error (a closed pipe) ends the command instead of panicking.
fn write_out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Where the admin API is, as given to `--admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AdminTarget {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// As shown in messages: `127.0.0.1:9901`.
    display: String,
}

impl AdminTarget {
    fn parse(admin: &str) -> AdminTarget {
        let admin = admin.trim();
        // Plain HTTP only: the admin API does not speak TLS.
        if let Some(rest) = admin.strip_prefix("http://") {
            let rest = rest.trim_end_matches('/');
            return AdminTarget {
                base: admin.trim_end_matches('/').to_owned(),
                display: rest.to_owned(),
            };
        }
        let display = match admin.parse::<SocketAddr>() {
            Ok(mut addr) => {
                // `run --admin 0.0.0.0:9901` listens everywhere; connect through loopback.
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                addr.to_string()
            }
            Err(_) => admin.to_owned(),
        };
        AdminTarget {
            base: format!("http://{display}"),
            display,
        }
    }

    fn upstreams_url(&self, upstream: Option<&str>) -> String {
        match upstream {
            Some(name) => format!("{}/upstreams/{}", self.base, percent_encode(name)),
            None => format!("{}/upstreams", self.base),
        }
    }
}

/// Encodes everything but unreserved characters (RFC 3986) for a path segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET` the rows, or the one-line message to show instead.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    target: &AdminTarget,
) -> Result<Vec<DestinationView>, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| unreachable_message(&target.display, &error))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|error| {
        format!(
            "fusebox admin at {}: reading the answer failed: {}",
            target.display,
            cause(&error)
        )
    })?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        return Err(format!(
            "fusebox admin at {} answered {status}: {detail}",
            target.display
        ));
    }
    serde_json::from_slice(&body).map_err(|error| {
        format!(
            "fusebox admin at {} sent something that is not a list of destinations ({error}); \
             is that address a fusebox admin port?",
            target.display
        )
    })
}

fn unreachable_message(display: &str, error: &reqwest::Error) -> String {
    format!(
        "cannot reach fusebox admin at {display}: {} — is `fusebox run` running? \
         (--admin / FUSEBOX_ADMIN)",
        cause(error)
    )
}

/// The root cause of a request error, in a few words.
fn cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut innermost: &dyn std::error::Error = error;
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_cause(io);
        }
        innermost = e;
        current = e.source();
    }
    innermost.to_string()
}

fn io_cause(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::TimedOut => "timed out".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        _ => error.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering.

const COLUMNS: usize = 9;

const HEADERS: [&str; COLUMNS] = [
    "UPSTREAM",
    "DESTINATION",
    "STATE",
    "SINCE",
    "CALLS/FAIL/SLOW",
    "LAST REASON",
    "NEXT PROBE",
    "IN FLIGHT",
    "TOTAL REQ/ERR/REJ",
];
/// The column of the breaker's window counts, whose header names the window.
const WINDOW_COLUMN: usize = 4;
/// The column that is coloured.
const STATE_COLUMN: usize = 2;

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The table `fusebox status` prints, one line per row, columns aligned; ANSI colours on the
/// state (green closed, yellow half-open, red open) when `colour`. `now` is the time `since`
/// is measured from.
pub fn render_table(rows: &[DestinationView], now: SystemTime, colour: bool) -> String {
    if rows.is_empty() {
        return "no destinations yet\n".to_owned();
    }
    let shared_window = shared_window(rows);
    let cells: Vec<[String; COLUMNS]> = rows
        .iter()
        .map(|row| cells(row, now, shared_window.is_none()))
        .collect();
    let mut header = HEADERS.map(str::to_owned);
    header[WINDOW_COLUMN] = match shared_window {
        Some(0) => HEADERS[WINDOW_COLUMN].to_owned(),
        Some(seconds) => format!("LAST {} CALLS/FAIL/SLOW", seconds_label(seconds)),
        None => format!("WINDOW {}", HEADERS[WINDOW_COLUMN]),
    };
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    push_line(&mut out, &header, &widths, |_| None, colour.then_some(BOLD));
    for (row, line) in rows.iter().zip(&cells) {
        let paint =
            |column: usize| (colour && column == STATE_COLUMN).then(|| state_colour(&row.state));
        push_line(&mut out, line, &widths, paint, None);
    }
    push_endpoints(&mut out, rows);
    route_lines::push_routes(&mut out, rows, |at| since(at, now));
    push_trust_failures(&mut out, rows, now);
    out
}

/// Below the table, the endpoints of each destination that has several, or one that is not
/// ready (§17): state, latency estimate, pending tries, results, time left of an ejection.
fn push_endpoints(out: &mut String, rows: &[DestinationView]) {
    for row in rows {
        let quiet = row.endpoints.len() < 2 && row.endpoints.iter().all(|e| e.state == "ready");
        if quiet {
            continue;
        }
        out.push_str(&format!(
            "\n{} {} endpoints:\n",
            row.upstream, row.destination
        ));
        for e in &row.endpoints {
            let mut line = format!(
                "  {}  {}  ewma {:.1}ms  pending {}  ok {}  failed {}",
                e.endpoint,
                e.state,
                e.ewma_us as f64 / 1000.0,
                e.pending,
                e.successes,
                e.failures
            );
            if let Some(left) = e.ejected_for_ms {
                line.push_str(&format!(
                    "  ejected for {left}ms more ({} ejections)",
                    e.ejections
                ));
            }
            if let Some(left) = e.retry_after_ms {
                line.push_str(&format!("  Retry-After {left}ms more"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
}

/// Below the table, one line per destination whose certificate last failed to verify: a trust
/// problem of the policy's, which the breaker's columns never show (it is not an upstream
/// failure), with the cause and the fix.
fn push_trust_failures(out: &mut String, rows: &[DestinationView], now: SystemTime) {
    for row in rows {
        let mut failures = row.recent.iter().filter(|f| f.kind == TLS_VERIFY_FAILED);
        if let Some(last) = failures.next_back() {
            out.push_str(&format!(
                "\n{} {}: tls-verify-failed {}: {}\n",
                row.upstream,
                row.destination,
                since(&last.time, now),
                last.text
            ));
        }
    }
}

/// The breaker window's length when every row has the same (`Some(0)`: an agent too old to
/// say), `None` when they differ.
fn shared_window(rows: &[DestinationView]) -> Option<u64> {
    let first = rows.first().map_or(0, |row| row.window.seconds);
    rows.iter()
        .all(|row| row.window.seconds == first)
        .then_some(first)
}

/// `10s`, `2m`, `1m30s`.
fn seconds_label(seconds: u64) -> String {
    match (seconds / 60, seconds % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

fn push_line(
    out: &mut String,
    cells: &[String],
    widths: &[usize],
    paint: impl Fn(usize) -> Option<&'static str>,
    whole: Option<&str>,
) {
    let mut line = String::new();
    for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if column > 0 {
            line.push_str("  ");
        }
        match paint(column) {
            Some(code) => {
                line.push_str(code);
                line.push_str(cell);
                line.push_str(RESET);
            }
            None => line.push_str(cell),
        }
        if column + 1 < cells.len() {
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let line = line.trim_end();
    match whole {
        Some(code) => {
            out.push_str(code);
            out.push_str(line);
            out.push_str(RESET);
        }
        None => out.push_str(line),
    }
    out.push('\n');
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "closed" => GREEN,
        "half-open" => YELLOW,
        _ => RED,
    }
}

fn cells(row: &DestinationView, now: SystemTime, name_window: bool) -> [String; COLUMNS] {
    let mut state = row.state.clone();
    if row.forced.is_some() {
        state.push_str(" FORCED");
    }
    if matches!(row.mode.as_str(), "shadow" | "off") {
        state.push_str(&format!(" ({})", row.mode));
    }
    if let Some(throttle) = &row.throttle {
        state.push_str(&format!(" (throttle p={:.2})", throttle.probability));
    }
    let w = row.window;
    let mut destination = row.destination.clone();
    if row.intercept {
        // Its HTTPS calls come through interception (§13), one row for all of them.
        destination.push_str(" (intercepted)");
    }
    if let Some(fleet) = &row.fleet {
        // Which rate limit applies: the fleet's, or the local fallback (§15).
        destination.push_str(&format!(" (fleet: {fleet})"));
    }
    let mut window = format!("{}/{}/{}", w.calls, w.failures, w.slow);
    if name_window {
        window.push_str(&format!(" ({})", seconds_label(w.seconds)));
    }
    let t = row.totals;
    [
        row.upstream.clone(),
        destination,
        state,
        since(&row.since, now),
        window,
        reason_cell(row.reason.as_deref()),
        row.next_probe_in_ms
            .map_or_else(|| "-".to_owned(), next_probe),
        in_flight_cell(row),
        format!("{}/{}/{}", t.requests, t.errors, t.rejected),
    ]
}

/// `3`, `3/50` under a fixed limit, `3/42 aimd` under an adaptive one.
fn in_flight_cell(row: &DestinationView) -> String {
    match (row.limit, row.limit_mode.as_str()) {
        (None, _) => row.in_flight.to_string(),
        (Some(limit), "fixed" | "") => format!("{}/{limit}", row.in_flight),
        (Some(limit), mode) => format!("{}/{limit} {mode}", row.in_flight),
    }
}

/// The last transition's reason; an operator's commands say so, so that `reset` is never
/// read as a connection reset.
fn reason_cell(reason: Option<&str>) -> String {
    match reason {
        None => "-".to_owned(),
        Some(operator @ ("reset" | "forced")) => format!("{operator} (operator)"),
        Some(reason) => reason.to_owned(),
    }
}

/// `3m12s ago`, from an RFC 3339 time; the raw text if it does not parse.
fn since(rfc3339: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339_weak(rfc3339) {
        Ok(at) => ago(now.duration_since(at).unwrap_or(Duration::ZERO)),
        Err(_) => rfc3339.to_owned(),
    }
}

/// A past duration in its two largest units: `42s ago`, `3m12s ago`, `2h05m ago`, `3d04h ago`.
fn ago(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h ago", s / 86400, s % 86400 / 3600),
    }
}

/// `now`, `4.2s`, `1m05s`.
fn next_probe(ms: u64) -> String {
    match ms {
        0 => "now".to_owned(),
        1..60_000 => {
            // Tenths, rounded up: a probe 1 ms away is not "0.0s" away.
            let tenths = ms.div_ceil(100);
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
        _ => {
            let s = ms.div_ceil(1000);
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::json::{FailureView, Totals, WindowView};

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2025-01-31T12:00:00Z").unwrap()
    }

    fn row(upstream: &str, destination: &str, state: &str, since: &str) -> DestinationView {
        DestinationView {
            upstream: upstream.into(),
            destination: destination.into(),
            state: state.into(),
            since: since.into(),
            reason: None,
            reason_text: None,
            window: WindowView {
                seconds: 10,
                ..WindowView::default()
            },
            next_probe_in_ms: None,
            recent: Vec::new(),
            in_flight: 0,
            forced: None,
            trips: 0,
            mode: "enforce".into(),
            idle_connections: 0,
            intercept: false,
            fleet: None,
            endpoints: Vec::new(),
            limit: None,
            limit_mode: "fixed".into(),
            throttle: None,
            totals: Totals::default(),
            retry_budget_left: None,
            rate_tokens_left: None,
            routes: Vec::new(),
        }
    }

    fn sample() -> Vec<DestinationView> {
        let mut open = row(
            "payments",
            "10.0.0.7:8080",
            "open",
            "2025-01-31T11:56:48.000Z",
        );
        open.reason = Some("consecutive_failures".into());
        open.window = WindowView {
            calls: 5,
            failures: 5,
            slow: 0,
            seconds: 10,
        };
        open.next_probe_in_ms = Some(4_200);
        open.trips = 1;
        open.fleet = Some("fallback".into());
        open.recent = vec![FailureView {
            time: "2025-01-31T11:56:48.000Z".into(),
            kind: "status".into(),
            status: Some(503),
            grpc_status: None,
            text: String::new(),
        }];
        let mut forced = row("payments", "[::1]:9000", "open", "2025-01-31T11:59:58.000Z");
        forced.reason = Some("forced".into());
        forced.forced = Some("open".into());
        let mut closed = row(
            "default",
            "api.example.com:443",
            "closed",
            "2025-01-31T09:00:00.000Z",
        );
        closed.window = WindowView {
            calls: 120,
            failures: 3,
            slow: 1,
            seconds: 10,
        };
        closed.in_flight = 2;
        closed.intercept = true;
        closed.totals = Totals {
            requests: 48_210,
            errors: 12,
            rejected: 3,
        };
        let mut half = row(
            "search",
            "search:80",
            "half-open",
            "2025-01-31T12:00:01.000Z",
        );
        half.reason = Some("open_elapsed".into());
        half.mode = "shadow".into();
        vec![closed, open, forced, half]
    }

    #[test]
    fn renders_an_aligned_table_without_colour() {
        let table = render_table(&sample(), now(), false);
        let expected = "\
UPSTREAM  DESTINATION                        STATE               SINCE      LAST 10s CALLS/FAIL/SLOW  LAST REASON           NEXT PROBE  IN FLIGHT  TOTAL REQ/ERR/REJ
default   api.example.com:443 (intercepted)  closed              3h00m ago  120/3/1                   -                     -           2          48210/12/3
payments  10.0.0.7:8080 (fleet: fallback)    open                3m12s ago  5/5/0                     consecutive_failures  4.2s        0          0/0/0
payments  [::1]:9000                         open FORCED         2s ago     0/0/0                     forced (operator)     -           0          0/0/0
search    search:80                          half-open (shadow)  0s ago     0/0/0                     open_elapsed          -           0          0/0/0
";
        assert_eq!(table, expected, "\n{table}");
        assert!(!table.contains('\x1b'));
    }

    #[test]
    fn windows_of_different_lengths_are_named_in_each_cell() {
        let mut rows = sample();
        rows[1].window.seconds = 90;
        let table = render_table(&rows, now(), false);
        let header = table.lines().next().unwrap();
        assert!(header.contains(" WINDOW CALLS/FAIL/SLOW "), "{table}");
        assert!(table.contains("5/5/0 (1m30s)"), "{table}");
        assert!(table.contains("120/3/1 (10s)"), "{table}");
    }

    #[test]
    fn the_endpoints_of_a_set_are_listed_below_the_table() {
        use crate::admin::json::EndpointJson;
        let mut rows = sample();
        let endpoint = |ip: &str, state: &str| EndpointJson {
            endpoint: format!("{ip}:80"),
            state: state.into(),
            ewma_us: 20_500,
            successes: 7,
            ..EndpointJson::default()
        };
        rows[0].endpoints = vec![
            endpoint("10.0.0.1", "ready"),
            endpoint("10.0.0.2", "ejected"),
        ];
        rows[0].endpoints[1].ejected_for_ms = Some(9_500);
        rows[0].endpoints[1].ejections = 2;
        rows[1].endpoints = vec![endpoint("10.0.0.9", "ready")];
        let table = render_table(&rows, now(), false);
        assert!(
            table.contains(
                "endpoints:\n  10.0.0.1:80  ready  ewma 20.5ms  pending 0  ok 7  failed 0\n"
            ),
            "{table}"
        );
        assert!(table.contains("10.0.0.2:80  ejected  ewma 20.5ms  pending 0  ok 7  failed 0  ejected for 9500ms more (2 ejections)\n"), "{table}");
        assert!(
            !table.contains("10.0.0.9"),
            "one ready endpoint is not news: {table}"
        );
    }

    #[test]
    fn a_certificate_failure_is_named_below_the_table_with_its_fix() {
        let mut rows = sample();
        let cause =
            "the certificate of api.example.com:443 did not verify: UnknownIssuer; set ca_file";
        rows[0].recent.push(FailureView {
            time: "2025-01-31T11:59:30.000Z".into(),
            kind: TLS_VERIFY_FAILED.into(),
            status: None,
            grpc_status: None,
            text: cause.into(),
        });
        let table = render_table(&rows, now(), false);
        let expected =
            format!("\ndefault api.example.com:443: tls-verify-failed 30s ago: {cause}\n");
        assert!(table.ends_with(&expected), "{table}");
        assert_eq!(table.matches("tls-verify-failed").count(), 1, "{table}");
    }

    #[test]
    fn colours_only_the_state_and_keeps_alignment() {
        let plain = render_table(&sample(), now(), false);
        let coloured = render_table(&sample(), now(), true);
        assert!(coloured.contains(&format!("{GREEN}closed{RESET}")));
        assert!(coloured.contains(&format!("{RED}open{RESET}")));
        assert!(coloured.contains(&format!("{RED}open FORCED{RESET}")));
        assert!(coloured.contains(&format!("{YELLOW}half-open (shadow){RESET}")));
        let stripped = coloured
            .replace(GREEN, "")
            .replace(YELLOW, "")
            .replace(RED, "")
            .replace(BOLD, "")
            .replace(RESET, "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn empty_list() {
        assert_eq!(render_table(&[], now(), true), "no destinations yet\n");
    }

    #[test]
    fn relative_times() {
        assert_eq!(ago(Duration::from_millis(900)), "0s ago");
        assert_eq!(ago(Duration::from_secs(59)), "59s ago");
        assert_eq!(ago(Duration::from_secs(192)), "3m12s ago");
        assert_eq!(ago(Duration::from_secs(2 * 3600 + 5 * 60 + 9)), "2h05m ago");
        assert_eq!(ago(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h ago");
        // A time in the future (clock skew) reads as now; garbage is shown as is.
        assert_eq!(since("2025-01-31T12:00:05.000Z", now()), "0s ago");
        assert_eq!(since("yesterday", now()), "yesterday");
        assert_eq!(next_probe(0), "now");
        assert_eq!(next_probe(1), "0.1s");
        assert_eq!(next_probe(29_950), "30.0s");
        assert_eq!(next_probe(65_000), "1m05s");
    }

    #[test]
    fn admin_targets() {
        let t = AdminTarget::parse("127.0.0.1:9901");
        assert_eq!(t.base, "http://127.0.0.1:9901");
        assert_eq!(t.display, "127.0.0.1:9901");
        assert_eq!(
            AdminTarget::parse("0.0.0.0:9901").base,
            "http://127.0.0.1:9901"
        );
        assert_eq!(AdminTarget::parse("[::]:9901").base, "http://[::1]:9901");
        assert_eq!(
            AdminTarget::parse("localhost:9901").base,
            "http://localhost:9901"
        );
        let url = AdminTarget::parse("http://fusebox.local:9901/");
        assert_eq!(url.base, "http://fusebox.local:9901");
        assert_eq!(url.display, "fusebox.local:9901");
        assert_eq!(
            url.upstreams_url(Some("a b/c")),
            "http://fusebox.local:9901/upstreams/a%20b%2Fc"
        );
        assert_eq!(
            url.upstreams_url(None),
            "http://fusebox.local:9901/upstreams"
        );
    }

    #[test]
    fn the_in_flight_column_names_the_limit_and_a_throttle_its_probability() {
        let mut row = row("svc", "a:80", "closed", "2025-01-31T11:59:00Z");
        row.in_flight = 3;
        assert_eq!(cells(&row, now(), false)[7], "3");
        row.limit = Some(50);
        assert_eq!(cells(&row, now(), false)[7], "3/50");
        row.limit_mode = "aimd".into();
        row.limit = Some(42);
        assert_eq!(cells(&row, now(), false)[7], "3/42 aimd");
        row.mode = "throttle".into();
        row.throttle = Some(crate::admin::json::ThrottleView {
            probability: 0.421,
            requests: 120,
            accepts: 10,
        });
        assert_eq!(cells(&row, now(), false)[2], "closed (throttle p=0.42)");
    }
}

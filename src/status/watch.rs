//! `fusebox status --watch`: the live view in a terminal. It reads the admin's `GET /events`
//! (the same server-sent events as the page at `/`) and prints the table again at every
//! event: rates, error and refusal shares and percentiles over the last 10 s, totals since
//! start, trouble on top. A lost connection is said on screen and tried again every second.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ago, next_probe, push_line, reason_cell, state_colour, write_out, AdminTarget};
use crate::admin::live_row::{LiveRow, SnapshotEvent, UpdateEvent};

/// A stream sends at least a heartbeat every 15 s; twice that without a byte is a dead one.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An event larger than this is refused (a snapshot of 1,000 destinations is far below).
const MAX_EVENT_BYTES: usize = 64 << 20;

const HEADERS: [&str; 13] = [
    "UPSTREAM",
    "DESTINATION",
    "STATE",
    "SINCE",
    "REQ/S",
    "ERR%",
    "REJ%",
    "P50",
    "P99",
    "IN FLIGHT",
    "LAST REASON",
    "NEXT PROBE",
    "TOTAL REQ/ERR/REJ",
];

/// What the stream said so far.
#[derive(Debug, Default)]
struct View {
    rows: BTreeMap<String, LiveRow>,
    window_s: u64,
    /// The agent's clock minus ours, milliseconds, at the last event.
    offset_ms: i64,
}

/// Watches until Ctrl-C; the exit code.
pub async fn watch(target: &AdminTarget, upstream: Option<&str>, colour: bool, clear: bool) -> i32 {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(READ_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("fusebox: cannot build an HTTP client: {error}");
            return 1;
        }
    };
    let url = format!("{}/events", target.base);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let mut view = View::default();
        let said = tokio::select! {
            _ = &mut ctrl_c => return 0,
            said = follow(&client, &url, target, &mut view, upstream, colour, clear) => said,
        };
        let frame = screen(target, &format!("{said} (retrying)\n"), clear);
        if write_out(&frame).is_err() {
            return 1;
        }
        tokio::select! {
            _ = &mut ctrl_c => return 0,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Follows one stream, printing at every event, until it fails: what went wrong.
async fn follow(
    client: &reqwest::Client,
    url: &str,
    target: &AdminTarget,
    view: &mut View,
    upstream: Option<&str>,
    colour: bool,
    clear: bool,
) -> String {
    let mut response = match client.get(url).send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            return format!(
                "fusebox admin at {} answered {} to GET /events (an agent older than the \
                 live view?)",
                target.display,
                response.status()
            )
        }
        Err(error) => return super::unreachable_message(&target.display, &error),
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return format!("fusebox admin at {} ended the stream", target.display),
            Err(error) => return super::cause(&error),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find(&buffer, b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            if let Err(message) = view.apply(&event) {
                return message;
            }
            let table = render(view, upstream, SystemTime::now(), colour);
            if write_out(&screen(target, &table, clear)).is_err() {
                return "stdout closed".to_owned();
            }
        }
        if buffer.len() > MAX_EVENT_BYTES {
            return "an event larger than 64 MiB: not a fusebox admin?".to_owned();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The whole screen: the title line, then `body`.
fn screen(target: &AdminTarget, body: &str, clear: bool) -> String {
    let mut frame = String::new();
    if clear {
        // Home, then clear the screen.
        frame.push_str("\x1b[H\x1b[2J");
    }
    frame.push_str(&format!(
        "fusebox status · {} · {} · live, Ctrl-C to stop\n\n{body}",
        target.display,
        humantime::format_rfc3339_seconds(SystemTime::now())
    ));
    if !clear {
        frame.push('\n');
    }
    frame
}

impl View {
    /// Applies one event (`event: NAME\ndata: JSON\n\n`).
    fn apply(&mut self, event: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(event);
        let mut name = "message";
        let mut data = String::new();
        for line in text.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        let bad = |error: serde_json::Error| format!("a {name} event that does not parse: {error}");
        match name {
            "snapshot" => {
                let snapshot: SnapshotEvent = serde_json::from_str(&data).map_err(bad)?;
                self.window_s = snapshot.window_s;
                self.rows = snapshot
                    .rows
                    .into_iter()
                    .map(|r| (r.key.clone(), r))
                    .collect();
                self.set_offset(snapshot.time);
            }
            "update" => {
                let update: UpdateEvent = serde_json::from_str(&data).map_err(bad)?;
                for key in &update.removed {
                    self.rows.remove(key);
                }
                for row in update.rows {
                    self.rows.insert(row.key.clone(), row);
                }
                self.set_offset(update.time);
            }
            _ => {}
        }
        Ok(())
    }

    fn set_offset(&mut self, agent_ms: u64) {
        let ours = epoch_ms(SystemTime::now());
        self.offset_ms =
            i64::try_from(agent_ms).unwrap_or(i64::MAX) - i64::try_from(ours).unwrap_or(i64::MAX);
    }
}

fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How much trouble a row shows, for the order: open, half-open, then pinned, throttling or
/// ejecting, then none.
fn trouble(row: &LiveRow) -> u8 {
    match row.state.as_str() {
        "open" => 3,
        "half-open" => 2,
        _ if row.forced.is_some()
            || row.throttle_probability.is_some_and(|p| p > 0.0)
            || row.endpoints.iter().any(|e| e.state != "ready") =>
        {
            1
        }
        _ => 0,
    }
}

/// Trouble first, then the larger error and refusal shares, then the busier, then by name.
fn order(rows: &mut [&LiveRow]) {
    let share = |r: Option<f64>| r.unwrap_or(0.0);
    rows.sort_by(|a, b| {
        trouble(b)
            .cmp(&trouble(a))
            .then(share(b.error_ratio).total_cmp(&share(a.error_ratio)))
            .then(share(b.reject_ratio).total_cmp(&share(a.reject_ratio)))
            .then(share(b.rps).total_cmp(&share(a.rps)))
            .then((&a.upstream, &a.destination).cmp(&(&b.upstream, &b.destination)))
    });
}

/// The table of the live rows (pure: `now` is our clock, corrected by the agent's offset).
fn render(view: &View, upstream: Option<&str>, now: SystemTime, colour: bool) -> String {
    let mut rows: Vec<&LiveRow> = view
        .rows
        .values()
        .filter(|row| upstream.is_none_or(|name| row.upstream == name))
        .collect();
    if rows.is_empty() {
        return "no destinations yet\n".to_owned();
    }
    order(&mut rows);
    let agent_now = epoch_ms(now).saturating_add_signed(view.offset_ms);
    let cells: Vec<Vec<String>> = rows.iter().map(|row| cells(row, agent_now)).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "rates over the last {}s; totals since start\n",
        view.window_s
    );
    let header: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    push_line(
        &mut out,
        &header,
        &widths,
        |_| None,
        colour.then_some(super::BOLD),
    );
    for (row, line) in rows.iter().zip(&cells) {
        let paint = |column: usize| (colour && column == 2).then(|| state_colour(&row.state));
        push_line(&mut out, line, &widths, paint, None);
    }
    out
}

fn cells(row: &LiveRow, now_ms: u64) -> Vec<String> {
    let mut state = row.state.clone();
    if row.forced.is_some() {
        state.push_str(" FORCED");
    }
    if row.mode != "enforce" {
        state.push_str(&format!(" ({})", row.mode));
    }
    let percent =
        |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{:.1}", r * 100.0));
    let millis = |ms: Option<f64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms"));
    let in_flight = match (row.limit, row.limit_mode.as_str()) {
        (None, _) => row.in_flight.to_string(),
        (Some(limit), "fixed") => format!("{}/{limit}", row.in_flight),
        (Some(limit), mode) => format!("{}/{limit} {mode}", row.in_flight),
    };
    let t = row.totals;
    vec![
        row.upstream.clone(),
        row.destination.clone(),
        state,
        ago(Duration::from_millis(now_ms.saturating_sub(row.since_ms))),
        row.rps
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
        percent(row.error_ratio),
        percent(row.reject_ratio),
        millis(row.p50_ms),
        millis(row.p99_ms),
        in_flight,
        reason_cell(row.reason.as_deref()),
        row.next_probe_at_ms.map_or_else(
            || "-".to_owned(),
            |at| next_probe(at.saturating_sub(now_ms)),
        ),
        format!("{}/{}/{}", t.requests, t.errors, t.rejected),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::json::Totals;

    fn row(destination: &str, state: &str, error_ratio: Option<f64>) -> LiveRow {
        LiveRow {
            key: format!("3:pay{destination}"),
            upstream: "pay".into(),
            destination: destination.into(),
            state: state.into(),
            forced: None,
            mode: "enforce".into(),
            since_ms: 1_000_000,
            next_probe_at_ms: (state == "open").then_some(1_004_200),
            reason: None,
            reason_text: None,
            rps: Some(12.5),
            error_ratio,
            reject_ratio: Some(0.0),
            p50_ms: Some(11.3),
            p99_ms: Some(80.0),
            in_flight: 2,
            limit: Some(20),
            limit_mode: "aimd".into(),
            retry_budget_left: Some(10.0),
            rate_tokens_left: None,
            throttle_probability: None,
            totals: Totals {
                requests: 100,
                errors: 4,
                rejected: 1,
            },
            endpoints: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn event(name: &str, data: &impl serde::Serialize) -> Vec<u8> {
        format!(
            "event: {name}\ndata: {}\n\n",
            serde_json::to_string(data).unwrap()
        )
        .into_bytes()
    }

    #[test]
    fn events_build_the_table_trouble_first() {
        let mut view = View::default();
        let snapshot = SnapshotEvent {
            time: 1_003_000,
            window_s: 10,
            rows: vec![
                row("a:1", "closed", Some(0.5)),
                row("b:1", "closed", Some(0.0)),
            ],
        };
        view.apply(&event("snapshot", &snapshot)).unwrap();
        let update = UpdateEvent {
            time: 1_003_000,
            rows: vec![row("c:1", "open", None)],
            removed: vec!["3:payb:1".into()],
        };
        view.apply(&event("update", &update)).unwrap();
        view.offset_ms = 0;
        let now = UNIX_EPOCH + Duration::from_millis(1_003_000);
        let table = render(&view, None, now, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "rates over the last 10s; totals since start");
        assert!(
            lines[1].starts_with("UPSTREAM  DESTINATION  STATE"),
            "{table}"
        );
        assert!(
            lines[2].contains(" c:1 ") && lines[2].contains(" open "),
            "{table}"
        );
        assert!(lines[2].contains(" 1.2s "), "next probe: {table}");
        assert!(
            lines[3].contains(" a:1 ") && lines[3].contains(" 50.0 "),
            "{table}"
        );
        assert!(
            lines[3].contains(" 11.3ms ") && lines[3].contains(" 2/20 aimd "),
            "{table}"
        );
        assert!(lines[3].ends_with("100/4/1"), "{table}");
        assert_eq!(lines.len(), 4, "b:1 was removed: {table}");
        assert!(render(&view, Some("other"), now, false).contains("no destinations yet"));
        assert!(view.apply(b"event: update\ndata: {\n\n").is_err());
    }
}

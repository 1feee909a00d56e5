//! `GET /events`: the live view's server-sent events (docs/ARCHITECTURE.md §6). A `snapshot`
//! event with every row first, then an `update` event for each of the sampler's frames that
//! changed a row (at most one per second), or an empty one after [`HEARTBEAT`] of quiet.
//!
//! Every bound holds: at most [`MAX_WATCHERS`] streams at once; a client that does not read an
//! event within [`SEND_TIMEOUT`] is dropped; a stream ends when the agent drains.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame as BodyFrame};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::{self, Frame};
use super::live_row::{LiveRow, SnapshotEvent, UpdateEvent};

/// Streams open at once, at most.
pub const MAX_WATCHERS: usize = 16;

/// An empty update after this long without one, so that proxies and clients see life.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// A client that takes longer than this to accept an event is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of a `text/event-stream` response: events as they are written.
#[derive(Debug)]
pub struct EventBody {
    events: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        self.events
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(BodyFrame::data(bytes))))
    }
}

/// Counts open streams; a [`Watcher`] is one of them.
#[derive(Debug, Default)]
pub struct Watchers {
    open: Arc<AtomicUsize>,
}

/// One open stream's place, given back when dropped.
#[derive(Debug)]
pub struct Watcher {
    open: Arc<AtomicUsize>,
}

impl Watchers {
    /// A place for one more stream, `None` when [`MAX_WATCHERS`] are open.
    pub fn join(&self) -> Option<Watcher> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .ok()?;
        Some(Watcher {
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a stream of `frames`: returns its body; a task writes it until the client goes,
/// the agent drains, or the client stops reading.
pub fn stream(
    frames: watch::Receiver<Arc<Frame>>,
    watcher: Watcher,
    shutdown: CancellationToken,
) -> EventBody {
    let (sender, events) = mpsc::channel(2);
    tokio::spawn(async move {
        tokio::select! {
            () = write(frames, &sender) => {}
            () = shutdown.cancelled() => {}
            () = sender.closed() => {}
        }
        drop(watcher);
    });
    EventBody { events }
}

async fn write(mut frames: watch::Receiver<Arc<Frame>>, sender: &mpsc::Sender<Bytes>) {
    let mut sent = Sent::default();
    let first = Arc::clone(&frames.borrow_and_update());
    if !send(sender, sent.snapshot(&first)).await {
        return;
    }
    let mut quiet_since = Instant::now();
    while frames.changed().await.is_ok() {
        let frame = Arc::clone(&frames.borrow_and_update());
        let update = sent.update(&frame);
        let quiet = update.rows.is_empty() && update.removed.is_empty();
        if quiet && quiet_since.elapsed() < HEARTBEAT {
            continue;
        }
        if !send(sender, event("update", &update)).await {
            return;
        }
        quiet_since = Instant::now();
    }
}

async fn send(sender: &mpsc::Sender<Bytes>, event: Bytes) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sender.send(event)).await,
        Ok(Ok(()))
    )
}

/// What a stream sent last of each row, as JSON.
#[derive(Debug, Default)]
struct Sent {
    rows: HashMap<String, String>,
}

impl Sent {
    fn snapshot(&mut self, frame: &Frame) -> Bytes {
        self.rows = frame
            .rows
            .iter()
            .map(|(key, _, json)| (key.clone(), json.clone()))
            .collect();
        event(
            "snapshot",
            &SnapshotEvent {
                time: frame.time_ms,
                window_s: feed::WINDOW.as_secs(),
                rows: frame.rows.iter().map(|(_, row, _)| row.clone()).collect(),
            },
        )
    }

    /// The rows of `frame` that changed since the last event, and the keys gone; remembered
    /// as sent.
    fn update(&mut self, frame: &Frame) -> UpdateEvent {
        let mut rows: Vec<LiveRow> = Vec::new();
        // Only changed or new rows are copied: an idle destination costs a comparison.
        for (key, row, json) in &frame.rows {
            match self.rows.get_mut(key) {
                Some(sent) if sent == json => continue,
                Some(sent) => sent.clone_from(json),
                None => {
                    self.rows.insert(key.clone(), json.clone());
                }
            }
            rows.push(row.clone());
        }
        let present: std::collections::HashSet<&str> =
            frame.rows.iter().map(|(key, _, _)| key.as_str()).collect();
        let mut removed: Vec<String> = self
            .rows
            .keys()
            .filter(|key| !present.contains(key.as_str()))
            .cloned()
            .collect();
        removed.sort_unstable();
        for key in &removed {
            self.rows.remove(key);
        }
        UpdateEvent {
            time: frame.time_ms,
            rows,
            removed,
        }
    }
}

/// One event: `event: NAME`, its JSON on one `data:` line, a blank line.
fn event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

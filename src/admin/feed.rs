//! The live view's readings: one sampler task that, every [`PERIOD`], reads every destination
//! of every policy into [`LiveRow`]s (rates and percentiles over the last [`WINDOW`], from the
//! difference of two [`Sample`]s) and publishes them on a `watch` channel to every open
//! `GET /events` stream.
//!
//! It runs only while someone watches: the first subscriber starts it, and it stops at the
//! first tick that finds no subscriber left. Under the slot's lock both ways, so a subscriber
//! never joins a sampler that is about to stop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::json::{Clock, DestinationView};
use super::live_row::{self, LiveRow};
use crate::live_stats::Sample;
use crate::registry::Registry;

/// How often the rows are read.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Rates are counted over this much of the past (less while the sampler is younger).
pub const WINDOW: Duration = Duration::from_secs(10);

/// One reading: every row, serialized once for every stream.
#[derive(Debug)]
pub struct Frame {
    /// Epoch milliseconds of the reading.
    pub time_ms: u64,
    /// `(key, row, the row as JSON)`, in upstream then destination order.
    pub rows: Vec<(String, LiveRow, String)>,
}

type Slot = Arc<Mutex<Weak<watch::Sender<Arc<Frame>>>>>;

/// Where subscribers find the running sampler, if any.
#[derive(Debug, Default)]
pub struct Feed {
    slot: Slot,
}

impl Feed {
    /// A receiver of the running sampler's frames, starting the sampler if none runs. The
    /// receiver holds a frame at once.
    pub fn subscribe(&self, registry: &Arc<Registry>) -> watch::Receiver<Arc<Frame>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = slot.upgrade() {
            return sender.subscribe();
        }
        let mut history = History::default();
        let first = history.read(registry);
        let (sender, receiver) = watch::channel(Arc::new(first));
        let sender = Arc::new(sender);
        *slot = Arc::downgrade(&sender);
        tokio::spawn(run(
            Arc::clone(&self.slot),
            sender,
            Arc::clone(registry),
            history,
        ));
        receiver
    }
}

/// The sampler: reads and publishes every [`PERIOD`] until no one receives.
async fn run(
    slot: Slot,
    sender: Arc<watch::Sender<Arc<Frame>>>,
    registry: Arc<Registry>,
    mut history: History,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + PERIOD, PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            if sender.receiver_count() == 0 {
                *slot = Weak::new();
                return;
            }
        }
        sender.send_replace(Arc::new(history.read(&registry)));
    }
}

/// The samples of the last [`WINDOW`], oldest first.
#[derive(Debug, Default)]
struct History {
    readings: VecDeque<(Instant, HashMap<String, Sample>)>,
}

impl History {
    /// Reads every destination now and keeps its samples for the windows to come.
    fn read(&mut self, registry: &Registry) -> Frame {
        let clock = Clock::now();
        let now_ms = epoch_ms(clock);
        while self
            .readings
            .front()
            .is_some_and(|(at, _)| clock.instant.duration_since(*at) > WINDOW)
        {
            self.readings.pop_front();
        }
        let oldest = self.readings.front();
        let span_ms = oldest.map_or(0, |(at, _)| {
            u64::try_from(clock.instant.duration_since(*at).as_millis()).unwrap_or(u64::MAX)
        });
        let snapshot = registry.load();
        let mut samples = HashMap::new();
        let mut rows = Vec::new();
        for upstream in snapshot.upstreams() {
            for destination in upstream.destinations() {
                let view = DestinationView::of(upstream, &destination, clock);
                let key = live_row::key(&view.upstream, &view.destination);
                let sample = destination.live.sample();
                let window = oldest.map(|(_, old)| sample.since(old.get(&key)));
                let row = LiveRow::of(view, window.as_ref(), span_ms, now_ms);
                let json = serde_json::to_string(&row).unwrap_or_default();
                samples.insert(key.clone(), sample);
                rows.push((key, row, json));
            }
        }
        rows.sort_by(|a, b| {
            (&a.1.upstream, &a.1.destination).cmp(&(&b.1.upstream, &b.1.destination))
        });
        self.readings.push_back((clock.instant, samples));
        Frame {
            time_ms: now_ms,
            rows,
        }
    }
}

fn epoch_ms(clock: Clock) -> u64 {
    clock
        .system
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use crate::policy::load::{load_sources, Source};
    use crate::registry::Settings;
    use crate::telemetry::Telemetry;

    fn registry() -> Arc<Registry> {
        let source = Source {
            name: "default".to_owned(),
            file: "default.toml".into(),
            text: String::new(),
        };
        let set = load_sources(std::path::Path::new("."), &[source], Vec::new()).unwrap();
        Arc::new(Registry::new(set, Telemetry::new(), Arc::default(), Settings::default()).unwrap())
    }

    fn running(feed: &Feed) -> bool {
        feed.slot.lock().unwrap().upgrade().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn rates_come_from_two_readings_and_the_sampler_stops_unwatched() {
        let registry = registry();
        let feed = Feed::default();
        let destination = Arc::clone(registry.load().default()).destination("a.example", 80);
        let mut frames = feed.subscribe(&registry);
        assert!(running(&feed));
        let first = Arc::clone(&frames.borrow_and_update());
        assert_eq!(first.rows.len(), 1);
        assert_eq!(first.rows[0].1.rps, None, "one reading: no rate yet");

        for _ in 0..5 {
            destination
                .live
                .record(Outcome::Ok, Duration::from_millis(20));
        }
        destination
            .live
            .record(Outcome::BreakerOpen, Duration::ZERO);
        frames.changed().await.unwrap();
        let second = Arc::clone(&frames.borrow_and_update());
        let row = &second.rows[0].1;
        assert_eq!(
            row.rps,
            Some(6.0),
            "6 requests in the 1 s between the readings"
        );
        assert_eq!(row.reject_ratio, Some(0.167));
        assert_eq!(row.error_ratio, Some(0.0));
        let p50 = row.p50_ms.unwrap();
        assert!((20.0..=22.5).contains(&p50), "{p50}");

        // A second watcher shares the sampler; when both are gone, it stops at its next tick.
        let other = feed.subscribe(&registry);
        drop(frames);
        tokio::time::sleep(PERIOD * 2).await;
        assert!(running(&feed), "one watcher is left");
        drop(other);
        tokio::time::sleep(PERIOD * 2).await;
        assert!(!running(&feed), "no one watches: no sampler");

        // The next watcher starts a new one.
        let mut again = feed.subscribe(&registry);
        assert!(running(&feed));
        again.changed().await.unwrap();
        assert_eq!(again.borrow().rows[0].1.rps, Some(0.0));
    }
}

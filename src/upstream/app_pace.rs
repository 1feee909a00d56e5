//! The app's side of a request body that streams to the upstream (docs/ARCHITECTURE.md §1,
//! "Time limits"): a body that delivers nothing for `timeouts.idle` while the upstream side is
//! ready for more is cut off, and the try that carried it knows that the app, not the
//! upstream, stopped.
//!
//! The timer runs only while the app is the one being waited for: it starts when the body is
//! polled and has nothing, and stops at the next frame. While the upstream does not take more
//! (flow control, a full socket) the body is not polled, so the timer does not run — a slow
//! upstream is never blamed on the app. The [`Pace`] is shared with the attempt, which reads
//! it when a try fails: a try that ends while the body was waiting on the app is the app's
//! failure (a `408`), never a breaker failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where a streamed request body stands, shared by the body and its attempt.
#[derive(Debug, Clone, Default)]
pub struct Pace(Arc<AtomicU8>);

/// What [`Pace::state`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceState {
    /// Going out, or not asked for more yet.
    Sending,
    /// Asked for more, and the app has sent nothing since.
    WaitingOnApp,
    /// Cut off: the app sent nothing for `timeouts.idle`.
    Stalled,
    /// Sent whole.
    Done,
}

impl Pace {
    pub fn state(&self) -> PaceState {
        match self.0.load(Ordering::Relaxed) {
            1 => PaceState::WaitingOnApp,
            2 => PaceState::Stalled,
            3 => PaceState::Done,
            _ => PaceState::Sending,
        }
    }

    fn set(&self, state: PaceState) {
        let value = match state {
            PaceState::Sending => 0,
            PaceState::WaitingOnApp => 1,
            PaceState::Stalled => 2,
            PaceState::Done => 3,
        };
        self.0.store(value, Ordering::Relaxed);
    }
}

/// The app sent nothing of its request body for `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("the app sent nothing of its request body for {} (timeouts.idle)", humantime::format_duration(*.0))]
pub struct AppStalled(pub Duration);

/// The idle limit of one streamed request body.
#[derive(Debug)]
pub struct AppIdle {
    idle: Duration,
    /// Armed the first time the body has to wait; re-armed when it waits again after a frame.
    timer: Option<Pin<Box<Sleep>>>,
    pace: Pace,
}

impl AppIdle {
    pub fn new(idle: Duration) -> AppIdle {
        AppIdle {
            idle,
            timer: None,
            pace: Pace::default(),
        }
    }

    /// The state the attempt reads.
    pub fn pace(&self) -> Pace {
        self.pace.clone()
    }

    /// Notes what polling the app's body gave: `Some(end)` for a frame (`end`: the body ended
    /// with it), `None` for nothing yet. Nothing yet for `idle` since the body first had to
    /// wait is an [`AppStalled`].
    pub fn polled(&mut self, frame: Option<bool>, cx: &mut Context<'_>) -> Result<(), AppStalled> {
        match frame {
            Some(end) => {
                let state = if end {
                    PaceState::Done
                } else {
                    PaceState::Sending
                };
                self.pace.set(state);
                Ok(())
            }
            None => self.wait(cx),
        }
    }

    fn wait(&mut self, cx: &mut Context<'_>) -> Result<(), AppStalled> {
        if self.pace.state() != PaceState::WaitingOnApp {
            self.pace.set(PaceState::WaitingOnApp);
            let deadline = Instant::now() + self.idle;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(timer) = self.timer.as_mut() else {
            return Ok(());
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        self.pace.set(PaceState::Stalled);
        Err(AppStalled(self.idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    #[tokio::test(start_paused = true)]
    async fn only_time_spent_waiting_on_the_app_counts() {
        let mut idle = AppIdle::new(Duration::from_secs(10));
        let pace = idle.pace();
        assert_eq!(pace.state(), PaceState::Sending);
        assert!(idle.polled(None, &mut cx()).is_ok());
        assert_eq!(pace.state(), PaceState::WaitingOnApp);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(idle.polled(Some(false), &mut cx()).is_ok());
        assert_eq!(pace.state(), PaceState::Sending);
        // Not polled for a minute (the upstream side was full): the app is not to blame.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(idle.polled(None, &mut cx()).is_ok(), "the wait starts anew");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(idle.polled(None, &mut cx()).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        let stalled = idle.polled(None, &mut cx()).unwrap_err();
        assert_eq!(stalled.0, Duration::from_secs(10));
        assert_eq!(pace.state(), PaceState::Stalled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_sent_whole_is_done() {
        let mut idle = AppIdle::new(Duration::from_secs(1));
        idle.polled(Some(true), &mut cx()).unwrap();
        assert_eq!(idle.pace().state(), PaceState::Done);
    }
}

//! A precise timer for the upstreams' service times.
//!
//! tokio's timer has a 1 ms tick and rounds every deadline up to it, so `sleep(10ms)` takes
//! 10–11 ms: an upstream of 50 slots × 10 ms would really serve about 4,800 requests a second,
//! not 5,000, and the overload experiment's "percent of capacity" would be off by that much.
//! This timer is one thread that waits on a condition variable until the earliest deadline
//! (futex timeouts are good to about 0.1 ms) and then completes a oneshot per deadline due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Entry {
    deadline: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so that the `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

#[derive(Clone)]
pub struct Timer {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl Timer {
    pub fn start() -> Timer {
        let shared: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || run(&thread_shared))
            .expect("timer thread");
        Timer { shared }
    }

    /// Completes at `deadline` (within about 0.1 ms), whatever tokio's tick.
    pub async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let (done, wait) = oneshot::channel();
        {
            let (lock, cvar) = &*self.shared;
            let mut q = lock.lock().unwrap();
            let earliest = q.heap.peek().is_none_or(|top| deadline < top.deadline);
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Entry {
                deadline,
                seq,
                done,
            });
            if earliest {
                cvar.notify_one();
            }
        }
        let _ = wait.await;
    }

    pub async fn sleep(&self, d: Duration) {
        self.sleep_until(Instant::now() + d).await;
    }
}

fn run(shared: &(Mutex<Queue>, Condvar)) {
    let (lock, cvar) = shared;
    let mut due = Vec::new();
    let mut q = lock.lock().unwrap();
    loop {
        let now = Instant::now();
        while q.heap.peek().is_some_and(|top| top.deadline <= now) {
            due.push(q.heap.pop().unwrap().done);
        }
        if !due.is_empty() {
            drop(q);
            for done in due.drain(..) {
                let _ = done.send(());
            }
            q = lock.lock().unwrap();
            continue;
        }
        let next = q.heap.peek().map(|top| top.deadline);
        q = match next {
            None => cvar.wait(q).unwrap(),
            Some(deadline) => cvar.wait_timeout(q, deadline - now).unwrap().0,
        };
    }
}

//! A request body of unknown length (an HTTP/2 request without `content-length`, as every gRPC
//! call is; a chunked upload), recorded while its first try streams it, so that it can be sent
//! again: [`Recording::replay`] gives the bytes back once the whole body went through and was
//! at most `retry.max_replay_bytes` (docs/ARCHITECTURE.md §14). The idea is linkerd2-proxy's
//! replay body, reduced to what fusebox needs: nothing is read ahead of the upstream, so a
//! stream that never ends (a bidirectional gRPC call) is never waited for.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// What the first try's body has seen so far; shared by the body and the attempt loop.
#[derive(Debug)]
pub struct Recording {
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    len: u64,
    /// The body ended (its last frame, or `is_end_stream`).
    complete: bool,
    /// Over the limit, or carrying trailers: never replayed.
    given_up: bool,
}

impl Recording {
    pub fn new(limit: u64) -> Recording {
        Recording {
            limit,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a copy of `data` (a reference count), unless the body is over the limit.
    pub fn data(&self, data: &Bytes) {
        let mut state = self.state();
        if state.given_up {
            return;
        }
        state.len += data.len() as u64;
        if state.len > self.limit {
            state.given_up = true;
            state.chunks = Vec::new();
        } else {
            state.chunks.push(data.clone());
        }
    }

    /// The body carried trailers, which a replay would not reproduce.
    pub fn give_up(&self) {
        let mut state = self.state();
        state.given_up = true;
        state.chunks = Vec::new();
    }

    /// The body ended.
    pub fn complete(&self) {
        self.state().complete = true;
    }

    /// The whole body, when it went through completely within the limit (`Some(None)`: it was
    /// empty); `None` when it cannot be sent again.
    pub fn replay(&self) -> Option<Option<Bytes>> {
        let mut state = self.state();
        if !state.complete || state.given_up {
            return None;
        }
        let chunks = std::mem::take(&mut state.chunks);
        Some(match chunks.len() {
            0 => None,
            1 => chunks.into_iter().next(),
            _ => {
                let mut all = BytesMut::with_capacity(usize::try_from(state.len).unwrap_or(0));
                chunks.iter().for_each(|c| all.extend_from_slice(c));
                Some(all.freeze())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_body_within_the_limit_replays_whole() {
        let recording = Recording::new(10);
        recording.data(&Bytes::from_static(b"abc"));
        assert_eq!(recording.replay(), None, "not complete yet");
        recording.data(&Bytes::from_static(b"def"));
        recording.complete();
        assert_eq!(
            recording.replay(),
            Some(Some(Bytes::from_static(b"abcdef")))
        );
    }

    #[test]
    fn over_the_limit_or_with_trailers_never_replays() {
        let over = Recording::new(4);
        over.data(&Bytes::from_static(b"abc"));
        over.data(&Bytes::from_static(b"de"));
        over.complete();
        assert_eq!(over.replay(), None);
        let trailers = Recording::new(100);
        trailers.data(&Bytes::from_static(b"abc"));
        trailers.give_up();
        trailers.complete();
        assert_eq!(trailers.replay(), None);
        let empty = Recording::new(0);
        empty.complete();
        assert_eq!(empty.replay(), Some(None));
    }
}

//! The proxy: listeners accept app connections ([`listener`]), requests are classified
//! ([`target`]), forwarded at L7 ([`forward`]) or tunnelled ([`tunnel`]), and anything fusebox
//! answers itself is a [`reply`]. This is where requests meet the registry's state.

pub mod access;
pub mod app_conn;
pub mod attempt;
pub mod body;
pub mod eyeballs;
pub mod failure;
pub mod forward;
pub mod headers;
pub mod hedge;
pub mod intercept;
pub mod listener;
pub mod local_answer;
pub mod one_try;
pub mod panic;
pub mod plan;
pub mod reply;
pub mod resend;
pub mod sending;
pub mod splice;
pub mod streams;
pub mod target;
pub mod tunnel;

use std::sync::Arc;

use http::HeaderValue;

use crate::ca_dir::CaDir;
use crate::registry::Registry;
use listener::ServerLimits;

/// What every request handler needs; one per agent, shared by all listeners.
#[derive(Debug)]
pub struct ProxyContext {
    pub registry: Arc<Registry>,
    /// This instance's `Via` entry for a message received over HTTP/1.x, e.g.
    /// `1.1 fusebox-5f3a9c01`; see [`ProxyContext::via`].
    via_1: HeaderValue,
    /// The same for a message received over HTTP/2: `2 fusebox-5f3a9c01`.
    via_2: HeaderValue,
    /// The pseudonym inside `via`; a request that already carries it has looped.
    pub via_token: String,
    /// App connections and tunnels, so that shutdown can wait for them to finish.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the agent starts to drain: listeners stop accepting, and connections
    /// that are not a listener's (intercepted `CONNECT`s) close gracefully.
    pub draining: tokio_util::sync::CancellationToken,
    /// Cancelled when the drain timeout is over: whatever is still open is closed.
    pub hard_stop: tokio_util::sync::CancellationToken,
    /// The local CA that `intercept = true` policies present certificates from (`--ca-dir`),
    /// read again on reloads.
    pub ca: Option<Arc<CaDir>>,
    /// The limits of app connections, for those that are not served by a listener
    /// (intercepted `CONNECT`s).
    pub limits: ServerLimits,
}

impl ProxyContext {
    pub fn new(
        registry: Arc<Registry>,
        ca: Option<Arc<CaDir>>,
        limits: ServerLimits,
    ) -> ProxyContext {
        let via_token = format!("fusebox-{:08x}", instance_id());
        let via = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {via_token}")).expect("ascii token")
        };
        ProxyContext {
            registry,
            via_1: via("1.1"),
            via_2: via("2"),
            via_token,
            tasks: tokio_util::task::TaskTracker::new(),
            draining: tokio_util::sync::CancellationToken::new(),
            hard_stop: tokio_util::sync::CancellationToken::new(),
            ca,
            limits,
        }
    }
}

impl ProxyContext {
    /// The `Via` entry for a message this instance received as `version` (RFC 9110 §7.6.3:
    /// the protocol it was received with): `2 fusebox-…` for HTTP/2, `1.1 fusebox-…`
    /// otherwise.
    pub fn via(&self, version: http::Version) -> &HeaderValue {
        if version == http::Version::HTTP_2 {
            &self.via_2
        } else {
            &self.via_1
        }
    }
}

/// A per-process value distinct enough to tell two fusebox instances apart in `Via`.
fn instance_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    // Truncation is the point: eight hex digits are enough to tell instances apart.
    #[allow(clippy::cast_possible_truncation)]
    let id = hasher.finish() as u32;
    id
}

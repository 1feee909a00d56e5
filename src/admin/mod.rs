//! The admin server (docs/ARCHITECTURE.md §6, a contract): health, readiness, metrics, the breakers
//! of every destination (`/upstreams`), operator commands on them, reload and the effective config.
//! It observes the agent and never sits on the request path.
//!
//! - [`routes`]: which path and method does what, and the handlers.
//! - [`json`]: the JSON shapes, shared with `fusebox status`, which reads them back.
//! - [`auth`]: who may use the mutating (POST) endpoints.
//! - The live view: [`page`] (the page at `/`), [`feed`] (the sampler, running only while
//!   someone watches), [`events`] (`GET /events`, server-sent events) and [`live_row`] (their
//!   JSON shapes, shared with `fusebox status --watch`).

pub mod auth;
pub mod events;
pub mod feed;
pub mod json;
pub mod live_row;
mod page;
pub mod route_json;
mod routes;

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::registry::Registry;
use crate::reload::Reloader;

/// What the admin endpoints read and act on.
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// Listeners bound and policies loaded; false again while draining.
    pub ready: AtomicBool,
    /// `POST /reload`.
    pub reloader: Arc<Reloader>,
    /// `--admin-token` / `FUSEBOX_ADMIN_TOKEN`: the bearer token POST endpoints require. An
    /// empty token counts as none.
    pub admin_token: Option<String>,
    /// `--admin-host`: names, besides loopback names and IP addresses, that the admin serves
    /// (lower case, no trailing dot).
    pub admin_hosts: Vec<String>,
    /// The live view's sampler, running while someone watches.
    pub feed: feed::Feed,
    /// The open `GET /events` streams.
    pub watchers: events::Watchers,
}

/// The body of every admin response: whole, or the live view's stream of events.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// A whole body.
fn full(bytes: Bytes) -> AdminBody {
    Full::new(bytes).boxed_unsync()
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// The configured token, `None` when unset or empty.
    fn token(&self) -> Option<&str> {
        self.admin_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// Serves the admin API until `shutdown` is cancelled.
///
/// Whether the listener is bound to a loopback address decides how POST endpoints are
/// protected (see [`auth::authorize`]).
/// A connection gets `header_timeout` (`--header-timeout`) for each request head, counted from
/// when it starts waiting for one, so an idle keep-alive connection is closed after it too.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let loopback = listener
        .local_addr()
        .is_ok_and(|addr| auth::is_loopback(addr.ip()));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let stop = shutdown.clone();
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            let stop = stop.clone();
            async move {
                let conn = routes::Conn { loopback, peer };
                Ok::<_, Infallible>(routes::handle(&state, conn, req, stop).await)
            }
        });
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

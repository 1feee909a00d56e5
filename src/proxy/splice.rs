//! Splices two connections under a tunnel's time limits (docs/ARCHITECTURE.md §1): a CONNECT
//! tunnel, or a connection both sides upgraded to another protocol (a WebSocket). Bytes flow
//! opaquely both ways until either side closes, nothing was read on either side for
//! `timeouts.tunnel_idle`, the splice has lived for `timeouts.tunnel_max`, or the drain timeout
//! is over.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::policy::Timeouts;
use crate::registry::Destination;
use crate::telemetry::StreamTimeout;

/// Copies bytes both ways between `app` and `upstream` under a tunnel's limits (a CONNECT
/// tunnel, or a connection both sides upgraded to another protocol, such as a WebSocket).
pub async fn splice_within(
    app: impl AsyncRead + AsyncWrite + Unpin,
    upstream: impl AsyncRead + AsyncWrite + Unpin,
    destination: &Destination,
    limits: TunnelLimits,
    hard_stop: &CancellationToken,
) {
    let last_activity = Arc::new(AtomicU64::new(0));
    let opened = Instant::now();
    let mut app = Activity::new(app, &last_activity, opened);
    let mut upstream = Activity::new(upstream, &last_activity, opened);
    let cut = |kind: StreamTimeout, limit: Duration| {
        destination.metrics.stream_timeout(kind);
        info!(
            upstream = %destination.upstream,
            destination = %destination.authority,
            limit = %humantime::format_duration(limit),
            "tunnel closed by timeouts.{}",
            kind.label()
        );
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut app, &mut upstream) => match copied {
            Ok((to_upstream, to_app)) => {
                debug!(destination = %destination.authority, to_upstream, to_app, "tunnel closed");
            }
            Err(error) => {
                debug!(destination = %destination.authority, %error, "tunnel ended with an error");
            }
        },
        () = idle_for(limits.idle, &last_activity, opened) => cut(StreamTimeout::TunnelIdle, limits.idle),
        () = tokio::time::sleep(limits.max) => cut(StreamTimeout::TunnelMax, limits.max),
        () = hard_stop.cancelled() => debug!(destination = %destination.authority, "tunnel closed: drain timeout over"),
    }
}

/// A tunnel's time limits (`timeouts.tunnel_idle`, `timeouts.tunnel_max`).
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    idle: Duration,
    max: Duration,
}

impl TunnelLimits {
    pub fn of(timeouts: &Timeouts) -> TunnelLimits {
        TunnelLimits {
            idle: timeouts.tunnel_idle,
            max: timeouts.tunnel_max,
        }
    }
}

/// Returns once nothing has been read on either side for `idle`: sleeps until `idle` after
/// the last activity, looks again, and so on (one timer per `idle` period, not per read).
async fn idle_for(idle: Duration, last_activity: &AtomicU64, opened: Instant) {
    loop {
        let last = opened + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

pin_project_lite::pin_project! {
    /// A stream that notes when it last read something (milliseconds since `opened`).
    struct Activity<T> {
        #[pin]
        inner: T,
        last_activity: Arc<AtomicU64>,
        opened: Instant,
    }
}

impl<T> Activity<T> {
    fn new(inner: T, last_activity: &Arc<AtomicU64>, opened: Instant) -> Self {
        Activity {
            inner,
            last_activity: Arc::clone(last_activity),
            opened,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            let since = u64::try_from(this.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last_activity.store(since, Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncWrite> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

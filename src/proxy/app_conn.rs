//! The clock of one app connection: `--header-timeout` counts from the first byte of a request
//! head, `--idle-timeout` from the end of the last response, and neither runs while a request
//! is being handled (its own deadlines apply then).
//!
//! hyper's own header-read timer also runs while a keep-alive connection sits idle, so a
//! connection that an app's pool kept for longer got a silent FIN, and the pool's next request
//! went into a closing socket. Here the phases are told apart: the listener marks when a
//! request reaches the handler ([`ConnPhase::request_started`]) and when its response is done
//! ([`RequestDone`], which notes the time); [`Watched`], the connection's socket, notes the
//! first byte of the next head and enforces the limit of the current phase on its reads, the
//! way hyper's timer did: a head that stalls fails the read (hyper closes the connection), an
//! idle connection reads as closed (hyper ends it quietly). No task, no wake-up per request:
//! one timer per connection, reset when the phase changes. While a request is handled the
//! timer is armed one idle limit ahead, so that the socket is read again after the request
//! ends and the idle limit can count from its end.
//!
//! An idle connection also *rests*: once it has been idle for `rest_after` (1 s), with idle
//! time left, the socket's read marks it so ([`ConnPhase::is_resting`], seen by the listener in
//! the same poll of the connection's task), which lets hyper's
//! connection state go (its 8 KiB read and write buffers, the in-flight slot) and keeps only
//! the socket until the app's next byte. An idle keep-alive connection then costs about
//! three kilobytes instead of twenty (docs/ARCHITECTURE.md §8). Bytes hyper had read past the last
//! request (a pipelined head) are handed back and replayed ([`Watched::replay`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::reply::{UnreadHead, HEADER_TIMEOUT_REPLY};

/// Between requests (waiting for the first byte of the next head).
const IDLE: u8 = 0;
/// Reading a request head.
const HEAD: u8 = 1;
/// A request is being handled or its response is being sent.
const BUSY: u8 = 2;
/// Closed by a limit: `expired` says which.
const EXPIRED: u8 = 3;
/// Handed over to a CONNECT tunnel or an upgrade: not HTTP any more, and the tunnel's own
/// limits (`timeouts.tunnel_idle`, `tunnel_max`) apply.
const UPGRADED: u8 = 4;
/// Idle for `rest_after`: hyper's state is being let go, the socket kept; reads wait and a
/// shutdown leaves the socket open (the listener goes on with it).
const RESTING: u8 = 5;

/// Which limit a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within `--header-timeout` of its first byte.
    Header,
    /// Nothing from the app within `--idle-timeout` of the last response.
    Idle,
    /// The app took nothing of a response for `--idle-timeout` (its socket stayed full).
    ResponseUnread,
}

/// The phase of one app connection, shared by its socket and its request handlers.
#[derive(Debug)]
pub struct ConnPhase {
    phase: AtomicU8,
    /// Bumped on every phase change, so the socket knows when to re-arm its timer.
    epoch: AtomicU64,
    /// Which limit closed the connection (valid once the phase is `EXPIRED`): 0 idle,
    /// 1 header, 2 an unread response.
    expired_by: AtomicU8,
    /// When the last request ended, in nanoseconds after `base` (`NOT_DONE`: not since the
    /// connection last woke): where the idle limit counts from.
    done_at: AtomicU64,
    base: Instant,
    /// A head hyper could not read: 1 + its [`UnreadHead`] index (0: none), and how much of
    /// fusebox's reply to it went out ([`Watched`] writes it instead of hyper's).
    unread_head: AtomicU8,
    unread_reply_sent: AtomicUsize,
}

/// `done_at` when no request has ended since the connection became idle otherwise.
const NOT_DONE: u64 = u64::MAX;

impl ConnPhase {
    pub fn new() -> Arc<ConnPhase> {
        Arc::new(ConnPhase {
            phase: AtomicU8::new(IDLE),
            epoch: AtomicU64::new(0),
            expired_by: AtomicU8::new(0),
            done_at: AtomicU64::new(NOT_DONE),
            base: Instant::now(),
            unread_head: AtomicU8::new(0),
            unread_reply_sent: AtomicUsize::new(0),
        })
    }

    fn enter(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A request head is complete and the request is being handled.
    pub fn request_started(&self) {
        self.enter(BUSY);
    }

    /// The connection becomes a tunnel (a successful CONNECT, a `101 Switching Protocols`):
    /// no header or idle limit applies to it any more.
    pub fn upgraded(&self) {
        self.enter(UPGRADED);
    }

    /// Whether the connection is resting (hyper's state let go, or being let go): set by the
    /// socket's read once the connection has been idle for its rest time with idle time left,
    /// the moment to let hyper's state go.
    pub fn is_resting(&self) -> bool {
        self.phase.load(Ordering::Acquire) == RESTING
    }

    /// The app sent its next bytes (or hyper handed some back): idle again, under a new
    /// hyper connection, until they are read.
    pub fn awake(&self) {
        self.done_at.store(NOT_DONE, Ordering::Release);
        self.enter(IDLE);
    }

    /// When the idle phase began: the end of the last request, if one ended since the
    /// connection last woke from its rest.
    fn idle_since(&self) -> Option<Instant> {
        match self.done_at.load(Ordering::Acquire) {
            NOT_DONE => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }

    /// The connection rested for the rest of `--idle-timeout`: it is closed.
    pub fn expire_idle(&self) {
        self.expire(0);
    }

    fn expire(&self, by: u8) {
        self.expired_by.store(by, Ordering::Release);
        self.enter(EXPIRED);
    }

    /// The head hyper could not read on this connection, if it answered one.
    pub fn unread_head(&self) -> Option<UnreadHead> {
        let index = self.unread_head.load(Ordering::Acquire).checked_sub(1)?;
        UnreadHead::ALL.get(usize::from(index)).copied()
    }

    /// Whether a request head is being read: hyper answers a head it could not read while
    /// reading it (the first byte of a head makes the phase `HEAD`). Responses to requests are
    /// written in `BUSY` or, once their body has ended, `IDLE`.
    fn reading_head(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == HEAD
    }

    /// Whether `bytes`, written while a head is being read, are hyper's own answer to a
    /// head it could not read (or the rest of it): then fusebox's reply goes out instead.
    fn answering_unread_head(&self, bytes: &[u8]) -> Option<UnreadHead> {
        if let Some(head) = self.unread_head() {
            return Some(head);
        }
        let head = UnreadHead::of_hyper_answer(bytes)?;
        // Its index is below 3, so 1 + it fits a byte.
        #[allow(clippy::cast_possible_truncation)]
        let code = head as u8 + 1;
        self.unread_head.store(code, Ordering::Release);
        Some(head)
    }

    /// The limit that closed the connection, if one did.
    pub fn expired(&self) -> Option<Expired> {
        (self.phase.load(Ordering::Acquire) == EXPIRED).then(|| {
            match self.expired_by.load(Ordering::Acquire) {
                1 => Expired::Header,
                2 => Expired::ResponseUnread,
                _ => Expired::Idle,
            }
        })
    }
}

/// Ends the request's phase when dropped: hyper drops a response body once it has been sent,
/// or abandoned. The connection is then idle until the next request's first byte.
#[derive(Debug)]
pub struct RequestDone(pub Arc<ConnPhase>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        let phase = &self.0;
        if phase.phase.load(Ordering::Acquire) == BUSY {
            let since = Instant::now().saturating_duration_since(phase.base);
            let nanos = u64::try_from(since.as_nanos()).unwrap_or(NOT_DONE - 1);
            phase.done_at.store(nanos, Ordering::Release);
            phase.enter(IDLE);
        }
    }
}

pin_project_lite::pin_project! {
    /// An app connection's socket: notes the first byte of each request head and enforces the
    /// header and idle limits on its reads.
    pub struct Watched<T> {
        #[pin]
        inner: T,
        phase: Arc<ConnPhase>,
        header: Duration,
        idle: Duration,
        rest_after: Duration,
        // Bytes read before, handed back by hyper when it let the connection rest: read first.
        replay: Bytes,
        // Created on the first wait; re-armed when the phase changes (`armed`: the epoch it
        // was armed for).
        timer: Option<Pin<Box<Sleep>>>,
        armed: u64,
        // The write side's limit: armed when a write finds the app's socket full, and run
        // until a write goes through (`write_waiting`).
        write_timer: Option<Pin<Box<Sleep>>>,
        write_waiting: bool,
    }
}

/// The time limits of an app connection's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `--header-timeout`: from the first byte of a head to its end.
    pub header: Duration,
    /// `--idle-timeout`: from the end of a response to the next request's first byte.
    pub idle: Duration,
    /// Idle this long (and less than `idle`), the connection rests.
    pub rest_after: Duration,
}

impl<T> Watched<T> {
    pub fn new(inner: T, phase: Arc<ConnPhase>, clock: Clock) -> Self {
        Watched {
            inner,
            phase,
            header: clock.header,
            idle: clock.idle,
            rest_after: clock.rest_after,
            replay: Bytes::new(),
            timer: None,
            armed: u64::MAX,
            write_timer: None,
            write_waiting: false,
        }
    }

    /// The socket itself.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes to read before the socket's: what hyper had read but not used when the
    /// connection went to rest.
    pub fn replay(&mut self, bytes: &[u8]) {
        // Copied: hyper's bytes are a view of its whole read buffer, which they would keep.
        self.replay = if bytes.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(bytes)
        };
    }

    /// Whether bytes handed back by hyper are waiting to be read.
    pub fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let phase = this.phase.phase.load(Ordering::Acquire);
        if phase == RESTING {
            // hyper is letting go; the listener wakes this task and reads on afterwards.
            return Poll::Pending;
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if phase == IDLE {
                this.phase.enter(HEAD);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let mut inner = this.inner;
        let read = inner.as_mut().poll_read(cx, buf);
        if buf.filled().len() > before {
            if phase == IDLE {
                this.phase.enter(HEAD);
            }
            return read;
        }
        if read.is_ready() || matches!(phase, EXPIRED | UPGRADED) {
            return read;
        }
        let rests = *this.rest_after < *this.idle;
        let idle_limit = if rests { *this.rest_after } else { *this.idle };
        let epoch = this.phase.epoch.load(Ordering::Acquire);
        if phase == BUSY {
            // No limit while a request is handled; the timer is kept one idle limit ahead, so
            // that this read is polled again after the request ends, which starts the idle
            // limit from its end (`RequestDone`) without waking the task for it.
            let ahead = || Instant::now() + idle_limit;
            if limit_reached(this.timer, this.armed, epoch, ahead, cx) {
                *this.armed = u64::MAX;
                limit_reached(this.timer, this.armed, epoch, ahead, cx);
            }
            return read;
        }
        // Waiting for the app, between requests or inside a head: the phase's limit runs, an
        // idle one from the end of the last request.
        let rests = phase == IDLE && rests;
        let deadline = || match phase {
            HEAD => Instant::now() + *this.header,
            _ => this.phase.idle_since().unwrap_or_else(Instant::now) + idle_limit,
        };
        if !limit_reached(this.timer, this.armed, epoch, deadline, cx) {
            return Poll::Pending;
        }
        if rests {
            this.phase.enter(RESTING);
            return Poll::Pending;
        }
        this.phase.expire(u8::from(phase == HEAD));
        if phase == HEAD {
            // Tell the app before closing; best effort (an empty socket buffer takes it).
            let _ = inner.poll_write(cx, HEADER_TIMEOUT_REPLY);
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within --header-timeout",
            )))
        } else {
            // Idle: read as the end of the stream, so hyper closes the connection quietly.
            Poll::Ready(Ok(()))
        }
    }
}

/// The write side's limit: a response the app takes nothing of (its socket stays full) for
/// `limit` (`--idle-timeout`) fails the write, and hyper closes the connection, which drops the
/// response (its gate slot freed, its upstream connection closed). Only the time spent waiting
/// on the app counts; a tunnel or an upgraded connection keeps its own limits.
fn write_limit(
    written: Poll<io::Result<usize>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    waiting: &mut bool,
    limit: Duration,
    phase: &ConnPhase,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if written.is_ready() {
        *waiting = false;
        return written;
    }
    if phase.phase.load(Ordering::Relaxed) == UPGRADED {
        return written;
    }
    if !*waiting {
        *waiting = true;
        let deadline = Instant::now() + limit;
        match timer.as_mut() {
            Some(timer) => timer.as_mut().reset(deadline),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
    let Some(timer) = timer.as_mut() else {
        return written;
    };
    if timer.as_mut().poll(cx).is_pending() {
        return written;
    }
    phase.expire(2);
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the app took nothing of the response for --idle-timeout",
    )))
}

/// Writes fusebox's reply to an unread head instead of hyper's `len` bytes, which are reported
/// written once the whole reply is (hyper then closes the connection).
fn write_instead<T: AsyncWrite>(
    mut inner: Pin<&mut T>,
    phase: &ConnPhase,
    head: UnreadHead,
    len: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let reply = head.reply();
    loop {
        let sent = phase.unread_reply_sent.load(Ordering::Acquire);
        let Some(rest) = reply.get(sent..).filter(|rest| !rest.is_empty()) else {
            return Poll::Ready(Ok(len));
        };
        match std::task::ready!(inner.as_mut().poll_write(cx, rest)) {
            Ok(0) => return Poll::Ready(Ok(0)),
            Ok(n) => phase.unread_reply_sent.store(sent + n, Ordering::Release),
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// Whether the current phase's limit has run out. The timer is (re-)armed at `deadline` only
/// when the phase changed (`epoch`) since it was armed, so the clock is read once per phase,
/// not per pending read; and it is polled (which registers the task's waker) only when armed,
/// since a connection's task, and so its waker, stays the same.
fn limit_reached(
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut u64,
    epoch: u64,
    deadline: impl FnOnce() -> Instant,
    cx: &mut Context<'_>,
) -> bool {
    if *armed == epoch {
        return timer.as_ref().is_some_and(|timer| timer.is_elapsed());
    }
    let deadline = deadline();
    let timer = match timer {
        Some(timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    *armed = epoch;
    timer.as_mut().poll(cx).is_ready()
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if !this.phase.reading_head() {
            let written = this.inner.poll_write(cx, buf);
            let (timer, waiting) = (this.write_timer, this.write_waiting);
            return write_limit(written, timer, waiting, *this.idle, this.phase, cx);
        }
        match this.phase.answering_unread_head(buf) {
            Some(head) => write_instead(this.inner, this.phase, head, buf.len(), cx),
            None => this.inner.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if !this.phase.reading_head() {
            let written = this.inner.poll_write_vectored(cx, bufs);
            let (timer, waiting) = (this.write_timer, this.write_waiting);
            return write_limit(written, timer, waiting, *this.idle, this.phase, cx);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        match this.phase.answering_unread_head(first) {
            Some(head) => {
                let len = bufs.iter().map(|b| b.len()).sum();
                write_instead(this.inner, this.phase, head, len, cx)
            }
            None => this.inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase.is_resting() {
            // hyper's end, not the connection's: the listener goes on with the socket.
            return Poll::Ready(Ok(()));
        }
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const HEADER: Duration = Duration::from_secs(30);
    const IDLE_LIMIT: Duration = Duration::from_secs(300);

    const REST_AFTER: Duration = Duration::from_secs(1);

    /// A connection that never rests.
    fn watched() -> (
        Watched<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<ConnPhase>,
    ) {
        watched_resting_after(IDLE_LIMIT)
    }

    fn watched_resting_after(
        rest_after: Duration,
    ) -> (
        Watched<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<ConnPhase>,
    ) {
        let (fusebox_side, app_side) = tokio::io::duplex(1024);
        let phase = ConnPhase::new();
        let clock = Clock {
            header: HEADER,
            idle: IDLE_LIMIT,
            rest_after,
        };
        let socket = Watched::new(fusebox_side, Arc::clone(&phase), clock);
        (socket, app_side, phase)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_rests_after_its_rest_time_and_keeps_its_socket() {
        let (mut socket, mut app, phase) = watched_resting_after(REST_AFTER);
        let started = Instant::now();
        let mut buf = [0u8; 16];
        // As the listener does: the read that finds the rest time over marks the connection.
        let rested = std::future::poll_fn(|cx| {
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut socket).poll_read(cx, &mut read) {
                Poll::Ready(_) => panic!("a resting connection reads nothing"),
                Poll::Pending if phase.is_resting() => Poll::Ready(started.elapsed()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        assert_eq!(rested, REST_AFTER);
        assert!(phase.is_resting());
        assert_eq!(phase.expired(), None, "resting is not closed");
        // hyper's shutdown while resting leaves the socket open.
        socket.shutdown().await.unwrap();
        app.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        phase.awake();
        // Bytes handed back by hyper come first, then the socket's.
        socket.replay(b"GET /a");
        let mut got = vec![0u8; 6];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET /a");
        assert_eq!(
            phase.phase.load(Ordering::Acquire),
            HEAD,
            "a replayed byte starts a head"
        );
        let n = socket.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_idle_limit_comes_first_never_rests() {
        let (mut socket, _app, phase) = watched_resting_after(IDLE_LIMIT * 2);
        let mut buf = [0u8; 16];
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0, "read as closed");
        assert_eq!(phase.expired(), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_runs_into_the_idle_limit_not_the_header_limit() {
        let (mut socket, _app, phase) = watched();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0, "read as closed");
        assert_eq!(started.elapsed(), IDLE_LIMIT);
        assert_eq!(phase.expired(), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_limit_counts_from_the_first_byte() {
        let (mut socket, mut app, phase) = watched();
        let mut buf = [0u8; 16];
        let reader = tokio::spawn(async move {
            let n = socket.read(&mut buf).await.unwrap();
            let first_byte = Instant::now();
            let error = socket.read(&mut buf).await.unwrap_err();
            (n, first_byte.elapsed(), error.kind())
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        app.write_all(b"GET / HT").await.unwrap();
        let (n, waited, kind) = reader.await.unwrap();
        assert_eq!((n, waited, kind), (8, HEADER, io::ErrorKind::TimedOut));
        assert_eq!(phase.expired(), Some(Expired::Header));
        let mut told = vec![0u8; HEADER_TIMEOUT_REPLY.len()];
        app.read_exact(&mut told).await.unwrap();
        assert_eq!(told, HEADER_TIMEOUT_REPLY, "the app is told: 408");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_header_or_idle_limit() {
        let (mut socket, mut app, phase) = watched();
        let mut buf = [0u8; 64];
        app.write_all(b"CONNECT a:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(socket.read(&mut buf).await.unwrap() > 0);
        phase.request_started();
        phase.upgraded();
        drop(RequestDone(Arc::clone(&phase)));
        let reader = tokio::spawn(async move {
            let first = socket.read(&mut buf).await.unwrap();
            let second = socket.read(&mut buf).await.unwrap();
            (first, second)
        });
        tokio::time::sleep(IDLE_LIMIT * 2).await;
        app.write_all(b"tls").await.unwrap();
        tokio::time::sleep(IDLE_LIMIT * 2).await;
        assert!(!reader.is_finished(), "a quiet tunnel is not a slow head");
        app.write_all(b"more").await.unwrap();
        assert_eq!(reader.await.unwrap(), (3, 4));
        assert_eq!(phase.expired(), None);
    }

    /// A connection whose request head has been read and is being handled.
    async fn handling_a_request() -> (
        Watched<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<ConnPhase>,
        RequestDone,
    ) {
        let (mut socket, mut app, phase) = watched();
        let mut buf = [0u8; 64];
        app.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(socket.read(&mut buf).await.unwrap() > 0);
        phase.request_started();
        let done = RequestDone(Arc::clone(&phase));
        (socket, app, phase, done)
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_handled_then_idle_counts_from_its_end() {
        let (mut socket, app, phase, done) = handling_a_request().await;
        let mut buf = [0u8; 64];
        let reader = tokio::spawn(async move {
            let n = socket.read(&mut buf).await.unwrap();
            (n, Instant::now())
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!reader.is_finished(), "a long request is not a slow head");
        let ended = Instant::now();
        drop(done);
        // The timer kept ahead while the request was handled reads the socket again, and the
        // idle limit runs from the end of the request.
        let (n, closed_at) = reader.await.unwrap();
        assert_eq!(n, 0, "read as closed when idle");
        assert_eq!(closed_at - ended, IDLE_LIMIT);
        assert_eq!(phase.expired(), Some(Expired::Idle));
        drop(app);
    }

    /// A request shorter than the idle limit: the timer armed while it was handled fires one
    /// idle limit after its start, and the limit is counted again from the request's end.
    /// The request's end itself wakes nothing.
    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_request_wakes_nothing_and_idle_counts_from_it() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }

        let (mut socket, _app, phase, done) = handling_a_request().await;
        let mut buf = [0u8; 64];
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut read = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut socket)
            .poll_read(&mut cx, &mut read)
            .is_pending());
        tokio::time::sleep(Duration::from_secs(200)).await;
        let ended = Instant::now();
        drop(done);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "the request's end wakes nothing"
        );
        // One idle limit after the start, the timer armed while busy fires: idle for 101 s.
        tokio::time::sleep(Duration::from_secs(101)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let mut read = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut socket)
            .poll_read(&mut cx, &mut read)
            .is_pending());
        assert_eq!(phase.expired(), None, "idle for 101 s of {IDLE_LIMIT:?}");
        // The idle limit after the request's end.
        tokio::time::sleep(IDLE_LIMIT - Duration::from_secs(101)).await;
        assert_eq!(Instant::now() - ended, IDLE_LIMIT);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        let mut read = ReadBuf::new(&mut buf);
        let closed = Pin::new(&mut socket).poll_read(&mut cx, &mut read);
        assert!(matches!(closed, Poll::Ready(Ok(()))) && read.filled().is_empty());
        assert_eq!(phase.expired(), Some(Expired::Idle));
    }
}

//! The `exchange` fuzz target (#22 item 12; docs/ARCHITECTURE.md §12): fusebox's own HTTP/1.1
//! client against a scripted upstream on a real loopback socket, for what a parser check cannot
//! reach — the request body written while the response is read (early answers, the
//! read-ahead), and the decision to keep a connection for the next request.
//!
//! Two requests go to one destination. The upstream answers the first with the input's bytes,
//! after reading as much of the request as the input says, then closes or keeps serving; every
//! later request, on that connection or a new one, gets a marker response. What must hold,
//! whatever the bytes: nothing panics, and **the second request gets exactly the marker** — a
//! connection kept after a first answer that left bytes behind, was framed ambiguously, or was
//! cut short, would hand the second request the wrong answer (a desync). A first request that
//! gets no answer in time is not a finding (an upstream may legitimately stall); the second
//! must still be answered. The one exception: an upstream that keeps the connection open but
//! stops reading the request it answered early (RFC 9112 §9.3 asks it to read the rest) may
//! leave a request on that connection unanswered; then only "no panic" is checked.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::guard::GuardRules;
use crate::upstream::connect::ConnectRules;
use crate::upstream::http1::{self, IdleConnections, Pool};

/// What every request after the first gets.
const MARKER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nmarker";
/// How long the first exchange may take before it counts as stalled (not a finding).
const FIRST_WITHIN: Duration = Duration::from_millis(100);
/// How long the second may take: it must be answered. Generous, so that a machine busy with
/// other work does not pass for a desync (a desync gives a wrong answer, fast).
const SECOND_WITHIN: Duration = Duration::from_secs(5);
/// Request body sizes: none, small (written with the head), larger than the 16 KiB written
/// with it, and larger than the 1 MiB read-ahead.
const BODY_SIZES: [usize; 4] = [0, 10, 20_000, 1_100_000];

/// What the upstream does with the first request, from the input's second byte.
#[derive(Debug, Clone, Copy)]
struct Script {
    /// Reads the request head (`false`: nothing) before answering.
    reads_head: bool,
    /// Reads the whole body before answering.
    reads_body: bool,
    /// Closes the connection once it has answered.
    closes: bool,
    /// Keeps reading the rest of the body after answering (else it stops reading it).
    drains: bool,
}

impl Script {
    fn of(byte: u8) -> Script {
        Script {
            reads_head: byte & 1 == 0,
            reads_body: byte & 2 == 0,
            closes: byte & 4 != 0,
            drains: byte & 8 == 0,
        }
    }
}

/// The check on one input: a panic is a finding.
pub fn exchange(data: &[u8]) {
    let [size, script, answer @ ..] = data else {
        return;
    };
    let body_len = BODY_SIZES[usize::from(size % 4)];
    let script = Script::of(*script);
    runtime().block_on(run(body_len, script, Bytes::copy_from_slice(answer)));
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

async fn run(body_len: usize, script: Script, answer: Bytes) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let (answered, first_written) = oneshot::channel();
    let upstream = tokio::spawn(serve(listener, script, answer, body_len, answered));
    let idle = Arc::new(IdleConnections::default());
    let rules = ConnectRules {
        guard: GuardRules {
            allow_private: true,
            allow_link_local: false,
        },
        timeout: Duration::from_secs(1),
        self_addrs: Arc::default(),
    };
    let pool = Pool {
        idle: &idle,
        host: "127.0.0.1",
        port,
        tls: None,
        rules: &rules,
        idle_timeout: Duration::from_secs(90),
        max_idle: 8,
        fresh: false,
        opened: None,
    };
    let body = (body_len > 0).then(|| Bytes::from(vec![b'x'; body_len]));
    let first = exchange_once(pool, Method::POST, "/one", body.as_ref());
    let _ = tokio::time::timeout(FIRST_WITHIN, first).await;
    // The upstream's whole answer is out (or never will be) before the second request, so
    // that bytes it wrote after the first answer are there to be seen.
    let _ = tokio::time::timeout(FIRST_WITHIN, first_written).await;
    settle().await;
    let reused = !idle.is_empty();
    if !script.closes && !script.drains {
        upstream.abort();
        return;
    }
    let second = tokio::time::timeout(
        SECOND_WITHIN,
        exchange_once(pool, Method::GET, "/two", None),
    );
    match second.await {
        Ok(Some((status, body))) => assert!(
            status == 200 && body == b"marker",
            "desync: the second request got {status} {:?} (connection reused: {reused})",
            body.escape_ascii().to_string()
        ),
        Ok(None) => panic!("the second request failed (connection reused: {reused})"),
        Err(_) => panic!("the second request got no answer (connection reused: {reused})"),
    }
    upstream.abort();
}

/// One request on `pool`, its response read to the end (which gives its connection back, if it
/// may be reused); the status and body, or `None` if it failed.
async fn exchange_once(
    pool: Pool<'_>,
    method: Method,
    path: &str,
    body: Option<&Bytes>,
) -> Option<(u16, Vec<u8>)> {
    let uri = format!("http://127.0.0.1:{}{path}", pool.port);
    let (head, ()) = Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .ok()?
        .into_parts();
    let response = http1::send(pool, &head, body, Instant::now()).await.ok()?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Some((status, bytes))
}

/// Lets the runtime's IO driver take in every socket event so far: a round trip on a pair of
/// its own (loopback delivers at once).
async fn settle() {
    let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let (Ok(mut a), Ok((mut b, _))) = tokio::join!(TcpStream::connect(addr), listener.accept())
    else {
        return;
    };
    let mut byte = [0u8; 1];
    let _ = b.write_all(b"x").await;
    let _ = a.read_exact(&mut byte).await;
}

/// The upstream: the first connection's first request as `script` says, answered with
/// `answer`; every other request with [`MARKER`]. Its connections are tasks of a set that ends
/// with it, so that nothing outlives the input (the fuzzer runs many in one process).
async fn serve(
    listener: TcpListener,
    script: Script,
    answer: Bytes,
    body_len: usize,
    answered: oneshot::Sender<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let Ok((first, _)) = listener.accept().await else {
        return;
    };
    connections.spawn(answer_first(first, script, answer, body_len, answered));
    while let Ok((conn, _)) = listener.accept().await {
        connections.spawn(answer_markers(conn));
    }
}

/// The first connection: its first request as `script` says, then markers if it stays.
async fn answer_first(
    mut first: TcpStream,
    script: Script,
    answer: Bytes,
    body_len: usize,
    answered: oneshot::Sender<()>,
) {
    let mut read = Vec::new();
    if script.reads_head && read_head(&mut first, &mut read).await.is_none() {
        return;
    }
    let head_len = head_end(&read).unwrap_or(0);
    let mut body_read = read.len().saturating_sub(head_len);
    if script.reads_head && script.reads_body {
        body_read += read_exactly(&mut first, body_len.saturating_sub(body_read)).await;
    }
    let wrote = first.write_all(&answer).await;
    let _ = answered.send(());
    if wrote.is_err() || script.closes {
        return;
    }
    if !script.drains {
        // Never reads again: a request sent here would get no answer.
        std::future::pending::<()>().await;
    }
    read_exactly(&mut first, body_len.saturating_sub(body_read)).await;
    answer_markers(first).await;
}

/// Answers every request on `conn` (a head without a body) with the marker.
async fn answer_markers(mut conn: TcpStream) {
    loop {
        let mut head = Vec::new();
        if read_head(&mut conn, &mut head).await.is_none() || conn.write_all(MARKER).await.is_err()
        {
            return;
        }
    }
}

/// Reads into `buf` until it holds a whole head (`\r\n\r\n`); `None` at the end of the stream.
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut byte = [0u8; 1];
    while head_end(buf).is_none() {
        // One byte at a time: nothing past the head is taken from the stream.
        if conn.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(())
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Reads and drops `len` bytes (fewer at the end of the stream); how many it read.
async fn read_exactly(conn: &mut TcpStream, len: usize) -> usize {
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        match conn.read(&mut buf[..left.min(64 * 1024)]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n,
        }
    }
    len - left
}

//! Logging: `tracing` events (text or JSON) to stderr, written in batches.
//!
//! The access log writes one line per request, so a line must cost the request path almost
//! nothing beyond formatting it. A per-line `write(2)`, or waking a writer thread for every
//! line (what `tracing-appender`'s non-blocking writer does under light load), costs several
//! microseconds a request. Here a formatted line is appended to a shared buffer under a
//! short lock; a background thread writes the buffer out every [`FLUSH_EVERY`] with one system
//! call. The buffer is bounded: if stderr cannot keep up, lines are dropped (and counted in a
//! final message) rather than making requests wait. Access-log lines skip the formatter and
//! are written into the buffer directly ([`access`], `access_line.rs`).

mod access_line;

pub use access_line::AccessLine;

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How often buffered log lines reach stderr.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The most bytes buffered between flushes; beyond it lines are dropped.
const MAX_BUFFERED: usize = 4 << 20;

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Buffer {
    fn append(&mut self, data: &[u8]) {
        if self.bytes.len() + data.len() > MAX_BUFFERED {
            self.dropped += 1;
        } else {
            self.bytes.extend_from_slice(data);
        }
    }
}

/// Where access-log lines go when fusebox installed its own logging (and no ANSI colours).
struct AccessSink {
    shared: Arc<Mutex<Buffer>>,
    json: bool,
}

static ACCESS_SINK: OnceLock<AccessSink> = OnceLock::new();

thread_local! {
    /// A reused buffer to format one access line in, outside the shared buffer's lock.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Logs one request's access line (target `fusebox::access`, INFO) if the level filter lets
/// it through: formatted here into the log buffer, or as a `tracing` event for a subscriber
/// that is not fusebox's.
pub fn access(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: "fusebox::access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = ACCESS_SINK.get() else {
        return access_line::event(line);
    };
    LINE.with_borrow_mut(|text| {
        text.clear();
        let timestamp = access_line::timestamp();
        if sink.json {
            access_line::write_json(text, &timestamp, line);
        } else {
            access_line::write_text(text, &timestamp, line);
        }
        sink.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(text);
    });
}

/// A `MakeWriter` that appends to the shared buffer.
#[derive(Debug, Clone)]
struct Batched(Arc<Mutex<Buffer>>);

/// One event's writer: tracing-subscriber formats an event, then writes it in one call.
struct Line<'a>(&'a Mutex<Buffer>);

impl Write for Line<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.0)
    }
}

/// Flushes what is buffered when dropped (at exit).
#[derive(Debug)]
pub struct FlushOnDrop(Arc<Mutex<Buffer>>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush(&self.0);
    }
}

fn flush(shared: &Mutex<Buffer>) {
    let (bytes, dropped) = {
        let mut buffer = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = std::mem::take(&mut buffer.dropped);
        (std::mem::take(&mut buffer.bytes), dropped)
    };
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(&bytes);
    if dropped > 0 {
        let _ = writeln!(
            stderr,
            "fusebox: {dropped} log lines dropped: stderr could not keep up"
        );
    }
    let _ = stderr.flush();
}

/// Installs the global subscriber (level from `RUST_LOG`, default `info`). Keep the returned
/// guard alive until exit: dropping it flushes the last lines.
pub fn init(format: Format) -> FlushOnDrop {
    let shared = Arc::new(Mutex::new(Buffer::default()));
    let flusher = Arc::clone(&shared);
    // A detached thread: it sleeps between flushes and ends with the process.
    let _ = thread::Builder::new()
        .name("fusebox-log".into())
        .spawn(move || loop {
            thread::sleep(FLUSH_EVERY);
            flush(&flusher);
        });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = io::stderr().is_terminal();
    if !ansi {
        let _ = ACCESS_SINK.set(AccessSink {
            shared: Arc::clone(&shared),
            json: format == Format::Json,
        });
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Batched(Arc::clone(&shared)));
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.json().init(),
    }
    FlushOnDrop(shared)
}

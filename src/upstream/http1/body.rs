//! A response body read straight from fusebox's own upstream connection, in the task that
//! forwards it to the app: no connection task, no channel between tasks.
//!
//! The body owns its connection while it is read, and the handle of its destination's resting
//! connections ([`Home`]). Read to its end, with the upstream keeping the connection alive and
//! nothing unasked-for after it, the body gives the connection back there itself, the moment
//! its last byte is decoded; a body dropped before its end, or one that broke off, closes it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::head::Framing;
use super::{Connection, IdleConnections, READ_SIZE};

/// A chunk-size line longer than this is refused (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// Chunk extensions larger than this in all, in one body, are refused.
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Trailer fields larger than this in all are refused.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a response's connection goes back to once its body has been read, if it may be reused.
#[derive(Debug, Clone)]
pub(super) struct Home {
    /// The destination's resting connections.
    pub idle: Arc<IdleConnections>,
    /// `pool_max_idle` of the destination's policy.
    pub max_idle: usize,
    /// The upstream's `Keep-Alive: timeout=`.
    pub idle_limit: Option<Duration>,
}

/// The body of a response on one of fusebox's own HTTP/1.1 connections.
#[derive(Debug)]
pub struct Http1Body {
    /// `None` once given back, or after an error.
    conn: Option<Connection>,
    decoder: Decoder,
    /// Where the connection goes once the body has been read (`None`: it is closed then).
    home: Option<Home>,
}

#[derive(Debug)]
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Where a chunked body is, and how many bytes of chunk extensions it has had.
    Chunked(Chunk, usize),
    /// Read until the upstream closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk's data are still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields so far, until an empty line.
    Trailers(Vec<u8>),
}

impl Decoder {
    fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(length) => Decoder::Length(length),
            Framing::Chunked => Decoder::Chunked(Chunk::Size, 0),
            Framing::UntilClose => Decoder::UntilClose,
        }
    }
}

/// What the bytes read so far give.
enum Step {
    Frame(Frame<Bytes>),
    End,
    More,
}

impl Http1Body {
    pub(super) fn new(conn: Connection, framing: Framing, home: Option<Home>) -> Self {
        let mut body = Http1Body {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            home,
        };
        // A response without a body is done already: hyper will not poll it.
        body.give_back_if_done();
        body
    }

    /// Once the body has been read to its end: its connection goes back home, if the upstream
    /// keeps it alive and sent nothing past the body. Otherwise it is closed.
    fn give_back_if_done(&mut self) {
        if !matches!(self.decoder, Decoder::Done) {
            return;
        }
        let conn = self.conn.take();
        if let (Some(conn), Some(home)) = (conn, self.home.take()) {
            if conn.read.is_empty() {
                let now = Instant::now();
                home.idle
                    .give_back(conn, now, home.max_idle, home.idle_limit);
            }
        }
    }

    /// The body broke off: the connection is closed, and the error is the body's last frame.
    fn fail(&mut self, error: io::Error) -> io::Error {
        self.conn = None;
        self.decoder = Decoder::Done;
        error
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if matches!(this.decoder, Decoder::Done) {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step(&mut this.decoder, &mut conn.read) {
                Ok(Step::Frame(frame)) => {
                    this.give_back_if_done();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.give_back_if_done();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(error) => return Poll::Ready(Some(Err(this.fail(error)))),
            }
            conn.read.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.read
            ));
            match read {
                Ok(0) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.conn = None;
                    this.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the response body",
                    );
                    return Poll::Ready(Some(Err(this.fail(error))));
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(this.fail(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Decodes what `buf` holds: a frame, the end, or the need for more bytes.
fn step(decoder: &mut Decoder, buf: &mut BytesMut) -> io::Result<Step> {
    loop {
        let (chunk, extensions) = match decoder {
            Decoder::Done => return Ok(Step::End),
            Decoder::UntilClose if buf.is_empty() => return Ok(Step::More),
            Decoder::UntilClose => return Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Decoder::Length(left) => {
                let Some(data) = take_data(buf, left) else {
                    return Ok(Step::More);
                };
                if *left == 0 {
                    *decoder = Decoder::Done;
                }
                return Ok(Step::Frame(Frame::data(data)));
            }
            Decoder::Chunked(chunk, extensions) => (chunk, extensions),
        };
        match chunk {
            Chunk::Size => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(Step::More);
                };
                *chunk = match chunk_size(&line, extensions)? {
                    0 => Chunk::Trailers(Vec::new()),
                    size => Chunk::Data(size),
                };
            }
            Chunk::Data(left) => {
                let Some(data) = take_data(buf, left) else {
                    return Ok(Step::More);
                };
                if *left == 0 {
                    *chunk = Chunk::DataEnd;
                }
                return Ok(Step::Frame(Frame::data(data)));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers(fields) => {
                // The room left counts the CRLF each kept line takes (an unchecked subtraction
                // here underflowed, found by fuzzing: in a release build, no limit at all).
                let room = MAX_TRAILERS.saturating_sub(fields.len() + 2);
                let Some(line) = take_line(buf, room)? else {
                    return Ok(Step::More);
                };
                if line.is_empty() {
                    let trailers = parse_trailers(fields)?;
                    *decoder = Decoder::Done;
                    return Ok(match trailers {
                        Some(trailers) => Step::Frame(Frame::trailers(trailers)),
                        None => Step::End,
                    });
                }
                fields.extend_from_slice(&line);
                fields.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Up to `left` bytes of data from `buf`, counted off `left`; `None` when `buf` is empty.
fn take_data(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// A line ending in CRLF, without it; `None` until one is complete. A line with a bare CR or
/// LF, or another control character than HTAB, is malformed: readers that end lines
/// differently must never frame the body differently.
fn take_line(buf: &mut BytesMut, max: usize) -> io::Result<Option<BytesMut>> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= max => {
            let line = buf.split_to(end);
            buf.advance(2);
            if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(invalid(
                    "a control character in a chunk-size or trailer line",
                ));
            }
            Ok(Some(line))
        }
        Some(_) => Err(invalid("chunk-size line or trailers too long")),
        None if buf.len() > max => Err(invalid("chunk-size line or trailers too long")),
        None => Ok(None),
    }
}

/// The size in a chunk-size line: hex digits, then optional whitespace and extensions, whose
/// bytes are counted in `extensions` (at most [`MAX_EXTENSIONS`] in a body, as hyper allows).
fn chunk_size(line: &[u8], extensions: &mut usize) -> io::Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    *extensions += line.len() - digits.len();
    if *extensions > MAX_EXTENSIONS {
        return Err(invalid("chunk extensions over the limit"));
    }
    let digits = digits
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(&digits[..0], |end| &digits[..=end]);
    let valid =
        !digits.is_empty() && digits.len() <= 16 && digits.iter().all(u8::is_ascii_hexdigit);
    std::str::from_utf8(digits)
        .ok()
        .filter(|_| valid)
        .and_then(|text| u64::from_str_radix(text, 16).ok())
        .ok_or_else(|| invalid("invalid chunk size"))
}

/// The trailer fields after the last chunk; `None` when there are none.
fn parse_trailers(fields: &[u8]) -> io::Result<Option<HeaderMap>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut block = fields.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut parsed = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&block, &mut parsed)
    else {
        return Err(invalid("malformed trailer fields"));
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(invalid("malformed trailer field"));
        };
        trailers.append(name, value);
    }
    Ok(Some(trailers))
}

/// A body decoded in one piece: its data and trailers.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// Decodes what `buf` holds into `out`; whether the body ended (if not, it needs more bytes).
fn drain(decoder: &mut Decoder, buf: &mut BytesMut, out: &mut Decoded) -> io::Result<bool> {
    loop {
        match step(decoder, buf)? {
            Step::Frame(frame) => match frame.into_data() {
                Ok(bytes) => out.data.extend_from_slice(&bytes),
                Err(frame) => out.trailers = frame.into_trailers().ok(),
            },
            Step::End => return Ok(true),
            Step::More => return Ok(false),
        }
    }
}

/// Decodes a whole body framed as `framing` from `wire` (the fuzz target's way in), and
/// whether it ended within `wire`.
pub(crate) fn decode_all(framing: Framing, wire: &[u8]) -> io::Result<(Decoded, bool)> {
    let mut out = Decoded::default();
    let ended = drain(
        &mut Decoder::new(framing),
        &mut BytesMut::from(wire),
        &mut out,
    )?;
    Ok((out, ended))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the upstream's response body is malformed: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire`, fed `split` bytes at a time, and whether the body ended within it.
    fn decode(framing: Framing, wire: &[u8], split: usize) -> io::Result<(Decoded, bool)> {
        let mut decoder = Decoder::new(framing);
        let (mut buf, mut out, mut fed) = (BytesMut::new(), Decoded::default(), 0);
        loop {
            if drain(&mut decoder, &mut buf, &mut out)? {
                return Ok((out, true));
            }
            if fed == wire.len() {
                return Ok((out, false));
            }
            let next = (fed + split).min(wire.len());
            buf.extend_from_slice(&wire[fed..next]);
            fed = next;
        }
    }

    #[test]
    fn a_chunked_body_decodes_however_it_is_split() {
        let wire = b"5;ext=1\r\nhello\r\n7  \r\n, world\r\n0\r\nx-sum: 9\r\n\r\n";
        for split in [1, 2, 3, 7, wire.len()] {
            let (body, ended) = decode(Framing::Chunked, wire, split).unwrap();
            assert_eq!(body.data, b"hello, world", "split {split}");
            assert!(ended, "split {split}");
            assert_eq!(body.trailers.unwrap()["x-sum"], "9");
        }
        let (body, ended) = decode(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(
            (body.data, body.trailers.is_none(), ended),
            (b"abc".to_vec(), true, true)
        );
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"-3\r\nabc\r\n",
        ] {
            assert!(decode(Framing::Chunked, wire, 2).is_err(), "{wire:?}");
        }
        // Lines that readers ending lines differently would split differently.
        for wire in [
            &b"5;x=1\r\r\nhello\r\n0\r\n\r\n"[..],
            b"5;x\nTransfer-Encoding: x\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-a: 1\n\r\n4\rx: y\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-a: \x01\r\n\r\n",
        ] {
            assert!(decode(Framing::Chunked, wire, 3).is_err(), "{wire:?}");
        }
        // Extensions add up over the body.
        let mut many = Vec::new();
        for _ in 0..(MAX_EXTENSIONS / 1000 + 1) {
            many.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(999)).as_bytes());
        }
        assert!(decode(Framing::Chunked, &many, 4096).is_err());
        // Trailer lines that each fit but add up past the limit (with their CRLFs).
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS * 2 {
            trailers.extend_from_slice(
                format!("x-{}: {}\r\n", trailers.len(), "v".repeat(90)).as_bytes(),
            );
        }
        trailers.extend_from_slice(b"\r\n");
        for split in [7, 100, trailers.len()] {
            assert!(
                decode(Framing::Chunked, &trailers, split).is_err(),
                "split {split}"
            );
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode(Framing::Chunked, &endless, 100).is_err());
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_an_early_end_is_not_the_end() {
        let (body, ended) = decode(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!((body.data, ended), (b"hello".to_vec(), true));
        let (body, ended) = decode(Framing::Length(5), b"hel", 2).unwrap();
        assert_eq!((body.data, ended), (b"hel".to_vec(), false));
    }
}

//! The wire format of one exchange on fusebox's own HTTP/1.1 connections (RFC 9112): the
//! request head as written, the response head as parsed, and how the response body is framed.
//!
//! Parsing is httparse's, the parser hyper uses; the framing rules a proxy must get right to keep
//! one response from bleeding into the next are [`super::framing`]'s, applied to each field's
//! bytes as they came.

use std::io::Write;
use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};

pub use super::framing::Framing;
use super::framing::FramingFields;

/// At most this many header fields in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Where a header field's name and value are within the head: (start, end) of each.
type FieldSpan = ((u32, u32), (u32, u32));

/// A complete response head.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once the body has been read.
    pub keep_alive: bool,
    /// How long the upstream keeps the connection open while it is idle, if it says so
    /// (`Keep-Alive: timeout=N`).
    pub idle_limit: Option<Duration>,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response, this many bytes long: skipped.
    Interim(usize),
    /// The final response head; its bytes have been taken from the buffer.
    Final(Head),
}

/// Writes the request head in origin-form into `out` (cleared first). `body_len`: the length
/// of a body known in full, sent as `Content-Length` in place of any the app sent.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_len: Option<usize>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = uri.authority() {
            write_field(out, "host", authority.as_str().as_bytes());
        }
    }
    for (name, value) in headers {
        if body_len.is_some() && name == header::CONTENT_LENGTH {
            continue;
        }
        write_field(out, name.as_str(), value.as_bytes());
    }
    if let Some(len) = body_len {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buf`, the answer to a `method` request. A final
/// head's bytes are split off `buf` (header values keep pointing into them: no copies).
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Parsed, String> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        // The limit is on the head's own bytes, however the reads fell: a partial head is the
        // whole buffer, a complete one may have its body's first bytes behind it.
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(Parsed::Partial),
        Ok(_) => return Err(format!("response head larger than {MAX_HEAD_BYTES} bytes")),
        Err(error) => return Err(format!("malformed response head: {error}")),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 Switching Protocols to a request that asked for no upgrade".to_owned());
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is within the head, so that the head can be split off and shared.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start as u32, (start + s.len()) as u32)
    };
    let mut spans: [FieldSpan; MAX_HEADERS] = [((0, 0), (0, 0)); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = (at(field.name.as_bytes()), at(field.value));
    }
    let head = buf.split_to(len).freeze();
    let (mut headers, fields) = header_fields(&head, &spans[..count])?;
    let (framing, keep_alive) = fields.framing(method, status, version)?;
    fields.settle_content_length(&mut headers);
    let idle_limit = fields.idle_limit();
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
        idle_limit,
    }))
}

/// The header fields at `spans` (name, value) of `head`, and what those that frame the body
/// say, read from their bytes as they came.
fn header_fields(head: &Bytes, spans: &[FieldSpan]) -> Result<(HeaderMap, FramingFields), String> {
    let mut fields = FramingFields::default();
    // One more for the `Via` fusebox adds.
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    for &((name_start, name_end), (value_start, value_end)) in spans {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| "invalid header name in the response head".to_owned())?;
        let value = head.slice(value_start as usize..value_end as usize);
        fields.read(&name, &value)?;
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("invalid value of {name} in the response head"))?;
        headers.append(name, value);
    }
    Ok((headers, fields))
}

#[cfg(test)]
fn parse(text: &str, method: &Method) -> Result<Parsed, String> {
    parse_response(&mut BytesMut::from(text.as_bytes()), method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_head(text: &str) -> Head {
        match parse(text, &Method::GET) {
            Ok(Parsed::Final(head)) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn the_request_head_is_origin_form_with_the_body_length_fusebox_knows() {
        let mut out = Vec::new();
        let uri: Uri = "http://example.com:8080/a/b?c=d".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        write_request_head(&mut out, &Method::POST, &uri, &headers, Some(4));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: example.com:8080\r\nx-a: 1\r\ncontent-length: 4\r\n\r\n"
        );
        headers.insert(header::HOST, HeaderValue::from_static("kept.example"));
        let uri: Uri = "http://example.com".parse().unwrap();
        write_request_head(&mut out, &Method::GET, &uri, &headers, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\ncontent-length: 99\r\nx-a: 1\r\nhost: kept.example\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Empty, true),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Framing::Length(1),
                true,
            ),
        ];
        for (text, framing, keep_alive) in cases {
            let head = final_head(text);
            assert_eq!(
                (head.framing, head.keep_alive),
                (framing, keep_alive),
                "{text:?}"
            );
            if text.contains("Transfer-Encoding") {
                let headers = head.response.headers();
                assert!(!headers.contains_key(header::CONTENT_LENGTH), "{text:?}");
            }
        }
        let Ok(Parsed::Final(head)) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD,
        ) else {
            panic!("a HEAD answer parses");
        };
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_errors() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff-gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\x80\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let parsed = parse_response(&mut BytesMut::from(text), &Method::GET);
            assert!(parsed.is_err(), "{:?}", text.escape_ascii().to_string());
        }
    }

    #[test]
    fn the_head_limit_counts_the_heads_bytes_however_they_arrive() {
        let head = |size: usize| {
            let filler = "x".repeat(size - "HTTP/1.1 200 OK\r\nx: \r\n\r\n".len());
            format!("HTTP/1.1 200 OK\r\nx: {filler}\r\n\r\n").into_bytes()
        };
        let exact = head(MAX_HEAD_BYTES);
        let mut buf = BytesMut::from(&exact[..]);
        buf.extend_from_slice(b"body bytes behind the head");
        assert!(matches!(
            parse_response(&mut buf, &Method::GET),
            Ok(Parsed::Final(_))
        ));
        // A larger head, whole in the buffer (it came in reads that each fit the limit).
        let large = head(100 * 1024);
        assert!(parse_response(&mut BytesMut::from(&large[..]), &Method::GET).is_err());
        // Incomplete: refused once more than the limit is there, not before.
        let partial = &large[..MAX_HEAD_BYTES];
        assert!(matches!(
            parse_response(&mut BytesMut::from(partial), &Method::GET),
            Ok(Parsed::Partial)
        ));
        let partial = &large[..MAX_HEAD_BYTES + 1];
        assert!(parse_response(&mut BytesMut::from(partial), &Method::GET).is_err());
    }

    #[test]
    fn a_partial_head_waits_and_an_interim_one_is_skipped() {
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-", &Method::GET),
            Ok(Parsed::Partial)
        ));
        let interim = "HTTP/1.1 100 Continue\r\n\r\n";
        let text = format!("{interim}HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(parse(&text, &Method::GET), Ok(Parsed::Interim(n)) if n == interim.len()));
    }

    #[test]
    fn header_values_are_kept_and_the_head_is_taken_from_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
        );
        let Ok(Parsed::Final(head)) = parse_response(&mut buf, &Method::GET) else {
            panic!("parses");
        };
        assert_eq!(head.response.status(), 404);
        let values: Vec<_> = head.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"abc", "the body's bytes stay");
    }

    #[test]
    fn keep_alive_timeout_is_read_from_its_parameter() {
        let cases = [
            ("timeout=5, max=100", Some(5)),
            ("max=100, Timeout = 7", Some(7)),
            ("timeout=\"3\"", Some(3)),
            ("max=1", None),
            ("timeout=-1", None),
            ("timeout=soon", None),
        ];
        for (value, seconds) in cases {
            let text =
                format!("HTTP/1.1 200 OK\r\nKeep-Alive: {value}\r\ncontent-length: 0\r\n\r\n");
            let head = final_head(&text);
            assert_eq!(head.idle_limit, seconds.map(Duration::from_secs), "{value}");
        }
        assert_eq!(
            final_head("HTTP/1.1 204 No Content\r\n\r\n").idle_limit,
            None
        );
    }
}

//! How a response body is delimited (RFC 9112 §6.3), and whether its connection may carry
//! another request, decided on the header fields' bytes exactly as the upstream sent them.
//!
//! A framing mistake on a kept-alive connection hands the next request bytes meant for no one,
//! so the rules are strict. Every `Transfer-Encoding`, `Content-Length` and `Connection` field
//! must be a valid list (tokens; digits) — a value with any other byte is a bad response, never
//! a field read through a filter that drops what it cannot read. The only transfer coding is a
//! single `chunked` (fusebox does not decode others, and the app must never receive coded
//! bytes unlabelled). A connection is reused only after an unambiguous framing: one
//! `Content-Length` value, or `chunked` alone.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: `HEAD`, 1xx, 204, 304, `Content-Length: 0`.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
}

/// What the framing fields of one response head say, read field by field.
#[derive(Debug, Default)]
pub struct FramingFields {
    /// A `Transfer-Encoding` field was sent (its codings were exactly one `chunked`).
    chunked: bool,
    /// The one `Content-Length` value.
    length: Option<u64>,
    /// How many `Content-Length` values were sent (list elements and repeated fields).
    length_values: u32,
    /// `Connection` named `close`.
    close: bool,
    /// `Connection` named `keep-alive`.
    keep_alive: bool,
    /// `Keep-Alive: timeout=N`: how long the upstream keeps an idle connection open.
    idle_limit: Option<Duration>,
}

impl FramingFields {
    /// Takes in one header field; a framing field whose value is not valid is an error.
    pub fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), String> {
        // Most fields frame nothing: a length comparison sends them on.
        match name.as_str().len() {
            17 if name == header::TRANSFER_ENCODING => self.read_transfer_encoding(value),
            14 if name == header::CONTENT_LENGTH => self.read_content_length(value),
            10 if name == header::CONNECTION => self.read_connection(value),
            10 if name.as_str() == "keep-alive" => {
                self.idle_limit = keep_alive_timeout(value).or(self.idle_limit);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn read_transfer_encoding(&mut self, value: &[u8]) -> Result<(), String> {
        let mut codings = 0;
        // Empty elements too are refused: RFC 9110 §5.6.1 has them ignored, but hyper takes
        // `chunked ,` for a body read until close, and two readers must never differ here.
        for coding in value.split(|&b| b == b',').map(trim) {
            if !is_token(coding) {
                return Err(format!("invalid Transfer-Encoding {}", shown(value)));
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(format!(
                    "transfer coding {} (fusebox decodes only chunked)",
                    shown(coding)
                ));
            }
            codings += 1;
        }
        // `chunked` twice (in one field or two), or a field that names no coding.
        if codings != 1 || self.chunked {
            return Err(format!("invalid Transfer-Encoding {}", shown(value)));
        }
        self.chunked = true;
        Ok(())
    }

    fn read_content_length(&mut self, value: &[u8]) -> Result<(), String> {
        let mut values = 0;
        for element in value.split(|&b| b == b',').map(trim) {
            let length = digits(element)
                .ok_or_else(|| format!("invalid Content-Length {}", shown(value)))?;
            if self.length.is_some_and(|l| l != length) {
                return Err("differing Content-Length values".to_owned());
            }
            self.length = Some(length);
            values += 1;
        }
        self.length_values += values;
        Ok(())
    }

    fn read_connection(&mut self, value: &[u8]) -> Result<(), String> {
        for option in list_elements(value) {
            if !is_token(option) {
                return Err(format!("invalid Connection {}", shown(value)));
            }
            self.close |= option.eq_ignore_ascii_case(b"close");
            self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
        Ok(())
    }

    /// How long the upstream said it keeps an idle connection open (`Keep-Alive: timeout=`).
    pub fn idle_limit(&self) -> Option<Duration> {
        self.idle_limit
    }

    /// RFC 9112 §6.3: how the body of this response is delimited, and whether the connection
    /// can be reused after it.
    pub fn framing(
        &self,
        method: &Method,
        status: StatusCode,
        version: Version,
    ) -> Result<(Framing, bool), String> {
        if self.chunked && version == Version::HTTP_10 {
            // §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty.
            return Err("Transfer-Encoding in an HTTP/1.0 response".to_owned());
        }
        let keep_alive = match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        };
        // Reused only after one unambiguous framing: both fields (§6.3 item 3: a possible
        // smuggling attempt) or a list of lengths are answered, and the connection closed.
        let unambiguous = !(self.chunked && self.length_values > 0) && self.length_values <= 1;
        let reuse = keep_alive && unambiguous;
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Empty, reuse));
        }
        if self.chunked {
            return Ok((Framing::Chunked, reuse));
        }
        match self.length {
            Some(0) => Ok((Framing::Empty, reuse)),
            Some(length) => Ok((Framing::Length(length), reuse)),
            None => Ok((Framing::UntilClose, false)),
        }
    }

    /// Puts the forwarded head's `Content-Length` right: removed beside `Transfer-Encoding`
    /// (§6.3: the app's side frames the body anew), one value where a list of one repeated
    /// value came (RFC 9110 §8.6: a proxy must not forward the list).
    pub fn settle_content_length(&self, headers: &mut HeaderMap) {
        if self.chunked {
            headers.remove(header::CONTENT_LENGTH);
        } else if let Some(length) = self.length.filter(|_| self.length_values > 1) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
}

/// For a response read by hyper's client (the pooled path, HTTP/1.x): refuses a transfer
/// coding other than a single `chunked` (hyper decodes `chunked` and leaves the rest coded,
/// unlabelled once the hop-by-hop field is removed), and gives a list of one repeated
/// `Content-Length` as one value.
pub fn settle_pooled(headers: &mut HeaderMap) -> Result<(), String> {
    if !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get_all(header::CONTENT_LENGTH).iter().count() <= 1
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| !v.as_bytes().contains(&b','))
    {
        return Ok(());
    }
    let mut fields = FramingFields::default();
    for name in [header::TRANSFER_ENCODING, header::CONTENT_LENGTH] {
        for value in headers.get_all(&name) {
            fields.read(&name, value.as_bytes())?;
        }
    }
    fields.settle_content_length(headers);
    Ok(())
}

/// The non-empty elements of a comma-separated list (RFC 9110 §5.6.1), without their
/// surrounding whitespace.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|e| !e.is_empty())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// RFC 9110 §5.6.2: `1*tchar`.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `1*DIGIT` as a number; `None` if it is anything else or does not fit.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A value as it may be shown in an error: escaped, and cut at 64 bytes.
fn shown(value: &[u8]) -> String {
    let cut = &value[..value.len().min(64)];
    let more = if cut.len() < value.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

/// The `timeout` parameter of a `Keep-Alive` field's value (`timeout=5, max=100`): how long
/// the upstream keeps an idle connection open. Any other parameter, or a value that is not a
/// number of seconds, says nothing.
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    value.split(|&b| b == b',').find_map(|param| {
        let at = param.iter().position(|&b| b == b'=')?;
        let (name, seconds) = (trim(&param[..at]), trim(&param[at + 1..]));
        if !name.eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let seconds = seconds.strip_prefix(b"\"").unwrap_or(seconds);
        let seconds = seconds.strip_suffix(b"\"").unwrap_or(seconds);
        digits(seconds).map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &[u8])]) -> Result<FramingFields, String> {
        let mut fields = FramingFields::default();
        for (name, value) in pairs {
            fields.read(&HeaderName::from_bytes(name.as_bytes()).unwrap(), value)?;
        }
        Ok(fields)
    }

    fn framing_of(pairs: &[(&str, &[u8])]) -> Result<(Framing, bool), String> {
        fields(pairs)?.framing(&Method::GET, StatusCode::OK, Version::HTTP_11)
    }

    #[test]
    fn only_a_single_chunked_coding_is_accepted() {
        assert_eq!(
            framing_of(&[("transfer-encoding", b"Chunked")]),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing_of(&[("transfer-encoding", b" chunked\t")]),
            Ok((Framing::Chunked, true))
        );
        for te in [
            &[("transfer-encoding", &b"gzip, chunked"[..])][..],
            &[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"gzip"),
            ],
            &[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"\xff-gzip"),
            ],
            &[("transfer-encoding", b"chunked, chunked")],
            &[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked"),
            ],
            &[("transfer-encoding", b"identity")],
            &[("transfer-encoding", b"")],
            &[("transfer-encoding", b"chunked;q=1")],
            &[("transfer-encoding", b"chunked\xff")],
            &[("transfer-encoding", b"chunked ,")],
            &[("transfer-encoding", b", chunked")],
        ] {
            assert!(framing_of(te).is_err(), "{te:?}");
        }
    }

    #[test]
    fn content_length_is_digits_and_one_value() {
        assert_eq!(
            framing_of(&[("content-length", b"5")]),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing_of(&[("content-length", b"5, 5")]),
            Ok((Framing::Length(5), false)),
            "a list of one value frames the body, and the connection is not reused"
        );
        for cl in [
            &b"5, 6"[..],
            b"+5",
            b"5x",
            b"",
            b"5,",
            b"0x5",
            b"5\xff",
            b"99999999999999999999",
        ] {
            assert!(framing_of(&[("content-length", cl)]).is_err(), "{cl:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        fields(&[("content-length", b"5, 5")])
            .unwrap()
            .settle_content_length(&mut headers);
        assert_eq!(headers[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn connection_options_are_tokens() {
        assert_eq!(
            framing_of(&[("connection", b"Close"), ("content-length", b"1")]),
            Ok((Framing::Length(1), false))
        );
        assert!(framing_of(&[("connection", b"keep-alive\xff")]).is_err());
        assert!(framing_of(&[("connection", b"close ; x")]).is_err());
        let fields = fields(&[("connection", b"keep-alive"), ("content-length", b"1")]).unwrap();
        assert_eq!(
            fields.framing(&Method::GET, StatusCode::OK, Version::HTTP_10),
            Ok((Framing::Length(1), true))
        );
    }

    #[test]
    fn chunked_beside_a_length_or_in_http_1_0_is_not_reused_or_refused() {
        assert_eq!(
            framing_of(&[("transfer-encoding", b"chunked"), ("content-length", b"3")]),
            Ok((Framing::Chunked, false))
        );
        let chunked = fields(&[("transfer-encoding", b"chunked")]).unwrap();
        assert!(chunked
            .framing(&Method::GET, StatusCode::OK, Version::HTTP_10)
            .is_err());
    }

    #[test]
    fn a_pooled_response_keeps_only_chunked_and_one_length() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(settle_pooled(&mut headers).is_ok());
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(settle_pooled(&mut headers).is_err());
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        assert!(settle_pooled(&mut headers).is_ok());
        let values: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(values, ["7"]);
    }
}

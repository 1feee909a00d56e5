//! Local replies (docs/ARCHITECTURE.md §5, a contract): what the app gets when fusebox answers
//! instead of the upstream. Always `x-fusebox-reason`, `x-fusebox-upstream` and a one-line text
//! body.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use super::body::ResponseBody;
use crate::outcome::Reason;

pub const X_FUSEBOX_REASON: &str = "x-fusebox-reason";
pub const X_FUSEBOX_UPSTREAM: &str = "x-fusebox-upstream";

/// A local reply for `reason`, on behalf of policy `upstream` (`-` when none matched yet).
/// `detail` is the human-readable line, e.g. "connect to 10.0.0.7:8080 timed out after 1s".
pub fn local_reply(reason: Reason, upstream: &str, detail: &str) -> Response<ResponseBody> {
    local_reply_with_retry_after(reason, upstream, detail, None)
}

pub fn local_reply_with_retry_after(
    reason: Reason,
    upstream: &str,
    detail: &str,
    retry_after: Option<Duration>,
) -> Response<ResponseBody> {
    let body = Bytes::from(format!("fusebox: {}: {detail}\n", reason.as_str()));
    let mut response = Response::new(ResponseBody::Local(Some(body)));
    *response.status_mut() = reason.status();
    let headers = response.headers_mut();
    headers.insert(X_FUSEBOX_REASON, HeaderValue::from_static(reason.as_str()));
    headers.insert(
        X_FUSEBOX_UPSTREAM,
        HeaderValue::from_str(upstream).unwrap_or_else(|_| HeaderValue::from_static("-")),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(after) = retry_after {
        // Whole seconds, rounded up: "retry in 0 s" would invite an immediate retry.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// A local reply to a gRPC call: `200` with `content-type: application/grpc` and no body (a
/// trailers-only answer), `grpc-status` for `reason` and `grpc-message` with the same line the
/// text body would carry; `x-fusebox-reason`, `x-fusebox-upstream` and `retry-after` as usual.
pub fn grpc_local_reply(
    reason: Reason,
    upstream: &str,
    detail: &str,
    retry_after: Option<Duration>,
) -> Response<ResponseBody> {
    let mut response = local_reply_with_retry_after(reason, upstream, detail, retry_after);
    *response.status_mut() = http::StatusCode::OK;
    *response.body_mut() = ResponseBody::empty();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        HeaderValue::from(reason.grpc_status() as u16),
    );
    let message = percent_encode(&format!("fusebox: {}: {detail}", reason.as_str()));
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `grpc-message` encoding: every byte outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A request head that hyper could not read. hyper answers it with a bare status of its own
/// and closes the connection; the app's socket ([`super::app_conn`]) writes fusebox's reply
/// instead, and the listener counts it like every other local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnreadHead {
    /// A malformed request line or header field (hyper's 400).
    Malformed,
    /// A request target longer than hyper takes (hyper's 414).
    TargetTooLong,
    /// A head larger than hyper's buffer, 2 × `--max-header-bytes` (hyper's 431).
    TooLarge,
}

impl UnreadHead {
    pub const ALL: [UnreadHead; 3] = [
        UnreadHead::Malformed,
        UnreadHead::TargetTooLong,
        UnreadHead::TooLarge,
    ];

    /// Which one hyper is answering, from the bytes it writes: its status, in a head with
    /// neither fusebox's reason (a local reply) nor its `via` (an upstream's response), which
    /// every response fusebox itself sends has.
    pub fn of_hyper_answer(bytes: &[u8]) -> Option<UnreadHead> {
        // The status first: nearly every response is not one of these, and stops here.
        let unread = match bytes.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
            b"400 " => UnreadHead::Malformed,
            b"414 " => UnreadHead::TargetTooLong,
            b"431 " => UnreadHead::TooLarge,
            _ => return None,
        };
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(bytes.len());
        let head = &bytes[..head_end];
        let has = |field: &[u8]| {
            head.windows(field.len())
                .any(|w| w.eq_ignore_ascii_case(field))
        };
        (!has(b"\r\nvia:") && !has(b"\r\nx-fusebox-reason:")).then_some(unread)
    }

    pub fn reason(self) -> Reason {
        match self {
            UnreadHead::Malformed => Reason::BadRequest,
            UnreadHead::TargetTooLong => Reason::UriTooLong,
            UnreadHead::TooLarge => Reason::HeadersTooLarge,
        }
    }

    /// The reply's line, without `fusebox: <reason>: `.
    pub fn detail(self) -> &'static str {
        match self {
            UnreadHead::Malformed => {
                "the request head could not be parsed (a malformed request line or header \
                 field); nothing was sent upstream"
            }
            UnreadHead::TargetTooLong => {
                "the request target is too long to read; nothing was sent upstream"
            }
            UnreadHead::TooLarge => {
                "the request head is larger than fusebox reads (2 x --max-header-bytes); \
                 nothing was sent upstream"
            }
        }
    }

    /// The whole reply as written to the socket, ending with `connection: close`.
    pub fn reply(self) -> &'static [u8] {
        static REPLIES: std::sync::LazyLock<[Vec<u8>; 3]> = std::sync::LazyLock::new(|| {
            UnreadHead::ALL.map(|head| raw_reply(head.reason(), "default", head.detail()))
        });
        &REPLIES[self as usize]
    }
}

/// A local reply as bytes on the wire, for the few that fusebox writes straight to the app's
/// socket (hyper has given up on the connection); the same fields as [`local_reply`], and
/// `connection: close`.
fn raw_reply(reason: Reason, upstream: &str, detail: &str) -> Vec<u8> {
    let status = reason.status();
    let body = format!("fusebox: {}: {detail}\n", reason.as_str());
    format!(
        "HTTP/1.1 {} {}\r\n{X_FUSEBOX_REASON}: {}\r\n{X_FUSEBOX_UPSTREAM}: {upstream}\r\n\
         content-type: text/plain; charset=utf-8\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        reason.as_str(),
        body.len()
    )
    .into_bytes()
}

/// What an app whose request head did not arrive within `--header-timeout` gets before its
/// connection is closed: written straight to the socket, since hyper has given up on the head.
/// Reason `timeout`, status 408 ([`Reason::HeaderTimeout`]); no policy was matched yet.
pub const HEADER_TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
x-fusebox-reason: timeout\r\n\
x-fusebox-upstream: -\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 67\r\n\
\r\n\
fusebox: timeout: no complete request head within --header-timeout\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_own_answers_are_taken_for_unread_heads() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 08:00:00 GMT\r\n\r\n";
        assert_eq!(
            UnreadHead::of_hyper_answer(hyper),
            Some(UnreadHead::Malformed)
        );
        let too_large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            UnreadHead::of_hyper_answer(too_large),
            Some(UnreadHead::TooLarge)
        );
        let long = b"HTTP/1.1 414 URI Too Long\r\n\r\n";
        assert_eq!(
            UnreadHead::of_hyper_answer(long),
            Some(UnreadHead::TargetTooLong)
        );
        let local = b"HTTP/1.1 400 Bad Request\r\nx-fusebox-reason: bad-request\r\n\r\n";
        assert_eq!(
            UnreadHead::of_hyper_answer(local),
            None,
            "fusebox's own reply"
        );
        let upstream =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nvia: 1.1 fusebox-1\r\n\r\n";
        assert_eq!(
            UnreadHead::of_hyper_answer(upstream),
            None,
            "an upstream's 400"
        );
        assert_eq!(
            UnreadHead::of_hyper_answer(b"HTTP/1.1 200 OK\r\n\r\n"),
            None
        );
    }

    #[test]
    fn unread_head_replies_are_well_formed_local_replies() {
        for head in UnreadHead::ALL {
            let text = std::str::from_utf8(head.reply()).unwrap();
            let (top, body) = text.split_once("\r\n\r\n").unwrap();
            let reason = head.reason();
            assert!(top.starts_with(&format!("HTTP/1.1 {} ", reason.status().as_u16())));
            assert!(top.contains(&format!("{X_FUSEBOX_REASON}: {}\r\n", reason.as_str())));
            assert!(top.contains("\r\nconnection: close\r\n"));
            assert!(top.ends_with(&format!("content-length: {}", body.len())));
            assert_eq!(
                body,
                format!("fusebox: {}: {}\n", reason.as_str(), head.detail())
            );
        }
    }

    #[test]
    fn a_grpc_local_reply_is_trailers_only_with_the_reason_in_grpc_message() {
        let reply = grpc_local_reply(
            Reason::BreakerOpen,
            "pay",
            "100% open, café",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(reply.status(), 200);
        let headers = reply.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(
            headers["grpc-message"],
            "fusebox: breaker-open: 100%25 open, caf%C3%A9"
        );
        assert_eq!(headers[X_FUSEBOX_REASON], "breaker-open");
        assert_eq!(headers[header::RETRY_AFTER], "3");
        assert!(http_body::Body::is_end_stream(reply.body()));
    }

    #[test]
    fn the_header_timeout_reply_is_a_well_formed_local_reply() {
        let text = std::str::from_utf8(HEADER_TIMEOUT_REPLY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let reason = Reason::HeaderTimeout;
        assert!(head.starts_with(&format!("HTTP/1.1 {} ", reason.status().as_u16())));
        assert!(head.contains(&format!("{X_FUSEBOX_REASON}: {}\r\n", reason.as_str())));
        assert!(head.ends_with(&format!("content-length: {}", body.len())));
        assert_eq!(
            body,
            format!(
                "fusebox: {}: no complete request head within --header-timeout\n",
                reason.as_str()
            )
        );
    }
}

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

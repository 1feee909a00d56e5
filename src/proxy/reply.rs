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

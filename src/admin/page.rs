//! The live view's page (`GET /`, `/live.js`, `/live.css`): three files compiled into the
//! binary, no CDN, no build step. Served with a strict Content-Security-Policy: scripts,
//! styles and connections from this origin only, no inline code, and Trusted Types required,
//! so no string can become HTML in it — the page builds its table with `textContent`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::AdminBody;

/// Every page response's policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

const INDEX: &str = include_str!("live/index.html");
const SCRIPT: &str = include_str!("live/live.js");
const STYLE: &str = include_str!("live/live.css");

/// The file at `path`, if it is one of the page's.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "/live.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/live.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The response carrying one of the page's files.
pub fn response(body: &'static str, content_type: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(super::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

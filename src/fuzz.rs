//! Entry points for the fuzz targets in `fuzz/` (docs/ARCHITECTURE.md §12): each takes arbitrary
//! bytes, runs one parser that takes untrusted input, and asserts what must hold of its answer.
//! A panic is a finding. `tests/fuzz_corpus.rs` replays the committed corpus (seeds and every
//! crash found) through the same functions on every `cargo test`, so a finding stays fixed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, StatusCode, Uri};

use crate::address::canonical;
use crate::guard::{self, GuardRules};
use crate::pipeline::backoff::retry_after_delay;
use crate::pipeline::retry::{decide, AfterTry, Decision, TryResult};
use crate::policy::load::{load_sources, Source};
use crate::policy::Retry;
use crate::proxy::target::{self, connect_target, http_target};
use crate::upstream::connect::SelfAddrs;
use crate::upstream::http1::{decode_all, head};

pub mod exchange;
pub mod framing;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their binary in `fuzz/` and corpus folder.
pub const TARGETS: [(&str, Target); 7] = [
    ("policy", policy),
    ("request_target", request_target),
    ("retry_after", retry_after),
    ("address", address),
    ("response", response),
    ("response_framing", framing::check),
    ("exchange", exchange::exchange),
];

/// A policy file's text (as `fuzz.toml`, and as `default.toml`): loading either gives a policy
/// set or errors that point into the text (`line:col` within it).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    for name in ["fuzz", "default"] {
        let source = Source {
            name: name.to_owned(),
            file: PathBuf::from(format!("{name}.toml")),
            text: text.to_owned(),
        };
        match load_sources(Path::new("."), &[source], Vec::new()) {
            Ok(set) => {
                // Matching any host on a loaded set answers with one of its policies.
                for host in ["example.com", "a.b.example.com", "127.0.0.1", "::1"] {
                    let _ = set.lookup(host, 443);
                }
            }
            Err(errors) => {
                assert!(!errors.0.is_empty(), "an error result names an error");
                for error in &errors.0 {
                    assert!(
                        error.line >= 1 && error.line <= lines && error.col >= 1,
                        "{error} points outside the text"
                    );
                }
            }
        }
    }
}

/// A request target (first line) and a `Host` header (the rest): what the proxy reads as the
/// destination is one spelling of a host (lower case, no trailing dot, no brackets, an address
/// in its canonical form) or an error.
pub fn request_target(data: &[u8]) {
    let (target, host) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    for method in [Method::GET, Method::CONNECT] {
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        if let Some(host) = host.and_then(|h| HeaderValue::from_bytes(h).ok()) {
            request = request.header(http::header::HOST, host);
        }
        let Ok(request) = request.body(()) else {
            continue;
        };
        let read = if method == Method::CONNECT {
            connect_target(&request)
        } else {
            http_target(&request)
        };
        if let Ok(target) = read {
            assert_one_spelling(&target);
        }
    }
}

fn assert_one_spelling(target: &target::Target<'_>) {
    let host = &*target.host;
    assert!(!host.is_empty(), "empty host accepted");
    assert!(!host.ends_with('.'), "{host:?} keeps a trailing dot");
    assert!(
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        "{host:?} is not lower case"
    );
    assert!(!host.starts_with('['), "{host:?} keeps its brackets");
    if let Ok(ip) = host.parse::<IpAddr>() {
        assert_eq!(
            canonical(ip).to_string(),
            host,
            "an address not in its canonical form"
        );
    }
    assert!(
        crate::address::canonical_host(host).as_deref() == Ok(host),
        "{host:?} is not its own canonical spelling"
    );
    assert!(
        target.explicit_port || target.port == 80 || target.port == 443,
        "a default port other than 80/443"
    );
}

/// A `Retry-After` value from an upstream: parsing never panics, and a retry it asks for is
/// never planned past the request's deadline, whatever the value.
pub fn retry_after(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let asked = retry_after_delay(&value, now);
    let policy = Retry {
        attempts: 3,
        ..Retry::default()
    };
    for left in [Duration::ZERO, Duration::from_millis(1), Duration::MAX] {
        let after = AfterTry {
            result: TryResult::Status(StatusCode::SERVICE_UNAVAILABLE),
            sent_nothing: false,
            tries: 1,
            replayable: true,
            idempotent: true,
            retry_after: asked,
            left,
        };
        if let Decision::Retry { delay, .. } = decide(&policy, after, || Duration::ZERO) {
            assert!(delay < left, "a retry planned past the deadline");
        }
    }
}

/// An address fusebox may be asked to connect to (a family byte, 4 or 16 address bytes, a
/// port): its class and whether it is one of fusebox's own listeners do not depend on how it
/// is spelled (IPv4, IPv4-mapped or IPv4-compatible IPv6).
pub fn address(data: &[u8]) {
    let Some((&family, rest)) = data.split_first() else {
        return;
    };
    let (ip, rest) = if family & 1 == 0 {
        let Some((octets, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (IpAddr::V4(Ipv4Addr::from(*octets)), rest)
    } else {
        let Some((octets, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        (IpAddr::V6(Ipv6Addr::from(*octets)), rest)
    };
    let port = rest
        .first_chunk::<2>()
        .map_or(15001, |p| u16::from_be_bytes(*p));
    let canon = canonical(ip);
    assert_eq!(
        canonical(canon),
        canon,
        "canonical form is not a fixed point"
    );
    assert_eq!(
        guard::classify(ip),
        guard::classify(canon),
        "{ip} vs {canon}"
    );
    for rules in [
        GuardRules {
            allow_private: false,
            allow_link_local: false,
        },
        GuardRules {
            allow_private: true,
            allow_link_local: true,
        },
    ] {
        assert_eq!(
            guard::check(rules, ip).is_ok(),
            guard::check(rules, canon).is_ok()
        );
    }
    let own = SelfAddrs::default();
    own.set(vec![
        SocketAddr::from(([127, 0, 0, 1], 15001)),
        SocketAddr::from(([0, 0, 0, 0], 15002)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 15003)),
    ]);
    let spellings = [ip, canon, mapped(canon)];
    let verdicts = spellings.map(|ip| own.contains(SocketAddr::new(ip, port)));
    assert!(
        verdicts.iter().all(|&v| v == verdicts[0]),
        "{spellings:?} at port {port}: {verdicts:?}"
    );
}

/// The IPv4-mapped IPv6 spelling of an IPv4 address; an IPv6 address as it is.
fn mapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(_) => ip,
    }
}

/// What an upstream sends on one of fusebox's own HTTP/1.1 connections, as the answer to a `GET`
/// and to a `HEAD`: the head parses or is refused, interim answers are skipped, and the body
/// decodes (or is refused) without ever giving more data than its framing allows: a
/// `Content-Length` body exactly its length at most, a chunked one no more than was sent, and a
/// forwarded head never has both `Transfer-Encoding` and `Content-Length`.
pub fn response(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = bytes::BytesMut::from(data);
        let parsed = loop {
            match head::parse_response(&mut buf, &method) {
                Ok(head::Parsed::Interim(len)) => {
                    assert!(
                        len > 0 && len <= buf.len(),
                        "an interim head is within the input"
                    );
                    bytes::Buf::advance(&mut buf, len);
                }
                other => break other,
            }
        };
        let Ok(head::Parsed::Final(head)) = parsed else {
            continue;
        };
        let headers = head.response.headers();
        assert!(
            !(headers.contains_key(http::header::TRANSFER_ENCODING)
                && headers.contains_key(http::header::CONTENT_LENGTH)),
            "both framings forwarded"
        );
        assert!(!head.response.status().is_informational());
        if method == Method::HEAD {
            assert_eq!(
                head.framing,
                head::Framing::Empty,
                "a HEAD answer has no body"
            );
        }
        let Ok((decoded, ended)) = decode_all(head.framing, &buf) else {
            continue;
        };
        let body = decoded.data;
        assert!(body.len() <= buf.len(), "more data than was sent");
        match head.framing {
            head::Framing::Empty => assert!(body.is_empty() && ended),
            head::Framing::Length(length) => {
                assert!(body.len() as u64 <= length);
                assert_eq!(ended, body.len() as u64 == length);
            }
            head::Framing::Chunked | head::Framing::UntilClose => {}
        }
    }
}

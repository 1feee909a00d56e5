//! The differential check of fusebox's response framing (issue #27; docs/ARCHITECTURE.md §12):
//! the same bytes, as an upstream's answer to a `GET`, go through fusebox's head parser and body
//! decoder, through httparse's raw view of the fields, and through hyper's HTTP/1.1 client over
//! an in-memory pipe. fusebox may refuse what the others accept; when it accepts, it must agree:
//! its framing is the one the fields' bytes say, and the body it decodes is the body hyper
//! decodes. The fuzz target `response_framing` and a proptest in `tests/framing.rs` drive it.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::http1::{decode_all, head};

/// What fusebox made of a response.
#[derive(Debug)]
struct Ours {
    status: StatusCode,
    framing: head::Framing,
    reuse: bool,
    /// Where the final head starts (after interim answers).
    head_start: usize,
    /// The body, when it arrived whole (a close-delimited one ends with the bytes).
    body: Option<Vec<u8>>,
}

/// What hyper's client made of a response: its status and, if it read to its end, the body.
#[derive(Debug)]
struct Theirs {
    status: StatusCode,
    body: Option<Vec<u8>>,
}

/// The check: fusebox refuses, or agrees with the fields' bytes and with hyper. A disagreement
/// panics, naming the bytes.
pub fn check(data: &[u8]) {
    if let Err(panic) = std::panic::catch_unwind(|| disagreement(data)) {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        panic!("{what}, for {:?}", data.escape_ascii().to_string());
    }
}

fn disagreement(data: &[u8]) {
    let Some(ours) = ours(data) else {
        return;
    };
    agrees_with_the_fields(data, &ours);
    let Some(theirs) = hyper_reads(data) else {
        panic!("fusebox accepted a response hyper refuses: {ours:?}");
    };
    assert_eq!(ours.status, theirs.status, "status");
    if let (Some(ours), Some(theirs)) = (&ours.body, &theirs.body) {
        assert_eq!(
            ours.escape_ascii().to_string(),
            theirs.escape_ascii().to_string(),
            "a different body"
        );
    }
    assert!(
        ours.body.is_none() || theirs.body.is_some(),
        "fusebox passed on a whole body where hyper saw a broken one: {ours:?}"
    );
}

fn ours(data: &[u8]) -> Option<Ours> {
    let mut buf = BytesMut::from(data);
    let mut head_start = 0;
    let head = loop {
        match head::parse_response(&mut buf, &Method::GET).ok()? {
            head::Parsed::Interim(len) => {
                buf.advance(len);
                head_start += len;
            }
            head::Parsed::Final(head) => break head,
            head::Parsed::Partial => return None,
        }
    };
    let body = match decode_all(head.framing, &buf) {
        Ok((decoded, ended)) if ended || head.framing == head::Framing::UntilClose => {
            Some(decoded.data)
        }
        _ => None,
    };
    Some(Ours {
        status: head.response.status(),
        framing: head.framing,
        reuse: head.keep_alive,
        head_start,
        body,
    })
}

/// The framing fusebox chose is the one the fields say, read from their raw bytes.
fn agrees_with_the_fields(data: &[u8], ours: &Ours) {
    let mut fields = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(&data[ours.head_start..]) else {
        panic!("httparse does not read the head fusebox read");
    };
    assert_eq!(parsed.code, Some(ours.status.as_u16()), "the status");
    let values = |name: &str| -> Vec<&[u8]> {
        parsed
            .headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .flat_map(|f| f.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .collect()
    };
    let (codings, lengths, options) = (
        values("transfer-encoding"),
        values("content-length"),
        values("connection"),
    );
    for element in codings.iter().chain(&lengths).chain(&options) {
        assert!(
            element.iter().all(|b| b.is_ascii_graphic()),
            "a framing field with other bytes than a token's: {:?}",
            element.escape_ascii().to_string()
        );
    }
    let chunked = codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked");
    let length = |n: u64| {
        lengths.iter().all(|l| {
            l.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(l).is_ok_and(|l| l.parse() == Ok(n))
        })
    };
    let no_body = ours.status == StatusCode::NO_CONTENT || ours.status == StatusCode::NOT_MODIFIED;
    match ours.framing {
        head::Framing::Chunked => assert!(chunked && parsed.version == Some(1), "chunked"),
        head::Framing::Length(n) => assert!(codings.is_empty() && length(n), "length {n}"),
        head::Framing::UntilClose => assert!(codings.is_empty() && lengths.is_empty()),
        head::Framing::Empty => assert!(no_body || (codings.is_empty() && length(0))),
    }
    assert!(codings.is_empty() || chunked, "a coding other than chunked");
    if ours.reuse {
        let named = |o: &[u8]| options.iter().any(|e| e.eq_ignore_ascii_case(o));
        assert!(!named(b"close") && (parsed.version == Some(1) || named(b"keep-alive")));
        assert!(
            codings.is_empty() || lengths.is_empty(),
            "reused after two framings"
        );
        assert!(lengths.len() <= 1, "reused after a list of lengths");
        assert!(ours.framing != head::Framing::UntilClose);
    }
}

/// hyper's HTTP/1.1 client reading `data` as the answer to `GET /`, the upstream closing after
/// it; `None` if it refuses the head.
fn hyper_reads(data: &[u8]) -> Option<Theirs> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let (ours, theirs) = tokio::io::duplex(data.len() + 4096);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = Request::get("/").body(Empty::<Bytes>::new()).ok()?;
        let (response, ()) = tokio::join!(
            async {
                let response = sender.send_request(request).await.ok()?;
                let status = response.status();
                let body = response.into_body().collect().await.ok();
                Some(Theirs {
                    status,
                    body: body.map(|b| b.to_bytes().to_vec()),
                })
            },
            answer(theirs, data),
        );
        response
    })
}

/// The upstream's side of the pipe: reads the request head, then writes `data` and closes.
async fn answer(mut upstream: tokio::io::DuplexStream, data: &[u8]) {
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match upstream.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let _ = upstream.write_all(data).await;
    let _ = upstream.shutdown().await;
}

//! The framing matrix (docs/ARCHITECTURE.md §1, "Upstream connections"): a raw-socket upstream
//! answers a first request with one hostile (or merely unusual) response shape and a second
//! request, to the same destination, with a marker of its own. For every shape the test checks
//! what the app got for both requests and whether the upstream connection was reused — a
//! framing mistake on a kept-alive connection hands the second request bytes meant for no one.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::TestFusebox;

/// The second request's answer: a well-framed response the app must get whole.
const MARKER: &str = "marker-of-the-second-request";

/// One response shape and what must come of it.
struct Case {
    name: &'static str,
    /// The upstream's answer to the first request, written in these pieces with a pause
    /// between them (so that fusebox reads them separately).
    answer: Vec<Vec<u8>>,
    /// The upstream closes the connection after the answer (else it keeps it open and serves
    /// the next request on it).
    close: bool,
    /// What the upstream writes, instead of the marker, when a next request comes on the same
    /// connection: the rest of its first answer, as a desynchronised connection would show it.
    leftover: Option<&'static [u8]>,
    /// What the app gets for the first request.
    first: First,
    /// The second request went out on the first request's connection.
    reused: bool,
}

#[derive(Debug, Clone, Copy)]
enum First {
    /// The upstream's answer: status, body, and the `Content-Length` values the app sees.
    Forwarded(u16, &'static str, &'static [&'static str]),
    /// fusebox's `502 bad-response`.
    BadResponse,
    /// The app's response breaks off: before its head (hyper sends the head with the first
    /// bytes of the body) or in its body. Never passed on as complete.
    BrokenOff,
}

fn case(name: &'static str, answer: &[u8], first: First, reused: bool) -> Case {
    Case {
        name,
        answer: vec![answer.to_vec()],
        close: false,
        leftover: None,
        first,
        reused,
    }
}

/// The shapes: the four findings of issue #27 first, then those that already worked.
fn cases() -> Vec<Case> {
    let ok = |body, lengths| First::Forwarded(200, body, lengths);
    let large_head = {
        let head = format!(
            "HTTP/1.1 200 OK\r\nx-filler: {}\r\ncontent-length: 2\r\n\r\nok",
            "x".repeat(100 * 1024)
        );
        let head = head.into_bytes();
        vec![head[..52 * 1024].to_vec(), head[52 * 1024..].to_vec()]
    };
    vec![
        Case {
            leftover: Some(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"),
            ..case(
                "chunked, then a non-ASCII coding: read until close, not chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff-gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                First::BadResponse,
                false,
            )
        },
        case(
            "gzip, chunked: a coding fusebox does not decode",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
            First::BadResponse,
            false,
        ),
        Case {
            answer: large_head,
            ..case("a 100 KiB head in two reads", b"", First::BadResponse, false)
        },
        case(
            "Content-Length: 5, 5 is forwarded as one value",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
            ok("hello", &["5"]),
            false,
        ),
        case(
            "Content-Length twice, the same",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            false,
        ),
        case(
            "chunked and a plain-ASCII second coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            First::BadResponse,
            false,
        ),
        case(
            "chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            First::BadResponse,
            false,
        ),
        case(
            "a Content-Length with a non-ASCII byte",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\xff\r\n\r\nhello",
            First::BadResponse,
            false,
        ),
        case(
            "a Connection with a non-ASCII byte",
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\xff\r\ncontent-length: 5\r\n\r\nhello",
            First::BadResponse,
            false,
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            First::BadResponse,
            false,
        ),
        case(
            "differing Content-Lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            First::BadResponse,
            false,
        ),
        case(
            "Content-Length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            true,
        ),
        case(
            "chunked, with an extension and trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
            ok("hello", &[]),
            true,
        ),
        case(
            "chunked beside a Content-Length: chunked wins, not reused",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ok("hello", &[]),
            false,
        ),
        Case {
            close: true,
            ..case(
                "neither: until the upstream closes",
                b"HTTP/1.1 200 OK\r\n\r\nhello",
                ok("hello", &[]),
                false,
            )
        },
        case(
            "Connection: close",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            false,
        ),
        case(
            "HTTP/1.0 without keep-alive",
            b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            false,
        ),
        case(
            "HTTP/1.0 with keep-alive",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            true,
        ),
        case(
            "interim answers first",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            ok("hello", &["5"]),
            true,
        ),
        case(
            "unasked-for bytes after the body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled",
            ok("hello", &["5"]),
            false,
        ),
        case(
            "a 204 with bytes after it",
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled",
            First::Forwarded(204, "", &[]),
            false,
        ),
        case(
            "a malformed chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            First::BrokenOff,
            false,
        ),
    ]
}

/// Which connection (numbered in accept order) each request came on, by path.
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// The upstream of one case on a port of its own (so each case is its own destination).
async fn matrix_upstream(
    answer: Vec<Vec<u8>>,
    close: bool,
    leftover: Option<&'static [u8]>,
) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let serving = Serving {
                stream,
                number: count,
                seen: Arc::clone(&log),
            };
            count += 1;
            tokio::spawn(serving.run(answer.clone(), close, leftover));
        }
    });
    (addr, seen)
}

struct Serving {
    stream: TcpStream,
    number: usize,
    seen: Seen,
}

impl Serving {
    async fn run(mut self, answer: Vec<Vec<u8>>, close: bool, leftover: Option<&[u8]>) {
        let mut answered_first = false;
        while let Some(path) = self.read_request().await {
            self.seen.lock().unwrap().push((self.number, path.clone()));
            let wrote = if path == "/first" {
                answered_first = true;
                self.write_in_pieces(&answer).await
            } else if let Some(rest) = leftover.filter(|_| answered_first) {
                self.stream.write_all(rest).await
            } else {
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{MARKER}",
                    MARKER.len()
                );
                self.stream.write_all(reply.as_bytes()).await
            };
            if wrote.is_err() || (close && path == "/first") {
                return;
            }
        }
    }

    async fn write_in_pieces(&mut self, pieces: &[Vec<u8>]) -> std::io::Result<()> {
        for (n, piece) in pieces.iter().enumerate() {
            if n > 0 {
                // Shapes a read boundary; nothing waits on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.stream.write_all(piece).await?;
        }
        Ok(())
    }

    /// The path of the next request, whose body (by `content-length`) is read and dropped;
    /// `None` once the peer is gone.
    async fn read_request(&mut self) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse().expect("a request's content-length"));
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await.ok()?;
        head.split_whitespace().nth(1).map(str::to_owned)
    }
}

/// What the app got: status, body (`<error>` if it broke off), the `Content-Length` values, and
/// fusebox's reason header.
async fn fetch(app: &reqwest::Client, url: String) -> (u16, String, Vec<String>, Option<String>) {
    let response = match app.get(url).send().await {
        Ok(response) => response,
        Err(error) => return (0, format!("<no response: {error:?}>"), Vec::new(), None),
    };
    let status = response.status().as_u16();
    let header = |name: &str| -> Vec<String> {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ASCII>").to_owned())
            .collect()
    };
    let lengths = header("content-length");
    let reason = header("x-fusebox-reason").pop();
    let body = match response.bytes().await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => "<error>".to_owned(),
    };
    (status, body, lengths, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_shape_frames_its_body_and_never_leaks_into_the_next_request() {
    let fusebox = TestFusebox::start(&[("default", "[retry]\nattempts = 1\n")]).await;
    let app = fusebox.app();
    let mut failures = Vec::new();
    for case in cases() {
        let (addr, seen) = matrix_upstream(case.answer.clone(), case.close, case.leftover).await;
        let (status, body, lengths, reason) = fetch(&app, format!("http://{addr}/first")).await;
        let got_first = match case.first {
            First::Forwarded(want_status, want_body, want_lengths) => {
                status == want_status
                    && body == want_body
                    && lengths == want_lengths
                    && reason.is_none()
            }
            First::BadResponse => status == 502 && reason.as_deref() == Some("bad-response"),
            First::BrokenOff => status == 0 || body == "<error>",
        };
        let second = fetch(&app, format!("http://{addr}/second")).await;
        let got_second = second.0 == 200 && second.1 == MARKER;
        let seen = seen.lock().unwrap().clone();
        let connection_of = |path: &str| seen.iter().find(|(_, p)| p == path).map(|(c, _)| *c);
        let reused = connection_of("/first").is_some()
            && connection_of("/first") == connection_of("/second");
        if !got_first || !got_second || reused != case.reused {
            failures.push(format!(
                "{}: first {status} {body:?} lengths {lengths:?} reason {reason:?} (want {:?}); \
                 second {} {:?}; reused {reused} (want {}); upstream saw {seen:?}",
                case.name, case.first, second.0, second.1, case.reused
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same rules on the pooled path (hyper's client: a request body that streams, here one
/// larger than `max_replay_bytes`): a coding other than `chunked` is refused rather than passed
/// on coded and unlabelled, and a list of one repeated length reaches the app as one value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooled_path_refuses_other_codings_and_forwards_one_length() {
    let policy = "[retry]\nattempts = 1\nmax_replay_bytes = 16\n";
    let fusebox = TestFusebox::start(&[("default", policy)]).await;
    let app = fusebox.app();
    let shapes: [(&[u8], First); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
            First::BadResponse,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff-gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            First::BadResponse,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
            First::Forwarded(200, "hello", &["5"]),
        ),
    ];
    for (answer, want) in shapes {
        let (addr, seen) = matrix_upstream(vec![answer.to_vec()], false, None).await;
        let response = app
            .post(format!("http://{addr}/first"))
            .body(vec![b'x'; 100])
            .send()
            .await
            .expect("fusebox answers");
        let status = response.status().as_u16();
        let lengths: Vec<_> = response
            .headers()
            .get_all("content-length")
            .iter()
            .cloned()
            .collect();
        let reason = response.headers().get("x-fusebox-reason").cloned();
        let body = response.text().await.unwrap_or_default();
        let shown = answer.escape_ascii().to_string();
        match want {
            First::BadResponse => {
                assert_eq!(status, 502, "{shown}: {body}");
                assert_eq!(reason.unwrap(), "bad-response", "{shown}");
            }
            First::Forwarded(want_status, want_body, want_lengths) => {
                assert_eq!((status, body.as_str()), (want_status, want_body), "{shown}");
                assert_eq!(lengths, want_lengths, "{shown}");
            }
            First::BrokenOff => unreachable!(),
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "{shown}: sent once");
    }
}

/// A strict client, Python's `http.client`, gets a body whose upstream sent
/// `Content-Length: 5, 5` as five bytes: it reads the length as one number, so a forwarded list
/// would leave it reading until the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_client_reads_a_repeated_length_as_one() {
    use support::peers::{hermetic, output, peer_script, python};
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello".to_vec();
    let (addr, _) = matrix_upstream(vec![answer], false, None).await;
    let mut command = hermetic(&python());
    command
        .arg(peer_script("http_client_get.py"))
        .arg(fusebox.agent().egress_addr().to_string())
        .arg(format!("http://{addr}/first"));
    assert_eq!(output(command).await.trim(), "200 5 hello");
}

mod differential {
    //! Responses built from the pieces that decide framing, in any combination, through
    //! `fusebox::fuzz::framing::check` (the `response_framing` fuzz target's check): fusebox
    //! refuses, or agrees with the fields' bytes and with hyper's client.

    use proptest::prelude::*;

    const CODINGS: &[&[u8]] = &[
        b"chunked",
        b"Chunked",
        b" chunked ,",
        b"gzip",
        b"gzip, chunked",
        b"chunked, gzip",
        b"chunked, chunked",
        b"\xff-gzip",
        b"chunked\x80",
        b"identity",
        b"",
    ];
    const LENGTHS: &[&[u8]] = &[
        b"5",
        b"0",
        b"5, 5",
        b"5,5,",
        b"6",
        b"+5",
        b"05",
        b"5\xff",
        b" 5",
        b"18446744073709551616",
    ];
    const OPTIONS: &[&[u8]] = &[
        b"close",
        b"keep-alive",
        b"Keep-Alive, x-a",
        b"close\xff",
        b"",
    ];
    const BODIES: &[&[u8]] = &[
        b"hello",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"5;e=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"5\r\nhello\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"",
        b"hel",
    ];
    const TAILS: &[&[u8]] = &[b"", b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"];

    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0..CODINGS.len(), any::<bool>()).prop_map(|(i, upper)| pair(
                upper,
                "transfer-encoding",
                CODINGS[i]
            )),
            (0..LENGTHS.len(), any::<bool>()).prop_map(|(i, upper)| pair(
                upper,
                "content-length",
                LENGTHS[i]
            )),
            (0..OPTIONS.len(), any::<bool>()).prop_map(|(i, upper)| pair(
                upper,
                "connection",
                OPTIONS[i]
            )),
            Just(b"x-other: \xffvalue".to_vec()),
        ]
    }

    fn pair(upper: bool, name: &str, value: &[u8]) -> Vec<u8> {
        let mut field = if upper {
            name.to_ascii_uppercase().into_bytes()
        } else {
            name.as_bytes().to_vec()
        };
        field.extend_from_slice(b": ");
        field.extend_from_slice(value);
        field
    }

    fn response() -> impl Strategy<Value = Vec<u8>> {
        let status = prop_oneof![
            Just("200 OK"),
            Just("204 No Content"),
            Just("304 Not Modified"),
            Just("404 Not Found")
        ];
        (
            any::<bool>(),
            any::<bool>(),
            status,
            prop::collection::vec(field(), 0..4),
            0..BODIES.len(),
            0..TAILS.len(),
        )
            .prop_map(|(http10, interim, status, fields, body, tail)| {
                let mut wire = Vec::new();
                if interim {
                    wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                wire.extend_from_slice(format!("{version} {status}\r\n").as_bytes());
                for field in fields {
                    wire.extend_from_slice(&field);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(BODIES[body]);
                wire.extend_from_slice(TAILS[tail]);
                wire
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn fusebox_refuses_or_agrees_with_the_bytes_and_with_hyper(wire in response()) {
            fusebox::fuzz::framing::check(&wire);
        }

        #[test]
        fn arbitrary_bytes_after_a_status_line_never_change_the_framing(
            rest in prop::collection::vec(any::<u8>(), 0..200)
        ) {
            let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
            wire.extend_from_slice(&rest);
            fusebox::fuzz::framing::check(&wire);
        }
    }
}

/// An upstream that answers the first request on its first connection, then closes that
/// connection as soon as a second request arrives on it (before any answer: the race of a
/// kept-alive connection closed by its server just as a request goes out). Every later
/// connection is answered normally. Logs (connection, path) per request.
async fn closes_after_one_request() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut number = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let mut serving = Serving {
                stream,
                number,
                seen: Arc::clone(&log),
            };
            number += 1;
            tokio::spawn(async move {
                let mut answered = 0;
                while let Some(path) = serving.read_request().await {
                    serving.seen.lock().unwrap().push((serving.number, path));
                    if serving.number == 0 && answered == 1 {
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{MARKER}",
                        MARKER.len()
                    );
                    if serving.stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    answered += 1;
                }
            });
        }
    });
    (addr, seen)
}

/// Stale kept-alive connections (#22, item 9): a request that may be sent twice and meets a
/// kept-alive connection the upstream closed before answering goes again on a new connection,
/// as the same try (no retry spent, no failure counted); a `POST` is never sent twice, and its
/// `502` says that a kept-alive connection was closed before an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_kept_alive_connection_is_replaced_for_idempotent_requests_only() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();
    let (addr, seen) = closes_after_one_request().await;
    assert_eq!(fetch(&app, format!("http://{addr}/a")).await.0, 200);
    let (status, body, _, _) = fetch(&app, format!("http://{addr}/b")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, MARKER),
        "the GET went again on a new connection"
    );
    let log = seen.lock().unwrap().clone();
    assert_eq!(log, [(0, "/a".into()), (0, "/b".into()), (1, "/b".into())]);
    let metrics = fusebox.metrics().await;
    let authority = addr.to_string();
    let count = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("upstream", "default"), ("destination", authority.as_str())];
        labels.extend_from_slice(extra);
        support::metrics::metric(&metrics, name, &labels)
    };
    assert_eq!(
        count("fusebox_attempts_total", &[("result", "success")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        count("fusebox_attempts_total", &[("result", "reset")]),
        0.0,
        "{metrics}"
    );

    let (addr, seen) = closes_after_one_request().await;
    assert_eq!(fetch(&app, format!("http://{addr}/a")).await.0, 200);
    let response = app
        .post(format!("http://{addr}/p"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-fusebox-reason"], "upstream-reset");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("kept-alive connection") && body.contains("not sent again"),
        "{body}"
    );
    let log = seen.lock().unwrap().clone();
    assert_eq!(
        log,
        [(0, "/a".into()), (0, "/p".into())],
        "the POST went out once"
    );
}

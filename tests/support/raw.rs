//! Raw HTTP/1.1 over a socket, for tests that must send what a well-behaved client would not
//! (malformed request lines, huge heads) or check what happens on one connection, and
//! upstreams that answer what a well-behaved server would not ([`raw_upstream`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FakeUpstream;

const PATIENCE: Duration = Duration::from_secs(10);

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The same view of a response that came through reqwest.
    pub async fn from_reqwest(response: reqwest::Response) -> RawResponse {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.bytes().await.expect("response body").to_vec();
        RawResponse {
            status,
            headers,
            body,
        }
    }
}

/// A client connection that keeps unread bytes between responses, so one connection can
/// carry several requests (keep-alive) or switch protocols after a 101.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect to fusebox");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write request");
    }

    /// Reads more bytes into the buffer; false at EOF.
    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("fusebox answers in time")
            .expect("read from fusebox");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    pub async fn take_exact(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed mid-message");
        }
        self.buf.drain(..len).collect()
    }

    pub async fn take_line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return String::from_utf8_lossy(&line[..pos]).into_owned();
            }
            assert!(self.fill().await, "connection closed mid-line");
        }
    }

    /// Reads one response (head and body, by Content-Length or chunked).
    pub async fn read_response(&mut self) -> RawResponse {
        let status_line = self.take_line().await;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line has a colon");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return response;
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            response.body = self.take_exact(len).await;
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.take_line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.take_line().await.is_empty() {}
                    break;
                }
                let chunk = self.take_exact(size).await;
                response.body.extend_from_slice(&chunk);
                self.take_exact(2).await;
            }
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Sends a plain request to `upstream` on this connection and expects its 200.
    pub async fn expect_still_usable(&mut self, upstream: &FakeUpstream) {
        let hits = upstream.hits();
        let request = format!(
            "GET http://{host}/after HTTP/1.1\r\nHost: {host}\r\n\r\n",
            host = upstream.authority()
        );
        self.send(request.as_bytes()).await;
        let response = self.read_response().await;
        assert_eq!(
            response.status, 200,
            "the same connection serves the next request: {response:?}"
        );
        assert_eq!(upstream.hits(), hits + 1);
    }

    /// Whether the server has closed the connection (EOF, or a reset).
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("the connection neither closed nor sent anything"),
        }
    }
}

/// What a [`raw_upstream`] does once it has written its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThenUpstream {
    /// Close the connection.
    Close,
    /// Keep it open and silent until the peer goes away.
    HoldOpen,
}

/// An upstream on loopback that reads a request, answers every one with `answer` (raw bytes,
/// however malformed or incomplete), then does `then`.
pub async fn raw_upstream(answer: Vec<u8>, then: ThenUpstream) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(&answer).await;
                match then {
                    ThenUpstream::Close => {
                        let _ = stream.shutdown().await;
                    }
                    ThenUpstream::HoldOpen => {
                        let _ = stream.read(&mut request).await;
                    }
                }
            });
        }
    });
    addr
}

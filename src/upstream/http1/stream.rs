//! The byte stream under one of fusebox's own upstream connections: TCP, or TLS over TCP
//! (rustls, through tokio-rustls).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is large, and most connections are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether a resting connection can carry a request: the upstream has neither closed it
    /// nor sent it anything to read. No system call unless the socket has become readable.
    ///
    /// Over TLS, records that carry no data (a TLS 1.3 session ticket, sent after the
    /// handshake) are taken in by rustls and leave the connection usable; a `close_notify` or
    /// any data does not.
    pub fn still_open(&mut self) -> bool {
        match self {
            Stream::Plain(tcp) => {
                let mut byte = [0u8; 1];
                matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                // Polled without a task: a read that would wait says "still open"; the next
                // poll, by the request that takes the connection, registers the real waker.
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(&mut **tls)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls_pki_types::{PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::server::TlsStream as ServerTls;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A TLS 1.3 connection on loopback to a rustls server with a self-signed `localhost`
    /// certificate: fusebox's side and the upstream's.
    async fn tls_pair() -> (Stream, ServerTls<TcpStream>) {
        crate::upstream::tls::install_crypto_provider();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(Arc::new(server)).accept(tcp).await
        };
        let (ours, theirs) = tokio::join!(connect, accept);
        (Stream::Tls(Box::new(ours.unwrap())), theirs.unwrap())
    }

    /// One request and answer over the pair, so that the server's session tickets (sent after
    /// the handshake) have arrived and been read past.
    async fn exchange(ours: &mut Stream, theirs: &mut ServerTls<TcpStream>) {
        ours.write_all(b"ping").await.unwrap();
        ours.flush().await.unwrap();
        let mut four = [0u8; 4];
        theirs.read_exact(&mut four).await.unwrap();
        theirs.write_all(b"pong").await.unwrap();
        theirs.flush().await.unwrap();
        ours.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");
    }

    /// Waits until the upstream's last bytes have reached `ours`'s socket.
    async fn arrived(ours: &Stream) {
        match ours {
            Stream::Tls(tls) => tls.get_ref().0.readable().await.unwrap(),
            Stream::Plain(tcp) => tcp.readable().await.unwrap(),
        }
    }

    #[tokio::test]
    async fn a_resting_tls_connection_stays_usable_after_session_tickets() {
        let (mut ours, mut theirs) = tls_pair().await;
        // The server's TLS 1.3 session tickets follow the handshake: on the socket, unread.
        let tickets = tokio::time::timeout(Duration::from_secs(10), arrived(&ours)).await;
        tickets.expect("the server sends session tickets after the handshake");
        assert!(ours.still_open(), "session tickets are not data");
        exchange(&mut ours, &mut theirs).await;
        assert!(ours.still_open(), "still usable after an exchange");
    }

    #[tokio::test]
    async fn a_resting_tls_connection_the_upstream_closed_or_wrote_to_is_not_usable() {
        let (mut closed, mut upstream) = tls_pair().await;
        exchange(&mut closed, &mut upstream).await;
        upstream.shutdown().await.unwrap();
        arrived(&closed).await;
        assert!(!closed.still_open(), "close_notify");

        let (mut written_to, mut chatty) = tls_pair().await;
        exchange(&mut written_to, &mut chatty).await;
        chatty.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        chatty.flush().await.unwrap();
        arrived(&written_to).await;
        assert!(!written_to.still_open(), "unasked-for data");
    }
}

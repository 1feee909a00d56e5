//! A loopback address that black-holes connects: the kernel drops SYNs to a listener whose
//! accept queue is full, so a connect to it hangs until the connector's own timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A loopback address whose accept queue is full, so that the kernel drops new SYNs and a
/// connect to it hangs (Linux: `listen(1)` queues two connections, then drops SYNs).
pub struct SynBlackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

/// Fills the accept queue of a fresh `listen(1)` socket; `None` if this kernel never made a
/// connect hang (then the trick does not work here).
pub async fn syn_blackhole() -> Option<SynBlackhole> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        // A queued connect completes in microseconds; one second without a SYN-ACK means the
        // SYN was dropped.
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(_)) => return None,
            Err(_) => {
                return Some(SynBlackhole {
                    addr,
                    _listener: listener,
                    _queued: queued,
                })
            }
        }
    }
    None
}

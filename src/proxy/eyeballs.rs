//! RFC 8305's connection race for one try ("happy eyeballs", §17): connect to the try's
//! endpoint; if no connection opened within the stagger (250 ms), also connect to another
//! address of the same name, and the first that opens carries the try. A connection that
//! fails early leaves the other to go on alone. Pure of the proxy's types: the second
//! address and its token come from the caller.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::upstream::connect::{connect, ConnectError, ConnectRules};

/// How long the first address has before a second one joins it (RFC 8305 §5).
pub const STAGGER: Duration = Duration::from_millis(250);

/// How a race ended.
pub enum Race<P> {
    /// Only the first address was tried: it answered within the stagger, or there was no other.
    Alone(Result<TcpStream, ConnectError>),
    /// Both raced; `second` is the token the caller gave with the second address.
    Both {
        winner: Winner,
        second: P,
        first_failed: bool,
        second_failed: bool,
    },
}

/// Which connection of a race opened.
pub enum Winner {
    First(TcpStream),
    Second(TcpStream),
    /// Neither: the last error.
    Neither(ConnectError),
}

/// Races connections to `first` and, after `stagger`, to the address `second` gives (with a
/// token for it), each through the egress guard and within `rules.timeout`.
pub async fn race<P>(
    first: SocketAddr,
    second: impl FnOnce() -> Option<(SocketAddr, P)>,
    rules: &ConnectRules,
    stagger: Duration,
) -> Race<P> {
    let first_connect = open(first, rules);
    tokio::pin!(first_connect);
    tokio::select! {
        opened = &mut first_connect => return Race::Alone(opened),
        () = tokio::time::sleep(stagger) => {}
    }
    let Some((addr, token)) = second() else {
        return Race::Alone(first_connect.await);
    };
    let second_connect = open(addr, rules);
    tokio::pin!(second_connect);
    let (winner, first_failed, second_failed) = tokio::select! {
        opened = &mut first_connect => match opened {
            Ok(stream) => (Winner::First(stream), false, false),
            Err(_) => match second_connect.await {
                Ok(stream) => (Winner::Second(stream), true, false),
                Err(error) => (Winner::Neither(error), true, true),
            },
        },
        opened = &mut second_connect => match opened {
            Ok(stream) => (Winner::Second(stream), false, false),
            Err(_) => match first_connect.await {
                Ok(stream) => (Winner::First(stream), false, true),
                Err(error) => (Winner::Neither(error), true, true),
            },
        },
    };
    Race::Both {
        winner,
        second: token,
        first_failed,
        second_failed,
    }
}

async fn open(addr: SocketAddr, rules: &ConnectRules) -> Result<TcpStream, ConnectError> {
    connect(&addr.ip().to_string(), addr.port(), rules).await
}

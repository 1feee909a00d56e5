//! How fusebox reaches an upstream: DNS resolution checked by the egress guard ([`connect`]),
//! TLS origination with rustls ([`tls`]), the pooled hyper client built per policy
//! ([`client`]), and fusebox's own keep-alive connections for HTTP/1.1, cleartext or TLS
//! ([`http1`]); the app's pace on a request body that streams ([`app_pace`]).
//! This is the lowest I/O layer; it knows policies but not requests.

pub mod app_pace;
pub mod body;
pub mod client;
pub mod connect;
pub mod http1;
pub mod recorded;
pub mod resolve;
pub mod tls;

pub use body::{BodyError, UpstreamBody};
pub use client::{Client, RequestBody};
pub use connect::{ConnectError, Connector, SelfAddrs};

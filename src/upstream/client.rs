//! The pooled upstream client of one policy: hyper-util's keep-alive pool over the guarded
//! [`Connector`], with TLS (and HTTP/2 through ALPN) when the request's scheme is `https`.
//! The data path uses it for gRPC, protocol upgrades, request bodies that stream and upstreams
//! that choose HTTP/2 in the TLS handshake; HTTP/1.1 goes on fusebox's own connections
//! ([`super::http1`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use super::app_pace::{AppIdle, Pace};
use super::connect::{ConnectRules, Connector};
use super::recorded::Recording;
use crate::policy::{Endpoint, Policy};

/// A request body sent upstream: the app's body streamed through (and recorded for a
/// replay) under the app's idle limit ([`AppIdle`]), or bytes kept in memory.
#[derive(Debug)]
pub enum RequestBody {
    Streaming(Incoming, AppIdle),
    Recorded(Incoming, Arc<Recording>, AppIdle),
    Full(Option<Bytes>),
    /// A streamed body lent to one send ([`Returnable`]).
    Lent(Returnable),
}

/// A streamed body lent to one send: dropped before it was ever polled (the connection could
/// not be opened, so not a byte of it was read from the app), it goes back to its slot, to be
/// sent to another endpoint in the same try.
#[derive(Debug)]
pub struct Returnable {
    body: Option<Box<RequestBody>>,
    slot: Arc<std::sync::Mutex<Option<RequestBody>>>,
    polled: bool,
}

/// Where a [`Returnable`] body comes back to.
pub type ReturnSlot = Arc<std::sync::Mutex<Option<RequestBody>>>;

impl Returnable {
    /// Lends `body`: the body to send, and the slot it comes back to if it is never polled.
    pub fn lend(body: RequestBody) -> (RequestBody, ReturnSlot) {
        let slot = ReturnSlot::default();
        let lent = Returnable {
            body: Some(Box::new(body)),
            slot: Arc::clone(&slot),
            polled: false,
        };
        (RequestBody::Lent(lent), slot)
    }
}

impl Drop for Returnable {
    fn drop(&mut self) {
        if self.polled {
            return;
        }
        if let Some(body) = self.body.take() {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(*body);
        }
    }
}

/// Why a streamed request body failed: the app's connection broke it off, or it stalled.
pub type RequestBodyError = Box<dyn std::error::Error + Send + Sync>;

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Full(None)
    }

    /// How the app is keeping up with a streamed body; `None` for one kept in memory.
    pub fn pace(&self) -> Option<Pace> {
        match self {
            RequestBody::Streaming(_, idle) | RequestBody::Recorded(_, _, idle) => {
                Some(idle.pace())
            }
            RequestBody::Full(_) => None,
            RequestBody::Lent(lent) => lent.body.as_ref().and_then(|body| body.pace()),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let (body, recording, idle) = match self.get_mut() {
            RequestBody::Full(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))));
            }
            RequestBody::Streaming(body, idle) => (body, None, idle),
            RequestBody::Recorded(body, recording, idle) => (body, Some(&**recording), idle),
            RequestBody::Lent(lent) => {
                lent.polled = true;
                return match lent.body.as_mut() {
                    Some(body) => Pin::new(&mut **body).poll_frame(cx),
                    None => Poll::Ready(None),
                };
            }
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if let Some(recording) = recording {
            record(recording, &polled, body.is_end_stream());
        }
        let frame = match &polled {
            Poll::Pending => None,
            Poll::Ready(Some(Ok(_))) => Some(body.is_end_stream()),
            Poll::Ready(Some(Err(_))) => Some(false),
            Poll::Ready(None) => Some(true),
        };
        if let Err(stalled) = idle.polled(frame, cx) {
            return Poll::Ready(Some(Err(Box::new(stalled))));
        }
        polled.map(|frame| frame.map(|result| result.map_err(RequestBodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(body, _) => body.is_end_stream(),
            RequestBody::Recorded(body, recording, _) => {
                let end = body.is_end_stream();
                if end {
                    recording.complete();
                }
                end
            }
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Lent(lent) => lent.body.as_ref().is_none_or(|body| body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(body, _) | RequestBody::Recorded(body, _, _) => body.size_hint(),
            RequestBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Lent(lent) => lent
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint()),
        }
    }
}

/// Keeps what a recorded body's poll gave, for a replay; `end`: the body says it has ended
/// (HTTP/2 senders stop polling once it does).
fn record(
    recording: &Recording,
    polled: &Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
    end: bool,
) {
    match polled {
        Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
            Some(data) => recording.data(data),
            None => recording.give_up(),
        },
        Poll::Ready(None) => recording.complete(),
        Poll::Ready(Some(Err(_))) | Poll::Pending => {}
    }
    if end {
        recording.complete();
    }
}

/// The pooled client of one policy.
pub type Client = legacy::Client<HttpsConnector<Connector>, RequestBody>;

/// Builds the client for `policy`, with its TLS configuration `config` ([`super::tls::client_config`]);
/// with `pinned`, every connection goes to that endpoint. Fails only when its `sni` is
/// unusable, which the policy loader reports earlier.
/// With `h2_only` (gRPC calls), every connection speaks HTTP/2, with prior knowledge when it is
/// cleartext (h2c), as gRPC servers expect.
pub fn build(
    policy: &Policy,
    config: Arc<rustls::ClientConfig>,
    rules: ConnectRules,
    pinned: Option<&Endpoint>,
    h2_only: bool,
) -> Result<Client, String> {
    let server_name: Arc<dyn ResolveServerName + Send + Sync> = match &policy.sni {
        Some(sni) => {
            let name = ServerName::try_from(sni.clone())
                .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
            Arc::new(FixedServerNameResolver::new(name))
        }
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    let connect = match pinned {
        Some(endpoint) => Connector::pinned(rules, &endpoint.host, endpoint.port),
        None => Connector::new(rules),
    };
    // `http://` URIs go out in cleartext; `https://` ones through TLS with `config`.
    let connector = HttpsConnector::new(connect, config, false, server_name);
    Ok(legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2_only)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(policy.pool_idle_timeout)
        .pool_max_idle_per_host(policy.pool_max_idle)
        .build(connector))
}

//! `CONNECT host:port` tunnels, which is how apps reach `https://` URLs through
//! `HTTPS_PROXY`. fusebox connects first (policy, guard, connect timeout), answers 200 only
//! once the upstream accepted, then splices bytes both ways until either side closes, the
//! tunnel has been silent for `timeouts.tunnel_idle`, or it has lived for `timeouts.tunnel_max`
//! (each counted in `fusebox_stream_timeouts_total` and logged).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::access::Seen;
use super::attempt::LocalAnswer;
use super::body::ResponseBody;
use super::failure::connect_error;
use super::splice::{splice_within, TunnelLimits};
use super::target::connect_target;
use super::{intercept, ProxyContext};
use crate::outcome::{Outcome, Reason};
use crate::registry::Destination;
use crate::upstream::connect::{self, ConnectRules};

pub async fn handle(ctx: &Arc<ProxyContext>, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let seen = Seen::of(&req);
    let snapshot = ctx.registry.load();
    let target = match connect_target(&req) {
        Ok(target) => target,
        Err(message) => {
            return super::forward::reject_unrouted(ctx, &seen, Reason::BadRequest, &message)
        }
    };
    let upstream = snapshot.lookup(&target.host, target.port);
    // An opaque tunnel has no endpoint set (§17): it goes to the policy's next `endpoints`
    // entry, round robin, under the policy's one destination; else to the requested host.
    let (host, port) = match upstream.next_endpoint() {
        Some((_, endpoint)) => (endpoint.host.as_str(), endpoint.port),
        None => (target.host.as_ref(), target.port),
    };
    let destination = upstream
        .endpoints_destination()
        .unwrap_or_else(|| upstream.destination(host, port));
    let refuse = |answer: LocalAnswer, tries| {
        super::forward::finish_answer(upstream, &destination, &seen, &answer, tries)
    };
    if !upstream.policy.allow {
        let detail = format!(
            "{} is not allowed by policy {}",
            destination.authority, upstream.policy.name
        );
        return refuse(LocalAnswer::local(Reason::Denied, detail), 0);
    }
    if super::headers::has_looped(req.headers(), &ctx.via_token) {
        let detail = "request came back to this fusebox (Via)".to_owned();
        return refuse(LocalAnswer::local(Reason::Loop, detail), 0);
    }
    if let Some(ca) = intercept::ca_for(ctx, upstream) {
        let authority = super::forward::target_text(&target);
        return intercept::accept(ctx, ca, &authority, &mut req, &destination)
            .unwrap_or_else(|answer| refuse(answer, 0));
    }
    let rules = upstream.connect_rules(ctx.registry.self_addrs());
    let stream = match open(&destination, host, port, &rules).await {
        Ok(stream) => stream,
        Err((answer, tries)) => return refuse(answer, tries),
    };
    let limits = TunnelLimits::of(&upstream.policy.timeouts);
    spawn_splice(ctx, &mut req, stream, Arc::clone(&destination), limits);
    let response = Response::new(ResponseBody::empty());
    seen.finish(&destination, response.status(), Outcome::Ok, 1, None);
    response
}

/// Opens the tunnel's upstream connection through the gate, the limiter and the breaker, which
/// guard the tunnel's set-up (what flows through an open tunnel is opaque and is not judged).
/// On failure: the local answer and the number of tries made (0 or 1).
async fn open(
    destination: &Destination,
    host: &str,
    port: u16,
    rules: &ConnectRules,
) -> Result<TcpStream, (LocalAnswer, u32)> {
    let Some(_in_flight) = destination.enter() else {
        let detail = super::forward::overflow_detail(destination);
        return Err((LocalAnswer::local(Reason::Overflow, detail), 0));
    };
    let refused = |refusal| (LocalAnswer::refused(refusal, &destination.authority), 0);
    let permit = destination.begin(None).map_err(refused)?;
    let permit = permit.fleet_admit().await.map_err(refused)?;
    // An app that gives up while fusebox connects drops this future, and with it the unspent
    // permit: the try is recorded as abandoned.
    match connect::connect(host, port, rules).await {
        Ok(stream) => {
            permit.connected();
            Ok(stream)
        }
        Err(error) => {
            let error = connect_error(&error);
            permit.failed(&error);
            let tries = u32::from(error.metric().is_some());
            Err((LocalAnswer::failed(error), tries))
        }
    }
}

/// Splices the app's upgraded connection and `stream` in a task of the agent's, once hyper
/// has sent the 200.
fn spawn_splice(
    ctx: &ProxyContext,
    req: &mut Request<Incoming>,
    stream: TcpStream,
    destination: Arc<Destination>,
    limits: TunnelLimits,
) {
    let app = hyper::upgrade::on(req);
    let hard_stop = ctx.hard_stop.clone();
    ctx.tasks.spawn(async move {
        match app.await {
            Ok(app) => splice(app, stream, &destination, limits, &hard_stop).await,
            Err(error) => debug!(%error, "CONNECT upgrade failed"),
        }
    });
}

/// Copies bytes both ways until either side closes, the tunnel has been silent both ways for
/// `timeouts.tunnel_idle`, it has lived for `timeouts.tunnel_max`, or the drain timeout is over.
async fn splice(
    app: hyper::upgrade::Upgraded,
    upstream: TcpStream,
    destination: &Destination,
    limits: TunnelLimits,
    hard_stop: &CancellationToken,
) {
    destination.metrics.tunnels_active.increment(1.0);
    splice_within(TokioIo::new(app), upstream, destination, limits, hard_stop).await;
    destination.metrics.tunnels_active.decrement(1.0);
}

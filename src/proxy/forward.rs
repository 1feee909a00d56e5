//! L7 forwarding of one HTTP request: absolute-form or origin-form on the egress listener, or
//! anything arriving on a policy's route listener.
//!
//! The request is matched to a policy, checked, rewritten for the upstream (hop-by-hop headers
//! out, `Via` in, TLS origination, endpoints, `host_rewrite`), sent through the policy's pooled
//! client by the attempt loop ([`super::attempt`]), and the response head is handed back with
//! its body streaming. Every way this can go wrong ends in one local reply and one metric
//! outcome.

use std::sync::Arc;

use http::request::Parts;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::access::Seen;
use super::attempt::{self, LocalAnswer, Path, Plan};
use super::body::{GrpcEnd, ResponseBody};
use super::headers;
use super::reply::{grpc_local_reply, local_reply_with_retry_after};
use super::splice::{splice_within, TunnelLimits};
use super::target::{http_target, Target};
use super::ProxyContext;
use crate::outcome::{Outcome, Reason};
use crate::pipeline::grpc;
use crate::registry::{Destination, Pending, Snapshot, Upstream};
use crate::upstream::UpstreamBody;

/// Handles one request. `route` is the policy of the route listener it arrived on, if any.
pub async fn handle(
    ctx: &ProxyContext,
    route: Option<&str>,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut seen = Seen::of(&req);
    let grpc = seen.grpc;
    let snapshot = ctx.registry.load();
    let routed = match route_request(ctx, &snapshot, route, &req) {
        Ok(routed) => routed,
        Err(early) => return early.reply(&seen),
    };
    let Routed {
        upstream,
        destination,
        uri,
    } = routed;
    let upgrading = headers::is_upgrade(req.headers());
    let app_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let plan = Plan::choose(&upstream.policy, &parts);
    seen.route = plan.route;
    rewrite_for_upstream(ctx, upstream, &mut parts, uri, upgrading, grpc);
    let path = path_for(&destination, &parts.uri, grpc || upgrading);
    let Some(in_flight) = destination.enter() else {
        let detail = overflow_detail(&destination);
        return finish_local(upstream, &destination, &seen, Reason::Overflow, &detail);
    };
    let jitter = ctx.registry.jitter();
    let mut tries = 0;
    let request = (parts, body);
    let ran = attempt::run(
        upstream,
        path,
        &destination,
        request,
        plan,
        jitter,
        &mut tries,
    )
    .await;
    let (mut response, pending, pace) = match ran {
        Ok(answer) => {
            seen.copy = answer.copy;
            (answer.response, answer.pending, answer.pace)
        }
        Err(answer) => {
            drop(in_flight);
            return finish_answer(upstream, &destination, &seen, &answer, tries);
        }
    };
    let status = response.status();
    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    if let Some(app_upgrade) = app_upgrade.filter(|_| switching) {
        let limits = TunnelLimits::of(&upstream.policy.timeouts);
        spawn_upgrade(
            ctx,
            app_upgrade,
            &mut response,
            Arc::clone(&destination),
            limits,
        );
    }
    // `Via` names the protocol the response came with: `2` from an HTTP/2 upstream.
    let via = ctx.via(response.version());
    // An HTTP/1.1 app connection gets HTTP/1.1 whatever the upstream spoke (1.0, h2); an h2
    // app connection (interception, §13) ignores the version.
    *response.version_mut() = http::Version::HTTP_11;
    headers::remove_hop_by_hop(response.headers_mut(), switching && upgrading);
    headers::add_via(response.headers_mut(), via);
    let grpc_end = finish_upstream(upstream, &destination, seen, &response, pending, tries)
        .map(|end| end.with_pace(pace));
    let idle = plan.timeouts.idle;
    let taken = (destination, plan.route);
    response.map(|body| ResponseBody::upstream(body, in_flight, taken, idle, grpc_end))
}

/// HTTP/1.1 goes on fusebox's own connections; gRPC (HTTP/2), protocol upgrades (`pooled`)
/// and upstreams that chose HTTP/2 in their TLS handshake through the pooled client.
fn path_for(destination: &Destination, uri: &Uri, pooled: bool) -> Path {
    let own_http1 = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP => true,
        Some(scheme) if *scheme == Scheme::HTTPS => !destination.speaks_http2(),
        _ => false,
    };
    if own_http1 && !pooled {
        Path::Http1
    } else {
        Path::Pooled
    }
}

/// Records the upstream's answer (metrics, access log) now; for a gRPC stream, whose status is
/// in its trailers, returns what its body records when they pass.
fn finish_upstream(
    upstream: &Upstream,
    destination: &Destination,
    seen: Seen,
    response: &Response<UpstreamBody>,
    pending: Option<Pending>,
    tries: u32,
) -> Option<Box<GrpcEnd>> {
    if let Some(pending) = pending {
        return Some(GrpcEnd::new(pending, seen, tries));
    }
    let status = response.status();
    let trailers_only = seen.grpc && status == StatusCode::OK;
    match trailers_only
        .then(|| grpc::status(response.headers()))
        .flatten()
    {
        Some(code) => {
            let failed = upstream.policy.breaker.grpc_failure_codes.contains(&code);
            seen.finish_grpc(destination, code, Outcome::of_grpc(failed), tries, None);
        }
        None => {
            let outcome = Outcome::of_upstream_status(status);
            seen.finish(destination, status, outcome, tries, None);
        }
    }
    None
}

/// Where a request goes once its policy allows it: the policy, the destination, the pooled
/// client and the upstream URI.
struct Routed<'s> {
    upstream: &'s Upstream,
    destination: Arc<Destination>,
    uri: Uri,
}

/// A local answer before any try, and the destination it is counted under.
struct Early<'s> {
    upstream: &'s Upstream,
    destination: Arc<Destination>,
    reason: Reason,
    detail: String,
}

impl Early<'_> {
    fn reply(&self, seen: &Seen) -> Response<ResponseBody> {
        finish_local(
            self.upstream,
            &self.destination,
            seen,
            self.reason,
            &self.detail,
        )
    }
}

/// Matches the request to its policy and destination: the route listener's policy, or the
/// request target's on the egress listener; then the policy's `allow` and the loop check.
fn route_request<'s>(
    ctx: &ProxyContext,
    snapshot: &'s Snapshot,
    route: Option<&str>,
    req: &Request<Incoming>,
) -> Result<Routed<'s>, Early<'s>> {
    let routed = match route {
        Some(name) => route_listener_request(snapshot, name, req.uri())?,
        None => egress_request(snapshot, req)?,
    };
    let early = |reason, detail: &str| Early {
        upstream: routed.upstream,
        destination: Arc::clone(&routed.destination),
        reason,
        detail: detail.to_owned(),
    };
    if headers::has_looped(req.headers(), &ctx.via_token) {
        return Err(early(
            Reason::Loop,
            "request came back to this fusebox (Via)",
        ));
    }
    let Some(uri) = routed.uri else {
        return Err(early(Reason::BadRequest, "cannot build the upstream URI"));
    };
    Ok(Routed {
        upstream: routed.upstream,
        destination: routed.destination,
        uri,
    })
}

/// [`Routed`] before its URI is known to be valid.
struct Matched<'s> {
    upstream: &'s Upstream,
    destination: Arc<Destination>,
    uri: Option<Uri>,
}

/// A request on policy `name`'s route listener goes to the policy's endpoints.
fn route_listener_request<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    original: &Uri,
) -> Result<Matched<'s>, Early<'s>> {
    let unroutable = |detail: String| {
        let upstream = snapshot.default();
        Early {
            upstream,
            destination: upstream.other_destination(),
            reason: Reason::ConnectFailed,
            detail,
        }
    };
    let Some(upstream) = snapshot.by_name(name) else {
        // The policy was removed by a reload while this connection stayed open.
        return Err(unroutable(format!(
            "route listener's policy {name} no longer exists"
        )));
    };
    let Some(destination) = upstream.endpoints_destination() else {
        let upstream_unroutable = Early {
            upstream,
            destination: upstream.other_destination(),
            reason: Reason::ConnectFailed,
            detail: "route policy has no endpoints".to_owned(),
        };
        return Err(upstream_unroutable);
    };
    let scheme = if upstream.policy.tls {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let uri = upstream_uri(scheme, pinned_authority(upstream, &destination), original);
    Ok(Matched {
        upstream,
        destination,
        uri,
    })
}

/// A request on the egress listener goes where its target says, under the matching policy.
fn egress_request<'s>(
    snapshot: &'s Snapshot,
    req: &Request<Incoming>,
) -> Result<Matched<'s>, Early<'s>> {
    let target = http_target(req).map_err(|message| {
        let upstream = snapshot.default();
        Early {
            upstream,
            destination: upstream.other_destination(),
            reason: Reason::BadRequest,
            detail: message,
        }
    })?;
    let upstream = snapshot.lookup(&target.host, target.port);
    let (destination, scheme, pinned) = egress_destination(upstream, &target);
    let authority = if pinned {
        pinned_authority(upstream, &destination)
    } else {
        destination.uri_authority.as_ref()
    };
    let uri = upstream_uri(scheme, authority, req.uri());
    if !upstream.policy.allow {
        let detail = format!(
            "{} is not allowed by policy {}",
            target_text(&target),
            upstream.policy.name
        );
        return Err(Early {
            upstream,
            destination,
            reason: Reason::Denied,
            detail,
        });
    }
    Ok(Matched {
        upstream,
        destination,
        uri,
    })
}

/// The request as the upstream gets it: `Host` from the target (or `host_rewrite`), hop-by-hop
/// headers out, `Via` in, the upstream URI, HTTP/1.1 (the pool may still speak h2).
fn rewrite_for_upstream(
    ctx: &ProxyContext,
    upstream: &Upstream,
    parts: &mut Parts,
    uri: Uri,
    upgrading: bool,
    grpc: bool,
) {
    // RFC 9112 §3.2.2: with an absolute-form target, a proxy ignores any received Host and
    // sends the target's authority instead (`insert` replaces every received value).
    if let Some(authority) = parts.uri.authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, value);
        }
    }
    if let Some(rewrite) = &upstream.policy.host_rewrite {
        if let Ok(value) = HeaderValue::from_str(rewrite) {
            parts.headers.insert(header::HOST, value);
        }
    }
    headers::remove_hop_by_hop(&mut parts.headers, upgrading);
    if grpc {
        // The one `TE` value HTTP/2 allows, which gRPC requires end to end.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // The protocol the app's request came with: `2` on an intercepted HTTP/2 connection.
    headers::add_via(&mut parts.headers, ctx.via(parts.version));
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
}

/// Splices a protocol upgrade (WebSocket) the upstream accepted, in a task of the agent's.
fn spawn_upgrade(
    ctx: &ProxyContext,
    app_upgrade: hyper::upgrade::OnUpgrade,
    response: &mut Response<UpstreamBody>,
    destination: Arc<Destination>,
    limits: TunnelLimits,
) {
    let upstream_upgrade = hyper::upgrade::on(response);
    let hard_stop = ctx.hard_stop.clone();
    ctx.tasks.spawn(async move {
        let (Ok(app), Ok(upstream)) = tokio::join!(app_upgrade, upstream_upgrade) else {
            debug!("protocol upgrade was not completed");
            return;
        };
        let (app, upstream) = (TokioIo::new(app), TokioIo::new(upstream));
        splice_within(app, upstream, &destination, limits, &hard_stop).await;
    });
}

/// Where an egress-listener request goes: the policy's endpoints (`true`: the URI carries
/// the endpoint's authority or `host_rewrite`) or the requested host, over TLS when the policy
/// originates it or the app asked for `https://`.
fn egress_destination(
    upstream: &Upstream,
    target: &Target<'_>,
) -> (Arc<Destination>, Scheme, bool) {
    let tls = upstream.policy.tls || target.https;
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    if let Some(destination) = upstream.endpoints_destination() {
        return (destination, scheme, true);
    }
    // `tls = true` turns `http://host/` into `https://host:443/`; an explicit port is kept.
    let port = if tls && !target.explicit_port {
        443
    } else {
        target.port
    };
    (upstream.destination(&target.host, port), scheme, false)
}

/// The URI authority of a request to a pinned endpoint: `host_rewrite` when set, so that the
/// HTTP/2 `:authority` and the TLS server name agree with the `Host` header; the endpoint
/// otherwise. The connection goes to the endpoint either way.
fn pinned_authority<'a>(
    upstream: &'a Upstream,
    destination: &'a Destination,
) -> Option<&'a Authority> {
    upstream
        .rewrite_authority
        .as_ref()
        .or(destination.uri_authority.as_ref())
}

/// The request's path and query on the upstream's scheme and authority (parsed once per
/// destination, so this copies reference counts, not text).
fn upstream_uri(scheme: Scheme, authority: Option<&Authority>, original: &Uri) -> Option<Uri> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority?.clone());
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).ok()
}

/// Why a request found the destination's gate full.
pub(super) fn overflow_detail(destination: &Destination) -> String {
    let gate = &destination.gate;
    let limit = gate.max_in_flight().unwrap_or(usize::MAX);
    let source = if gate.is_adaptive() {
        "the adaptive concurrency limit, now"
    } else {
        "concurrency.max_in_flight"
    };
    format!(
        "{} already has {} requests in flight ({source} {limit})",
        destination.authority,
        gate.in_flight()
    )
}

/// `host:port` of a target, with brackets around an IPv6 host.
pub(super) fn target_text(target: &Target<'_>) -> String {
    if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    }
}

/// Answers a request that never reached policy matching (it is counted under the default
/// policy, `destination="_other"`).
pub fn reject_unrouted(
    ctx: &ProxyContext,
    seen: &Seen,
    reason: Reason,
    detail: &str,
) -> Response<ResponseBody> {
    let snapshot = ctx.registry.load();
    let upstream = snapshot.default();
    finish_local(
        upstream,
        &upstream.other_destination(),
        seen,
        reason,
        detail,
    )
}

/// Answers with what the attempt loop (or a tunnel's set-up) decided, and records the request.
pub(super) fn finish_answer(
    upstream: &Upstream,
    destination: &Destination,
    seen: &Seen,
    answer: &LocalAnswer,
    tries: u32,
) -> Response<ResponseBody> {
    debug!(detail = %answer.detail, "local reply");
    let (reason, policy) = (answer.reason, &upstream.policy.name);
    if seen.grpc {
        let reply = grpc_local_reply(reason, policy, &answer.detail, answer.retry_after);
        let code = reason.grpc_status();
        let cause = Some((reason, answer.detail.as_str()));
        seen.finish_grpc(destination, code, reason.outcome(), tries, cause);
        return reply;
    }
    let reply = local_reply_with_retry_after(reason, policy, &answer.detail, answer.retry_after);
    let cause = Some((reason, answer.detail.as_str()));
    seen.finish(destination, reply.status(), reason.outcome(), tries, cause);
    reply
}

/// Answers locally before any upstream try, and records the request.
fn finish_local(
    upstream: &Upstream,
    destination: &Destination,
    seen: &Seen,
    reason: Reason,
    detail: &str,
) -> Response<ResponseBody> {
    let answer = LocalAnswer::local(reason, detail.to_owned());
    finish_answer(upstream, destination, seen, &answer, 0)
}

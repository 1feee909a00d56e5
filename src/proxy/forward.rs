//! L7 forwarding of one HTTP request: absolute-form or origin-form on the egress listener, or
//! anything arriving on a policy's route listener.
//!
//! The request is matched to a policy, checked, rewritten for the upstream (hop-by-hop headers
//! out, `Via` in, TLS origination, endpoints, `host_rewrite`), sent through the policy's pooled
//! client by the attempt loop ([`super::attempt`]), and the response head is handed back with
//! its body streaming. Every way this can go wrong ends in one local reply and one metric
//! outcome.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use tracing::debug;

use super::access::Seen;
use super::attempt::{self, LocalAnswer};
use super::body::ResponseBody;
use super::headers;
use super::reply::{local_reply, local_reply_with_retry_after};
use super::target::{http_target, Target};
use super::ProxyContext;
use crate::outcome::{Outcome, Reason};
use crate::registry::{Destination, Upstream};
use crate::upstream::Client;

/// Handles one request. `route` is the policy of the route listener it arrived on, if any.
pub async fn handle(
    ctx: &ProxyContext,
    route: Option<&str>,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let seen = Seen::of(&req);
    let snapshot = ctx.registry.load();

    let (upstream, destination, client, uri) = match route {
        Some(name) => {
            let Some(upstream) = snapshot.by_name(name) else {
                // The policy was removed by a reload while this connection stayed open.
                let upstream = snapshot.default();
                let detail = format!("route listener's policy {name} no longer exists");
                return finish_local(
                    upstream,
                    &upstream.other_destination(),
                    &seen,
                    Reason::ConnectFailed,
                    &detail,
                );
            };
            let Some((endpoint, client)) = upstream.next_endpoint() else {
                let detail = "route policy has no endpoints";
                return finish_local(
                    upstream,
                    &upstream.other_destination(),
                    &seen,
                    Reason::ConnectFailed,
                    detail,
                );
            };
            let destination = upstream.destination(&endpoint.host, endpoint.port);
            let scheme = if upstream.policy.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            let uri = upstream_uri(scheme, pinned_authority(upstream, &destination), req.uri());
            (upstream, destination, client, uri)
        }
        None => {
            let target = match http_target(&req) {
                Ok(target) => target,
                Err(message) => {
                    return reject_unrouted(ctx, &seen, Reason::BadRequest, &message);
                }
            };
            let upstream = snapshot.lookup(&target.host, target.port);
            let (destination, scheme, client, pinned) = egress_destination(upstream, &target);
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
                return finish_local(upstream, &destination, &seen, Reason::Denied, &detail);
            }
            (upstream, destination, client, uri)
        }
    };

    if headers::has_looped(req.headers(), &ctx.via_token) {
        let detail = "request came back to this fusebox (Via)";
        return finish_local(upstream, &destination, &seen, Reason::Loop, detail);
    }
    let Some(uri) = uri else {
        let detail = "cannot build the upstream URI";
        return finish_local(upstream, &destination, &seen, Reason::BadRequest, detail);
    };

    let upgrading = headers::is_upgrade(req.headers());
    let app_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
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
    headers::add_via(&mut parts.headers, &ctx.via);
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let Some(in_flight) = destination.enter() else {
        let detail = format!(
            "{} already has {} requests in flight (concurrency.max_in_flight)",
            destination.authority,
            destination.gate.in_flight()
        );
        return finish_local(upstream, &destination, &seen, Reason::Overflow, &detail);
    };
    let jitter = ctx.registry.jitter();
    let mut tries = 0;
    let ran = attempt::run(
        upstream,
        client,
        &destination,
        parts,
        body,
        jitter,
        &mut tries,
    )
    .await;
    let mut response = match ran {
        Ok(response) => response,
        Err(answer) => {
            drop(in_flight);
            return finish_answer(upstream, &destination, &seen, &answer, tries);
        }
    };
    let status = response.status();

    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(app_upgrade) = app_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let hard_stop = ctx.hard_stop.clone();
            ctx.tasks.spawn(async move {
                tokio::select! {
                    () = splice_upgrade(app_upgrade, upstream_upgrade) => {}
                    () = hard_stop.cancelled() => {}
                }
            });
        }
    }
    // hyper speaks HTTP/1.1 to the app whatever the upstream spoke (1.0, h2).
    *response.version_mut() = http::Version::HTTP_11;
    headers::remove_hop_by_hop(response.headers_mut(), switching && upgrading);
    headers::add_via(response.headers_mut(), &ctx.via);
    seen.finish(
        &destination,
        status,
        Outcome::of_upstream_status(status),
        tries,
        None,
    );
    let idle = upstream.policy.timeouts.idle;
    response.map(|body| ResponseBody::upstream(body, in_flight, destination, idle))
}

/// Where an egress-listener request goes: a policy endpoint (with the client pinned to it:
/// `true`) or the requested host, over TLS when the policy originates it or the app asked for
/// `https://`.
fn egress_destination<'u>(
    upstream: &'u Upstream,
    target: &Target<'_>,
) -> (Arc<Destination>, Scheme, &'u Client, bool) {
    let tls = upstream.policy.tls || target.https;
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    if let Some((endpoint, client)) = upstream.next_endpoint() {
        let destination = upstream.destination(&endpoint.host, endpoint.port);
        return (destination, scheme, client, true);
    }
    // `tls = true` turns `http://host/` into `https://host:443/`; an explicit port is kept.
    let port = if tls && !target.explicit_port {
        443
    } else {
        target.port
    };
    (
        upstream.destination(&target.host, port),
        scheme,
        &upstream.client,
        false,
    )
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
    Uri::builder()
        .scheme(scheme)
        .authority(authority?.clone())
        .path_and_query(path)
        .build()
        .ok()
}

fn target_text(target: &Target<'_>) -> String {
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

/// Answers with what the attempt loop decided, and records the request.
fn finish_answer(
    upstream: &Upstream,
    destination: &Destination,
    seen: &Seen,
    answer: &LocalAnswer,
    tries: u32,
) -> Response<ResponseBody> {
    debug!(detail = %answer.detail, "local reply");
    let reply = local_reply_with_retry_after(
        answer.reason,
        &upstream.policy.name,
        &answer.detail,
        answer.retry_after,
    );
    seen.finish(
        destination,
        reply.status(),
        answer.reason.outcome(),
        tries,
        Some(answer.reason),
    );
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
    debug!(detail, "local reply");
    let reply = local_reply(reason, &upstream.policy.name, detail);
    seen.finish(
        destination,
        reply.status(),
        reason.outcome(),
        0,
        Some(reason),
    );
    reply
}

async fn splice_upgrade(app: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(app), Ok(upstream)) = tokio::join!(app, upstream) else {
        debug!("protocol upgrade was not completed");
        return;
    };
    let mut app = hyper_util::rt::TokioIo::new(app);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut app, &mut upstream).await;
}

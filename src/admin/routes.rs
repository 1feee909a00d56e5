//! The admin API's routes (docs/ARCHITECTURE.md §6, a contract) and their handlers.
//!
//! | path                          | methods   | what                                           |
//! |-------------------------------|-----------|------------------------------------------------|
//! | `/`, `/live.js`, `/live.css`  | GET, HEAD | the live view's page                           |
//! | `/events`                     | GET, HEAD | the live view's server-sent events             |
//! | `/healthz`                    | GET, HEAD | process alive                                  |
//! | `/readyz`                     | GET, HEAD | listeners bound, config loaded                 |
//! | `/metrics`                    | GET, HEAD | Prometheus text                                |
//! | `/upstreams`                  | GET, HEAD | every destination's breaker                    |
//! | `/upstreams/{upstream}`       | GET, HEAD | the same, one policy                           |
//! | `/upstreams/{upstream}/breaker` | POST    | `?action=force-open\|force-closed\|reset[&destination=host:port][&route=name]` |
//! | `/reload`                     | POST      | reload the policies directory                  |
//! | `/config`                     | GET, HEAD | the effective policies                         |
//!
//! Every error is JSON `{"error": "..."}`: 404 for unknown paths, upstreams and destinations,
//! 405 (with `allow`) for a wrong method on a known path, 400 for bad parameters, 401/403 for
//! POST without the right credentials (see [`super::auth`]).

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::auth::{self, Decision};
use super::json::{self, Clock, DestinationView};
use super::{events, page, AdminBody, AdminState};
use crate::policy::{BreakerMode, Policy};
use crate::registry::{split_authority, BreakerCommand, Destination, Snapshot, Upstream};

type AdminResponse = Response<AdminBody>;

/// What the handlers know about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    /// The admin listener is bound to a loopback address.
    pub loopback: bool,
    /// Who sent it (for the audit log of POSTs).
    pub peer: SocketAddr,
}

/// A known admin path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// A file of the live view's page: its body and content type.
    Page(&'static str, &'static str),
    Events,
    Healthz,
    Readyz,
    Metrics,
    Upstreams,
    Upstream(String),
    Breaker(String),
    Reload,
    Config,
}

const READ: &str = "GET, HEAD";
const WRITE: &str = "POST";

impl Route {
    /// The route of a path; a trailing slash is ignored. `None`: 404.
    fn parse(path: &str) -> Option<Route> {
        let path = match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => path,
        };
        if let Some((body, content_type)) = page::asset(path) {
            return Some(Route::Page(body, content_type));
        }
        match path {
            "/events" => return Some(Route::Events),
            "/healthz" => return Some(Route::Healthz),
            "/readyz" => return Some(Route::Readyz),
            "/metrics" => return Some(Route::Metrics),
            "/upstreams" => return Some(Route::Upstreams),
            "/reload" => return Some(Route::Reload),
            "/config" => return Some(Route::Config),
            _ => {}
        }
        let rest = path.strip_prefix("/upstreams/")?;
        let (name, breaker) = match rest.split_once('/') {
            Some((name, "breaker")) => (name, true),
            Some(_) => return None,
            None => (rest, false),
        };
        let name = percent_decode(name)?;
        if name.is_empty() {
            return None;
        }
        Some(if breaker {
            Route::Breaker(name)
        } else {
            Route::Upstream(name)
        })
    }

    /// The methods allowed, as the `allow` header lists them.
    fn allow(&self) -> &'static str {
        match self {
            Route::Breaker(_) | Route::Reload => WRITE,
            _ => READ,
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self.allow() {
            WRITE => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

impl Route {
    /// The route of `method path`, or the 404 or 405 (with `allow`) to answer instead.
    fn of(path: &str, method: &Method) -> Result<Route, Box<AdminResponse>> {
        let Some(route) = Route::parse(path) else {
            return Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no admin endpoint at {path} (try /, /upstreams, /config, /metrics, \
                     /healthz, /readyz)"
                ),
            )));
        };
        if !route.allows(method) {
            let mut response = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}; use {}", route.allow()),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(route.allow()));
            return Err(Box::new(response));
        }
        Ok(route)
    }
}

/// Answers one admin request. The body is never read: every parameter is in the query.
pub(super) async fn handle<B>(
    state: &AdminState,
    conn: Conn,
    req: Request<B>,
    shutdown: CancellationToken,
) -> AdminResponse {
    let path = req.uri().path();
    if !auth::serves_host(req.headers().get(header::HOST), &state.admin_hosts) {
        warn!(peer = %conn.peer, path, "admin request for a foreign Host refused");
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this admin serves only loopback names, IP addresses and the names given with \
             --admin-host; a foreign Host is what DNS rebinding sends",
        );
    }
    let route = match Route::of(path, req.method()) {
        Ok(route) => route,
        Err(refusal) => return *refusal,
    };
    if req.method() == Method::POST {
        if let Some(refusal) = check_auth(state, conn, req.headers()) {
            warn!(peer = %conn.peer, path, status = refusal.status().as_u16(), "admin request refused");
            return refusal;
        }
    }
    match route {
        Route::Page(body, content_type) => page::response(body, content_type),
        Route::Events => events(state, req.method() == Method::HEAD, shutdown),
        Route::Healthz => text(StatusCode::OK, "ok\n".into(), TEXT),
        Route::Readyz if state.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n".into(), TEXT)
        }
        Route::Readyz => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into(), TEXT),
        Route::Metrics => text(
            StatusCode::OK,
            state.registry.render_metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Route::Upstreams => upstreams(state, None),
        Route::Upstream(name) => upstreams(state, Some(&name)),
        Route::Breaker(name) => breaker(state, conn, &name, req.uri().query()),
        Route::Reload => reload(state, conn).await,
        Route::Config => config(state),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn check_auth(state: &AdminState, conn: Conn, headers: &http::HeaderMap) -> Option<AdminResponse> {
    if let Some(why) = auth::cross_site(headers) {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            &format!(
                "refused a cross-site browser request ({why}): the admin API takes commands \
                 from operators' tools, never from web pages"
            ),
        ));
    }
    match auth::authorize(
        conn.loopback,
        state.token(),
        headers.get(header::AUTHORIZATION),
    ) {
        Decision::Allowed => None,
        Decision::Unauthorized => {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs `Authorization: Bearer <token>` with the token given to \
                 `fusebox run --admin-token-file` / FUSEBOX_ADMIN_TOKEN_FILE (or --admin-token / \
                 FUSEBOX_ADMIN_TOKEN)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fusebox-admin\""),
            );
            Some(response)
        }
        Decision::Forbidden => Some(json_error(
            StatusCode::FORBIDDEN,
            "the admin API listens on a non-loopback address and no admin token is configured, \
             so its mutating endpoints are disabled; start fusebox with --admin-token-file PATH \
             (or FUSEBOX_ADMIN_TOKEN_FILE, --admin-token, FUSEBOX_ADMIN_TOKEN) and send \
             `Authorization: Bearer TOKEN`, or bind --admin to 127.0.0.1",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// GET /events

fn events(state: &AdminState, head: bool, shutdown: CancellationToken) -> AdminResponse {
    let Some(watcher) = state.watchers.join() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} live views are open already, the most this admin serves at once; close one",
                events::MAX_WATCHERS
            ),
        );
    };
    let body = if head {
        super::full(Bytes::new())
    } else {
        let frames = state.feed.subscribe(&state.registry);
        events::stream(frames, watcher, shutdown).boxed_unsync()
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---------------------------------------------------------------------------------------------
// GET /upstreams, GET /upstreams/{upstream}

fn upstreams(state: &AdminState, name: Option<&str>) -> AdminResponse {
    let snapshot = state.registry.load();
    let clock = Clock::now();
    let mut views = Vec::new();
    match name {
        None => {
            for upstream in snapshot.upstreams() {
                views.extend(views_of(upstream, &upstream.destinations(), clock));
            }
        }
        Some(name) => {
            let Some(upstream) = snapshot.by_name(name) else {
                return unknown_upstream(&snapshot, name);
            };
            views.extend(views_of(upstream, &upstream.destinations(), clock));
        }
    }
    json::sort(&mut views);
    json_response(StatusCode::OK, &views)
}

fn views_of<'a>(
    upstream: &'a Upstream,
    destinations: &'a [Arc<Destination>],
    clock: Clock,
) -> impl Iterator<Item = DestinationView> + 'a {
    destinations
        .iter()
        .map(move |d| DestinationView::of(upstream, d, clock))
}

fn unknown_upstream(snapshot: &Snapshot, name: &str) -> AdminResponse {
    let mut names: Vec<&str> = snapshot
        .upstreams()
        .map(|u| u.policy.name.as_str())
        .collect();
    names.sort_unstable();
    json_error(
        StatusCode::NOT_FOUND,
        &format!("no policy named {name:?}; policies: {}", names.join(", ")),
    )
}

// ---------------------------------------------------------------------------------------------
// POST /upstreams/{upstream}/breaker

/// The `action` parameter.
fn parse_action(value: &str) -> Option<BreakerCommand> {
    match value {
        "force-open" => Some(BreakerCommand::ForceOpen),
        "force-closed" => Some(BreakerCommand::ForceClosed),
        "reset" => Some(BreakerCommand::Reset),
        _ => None,
    }
}

fn action_label(command: BreakerCommand) -> &'static str {
    match command {
        BreakerCommand::ForceOpen => "force-open",
        BreakerCommand::ForceClosed => "force-closed",
        BreakerCommand::Reset => "reset",
    }
}

/// The parameters of a breaker command.
#[derive(Debug, PartialEq, Eq)]
struct BreakerParams {
    command: BreakerCommand,
    destination: Option<(String, u16)>,
    /// `route=name`: the route's own breaker (`breaker = "own"`) instead of the destination's.
    route: Option<String>,
}

const ACTIONS: &str = "force-open, force-closed or reset";

/// Parses `action=...[&destination=host:port]`. Unknown or repeated parameters are errors: a
/// misspelt `destination` must not silently widen a command to every destination.
fn parse_breaker_query(query: Option<&str>) -> Result<BreakerParams, String> {
    let mut action = None;
    let mut destination = None;
    let mut route = None;
    for (key, value) in parse_query(query.unwrap_or(""))? {
        let slot = match key.as_str() {
            "action" => &mut action,
            "destination" => &mut destination,
            "route" => &mut route,
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}; expected action={ACTIONS} and optionally \
                     destination=host:port and route=name"
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("parameter {key:?} given more than once"));
        }
    }
    let action = action.ok_or_else(|| format!("missing parameter action={ACTIONS}"))?;
    let command = parse_action(&action)
        .ok_or_else(|| format!("unknown action {action:?}; expected {ACTIONS}"))?;
    let destination = destination.map(|d| parse_destination(&d)).transpose()?;
    Ok(BreakerParams {
        command,
        destination,
        route,
    })
}

fn breaker(state: &AdminState, conn: Conn, name: &str, query: Option<&str>) -> AdminResponse {
    let params = match parse_breaker_query(query) {
        Ok(params) => params,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let snapshot = state.registry.load();
    let Some(upstream) = snapshot.by_name(name) else {
        return unknown_upstream(&snapshot, name);
    };
    if upstream.policy.breaker.mode == BreakerMode::Off {
        return json_error(
            StatusCode::CONFLICT,
            &format!(
                "policy {name} has `[breaker] mode = \"off\"`: there is no breaker to force or \
                 reset"
            ),
        );
    }
    let route = match own_breaker_route(upstream, params.route.as_deref()) {
        Ok(route) => route,
        Err((status, message)) => return json_error(status, &message),
    };
    let forcing = params.command != BreakerCommand::Reset;
    let targets = match &params.destination {
        Some((host, port)) => match find_or_create(&snapshot, upstream, host, *port) {
            Ok(destination) => vec![destination],
            Err(message) => return json_error(StatusCode::NOT_FOUND, &message),
        },
        None => {
            let mut targets = upstream.destinations();
            if forcing {
                // A policy with `endpoints` knows its destinations before any traffic.
                for endpoint in &upstream.policy.endpoints {
                    let known = targets.iter().any(|d| {
                        split_authority(&d.authority)
                            == Some((endpoint.host.as_str(), endpoint.port))
                    });
                    if !known {
                        targets.push(upstream.destination(&endpoint.host, endpoint.port));
                    }
                }
                if targets.is_empty() {
                    return json_error(
                        StatusCode::CONFLICT,
                        &format!(
                            "policy {name} has no destinations yet, so there is nothing to {}; \
                             name one with destination=host:port to set it before traffic \
                             arrives",
                            action_label(params.command)
                        ),
                    );
                }
            }
            targets
        }
    };
    for destination in &targets {
        destination.command(route, params.command);
    }
    let affected: Vec<&str> = targets.iter().map(|d| &*d.authority).collect();
    info!(
        peer = %conn.peer,
        upstream = name,
        action = action_label(params.command),
        destinations = ?affected,
        "admin: breaker command applied"
    );
    let clock = Clock::now();
    let mut views: Vec<DestinationView> = views_of(upstream, &targets, clock).collect();
    json::sort(&mut views);
    json_response(StatusCode::OK, &views)
}

/// The index of the route named `route` of `upstream`'s policy, which must have a breaker of
/// its own; `None` without `route=` (the destination's breaker).
fn own_breaker_route(
    upstream: &Upstream,
    route: Option<&str>,
) -> Result<Option<usize>, (StatusCode, String)> {
    let Some(name) = route else { return Ok(None) };
    let routes = &upstream.policy.routes;
    let Some(index) = routes.iter().position(|r| r.name == name) else {
        let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        let why = format!(
            "policy {} has no route {name:?}; its routes: {known:?}",
            upstream.policy.name
        );
        return Err((StatusCode::NOT_FOUND, why));
    };
    if !routes[index].own_breaker {
        let why = format!(
            "route {name:?} shares the destination's breaker (no `breaker = \"own\"`): command \
             the destination's without route="
        );
        return Err((StatusCode::CONFLICT, why));
    }
    Ok(Some(index))
}

/// The destination `host:port` of `upstream`, created if no traffic reached it yet — provided
/// traffic to it would go through this policy.
fn find_or_create(
    snapshot: &Snapshot,
    upstream: &Arc<Upstream>,
    host: &str,
    port: u16,
) -> Result<Arc<Destination>, String> {
    if let Some(found) = upstream
        .destinations()
        .into_iter()
        .find(|d| split_authority(&d.authority) == Some((host, port)))
    {
        return Ok(found);
    }
    let name = &upstream.policy.name;
    let shown = join_authority(host, port);
    if !routes_to(snapshot, upstream, host, port) {
        let hint = if upstream.policy.endpoints.is_empty() {
            let owner = &snapshot.lookup(host, port).policy.name;
            format!("requests to it go through policy {owner}")
        } else {
            let endpoints: Vec<String> = upstream
                .policy
                .endpoints
                .iter()
                .map(|e| join_authority(&e.host, e.port))
                .collect();
            format!(
                "policy {name} sends its traffic to its endpoints: {}",
                endpoints.join(", ")
            )
        };
        return Err(format!(
            "{shown} is not a destination of policy {name}: {hint}"
        ));
    }
    Ok(upstream.destination(host, port))
}

/// Whether traffic to `host:port` would be kept under this destination key of `upstream`
/// (the proxy keys a policy with `endpoints` by endpoint, others by requested host).
fn routes_to(snapshot: &Snapshot, upstream: &Arc<Upstream>, host: &str, port: u16) -> bool {
    let policy: &Policy = &upstream.policy;
    if !policy.endpoints.is_empty() {
        return policy
            .endpoints
            .iter()
            .any(|e| e.host == host && e.port == port);
    }
    Arc::ptr_eq(snapshot.lookup(host, port), upstream)
}

/// `host:port` or `[v6]:port` → lowercase host without brackets, and port.
fn parse_destination(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("destination {text:?} is not host:port (IPv6 in brackets: [::1]:8080)");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        host.parse::<Ipv6Addr>().map_err(|_| bad())?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    // What a URI's host may hold (RFC 3986 reg-name: unreserved and sub-delims), as the
    // proxy accepts it from apps, so that every destination it keys can be named here.
    let valid_host = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'-'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
    if !valid_host {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn join_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// ---------------------------------------------------------------------------------------------
// POST /reload, GET /config

#[derive(Serialize)]
struct ReloadFailure<'a> {
    error: &'a str,
    errors: &'a [String],
}

async fn reload(state: &AdminState, conn: Conn) -> AdminResponse {
    info!(peer = %conn.peer, "admin: reload requested");
    match state.reloader.reload().await {
        Ok(generation) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "generation": generation }),
        ),
        Err(error) => json_response(
            StatusCode::BAD_REQUEST,
            &ReloadFailure {
                error: "the policies were not reloaded; the previous ones keep serving",
                errors: &error.errors,
            },
        ),
    }
}

#[derive(Serialize)]
struct ConfigView<'a> {
    generation: u64,
    dir: &'a std::path::Path,
    default: &'a Policy,
    policies: BTreeMap<&'a str, &'a Policy>,
}

fn config(state: &AdminState) -> AdminResponse {
    let snapshot = state.registry.load();
    let set = &snapshot.policies;
    let view = ConfigView {
        generation: snapshot.generation,
        dir: &set.dir,
        default: &set.default,
        policies: set.others.iter().map(|p| (p.name.as_str(), &**p)).collect(),
    };
    json_response(StatusCode::OK, &view)
}

// ---------------------------------------------------------------------------------------------
// Query strings and responses.

/// `a=1&b=%5B%3A%3A1%5D` → pairs, percent- and `+`-decoded. Empty segments are skipped.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode(&s.replace('+', " "))
                    .ok_or_else(|| format!("cannot decode query parameter {pair:?}"))
            };
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> AdminResponse {
    let mut response = Response::new(super::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            text(status, body, "application/json")
        }
        Err(error) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the response: {error}"),
        ),
    }
}

fn json_error(status: StatusCode, message: &str) -> AdminResponse {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    text(status, body, "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/upstreams"), Some(Route::Upstreams));
        assert_eq!(Route::parse("/upstreams/"), Some(Route::Upstreams));
        assert_eq!(
            Route::parse("/upstreams/payments"),
            Some(Route::Upstream("payments".into()))
        );
        assert_eq!(
            Route::parse("/upstreams/pay%20ments/breaker"),
            Some(Route::Breaker("pay ments".into()))
        );
        assert_eq!(
            Route::parse("/upstreams/breaker"),
            Some(Route::Upstream("breaker".into()))
        );
        assert_eq!(Route::parse("/upstreams/a/b"), None);
        assert_eq!(Route::parse("/upstreams/a/breaker/x"), None);
        assert_eq!(Route::parse("/upstreams//breaker"), None);
        assert!(matches!(
            Route::parse("/"),
            Some(Route::Page(_, "text/html; charset=utf-8"))
        ));
        assert_eq!(Route::parse("/events"), Some(Route::Events));
        assert_eq!(Route::parse("/live.jsx"), None);
        assert_eq!(Route::parse("/config"), Some(Route::Config));
        assert_eq!(Route::parse("/reload/"), Some(Route::Reload));
    }

    #[test]
    fn methods() {
        assert!(Route::Upstreams.allows(&Method::GET));
        assert!(Route::Upstreams.allows(&Method::HEAD));
        assert!(!Route::Upstreams.allows(&Method::POST));
        assert!(Route::Reload.allows(&Method::POST));
        assert!(!Route::Reload.allows(&Method::GET));
        assert_eq!(Route::Breaker("a".into()).allow(), "POST");
        assert_eq!(Route::Config.allow(), "GET, HEAD");
    }

    #[test]
    fn breaker_query() {
        assert_eq!(
            parse_breaker_query(Some("action=force-open")),
            Ok(BreakerParams {
                command: BreakerCommand::ForceOpen,
                destination: None,
                route: None,
            })
        );
        assert_eq!(
            parse_breaker_query(Some("action=reset&route=reports")),
            Ok(BreakerParams {
                command: BreakerCommand::Reset,
                destination: None,
                route: Some("reports".into()),
            })
        );
        assert_eq!(
            parse_breaker_query(Some("destination=%5B%3A%3A1%5D%3A8080&action=reset")),
            Ok(BreakerParams {
                command: BreakerCommand::Reset,
                destination: Some(("::1".into(), 8080)),
                route: None,
            })
        );
        assert_eq!(
            parse_breaker_query(Some("action=force-closed&destination=API.Example.com:443")),
            Ok(BreakerParams {
                command: BreakerCommand::ForceClosed,
                destination: Some(("api.example.com".into(), 443)),
                route: None,
            })
        );
        for bad in [
            None,
            Some(""),
            Some("action=open"),
            Some("action=force-open&destinaton=a:1"),
            Some("action=reset&action=reset"),
            Some("action=reset&route=a&route=b"),
            Some("action=reset&destination=a"),
            Some("action=reset&destination=%zz"),
        ] {
            assert!(parse_breaker_query(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(parse_destination("a.b:80"), Ok(("a.b".into(), 80)));
        assert_eq!(
            parse_destination("a'b&c=(d).test:9"),
            Ok(("a'b&c=(d).test".into(), 9)),
            "every host the proxy keys can be named"
        );
        assert_eq!(parse_destination("[::1]:8080"), Ok(("::1".into(), 8080)));
        assert_eq!(
            parse_destination("10.0.0.7:8080"),
            Ok(("10.0.0.7".into(), 8080))
        );
        for bad in [
            "a.b",
            "a.b:",
            ":80",
            "a.b:0",
            "a.b:65536",
            "::1:80",
            "[::1]",
            "[zz]:80",
            "a b:80",
            "a/b:80",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
        assert_eq!(split_authority("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(split_authority("a.b:80"), Some(("a.b", 80)));
        assert_eq!(join_authority("::1", 1), "[::1]:1");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1&&b=x+y%21&c").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), String::new())
            ]
        );
        assert!(parse_query("a=%4").is_err());
        assert!(parse_query("a=%ff").is_err());
    }
}

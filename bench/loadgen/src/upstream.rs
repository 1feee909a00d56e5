//! The fake upstreams: HTTP/1.1 servers (hyper, keep-alive) whose answers take a set time.
//!
//! `queue-upstream` is a server of fixed capacity: at most `--concurrency` requests in service
//! at once, each taking `--service`; the rest wait in FIFO order (tokio's `Semaphore` is fair),
//! or, with `--reject-beyond`, get `429` at once. Like a thread-pool server, a request it has
//! read is served in full even when its client has gone meanwhile (fusebox gave up on it):
//! queued requests nobody waits for any more still cost capacity (counted as `abandoned`).
//!
//! `tail-upstream` answers after `--latency`, or after `--slow` for a seeded-random
//! `--slow-fraction` of requests; it may listen on many addresses (`--listen` repeated) with
//! stats per address. `POST /control?all=100ms` makes every later request to that address take
//! 100 ms (`?all=off` restores the normal latencies).
//!
//! Both: `GET /stats` answers JSON counts (requests to `/stats` and `/control` are not
//! counted); every other request gets `200` with a small body (or the `429`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, Semaphore};

use crate::args::{parse_duration, Args};
use crate::timer::Timer;

type Body = Full<Bytes>;

fn reply(status: StatusCode, body: impl Into<Bytes>, json: bool) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let ct = if json {
        "application/json"
    } else {
        "text/plain"
    };
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r
}

const OK_BODY: &[u8] = b"ok from the bench upstream\n";

/// Accepts on every listener and serves each connection with `handle(addr, request)`.
async fn serve<H, F>(listeners: Vec<(SocketAddr, TcpListener)>, handle: H)
where
    H: Fn(usize, Request<Incoming>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for (index, (_, listener)) in listeners.into_iter().enumerate() {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and the like: wait instead of spinning.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let f = handle(index, req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn bind_all(addrs: &[String]) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
    if addrs.is_empty() {
        return Err("--listen IP:PORT is required".into());
    }
    let mut out = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a
            .parse()
            .map_err(|_| format!("--listen: `{a}` is not IP:PORT"))?;
        let l = listen(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        out.push((l.local_addr().unwrap_or(addr), l));
    }
    Ok(out)
}

/// A listener with a deep accept queue: a proxy that opens a thousand connections at once
/// must not have its SYNs dropped (a 1 s retransmission, a connect timeout in fusebox) because
/// of the default backlog of 1,024 (the kernel caps it at net.core.somaxconn).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

// ---------------------------------------------------------------------------------------------
// queue-upstream

struct QueueState {
    slots: Arc<Semaphore>,
    concurrency: usize,
    service: Duration,
    reject_beyond: bool,
    timer: Timer,
    received: AtomicU64,
    served: AtomicU64,
    abandoned: AtomicU64,
    rejected: AtomicU64,
    waiting: AtomicU64,
    started: Instant,
}

impl QueueState {
    fn stats(&self) -> Value {
        json!({
            "received": self.received.load(Relaxed),
            "served": self.served.load(Relaxed),
            "abandoned": self.abandoned.load(Relaxed),
            "rejected_429": self.rejected.load(Relaxed),
            "in_service": self.concurrency - self.slots.available_permits(),
            "waiting": self.waiting.load(Relaxed),
            "concurrency": self.concurrency,
            "service_ms": self.service.as_secs_f64() * 1e3,
            "reject_beyond": self.reject_beyond,
            "uptime_s": self.started.elapsed().as_secs_f64(),
        })
    }
}

async fn queue_handle(state: Arc<QueueState>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/stats" {
        return reply(StatusCode::OK, state.stats().to_string(), true);
    }
    state.received.fetch_add(1, Relaxed);
    let permit = if state.reject_beyond {
        match Arc::clone(&state.slots).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                state.rejected.fetch_add(1, Relaxed);
                return reply(StatusCode::TOO_MANY_REQUESTS, "over capacity\n", false);
            }
        }
    } else {
        None
    };
    // The service runs in a task of its own, so that it completes (and holds its slot) even
    // if the connection is closed and hyper drops this handler.
    let (done, wait) = oneshot::channel::<()>();
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        let _permit = match permit {
            Some(p) => p,
            None => {
                st.waiting.fetch_add(1, Relaxed);
                let p = Arc::clone(&st.slots)
                    .acquire_owned()
                    .await
                    .expect("never closed");
                st.waiting.fetch_sub(1, Relaxed);
                p
            }
        };
        st.timer.sleep(st.service).await;
        st.served.fetch_add(1, Relaxed);
        if done.send(()).is_err() {
            st.abandoned.fetch_add(1, Relaxed);
        }
    });
    let _ = wait.await;
    reply(StatusCode::OK, OK_BODY, false)
}

pub fn queue_main(args: Args) -> Result<(), String> {
    let listen = args.all("listen");
    let concurrency: usize = args.number("concurrency", 50)?;
    let service = args.duration("service", Duration::from_millis(10))?;
    let reject_beyond = args.switch("reject-beyond");
    let threads: usize = args.number("threads", 1)?;
    args.finish()?;
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let rt = crate::runtime(threads)?;
    rt.block_on(async move {
        let listeners = bind_all(&listen).await?;
        for (addr, _) in &listeners {
            eprintln!(
                "queue-upstream on {addr}: {concurrency} at a time, {service:?} each{}",
                if reject_beyond {
                    ", 429 beyond"
                } else {
                    ", FIFO queue beyond"
                }
            );
        }
        let state = Arc::new(QueueState {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            service,
            reject_beyond,
            timer: Timer::start(),
            received: AtomicU64::new(0),
            served: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            started: Instant::now(),
        });
        serve(listeners, move |_, req| {
            queue_handle(Arc::clone(&state), req)
        })
        .await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// tail-upstream

struct TailAddr {
    addr: SocketAddr,
    received: AtomicU64,
    slow: AtomicU64,
    answered: AtomicU64,
    /// Nanoseconds every request takes while set by `/control?all=`; 0 = normal latencies.
    all_nanos: AtomicU64,
}

struct TailState {
    addrs: Vec<TailAddr>,
    latency: Duration,
    slow: Duration,
    /// `slow_fraction` as a threshold on a uniform u64.
    slow_threshold: u64,
    seed: u64,
    timer: Timer,
}

/// splitmix64: the `n`-th request of an address is slow when this falls under the threshold.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TailState {
    fn stats(&self) -> Value {
        let mut by_addr = serde_json::Map::new();
        let (mut received, mut slow, mut answered) = (0, 0, 0);
        for a in &self.addrs {
            let (r, s, d) = (
                a.received.load(Relaxed),
                a.slow.load(Relaxed),
                a.answered.load(Relaxed),
            );
            received += r;
            slow += s;
            answered += d;
            let all = a.all_nanos.load(Relaxed);
            by_addr.insert(
                a.addr.to_string(),
                json!({"received": r, "slow": s, "answered": d,
                       "all_ms": if all == 0 { Value::Null } else { json!(all as f64 / 1e6) }}),
            );
        }
        json!({"total": {"received": received, "slow": slow, "answered": answered},
               "addresses": by_addr})
    }
}

async fn tail_handle(
    state: Arc<TailState>,
    index: usize,
    req: Request<Incoming>,
) -> Response<Body> {
    let me = &state.addrs[index];
    match req.uri().path() {
        "/stats" => return reply(StatusCode::OK, state.stats().to_string(), true),
        "/control" => {
            if req.method() != Method::POST {
                return reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST /control?all=100ms|off\n",
                    false,
                );
            }
            let nanos = match query_param(&req, "all") {
                Some("off") => 0,
                Some(v) => match parse_duration(v) {
                    Ok(d) => (d.as_nanos() as u64).max(1),
                    Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n"), false),
                },
                None => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "POST /control?all=100ms|off\n",
                        false,
                    )
                }
            };
            me.all_nanos.store(nanos, Relaxed);
            return reply(StatusCode::OK, format!("{{\"all_nanos\":{nanos}}}"), true);
        }
        _ => {}
    }
    let n = me.received.fetch_add(1, Relaxed);
    let all = me.all_nanos.load(Relaxed);
    let delay = if all != 0 {
        Duration::from_nanos(all)
    } else if splitmix64(state.seed ^ ((index as u64) << 48) ^ n) < state.slow_threshold {
        me.slow.fetch_add(1, Relaxed);
        state.slow
    } else {
        state.latency
    };
    state.timer.sleep(delay).await;
    me.answered.fetch_add(1, Relaxed);
    reply(StatusCode::OK, OK_BODY, false)
}

pub fn tail_main(args: Args) -> Result<(), String> {
    let listen = args.all("listen");
    let latency = args.duration("latency", Duration::from_millis(10))?;
    let slow = args.duration("slow", Duration::from_secs(1))?;
    let fraction: f64 = args.number("slow-fraction", 0.01)?;
    let seed: u64 = args.number("seed", 1)?;
    let threads: usize = args.number("threads", 1)?;
    args.finish()?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err("--slow-fraction must be within 0 … 1".into());
    }
    let rt = crate::runtime(threads)?;
    rt.block_on(async move {
        let listeners = bind_all(&listen).await?;
        let addrs = listeners
            .iter()
            .map(|(addr, _)| TailAddr {
                addr: *addr,
                received: AtomicU64::new(0),
                slow: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                all_nanos: AtomicU64::new(0),
            })
            .collect::<Vec<_>>();
        eprintln!(
            "tail-upstream on {} address(es): {latency:?}, {:.2} % take {slow:?} (seed {seed})",
            addrs.len(),
            fraction * 100.0
        );
        let state = Arc::new(TailState {
            addrs,
            latency,
            slow,
            slow_threshold: (fraction * u64::MAX as f64) as u64,
            seed: splitmix64(seed),
            timer: Timer::start(),
        });
        serve(listeners, move |i, req| {
            tail_handle(Arc::clone(&state), i, req)
        })
        .await;
        Ok(())
    })
}

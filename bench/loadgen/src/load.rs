//! `load`: an open-loop load generator.
//!
//! Requests are planned at a constant arrival rate per phase (`--phases 2500:10,15000:20`:
//! 2,500 a second for 10 s, then 15,000 a second for 20 s) and each is started at its planned
//! time whatever the earlier ones did; its latency runs from that planned time (no coordinated
//! omission), so any wait, in this generator or beyond, counts. Planned times are kept with
//! tokio's timer (1 ms tick): requests leave in 1 ms batches, typically 0.5–1 ms late, and
//! that lateness is part of the latency (each second's `lag_p50_ms`, `lag_p99_ms` and
//! `lag_max_ms` say how late requests were started).
//!
//! Cost: about 10 µs of CPU a request (one current-thread runtime). On the 2-core development
//! machine (2026-12-07), with fusebox (`--workers 2`, no limit) and a 1 ms upstream on the same
//! two cores, it kept 15,000 and 30,000 requests/s on schedule (lag p99 1.4 and 1.6 ms, p99
//! through fusebox 3.6 and 4.7 ms); at 40,000 the two cores were saturated (latencies grew,
//! while the generator still started requests within 10 ms of their planned time).
//!
//! Transport: HTTP/1.1 keep-alive connections, one request at a time each, at most
//! `--connections` of them (default 2,000; the app's connection pool). A request that finds
//! every connection busy waits, FIFO, for one (its latency still runs); one still waiting or
//! unanswered `--timeout` (default 5 s) after its planned time is an error (`queue_timeout` or
//! `timeout`). A timed-out request's connection is not closed but kept busy until its answer
//! comes (at most 30 s more) and then reused, so that a wave of timeouts does not become a
//! storm of new connections (the generator's own cost, not fusebox's). With `--proxy IP:PORT`
//! every connection goes to that proxy and requests carry the absolute URL
//! (`GET http://host:port/path HTTP/1.1`), as an app with `HTTP_PROXY` sends them; without it,
//! connections go to the URL's own address with origin-form requests (a fusebox route
//! listener). `--preconnect N` opens N of them before the first request (in batches of 64, so
//! that a listener's short accept backlog drops no SYN: a dropped SYN costs a 1 s
//! retransmission); the others are opened as needed.
//!
//! Output, on stdout, one JSON object a line: every second `{"type": "second", "t", "sent",
//! "ok", "local", "upstream_429", "errors", "p50_ms", "p99_ms", ...}` (responses counted in the
//! second they arrived; percentiles of that second's 2xx), and at the end one
//! `{"type": "phase", ...}` per phase (requests counted by their planned time; HDR percentiles
//! p50/p99/p99.9/max of the 2xx) and a `{"type": "total", ...}`. `ok` = 2xx; `local` =
//! responses with an `x-fusebox-reason` header (fusebox's own replies), by reason in
//! `local_reasons`; `upstream_429` = 429 without that header; `errors` = everything else
//! (other statuses, timeouts, connection failures), by kind in `error_kinds`. With
//! `--sample URL --sample-metric NAME` (repeatable, or `NAME,NAME`), each second's line also has
//! `sample`: every Prometheus series of URL's text named NAME, `{"name{labels}": value}` (`{}`
//! when there is none, `null` when URL could not be read), fetched at the end of that second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::args::{parse_duration, Args};

type Conn = SendRequest<Empty<Bytes>>;

struct Phase {
    rate: f64,
    secs: f64,
}

fn parse_phases(text: &str) -> Result<Vec<Phase>, String> {
    let mut phases = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (rate, secs) = part
            .split_once(':')
            .ok_or_else(|| format!("--phases: `{part}` is not RATE:SECS"))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("--phases: bad rate `{rate}`"))?;
        let secs = parse_duration(secs.trim())
            .map_err(|e| format!("--phases: {e}"))?
            .as_secs_f64();
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err(format!("--phases: bad rate `{rate}`"));
        }
        phases.push(Phase { rate, secs });
    }
    if phases.is_empty() {
        return Err("--phases RATE:SECS[,RATE:SECS...] is required".into());
    }
    Ok(phases)
}

#[derive(Debug)]
enum Outcome {
    Ok,
    Local(String),
    Upstream429,
    Error(String),
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Counts of one second or one phase.
struct Counts {
    sent: u64,
    ok: u64,
    local: u64,
    local_reasons: BTreeMap<String, u64>,
    upstream_429: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    /// 2xx latencies, µs.
    ok_us: Histogram<u64>,
    /// Local replies' latencies, µs.
    local_us: Histogram<u64>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            sent: 0,
            ok: 0,
            local: 0,
            local_reasons: BTreeMap::new(),
            upstream_429: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            ok_us: histogram(),
            local_us: histogram(),
        }
    }

    fn record(&mut self, outcome: &Outcome, latency_us: u64) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.ok_us.saturating_record(latency_us.max(1));
            }
            Outcome::Local(reason) => {
                self.local += 1;
                bump(&mut self.local_reasons, reason);
                self.local_us.saturating_record(latency_us.max(1));
            }
            Outcome::Upstream429 => self.upstream_429 += 1,
            Outcome::Error(kind) => {
                self.errors += 1;
                bump(&mut self.error_kinds, kind);
            }
        }
    }

    fn json(&self) -> serde_json::Map<String, Value> {
        let q = |h: &Histogram<u64>, p: f64| -> Value {
            if h.is_empty() {
                Value::Null
            } else {
                json!(round3(h.value_at_quantile(p) as f64 / 1e3))
            }
        };
        let mut m = serde_json::Map::new();
        m.insert("sent".into(), json!(self.sent));
        m.insert("ok".into(), json!(self.ok));
        m.insert("local".into(), json!(self.local));
        m.insert("upstream_429".into(), json!(self.upstream_429));
        m.insert("errors".into(), json!(self.errors));
        m.insert("p50_ms".into(), q(&self.ok_us, 0.5));
        m.insert("p99_ms".into(), q(&self.ok_us, 0.99));
        m.insert("local_reasons".into(), json!(self.local_reasons));
        m.insert("error_kinds".into(), json!(self.error_kinds));
        m
    }

    fn json_full(&self) -> serde_json::Map<String, Value> {
        let mut m = self.json();
        let h = &self.ok_us;
        let v = |x: u64| {
            if h.is_empty() {
                Value::Null
            } else {
                json!(round3(x as f64 / 1e3))
            }
        };
        m.insert("p999_ms".into(), v(h.value_at_quantile(0.999)));
        m.insert("max_ms".into(), v(h.max()));
        m.insert(
            "mean_ms".into(),
            if h.is_empty() {
                Value::Null
            } else {
                json!(round3(h.mean() / 1e3))
            },
        );
        m.insert(
            "local_p99_ms".into(),
            if self.local_us.is_empty() {
                Value::Null
            } else {
                json!(round3(self.local_us.value_at_quantile(0.99) as f64 / 1e3))
            },
        );
        m
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else {
        map.insert(key.to_string(), 1);
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

struct Stats {
    second: Counts,
    /// How late requests were started this second (planned to spawned), µs.
    second_lag_us: Histogram<u64>,
    phases: Vec<Counts>,
}

struct Gen {
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    timeout: Duration,
    slots: Semaphore,
    idle: Mutex<Vec<Conn>>,
    open: AtomicI64,
    in_flight: AtomicI64,
    waiting: AtomicI64,
    stats: Mutex<Stats>,
}

impl Gen {
    async fn connect(self: &Arc<Self>) -> Result<Conn, Outcome> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|_| Outcome::Error("connect".into()))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Error("connect".into()))?;
        self.open.fetch_add(1, Relaxed);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = conn.await;
            me.open.fetch_sub(1, Relaxed);
        });
        Ok(send)
    }

    /// One request on a kept-alive connection (or a new one); the caller holds a slot.
    async fn exchange(self: &Arc<Self>) -> Outcome {
        let mut conn = loop {
            let pooled = self.idle.lock().unwrap().pop();
            match pooled {
                Some(mut c) => {
                    if !c.is_closed() && c.ready().await.is_ok() {
                        break c;
                    }
                }
                None => match self.connect().await {
                    Ok(c) => break c,
                    Err(o) => return o,
                },
            }
        };
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let resp = match conn.send_request(req).await {
            Ok(r) => r,
            Err(_) => return Outcome::Error("http".into()),
        };
        let status = resp.status();
        let reason = resp
            .headers()
            .get("x-fusebox-reason")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        if resp.into_body().collect().await.is_err() {
            return Outcome::Error("body".into());
        }
        self.idle.lock().unwrap().push(conn);
        match reason {
            Some(r) => Outcome::Local(r),
            None if status.is_success() => Outcome::Ok,
            None if status.as_u16() == 429 => Outcome::Upstream429,
            None => Outcome::Error(format!("status_{}", status.as_u16())),
        }
    }

    async fn one(self: Arc<Self>, planned: Instant, phase: usize) {
        let deadline = planned + self.timeout;
        self.in_flight.fetch_add(1, Relaxed);
        self.waiting.fetch_add(1, Relaxed);
        let slot = timeout_at(deadline, self.slots.acquire()).await;
        self.waiting.fetch_sub(1, Relaxed);
        let permit = match slot {
            Err(_) => return self.record(planned, phase, &Outcome::Error("queue_timeout".into())),
            Ok(permit) => permit.expect("never closed"),
        };
        let exchange = self.exchange();
        tokio::pin!(exchange);
        match timeout_at(deadline, &mut exchange).await {
            Ok(outcome) => self.record(planned, phase, &outcome),
            Err(_) => {
                // A timeout for the app; the connection (and its slot) stays with the request
                // until its answer comes, at most LINGER more, so that a wave of timeouts does
                // not turn into a storm of new connections.
                self.record(planned, phase, &Outcome::Error("timeout".into()));
                let _ = timeout_at(deadline + LINGER, exchange).await;
            }
        }
        drop(permit);
    }

    fn record(&self, planned: Instant, phase: usize, outcome: &Outcome) {
        let latency_us = planned.elapsed().as_micros() as u64;
        {
            let mut s = self.stats.lock().unwrap();
            s.second.record(outcome, latency_us);
            s.phases[phase].record(outcome, latency_us);
        }
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

/// How long a timed-out request keeps its connection waiting for the late answer.
const LINGER: Duration = Duration::from_secs(30);

/// Every series of `metric` in the Prometheus text at `url`.
async fn sample(url: &Uri, addr: SocketAddr, metrics: &[String]) -> Option<Value> {
    let fetch = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = url
            .path_and_query()
            .map_or("/".parse().unwrap(), |p| p.as_str().parse().unwrap());
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(url.authority()?.as_str()).ok()?,
        );
        let resp = send.send_request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        let mut series = serde_json::Map::new();
        for line in text.lines() {
            let wanted = metrics.iter().any(|m| {
                line.strip_prefix(m.as_str())
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            });
            if !wanted {
                continue;
            }
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    series.insert(name.trim().to_string(), json!(v));
                }
            }
        }
        Some(Value::Object(series))
    };
    tokio::time::timeout(Duration::from_millis(800), fetch)
        .await
        .ok()
        .flatten()
}

async fn resolve(authority: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))
}

fn authority_with_port(uri: &Uri) -> Result<String, String> {
    let a = uri
        .authority()
        .ok_or_else(|| format!("`{uri}` has no host"))?;
    Ok(match a.port_u16() {
        Some(_) => a.as_str().to_string(),
        None => format!("{}:80", a.host()),
    })
}

pub fn main(args: Args) -> Result<(), String> {
    let url: Uri = args
        .string("url")
        .ok_or("--url http://HOST:PORT/PATH is required")?
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err("--url must be http://".into());
    }
    let proxy = args.string("proxy");
    let phases = args.string("phases").unwrap_or_default();
    let connections: usize = args.number("connections", 2000)?;
    let preconnect: usize = args.number("preconnect", 0)?;
    let timeout = args.duration("timeout", Duration::from_secs(5))?;
    let sample_url = args.string("sample");
    let sample_metrics: Vec<String> = args
        .all("sample-metric")
        .iter()
        .flat_map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
        })
        .collect();
    let threads: usize = args.number("threads", 1)?;
    args.finish()?;
    let phases = parse_phases(&phases)?;
    if preconnect > connections {
        return Err("--preconnect cannot exceed --connections".into());
    }
    if sample_url.is_some() == sample_metrics.is_empty() {
        return Err("--sample and --sample-metric go together".into());
    }
    let sample_url: Option<Uri> = match sample_url {
        None => None,
        Some(s) => Some(s.parse().map_err(|e| format!("--sample: {e}"))?),
    };
    let rt = crate::runtime(threads)?;
    rt.block_on(async move {
        let host =
            HeaderValue::from_str(url.authority().unwrap().as_str()).map_err(|e| e.to_string())?;
        let (addr, uri) = match &proxy {
            Some(p) => (resolve(p).await?, url.clone()),
            None => {
                let path = url
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .unwrap();
                (resolve(&authority_with_port(&url)?).await?, path)
            }
        };
        let sample_addr = match &sample_url {
            Some(u) => Some(resolve(&authority_with_port(u)?).await?),
            None => None,
        };
        let gen = Arc::new(Gen {
            addr,
            uri,
            host,
            timeout,
            slots: Semaphore::new(connections),
            idle: Mutex::new(Vec::with_capacity(connections)),
            open: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            stats: Mutex::new(Stats {
                second: Counts::new(),
                second_lag_us: histogram(),
                phases: phases.iter().map(|_| Counts::new()).collect(),
            }),
        });
        // The app's pool, warmed: connections opened in batches of 64, under the accept
        // backlog of a listener that keeps a short one (128 is common), so that no SYN is dropped.
        let mut opened = 0;
        while opened < preconnect {
            let batch = (preconnect - opened).min(64);
            let mut tasks = Vec::new();
            for _ in 0..batch {
                let gen = Arc::clone(&gen);
                tasks.push(tokio::spawn(async move { gen.connect().await }));
            }
            for t in tasks {
                match t.await {
                    Ok(Ok(conn)) => gen.idle.lock().unwrap().push(conn),
                    _ => return Err(format!("--preconnect: cannot connect to {addr}")),
                }
            }
            opened += batch;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now() + Duration::from_millis(20);
        let mut begins = Vec::new();
        let mut at = 0.0;
        for p in &phases {
            begins.push(at);
            at += p.secs;
        }
        let total_secs = at;
        let rates: Vec<(f64, f64)> = phases.iter().map(|p| (p.rate, p.secs)).collect();

        // The scheduler: one task, each request spawned at its planned time.
        let done = Arc::new(AtomicBool::new(false));
        let scheduler = {
            let gen = Arc::clone(&gen);
            let done = Arc::clone(&done);
            let begins = begins.clone();
            tokio::spawn(async move {
                for (pi, p) in phases.iter().enumerate() {
                    let begin = start + Duration::from_secs_f64(begins[pi]);
                    let n = (p.rate * p.secs).round() as u64;
                    for i in 0..n {
                        let planned = begin + Duration::from_secs_f64(i as f64 / p.rate);
                        if planned > Instant::now() {
                            sleep_until(planned).await;
                        }
                        let lag = planned.elapsed().as_micros() as u64;
                        {
                            let mut s = gen.stats.lock().unwrap();
                            s.second.sent += 1;
                            s.second_lag_us.saturating_record(lag.max(1));
                            s.phases[pi].sent += 1;
                        }
                        tokio::spawn(Arc::clone(&gen).one(planned, pi));
                    }
                    sleep_until(begin + Duration::from_secs_f64(p.secs)).await;
                }
                done.store(true, Relaxed);
            })
        };

        // The reporter: a line a second until everything planned has an answer.
        let give_up =
            start + Duration::from_secs_f64(total_secs) + timeout + Duration::from_secs(2);
        let mut t = 0u64;
        loop {
            t += 1;
            let tick = start + Duration::from_secs(t);
            sleep_until(tick).await;
            let finished = done.load(Relaxed) && gen.in_flight.load(Relaxed) == 0;
            let (counts, lag_us) = {
                let mut s = gen.stats.lock().unwrap();
                let lag = std::mem::replace(&mut s.second_lag_us, histogram());
                (std::mem::replace(&mut s.second, Counts::new()), lag)
            };
            let elapsed = (t - 1) as f64;
            let phase = begins.iter().rposition(|b| *b <= elapsed).unwrap_or(0);
            let mut line = serde_json::Map::new();
            line.insert("type".into(), json!("second"));
            line.insert("t".into(), json!(t));
            line.insert("phase".into(), json!(phase));
            line.extend(counts.json());
            let lag_ms = |q: f64| json!(round3(lag_us.value_at_quantile(q) as f64 / 1e3));
            line.insert("lag_p50_ms".into(), lag_ms(0.5));
            line.insert("lag_p99_ms".into(), lag_ms(0.99));
            line.insert(
                "lag_max_ms".into(),
                json!(round3(lag_us.max() as f64 / 1e3)),
            );
            line.insert("in_flight".into(), json!(gen.in_flight.load(Relaxed)));
            line.insert("waiting".into(), json!(gen.waiting.load(Relaxed)));
            line.insert("connections".into(), json!(gen.open.load(Relaxed)));
            if let (Some(u), Some(a)) = (&sample_url, sample_addr) {
                line.insert(
                    "sample".into(),
                    sample(u, a, &sample_metrics).await.unwrap_or(Value::Null),
                );
            }
            println!("{}", Value::Object(line));
            if finished || Instant::now() > give_up {
                break;
            }
        }
        scheduler.abort();

        let s = gen.stats.lock().unwrap();
        let mut total = Counts::new();
        for (pi, c) in s.phases.iter().enumerate() {
            let mut line = serde_json::Map::new();
            line.insert("type".into(), json!("phase"));
            line.insert("phase".into(), json!(pi));
            line.insert("rate".into(), json!(rates[pi].0));
            line.insert("secs".into(), json!(rates[pi].1));
            line.extend(c.json_full());
            println!("{}", Value::Object(line));
            total.sent += c.sent;
            total.ok += c.ok;
            total.local += c.local;
            total.upstream_429 += c.upstream_429;
            total.errors += c.errors;
            for (k, v) in &c.local_reasons {
                *total.local_reasons.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.error_kinds {
                *total.error_kinds.entry(k.clone()).or_default() += v;
            }
            total.ok_us.add(&c.ok_us).expect("same bounds");
            total.local_us.add(&c.local_us).expect("same bounds");
        }
        let mut line = serde_json::Map::new();
        line.insert("type".into(), json!("total"));
        line.insert("secs".into(), json!(total_secs));
        line.extend(total.json_full());
        line.insert("unfinished".into(), json!(gen.in_flight.load(Relaxed)));
        println!("{}", Value::Object(line));
        Ok(())
    })
}

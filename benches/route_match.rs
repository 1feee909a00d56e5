//! `cargo bench --bench route_match`: what choosing a request's route costs with the 50 routes of
//! `tests/fixtures/routes50.toml` (docs/PERFORMANCE.md, "Route matching"; the budget is 0.3 µs a
//! request). Prints nanoseconds per `route_for` call for a hit on the first route, a miss (which
//! tries all 50 routes, the worst case) and a mix of hits and misses: the median of 11 rounds of
//! about 0.2 s each, and the fastest round.
//!
//! No benchmark framework: `Instant` and `black_box`, so that `cargo clippy --all-targets` needs
//! nothing more. `tests/route_match.rs` checks that the same matching allocates nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fusebox::policy::route::route_for;
use fusebox::policy::Route;
use http::{HeaderMap, Method};

#[path = "../tests/fixtures/shop.rs"]
mod shop;

const ROUNDS: usize = 11;
const ROUND: Duration = Duration::from_millis(200);

struct Request {
    method: Method,
    path: &'static str,
    headers: HeaderMap,
}

fn request(method: Method, path: &'static str, extra: &[(&'static str, &'static str)]) -> Request {
    Request {
        method,
        path,
        headers: shop::headers(extra),
    }
}

fn main() {
    let routes = &shop::routes();

    let first = vec![request(Method::GET, "/healthz", &[])];
    // Shares its first segments with many templates, and has a method most routes take.
    let miss = vec![request(
        Method::GET,
        "/v1/orders/42/shipments/7/labels",
        &[],
    )];
    let mix = vec![
        request(Method::GET, "/v1/users/42", &[]),
        request(Method::POST, "/v1/orders", &[("idempotency-key", "k-1")]),
        request(Method::GET, "/v1/orders/42", &[]),
        request(Method::POST, "/v1/payments/p_9", &[("x-tier", "gold")]),
        request(Method::POST, "/v1/payments/p_9", &[]),
        request(Method::PUT, "/v1/carts/7/items/3", &[]),
        request(Method::GET, "/v1/products/sku-1/reviews", &[]),
        request(Method::GET, "/v1/files/a/b.pdf", &[]),
        request(
            Method::POST,
            "/graphql",
            &[("content-type", "application/json")],
        ),
        request(Method::GET, "/metrics", &[]),
        request(Method::DELETE, "/v1/orders/42", &[]),
        request(Method::GET, "/v3/anything", &[]),
    ];
    assert_eq!(route_of(routes, &first[0]), Some(0));
    assert_eq!(route_of(routes, &miss[0]), None);

    let cases = [
        ("first route (GET /healthz)", &first),
        ("miss (scans all)", &miss),
        ("mix of 10 hits and 2 misses", &mix),
    ];
    for (label, requests) in cases {
        let (median, fastest) = time(routes, requests);
        println!(
            "route_for, 50 routes, {label}: {median:.0} ns/request (fastest round {fastest:.0})"
        );
    }
}

fn route_of(routes: &[Route], r: &Request) -> Option<usize> {
    route_for(
        black_box(routes),
        black_box(&r.method),
        black_box(r.path),
        black_box(&r.headers),
    )
}

/// Nanoseconds per call over `requests` in turn: the median and the fastest of the rounds.
fn time(routes: &[Route], requests: &[Request]) -> (f64, f64) {
    let pass = |times: usize| {
        let start = Instant::now();
        for _ in 0..times {
            for r in requests {
                black_box(route_of(routes, r));
            }
        }
        start.elapsed()
    };
    // Warm up, and find how many passes over `requests` take about one round.
    let mut passes = 1;
    while pass(passes) < ROUND / 4 {
        passes *= 2;
    }
    passes *= 4;
    let calls = (passes * requests.len()) as f64;
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| pass(passes).as_nanos() as f64 / calls)
        .collect();
    rounds.sort_by(f64::total_cmp);
    (rounds[ROUNDS / 2], rounds[0])
}

//! Route matching (docs/ARCHITECTURE.md §3, `[[route]]`) allocates nothing: with the 50 routes
//! of `tests/fixtures/routes50.toml`, loaded by the real loader, 10,000 requests (hits on the
//! first, a middle and the last route, and misses that try all 50) make no allocation. Each
//! request's route is checked too. `benches/route_match.rs` times the same routes.
//!
//! Allocations are counted on this thread only, by `allocation_counter`'s global allocator (over
//! `System`), so the test harness's other threads cannot add to or hide from the count.

use std::hint::black_box;

use allocation_counter::measure;
use fusebox::policy::route::route_for;
use fusebox::policy::Route;
use http::{HeaderMap, Method};

#[path = "fixtures/shop.rs"]
mod shop;

/// A request, and the name of the route it takes (`None`: the policy's own).
struct Request {
    method: Method,
    path: &'static str,
    headers: HeaderMap,
    route: Option<&'static str>,
}

fn request(
    method: Method,
    path: &'static str,
    extra: &[(&'static str, &'static str)],
    route: Option<&'static str>,
) -> Request {
    Request {
        method,
        path,
        headers: shop::headers(extra),
        route,
    }
}

/// Hits near the start, in the middle and at the end of the list, and misses.
fn requests() -> Vec<Request> {
    vec![
        request(Method::GET, "/healthz", &[], Some("health")),
        request(Method::GET, "/v1/users/42", &[], Some("user-get")),
        request(Method::PATCH, "/v1/users/42", &[], Some("user-update")),
        request(
            Method::POST,
            "/v1/orders",
            &[("idempotency-key", "k-1")],
            Some("orders-create"),
        ),
        request(
            Method::POST,
            "/v1/payments/p_9/refunds",
            &[],
            Some("refunds"),
        ),
        request(
            Method::POST,
            "/v1/payments/p_9",
            &[("x-tier", "silver"), ("x-tier", "gold")],
            Some("payments-gold"),
        ),
        request(Method::POST, "/v1/payments/p_9", &[], Some("payments")),
        request(Method::PUT, "/v1/carts/7/items/3", &[], Some("cart-items")),
        request(
            Method::GET,
            "/v1/files/a/b.pdf",
            &[],
            Some("files-download"),
        ),
        request(
            Method::DELETE,
            "/admin/cache",
            &[("x-tier", "gold")],
            Some("admin-gold"),
        ),
        request(
            Method::GET,
            "/v1/orders/42/shipments/7/labels",
            &[("x-debug", "1")],
            Some("debug"),
        ),
        // Misses: each tries all 50 routes.
        request(Method::GET, "/v1/orders/42/shipments/7/labels", &[], None),
        request(Method::POST, "/v1/orders", &[], None),
        request(Method::DELETE, "/v1/orders/42", &[], None),
        request(Method::PATCH, "/v1/carts/7", &[("x-debug", "0")], None),
        request(Method::GET, "/v3/anything", &[], None),
    ]
}

fn route_of(routes: &[Route], r: &Request) -> Option<usize> {
    route_for(
        black_box(routes),
        black_box(&r.method),
        black_box(r.path),
        black_box(&r.headers),
    )
}

#[test]
fn each_request_takes_its_route() {
    let routes = shop::routes();
    for r in &requests() {
        let got = route_of(&routes, r).map(|i| routes[i].name.as_str());
        assert_eq!(got, r.route, "{} {}", r.method, r.path);
    }
    let index = |name: &str| routes.iter().position(|r| r.name == name);
    // The first, a middle and the last route are among the hits.
    assert_eq!(index("health"), Some(0));
    assert_eq!(index("cart-items"), Some(24));
    assert_eq!(index("debug"), Some(49));
    let misses = requests().iter().filter(|r| r.route.is_none()).count();
    assert!(misses >= 4, "{misses} misses");
}

#[test]
fn matching_allocates_nothing() {
    let routes = shop::routes();
    let requests = requests();
    let matched = |extra: bool| {
        let mut taken = 0_usize;
        let info = measure(|| {
            for i in 0..10_000 {
                let r = &requests[i % requests.len()];
                taken += usize::from(route_of(&routes, r).is_some());
            }
            if extra {
                black_box(String::from("x"));
            }
        });
        (info.count_total, taken)
    };
    let (allocations, taken) = matched(false);
    assert_eq!(
        allocations, 0,
        "10,000 matches allocated {allocations} times"
    );
    let hits = (0..10_000)
        .filter(|i| requests[i % requests.len()].route.is_some())
        .count();
    assert_eq!(taken, hits);
    // The zero is the counter's: one allocation in the same region is seen.
    let (with_one, _) = matched(true);
    assert_eq!(
        with_one, 1,
        "the counter does not count this thread's allocations"
    );
}

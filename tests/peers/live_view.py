#!/usr/bin/env python3
"""The live view (GET / on the admin port) in a real browser, against a real fusebox under
traffic: Playwright for Python driving Debian's chromium (/usr/bin/chromium, never a browser
of Playwright's own). Run by tests/live_view.rs, which starts fusebox and the fake upstreams and
passes their addresses; this script is the app (requests through the proxy) and the operator
(the page).

What it checks, failing with a message on the first miss:
  1. a page opened before a breaker trips shows it `open` within 2 s of the tripping response,
     never reloaded, with the reason in words and the probe countdown; a half-open breaker
     shows `half-open`, shadow mode is marked, an ejected endpoint is listed behind the row's
     disclosure, and rows come trouble first;
  2. a wrong admin token gets the server's JSON error in the status region; the right one
     gives each row "Force open" and "Reset" buttons, and Reset turns the row `closed`;
  2b. a destination's routes are listed behind its row's disclosure (name, what it matches,
     its breaker); a route's own breaker tripped by the upstream's 500s shows in the row
     (`route reports open`) within 2 s, never reloaded, while the destination's stays
     `closed`; the row then comes before a closed one with a higher error rate (trouble
     first); the route's Force open and Reset buttons reach its breaker (`/upstreams`
     `routes[0].breaker` says so);
  3. names from outside (a policy file named `<img src=x onerror=alert(1)>`, a destination an
     app sent as `&lt;img_src=x_onerror=alert(1)&gt;'-alert(1)-'.test:9`) show as literal text:
     no <img> element, no dialog; commands on them reach their breaker, or the server's refusal
     is shown as text;
  4. an accessibility snapshot of the table holds the row's cells (saved beside the screenshot);
  5. with 1,000+ destinations the page renders one page of rows, pages, its filter finds one
     destination and shows that destination's own counts (times printed); the page open all
     along takes the 1,000 new rows as updates;
  6. throughout: no console error, no uncaught exception, no CSP or Trusted Types violation, no
     failed request, no dialog.

Prints `measure NAME VALUE` lines and `saved PATH` for each file written.
"""

import argparse
import concurrent.futures
import re
import socket
import threading
import time
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 2000
HOSTILE_UPSTREAM = "<img src=x onerror=alert(1)>"
# What an app can put in a destination: fusebox refuses `<`, `>`, `"` and spaces in a Host
# (400), but `&`, `'`, `(`, `)`, `;`, `=` get through into the destination's name.
HOSTILE_DESTINATION = "&lt;img_src=x_onerror=alert(1)&gt;'-alert(1)-'.test:9"

# Runs before the page's own scripts: records CSP (and Trusted Types) violations, long tasks,
# and when the table first shows at least `window.__fullRows` rows in total.
INIT_SCRIPT = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI} at ${where}`);
});
window.__longTasks = [];
try {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
  }).observe({ type: 'longtask', buffered: true });
} catch (e) {}
window.__fullRows = __FULL_ROWS__;
new MutationObserver(() => {
  if (window.__firstFull || !window.__fullRows) return;
  const range = document.getElementById('range');
  const m = range && /of (\\d+)/.exec(range.textContent);
  if (m && Number(m[1]) >= window.__fullRows) window.__firstFull = performance.now();
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


class Problems:
    """Everything that must not happen on a page, collected as it happens."""

    def __init__(self):
        self.items = []
        # Statuses a step provokes on purpose (the browser logs them as console errors).
        self.allowed = set()

    def watch(self, page):
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.items.append(f"uncaught exception: {error}"))
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type not in ("error", "warning"):
            return
        text = message.text
        if any(f"status of {status} " in text for status in self.allowed):
            return
        self.items.append(f"console {message.type}: {text}")

    def _request_failed(self, request):
        # The event stream is cut when a page closes; that is not a failure of the page.
        if request.url.endswith("/events") and request.failure == "net::ERR_ABORTED":
            return
        self.items.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response):
        if response.status >= 400 and response.status not in self.allowed:
            self.items.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _dialog(self, dialog):
        self.items.append(f"dialog opened: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    def check(self, page):
        violations = page.evaluate("window.__violations")
        problems = self.items + [f"CSP violation: {v}" for v in violations]
        assert not problems, "the page misbehaved:\n  " + "\n  ".join(problems)


class App:
    """An app sending its requests through fusebox."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.local = threading.local()

    def session(self):
        if not hasattr(self.local, "session"):
            session = requests.Session()
            session.trust_env = False
            session.proxies = {"http": self.proxy}
            self.local.session = session
        return self.local.session

    def get(self, url, timeout=10):
        return self.session().get(url, timeout=timeout)

    def raw_get(self, authority):
        """A request whose Host and absolute URI carry `authority` as is (requests would
        normalise it); the status line's code."""
        host, port = self.proxy.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        return int(head.split()[1])


def row(page, upstream, destination):
    """The table row of this destination (its header cell is the destination)."""
    return page.locator("#rows tr").filter(
        has=page.get_by_role("rowheader", name=destination, exact=True)
    ).filter(has=page.get_by_role("cell", name=upstream, exact=True))


def badge(page, upstream, destination):
    return row(page, upstream, destination).locator(".badge")


def open_page(browser, admin, problems, full_rows=0):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.add_init_script(INIT_SCRIPT.replace("__FULL_ROWS__", str(full_rows)))
    problems.watch(page)
    page.goto(admin + "/")
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    return page


def trip_and_watch(page, app, args):
    """The failing destination shows closed, then open within 2 s of the tripping answer."""
    failing = args.failing
    assert app.get(f"http://{failing}/").status_code == 500
    expect(badge(page, "failing", failing)).to_have_text("closed", timeout=WAIT_MS)
    for _ in range(args.failing_trip - 1):
        assert app.get(f"http://{failing}/").status_code == 500
    tripped = time.monotonic()
    expect(badge(page, "failing", failing)).to_have_text("open", timeout=WAIT_MS)
    print(f"measure trip_to_open_on_page_ms {(time.monotonic() - tripped) * 1000:.0f}")
    the_row = row(page, "failing", failing)
    expect(the_row.locator(".col-reason")).to_have_text(
        "tripped: too many failures in a row (breaker.consecutive_failures)"
    )
    expect(the_row.locator(".col-age")).to_have_text(re.compile(r"^\d+s$"))
    expect(the_row.locator(".col-probe")).to_have_text(re.compile(r"^in \d+"))
    # The app now gets fusebox's own answer.
    assert app.get(f"http://{failing}/").status_code == 503
    expect(page.locator("#summary")).to_contain_text("1 open")


def half_open(page, app, args):
    """A breaker whose probe hangs shows half-open."""
    search = args.search
    for _ in range(2):
        assert app.get(f"http://{search}/").status_code == 500
    expect(badge(page, "search", search)).to_have_text("open", timeout=WAIT_MS)

    def probe():
        # Local 503s until the open period is over; then the probe, which the upstream stalls.
        while True:
            try:
                if app.get(f"http://{search}/", timeout=60).status_code != 503:
                    return
            except requests.RequestException:
                return
            time.sleep(0.05)

    threading.Thread(target=probe, daemon=True).start()
    expect(badge(page, "search", search)).to_have_text("half-open", timeout=WAIT_MS)
    expect(row(page, "search", search).locator(".col-probe")).to_have_text("probing")


def save_views(page, args):
    """The screenshot and the table's accessibility snapshot, with the row's cells checked."""
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    failing = args.failing
    snapshot = page.locator("#destinations").aria_snapshot()
    for needle in [
        'caption: Destinations, trouble first',
        'columnheader "Breaker"',
        f'rowheader "{failing}"',
        'cell "failing"',
        'cell "open"',
        "tripped: too many failures in a row (breaker.consecutive_failures)",
        'cell "half-open"',
    ]:
        assert needle in snapshot, f"{needle!r} not in the accessibility snapshot:\n{snapshot}"
    aria = artifacts / "live-view.aria.yml"
    aria.write_text(snapshot + "\n")
    print(f"saved {aria.resolve()}")
    shot = artifacts / "live-view.png"
    page.screenshot(path=shot)
    print(f"saved {shot.resolve()}")
    if args.readme_shot:
        # The viewport's width, down to the end of the page's content.
        bottom = page.locator(".pager").bounding_box()
        height = min(720, int(bottom["y"] + bottom["height"]) + 12)
        clip = {"x": 0, "y": 0, "width": 1280, "height": height}
        page.screenshot(path=args.readme_shot, clip=clip)
        print(f"saved {Path(args.readme_shot).resolve()}")


def commands(page, problems, args):
    """A wrong token's refusal is shown; the right one resets the tripped breaker."""
    failing = args.failing
    expect(page.get_by_role("button", name=f"Reset failing {failing}")).to_have_count(0)
    problems.allowed = {401}
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Use", exact=True).click()
    page.get_by_role("button", name=f"Reset failing {failing}").click()
    expect(page.locator("#message")).to_contain_text(
        "this endpoint needs `Authorization: Bearer <token>`", timeout=WAIT_MS
    )
    expect(page.locator("#message")).to_contain_text("(HTTP 401)")
    expect(badge(page, "failing", failing)).to_have_text("open")
    problems.allowed = set()

    page.get_by_label("Admin token").fill(args.token)
    page.get_by_label("Admin token").press("Enter")
    page.get_by_role("button", name=f"Reset failing {failing}").click()
    expect(badge(page, "failing", failing)).to_have_text("closed", timeout=WAIT_MS)
    expect(row(page, "failing", failing).locator(".col-reason")).to_have_text(
        "reset by an operator (admin API), not a connection reset"
    )
    expect(page.locator("#summary")).to_contain_text("0 open")


def routes(page, app, args):
    """A route's own breaker trips alone, shows in its row and answers the page's commands."""
    routed = args.routed
    # No destination of a policy with routes yet: the table has no Routes column.
    routes_head = page.locator("#destinations thead .col-routes")
    expect(routes_head).to_be_hidden()
    for _ in range(20):
        assert app.get(f"http://{routed}/v1/status").status_code == 200
    the_row = row(page, "routed", routed)
    expect(routes_head).to_be_visible(timeout=WAIT_MS)
    expect(badge(page, "routed", routed)).to_have_text("closed", timeout=WAIT_MS)
    summary = the_row.locator(".col-routes summary")
    expect(summary).to_have_text("2 routes")
    summary.click()
    routes_cell = the_row.locator(".col-routes")
    expect(routes_cell.locator(".route-name")).to_have_text(["reports", "status"])
    expect(routes_cell.locator(".route-matches")).to_have_text(
        ["any method path_prefix /v1/reports", "GET path /v1/status"]
    )
    own, shared = routes_cell.locator(".route-breaker").all()
    expect(own).to_have_text(re.compile(r"^own breaker closed \d+s$"))
    expect(shared).to_have_text("shared breaker")
    expect(the_row.locator(".tag-route")).to_have_count(0)

    for _ in range(args.failing_trip):
        assert app.get(f"http://{routed}/v1/reports").status_code == 500
    tripped = time.monotonic()
    expect(the_row.locator(".tag-route")).to_have_text("route reports open", timeout=WAIT_MS)
    print(f"measure route_trip_to_open_on_page_ms {(time.monotonic() - tripped) * 1000:.0f}")
    expect(badge(page, "routed", routed)).to_have_text("closed")
    expect(summary).to_have_text("2 routes · 1 open")
    expect(own).to_have_text(
        re.compile(r"^own breaker open \d+s · consecutive_failures · next probe in \d+")
    )
    expect(page.locator("#summary")).to_contain_text("1 route breaker tripped")
    # fusebox answers the route itself; the rest of the destination is served.
    assert app.get(f"http://{routed}/v1/reports").status_code == 503
    assert app.get(f"http://{routed}/v1/status").status_code == 200
    trouble_first(page, app, args)

    commands = [("Force open", "open", "open"), ("Reset", "closed", None)]
    for label, state, forced in commands:
        page.get_by_role("button", name=f"{label} route reports of routed {routed}").click()
        expect(page.locator("#message")).to_have_text(
            f"{label}: sent for route reports of routed {routed}", timeout=WAIT_MS
        )
        breaker = route_breaker(args, "reports")
        assert (breaker["state"], breaker["forced"]) == (state, forced), breaker
        tags = the_row.locator(".tag-route")
        if forced:
            expect(tags).to_have_text("route reports forced open", timeout=WAIT_MS)
        else:
            expect(tags).to_have_count(0, timeout=WAIT_MS)
    expect(own).to_have_text(re.compile(r"^own breaker closed \d+s · reset$"))
    expect(summary).to_have_text("2 routes")
    expect(badge(page, "routed", routed)).to_have_text("closed")


def trouble_first(page, app, args):
    """The routed row (its destination closed, a route open) comes before `failing` (closed
    since its reset, now failing again) although `failing` has the higher error rate."""
    failing = args.failing
    for _ in range(args.failing_trip - 1):
        assert app.get(f"http://{failing}/").status_code == 500
    # Its tripping requests, the refused one, and these.
    expect(row(page, "failing", failing).locator(".col-totals span").first).to_have_text(
        f"{2 * args.failing_trip} req", timeout=WAIT_MS
    )
    errors = {
        name: float(row(page, name, dest).locator(".col-errors").text_content())
        for name, dest in [("failing", failing), ("routed", args.routed)]
    }
    assert errors["failing"] > errors["routed"], errors
    order = page.locator("#rows tr th").all_text_contents()
    assert order.index(args.routed) < order.index(failing), order


def route_breaker(args, name):
    """The breaker of the routed destination's route `name` in /upstreams."""
    views = requests.get(
        f"{args.admin}/upstreams/routed",
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=10,
    ).json()
    (view,) = views
    assert view["state"] == "closed", view
    (route,) = [r for r in view["routes"] if r["name"] == name]
    return route["breaker"]


def hostile_names(page, problems, args):
    """Outside names stay text; commands on them reach their breakers."""
    evil = row(page, HOSTILE_UPSTREAM, args.evil_destination)
    expect(evil.locator(".col-upstream")).to_have_text(HOSTILE_UPSTREAM)
    # The policy's name goes percent-encoded in the command's path.
    force_and_reset(page, HOSTILE_UPSTREAM, args.evil_destination)
    # The endpoints of the policy with `endpoints`, behind a disclosure.
    summary = evil.locator(".col-endpoints summary")
    expect(summary).to_have_text("1/1 ready")
    summary.click()
    expect(evil.locator(".col-endpoints li")).to_contain_text(f"{args.evil_destination} ready")

    app_made = row(page, "default", HOSTILE_DESTINATION)
    expect(app_made.locator(".col-destination")).to_have_text(HOSTILE_DESTINATION)
    # The admin API names every destination the proxy keys (RFC 3986 sub-delims included),
    # so the commands reach this one too, and the page's message keeps the name as text.
    page.get_by_role("button", name=f"Force open default {HOSTILE_DESTINATION}").click()
    message = page.locator("#message")
    expect(message).to_contain_text(f"sent for default {HOSTILE_DESTINATION}", timeout=WAIT_MS)
    expect(badge(page, "default", HOSTILE_DESTINATION)).to_have_text("open", timeout=WAIT_MS)
    force_and_reset(page, "default", HOSTILE_DESTINATION)
    problems.allowed = set()
    assert page.locator("img").count() == 0, "a name became an <img> element"


def force_and_reset(page, upstream, destination):
    page.get_by_role("button", name=f"Force open {upstream} {destination}").click()
    expect(badge(page, upstream, destination)).to_have_text("open", timeout=WAIT_MS)
    expect(row(page, upstream, destination).locator(".tag-forced")).to_have_text("forced open")
    expect(row(page, upstream, destination).locator(".col-probe")).to_have_text("none: forced")
    page.get_by_role("button", name=f"Reset {upstream} {destination}").click()
    expect(badge(page, upstream, destination)).to_have_text("closed", timeout=WAIT_MS)


def print_long_tasks(name, durations):
    longest = max(durations, default=0)
    print(f"measure long_tasks_{name} {len(durations)} longest_ms {longest:.0f}")


def many_destinations(browser, problems, app, args):
    """1,000 more destinations (each a loopback address nobody listens on), then a fresh page."""
    port = args.refused_port
    hosts = [f"127.1.{i // 250}.{i % 250 + 1}:{port}" for i in range(args.many)]

    def send(host):
        return app.get(f"http://{host}/").status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = set(pool.map(send, hosts))
    print(f"measure many_requests_s {time.monotonic() - started:.2f}")
    assert statuses == {502}, statuses

    total = int(requests.get(args.admin + "/upstreams", timeout=10).text.count('"upstream"'))
    assert total >= args.many, total
    page = open_page(browser, args.admin, problems, full_rows=total)
    rng = page.locator("#range")
    expect(rng).to_have_text(f"rows 1–50 of {total}", timeout=WAIT_MS)
    first = page.evaluate("window.__firstFull")
    print(f"measure first_render_{total}_rows_ms {first:.0f}")
    expect(page.locator("#rows tr")).to_have_count(50)
    expect(page.locator("#summary")).to_contain_text(f"{total} destinations")

    page.get_by_role("button", name="Next").click()
    expect(rng).to_have_text(f"rows 51–100 of {total}")
    wanted = hosts[637]
    took = page.evaluate(
        """async (text) => {
          const input = document.getElementById('filter');
          const start = performance.now();
          input.value = text;
          input.dispatchEvent(new Event('input'));
          await new Promise((done) => requestAnimationFrame(() => setTimeout(done)));
          return performance.now() - start;
        }""",
        wanted,
    )
    print(f"measure filter_{total}_rows_ms {took:.1f}")
    expect(rng).to_have_text(f"rows 1–1 of 1 (filtered from {total})")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(badge(page, "default", wanted)).to_have_text("closed")
    # Its own counts, not those of the destinations past `metrics_max_destinations` together.
    expect(row(page, "default", wanted).locator(".col-totals span")).to_have_text(
        ["1 req", "1 err · 0 rej"]
    )
    long_tasks = page.evaluate("window.__longTasks")
    print_long_tasks(f"{total}_rows", long_tasks)
    problems.check(page)
    page.close()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin", required=True, help="http://IP:PORT of the admin server")
    parser.add_argument("--proxy", required=True, help="http://IP:PORT of the egress listener")
    parser.add_argument("--token", required=True)
    parser.add_argument("--ok", required=True, help="IP:PORT answering 200 (policies payments, ml)")
    parser.add_argument("--failing", required=True, help="IP:PORT answering 500 (policy failing)")
    parser.add_argument("--failing-trip", type=int, required=True, help="its consecutive_failures")
    parser.add_argument("--search", required=True, help="IP:PORT: 500, 500, then stalls")
    parser.add_argument("--inventory", required=True, help="IP:PORT, inventory's first endpoint")
    parser.add_argument("--routed", required=True, help="IP:PORT: 500 on /v1/reports, else 200")
    parser.add_argument("--evil-destination", required=True, help="the hostile policy's endpoint")
    parser.add_argument("--refused-port", type=int, required=True)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--readme-shot", help="also save the screenshot here")
    args = parser.parse_args()

    app = App(args.proxy)
    for _ in range(20):
        assert app.get(f"http://{args.ok}/").status_code == 200
    for _ in range(5):
        assert app.get("http://ml.test/").status_code == 200
    # One of inventory's two endpoints refuses connections: it is ejected at its first failure.
    statuses = [app.get("http://inventory.test/").status_code for _ in range(10)]
    assert 200 in statuses and set(statuses) <= {200, 502}, statuses

    problems = Problems()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_page(browser, args.admin, problems)
        expect(badge(page, "payments", args.ok)).to_have_text("closed", timeout=WAIT_MS)
        expect(row(page, "ml", args.ok).locator(".tag-shadow")).to_have_text("shadow")
        inventory = row(page, "inventory", args.inventory)
        expect(inventory.locator(".col-endpoints summary")).to_have_text("1/2 ready")
        inventory.locator(".col-endpoints summary").click()
        expect(inventory.locator(".col-endpoints li")).to_have_text([
            re.compile(rf"^{re.escape(args.inventory)} ready · \d+ ok · 0 failed$"),
            re.compile(r"^127\.255\.255\.254:\d+ ejected (\d+m )?\d+s more · 0 ok · 1 failed$"),
        ])
        trip_and_watch(page, app, args)
        half_open(page, app, args)
        # Trouble first: open, half-open, then the one with an ejected endpoint.
        expect(page.locator("#rows tr th")).to_have_text(
            [args.failing, args.search, args.inventory, args.ok, args.ok]
        )
        save_views(page, args)

        # Names from outside: a hostile policy file name, a hostile host from an app.
        for _ in range(5):
            assert app.get("http://evil.test/").status_code == 200
        assert app.raw_get(HOSTILE_DESTINATION) == 502
        commands(page, problems, args)
        routes(page, app, args)
        hostile_names(page, problems, args)
        problems.check(page)
        total = many_destinations(browser, problems, app, args)
        # The first page, open all along, took the 1,000 new rows as updates.
        expect(page.locator("#summary")).to_contain_text(f"{total} destinations", timeout=WAIT_MS)
        expect(page.locator("#connection")).to_have_text("live")
        long_tasks = page.evaluate("window.__longTasks")
        print_long_tasks("first_page", long_tasks)
        problems.check(page)
        browser.close()
    print("live view: every check passed")


if __name__ == "__main__":
    main()

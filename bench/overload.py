#!/usr/bin/env python3
"""Overload (docs/ARCHITECTURE.md §18): adaptive concurrency limits against fixed ones, open loop.

One upstream (`fusebox-loadgen queue-upstream` on 127.0.0.11) serves at most 50 requests at a
time, 10 ms each: a capacity of 5,000 requests/s. Beyond 50 the rest wait in a FIFO queue
(`queue`), or get `429` at once (`reject`, the upstream's `--reject-beyond`). Like a thread-pool
server, the upstream serves every request it has read even when fusebox has given up on it
meanwhile: the queue of abandoned requests still costs capacity (the `wasted` column).

An open-loop generator (`fusebox-loadgen load`: each request sent at its planned time and its
latency measured from that time, HDR histograms; at most 2,000 kept-alive connections, like an
app's pool, 256 of them opened beforehand; a request waiting for a free connection waits in the
app, and that counts too) offers 0.5× → 3× → 0.5× the capacity (2,500, 15,000, 2,500
requests/s for 10 s, 20 s, 10 s) through fusebox's egress listener (`--workers 2`, FUSEBOX_BIN
or target/release/fusebox), with the destination's policy in one of four forms, each on a
fresh fusebox and upstream:

- `fixed-unlimited`: `[concurrency] max_in_flight = 0` (today's default);
- `fixed-50`: `max_in_flight = 50` (the perfectly hand-tuned baseline);
- `aimd`: `[concurrency] mode = "aimd"`;
- `gradient`: `[concurrency] mode = "gradient"`;

each with `[retry] attempts = 1` and `[breaker] mode = "off"`, so that only the concurrency
limit acts, and `timeouts.attempt` = `total` = 2 s. `fusebox_concurrency_limit` (and
`fusebox_in_flight`) are read from the admin `/metrics` every second. With `fixed-unlimited`
and the queueing upstream it is the app's 2,000 connections that bound the queue: 2,000 in the
upstream's queue wait 0.4 s, under fusebox's 2 s, and the rest waits in the app until its 5 s
timeout (`--connections` moves that bound, up to what the open-file limit allows fusebox: two
descriptors a request).

Printed per upstream mode, one row per policy: goodput (2xx answers a second arriving during
the 3× phase) as a share of capacity; p50 of the first phase (the *unloaded* latency) and the p99
of the admitted (2xx) requests planned in each phase, also as a multiple of it; fusebox's own
replies (`x-fusebox-reason`: overflow, timeout ...) to requests of the 3× phase and after it;
the upstream's 429s; the app's errors (its 5 s timeout, waiting for a free connection included);
`wasted`: requests the upstream served after fusebox had given up on them; the limit's median
over the second half of the 3× phase; *converge*: seconds from the load's rise until the limit
stays within ±20 % of that median (the first per-second sample from which on it does);
*recover*: seconds from the load's drop to the first second from which on every second is
clean: no local reply (nor app error), some 2xx, and a p99 ≤ 1.5× the unloaded p50.
Resolution: 1 s. (The upstream's own 429s do not count against recovery: at 0.5× a hiccup of
the 2-core machine can bunch enough requests to find its 50 slots taken.)

Targets (`aimd` and `gradient`, both upstream modes): goodput ≥ 90 % of capacity at 3×, p99 of
the admitted requests at 3× ≤ 3× the unloaded p50, converge ≤ 10 s, recover ≤ 10 s. A policy
this fusebox refuses (`fusebox check` fails: keys it does not know yet) is reported as not run,
and its targets FAIL.

Usage: python3 bench/overload.py [--quick] [--check] [--scenarios fixed-50,aimd]
           [--upstreams queue,reject] [--phases 10,20,10] [--connections 2000] [--raw DIR]
           [--verbose] [--print-policies]
`--quick`: phases of 3, 6 and 4 s (development; the 10 s targets are then not meaningful).
`--check`: exit 1 when a target fails. About 6 minutes on 2 cores (40 s a run, 8 runs).
Needs: python3, cargo (builds bench/loadgen into target/loadgen; LOADGEN_BIN overrides).
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import (PolicyRefused, Processes, free_port, fusebox_binary,  # noqa: E402
                      http_request, loadgen_binary, run_load, start_fusebox, wait_http)

UPSTREAM = "127.0.0.11"
CONCURRENCY = 50
SERVICE_MS = 10
CAPACITY = CONCURRENCY * 1000 // SERVICE_MS  # requests/s
LOADS = (0.5, 3.0, 0.5)  # multiples of CAPACITY, one per phase
POLICY_NAME = "svc"
# App connections opened before the first request: enough for the limited policies at 3×
# (about 15,000/s × 10 ms), so that the rise does not open a burst of them at once, which a
# listener's short accept backlog (fusebox's is 128) answers with dropped SYNs, retransmitted
# after 1 s: a latency of the setup, not of the limit.
PRECONNECT = 256

CONCURRENCY_TABLES = {
    "fixed-unlimited": "[concurrency]\nmax_in_flight = 0\n",
    "fixed-50": "[concurrency]\nmax_in_flight = 50\n",
    "aimd": '[concurrency]\nmode = "aimd"\n',
    "gradient": '[concurrency]\nmode = "gradient"\n',
}
TARGETED = ("aimd", "gradient")
UPSTREAM_MODES = {"queue": [], "reject": ["--reject-beyond"]}

GOODPUT_MIN = 0.90      # of capacity, 3× phase
P99_MAX = 3.0           # × unloaded p50, 3× phase
CONVERGE_MAX = 10.0     # s
RECOVER_MAX = 10.0      # s
CONVERGE_BAND = 0.20    # ± around the limit's median
RECOVER_P99 = 1.5       # × unloaded p50


def policy_text(scenario, upstream_port):
    return (f'hosts = ["{UPSTREAM}:{upstream_port}"]\n'
            '[timeouts]\nattempt = "2s"\ntotal = "2s"\n'
            '[retry]\nattempts = 1\n'
            '[breaker]\nmode = "off"\n'
            + CONCURRENCY_TABLES[scenario])


def metric(sample, name):
    """The value of `name` in one second's sample: its series with our policy's `upstream`
    label (or, without such a label, all its series), summed; None if there is none (not
    exported by this fusebox, or the sample failed)."""
    if not sample:
        return None
    series = {k: v for k, v in sample.items() if k == name or k.startswith(name + "{")}
    ours = [v for k, v in series.items() if f'upstream="{POLICY_NAME}"' in k]
    values = ours or list(series.values())
    return sum(values) if values else None


def run(binary, loadgen, scenario, mode, phase_secs, args):
    """One run on a fresh upstream and fusebox: the loadgen's lines and the upstream's stats."""
    rates = [int(CAPACITY * m) for m in LOADS]
    with tempfile.TemporaryDirectory(prefix="fusebox-bench-overload.") as work, \
            Processes() as procs:
        port = free_port()
        upstream = procs.start([loadgen, "queue-upstream", "--listen", f"{UPSTREAM}:{port}",
                                "--concurrency", CONCURRENCY, "--service", f"{SERVICE_MS}ms",
                                *UPSTREAM_MODES[mode]],
                               log=pathlib.Path(work) / "upstream.log")
        wait_http(UPSTREAM, port, "/stats", upstream)
        policies = pathlib.Path(work) / "policies"
        policies.mkdir()
        (policies / f"{POLICY_NAME}.toml").write_text(policy_text(scenario, port))
        try:
            _, listen, admin = start_fusebox(procs, binary, policies, work)
        except PolicyRefused as e:
            return {"scenario": scenario, "mode": mode, "refused": str(e)}

        def show(line):
            if args.verbose:
                limit = metric(line.get("sample"), "fusebox_concurrency_limit")
                in_flight = metric(line.get("sample"), "fusebox_in_flight")
                print(f"  {scenario}/{mode} t={line['t']:>3} sent={line['sent']:>6} "
                      f"ok={line['ok']:>6} local={line['local']:>6} 429={line['upstream_429']:>6} "
                      f"err={line['errors']:>5} p50={line['p50_ms']} p99={line['p99_ms']} "
                      f"limit={limit} in_flight={in_flight} conns={line['connections']} "
                      f"waiting={line['waiting']} lag_p99={line['lag_p99_ms']}", flush=True)

        phases = ",".join(f"{r}:{s}" for r, s in zip(rates, phase_secs))
        seconds, phase_lines, total = run_load(loadgen, [
            "--proxy", f"127.0.0.1:{listen}", "--url", f"http://{UPSTREAM}:{port}/",
            "--phases", phases, "--connections", args.connections, "--timeout", "5s",
            "--preconnect", min(PRECONNECT, args.connections),
            "--sample", f"http://127.0.0.1:{admin}/metrics",
            "--sample-metric", "fusebox_concurrency_limit,fusebox_in_flight"], show)
        stats = json.loads(http_request("GET", UPSTREAM, port, "/stats")[1])
    return {"scenario": scenario, "mode": mode, "seconds": seconds, "phases": phase_lines,
            "total": total, "upstream": stats, "phase_secs": phase_secs}


def analyse(r):
    """The table's figures of one run."""
    secs = r["phase_secs"]
    begins = [sum(secs[:i]) for i in range(len(secs))]
    p = r["phases"]
    unloaded = p[0]["p50_ms"]
    # Goodput: 2xx answers that arrived during the 3× phase (per-second lines, the second
    # [t-1, t) inside it), whenever they were planned.
    lo, hi = begins[1], begins[1] + secs[1]
    during = [s for s in r["seconds"] if lo < s["t"] <= hi]
    a = {"unloaded_ms": unloaded,
         "goodput": sum(s["ok"] for s in during) / max(1, len(during)) / CAPACITY,
         "p99": [ph["p99_ms"] for ph in p],
         "local_3x": p[1]["local"], "local_after": p[2]["local"],
         "reasons_3x": p[1]["local_reasons"],
         "upstream_429": sum(ph["upstream_429"] for ph in p),
         "errors": sum(ph["errors"] for ph in p),
         "error_kinds": r["total"]["error_kinds"],
         "local_reasons": r["total"]["local_reasons"],
         "wasted": r["upstream"].get("abandoned", 0)}
    # The limit during the 3× phase: samples taken at t in (begin, end].
    limits = [(s["t"], metric(s.get("sample"), "fusebox_concurrency_limit"))
              for s in r["seconds"] if lo < s["t"] <= hi]
    limits = [(t, v) for t, v in limits if v is not None]
    a["limit"] = a["converge"] = None
    if limits:
        second_half = [v for t, v in limits if t > lo + secs[1] / 2] or [v for _, v in limits]
        median = statistics.median(second_half)
        a["limit"] = median
        converged_at = None
        for t, v in limits:
            inside = abs(v - median) <= CONVERGE_BAND * median
            if inside and converged_at is None:
                converged_at = t
            elif not inside:
                converged_at = None
        a["converge"] = None if converged_at is None else converged_at - lo
    # Recovery: per-second lines of the last phase (second [t-1, t) inside it).
    lo = begins[2]
    last = [s for s in r["seconds"] if lo < s["t"] <= lo + secs[2]]
    clean_from = None
    for s in last:
        clean = (s["local"] == 0 and s["errors"] == 0 and s["ok"] > 0
                 and s["p99_ms"] <= RECOVER_P99 * unloaded)
        if clean and clean_from is None:
            clean_from = s["t"] - 1
        elif not clean:
            clean_from = None
    a["recover"] = None if clean_from is None else clean_from - lo
    return a


def fmt_s(x):
    return "never" if x is None else f"{x:.0f} s"


def table(results):
    print(f"{'upstream':<8} {'policy':<16} {'goodput 3x':>10} {'p50 0.5x':>9} "
          f"{'p99 0.5x':>14} {'p99 3x':>16} {'p99 after':>14} {'local 3x':>9} "
          f"{'local after':>11} {'429 up':>7} {'errors':>7} {'wasted':>7} {'limit':>6} "
          f"{'converge':>8} {'recover':>7}")
    for r in results:
        if "refused" in r:
            print(f"{r['mode']:<8} {r['scenario']:<16} not run: fusebox refused the policy: "
                  f"{r['refused']}")
            continue
        a = r["analysis"]
        u = a["unloaded_ms"]
        p99 = [f"{x:.1f} ({x / u:.1f}×)" if x is not None else "-" for x in a["p99"]]
        limit = "-" if a["limit"] is None else f"{a['limit']:.0f}"
        converge = "-" if a["limit"] is None else fmt_s(a["converge"])
        print(f"{r['mode']:<8} {r['scenario']:<16} {a['goodput'] * 100:>9.1f}% {u:>9.1f} "
              f"{p99[0]:>14} {p99[1]:>16} {p99[2]:>14} {a['local_3x']:>9} {a['local_after']:>11} "
              f"{a['upstream_429']:>7} {a['errors']:>7} {a['wasted']:>7} {limit:>6} "
              f"{converge:>8} {fmt_s(a['recover']):>7}", flush=True)
    for r in results:
        if "refused" not in r and (r["analysis"]["local_reasons"] or r["analysis"]["error_kinds"]):
            a = r["analysis"]
            print(f"  {r['scenario']}: local replies {json.dumps(a['local_reasons'])}, "
                  f"errors {json.dumps(a['error_kinds'])}")


def checks(results):
    """PASS/FAIL lines of the targets; True when every one passed."""
    ok = True
    for r in results:
        if r["scenario"] not in TARGETED:
            continue
        name = f"{r['mode']}/{r['scenario']}"
        if "refused" in r:
            print(f"FAIL {name}: not run ({r['refused']})")
            ok = False
            continue
        a = r["analysis"]
        u = a["unloaded_ms"]
        p99 = a["p99"][1]
        converge = (fmt_s(a["converge"]) if a["limit"] is not None
                    else "n/a (no fusebox_concurrency_limit)")
        rows = [
            (a["goodput"] >= GOODPUT_MIN,
             f"goodput at 3x {a['goodput'] * 100:.1f} % of capacity "
             f"(target >= {GOODPUT_MIN * 100:.0f} %)"),
            (p99 is not None and p99 <= P99_MAX * u,
             f"p99 of admitted at 3x {p99} ms = {(p99 or 0) / u:.2f}x unloaded p50 {u:.1f} ms "
             f"(target <= {P99_MAX:.0f}x)"),
            (a["converge"] is not None and a["converge"] <= CONVERGE_MAX,
             f"limit converges in {converge} (target <= {CONVERGE_MAX:.0f} s)"),
            (a["recover"] is not None and a["recover"] <= RECOVER_MAX,
             f"recovers in {fmt_s(a['recover'])} (target <= {RECOVER_MAX:.0f} s)"),
        ]
        for passed, text in rows:
            print(f"{'PASS' if passed else 'FAIL'} {name}: {text}")
            ok &= passed
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="phases of 3, 6 and 4 s")
    parser.add_argument("--phases", help="seconds of the 0.5x, 3x, 0.5x phases (default 10,20,10)")
    parser.add_argument("--scenarios", default=",".join(CONCURRENCY_TABLES))
    parser.add_argument("--upstreams", default=",".join(UPSTREAM_MODES))
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--raw", help="directory for each run's loadgen lines (JSON)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every second")
    parser.add_argument("--print-policies", action="store_true",
                        help="print the policy of each scenario and exit")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    modes = [m for m in args.upstreams.split(",") if m]
    for s in scenarios:
        if s not in CONCURRENCY_TABLES:
            parser.error(f"unknown scenario {s} ({', '.join(CONCURRENCY_TABLES)})")
    for m in modes:
        if m not in UPSTREAM_MODES:
            parser.error(f"unknown upstream mode {m} ({', '.join(UPSTREAM_MODES)})")
    if args.print_policies:
        for s in scenarios:
            print(f"# {s}.toml (PORT: the upstream's)\n{policy_text(s, 'PORT')}")
        return 0
    phase_secs = ([3, 6, 4] if args.quick else [10, 20, 10]) if not args.phases else \
        [int(x) for x in args.phases.split(",")]
    if len(phase_secs) != 3:
        parser.error("--phases takes three durations in seconds")

    binary, loadgen = fusebox_binary(), loadgen_binary()
    rates = [int(CAPACITY * m) for m in LOADS]
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores, {binary}; "
          f"upstream {CONCURRENCY} at a time x {SERVICE_MS} ms = {CAPACITY} requests/s; open loop "
          + " -> ".join(f"{r}/s for {s} s" for r, s in zip(rates, phase_secs))
          + f"; at most {args.connections} app connections", flush=True)
    results = []
    for mode in modes:
        mode_results = []
        for scenario in scenarios:
            r = run(binary, loadgen, scenario, mode, phase_secs, args)
            if "refused" not in r:
                r["analysis"] = analyse(r)
            mode_results.append(r)
            if args.raw:
                raw = pathlib.Path(args.raw)
                raw.mkdir(parents=True, exist_ok=True)
                (raw / f"overload-{mode}-{scenario}.json").write_text(json.dumps(r, indent=1))
        what = "429 at once" if mode == "reject" else "a FIFO queue"
        print(f"\n## upstream: {mode} ({what} beyond capacity)")
        table(mode_results)
        results += mode_results
    print()
    passed = checks(results)
    if args.check and not passed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

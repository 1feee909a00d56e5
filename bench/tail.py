#!/usr/bin/env python3
"""Tail (docs/ARCHITECTURE.md §18): hedged requests against a slow tail, open loop.

Ten upstreams (`fusebox-loadgen tail-upstream`, one process listening on 127.0.0.11 …
127.0.0.20, one port) answer in 10 ms, except a seeded-random 1 % of requests, which take 1 s.
fusebox (`--workers 2`, FUSEBOX_BIN or target/release/fusebox) sends a route listener's traffic
to all ten (`endpoints`, `[retry] attempts = 2`, `[breaker] mode = "off"`). An open-loop
generator (`fusebox-loadgen load`: each request sent at its planned time, its latency measured
from that time, HDR histograms) sends 500 requests/s for 40 s to the route listener. Runs, each
on a fresh fusebox and fresh upstreams:

- `no-hedge`: no `[hedge]` table;
- `hedge-p95`: `[hedge] enabled = true, delay = "p95", max_extra_load = 0.05`;
- `hedge-all-slow`: the same policy; halfway through, `POST /control?all=100ms` to every
  upstream, so that every request is now slower than the p95 learned before.

Printed per run: p50 / p99 / p99.9 / max of the 2xx answers, non-2xx answers and errors, and
*extra requests* = (requests the upstreams received ÷ requests the app sent) − 1 (hedges and
retries). For `hedge-all-slow` each half also gets a row of its own, the extra counted from
the upstreams' counts at the start, just before the switch and at the end. With 1 % of the
answers slow, the p99 without hedging sits on the edge between the fast answers and the slow
ones: a run may give either (tens of ms or 1 s); p99.9 is the slow tail.

Targets: `hedge-p95` p99.9 ≤ 5× its p50 and extra ≤ 5 %; `hedge-all-slow` extra during the
slow half ≤ 5 % + 1 percentage point (`--allowance`): the allowance covers what a budget
measured over a window can spend at once when every request turns slow (one second's worth of
a 10 s window at 500 requests/s is 0.25 points over a 20 s half; at `--quick`'s 5 s half,
1 point) and the requests in flight at the switch. A policy this fusebox refuses (`fusebox check`
fails: keys it does not know yet) is reported as not run, and its targets FAIL.

Usage: python3 bench/tail.py [--quick] [--check] [--scenarios no-hedge,hedge-p95]
           [--rate 500] [--duration 40] [--allowance 0.01] [--raw DIR] [--verbose]
           [--print-policies]
`--quick`: 10 s runs (development). `--check`: exit 1 when a target fails. About 2.5 minutes.
Needs: python3, cargo (builds bench/loadgen into target/loadgen; LOADGEN_BIN overrides).
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import (PolicyRefused, Processes, free_port, fusebox_binary,  # noqa: E402
                      http_request, loadgen_binary, run_load, start_fusebox, wait_http)

UPSTREAMS = [f"127.0.0.{i}" for i in range(11, 21)]
LATENCY, SLOW, SLOW_FRACTION, ALL_SLOW = "10ms", "1s", 0.01, "100ms"
HEDGE = '[hedge]\nenabled = true\ndelay = "p95"\nmax_extra_load = 0.05\n'
SCENARIOS = {"no-hedge": "", "hedge-p95": HEDGE, "hedge-all-slow": HEDGE}
TAIL_MAX = 5.0      # p99.9 ≤ this × p50
EXTRA_MAX = 0.05    # extra requests


def policy_text(scenario, listen, upstream_port):
    endpoints = ", ".join(f'"{host}:{upstream_port}"' for host in UPSTREAMS)
    return (f'listen = "127.0.0.1:{listen}"\nendpoints = [{endpoints}]\n'
            '[retry]\nattempts = 2\n'
            '[breaker]\nmode = "off"\n'
            + SCENARIOS[scenario])


def upstream_stats(port):
    """The ten upstreams' counts (one process answers for all)."""
    return json.loads(http_request("GET", UPSTREAMS[0], port, "/stats")[1])


def received(port):
    """Requests the ten upstreams received so far."""
    return upstream_stats(port)["total"]["received"]


def run(binary, loadgen, scenario, args):
    with tempfile.TemporaryDirectory(prefix="fusebox-bench-tail.") as work, Processes() as procs:
        port = free_port()
        listens = [x for host in UPSTREAMS for x in ("--listen", f"{host}:{port}")]
        upstream = procs.start([loadgen, "tail-upstream", *listens, "--latency", LATENCY,
                                "--slow-fraction", SLOW_FRACTION, "--slow", SLOW,
                                "--seed", args.seed],
                               log=pathlib.Path(work) / "upstream.log")
        wait_http(UPSTREAMS[0], port, "/stats", upstream)
        policies = pathlib.Path(work) / "policies"
        policies.mkdir()
        listen = free_port()
        (policies / "svc.toml").write_text(policy_text(scenario, listen, port))
        try:
            start_fusebox(procs, binary, policies, work)
        except PolicyRefused as e:
            return {"scenario": scenario, "refused": str(e)}
        wait_http("127.0.0.1", listen, "/", timeout=5)  # the route listener answers
        before = received(port)
        half = args.duration / 2
        switch = {}

        def on_second(line):
            if args.verbose:
                print(f"  {scenario} t={line['t']:>3} sent={line['sent']:>4} ok={line['ok']:>4} "
                      f"local={line['local']} err={line['errors']} p50={line['p50_ms']} "
                      f"p99={line['p99_ms']}", flush=True)
            if scenario == "hedge-all-slow" and line["t"] == int(half):
                switch["received"] = received(port)
                for host in UPSTREAMS:
                    status, _ = http_request("POST", host, port, f"/control?all={ALL_SLOW}")
                    assert status == 200, status
                switch["at"] = line["t"]

        phases = (f"{args.rate}:{half:g},{args.rate}:{half:g}" if scenario == "hedge-all-slow"
                  else f"{args.rate}:{args.duration:g}")
        seconds, phase_lines, total = run_load(loadgen, [
            "--url", f"http://127.0.0.1:{listen}/", "--phases", phases,
            "--connections", 2000, "--timeout", "5s"], on_second)
        stats = upstream_stats(port)
        after = stats["total"]["received"]
    result = {"scenario": scenario, "seconds": seconds, "phases": phase_lines, "total": total,
              "upstream": stats, "extra": (after - before) / total["sent"] - 1}
    if scenario == "hedge-all-slow":
        result["fast_half"], result["slow_half"] = phase_lines
        result["fast_extra"] = (switch["received"] - before) / phase_lines[0]["sent"] - 1
        result["slow_extra"] = (after - switch["received"]) / phase_lines[1]["sent"] - 1
    return result


def row(name, stats, extra):
    def ms(key):
        v = stats.get(key)
        return "-" if v is None else f"{v:.1f}"
    bad = stats["sent"] - stats["ok"]
    return (f"{name:<22} {ms('p50_ms'):>8} {ms('p99_ms'):>8} {ms('p999_ms'):>9} {ms('max_ms'):>8} "
            f"{extra * 100:>8.2f} % {bad:>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s runs")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--duration", type=float, default=None, help="seconds (default 40)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--allowance", type=float, default=0.01,
                        help="added to the 5 %% target of hedge-all-slow's slow half")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--raw", help="directory for each run's loadgen lines (JSON)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every second")
    parser.add_argument("--print-policies", action="store_true",
                        help="print the policy of each scenario and exit")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 10.0 if args.quick else 40.0
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s} ({', '.join(SCENARIOS)})")
    if args.print_policies:
        for s in scenarios:
            print(f"# {s}.toml (LISTEN, PORT: picked per run)\n{policy_text(s, 'LISTEN', 'PORT')}")
        return 0

    binary, loadgen = fusebox_binary(), loadgen_binary()
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores, {binary}; "
          f"{len(UPSTREAMS)} upstreams at {LATENCY}, {SLOW_FRACTION * 100:g} % take {SLOW}; "
          f"{args.rate} requests/s for {args.duration:g} s, open loop", flush=True)
    print(f"{'scenario':<22} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} "
          f"{'extra':>10} {'non-2xx':>8}")
    results = []
    for scenario in scenarios:
        r = run(binary, loadgen, scenario, args)
        results.append(r)
        if args.raw:
            raw = pathlib.Path(args.raw)
            raw.mkdir(parents=True, exist_ok=True)
            (raw / f"tail-{scenario}.json").write_text(json.dumps(r, indent=1))
        if "refused" in r:
            print(f"{scenario:<22} not run: fusebox refused the policy: {r['refused']}", flush=True)
            continue
        print(row(scenario, r["total"], r["extra"]), flush=True)
        if "slow_half" in r:
            print(row("  first half", r["fast_half"], r["fast_extra"]), flush=True)
            print(row(f"  slow half ({ALL_SLOW})", r["slow_half"], r["slow_extra"]), flush=True)

    print()
    passed = True
    for r in results:
        name = r["scenario"]
        if name == "no-hedge":
            continue
        if "refused" in r:
            print(f"FAIL {name}: not run ({r['refused']})")
            passed = False
            continue
        checks = []
        if name == "hedge-p95":
            t = r["total"]
            ratio = t["p999_ms"] / t["p50_ms"]
            checks.append((ratio <= TAIL_MAX, f"p99.9 {t['p999_ms']:.1f} ms = {ratio:.1f}x p50 "
                           f"{t['p50_ms']:.1f} ms (target <= {TAIL_MAX:g}x)"))
            checks.append((r["extra"] <= EXTRA_MAX, f"extra requests {r['extra'] * 100:.2f} % "
                           f"(target <= {EXTRA_MAX * 100:g} %)"))
        else:
            limit = EXTRA_MAX + args.allowance
            checks.append((r["slow_extra"] <= limit,
                           f"extra requests in the slow half {r['slow_extra'] * 100:.2f} % (target "
                           f"<= {EXTRA_MAX * 100:g} % + {args.allowance * 100:g} allowance)"))
        for ok, text in checks:
            print(f"{'PASS' if ok else 'FAIL'} {name}: {text}")
            passed &= ok
    if args.check and not passed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

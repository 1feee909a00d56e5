#!/usr/bin/env python3
"""Endpoints (docs/ARCHITECTURE.md §17): linkerd's "Beyond Round Robin" experiment, open loop.

Ten upstreams on 127.0.0.11 … 127.0.0.20 (one port) answer in about 20 ms. fusebox (FUSEBOX_BIN
or target/release/fusebox, `--workers 2`) sends a route listener's traffic to all ten
(`endpoints`, `[retry] attempts = 2`, the breaker off so that only balancing and ejection act).
A load generator keeps a constant arrival rate (default 500 requests/s for 40 s): each request
is sent at its planned time whatever the earlier ones do, and its latency is measured from that
planned time (no coordinated omission), into an HDR histogram. From 25 % to 75 % of the run
(t = 10 s to 30 s by default) one upstream turns sick:

- `slow`: it answers in 1 s;
- `fail-fast`: it answers `503` in about 1 ms (the trap: a fast failure looks like a fast
  endpoint to a latency-only balancer).

Each scenario runs with `[balance] mode = "round-robin"` and `"p2c-ewma"`, each on a fresh
fusebox, after a `healthy` run (nothing sick) for the baseline. Printed per run: p50 / p99 /
p99.9 / max, the share of requests (of first tries, for `fail-fast`) that reached the sick
upstream from 2 s after it turned sick until it recovered, and how many retries went to a
different endpoint than their first try.

Usage: python3 bench/endpoints.py [--rate 500] [--duration 40]
Needs: python3 with the `hdrhistogram` package (installed into target/bench-tools on first use).
"""
import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import free_port  # noqa: E402

UPSTREAMS = [f"127.0.0.{i}" for i in range(11, 21)]
SICK = UPSTREAMS[4]
HEALTHY_LATENCY = 0.020
SLOW_LATENCY = 1.0


def hdr_module():
    """The `hdrh` module, from a virtual environment under target/ when the system lacks it."""
    try:
        import hdrh.histogram  # noqa: F401
        return hdrh.histogram
    except ImportError:
        pass
    venv = ROOT / "target/bench-tools"
    python = venv / "bin/python3"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "hdrhistogram"], check=True)
    if os.environ.get("FUSEBOX_BENCH_VENV") != "1":
        env = dict(os.environ, FUSEBOX_BENCH_VENV="1")
        os.execve(str(python), [str(python), *sys.argv], env)
    raise SystemExit("hdrhistogram is not importable even in target/bench-tools")


# ---------------------------------------------------------------------------------------------
# The upstreams: one asyncio server per address; `sick` and its mode are set by the scenario.

class Upstreams:
    def __init__(self, port):
        self.port = port
        self.sick_mode = None  # None, "slow" or "fail-fast"
        self.seen = []  # (request id, upstream address, monotonic time)

    async def start(self):
        self.servers = []
        for host in UPSTREAMS:
            handler = self.handler_for(host)
            self.servers.append(await asyncio.start_server(handler, host, self.port))

    def handler_for(self, host):
        async def handle(reader, writer):
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    request_id = header(head, b"x-bench-id")
                    self.seen.append((request_id, host, time.monotonic()))
                    sick = host == SICK and self.sick_mode
                    if sick == "fail-fast":
                        await asyncio.sleep(0.001)
                        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick")
                    else:
                        await asyncio.sleep(SLOW_LATENCY if sick == "slow" else HEALTHY_LATENCY)
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
        return handle

    async def stop(self):
        for server in self.servers:
            server.close()
            await server.wait_closed()


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return None


# ---------------------------------------------------------------------------------------------
# fusebox

def wait_listening(port):
    import socket
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"fusebox did not listen on {port}")


# ---------------------------------------------------------------------------------------------
# The open-loop load generator

class Connections:
    """Kept-alive connections to fusebox's route listener, one request at a time each."""

    def __init__(self, port):
        self.port = port
        self.idle = []

    async def request(self, request_id):
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: svc\r\nX-Bench-Id: {request_id}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(header(head, b"content-length") or 0)
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return int(head.split(b" ", 2)[1])


async def run_load(port, rate, duration, histogram, start):
    connections = Connections(port)
    statuses = {}
    tasks = []
    total = int(rate * duration)

    async def one(i, planned):
        try:
            status = await connections.request(i)
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        statuses[status] = statuses.get(status, 0) + 1
        latency_us = max(1, int((time.monotonic() - planned) * 1e6))
        histogram.record_value(min(latency_us, 60_000_000))

    for i in range(total):
        planned = start + i / rate
        delay = planned - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, planned)))
    await asyncio.gather(*tasks)
    return statuses


async def scenario(binary, hdr, name, mode, rate, duration):
    port = free_port()
    upstreams = Upstreams(port)
    await upstreams.start()
    with tempfile.TemporaryDirectory() as work:
        proc, listen = start_fusebox(binary, work, mode, port)
        try:
            histogram = hdr.HdrHistogram(1, 60_000_000, 3)
            sick_from, sick_to = duration * 0.25, duration * 0.75

            async def schedule(start_at):
                if name == "healthy":
                    return
                await asyncio.sleep(max(0.0, start_at + sick_from - time.monotonic()))
                upstreams.sick_mode = name
                await asyncio.sleep(max(0.0, start_at + sick_to - time.monotonic()))
                upstreams.sick_mode = None

            start = time.monotonic() + 0.2
            load = asyncio.create_task(run_load(listen, rate, duration, histogram, start))
            await schedule(start)
            statuses = await load
        finally:
            proc.terminate()
            proc.wait()
    await upstreams.stop()
    return report(name, mode, histogram, statuses, upstreams.seen, start, sick_from, sick_to)


def start_fusebox(binary, work, mode, upstream_port):
    policies = pathlib.Path(work) / "policies"
    policies.mkdir()
    listen, port, admin = free_port(), free_port(), free_port()
    endpoints = ", ".join(f'"{host}:{upstream_port}"' for host in UPSTREAMS)
    (policies / "svc.toml").write_text(
        f'listen = "127.0.0.1:{listen}"\nendpoints = [{endpoints}]\n'
        '[retry]\nattempts = 2\nbackoff_base = "1ms"\nbackoff_max = "1ms"\n'
        'budget_ratio = 1.0\n'
        '[breaker]\nmode = "off"\n'
        f'[balance]\nmode = "{mode}"\n'
    )
    proc = subprocess.Popen(
        [binary, "run", "--policies", str(policies), "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{admin}", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, RUST_LOG="warn"),
    )
    wait_listening(listen)
    return proc, listen


def report(name, mode, histogram, statuses, seen, start, sick_from, sick_to):
    """One line of the table: latencies, the sick upstream's share, retries elsewhere."""
    first = {}
    retries = retried_elsewhere = 0
    for request_id, host, at in seen:
        if request_id is None:
            continue
        if request_id not in first:
            first[request_id] = (host, at)
        else:
            retries += 1
            retried_elsewhere += host != first[request_id][0]
    window = [host for host, at in first.values()
              if start + sick_from + 2.0 <= at < start + sick_to]
    share = 100.0 * sum(h == SICK for h in window) / max(1, len(window))
    q = lambda p: histogram.get_value_at_percentile(p) / 1000.0  # noqa: E731
    elsewhere = f"{retried_elsewhere}/{retries}" if retries else "-"
    errors = sum(v for k, v in statuses.items() if k != 200)
    return (f"{name:<10} {mode:<12} {q(50):>8.1f} {q(99):>8.1f} {q(99.9):>9.1f} "
            f"{histogram.get_max_value() / 1000.0:>9.1f} {share:>8.2f} % {elsewhere:>12} {errors:>7}")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--duration", type=float, default=40.0)
    args = parser.parse_args()
    hdr = hdr_module()
    binary = os.environ.get("FUSEBOX_BIN", str(ROOT / "target/release/fusebox"))
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores, "
          f"{args.rate} requests/s for {args.duration:.0f} s, open loop; sick upstream {SICK} "
          f"from {args.duration * 0.25:.0f} s to {args.duration * 0.75:.0f} s")
    print(f"{'scenario':<10} {'balance':<12} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'max ms':>9} {'to sick':>10} {'retry moved':>12} {'non-200':>7}")
    runs = [("healthy", "p2c-ewma"), ("healthy", "round-robin"),
            ("slow", "round-robin"), ("slow", "p2c-ewma"),
            ("fail-fast", "round-robin"), ("fail-fast", "p2c-ewma")]
    for name, mode in runs:
        print(await scenario(binary, hdr, name, mode, args.rate, args.duration), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

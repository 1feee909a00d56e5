#!/usr/bin/env python3
"""Destinations (docs/ARCHITECTURE.md §8): how much memory and time creating them costs.

Starts one fusebox (`--workers 1`, FUSEBOX_BIN or target/release/fusebox) with a policy that
allows loopback, then sends one request per destination to 127.0.0.1:PORT for N distinct ports
(default 10,000; nothing listens there, so each is a fast 502 connect-failed, and each creates a
destination). Prints the RSS per destination and the median time of a request that creates one,
for the first and the last thousand, so that "the 10,000th costs what the 10th did" can be read
off. Usage: python3 bench/destinations.py [N]

ROUTES=R gives the policy R `[[route]]`s (`/r0/` … ), which the requests do not take unless
REQUEST_PATH names one: ROUTES=10 REQUEST_PATH=/r0/ python3 bench/destinations.py 5000
"""
import http.client
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, rss_kib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    binary = os.environ.get("FUSEBOX_BIN", str(ROOT / "target/release/fusebox"))
    with tempfile.TemporaryDirectory() as work:
        policies = pathlib.Path(work) / "policies"
        policies.mkdir()
        common = ("allow_private = true   # BENCHMARK ONLY: loopback destinations\n"
                  "[retry]\nattempts = 1\n[timeouts]\nconnect = \"200ms\"\n")
        (policies / "default.toml").write_text(common)
        routes = int(os.environ.get("ROUTES", "0"))
        if routes:
            tables = "".join(f"[[route]]\nname = \"r{i}\"\npath_prefix = \"/r{i}/\"\n"
                             for i in range(routes))
            (policies / "loop.toml").write_text(
                f"hosts = [\"127.0.0.1\"]\n{common}{tables}")
        listen, admin = free_port(), free_port()
        log = open(pathlib.Path(work) / "fusebox.log", "w")
        proc = subprocess.Popen(
            [binary, "run", "--policies", str(policies), "--listen", f"127.0.0.1:{listen}",
             "--admin", f"127.0.0.1:{admin}", "--workers", "1"],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
        try:
            for _ in range(100):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                    c.request("GET", "/readyz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            start_rss = rss_kib(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
            times = []
            path = os.environ.get("REQUEST_PATH", "/")
            # Ports from 40000 down, where nothing listens (a listener there only adds a 200).
            for i in range(n):
                port = 60000 - i
                t = time.perf_counter()
                conn.request("GET", f"http://127.0.0.1:{port}{path}")
                conn.getresponse().read()
                times.append(time.perf_counter() - t)
            end_rss = rss_kib(proc.pid)
            first = statistics.median(times[:1000]) * 1e6
            last = statistics.median(times[-1000:]) * 1e6
            print(f"{n} destinations: RSS {start_rss} -> {end_rss} KiB, "
                  f"{(end_rss - start_rss) * 1024 / n:.0f} bytes per destination")
            print(f"median request that creates a destination: first 1,000 {first:.0f} us, "
                  f"last 1,000 {last:.0f} us ({last / first:.2f}x)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()

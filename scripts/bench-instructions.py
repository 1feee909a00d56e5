#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a repeatable cost measure for
comparing two builds of fusebox on a shared, noisy machine (wall-clock and CPU-time numbers are
not; see docs/ARCHITECTURE.md §8).

    python3 scripts/bench-instructions.py [FUSEBOX_BINARY ...]

For each binary (default: target/release/fusebox): starts a keep-alive HTTP/1.1 upstream on
loopback, runs fusebox under `valgrind --tool=callgrind --instr-atstart=no` with every
pipeline stage on (gate, limiter, breaker, timeouts, retries with budget), sends WARM requests
on one kept-alive app connection, switches instrumentation on (`callgrind_control -i on`), sends N
more, switches it off, and prints the instructions counted divided by N: start-up, the first
requests (a new destination, a new upstream connection) and shutdown are left out. The access
log is off; BENCH_RUST_LOG=info turns it on. Runs of the same binary agree within about 1 %.
Needs valgrind. Everything listens on and sends to 127.0.0.1 only; the processes it starts are
stopped by PID.
"""

import http.client
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

WARM, N = 200, 2000


def full_pipeline():
    """The full-pipeline policy body the shell benchmarks use, from bench/lib.sh."""
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "lib.sh")
    with open(lib) as f:
        match = re.search(r"^FULL_PIPELINE='([^']*)'", f.read(), re.MULTILINE)
    if not match:
        sys.exit(f"no FULL_PIPELINE in {lib}")
    return match.group(1)


POLICY = 'hosts = ["127.0.0.1:{port}"]\nallow_private = true\n' + full_pipeline() + "\n"


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b"x" * 64

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def send(conn, upstream_port, requests):
    for _ in range(requests):
        conn.request("GET", f"http://127.0.0.1:{upstream_port}/")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"request through fusebox: {response.status}")


def collect(pid, on):
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def instructions(binary, policies, upstream_port):
    listen, admin = free_port(), free_port()
    out = os.path.join(policies, "callgrind.out")
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         binary, "run", "--policies", policies, "--listen", f"127.0.0.1:{listen}",
         "--admin", f"127.0.0.1:{admin}", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn")})
    try:
        wait_port(listen)
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
        send(conn, upstream_port, WARM)
        collect(proxy.pid, True)
        send(conn, upstream_port, N)
        collect(proxy.pid, False)
        conn.close()
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=120)
    with open(out) as f:
        for line in f:
            # With instrumentation switched on and off, `summary:` stays 0; `totals:` counts.
            if line.startswith("totals:"):
                return int(line.split()[1]) / N
    sys.exit(f"no instruction total in {out}")


def main():
    binaries = sys.argv[1:] or ["target/release/fusebox"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    for binary in binaries:
        with tempfile.TemporaryDirectory() as policies:
            with open(os.path.join(policies, "bench.toml"), "w") as f:
                f.write(POLICY.format(port=port))
            per_request = instructions(binary, policies, port)
            print(f"{binary}: {per_request:,.0f} instructions per request "
                  f"(callgrind, {N} requests on one keep-alive connection after {WARM})")
    server.shutdown()


if __name__ == "__main__":
    main()

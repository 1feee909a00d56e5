#!/usr/bin/env python3
"""Idle app connections (docs/ARCHITECTURE.md §8): how much memory a kept-alive one costs.

Starts a small HTTP/1.1 upstream and one fusebox (`--workers 1`, FUSEBOX_BIN or
target/release/fusebox), then opens N app connections (default 10,000; 1,000 at a time, 1.5 s
apart) to fusebox, sends one proxied request on each, reads its answer and keeps the connection
open and idle, the way an app's connection pool does. After two seconds (an idle connection rests after one), prints fusebox's RSS before and after, and the RSS per idle
connection. Needs N + 100 open files (`ulimit -n`). Usage: python3 bench/idle.py [N]
"""
import os
import pathlib
import resource
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, rss_kib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Connections are opened this many at a time, 1.5 s apart.
BATCH = 1000

UPSTREAM = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body in one write, as nginx sends them: unbuffered, the body would wait for the
    # head's (delayed) ACK under Nagle, 40 ms a request.
    wbufsize = -1
    def do_GET(self):
        body = b"x" * 64
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def wait_ready(port):
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing ready on port {port}")


def read_response(sock):
    """Reads one response with a content-length body; returns its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b"\r\n")[0] + b" " + body


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 200)), hard))
    binary = os.environ.get("FUSEBOX_BIN", str(ROOT / "target/release/fusebox"))
    with tempfile.TemporaryDirectory() as work:
        policies = pathlib.Path(work) / "policies"
        policies.mkdir()
        (policies / "default.toml").write_text(
            "allow_private = true   # BENCHMARK ONLY: a loopback upstream\n")
        upstream_port, listen, admin = free_port(), free_port(), free_port()
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
        log = open(pathlib.Path(work) / "fusebox.log", "w")
        proc = subprocess.Popen(
            [binary, "run", "--policies", str(policies), "--listen", f"127.0.0.1:{listen}",
             "--admin", f"127.0.0.1:{admin}", "--workers", "1", "--idle-timeout", "10m"],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn")})
        conns = []
        try:
            wait_ready(admin)
            request = (f"GET http://127.0.0.1:{upstream_port}/ HTTP/1.1\r\n"
                       f"host: 127.0.0.1:{upstream_port}\r\n\r\n").encode()
            # Warm up: the destination, its pooled upstream connection, the allocator.
            warm = socket.create_connection(("127.0.0.1", listen))
            for _ in range(100):
                warm.sendall(request)
                read_response(warm)
            warm.close()
            time.sleep(0.5)
            start_rss = rss_kib(proc.pid)
            for i in range(n):
                if i % BATCH == 0 and i > 0:
                    # Let the last batch rest: how an app's pool fills over time, not at once.
                    time.sleep(1.5)
                s = socket.create_connection(("127.0.0.1", listen))
                s.sendall(request)
                status = read_response(s)
                if not status.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {status!r}")
                conns.append(s)
            # Past the rest time (1 s), idle connections keep only their sockets.
            time.sleep(2)
            end_rss = rss_kib(proc.pid)
            print(f"{n} idle app connections: RSS {start_rss} -> {end_rss} KiB, "
                  f"{(end_rss - start_rss) * 1024 / n:.0f} bytes "
                  f"({(end_rss - start_rss) / n:.2f} KiB) per idle connection")
        finally:
            for s in conns:
                s.close()
            proc.terminate()
            proc.wait()
            upstream.terminate()
            upstream.wait()


if __name__ == "__main__":
    main()

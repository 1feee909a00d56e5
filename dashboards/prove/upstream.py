#!/usr/bin/env python3
"""A tiny flaky upstream for dashboards/prove.sh (stdlib only, 127.0.0.1 only).

Usage: upstream.py PORTS_FILE N
Serves N HTTP listeners on free 127.0.0.1 ports (one process, one thread per listener, shared
state) and writes their ports to PORTS_FILE, one per line, once all are listening.

  GET /ok          200
  GET /flaky       503 while the "down" flag is set, else 200
  GET /fail        503, always
  GET /alternate   503 and 200 in turn (per listener): a retry of a 503 succeeds
  GET /slow?ms=N   sleeps N ms (default 300), then 200
  GET /down, /up   set / clear the "down" flag (shared by all listeners); 200
  anything else    404
"""
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DOWN = threading.Event()
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        status = 200
        if path == "/ok":
            pass
        elif path == "/flaky":
            status = 503 if DOWN.is_set() else 200
        elif path == "/fail":
            status = 503
        elif path == "/alternate":
            with LOCK:
                self.server.calls = getattr(self.server, "calls", 0) + 1
                status = 503 if self.server.calls % 2 else 200
        elif path == "/slow":
            ms = int(urllib.parse.parse_qs(url.query).get("ms", ["300"])[0])
            time.sleep(ms / 1000)
        elif path == "/down":
            DOWN.set()
        elif path == "/up":
            DOWN.clear()
        else:
            status = 404
        body = f"{status} {path} down={DOWN.is_set()}\n".encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ports_file, n = sys.argv[1], int(sys.argv[2])
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(n)]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{s.server_address[1]}\n" for s in servers))
    os.replace(tmp, ports_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

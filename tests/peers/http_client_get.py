#!/usr/bin/env python3
"""GET URL through the forward proxy at PROXY (host:port) with Python's http.client, a strict
reader of Content-Length, on a connection that stays open: prints
"<status> <content-length or -> <body>". A body it cannot delimit hits the 10 s timeout."""
import http.client
import sys

proxy, url = sys.argv[1], sys.argv[2]
host, port = proxy.rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=10)
connection.request("GET", url)
response = connection.getresponse()
body = response.read().decode("utf-8", "replace")
print(f"{response.status} {response.getheader('content-length', '-')} {body}", flush=True)

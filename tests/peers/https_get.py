#!/usr/bin/env python3
"""GET URL COUNT times with Python requests, as an app configured only by its environment:
HTTPS_PROXY (fusebox) and REQUESTS_CA_BUNDLE (fusebox's CA). Prints one line per call:
"<status> <x-fusebox-reason or -> <body>"."""
import sys

import requests

url, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
with requests.Session() as session:
    for _ in range(count):
        response = session.get(url, timeout=30)
        reason = response.headers.get("x-fusebox-reason", "-")
        print(f"{response.status_code} {reason} {response.text.strip()}", flush=True)

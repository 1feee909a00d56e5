#!/bin/sh
# Demo app for deploy/docker-compose.yml: loops curl through fusebox (as an app with
# HTTP_PROXY would) so that the dashboard has something to show: steady requests, a burst now
# and then (rate limited by policies/payments.toml), a long CONNECT tunnel, and a request to a
# link-local address that fusebox denies. Runs in the curlimages/curl image (busybox sh).
PROXY=${PROXY:-http://fusebox:15001}
n=0
echo "demo client: sending traffic through $PROXY"
while :; do
  n=$((n + 1))
  # Steady traffic: payments.toml (host payments.internal) and the default policy.
  curl -s -o /dev/null --max-time 10 -x "$PROXY" http://payments.internal/api/orders
  curl -s -o /dev/null --max-time 10 -x "$PROXY" http://flaky-upstream/api/search
  # Every ~10 s: 300 requests at once, over payments.toml's limit (200 rps, burst 50) -> 429s.
  if [ $((n % 50)) -eq 0 ]; then
    curl -s -o /dev/null --max-time 10 --parallel --parallel-max 100 -x "$PROXY" \
      "http://payments.internal/api/burst/[1-300]" >/dev/null 2>&1
  fi
  # Every ~20 s: a CONNECT tunnel (curl -p) held open for ~12 s by a slow response.
  if [ $((n % 100)) -eq 0 ]; then
    curl -s -o /dev/null --max-time 30 -p -x "$PROXY" http://flaky-upstream/slow &
  fi
  # Every ~60 s: cloud metadata is link-local, which fusebox denies (403 denied).
  if [ $((n % 300)) -eq 0 ]; then
    curl -s -o /dev/null --max-time 5 -x "$PROXY" http://169.254.169.254/latest/meta-data/
    echo "demo client: $n rounds"
  fi
  sleep 0.2
done

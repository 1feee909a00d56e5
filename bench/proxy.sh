#!/usr/bin/env bash
# fusebox's own end-to-end benchmark of plain HTTP forwarding (docs/ARCHITECTURE.md §8): one
# fusebox process (`--workers 1`) with every pipeline stage on (gate, limiter, breaker,
# timeouts, retries with budget) and the access log on, in front of a local nginx upstream
# (64-byte responses). In one run it measures
#
#   cpu        CPU us per request of fusebox under wrk (CONNS kept-alive connections, DUR),
#              and of nginx as a reverse proxy in front of the same upstream (the peer a
#              sidecar is compared with); only their ratio means anything
#   latency    p50/p99 at a fixed rate (RATE requests a second, hey, 10 connections), direct
#              to the upstream and through fusebox: what the proxy adds (hey reports
#              latencies to 0.1 ms)
#
# Usage: bash bench/proxy.sh     (about 45 s; DUR=10s CONNS=50 RATE=1000 by default)
# Needs: nginx, wrk, hey, curl (Debian: apt-get install -y nginx-light wrk hey curl); builds
# target/release/fusebox when FUSEBOX_BIN is not set. Everything listens on 127.0.0.1.
# Processes are started by this script and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-10s}
CONNS=${CONNS:-50}
RATE=${RATE:-1000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup proxy.sh nginx wrk hey curl

# ---- nginx: the upstream (one process) and, separately, nginx as a reverse proxy to it
P_UP=$(free_port); P_REV=$(free_port)
nginx_start upstream "server { listen 127.0.0.1:$P_UP; location / { return 200 $NGINX_BODY; } }"
nginx_start rev "
  upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P_REV; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
REV=$NGINX_PID

# ---- fusebox: the full pipeline
mkdir -p "$WORK/policies"
printf 'allow_private = true   # BENCHMARK ONLY: a loopback upstream\n' >"$WORK/policies/default.toml"
printf 'hosts = ["127.0.0.1:%s"]\n%s\n' "$P_UP" "$FULL_PIPELINE" >"$WORK/policies/bench.toml"
LISTEN=127.0.0.1:$(free_port); ADMIN=127.0.0.1:$(free_port)
"$FUSEBOX_BIN" run --policies "$WORK/policies" --listen "$LISTEN" --admin "$ADMIN" \
  --workers 1 >"$WORK/fusebox.log" 2>&1 &
FUSEBOX=$!; PIDS+=("$FUSEBOX")
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$WORK/fusebox.log" >&2; exit 1; }
URL="http://127.0.0.1:$P_UP/"
body=$(curl -sf -x "http://$LISTEN" "$URL")
[ ${#body} = 64 ] || { log "fusebox check failed: $body"; exit 1; }
body=$(curl -sf "http://127.0.0.1:$P_REV/")
[ ${#body} = 64 ] || { log "nginx check failed: $body"; exit 1; }

# wrk through an HTTP proxy: absolute-form requests to the proxy's port.
cat >"$WORK/proxy.lua" <<LUA
wrk.path = "$URL"
wrk.headers["Host"] = "127.0.0.1:$P_UP"
LUA

# cpu CASE PID TARGET [wrk flags...]: wrk for $DUR; prints CPU us/request of PID
cpu() {
  local name=$1 pid=$2 target=$3; shift 3
  local before after out n
  wrk -t1 -c "$CONNS" -d 1s "$@" "$target" >/dev/null 2>&1 || true   # warm-up
  before=$(ticks "$pid")
  out=$(wrk -t1 -c "$CONNS" -d "$DUR" "$@" "$target" 2>&1)
  after=$(ticks "$pid")
  n=$(printf '%s\n' "$out" | awk '/requests in/ { print $1; exit }')
  if printf '%s\n' "$out" | grep -q 'Non-2xx\|Socket errors'; then
    log "$name: $(printf '%s\n' "$out" | grep 'Non-2xx\|Socket errors' | tr '\n' ' ')"
  fi
  awk -v c="$name" -v r="$n" -v t=$((after - before)) -v hz="$HZ" \
    'BEGIN { printf "cpu      %-14s %9d requests  %6.1f CPU us/request\n", c, r, t / hz * 1e6 / r }'
}

# latency CASE [hey flags...] URL: $RATE requests a second for $DUR over 10 connections
latency() {
  local name=$1; shift
  local out
  out=$(hey -z "$DUR" -c 10 -q $((RATE / 10)) "$@" 2>&1)
  printf '%s\n' "$out" | awk -v c="$name" '
    /Requests\/sec:/ { rps = $2 }
    / 50% in / { p50 = $3 } / 99% in / { p99 = $3 }
    END { printf "latency  %-14s %6.0f requests/s  p50 %.3f ms  p99 %.3f ms\n", c, rps, p50 * 1000, p99 * 1000 }'
}

results=$WORK/results.txt
{
  cpu fusebox-full "$FUSEBOX" "http://$LISTEN" -s "$WORK/proxy.lua"
  cpu nginx-rev "$REV" "http://127.0.0.1:$P_REV/"
  latency direct "$URL"
  latency fusebox-full -x "http://$LISTEN" "$URL"
} | tee "$results"
awk '$1 == "cpu" { cpu[$2] = $5 } $1 == "latency" { p50[$2] = $6; p99[$2] = $9 } END {
  printf "fusebox-full / nginx-rev CPU = %.2fx  (target <= 1.0x)\n", cpu["fusebox-full"] / cpu["nginx-rev"]
  printf "added by fusebox at %s requests/s: p50 +%.3f ms, p99 +%.3f ms  (target: p99 within 1 ms of direct)\n", "'"$RATE"'", p50["fusebox-full"] - p50["direct"], p99["fusebox-full"] - p99["direct"]
}' "$results"

#!/usr/bin/env bash
# dashboards/prove.sh - proves the dashboard and the breaker-open alert against a real Prometheus
# scraping a real fusebox under real traffic (CI runs it from .ci/run after `cargo test`).
#
# Usage (from anywhere):  bash dashboards/prove.sh          (about 90 s)
#
# What it does, all on 127.0.0.1, in a fresh `mktemp -d` work directory:
#   1. uses ${FUSEBOX_BIN:-target/debug/fusebox} (runs `cargo build` when it is missing);
#   2. starts dashboards/prove/upstream.py: one process, five listeners (flaky, limited, shadow,
#      retry, plain); /flaky answers 503 while its "down" flag is set (GET /down, /up);
#   3. writes a policies directory: `flaky` (breaker enforced, consecutive_failures = 3, open
#      2s..4s; 2 attempts on gateway-error; a route `failing` for /fail with a breaker of its own,
#      breaker = "own"), `limited` (rps = 2, burst = 0), `shadow` (breaker
#      and rate limit in shadow mode, retry budget 0 so every retry is refused), `retrying`
#      (3 attempts, throttling breaker, hedges after 20 ms, aimd limit), `intercepted` (intercept = true, with a CA from `fusebox ca
#      init`) and default.toml (allow_private, short timeouts);
#   4. starts fusebox (`--workers 1`, `--ca-dir`) and a second one with healthy traffic only, waits for /readyz, then makes one failed reload (a broken
#      file: POST /reload answers 400) and one successful reload (a new policy file);
#   5. starts Prometheus (Debian's `prometheus`) scraping fusebox every second with
#      dashboards/alerts.yml loaded, waits until the target is up, then drives traffic with curl
#      loops for the rest of the run: the flaky destination down (its breaker trips and keeps
#      rejecting: a call every 100 ms), /fail on the same destination (always 503: the route's
#      own breaker trips and stays open), rate-limited bursts, a failing shadow-mode destination,
#      503-then-200 calls that a retry rescues, hedged slow calls, slow calls and attempt
#      timeouts, CONNECT tunnels
#      (curl -p); at 20 s the flaky destination comes up until its breaker closes (checked on
#      /metrics: a transition to closed, state 0) while the route's own breaker stays open (never
#      a transition to closed), then goes down again and stays down;
#   6. at 40 s runs every query of dashboards/fusebox.json with dashboards/queries.py against
#      that Prometheus (a query that errors or returns no series fails), and prints what the
#      traffic produced;
#   7. polls /api/v1/alerts until FuseboxBreakerOpen fires for the flaky destination (`for: 1m`
#      after the re-trip; gives up after 120 s), then checks per pod: the alert names the first
#      fusebox's instance only, and the second one has served requests with every breaker closed;
#      then that FuseboxRouteBreakerOpen fires for route `failing`, for the first instance only.
# Ends with `prove: N passed, N failed` (one check per dashboard query, the breaker recovery,
# the route breaker's isolation, the two alerts and the per-pod checks); exit status 0 only when nothing failed (2: a tool is missing). Everything it starts
# is stopped by PID (traffic loops by process group, with their curls) when it exits.
#
# Environment: FUSEBOX_BIN (default target/debug/fusebox, relative to the repository root),
# PROMETHEUS (default prometheus), PROMTOOL (default promtool), RUST_LOG (fusebox's, default
# warn), KEEP=1 keeps the work directory. Needs curl, python3 and prometheus (Debian: apt-get
# install -y prometheus); nothing outside the repository.
set -euo pipefail
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QUERIES=$HERE/queries.py
DASH=$HERE/fusebox.json
ALERTS=$HERE/alerts.yml
PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
cd "$ROOT"
FUSEBOX_BIN=${FUSEBOX_BIN:-target/debug/fusebox}

START=$SECONDS
passed=0
failed=0
say() { printf 'prove: [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
pass() { passed=$((passed + 1)); say "ok    $*"; }
fail() { failed=$((failed + 1)); say "FAIL  $*"; }
summary() { echo "prove: $passed passed, $failed failed"; }
die() {  # a setup step failed: show the logs, count one failure, stop
  say "FAIL  $*"
  failed=$((failed + 1))
  for f in "$WORK"/*.log; do
    [ -s "$f" ] && { echo "--- last lines of $f"; tail -n 15 "$f"; }
  done
  summary
  exit 1
}

for t in curl python3 "$PROMETHEUS" "$PROMTOOL"; do
  command -v "$t" >/dev/null || { echo "prove: $t not found (Debian: apt-get install -y curl python3 prometheus)" >&2; exit 2; }
done

# ------------------------------------------------------------------ processes and cleanup
WORK=$(mktemp -d -t fusebox-prove.XXXXXX)
PIDS=()      # servers: stopped with SIGTERM, then waited for
LOOPS=()     # traffic loops: each is its own process group (set -m), stopped with its curls
cleanup() {
  local rc=$? pid
  set +e
  rm -f "$WORK/running"
  for pid in "${LOOPS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${LOOPS[@]}" "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ]; then echo "prove: work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -m   # every background job gets its own process group, so a loop is stopped with its curl

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
get() { curl -sS --max-time 5 "$@"; }
# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for $what"
}
# metric NAME LABEL-REGEX: the value of the first series of NAME on /metrics whose labels match
metric() {
  get "http://$ADMIN/metrics" | awk -v name="$1" -v re="$2" '
    !found && index($0, name "{") == 1 && $0 ~ re { value = $NF; found = 1 }
    END { print value }'
}

# ------------------------------------------------------------------ 1. fusebox binary
if [ ! -x "$FUSEBOX_BIN" ]; then
  say "$FUSEBOX_BIN missing: cargo build"
  cargo build --quiet
fi
[ -x "$FUSEBOX_BIN" ] || die "no fusebox binary at $FUSEBOX_BIN"
FUSEBOX_BIN=$(cd "$(dirname "$FUSEBOX_BIN")" && pwd)/$(basename "$FUSEBOX_BIN")
say "work directory $WORK, fusebox $FUSEBOX_BIN, $("$PROMETHEUS" --version 2>&1 | head -n 1)"

# ------------------------------------------------------------------ 2. upstreams
python3 "$HERE/prove/upstream.py" "$WORK/ports" 5 </dev/null >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_for 10 "the upstream to listen" test -s "$WORK/ports"
{ read -r P_FLAKY; read -r P_LIMITED; read -r P_SHADOW; read -r P_RETRY; read -r P_PLAIN; } <"$WORK/ports"
UP=http://127.0.0.1
say "upstream pid ${PIDS[0]}: flaky :$P_FLAKY, limited :$P_LIMITED, shadow :$P_SHADOW, retry :$P_RETRY, plain :$P_PLAIN"

# ------------------------------------------------------------------ 3. policies
POL=$WORK/policies
mkdir -p "$POL"
cat >"$POL/default.toml" <<EOF
allow_private = true
[timeouts]
connect = "500ms"
attempt = "1s"
total = "3s"
EOF
# /fail (always 503) is the route "failing", with a breaker of its own (§3 Routes): it trips and
# stays open, while the destination's breaker follows /flaky alone (the route panels, the
# FuseboxRouteBreakerOpen alert).
cat >"$POL/flaky.toml" <<EOF
hosts = ["127.0.0.1:$P_FLAKY"]
[retry]
attempts = 2
on = ["gateway-error"]
[breaker]
mode = "enforce"
consecutive_failures = 3
open_base = "2s"
open_max = "4s"
[[route]]
name = "failing"
path_prefix = "/fail"
breaker = "own"
EOF
cat >"$POL/limited.toml" <<EOF
hosts = ["127.0.0.1:$P_LIMITED"]
[rate_limit]
rps = 2
burst = 0
EOF
cat >"$POL/shadow.toml" <<EOF
hosts = ["127.0.0.1:$P_SHADOW"]
[retry]
attempts = 2
on = ["gateway-error"]
budget_ratio = 0
budget_min_per_second = 0
[breaker]
mode = "shadow"
consecutive_failures = 3
open_base = "2s"
open_max = "4s"
[rate_limit]
mode = "shadow"
rps = 1
burst = 0
EOF
# HTTPS interception (its panel): curl trusts fusebox's local CA, so the CONNECT is
# intercepted; the request inside then fails (the upstream speaks no TLS), which this policy
# keeps off any breaker. A curl that does not trust the CA fails its handshake.
"$FUSEBOX_BIN" ca init --dir "$WORK/ca" >/dev/null
cat >"$POL/intercepted.toml" <<EOF
hosts = ["localhost:$P_PLAIN"]
intercept = true
[retry]
attempts = 1
[breaker]
mode = "off"
EOF
# The retry destination also hedges its slow calls, adapts its concurrency limit and
# throttles instead of opening (the "Tail and overload" row, §18): every other try is a 503, so
# half are accepted and the throttle refuses none (its probability, 0, is still a series).
cat >"$POL/retrying.toml" <<EOF
hosts = ["127.0.0.1:$P_RETRY"]
[retry]
attempts = 3
on = ["gateway-error"]
[breaker]
mode = "throttle"
[hedge]
enabled = true
delay = "20ms"
max_extra_load = 1.0
[concurrency]
mode = "aimd"
EOF
"$FUSEBOX_BIN" check --policies "$POL" --ca-dir "$WORK/ca" >"$WORK/check.log" 2>&1 || die "fusebox check --policies $POL"

# ------------------------------------------------------------------ 4. fusebox
LISTEN=127.0.0.1:$(free_port)
ADMIN=127.0.0.1:$(free_port)
PROXY=http://$LISTEN
RUST_LOG=${RUST_LOG:-warn} "$FUSEBOX_BIN" run --policies "$POL" --listen "$LISTEN" --admin "$ADMIN" \
  --ca-dir "$WORK/ca" --workers 1 </dev/null >"$WORK/fusebox.log" 2>&1 &
PIDS+=($!)
wait_for 20 "fusebox /readyz on $ADMIN" get -f "http://$ADMIN/readyz"
say "fusebox pid ${PIDS[1]}: proxy $LISTEN, admin $ADMIN"
# A second fusebox (another pod, as Prometheus sees it: its own instance label) with the same
# policies and only healthy traffic: the per-pod dashboard and alerts must keep it apart from the
# first one's open breaker.
LISTEN2=127.0.0.1:$(free_port)
ADMIN2=127.0.0.1:$(free_port)
RUST_LOG=${RUST_LOG:-warn} "$FUSEBOX_BIN" run --policies "$POL" --listen "$LISTEN2" --admin "$ADMIN2" \
  --ca-dir "$WORK/ca" --workers 1 </dev/null >"$WORK/fusebox2.log" 2>&1 &
PIDS+=($!)
wait_for 20 "the second fusebox's /readyz on $ADMIN2" get -f "http://$ADMIN2/readyz"
say "second fusebox pid ${PIDS[2]}: proxy $LISTEN2, admin $ADMIN2 (healthy traffic only)"

# Reloads, so that the reload panels have both results: a broken file (POST /reload answers
# 400), then a valid change (a new policy; a directory identical to the active one is not a
# reload). fusebox also watches the directory, so it may reload on its own first: either way the
# generation must go up.
generation() { get "http://$ADMIN/metrics" | awk '$1 == "fusebox_config_generation" { g = $2 } END { print g }'; }
gen0=$(generation)
printf '[timeouts]\nconect = "1s"\n' >"$POL/broken.toml"
code=$(curl -sS -o "$WORK/reload-bad.json" -w '%{http_code}' --max-time 10 -X POST "http://$ADMIN/reload")
[ "$code" = 400 ] || die "POST /reload with a broken policy answered $code, expected 400: $(cat "$WORK/reload-bad.json")"
rm -f "$POL/broken.toml"
printf 'hosts = ["reloaded.example.invalid"]\n' >"$POL/reloaded.toml"
code=$(curl -sS -o "$WORK/reload-ok.json" -w '%{http_code}' --max-time 10 -X POST "http://$ADMIN/reload")
[ "$code" = 200 ] || die "POST /reload answered $code, expected 200: $(cat "$WORK/reload-ok.json")"
gen1=$(generation)
[ "${gen1:-0}" -gt "${gen0:-0}" ] 2>/dev/null || die "config generation did not go up on a valid reload ($gen0 -> $gen1)"
say "reloads: broken policy -> 400, new policy -> 200 $(tr -d ' \n' <"$WORK/reload-ok.json") (generation $gen0 -> $gen1)"

# ------------------------------------------------------------------ 5. Prometheus
PROM_ADDR=127.0.0.1:$(free_port)
PROM=http://$PROM_ADDR
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $ALERTS
scrape_configs:
  - job_name: fusebox
    static_configs:
      - targets: ["$ADMIN", "$ADMIN2"]
EOF
"$PROMTOOL" check config "$WORK/prometheus.yml" >"$WORK/promtool.log" 2>&1 || die "promtool check config"
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --web.listen-address="$PROM_ADDR" </dev/null >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
PROM_PID=$!
wait_for 30 "Prometheus /-/ready on $PROM_ADDR" get -f "$PROM/-/ready"
target_up() {
  get "$PROM/api/v1/targets" | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
sys.exit(0 if t and all(x["health"] == "up" for x in t) else 1)'
}
wait_for 30 "Prometheus to scrape both fusebox processes (targets up)" target_up
say "prometheus pid $PROM_PID on $PROM_ADDR: both fusebox targets up"

# ------------------------------------------------------------------ traffic
touch "$WORK/running"
get -f "$UP:$P_FLAKY/down" >/dev/null
# loop INTERVAL CMD...: runs CMD every INTERVAL seconds until the run ends, as its own job
loop() {
  local interval=$1; shift
  ( while [ -e "$WORK/running" ]; do "$@" >/dev/null 2>&1 || true; sleep "$interval"; done ) </dev/null &
  LOOPS+=($!)
}
via() { curl -s -o /dev/null --max-time 5 -x "$PROXY" "$@"; }
burst() { local i; for i in 1 2 3 4 5; do via "$UP:$P_LIMITED/ok"; done; }
loop 0.1 via "$UP:$P_FLAKY/flaky"                  # breaker: trips, rejects, recovers, re-trips
loop 0.2 via "$UP:$P_FLAKY/fail"                   # route "failing": its own breaker trips, stays open
loop 1 burst                                        # rate limited: 2 rps, bursts of 5
loop 0.25 via "$UP:$P_SHADOW/fail"                  # shadow breaker, refused retries (budget 0)
loop 0.5 via "$UP:$P_RETRY/alternate"              # 503 then 200: retried, succeeds
loop 0.5 via "$UP:$P_RETRY/slow?ms=100"             # hedged after 20 ms
loop 0.5 via "$UP:$P_PLAIN/slow?ms=200"             # latency
loop 3 via "$UP:$P_PLAIN/slow?ms=1500"              # attempt timeout (1s): outcome timeout
loop 0.2 via -p "$UP:$P_PLAIN/slow?ms=2000"         # CONNECT tunnels, ~2 s each
loop 0.5 via --cacert "$WORK/ca/ca.pem" "https://localhost:$P_PLAIN/"  # intercepted
loop 1 via "https://localhost:$P_PLAIN/"            # interception: the app does not trust the CA
via2() { curl -s -o /dev/null --max-time 5 -x "http://$LISTEN2" "$@"; }
loop 0.2 via2 "$UP:$P_PLAIN/slow?ms=10"             # the second fusebox: healthy only
say "traffic started (${#LOOPS[@]} curl loops); flaky destination DOWN"

FLAKY_DEST=127.0.0.1:$P_FLAKY
sel="upstream=\"flaky\".*destination=\"$FLAKY_DEST\""
state() { metric fusebox_breaker_state "$sel"; }
closes() { metric fusebox_breaker_transitions_total "$sel.*to=\"closed\""; }
state_is() { [ "$(state)" = "$1" ]; }
route_sel="$sel.*route=\"failing\""
route_state() { metric fusebox_route_breaker_state "$route_sel"; }
route_closes() { metric fusebox_route_breaker_transitions_total "$route_sel.*to=\"closed\""; }
route_state_is() { [ "$(route_state)" = "$1" ]; }

# ------------------------------------------------------------------ recovery
wait_for 15 "the flaky breaker to trip (fusebox_breaker_state 2)" state_is 2
say "flaky breaker open (state 2)"
wait_for 15 "route failing's own breaker to trip (fusebox_route_breaker_state 2)" route_state_is 2
say "route failing's own breaker open (state 2)"
while ((SECONDS - START < 20)); do sleep 0.5; done
get -f "$UP:$P_FLAKY/up" >/dev/null
say "flaky destination UP"
recovered=0
for _ in $(seq 50); do   # the open period is at most 4 s; a probe goes within 100 ms after it
  c=$(closes)
  if [ -n "$c" ] && [ "${c%.*}" -gt 0 ] 2>/dev/null && state_is 0; then recovered=1; break; fi
  sleep 0.2
done
if [ $recovered = 1 ]; then
  pass "recovery: breaker half-open -> closed (transitions to closed: $(closes), state $(state))"
  # The route's own breaker: its /fail calls kept failing, so it never closed meanwhile (state 2,
  # or 1 for the few milliseconds of a probe), and the destination's closed without it.
  rs=$(route_state) rc=$(route_closes)
  if { [ "$rs" = 2 ] || [ "$rs" = 1 ]; } && [ -z "$rc" ]; then
    pass "route isolation: the destination's breaker closed, route failing's own stayed open (state $rs, no transition to closed)"
  else
    fail "route isolation: route failing's own breaker: state ${rs:-none}, transitions to closed ${rc:-none} (expected open, none)"
  fi
  sleep 2   # a few scrapes of the closed state
else
  fail "recovery: the flaky breaker did not close within 10 s (state $(state), transitions to closed: $(closes))"
fi
get -f "$UP:$P_FLAKY/down" >/dev/null
say "flaky destination DOWN again"
wait_for 15 "the flaky breaker to trip again" state_is 2
say "flaky breaker open again (state 2), rejecting"

# ------------------------------------------------------------------ 6. dashboard queries
while ((SECONDS - START < 40)); do sleep 0.5; done
say "running every query of dashboards/fusebox.json against Prometheus"
set +e
python3 "$QUERIES" --prom "$PROM" "$DASH" >"$WORK/queries.txt" 2>&1
rc=$?
set -e
# queries.py prints a line per query ("ok    WHERE: N series", "EMPTY WHERE: ...", "ERROR WHERE:
# TYPE: MESSAGE"), under a failure the query as sent (indented by 6), and at the end
# "queries: N passed, N failed".
while IFS= read -r line; do
  case $line in
    "ok    "*) pass "query ${line#ok    }" ;;
    "EMPTY "*) fail "query returned no series: ${line#EMPTY }" ;;
    "ERROR "*) fail "query error: ${line#ERROR }" ;;
    "      "*) say "            ${line#      }" ;;
  esac
done <"$WORK/queries.txt"
if ! grep -qE '^queries: [0-9]+ passed, [0-9]+ failed$' "$WORK/queries.txt"; then
  fail "queries.py did not finish (exit $rc): $(tail -n 3 "$WORK/queries.txt")"
elif [ $rc != 0 ] && ! grep -q '^EMPTY \|^ERROR ' "$WORK/queries.txt"; then
  fail "queries.py exit $rc: $(tail -n 3 "$WORK/queries.txt")"
fi

# Metrics hygiene on the live exposition: HELP, TYPE, units and names as promtool wants them.
if get "http://$ADMIN/metrics" >"$WORK/metrics.txt" && lint=$("$PROMTOOL" check metrics <"$WORK/metrics.txt" 2>&1); then
  pass "promtool check metrics on fusebox's /metrics"
else
  fail "promtool check metrics on fusebox's /metrics: $lint"
fi

# What the traffic produced (information, not checks: most series exist at 0 from a
# destination's first request on, so "has series" alone does not show that the panels had data).
get "$PROM/api/v1/query" --data-urlencode 'query=label_replace(sum by (outcome) (fusebox_requests_total), "what", "requests{outcome=\"$1\"}", "outcome", "(.*)")
  or label_replace(sum by (to, reason) (fusebox_breaker_transitions_total), "what", "transitions{to=\"$1\"}", "to", "(.*)")
  or label_replace(sum by (to) (fusebox_route_breaker_transitions_total), "what", "route_transitions{to=\"$1\"}", "to", "(.*)")
  or label_replace(sum by (route) (fusebox_requests_total), "what", "requests{route=\"$1\"}", "route", "(.*)")
  or label_replace(sum by (reason) (fusebox_retries_total), "what", "retries{reason=\"$1\"}", "reason", "(.*)")
  or label_replace(sum(fusebox_retry_budget_exhausted_total), "what", "retry_budget_exhausted", "", "")
  or label_replace(sum by (kind) (fusebox_shadow_rejections_total), "what", "shadow_rejections{kind=\"$1\"}", "kind", "(.*)")
  or label_replace(max_over_time(sum(fusebox_tunnels_active)[1m:1s]), "what", "max tunnels_active (1m)", "", "")
  or label_replace(sum by (result) (fusebox_config_reloads_total), "what", "config_reloads{result=\"$1\"}", "result", "(.*)")' \
  | python3 -c '
import json, sys
rows = {}
for r in json.load(sys.stdin)["data"]["result"]:
    w = r["metric"].get("what", "?")
    rows[w] = rows.get(w, 0) + float(r["value"][1])
line = ""
for item in (f"{k} {v:g}" for k, v in sorted(rows.items())):
    if line and len(line) + len(item) > 100:
        print(line.rstrip())
        line = ""
    line += item + ", "
print(line.rstrip(", "))
zero = [k for k, v in rows.items() if v == 0 and not k.startswith("transitions")]
if zero:
    print("note: zero: " + ", ".join(sorted(zero)))' | while IFS= read -r line; do say "data: $line"; done || true

# ------------------------------------------------------------------ 7. the alert
# alert_state UPSTREAM DESTINATION [ALERTNAME [ROUTE]]: the alert's state (default
# FuseboxBreakerOpen), firing/pending/none
alert_state() {
  get "$PROM/api/v1/alerts" | python3 -c '
import json, sys
up, dest, name, route = (sys.argv[1:] + ["FuseboxBreakerOpen", None])[:4]
states = [a["state"] for a in json.load(sys.stdin)["data"]["alerts"]
          if a["labels"].get("alertname") == name
          and a["labels"].get("upstream") == up and a["labels"].get("destination") == dest
          and (route is None or a["labels"].get("route") == route)]
print("firing" if "firing" in states else states[0] if states else "none")' "$@"
}
# firing_instances ALERTNAME: the instance labels of its firing alerts, sorted
firing_instances() {
  get "$PROM/api/v1/alerts" | python3 -c '
import json, sys
print(" ".join(sorted({a["labels"].get("instance", "-") for a in json.load(sys.stdin)["data"]["alerts"]
                       if a["labels"].get("alertname") == sys.argv[1] and a["state"] == "firing"})))' "$1"
}
say "waiting for FuseboxBreakerOpen to fire (for: 1m; up to 120 s)"
deadline=$((SECONDS + 120))
last="" fired=0
while ((SECONDS < deadline)); do
  now=$(alert_state flaky "$FLAKY_DEST" 2>/dev/null || echo "unknown")
  if [ "$now" != "$last" ]; then
    say "FuseboxBreakerOpen{upstream=\"flaky\"}: $now (breaker state $(state))"
    last=$now
  fi
  if [ "$now" = firing ]; then fired=1; break; fi
  sleep 2
done
if [ $fired = 1 ]; then
  pass "alert FuseboxBreakerOpen firing for flaky -> $FLAKY_DEST (/api/v1/alerts)"
else
  fail "alert FuseboxBreakerOpen not firing after 120 s (last state: $last)"
fi
# Per pod: the alert names the fusebox whose breaker is open, and the other one is healthy.
alert_instances=$(firing_instances FuseboxBreakerOpen)
if [ "$alert_instances" = "$ADMIN" ]; then
  pass "per pod: FuseboxBreakerOpen fires for instance $ADMIN only"
else
  fail "per pod: FuseboxBreakerOpen fires for instances [$alert_instances], expected [$ADMIN]"
fi
second=$(get "$PROM/api/v1/query" --data-urlencode "query=max(fusebox_breaker_state{instance=\"$ADMIN2\"})" \
  | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")')
served=$(get "$PROM/api/v1/query" --data-urlencode "query=sum(fusebox_requests_total{instance=\"$ADMIN2\", outcome=\"ok\"})" \
  | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "0")')
if [ "$second" = 0 ] && [ "${served%.*}" -gt 0 ] 2>/dev/null; then
  pass "per pod: the second fusebox ($ADMIN2) is healthy: max breaker state 0, $served ok requests"
else
  fail "per pod: the second fusebox ($ADMIN2): max breaker state $second, ok requests $served"
fi
# The shadow breaker is open too but rejects nothing: the alert must not name it (a note only).
shadow=$(alert_state shadow "127.0.0.1:$P_SHADOW" 2>/dev/null || echo unknown)
[ "$shadow" = none ] || say "note: FuseboxBreakerOpen for the shadow-mode destination is $shadow"

# The route's own breaker has been open since the first seconds (its /fail calls always fail),
# so its alert is firing by now, or within a few evaluations: for the first fusebox only.
route_alert=none
for _ in $(seq 15); do
  route_alert=$(alert_state flaky "$FLAKY_DEST" FuseboxRouteBreakerOpen failing 2>/dev/null || echo unknown)
  [ "$route_alert" = firing ] && break
  sleep 2
done
if [ "$route_alert" = firing ]; then
  pass "alert FuseboxRouteBreakerOpen firing for flaky route failing -> $FLAKY_DEST (route breaker state $(route_state))"
else
  fail "alert FuseboxRouteBreakerOpen for flaky route failing: $route_alert, expected firing (route breaker state $(route_state))"
fi
route_instances=$(firing_instances FuseboxRouteBreakerOpen)
if [ "$route_instances" = "$ADMIN" ]; then
  pass "per pod: FuseboxRouteBreakerOpen fires for instance $ADMIN only"
else
  fail "per pod: FuseboxRouteBreakerOpen fires for instances [$route_instances], expected [$ADMIN]"
fi

say "done in $((SECONDS - START)) s"
summary
[ $failed = 0 ]

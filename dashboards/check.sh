#!/usr/bin/env bash
# dashboards/check.sh - checks the fusebox dashboard, alert rules and deploy files.
#
# Usage (from anywhere):
#   bash dashboards/check.sh                  # quick, offline checks (a few seconds)
#   bash dashboards/check.sh --prom           # also run every dashboard query against a real
#                                             # Prometheus scraping testdata/fusebox-metrics.prom
#   bash dashboards/check.sh --prom --target 127.0.0.1:9901 [--allow-empty]
#                                             # ... scraping a running fusebox's admin instead
#
# Quick checks:
#   - fusebox.json is valid JSON (python3 -m json.tool); uid, title, schemaVersion >= 39; the
#     datasource, upstream and destination variables;
#   - every panel has a description and the datasource ${datasource} (and so do its targets and
#     the annotation queries); gridPos inside 24 columns, no overlaps, unique ids;
#   - every query uses only the metric names of docs/ARCHITECTURE.md §4 (METRICS below), filters
#     upstream=~"$upstream", destination=~"$destination" on every metric that has those labels,
#     and uses only $__rate_interval (or $__range for totals over the time range) as range;
#   - promtool check rules alerts.yml, promtool test rules alerts.test.yml,
#     promtool check config ../deploy/prometheus.yml, promtool check metrics on the sample;
#   - the deploy and provisioning YAML files parse (python3 yaml, if installed), and
#     docker-compose.yml passes `docker compose config` when a compose CLI is installed.
# --prom: serves testdata/fusebox-metrics.prom (a static fusebox-shaped /metrics) with
#   `python3 -m http.server` on a free 127.0.0.1 port (or uses --target HOST:PORT[/PATH], a
#   running fusebox admin, loopback only), writes a prometheus.yml into a `mktemp -d` directory
#   (1 s scrape and rule evaluation, that target, alerts.yml as rule file), `promtool check
#   config`s it, starts `prometheus` on 127.0.0.1:$PROM_PORT, waits until the target is up and
#   lets it scrape ~3 s, then runs dashboards/queries.py: every dashboard query must parse and
#   return data (--allow-empty: may be empty, e.g. breaker panels before any trip); every
#   alerts.yml expression must parse and evaluate (empty is fine: thresholds), and Prometheus
#   must report every rule healthy. A self-test then shows that queries.py does fail: a broken
#   expression and an empty result exit 1, the latter exits 0 with --allow-empty. Everything
#   started is stopped by its PID; the temporary directory is removed.
#
# Environment: PROMTOOL (default promtool), PROMETHEUS (default prometheus), PROM_PORT (default
# 19090, or a free port if that one is busy), KEEP=1 keeps the --prom temporary directory. Needs
# python3 and promtool (and prometheus for --prom; Debian: apt-get install prometheus).
# Exit status: 0 all checks passed, 1 a check failed, 2 usage.
set -uo pipefail
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DASH=$HERE/fusebox.json
ALERTS=$HERE/alerts.yml
ALERTS_TEST=$HERE/alerts.test.yml
SAMPLE=$HERE/testdata/fusebox-metrics.prom
PROM_CFG=$ROOT/deploy/prometheus.yml
COMPOSE=$ROOT/deploy/docker-compose.yml
QUERIES=$HERE/queries.py
PROMTOOL=${PROMTOOL:-promtool}
PROMETHEUS=${PROMETHEUS:-prometheus}

# docs/ARCHITECTURE.md §4 (contract): every metric the dashboard and alerts may use. The first
# group carries the upstream and destination labels; the second does not.
METRICS_PER_DESTINATION="fusebox_breaker_state fusebox_breaker_transitions_total
  fusebox_requests_total fusebox_request_duration_seconds fusebox_attempts_total
  fusebox_attempt_duration_seconds fusebox_retries_total fusebox_retry_budget_exhausted_total
  fusebox_shadow_rejections_total fusebox_in_flight fusebox_tunnels_active
  fusebox_stream_timeouts_total fusebox_intercepted_connections_total
  fusebox_fleet_limiter_state fusebox_fleet_limiter_errors_total
  fusebox_endpoint_state fusebox_endpoint_ejections_total fusebox_endpoint_requests_total
  fusebox_endpoint_ewma_seconds fusebox_hedges_total fusebox_concurrency_limit
  fusebox_throttle_ratio fusebox_route_breaker_state fusebox_route_breaker_transitions_total"
METRICS_GLOBAL="fusebox_config_reloads_total fusebox_config_generation fusebox_build_info"
HISTOGRAMS="fusebox_request_duration_seconds fusebox_attempt_duration_seconds"

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
PROM=0; TARGET=""; ALLOW_EMPTY=()
while [ $# -gt 0 ]; do
  case $1 in
    --prom) PROM=1; shift ;;
    --target) [ $# -ge 2 ] || usage; TARGET=$2; shift 2 ;;
    --allow-empty) ALLOW_EMPTY=(--allow-empty); shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[ -z "$TARGET" ] || [ "$PROM" = 1 ] || { echo "--target needs --prom" >&2; usage; }

failed=0
step() { printf '== %s\n' "$*"; }
ok() { printf '   ok    %s\n' "$*"; }
bad() { printf '   FAIL  %s\n' "$*"; failed=$((failed + 1)); }
run() {  # run DESCRIPTION CMD...: ok/FAIL on the exit status, output indented
  local what=$1 out rc; shift
  out=$("$@" 2>&1); rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/         /'
  if [ $rc = 0 ]; then ok "$what"; else bad "$what (exit $rc)"; fi
}

tools=(python3 "$PROMTOOL"); [ "$PROM" = 1 ] && tools+=("$PROMETHEUS")
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null || { echo "$t is missing (promtool, prometheus: apt-get install -y prometheus)" >&2; exit 1; }
done

# ---------------------------------------------------------------- dashboard JSON
step "dashboard: $DASH"
run "valid JSON (python3 -m json.tool)" python3 -m json.tool "$DASH" /dev/null
out=$(METRICS_PER_DESTINATION="$METRICS_PER_DESTINATION" METRICS_GLOBAL="$METRICS_GLOBAL" \
      HISTOGRAMS="$HISTOGRAMS" python3 - "$DASH" <<'PY'
import json, os, re, sys

dash = json.load(open(sys.argv[1], encoding="utf-8"))
per_dest = set(os.environ["METRICS_PER_DESTINATION"].split())
known = per_dest | set(os.environ["METRICS_GLOBAL"].split())
for h in os.environ["HISTOGRAMS"].split():
    known |= {h + "_bucket", h + "_sum", h + "_count"}
    per_dest |= {h + "_bucket", h + "_sum", h + "_count"}
DS = {"type": "prometheus", "uid": "${datasource}"}
errors = []
err = errors.append

# -- dashboard settings and variables
if dash.get("uid") != "fusebox":
    err(f'uid is {dash.get("uid")!r}, expected "fusebox"')
if dash.get("title") != "fusebox — egress resilience":
    err(f'title is {dash.get("title")!r}')
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 39:
    err(f'schemaVersion {dash.get("schemaVersion")!r} < 39')
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
v = variables.get("datasource")
if not v or v.get("type") != "datasource" or v.get("query") != "prometheus":
    err('variable "datasource" must be type datasource with query "prometheus"')
for name in ("upstream", "destination"):
    v = variables.get(name)
    if not v:
        err(f'variable "{name}" missing')
        continue
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    if v.get("type") != "query" or v.get("datasource") != DS:
        err(f'variable "{name}": type query on datasource ${{datasource}} expected')
    if not (v.get("multi") and v.get("includeAll")):
        err(f'variable "{name}": multi-value with "All" expected')
    if not q.startswith("label_values(fusebox_requests_total") or not q.rstrip(") ").endswith(name):
        err(f'variable "{name}": label_values(fusebox_requests_total..., {name}) expected, got {q!r}')
if "$upstream" not in str(variables.get("destination", {}).get("query", "")):
    err('variable "destination" must depend on $upstream')

# -- panels (rows followed, collapsed or not)
def flatten(panels):
    for p in panels:
        yield p
        yield from flatten(p.get("panels", []))

panels = list(flatten(dash.get("panels", [])))
top_level = [id(p) for p in dash.get("panels", [])]  # collapsed rows' panels are laid out on expand
ids, cells, exprs = set(), {}, []
for p in panels:
    title = p.get("title") or f'id {p.get("id")}'
    if p.get("id") in ids:
        err(f"{title}: duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    g = p.get("gridPos") or {}
    if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24 or g["w"] < 1 or g["h"] < 1:
        err(f"{title}: bad gridPos {g}")
    elif id(p) in top_level:
        hit = next(((x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"]) if (x, y) in cells), None)
        if hit:
            err(f"{title}: overlaps {cells[hit]} at x={hit[0]} y={hit[1]}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                cells[(x, y)] = title
    if p.get("type") == "row":
        continue
    if not isinstance(p.get("description"), str) or not p["description"].strip():
        err(f"{title}: no description")
    if p.get("datasource") != DS:
        err(f"{title}: datasource is {p.get('datasource')!r}, expected {DS}")
    targets = p.get("targets") or []
    if not targets:
        err(f"{title}: no targets")
    for t in targets:
        if t.get("datasource") != DS:
            err(f"{title} / {t.get('refId')}: target datasource is {t.get('datasource')!r}")
        if not (t.get("expr") or "").strip():
            err(f"{title} / {t.get('refId')}: empty expr")
        else:
            exprs.append((f"{title} / {t.get('refId')}", t["expr"]))
    if p.get("type") == "state-timeline":
        want = {"0": ("closed", "green"), "1": ("half-open", "yellow"), "2": ("open", "red")}
        got = {}
        for m in p.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
            for k, o in (m.get("options") or {}).items():
                got[k] = (o.get("text"), o.get("color"))
        if got != want:
            err(f"{title}: value mappings {got}, expected {want}")

for a in dash.get("annotations", {}).get("list", []):
    if a.get("builtIn"):
        continue
    if a.get("datasource") != DS:
        err(f'annotation {a.get("name")}: datasource is {a.get("datasource")!r}')
    if not (a.get("expr") or "").strip():
        err(f'annotation {a.get("name")}: no expr')
    else:
        exprs.append((f'annotation {a.get("name")}', a["expr"]))

# -- queries: metric names, label filters, ranges
FUNCS = {"sum", "max", "min", "avg", "count", "rate", "increase", "changes", "histogram_quantile",
         "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
         "unless", "offset", "vector", "clamp_min", "clamp_max", "abs", "time", "label_replace",
         "max_over_time", "min_over_time", "avg_over_time", "delta", "irate", "topk", "bottomk",
         "scalar", "round", "resets", "absent", "last_over_time", "sum_over_time"}
for where, expr in exprs:
    for name in re.findall(r"\bfusebox_\w+", expr):
        if name not in known:
            err(f"{where}: metric {name} is not in docs/ARCHITECTURE.md §4")
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no identifiers from inside strings
    for ident in re.findall(r"(?<![\w$])([a-zA-Z_:][\w:]*)\s*[{\[]", stripped):
        if not ident.startswith("fusebox_") and ident not in FUNCS:
            err(f"{where}: unknown metric {ident} (only docs/ARCHITECTURE.md §4 metrics)")
    for m in re.finditer(r"\b(fusebox_\w+)\b(\s*\{([^}]*)\})?", expr):
        if m.group(1) in per_dest:
            sel = m.group(3) or ""
            if 'upstream=~"$upstream"' not in sel or 'destination=~"$destination"' not in sel:
                err(f'{where}: {m.group(1)} without upstream=~"$upstream", destination=~"$destination"')
    for r in re.findall(r"\[([^\]]*)\]", expr):
        if r not in ("$__rate_interval", "$__range"):
            err(f"{where}: range [{r}]: use [$__rate_interval] ([$__range] for time-range totals)")

n_panels = sum(1 for p in panels if p.get("type") != "row")
for e in errors:
    print(e)
print(f"{n_panels} panels, {len(exprs)} queries checked, {len(errors)} problems")
sys.exit(1 if errors else 0)
PY
); rc=$?
printf '%s\n' "$out" | sed 's/^/         /'
if [ $rc = 0 ]; then ok "panels: descriptions, \${datasource}, layout; queries: metric names, label filters, ranges"
else bad "panels and queries"; fi

# ---------------------------------------------------------------- rules, config, sample
step "alerts: $ALERTS"
run "promtool check rules alerts.yml" "$PROMTOOL" check rules "$ALERTS"
run "promtool test rules alerts.test.yml" bash -c 'cd "$1" && "$2" test rules "$(basename "$3")"' _ \
  "$HERE" "$PROMTOOL" "$ALERTS_TEST"
step "deploy: $PROM_CFG"
run "promtool check config deploy/prometheus.yml" "$PROMTOOL" check config "$PROM_CFG"
step "sample exposition: $SAMPLE"
run "promtool check metrics testdata/fusebox-metrics.prom" bash -c '"$1" check metrics <"$2"' _ "$PROMTOOL" "$SAMPLE"
run "the sample has every docs/ARCHITECTURE.md §4 metric" bash -c '
  for m in $1; do grep -q "^$m[{ ]\|^${m}_bucket{" "$2" || { echo "missing: $m"; exit 1; }; done' _ \
  "$METRICS_PER_DESTINATION $METRICS_GLOBAL" "$SAMPLE"

step "YAML files"
if python3 -c 'import yaml' 2>/dev/null; then
  for f in "$COMPOSE" "$HERE"/provisioning/*/*.yml "$ALERTS" "$ALERTS_TEST" "$PROM_CFG"; do
    run "parses: ${f#"$ROOT"/}" python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f"
  done
else
  echo "   skip  python3 yaml module missing (apt-get install python3-yaml): YAML not parsed"
fi
if docker compose version >/dev/null 2>&1; then
  run "docker compose config" docker compose -f "$COMPOSE" config -q
elif command -v docker-compose >/dev/null 2>&1; then
  run "docker-compose config" docker-compose -f "$COMPOSE" config -q
else
  echo "   skip  no docker compose CLI: deploy/docker-compose.yml only parsed as YAML"
fi

# ---------------------------------------------------------------- --prom: a real Prometheus
SERVER_PID=""; PROM_PID=""; TMP=""
stop() {  # stop PID: SIGTERM, up to 10 s to exit, then SIGKILL; only PIDs this script started
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  stop "$PROM_PID"; PROM_PID=""
  stop "$SERVER_PID"; SERVER_PID=""
  if [ -n "$TMP" ]; then
    if [ "${KEEP:-0}" = 1 ]; then echo "check.sh: kept $TMP"; else rm -rf "$TMP"; fi
    TMP=""
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# prom_api WHAT: asks the Prometheus under test (loopback, proxies ignored); exit 0 when WHAT holds.
#   ready: /-/ready answers; targets: every active target is up; rules: every rule evaluated ok.
prom_api() {
  python3 - "$PROM_URL" "$1" <<'PY'
import json, sys, urllib.request
base, what = sys.argv[1:3]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path):
    with opener.open(base + path, timeout=3) as r:
        return r.read()
try:
    if what == "ready":
        get("/-/ready")
        sys.exit(0)
    if what == "targets":
        ts = json.loads(get("/api/v1/targets?state=active"))["data"]["activeTargets"]
        for t in ts:
            print(f'{t["health"]:7} {t["scrapeUrl"]} {t.get("lastError") or ""}'.rstrip())
        sys.exit(0 if ts and all(t["health"] == "up" for t in ts) else 1)
    if what == "rules":
        rules = [r for g in json.loads(get("/api/v1/rules"))["data"]["groups"] for r in g["rules"]]
        for r in rules:
            print(f'{r["health"]:7} {r["name"]} {r.get("lastError") or ""}'.rstrip())
        sys.exit(0 if rules and all(r["health"] == "ok" for r in rules) else 1)
except Exception as e:  # not up yet, or not answering: the caller polls
    print(f"{base}: {e}")
sys.exit(1)
PY
}
# poll SECONDS CMD...: runs CMD every 0.5 s until it succeeds (0) or SECONDS pass (1)
poll() {
  local secs=$1 i; shift
  for ((i = 0; i < secs * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
tail_log() { [ -s "$1" ] && tail -n 15 "$1" | sed 's/^/         /'; }

prom_checks() {
  local addr path host port cfg before=$failed
  TMP=$(mktemp -d -t fusebox-dashcheck.XXXXXX) || { bad "mktemp -d"; return; }
  if [ -z "${PROM_PORT:-}" ]; then
    PROM_PORT=19090; port_open "$PROM_PORT" && PROM_PORT=$(free_port)
  elif port_open "$PROM_PORT"; then
    bad "PROM_PORT=$PROM_PORT: 127.0.0.1:$PROM_PORT is busy"; return
  fi
  PROM_URL=http://127.0.0.1:$PROM_PORT

  # -- the scrape target: a running fusebox (--target), or the static sample
  if [ -n "$TARGET" ]; then
    addr=${TARGET%%/*}; path=/metrics
    [ "$addr" = "$TARGET" ] || path=/${TARGET#*/}
    host=${addr%:*}; port=${addr##*:}
    if ! [[ $port =~ ^[0-9]+$ ]] || [ "$host" = "$addr" ] || ! [[ $path =~ ^/[A-Za-z0-9_./-]*$ ]]; then
      bad "--target $TARGET: expected HOST:PORT[/PATH]"; return
    fi
    case $host in
      localhost|'[::1]') ;;
      *) [[ $host =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
           { bad "--target $TARGET: only loopback targets (127.0.0.0/8, localhost, [::1])"; return; } ;;
    esac
  else
    mkdir -p "$TMP/www" && cp "$SAMPLE" "$TMP/www/metrics"
    port=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$port" \
      </dev/null >"$TMP/http.log" 2>&1 &
    SERVER_PID=$!
    if ! poll 10 port_open "$port"; then
      bad "static metrics server did not start on 127.0.0.1:$port"; tail_log "$TMP/http.log"; return
    fi
    ok "serving testdata/fusebox-metrics.prom on http://127.0.0.1:$port/metrics (pid $SERVER_PID)"
    addr=127.0.0.1:$port; path=/metrics
  fi

  # -- prometheus.yml: that one target, alerts.yml as rule file
  cfg=$TMP/prometheus.yml
  cp "$ALERTS" "$TMP/alerts.yml"
  cat >"$cfg" <<YML
# written by dashboards/check.sh --prom (loopback only)
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - "$TMP/alerts.yml"
scrape_configs:
  - job_name: fusebox
    metrics_path: "$path"
    static_configs:
      - targets: ["$addr"]
YML
  run "promtool check config (generated prometheus.yml scraping $addr$path)" "$PROMTOOL" check config "$cfg"
  [ "$failed" = "$before" ] || return

  # -- prometheus
  "$PROMETHEUS" --config.file="$cfg" --storage.tsdb.path="$TMP/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" </dev/null >"$TMP/prometheus.log" 2>&1 &
  PROM_PID=$!
  if ! poll 30 prom_api ready; then
    bad "prometheus (pid $PROM_PID) not ready on $PROM_URL within 30 s"; tail_log "$TMP/prometheus.log"; return
  fi
  if ! poll 30 prom_api targets; then
    bad "the target $addr$path is not up in Prometheus within 30 s"; prom_api targets | sed 's/^/         /'
    return
  fi
  ok "prometheus pid $PROM_PID on $PROM_URL: target $addr$path up"
  sleep 3   # a few scrapes and rule evaluations, so that rate() has samples

  # -- the queries
  run "dashboard queries: every one parses and returns data${ALLOW_EMPTY:+ (--allow-empty)}" \
    python3 "$QUERIES" --prom "$PROM_URL" "$DASH" "${ALLOW_EMPTY[@]}"
  run "alerts.yml expressions parse and evaluate (empty allowed: thresholds, for:)" \
    python3 "$QUERIES" --prom "$PROM_URL" --rules "$ALERTS" --allow-empty
  if poll 10 prom_api rules; then
    ok "Prometheus evaluates every alerts.yml rule without error (/api/v1/rules: health ok)"
  else
    bad "alerts.yml rules not healthy in Prometheus (/api/v1/rules)"; prom_api rules | sed 's/^/         /'
  fi

  # -- self-test: the checker must be seen to fail
  step "self-test: queries.py fails on bad queries"
  expect() {  # expect STATUS DESCRIPTION ARGS...: queries.py ARGS must exit with STATUS
    local want=$1 what=$2 got out; shift 2
    out=$(python3 "$QUERIES" "$@" 2>&1); got=$?
    if [ "$got" != "$want" ]; then
      printf '%s\n' "$out" | sed 's/^/         /'; bad "$what: exit $got, expected $want"
    elif [ "$want" != 2 ] && ! printf '%s\n' "$out" | tail -n 1 | grep -qE '^queries: [0-9]+ passed, [0-9]+ failed$'; then
      printf '%s\n' "$out" | sed 's/^/         /'; bad "$what: no 'queries: N passed, N failed' summary line"
    else
      ok "$what (exit $got)"
    fi
  }
  expect 1 "a syntactically broken expression fails" --prom "$PROM_URL" --expr 'sum(rate(fusebox_requests_total[5m])'
  expect 1 "an empty result fails" --prom "$PROM_URL" --expr 'fusebox_no_such_metric_total'
  expect 0 "an empty result passes with --allow-empty" --prom "$PROM_URL" --expr 'fusebox_no_such_metric_total' --allow-empty
  expect 1 'a template variable defaults to the regex .* (up{job="$job"} matches nothing)' --prom "$PROM_URL" --expr 'up{job="$job"}'
  expect 0 "--var sets a template variable (job=fusebox)" --prom "$PROM_URL" --expr 'up{job="$job"}' --var job=fusebox
  expect 2 "a non-loopback Prometheus URL is refused" --prom http://192.0.2.1:9090 --expr 'up'
}

if [ "$PROM" = 1 ]; then
  step "prom: dashboard queries and alert rules against a real Prometheus"
  prom_checks
  cleanup
fi

echo
if [ $failed = 0 ]; then echo "check.sh: all checks passed"; exit 0; fi
echo "check.sh: $failed check(s) failed"; exit 1

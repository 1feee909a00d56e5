#!/usr/bin/env bash
# Reloads of many policies (docs/ARCHITECTURE.md §7, §8): one fusebox (`--workers 1`) with
# N policy files (default 1,000), measured for
#   - RSS at start, and after each of 5 full reloads (every file changed, picked up by the
#     file watch);
#   - the reload time (from the log: "policies directory changed" to "policies reloaded");
#   - the slowest request of steady traffic (hey, 200 rps through fusebox to a local upstream)
#     while those reloads happen: a reload must not stall live traffic. The same traffic runs
#     first for as long without reloads: its slowest request is the machine's own noise.
# Usage: bash bench/reload.sh [N]     (about 20 s; FUSEBOX_BIN to use a given binary)
# Needs: hey, curl, python3; nginx as the upstream when installed (python3's http.server
# otherwise, which is slower and noisier). Everything listens on 127.0.0.1; processes are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup reload.sh hey curl python3
POL=$WORK/policies
mkdir -p "$POL"
write() {  # write ATTEMPTS: every policy file, changed
  local i
  for i in $(seq 1 "$N"); do printf 'hosts = ["svc%d.example"]\n[retry]\nattempts = %d\n' "$i" "$1" >"$POL/p$i.toml"; done
}
printf 'allow_private = true   # BENCHMARK ONLY: loopback upstream\n' >"$POL/default.toml"
write 2
UP_PORT=$(free_port); LISTEN=127.0.0.1:$(free_port); ADMIN=127.0.0.1:$(free_port)
if command -v nginx >/dev/null; then
  nginx_start upstream "server { listen 127.0.0.1:$UP_PORT; location / { return 200 $NGINX_BODY; } }"
else
  python3 -m http.server "$UP_PORT" --bind 127.0.0.1 >/dev/null 2>&1 &
  PIDS+=($!)
fi
"$FUSEBOX_BIN" run --policies "$POL" --listen "$LISTEN" --admin "$ADMIN" --workers 1 >"$WORK/fusebox.log" 2>&1 &
FUSEBOX=$!; PIDS+=("$FUSEBOX")
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
printf '%d policies: RSS at start %d KiB\n' "$N" "$(rss "$FUSEBOX")"
traffic() { hey -z "$1" -c 4 -q 50 -x "http://$LISTEN" "http://127.0.0.1:$UP_PORT/"; }
slowest() { awk -v what="$2" '/Slowest/ { printf "slowest request %s: %.1f ms\n", what, $2 * 1000 }
  /Average/ { printf "average request %s: %.1f ms\n", what, $2 * 1000 }' "$1"; }
traffic 8s >"$WORK/control.txt" 2>&1
traffic 8s >"$WORK/hey.txt" 2>&1 &
HEY=$!; PIDS+=("$HEY")
sleep 1
first=0
for r in 1 2 3 4 5; do
  write $((r + 2))
  for _ in $(seq 100); do grep -q "reloaded generation=$((r + 1)) " "$WORK/fusebox.log" && break; sleep 0.1; done
  sleep 0.3
  now=$(rss "$FUSEBOX"); [ "$first" != 0 ] || first=$now
  took=$(python3 - "$WORK/fusebox.log" $((r + 1)) <<'PY'
import re, sys, datetime
lines = open(sys.argv[1]).read().splitlines()
t = lambda l: datetime.datetime.fromisoformat(l.split()[0].rstrip("Z"))
end = next(i for i, l in enumerate(lines) if f"reloaded generation={sys.argv[2]} " in l)
start = max(i for i in range(end) if "directory changed" in lines[i])
print(f"{(t(lines[end]) - t(lines[start])).total_seconds() * 1000:.0f} ms")
PY
)
  awk -v r="$r" -v n="$now" -v f="$first" -v t="$took" \
    'BEGIN { printf "reload %d: %s, RSS %d KiB (%.2fx the first reload)\n", r, t, n, n / f }'
done
wait "$HEY" || true
slowest "$WORK/control.txt" "without reloads (8 s)"
slowest "$WORK/hey.txt" "during the 5 reloads (8 s)"

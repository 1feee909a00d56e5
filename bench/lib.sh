# Sourced by bench/*.sh: the checks, work directory and helpers every benchmark shares.
#
# bench_setup NAME TOOL...: checks that each TOOL is installed, builds target/release/fusebox
# when FUSEBOX_BIN is not set, and makes WORK, a directory removed on exit (kept with KEEP=1),
# when every process whose PID is in PIDS is also stopped.

bench_setup() {
  BENCH=$1
  shift
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench/$BENCH: $tool not found" >&2; exit 2; }
  done
  if [ -z "${FUSEBOX_BIN:-}" ]; then
    cargo build --release --locked --quiet
    FUSEBOX_BIN=target/release/fusebox
  fi
  WORK=$(mktemp -d "/tmp/fusebox-bench-${BENCH%.*}.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}

log() { printf 'bench/%s: %s\n' "$BENCH" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU time (user + system) of PID so far, in clock ticks (HZ a second).
ticks() { awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
export HZ

# The 64-byte body nginx answers with, as an nginx string.
NGINX_BODY='"hello from loopback upstream (64-byte static body for benchmarks"'

# nginx_start NAME HTTP-BLOCKS: one nginx process (no master, so that its CPU time is what
# /proc/PID/stat says) with HTTP-BLOCKS inside `http {}`; its PID in NGINX_PID and PIDS.
nginx_start() {
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1; fastcgi_temp_path $WORK/$1;
  uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1;
  keepalive_requests 1000000;
  $2
}
CONF
  nginx -c "$WORK/$1.conf" -e "$WORK/$1/error.log" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}

# Every pipeline stage on, none of them ever refusing: a policy's body after its `hosts`.
FULL_PIPELINE='[timeouts]
connect = "1s"
attempt = "2s"
total = "5s"
[retry]
attempts = 3
on = ["connect-failure", "reset", "gateway-error", "timeout"]
[breaker]
mode = "enforce"
[rate_limit]
rps = 1000000
burst = 1000000
[concurrency]
max_in_flight = 100000'

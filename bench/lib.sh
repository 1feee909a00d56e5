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

#!/usr/bin/env bash
# All of fusebox's own benchmarks in one run (docs/ARCHITECTURE.md §8; figures in
# docs/PERFORMANCE.md): CPU per request against nginx and latency at a fixed rate (proxy.sh), RSS per
# idle app connection (idle.py), per destination (destinations.py), 1,000 policies and their
# reload (reload.sh), HTTPS interception (https.sh), the slow-endpoint experiment
# (endpoints.py, about 5 minutes of it), overload against adaptive concurrency limits
# (overload.py, about 6 minutes) and hedged requests against a slow tail (tail.py, about 2.5
# minutes). About 18 minutes on 2 cores.
#
# Usage: bash bench/all.sh
# Needs: nginx, wrk, hey, curl, openssl, python3 (Debian: apt-get install -y nginx-light wrk hey
# curl openssl python3). Builds target/release/fusebox when FUSEBOX_BIN is not set, and the load
# generator of overload.py and tail.py (bench/loadgen, its own workspace) into target/loadgen
# when LOADGEN_BIN is not set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${FUSEBOX_BIN:-}" ]; then
  cargo build --release --locked --quiet
  export FUSEBOX_BIN=target/release/fusebox
fi
if [ -z "${LOADGEN_BIN:-}" ]; then
  cargo build --release --locked --quiet --manifest-path bench/loadgen/Cargo.toml --target-dir target/loadgen
  export LOADGEN_BIN=target/loadgen/release/fusebox-loadgen
fi
echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $FUSEBOX_BIN"
echo "== bench/proxy.sh";        bash bench/proxy.sh
echo "== bench/idle.py";         python3 bench/idle.py
echo "== bench/destinations.py"; python3 bench/destinations.py
echo "== bench/reload.sh";       bash bench/reload.sh
echo "== bench/https.sh";        bash bench/https.sh
echo "== bench/endpoints.py";    python3 bench/endpoints.py
echo "== bench/overload.py";     python3 bench/overload.py
echo "== bench/tail.py";         python3 bench/tail.py

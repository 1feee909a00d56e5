#!/usr/bin/env bash
# Installs the real clients the tests use beside reqwest and curl: Python `requests`, `grpcio`
# and `playwright` in a virtual environment under target/test-tools (the tests find it there,
# or at $FUSEBOX_TEST_PYTHON), Node.js from Debian when `node` is missing, and Debian's
# chromium when /usr/bin/chromium is missing (the browser playwright drives in
# tests/live_view.rs; playwright's own browser download is never used). Idempotent; run by
# .ci/run. Reads nothing outside this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

need=()
command -v node >/dev/null || need+=(nodejs)
[ -x /usr/bin/chromium ] || need+=(chromium)
# The clients of tests/trust.rs beside curl, Python and Node: npm; a JDK (keytool, and
# `java Fetch.java`, which needs the compiler); Go (about 7 s to install, 0.3 s to build).
command -v npm >/dev/null || need+=(npm)
{ command -v javac >/dev/null && command -v keytool >/dev/null; } || need+=(default-jdk-headless)
command -v go >/dev/null || need+=(golang-go)
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi

venv=target/test-tools
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/peers/requirements.txt "$stamp"; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r tests/peers/requirements.txt
  cp tests/peers/requirements.txt "$stamp"
fi
echo "test tools: $("$venv/bin/python" -c 'import grpc, requests, importlib.metadata as m; print("grpcio", grpc.__version__, "requests", requests.__version__, "playwright", m.version("playwright"))'), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null)"
echo "trust test tools: npm $(npm --version), $(javac -version 2>&1), $(go version), $("$venv/bin/pip" --version | cut -d' ' -f1-2)"

#!/usr/bin/env bash
# Installs the real clients the tests use beside reqwest and curl: Python `requests` and
# `grpcio` in a virtual environment under target/test-tools (the tests find it there, or at
# $FUSEBOX_TEST_PYTHON), and Node.js from Debian when `node` is missing. Idempotent; run by
# .ci/run. Reads nothing outside this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

command -v node >/dev/null || apt_install nodejs

venv=target/test-tools
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/peers/requirements.txt "$stamp"; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
  cp tests/peers/requirements.txt "$stamp"
fi
echo "test tools: $("$venv/bin/python" -c 'import grpc, requests; print("grpcio", grpc.__version__, "requests", requests.__version__)'), node $(node --version)"

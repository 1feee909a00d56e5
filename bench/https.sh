#!/usr/bin/env bash
# fusebox's own HTTPS interception benchmark (docs/ARCHITECTURE.md §13): CPU per request of one
# fusebox process (`--workers 1`), every pipeline stage on, in one run, for
#
#   http-full       http://  through the egress listener to a plain nginx upstream (the
#                   reference: what `fusebox-fwd-full` of the peer benchmark measures)
#   https-keepalive https:// through HTTPS_PROXY with `intercept = true`, kept-alive app
#                   connections (one CONNECT and handshake per connection, then requests), TLS
#                   originated to an nginx HTTPS upstream over a kept-alive connection
#   https-new       the same with a new app connection per request (CONNECT, TLS handshake with
#                   a cached leaf certificate, one request): CPU per new intercepted connection
#   nginx-tls-new   reference for one server-side TLS handshake: nginx's CPU per new TLS
#                   connection (same key type as fusebox's leaves: ECDSA P-256), hey direct
#
# and prints the ratios https-keepalive / http-full and https-new / nginx-tls-new. Only ratios
# within one run mean anything (load generator, proxy and upstream share the cores).
#
# Usage: bash bench/https.sh        (about 1 minute; DUR=10s per case by default)
# Needs: nginx, hey, openssl, curl (Debian: apt-get install -y nginx-light hey openssl curl);
# builds target/release/fusebox when FUSEBOX_BIN is not set. Everything listens on 127.0.0.1.
# Processes are started by this script and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-10s}
CONNS=${CONNS:-50}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup https.sh nginx hey openssl curl

# ---- certificates: a CA for the upstream (the policy's ca_file), a localhost leaf
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/up-ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/up-ca.key" -subj "/CN=bench upstream CA" -days 2 \
  -out "$WORK/up-ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/up.key" 2>/dev/null
openssl req -new -key "$WORK/up.key" -subj "/CN=localhost" -out "$WORK/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/up.csr" -CA "$WORK/up-ca.pem" -CAkey "$WORK/up-ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/up.pem" 2>/dev/null
"$FUSEBOX_BIN" ca init --dir "$WORK/ca" >/dev/null

# ---- nginx: plain and TLS upstream, 64-byte body
P_PLAIN=$(free_port); P_TLS=$(free_port)
nginx_start nginx "
  server { listen 127.0.0.1:$P_PLAIN; location / { return 200 $NGINX_BODY; } }
  server {
    listen 127.0.0.1:$P_TLS ssl;
    ssl_certificate $WORK/up.pem; ssl_certificate_key $WORK/up.key;
    ssl_session_cache off; ssl_session_tickets off;
    location / { return 200 $NGINX_BODY; }
  }"
NGINX=$NGINX_PID

# ---- fusebox: the full pipeline on both policies
mkdir -p "$WORK/policies"
cp "$WORK/up-ca.pem" "$WORK/policies/up-ca.pem"
printf 'allow_private = true   # BENCHMARK ONLY: loopback upstreams\n' >"$WORK/policies/default.toml"
printf 'hosts = ["127.0.0.1:%s"]\n%s\n' "$P_PLAIN" "$FULL_PIPELINE" >"$WORK/policies/plain.toml"
# hey sends the request's Host, port included, as its TLS server name, which rustls refuses;
# so the app calls https://localhost/ (port 443) and the policy pins it to nginx's port.
printf 'hosts = ["localhost:443"]\nendpoints = ["localhost:%s"]\nintercept = true\nca_file = "up-ca.pem"\n%s\n' \
  "$P_TLS" "$FULL_PIPELINE" >"$WORK/policies/tls.toml"
LISTEN=127.0.0.1:$(free_port); ADMIN=127.0.0.1:$(free_port)
"$FUSEBOX_BIN" run --policies "$WORK/policies" --listen "$LISTEN" --admin "$ADMIN" \
  --ca-dir "$WORK/ca" --workers 1 >"$WORK/fusebox.log" 2>&1 &
FUSEBOX=$!; PIDS+=("$FUSEBOX")
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$WORK/fusebox.log" >&2; exit 1; }

# End-to-end checks before measuring.
body=$(curl -sf -x "http://$LISTEN" "http://127.0.0.1:$P_PLAIN/")
[ ${#body} = 64 ] || { log "http check failed: $body"; exit 1; }
body=$(curl -sf --cacert "$WORK/ca/ca.pem" -x "http://$LISTEN" "https://localhost/")
[ ${#body} = 64 ] || { log "https check failed: $body"; exit 1; }

# run CASE PID URL [hey flags...]: hey for $DUR; prints CASE, requests, CPU us/request of PID
run() {
  local name=$1 pid=$2 url=$3; shift 3
  local before after out ok
  hey -z 1s -c "$CONNS" "$@" "$url" >/dev/null 2>&1 || true   # warm-up: pools, leaf cache
  before=$(ticks "$pid")
  out=$(hey -z "$DUR" -c "$CONNS" "$@" "$url" 2>&1)
  after=$(ticks "$pid")
  ok=$(printf '%s\n' "$out" | awk '/\[200\]/ { print $2; exit }')
  [ -n "$ok" ] && [ "$ok" -gt 0 ] || { log "$name: no 200 responses"; printf '%s\n' "$out" >&2; exit 1; }
  if printf '%s\n' "$out" | grep -q '^Error distribution:'; then
    log "$name: errors: $(printf '%s\n' "$out" | sed -n '/^Error distribution:/,$p' | head -5 | tr '\n' ' ')"
  fi
  awk -v n="$name" -v r="$ok" -v t=$((after - before)) -v hz="$HZ" \
    'BEGIN { printf "%-16s %9d requests  %7.1f CPU us/request\n", n, r, t / hz * 1e6 / r }'
}

# hey does not verify certificates (it sets InsecureSkipVerify); curl above did.
results=$WORK/results.txt
{
  run http-full "$FUSEBOX" "http://127.0.0.1:$P_PLAIN/" -x "http://$LISTEN"
  run https-keepalive "$FUSEBOX" "https://localhost/" -x "http://$LISTEN"
  run https-new "$FUSEBOX" "https://localhost/" -x "http://$LISTEN" -disable-keepalive
  run nginx-tls-new "$NGINX" "https://localhost:$P_TLS/" -disable-keepalive
} | tee "$results"
cpu() { awk -v n="$1" '$1 == n { print $4 }' "$results"; }
awk -v a="$(cpu https-keepalive)" -v b="$(cpu http-full)" -v c="$(cpu https-new)" -v d="$(cpu nginx-tls-new)" 'BEGIN {
  printf "https-keepalive / http-full   = %.2fx  (target <= 1.5x)\n", a / b
  printf "https-new / nginx-tls-new     = %.2fx  (one server-side TLS handshake = 1.0x; fusebox also routes the CONNECT and proxies the request)\n", c / d
}'

#!/usr/bin/env bash
# Tests nginx/coolchat.conf for real: nginx (TLS with a self-signed certificate) in front of a
# `coolchat serve` node, driven by `coolchat bench --insecure` (real SIWE sign-ins over HTTPS,
# Socket.IO over WSS through the Upgrade handshake, REST room set-up) with strict loss and
# duplicate gates, plus REST and long-polling checks with curl. Builds nothing.
#
# Usage: scripts/nginx-smoke.sh         (needs nginx, openssl, curl; .ci/run installs nginx)
# Environment: COOLCHAT_BIN [default: target/debug/coolchat]
# Exit status: 0 passed; 1 a check failed; 2 a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${COOLCHAT_BIN:-$PWD/target/debug/coolchat}"
for tool in nginx openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install -y nginx openssl curl)" >&2; exit 2; }
done
[[ -x "$BIN" ]] || { echo "error: $BIN is not an executable; run 'cargo build'" >&2; exit 2; }

WORK="$(mktemp -d -t coolchat-nginx.XXXXXX)"
NODE_PID=""
NGINX_PID=""
cleanup() {
  [[ -n "$NGINX_PID" ]] && kill -TERM "$NGINX_PID" 2>/dev/null || true
  [[ -n "$NODE_PID" ]] && kill -KILL "$NODE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A free port for nginx's TLS listener.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ORIGIN="https://127.0.0.1:$PORT"

echo "==> self-signed certificate"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/privkey.pem" -out "$WORK/fullchain.pem" 2>/dev/null

echo "==> coolchat serve (public origin $ORIGIN)"
COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE=100000 \
COOLCHAT__LIMITS__MESSAGES_PER_SECOND=1000 \
COOLCHAT__LIMITS__MESSAGE_BURST=1000 \
COOLCHAT__SERVER__TRUSTED_PROXIES=127.0.0.1 \
RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" --public-url "$ORIGIN" >"$WORK/node.log" 2>&1 &
NODE_PID=$!
NODE_ADDR=""
for _ in $(seq 1 300); do
  NODE_ADDR="$(grep -ao 'listening on http://[^[:space:]]*' "$WORK/node.log" | head -n1 | sed 's|^listening on http://||' || true)"
  [[ -n "$NODE_ADDR" ]] && break
  kill -0 "$NODE_PID" 2>/dev/null || { echo "error: the node exited:" >&2; cat "$WORK/node.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$NODE_ADDR" ]] || { echo "error: the node did not start listening" >&2; exit 1; }

echo "==> nginx with nginx/coolchat.conf (upstream $NODE_ADDR, TLS on $PORT)"
mkdir -p "$WORK/nginx/tmp"
# The shipped file, with its EDIT places pointed at this test.
sed -e "s|server 127.0.0.1:8080|server $NODE_ADDR|" \
    -e "s|listen 443 ssl;|listen 127.0.0.1:$PORT ssl;|" \
    -e "s|server_name chat.example.com;|server_name localhost 127.0.0.1;|" \
    -e "s|/etc/ssl/coolchat/fullchain.pem|$WORK/fullchain.pem|" \
    -e "s|/etc/ssl/coolchat/privkey.pem|$WORK/privkey.pem|" \
    nginx/coolchat.conf >"$WORK/nginx/coolchat.conf"
grep -q "server $NODE_ADDR" "$WORK/nginx/coolchat.conf" && grep -q "listen 127.0.0.1:$PORT ssl" "$WORK/nginx/coolchat.conf" \
  || { echo "error: nginx/coolchat.conf no longer has the expected EDIT lines" >&2; exit 1; }
cat >"$WORK/nginx/nginx.conf" <<CONF
$( [[ "$(id -u)" == 0 ]] && echo "user root;" )
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/coolchat.conf;
}
CONF
nginx -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>&1 | tail -n 2
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 1 100); do
  curl -ksf "$ORIGIN/healthz" >/dev/null 2>&1 && break
  kill -0 "$NGINX_PID" 2>/dev/null || { echo "error: nginx exited:" >&2; cat "$WORK/nginx/error.log" >&2; exit 1; }
  sleep 0.1
done

echo "==> REST through nginx"
curl -ksf "$ORIGIN/healthz" | grep -q '"ok"' || { echo "error: /healthz through nginx" >&2; exit 1; }
NONCE_JSON="$(curl -ksf "$ORIGIN/api/v1/auth/nonce")"
echo "$NONCE_JSON" | grep -q "\"domain\":\"127.0.0.1:$PORT\"" \
  || { echo "error: the node does not advertise the public origin: $NONCE_JSON" >&2; exit 1; }
CODE="$(curl -ks -o /dev/null -w '%{http_code}' "$ORIGIN/api/v1/me")"
[[ "$CODE" == 401 ]] || { echo "error: GET /api/v1/me without a token gave $CODE, expected 401" >&2; exit 1; }

echo "==> Socket.IO long-polling handshake through nginx"
HANDSHAKE="$(curl -ksf "$ORIGIN/socket.io/?EIO=4&transport=polling")"
echo "$HANDSHAKE" | grep -q '"sid"' || { echo "error: polling handshake through nginx: $HANDSHAKE" >&2; exit 1; }

echo "==> coolchat bench through nginx (TLS, WebSocket upgrade, SIWE over HTTPS)"
"$BIN" bench --url "$ORIGIN" --insecure --scenario fanout \
  --clients 100 --rooms 10 --room-size 10 --rate 200 --duration 10s \
  --assert 'connected==100' --assert 'lost==0' --assert 'duplicated==0' --assert 'ack_timeouts==0' \
  --json "$WORK/bench.json"

echo "==> stopping"
kill -QUIT "$NGINX_PID"; wait "$NGINX_PID" || true; NGINX_PID=""
kill -TERM "$NODE_PID"
if wait "$NODE_PID"; then NODE_PID=""; else echo "error: the node did not exit 0" >&2; exit 1; fi
echo "==> nginx smoke passed"

#!/usr/bin/env bash
# Smoke test of `coolchat bench` against a real node, for CI. Builds nothing.
#
# Starts `coolchat serve` on 127.0.0.1:0 with a fresh data directory and limits that fit the
# load, runs a ~20 s fanout bench (200 clients, 20 rooms of 10, 2 senders per room) with strict
# gates on loss and duplicates and a loose one on latency, writes the JSON report, then stops the
# node with SIGTERM and checks that it exits 0.
#
# Usage: scripts/bench-smoke.sh
# Environment:
#   COOLCHAT_BIN      the binary [default: target/debug/coolchat]
#   BENCH_SMOKE_OUT   where to keep the report and the node's log [default: a new temp dir]
#   BENCH_SMOKE_ARGS  extra arguments for the bench (e.g. "--duration 5s")
# Exit status: 0 all good; 1 the bench failed a gate, the node misbehaved or did not stop
# cleanly; 2 the binary is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${COOLCHAT_BIN:-$PWD/target/debug/coolchat}"
if [[ ! -x "$BIN" ]]; then
  echo "error: $BIN is not an executable; run 'cargo build' or set COOLCHAT_BIN" >&2
  exit 2
fi
OUT="${BENCH_SMOKE_OUT:-$(mktemp -d -t coolchat-bench-smoke.XXXXXX)}"
mkdir -p "$OUT"
DATA="$(mktemp -d -t coolchat-bench-data.XXXXXX)"
LOG="$OUT/node.log"
JSON="$OUT/bench-smoke.json"
NODE_PID=""

cleanup() {
  if [[ -n "$NODE_PID" ]] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -KILL "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

# Both processes hold a few hundred sockets: use the whole open-files allowance.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Limits that fit the load (see docs/BENCH.md): every sign-in comes from 127.0.0.1, and senders
# must never be rate-limited (refused sends are errors, which this smoke test does not expect).
echo "==> starting $BIN serve"
COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE=100000 \
COOLCHAT__LIMITS__MESSAGES_PER_SECOND=1000 \
COOLCHAT__LIMITS__MESSAGE_BURST=1000 \
COOLCHAT__LIMITS__MAX_ROOM_MEMBERS=1000 \
RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$LOG" 2>&1 &
NODE_PID=$!

URL=""
for _ in $(seq 1 300); do
  URL="$(grep -ao 'listening on http://[^[:space:]]*' "$LOG" 2>/dev/null | head -n1 | sed 's/^listening on //' || true)"
  [[ -n "$URL" ]] && break
  if ! kill -0 "$NODE_PID" 2>/dev/null; then
    echo "error: the node exited before listening; its log:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$URL" ]]; then
  echo "error: the node did not print 'listening on http://...' within 30 s; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi
echo "==> node at $URL (pid $NODE_PID)"

echo "==> coolchat bench (fanout, 200 clients, 20 rooms x 10, 20 s)"
BENCH_RC=0
# shellcheck disable=SC2086 # BENCH_SMOKE_ARGS is meant to be split into arguments.
"$BIN" bench \
  --url "$URL" \
  --scenario fanout \
  --clients 200 --rooms 20 --room-size 10 --senders-per-room 2 \
  --rate 400 --payload-bytes 128 \
  --ramp-rate 200 --duration 20s --drain-timeout 15s \
  --json "$JSON" \
  --assert 'connected==200' \
  --assert 'lost==0' \
  --assert 'duplicated==0' \
  --assert 'ack_timeouts==0' \
  --assert 'p99_ms<2000' \
  ${BENCH_SMOKE_ARGS:-} || BENCH_RC=$?

echo "==> stopping the node (SIGTERM)"
kill -TERM "$NODE_PID"
NODE_RC=""
for _ in $(seq 1 300); do
  if ! kill -0 "$NODE_PID" 2>/dev/null; then
    NODE_RC=0
    wait "$NODE_PID" || NODE_RC=$?
    break
  fi
  sleep 0.1
done
if [[ -z "$NODE_RC" ]]; then
  echo "error: the node did not stop within 30 s of SIGTERM" >&2
  exit 1
fi
NODE_PID=""

echo "report: $JSON"
echo "node log: $LOG"
if [[ "$NODE_RC" -ne 0 ]]; then
  echo "error: the node exited $NODE_RC after SIGTERM; its log:" >&2
  tail -n 50 "$LOG" >&2
  exit 1
fi
if [[ "$BENCH_RC" -ne 0 ]]; then
  echo "error: coolchat bench exited $BENCH_RC" >&2
  exit 1
fi
echo "==> bench smoke passed"

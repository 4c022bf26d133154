#!/usr/bin/env bash
# Runs every test: formatting and lints, Rust unit and integration tests (real SQLite files),
# the end-to-end suite (the real `coolchat serve` and `coolchat admin` binaries driven by the
# official npm socket.io-client, ethers v6 and siwe), and a short `coolchat bench` smoke run
# with strict loss/duplicate gates, directly and through nginx/coolchat.conf (TLS, WebSocket).
# Needs: the Rust toolchain, Node.js >= 20 with npm, nginx, openssl, curl (.ci/run installs them).
# Usage: scripts/test.sh            (from the repository root or anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "==> cargo build"
cargo build --locked --bins

echo "==> cargo test (unit + integration)"
cargo test --locked

echo "==> end-to-end (node --test tests/e2e)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
COOLCHAT_BIN="$PWD/target/debug/coolchat" node --test --test-concurrency=1 tests/e2e/

echo "==> bench smoke (scripts/bench-smoke.sh: real clients, lost==0 and duplicated==0 gates)"
COOLCHAT_BIN="$PWD/target/debug/coolchat" scripts/bench-smoke.sh

echo "==> nginx smoke (scripts/nginx-smoke.sh: nginx/coolchat.conf with TLS in front of a node)"
COOLCHAT_BIN="$PWD/target/debug/coolchat" scripts/nginx-smoke.sh

echo "==> all tests passed"

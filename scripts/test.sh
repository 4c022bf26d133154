#!/usr/bin/env bash
# Runs every test: formatting and lints, Rust unit and integration tests (real SQLite files),
# and the end-to-end suite (the real `coolchat serve` binary driven by the official npm
# socket.io-client, ethers v6 and siwe). Needs: the Rust toolchain, Node.js >= 20 with npm.
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

echo "==> all tests passed"

#!/usr/bin/env bash
# The project's checks, as CI runs them: fmt, clippy -D warnings, benches compile, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo bench --locked --no-run
cargo test --locked

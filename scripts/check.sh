#!/usr/bin/env bash
# The project's checks, as CI runs them: fmt, clippy -D warnings, benches compile, all tests.
# Ends with one line totalling every test binary's results (`N passed, N failed`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo bench --locked --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

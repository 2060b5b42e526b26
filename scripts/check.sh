#!/usr/bin/env bash
# The project's checks, as CI runs them: fmt, clippy -D warnings (main crate and the fuzz crate),
# benches compile, then every test binary (`--no-fail-fast`: one failing binary does not hide the
# others). Ends with one line totalling every test binary's results (`tests: N passed, N failed`);
# a binary that failed to build or crashed before its `test result:` line is named on the line
# before and counted as one failure, so the total never says "0 failed" when something broke.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
cargo fmt --check
cargo fmt --check --manifest-path tests/fuzz/Cargo.toml
cargo clippy --locked --all-targets -- -D warnings
# The fuzz crate is its own workspace (libfuzzer-sys builds without cargo-fuzz for a check).
cargo clippy --locked --manifest-path tests/fuzz/Cargo.toml --all-targets -- -D warnings
cargo bench --locked --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A test that hangs must fail this run, not use up CI's 90 minutes: cargo test (build included,
# ~5 min on a clean clone) gets CHECK_TEST_TIMEOUT seconds, then the tests libtest reported as
# long-running are named and the binary left open is counted below as crashed.
limit=${CHECK_TEST_TIMEOUT:-1800}
set +e
timeout --kill-after=10 "$limit" cargo test --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "tests: cargo test killed after ${limit} s; still running then:"
    grep 'has been running for over' "$log" | sed 's/^/    /' || echo "    (libtest named none)"
fi
# Each `Running`/`Doc-tests` line opens a binary; its `test result:` line closes it. One left open
# crashed (signal, abort, exit without a summary); `error: could not compile` is a build failure.
awk -v status="$status" '
    function close_binary() { if (cur != "" && !done) { crashed++; names = names " " cur } }
    /^ *(Running|Doc-tests) / { close_binary(); cur = $0; sub(/^ *(Running|Doc-tests) /, "", cur); sub(/ .*/, "", cur); done = 0 }
    /^test result:/ { done = 1; for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
    /^error: could not compile/ { unbuilt++; what = $0; sub(/^error: could not compile /, "", what); sub(/ due to.*/, "", what); built = built " " what }
    END {
        close_binary()
        if (crashed) printf "tests: %d binary(ies) crashed before a result line, counted as failed:%s\n", crashed, names
        if (unbuilt) printf "tests: %d binary(ies) failed to build, counted as failed:%s\n", unbuilt, built
        if (status != 0 && f + crashed + unbuilt == 0) { printf "tests: cargo test exited %d with no failed test: counted as 1 failed\n", status; other = 1 }
        printf "tests: %d passed, %d failed\n", p, f + crashed + unbuilt + other
    }' "$log"
exit "$status"

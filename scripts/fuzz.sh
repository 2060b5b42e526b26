#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz for SECONDS each (default 60), on the stable toolchain:
# installs cargo-fuzz if missing, builds, replays the saved crashes in tests/fuzz/regressions/,
# then fuzzes from the seed corpus in tests/fuzz/corpus/. Prints runs and execs/s per target and
# exits 1 if any target crashed (artifacts under tests/fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 12         # CI: 4 targets x 12 s
#   FUZZ_TARGETS="request" scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-60}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS per target, default 60]" >&2
    exit 2
fi

CARGO_FUZZ_VERSION=0.13.2
fuzz_dir=tests/fuzz
work=$root/$fuzz_dir/work
targets=${FUZZ_TARGETS:-request response fault_spec ring}

echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $secs s per target"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# `--sanitizer none`: AddressSanitizer needs nightly's -Zsanitizer, and the code under test is safe
# Rust apart from the ring's mmap (whose bounds the ring target exercises through panics instead).
# Debug assertions and overflow checks stay on (cargo-fuzz's default), so overflow is a crash.
fuzz_args=(--fuzz-dir "$fuzz_dir" --sanitizer none)
# The fuzz crate builds from its committed Cargo.lock: cargo-fuzz has no `--locked`, so the lock
# is checked first (`cargo fetch --locked` fails on a stale lock without building anything).
# After a dependency change in the main crate: `cargo update --offline --manifest-path
# tests/fuzz/Cargo.toml --workspace` and commit tests/fuzz/Cargo.lock.
if ! cargo fetch --locked --manifest-path "$fuzz_dir/Cargo.toml"; then
    echo "!! $fuzz_dir/Cargo.lock is stale: regenerate and commit it (see scripts/fuzz.sh)" >&2
    exit 1
fi
echo "== building fuzz targets"
build_start=$(date +%s)
cargo fuzz build "${fuzz_args[@]}"
echo "== built in $(($(date +%s) - build_start)) s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$fuzz_dir/target/$host/release

# The grown corpora in $work are kept between local runs (CI starts without them).
mkdir -p "$work"
# The ring target rewrites a 64 KiB ring file per input under $TMPDIR: on tmpfs that is ~4x faster.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    scratch=$(mktemp -d /dev/shm/pf-fuzz.XXXXXX)
else
    scratch=$(mktemp -d "$work/tmp.XXXXXX")
fi
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

failed=()
summary=()
for t in $targets; do
    # Saved crashes first: each must now pass (the lead's fix is in).
    shopt -s nullglob
    saved=("$fuzz_dir/regressions/$t"/*)
    shopt -u nullglob
    if ((${#saved[@]})); then
        if ! "$bin_dir/$t" "${saved[@]}" >"$work/$t.regressions.log" 2>&1; then
            echo "!! $t: a saved regression crashes again:"
            tail -n 30 "$work/$t.regressions.log"
            failed+=("$t (regression)")
            continue
        fi
        echo "== $t: ${#saved[@]} saved regression(s) pass"
    fi

    mkdir -p "$work/corpus/$t"
    dict=()
    case $t in
        request | response) dict=(-dict="$fuzz_dir/dict/http.dict") ;;
        fault_spec) dict=(-dict="$fuzz_dir/dict/fault_spec.dict") ;;
        ring) dict=(-dict="$fuzz_dir/dict/ring.dict") ;;
    esac
    echo "== fuzzing $t for $secs s"
    # New inputs go to the first (scratch) corpus dir; the seed dir stays as committed.
    # -timeout: an input running over 10 s counts as a hang (an unbounded loop).
    status=0
    cargo fuzz run "${fuzz_args[@]}" "$t" "$work/corpus/$t" "$fuzz_dir/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" >"$work/$t.log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -n 1 | cut -d' ' -f2)
    corpus=$(find "$work/corpus/$t" "$fuzz_dir/corpus/$t" -type f | wc -l)
    if ((status != 0)); then
        echo "!! $t crashed (exit $status):"
        grep -E 'panicked at|^SUMMARY|Test unit written|deadly signal|timeout' "$work/$t.log" | head -n 10
        failed+=("$t")
        summary+=("$(printf '%-11s %10s runs %8s execs/s  cov %5s  files %6s  CRASH' \
            "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus")")
    else
        summary+=("$(printf '%-11s %10s runs %8s execs/s  cov %5s  files %6s  ok' \
            "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus")")
    fi
done

echo "== summary ($secs s per target; logs in $work)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}: minimise with 'cargo fuzz tmin --fuzz-dir $fuzz_dir -s none TARGET ARTIFACT'," \
        "save it under $fuzz_dir/regressions/TARGET/ and add a regression test"
    exit 1
fi
echo "all ${targets// /, } ok"

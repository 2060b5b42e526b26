#!/usr/bin/env bash
# Load test: phantom-fast against nginx as reverse proxy and against no proxy, on loopback only.
#
#   scripts/loadtest.sh [--quick] [--json FILE]     the comparison table (~5 min; --quick ~40 s)
#   scripts/loadtest.sh --scale [--quick]           10 000 delayed keep-alive connections, and
#                                                   2 000 new connections/s without keep-alive
#   scripts/loadtest.sh --scale [--quick] --bin-before PATH
#                                                   phases 1-2 for an older binary and this one,
#                                                   interleaved: memory per connection side by side
#   scripts/loadtest.sh --delay-cost [--quick] [--bin-before PATH]
#                                                   CPU, switches, io_uring calls and lateness per
#                                                   request: no fault vs delay:1ms vs 100ms-500ms
#   scripts/loadtest.sh --throttle [--quick] [--connections N]
#                                                   proxy CPU while 10 000 connections are throttled
#                                                   at 1 KiB/s (--fault bandwidth:1KiB/s) or hang
#   scripts/loadtest.sh --overhead [--quick] [--rounds N] [--rate R]
#                                                   CPU per request at a fixed rate: admin on and
#                                                   scraped 1/s, 16 non-matching rules, paired
#                                                   with a baseline by round
#   scripts/loadtest.sh --side-by-side [--quick] [--rounds N]
#                                                   CPU per request at saturation: phantom-fast and
#                                                   nginx, each under its own wrk, in the same
#                                                   seconds, and an A/A pair (the method's noise)
#   scripts/loadtest.sh --tls [--quick]             https listener vs nginx (keep-alive, handshakes/s)
#                                                   and MITM CPU per request (scripts/loadtest_tls.py)
#   scripts/loadtest.sh --help                      every option (scripts/loadtest.py does the work)
#
# This script installs what is missing (wrk and nginx from apt, oha with `cargo install --locked`),
# builds the release binary, raises `ulimit -n`, then runs scripts/loadtest.py. That helper starts
# every process it measures in its own mktemp dir (configs, pids, logs, traces; never /etc/nginx)
# and stops exactly those PIDs when it ends, however it ends. It does not change system settings.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helper="$repo/scripts/loadtest.py"

for arg in "$@"; do
    case "$arg" in
    -h | --help) exec python3 "$helper" --help ;;
    --tls) helper="$repo/scripts/loadtest_tls.py" ;;
    esac
done

"$repo/scripts/load-deps.sh"
PATH="$PATH:/usr/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"

(cd "$repo" && cargo build --release --locked --quiet)
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

# 10 000 client sockets in one load generator and 10 000 in the proxy: raise the soft limit to
# the hard one (20 000 on our machines).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

helper_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    # Only the helper we started; it stops the processes it started, by PID.
    if [ -n "$helper_pid" ] && kill -0 "$helper_pid" 2>/dev/null; then
        kill -TERM "$helper_pid" 2>/dev/null || true
        wait "$helper_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Bounded in time: the helper's own limits plus a hard stop well past the default run.
timeout_s=900
python3 "$helper" --bin "$target_dir/release/phantom-fast" "$@" &
helper_pid=$!
deadline=$((SECONDS + timeout_s))
while kill -0 "$helper_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "loadtest: over ${timeout_s}s, stopping" >&2
        exit 124
    fi
    sleep 1
done
rc=0
wait "$helper_pid" || rc=$?
helper_pid=""
exit "$rc"

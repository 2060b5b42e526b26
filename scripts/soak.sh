#!/usr/bin/env bash
# Soak test on loopback: builds release, starts an origin (nginx if installed, else a Python
# stdlib server) and phantom-fast with mixed faults and tracing, drives mixed traffic (wrk if
# installed, else a Python stdlib load generator) for MINUTES (default 10), and every 10 s prints
# the proxy's RSS, open fds, requests answered so far, and the records the rings hold by outcome
# (ok, injected fault, other, and 5xx that were not injected). At the end it checks that RSS and fds were flat after warm-up and
# exits 1 if not, or if the proxy died or stalled, if a readiness probe gave up, if the load
# generator failed, or if any 5xx was not an injected fault (a 502/504 means the proxy or the
# origin broke under load; the injected 503s and 500s are expected).
#
#   scripts/soak.sh            # 10 minutes
#   scripts/soak.sh 1          # smoke run
#   SOAK_ORIGIN=python SOAK_LOAD=python scripts/soak.sh 5
#   SOAK_THP=off scripts/soak.sh 5   # proxy runs with transparent huge pages disabled (prctl)
#
# Flat means: the largest sample of the second half of the run is within 10% of the first sample
# after warm-up (RSS), resp. within max(10%, 8) descriptors (fds). Warm-up is 60 s, or a quarter
# of a shorter run. Only 127.0.0.1 is used; only processes this script started are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
if ! [[ $minutes =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/soak.sh [MINUTES, default 10]" >&2
    exit 2
fi
total_s=$((minutes * 60))
interval_s=10
warmup_s=$((total_s / 4 < 60 ? total_s / 4 : 60))
warmup_s=$((warmup_s / interval_s * interval_s))
connections=${SOAK_CONNECTIONS:-64}
workers=${SOAK_WORKERS:-2}
origin_kind=${SOAK_ORIGIN:-$(command -v nginx >/dev/null && echo nginx || echo python)}
load_kind=${SOAK_LOAD:-$(command -v wrk >/dev/null && echo wrk || echo python)}

echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$minutes min, origin $origin_kind, load $load_kind, $connections connections, $workers workers," \
    "THP ${SOAK_THP:-as the system}"
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/phantom-fast

dir=$(mktemp -d "${TMPDIR:-/tmp}/pf-soak.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- origin ---------------------------------------------------------------------------------
mkdir -p "$dir/www"
head -c 65536 /dev/zero | tr '\0' 'b' >"$dir/www/big"
seq 1 3000 >"$dir/www/chunked"
origin_port=$(free_port)
if [[ $origin_kind == nginx ]]; then
    mkdir -p "$dir/nginx"
    # /chunked is gzipped on the fly (the client asks for it), which nginx sends chunked.
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$origin_port;
        root $dir/www;
        location = /big { }
        location = /chunked { gzip on; gzip_min_length 0; gzip_types *; }
        location / { return 200 "ok\n"; }
    }
}
EOF
    nginx -p "$dir/nginx" -c "$dir/nginx.conf" 2>"$dir/origin.log" &
    pids+=($!)
else
    cat >"$dir/origin.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG = b"b" * 65536
LINES = [b"%d\n" % i for i in range(3000)]

class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/big":
            self.send_body(BIG)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(LINES), 500):
                chunk = b"".join(LINES[i:i + 500])
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_body(b"ok\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_body(b"%d\n" % len(body))

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Origin).serve_forever()
EOF
    python3 "$dir/origin.py" "$origin_port" 2>"$dir/origin.log" &
    pids+=($!)
fi
origin_ready=
for _ in $(seq 50); do
    if curl -s -o /dev/null "http://127.0.0.1:$origin_port/"; then
        origin_ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $origin_ready ]]; then
    echo "FAILED: the $origin_kind origin on 127.0.0.1:$origin_port never answered:" >&2
    cat "$dir/origin.log" >&2
    exit 1
fi

# ---- proxy ----------------------------------------------------------------------------------
# SOAK_THP=off starts the proxy with PR_SET_THP_DISABLE (41), which exec keeps: mimalloc asks for
# transparent huge pages, and their 2 MiB granularity can dominate RSS on a THP-enabled kernel.
launch=()
if [[ ${SOAK_THP:-} == off ]]; then
    launch=(python3 -c 'import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_THP_DISABLE) failed")
os.execv(sys.argv[1], sys.argv[1:])')
fi
"${launch[@]}" "$bin" --listen 127.0.0.1:0 --upstream "127.0.0.1:$origin_port" --workers "$workers" \
    --trace-dir "$dir/traces" --trace-capacity 8MiB --trace-body-bytes 256 --seed 6 \
    --fault delay:1ms-10ms:/slow --fault error:503:0.3:/flaky --fault error:500:0.02 \
    >"$dir/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_port=
for _ in $(seq 100); do
    proxy_port=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$dir/proxy.log" | cut -d: -f2 || true)
    [[ -n $proxy_port ]] && break
    sleep 0.1
done
if [[ -z $proxy_port ]]; then
    echo "proxy did not start:" >&2
    cat "$dir/proxy.log" >&2
    exit 1
fi
sed 's/^/   /' "$dir/proxy.log"

# ---- load -----------------------------------------------------------------------------------
# The mix: small, 64 KiB and chunked (gzip from nginx) answers, delayed and flaky paths, 4 KiB
# POSTs, and requests that close their connection (connection churn: fd leaks show up).
if [[ $load_kind == wrk ]]; then
    cat >"$dir/mix.lua" <<EOF
local host = "127.0.0.1:$proxy_port"
local reqs = {}
local i = 0
function init(args)
    local function r(method, path, extra, body)
        local h = { ["Host"] = host }
        for k, v in pairs(extra or {}) do h[k] = v end
        return wrk.format(method, path, h, body)
    end
    reqs = {
        r("GET", "/small"), r("GET", "/big"), r("GET", "/small"),
        r("GET", "/chunked", { ["Accept-Encoding"] = "gzip" }),
        r("GET", "/slow/a"), r("GET", "/flaky/b"), r("GET", "/small?x=1"),
        r("POST", "/echo", { ["Content-Type"] = "application/octet-stream" }, string.rep("p", 4096)),
        r("GET", "/flaky/c"), r("GET", "/small", { ["Connection"] = "close" }),
    }
end
function request()
    i = i % #reqs + 1
    return reqs[i]
end
EOF
    wrk -t2 -c"$connections" -d"${total_s}s" --timeout 10s -s "$dir/mix.lua" \
        "http://127.0.0.1:$proxy_port/" >"$dir/load.log" 2>&1 &
    load_pid=$!
else
    cat >"$dir/load.py" <<'EOF'
import http.client, sys, threading, time

port, conns, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
MIX = [
    ("GET", "/small", {}, None), ("GET", "/big", {}, None), ("GET", "/small", {}, None),
    ("GET", "/chunked", {}, None), ("GET", "/slow/a", {}, None), ("GET", "/flaky/b", {}, None),
    ("GET", "/small?x=1", {}, None), ("POST", "/echo", {}, b"p" * 4096),
    ("GET", "/flaky/c", {}, None), ("GET", "/small", {"Connection": "close"}, None),
]
deadline = time.monotonic() + secs
lock = threading.Lock()
totals = {"requests": 0, "errors": 0, "status": {}}

def run(k):
    conn, i, done, errors, status = None, k, 0, 0, {}
    while time.monotonic() < deadline:
        method, path, headers, body = MIX[i % len(MIX)]
        i += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            done += 1
            status[resp.status] = status.get(resp.status, 0) + 1
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            errors += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
    with lock:
        totals["requests"] += done
        totals["errors"] += errors
        for code, n in status.items():
            totals["status"][code] = totals["status"].get(code, 0) + n

threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("python load: %(requests)d responses, %(errors)d connection errors, by status %(status)s"
      % totals)
# No answer at all is a failed load generator, whatever the proxy's rings say.
sys.exit(0 if totals["requests"] > 0 else 1)
EOF
    python3 "$dir/load.py" "$proxy_port" "$connections" "$total_s" >"$dir/load.log" 2>&1 &
    load_pid=$!
fi
pids+=("$load_pid")

# ---- samples --------------------------------------------------------------------------------
# Requests answered = sum over rings of (next sequence - 1): every answered request leaves
# exactly one record, and the ring header's sequence counter survives wrap-around.
answered() {
    local sum=0 ring seq
    for ring in "$dir"/traces/core-*.ring; do
        [[ -e $ring ]] || continue
        seq=$(od -An -t u8 -j 40 -N 8 "$ring" | tr -d ' ')
        sum=$((sum + ${seq:-1} - 1))
    done
    echo "$sum"
}

# The records the rings still hold, by outcome, from `stats`: ok, fault (an injected answer),
# other (everything else), and the 5xx that are not injected faults (must stay 0).
outcomes() {
    python3 -c 'import json, sys
s = json.load(sys.stdin)
o, c = s.get("by_outcome", {}), s.get("by_status_class", {})
ok, fault = o.get("ok", 0), o.get("fault", 0)
print(s.get("records", 0), ok, fault, s.get("records", 0) - ok - fault, c.get("5xx", 0) - fault)'
}

printf '%6s %10s %6s %12s %9s %10s %9s %8s %8s %12s\n' t_s rss_kib fds requests req_s \
    ring_recs ok fault other bad_5xx
ts=() rss=() fds=()
prev=0
failure=
start=$(date +%s)
for ((t = interval_s; t <= total_s; t += interval_s)); do
    sleep $((start + t - $(date +%s) > 0 ? start + t - $(date +%s) : 0))
    if ! kill -0 "$proxy_pid" 2>/dev/null; then
        failure="proxy exited at t=${t}s"
        break
    fi
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy_pid/status")
    f=$(find "/proc/$proxy_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    n=$(answered)
    if stats=$("$bin" stats --trace-dir "$dir/traces" 2>&1) && by=$(outcomes <<<"$stats"); then
        read -r records ok fault other bad5xx <<<"$by"
    else
        records=ERROR ok=- fault=- other=- bad5xx=-
        failure="stats failed at t=${t}s: $stats"
    fi
    printf '%6d %10d %6d %12d %9d %10s %9s %8s %8s %12s\n' "$t" "$r" "$f" "$n" \
        $(((n - prev) / interval_s)) "$records" "$ok" "$fault" "$other" "$bad5xx"
    if ((n == prev)); then
        failure=${failure:-"no request answered between t=$((t - interval_s))s and t=${t}s"}
    fi
    prev=$n
    ts+=("$t") rss+=("$r") fds+=("$f")
    if [[ -n $failure ]]; then
        break
    fi
done

load_status=0
if [[ -n $failure ]]; then
    kill "$load_pid" 2>/dev/null || true
fi
wait "$load_pid" 2>/dev/null || load_status=$?
echo "== load generator ($load_kind, exit $load_status):"
sed 's/^/   /' "$dir/load.log" | tail -n 20
if [[ -z $failure ]] && ((load_status != 0)); then
    failure="the $load_kind load generator failed (exit $load_status)"
fi
if [[ -z $failure && $load_kind == wrk ]] && ! grep -q 'requests in' "$dir/load.log"; then
    failure="wrk printed no result"
fi
kill -TERM "$proxy_pid" 2>/dev/null || true
wait "$proxy_pid" 2>/dev/null || true
echo "== proxy shutdown summary:"
tail -n 25 "$dir/proxy.log" | sed 's/^/   /'
# The whole run by outcome, from the shutdown summary's `outcomes:` line (the rings may have
# wrapped; the summary counts every request). Injected answers are `fault`; an `upstream-error`
# or `upstream-timeout` is a 502/504 nobody asked for.
outcome_line=$(grep -m1 '^  outcomes: ' "$dir/proxy.log" || true)
count_of() { grep -o "$1 [0-9]*" <<<"$outcome_line" | grep -o '[0-9]*$' || echo 0; }
echo "== by outcome (whole run): ${outcome_line#  outcomes: }"
if [[ -z $failure ]]; then
    if [[ -z $outcome_line ]]; then
        failure="the proxy printed no outcomes line at shutdown"
    elif (($(count_of 'ok') == 0)); then
        failure="no request was answered ok"
    elif ((($(count_of 'upstream-error') + $(count_of 'upstream-timeout')) > 0)); then
        failure="5xx the rules did not inject: upstream-error $(count_of 'upstream-error'), upstream-timeout $(count_of 'upstream-timeout')"
    fi
fi

# ---- verdict --------------------------------------------------------------------------------
verdict() {
    local base_i=-1 i max_rss=0 max_fds=0
    for i in "${!ts[@]}"; do
        if ((ts[i] >= warmup_s && ts[i] > 0)); then
            base_i=$i
            break
        fi
    done
    if ((base_i < 0)); then
        echo "too few samples after the ${warmup_s}s warm-up"
        return 1
    fi
    for i in "${!ts[@]}"; do
        if ((ts[i] > total_s / 2 && i >= base_i)); then
            if ((rss[i] > max_rss)); then max_rss=${rss[i]}; fi
            if ((fds[i] > max_fds)); then max_fds=${fds[i]}; fi
        fi
    done
    local base_rss=${rss[base_i]} base_fds=${fds[base_i]}
    local fd_slack=$((base_fds / 10 > 8 ? base_fds / 10 : 8))
    echo "after warm-up (t=${ts[base_i]}s): RSS ${base_rss} KiB, fds ${base_fds};" \
        "second half max: RSS ${max_rss} KiB, fds ${max_fds}"
    local ok=0
    if ((max_rss * 10 > base_rss * 11)); then
        echo "RSS grew more than 10% after warm-up"
        ok=1
    fi
    if ((max_fds > base_fds + fd_slack)); then
        echo "fds grew by more than $fd_slack after warm-up"
        ok=1
    fi
    return $ok
}

if [[ -n $failure ]]; then
    echo "FAILED: $failure"
    exit 1
fi
if verdict; then
    echo "OK: memory and file descriptors flat after warm-up"
else
    echo "FAILED: not flat after warm-up"
    exit 1
fi

#!/usr/bin/env bash
# A real Prometheus against --admin: installs Debian's prometheus when missing, starts it on
# loopback scraping the admin endpoint every second, runs a short fixed-rate load (oha) while a
# rule ramps 0 → 50% errors, then checks through Prometheus' HTTP API that the target is up and
# that the request rate and the injected ratio Prometheus computes follow what the load generator
# saw (within 5%). Only the processes it started are stopped, by PID.
#
# Usage: scripts/prometheus.sh [SECONDS] [RATE]      defaults: 30 s at 400 req/s
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-30}
rate=${2:-400}
ramp=$((duration * 2 / 3))

if ! command -v prometheus >/dev/null; then
    echo "== installing Debian's prometheus"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi
for tool in oha nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "prometheus.sh: $tool is required" >&2; exit 1; }
done

# The debug build CI already has is plenty for a few hundred requests a second.
cargo build --locked --quiet
bin=target/debug/phantom-fast
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The origin: nginx answering 200 with a small body.
origin_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    fastcgi_temp_path $work/nginx;
    uwsgi_temp_path $work/nginx;
    scgi_temp_path $work/nginx;
    server { listen 127.0.0.1:$origin_port; location / { return 200 "Hello, world\n"; } }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

# The proxy: a ramp from 0 to 50% 503s over two thirds of the run, then holding at 50%.
echo "id=ramp error:503 ramp=0..0.5/${ramp}s" >"$work/rules.txt"
proxy_port=$(free_port)
admin_port=$(free_port)
"$bin" --listen "127.0.0.1:$proxy_port" --upstream "127.0.0.1:$origin_port" --workers 2 \
    --admin "127.0.0.1:$admin_port" --no-traces 2>"$work/proxy.log" &
pids+=($!)

wait_http() {
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "prometheus.sh: $1 never answered" >&2
    cat "$work/proxy.log" >&2
    exit 1
}
wait_http "http://127.0.0.1:$admin_port/ready"
wait_http "http://127.0.0.1:$origin_port/"

# Prometheus on loopback, scraping the admin endpoint every second.
prom_port=$(free_port)
cat >"$work/prometheus.yml" <<EOF
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: phantom
    static_configs: [ { targets: ["127.0.0.1:$admin_port"] } ]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready"
query() { # query EXPR [TIME] → the first sample's value
    curl -fsS "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" \
        ${2:+--data-urlencode "time=$2"} |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "nan")'
}
for _ in $(seq 50); do [ "$(query 'up{job="phantom"}')" = 1 ] && break; sleep 0.2; done

# The load runs first; once the proxy has seen it, the ramp is applied (PUT) and its clock
# starts. The load then goes on for DURATION seconds more.
lead=3
oha -z "$((duration + lead))s" -q "$rate" -c 16 --no-tui --output-format json \
    "http://127.0.0.1:$proxy_port/" >"$work/oha.json" &
oha_pid=$!
pids+=("$oha_pid")
for _ in $(seq 100); do
    seen=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '/^phantom_requests_total/ { n += $2 } END { print n + 0 }')
    [ "$seen" -gt 0 ] && break
    sleep 0.1
done
curl -fsS -X PUT -H 'content-type: text/plain' --data-binary @"$work/rules.txt" \
    "http://127.0.0.1:$admin_port/faults" >/dev/null
start=$(date +%s.%N)
wait "$oha_pid"
end=$(date +%s.%N)
sleep 3 # two more scrapes after the last request

read -r total errors rps < <(python3 - "$work/oha.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
total = sum(codes.values())
print(total, codes.get("503", 0), r["summary"]["requestsPerSec"])
EOF
)
at=$(python3 -c "print($end + 2)")
mid=$(python3 -c "print($start + ($end - $start) / 2)")
window=$(python3 -c "print(int($end - $start) + 4)")
up=$(query 'up{job="phantom"}' "$at")
served=$(query "sum(increase(phantom_requests_total[${window}s]))" "$at")
served_raw=$(query 'sum(phantom_requests_total)' "$at")
injected_raw=$(query 'sum(phantom_faults_injected_total{rule="ramp"})' "$at")
prom_rate=$(query 'sum(rate(phantom_requests_total[10s]))' "$mid")
prom_ratio=$(query 'sum(rate(phantom_faults_injected_total{rule="ramp"}[10s])) / sum(rate(phantom_requests_total[10s]))' "$mid")
prob_mid=$(query 'phantom_fault_probability_ratio{rule="ramp"}' "$mid")

python3 - "$total" "$errors" "$rps" "$up" "$served_raw" "$injected_raw" "$prom_rate" "$rate" \
    "$prom_ratio" "$prob_mid" "$start" "$mid" "$ramp" "$served" <<'EOF'
import sys
(total, errors, rps, up, served, injected, prom_rate, rate, prom_ratio, prob_mid, start, mid,
 ramp, served_increase) = sys.argv[1:]
total, errors, rps = int(total), int(errors), float(rps)
served, injected, prom_rate = float(served), float(injected), float(prom_rate)
prom_ratio, prob_mid = float(prom_ratio), float(prob_mid)
def ramp_at(t):  # seconds after the PUT
    return min(1.0, max(0.0, t / float(ramp))) * 0.5
t_mid = float(mid) - float(start)
# An instant query sees the last scrape (up to 1 s old, 1.5 s with jitter): each mid-run value
# must fall between what the ramp gave 1.5 s before `mid` and at `mid`, within 5%.
LAG = 1.5
def window_mean(end):  # rate()[10s] ending at `end` averages the ramp over the 10 s before it
    return sum(ramp_at(end - 10 + i / 100) for i in range(1000)) / 1000
gauge_range = (ramp_at(t_mid - LAG), ramp_at(t_mid))
window_range = (window_mean(t_mid - LAG), window_mean(t_mid))
def within(value, bounds):
    low, high = bounds
    return low * 0.95 - 0.005 <= value <= high * 1.05 + 0.005
client_ratio = errors / total
checks = [
    ("target up", float(up) == 1.0, f"up = {up}"),
    ("requests counted", abs(served - total) <= 0.05 * total,
     f"Prometheus {served:.0f} vs client {total}"),
    ("request rate mid-run", abs(prom_rate - float(rate)) <= 0.05 * float(rate),
     f"Prometheus {prom_rate:.1f}/s vs load {rate}/s (client average {rps:.1f}/s)"),
    ("injected ratio", abs(injected / served - client_ratio) <= 0.05 * client_ratio,
     f"Prometheus {injected / served:.4f} vs client {client_ratio:.4f} ({errors} of {total} were 503)"),
    ("ramp gauge mid-run", within(prob_mid, gauge_range),
     f"phantom_fault_probability_ratio {prob_mid:.3f} vs ramp {gauge_range[0]:.3f}..{gauge_range[1]:.3f}"),
    ("injected ratio mid-run", within(prom_ratio, window_range),
     f"rate ratio over 10 s {prom_ratio:.3f} vs the ramp's mean "
     f"{window_range[0]:.3f}..{window_range[1]:.3f}"),
]
failed = 0
for name, ok, detail in checks:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    failed += not ok
print(f"prometheus: {len(checks) - failed} passed, {failed} failed "
      f"(increase() over the run: {float(served_increase):.0f})")
sys.exit(1 if failed else 0)
EOF

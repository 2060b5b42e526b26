#!/usr/bin/env python3
"""Drives the load test of scripts/loadtest.sh: starts the origin, nginx and phantom-fast targets on
loopback, measures them round by round, prints the table and writes the JSON.

It does not install anything or build the proxy (loadtest.sh does), and it only ever signals the
processes it started itself, by PID. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# The origin's body: 13 bytes, as the issue asks.
ORIGIN_BODY = "Hello, world\n"
# Keep-alive connections are never closed by request count during a run (nginx closes after 1000
# requests by default, which would add reconnects to some targets and not others).
KEEPALIVE_REQUESTS = 100_000_000
# wrk: one thread, 64 keep-alive connections (the issue's figure).
WRK_THREADS = 1
WRK_CONNECTIONS = 64
# oha fixed-rate connections: enough for the rate at ~1 ms latency, few enough not to thrash.
OHA_CONNECTIONS = 16
# Sixteen rules that never match the benchmark's URL "/".
NON_MATCHING_RULES = [f"delay:{i + 1}ms:/never-{i:02}" for i in range(8)] + [
    f"error:{500 + i}:1.0:/nope-{i:02}" for i in range(8)
]
# Sixteen rules of issue 12's new kinds and matchers that never match wrk's `GET /` with only a
# Host header: they need a method, header or query parameter that request does not have.
NEW_KIND_RULES = [
    "delay:lognormal(20ms,400ms):0.5:header.x-tenant=acme",
    "error:503:method=POST:path^=/api/",
    "bandwidth:64KiB/s:method=PUT",
    "truncate:50%:query.id=7",
    "reset:0.1:after=1KiB:header.x-canary",
    "close:0.01:method=DELETE",
    "hang:0.05:header.x-tenant^=glob",
    "garbage:0.01:method=PATCH",
    "dribble:10,1s:query.debug",
    "slow-head:100ms:header.x-slow",
    "delay:exp(3ms):1in3:header.x-request-id*=retry",
    "error:429:0.2:set.retry-after=2:header.authorization",
    "delay:100ms:at=head:query.mode=slow",
    "bandwidth:8KiB/s:side=request:method=POST",
    "delay:pareto(1ms,1.5):at=body:header.accept=text/event-stream",
    "truncate:1KiB:method=GET:header.range",
]
SCALE_FAULT = "delay:100ms-500ms"
SCALE_DELAY_MS = (100.0, 500.0)
# What HAProxy holds per connection in the same run (issue 15 §4): the scale run's target.
HAPROXY_KIB_PER_CONN = 13.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

# wrk prints this line from its done() hook; it is the only machine-read wrk output.
WRK_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"min_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.min, latency.max, latency.mean))
end
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# /proc readings


def _children(pid: int) -> list[int]:
    """Direct children of pid (nginx workers under their master)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            # Fields 14 and 15 of stat(5); rest[0] is field 3.
            total += int(rest[11]) + int(rest[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmHWM, VmRSS, RssAnon…), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def established_on_port(port: int, remote: bool = False) -> int:
    """Established TCP sockets whose local (or, with `remote`, remote) port is `port`.

    Asks `ss` (the kernel filters, cheap with 20 000 sockets); parses /proc/net/tcp without it."""
    side = "dport" if remote else "sport"
    ss = shutil.which("ss")
    if ss:
        try:
            out = subprocess.run([ss, "-Htn", "state", "established", f"( {side} = :{port} )"],
                                 capture_output=True, timeout=10)
            if out.returncode == 0:
                return out.stdout.count(b"\n")
        except (OSError, subprocess.TimeoutExpired):
            pass
    count = 0
    hexport = f":{port:04X}"
    column = 2 if remote else 1
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) > 3 and parts[column].endswith(hexport) and parts[3] == "01":
                        count += 1
        except OSError:
            continue
    return count


NETSTAT_KEYS = ("TcpExt:ListenOverflows", "TcpExt:TCPSynRetrans", "TcpExt:TCPTimeouts")


def netstat() -> dict:
    """The kernel's TCP counters that show dropped SYNs (a listen queue overflowing)."""
    values: dict = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for names, nums in zip(lines[::2], lines[1::2]):
        keys, vals = names.split(), nums.split()
        for k, v in zip(keys[1:], vals[1:]):
            values[keys[0] + k] = int(v)
    return {k: values.get(k, 0) for k in NETSTAT_KEYS}


def kernel_socket_kib() -> dict:
    """Kernel memory for TCP sockets, machine-wide (not in any process's RSS): the `TCP` and
    `sock_inode_cache` slabs (one object per socket; /proc/slabinfo, root only) and the socket
    buffers in use (/proc/net/sockstat `TCP ... mem`, pages)."""
    out = {"tcp_slab_kib": 0, "sock_inode_kib": 0, "tcp_buffers_kib": 0}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in ("TCP", "sock_inode_cache"):
                    key = "tcp_slab_kib" if fields[0] == "TCP" else "sock_inode_kib"
                    out[key] = int(fields[1]) * int(fields[3]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    out["tcp_buffers_kib"] = int(fields[fields.index("mem") + 1]) * 4
    except (OSError, ValueError, IndexError):
        pass
    return out


def netstat_delta(before: dict, after: dict) -> dict:
    return {k.split(":")[1]: after.get(k, 0) - before.get(k, 0) for k in NETSTAT_KEYS}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# --------------------------------------------------------------------------------------------
# Processes we own


def _die_with_parent() -> None:
    """Children get SIGTERM if this helper dies without cleaning up (e.g. SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Owned:
    """A process this helper started, with the name it reports under."""

    name: str
    popen: subprocess.Popen
    log_path: str
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its children (an nginx master and its workers)."""
        return [self.pid] + _children(self.pid)


class Processes:
    """Every process started, so cleanup signals exactly those PIDs and nothing else."""

    def __init__(self) -> None:
        self.owned: list[Owned] = []

    def start(self, name: str, argv: list[str], log_path: str, env: dict | None = None,
              stop_signal: int = signal.SIGTERM) -> Owned:
        logf = open(log_path, "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                             preexec_fn=_die_with_parent, close_fds=True)
        logf.close()
        o = Owned(name, p, log_path, stop_signal)
        self.owned.append(o)
        return o

    def stop(self, o: Owned) -> None:
        if o.popen.poll() is None:
            try:
                os.kill(o.pid, o.stop_signal)
            except ProcessLookupError:
                pass
            try:
                o.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(o.pid, signal.SIGKILL)
                o.popen.wait()
        if o in self.owned:
            self.owned.remove(o)

    def stop_all(self) -> None:
        for o in reversed(list(self.owned)):
            try:
                self.stop(o)
            except Exception as e:  # cleanup must go on for the others
                log(f"cleanup: {o.name} (pid {o.pid}): {e}")


# --------------------------------------------------------------------------------------------
# Targets


NGINX_COMMON = """\
worker_processes 1;
{user}
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests {keepalive_requests};
    keepalive_timeout 120s;
    client_body_temp_path {dir}/{name}-tmp/body;
    proxy_temp_path {dir}/{name}-tmp/proxy;
    fastcgi_temp_path {dir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {dir}/{name}-tmp/uwsgi;
    scgi_temp_path {dir}/{name}-tmp/scgi;
{body}
}}
"""

ORIGIN_HTTP = """\
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "{body}"; }}
    }}"""

NGINX_PROXY_HTTP = """\
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests {keepalive_requests};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


@dataclass
class Target:
    """One thing wrk and oha are pointed at."""

    name: str
    label: str
    port: int
    proc: Owned | None  # None: direct to the origin, no proxy in between
    # Whether this target was asked to inject error answers (none of the comparison's is: their
    # rules never match or only delay); any error from a target that was not is a failed run.
    injects_errors: bool = False
    rounds: list[dict] = field(default_factory=list)
    fixed: list[dict] = field(default_factory=list)
    # A side load run only while this target is measured (the admin scraper, the table swapper).
    sidecar: Periodic | None = None


def start_nginx(procs: Processes, tmp: str, name: str, port: int, http_body: str,
                nofile: int, conns: int) -> Owned:
    os.makedirs(f"{tmp}/{name}-tmp", exist_ok=True)
    conf = NGINX_COMMON.format(
        user="user root;" if os.geteuid() == 0 else "",
        dir=tmp, name=name, nofile=nofile, conns=conns,
        keepalive_requests=KEEPALIVE_REQUESTS, body=http_body)
    path = f"{tmp}/{name}.conf"
    with open(path, "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    # -e: the startup error log too goes to our dir, never /var/log/nginx. SIGQUIT: graceful.
    o = procs.start(name, [nginx, "-p", f"{tmp}/", "-c", path, "-e", f"{tmp}/{name}.error.log"],
                    f"{tmp}/{name}.out", stop_signal=signal.SIGQUIT)
    wait_port(port, STARTUP_TIMEOUT_S)
    return o


def start_phantom(procs: Processes, tmp: str, binary: str, name: str, origin_port: int,
                  extra: list[str], prefix: list[str] | None = None) -> tuple[Owned, int]:
    env = dict(os.environ)
    # Never touch the user's default trace directory.
    env["XDG_DATA_HOME"] = f"{tmp}/xdg"
    argv = (prefix or []) + [binary, "--listen", "127.0.0.1:0", "--upstream",
                             f"127.0.0.1:{origin_port}", "--grace", "1s"] + extra
    path = f"{tmp}/{name}.log"
    o = procs.start(name, argv, path, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) ", text)
        if m:
            port = int(m.group(1))
            wait_port(port, STARTUP_TIMEOUT_S)
            return o, port
        if o.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start: {open(path).read()}")


# --------------------------------------------------------------------------------------------
# Load generators


def run_wrk(tmp: str, port: int, duration_s: float, connections: int, timeout_s: float,
            threads: int = WRK_THREADS) -> dict:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", f"{tmp}/done.lua",
            f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    return parse_wrk(out.stdout + out.stderr)


def parse_wrk(text: str) -> dict:
    """The line our done() hook printed."""
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[len("WRKJSON "):])
            # wrk's `requests` counts every response, non-2xx/3xx ones (`status`) included;
            # socket errors (connect, read, write, timeout) answered nothing. Only good answers
            # count towards req/s and the CPU-per-request denominators.
            r["socket_errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"]
            r["non_2xx"] = r["status"]
            r["errors"] = r["socket_errors"] + r["non_2xx"]
            r["good"] = max(r["requests"] - r["non_2xx"], 0)
            r["rps"] = r["good"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk printed no result: {text}")


def oha_argv(port: int, rate: int, duration_s: float, connections: int,
             keepalive: bool = True) -> list[str]:
    argv = ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration_s:g}s",
            "-q", str(rate), "--latency-correction", "-w", "-c", str(connections)]
    if not keepalive:
        argv.append("--disable-keepalive")
    return argv + [f"http://127.0.0.1:{port}/"]


def start_oha(port: int, rate: int, duration_s: float, connections: int) -> subprocess.Popen:
    """oha_argv as a child that dies with this script; its JSON report on stdout."""
    return subprocess.Popen(oha_argv(port, rate, duration_s, connections), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=_die_with_parent)


def run_oha(port: int, rate: int, duration_s: float, connections: int) -> dict:
    out = subprocess.run(oha_argv(port, rate, duration_s, connections), capture_output=True,
                         text=True, timeout=duration_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr.strip()}")
    return parse_oha(out.stdout)


def parse_oha(text: str) -> dict:
    j = json.loads(text)
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    errors = j.get("errorDistribution", {})
    summary = j.get("summary", {})
    ok = int(codes.get("200", 0))
    return {
        "requests": sum(int(v) for v in codes.values()),
        "ok": ok,
        "good": ok,
        "non_200": sum(int(v) for k, v in codes.items() if k != "200"),
        "errors": sum(int(v) for v in errors.values()),
        "error_kinds": errors,
        # oha's requestsPerSec counts every response and error: only the 200s count here.
        "rps": ok / summary["total"] if summary.get("total") else summary.get("requestsPerSec"),
        "p50_us": _s_to_us(pct.get("p50")),
        "p90_us": _s_to_us(pct.get("p90")),
        "p99_us": _s_to_us(pct.get("p99")),
        "p999_us": _s_to_us(pct.get("p99.9")),
        "max_us": _s_to_us(summary.get("slowest")),
        "min_us": _s_to_us(summary.get("fastest")),
    }


def _s_to_us(v) -> float | None:
    return None if v is None else float(v) * 1e6


# --------------------------------------------------------------------------------------------
# Control-plane side loads (issue 11), each run only while its own target is measured


# Prometheus' scrape interval the issue names, and the table swap rate it asks to survive.
ADMIN_SCRAPE_INTERVAL_S = 1.0
SWAP_INTERVAL_S = 0.01
# What the swapper PUTs, alternately: one rule that never matches the benchmark's "/", so the
# load is untouched and only the swapping costs (every PUT is a new generation either way).
SWAP_RULE_SETS = ("error:503:/never-swapped-a\n", "error:503:/never-swapped-b\n")
ADMIN_TIMEOUT_S = 2.0


class Periodic:
    """Calls `call(n)` on its own thread every `interval` seconds between start() and stop(), on
    a fixed schedule (a slow call does not push the later ones back, it only makes them late);
    stop() says how many calls there were and how many succeeded."""

    def __init__(self, name: str, interval: float, call) -> None:
        self.name, self.interval, self.call = name, interval, call
        self.thread: threading.Thread | None = None
        self.halt = threading.Event()
        self.calls = self.ok = 0
        self.last_error = ""
        self.started = 0.0

    def start(self) -> None:
        self.halt.clear()
        self.calls = self.ok = 0
        self.last_error = ""
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self.halt.is_set():
            try:
                self.call(self.calls)
                self.ok += 1
            except Exception as e:  # counted and shown, never fatal to the measurement
                self.last_error = f"{type(e).__name__}: {e}"
            self.calls += 1
            due += self.interval
            self.halt.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> dict:
        self.halt.set()
        if self.thread:
            self.thread.join(timeout=10)
        seconds = time.monotonic() - self.started
        return {"calls": self.calls, "ok": self.ok, "failed": self.calls - self.ok,
                "seconds": round(seconds, 3), "per_s": self.ok / seconds if seconds else 0.0,
                "last_error": self.last_error}


def admin_request(port: int, method: str, path: str, body: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ADMIN_TIMEOUT_S)
    try:
        headers = {"content-type": "text/plain"} if body or method == "PUT" else {}
        conn.request(method, path, body=body.encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scraper(port: int) -> Periodic:
    """GET /metrics every second, as Prometheus would."""
    def scrape(_n: int) -> None:
        status, body = admin_request(port, "GET", "/metrics")
        if status != 200 or b"phantom_requests_total" not in body:
            raise RuntimeError(f"/metrics answered {status}")
    return Periodic("scraper", ADMIN_SCRAPE_INTERVAL_S, scrape)


def swapper(port: int) -> Periodic:
    """PUT /faults 100 times a second (each answers once every worker applied it)."""
    def swap(n: int) -> None:
        status, body = admin_request(port, "PUT", "/faults", SWAP_RULE_SETS[n % 2])
        if status != 200:
            raise RuntimeError(f"PUT /faults answered {status}: {body[:200]!r}")
    return Periodic("swapper", SWAP_INTERVAL_S, swap)


def sidecar_totals(t: Target) -> dict:
    """A target's side-load calls over every wrk run."""
    runs = [r["sidecar"] for r in t.rounds if "sidecar" in r]
    seconds = sum(r["seconds"] for r in runs)
    ok = sum(r["ok"] for r in runs)
    return {"calls": sum(r["calls"] for r in runs), "ok": ok,
            "failed": sum(r["failed"] for r in runs), "seconds": seconds,
            "per_s": ok / seconds if seconds else 0.0,
            "last_error": next((r["last_error"] for r in reversed(runs) if r["last_error"]), "")}


# --------------------------------------------------------------------------------------------
# The comparison run


def measure_wrk(t: Target, origin: Owned, tmp: str, duration: float) -> dict:
    proxy_pids = t.proc.pids() if t.proc else []
    origin_pids = origin.pids()
    if t.sidecar:
        t.sidecar.start()
    p0, o0 = cpu_seconds(proxy_pids), cpu_seconds(origin_pids)
    r = run_wrk(tmp, t.port, duration, WRK_CONNECTIONS, timeout_s=2)
    p1, o1 = cpu_seconds(proxy_pids), cpu_seconds(origin_pids)
    if t.sidecar:
        r["sidecar"] = t.sidecar.stop()
    n = max(r["good"], 1)
    r["proxy_cpu_us_per_req"] = (p1 - p0) * 1e6 / n if t.proc else None
    r["origin_cpu_us_per_req"] = (o1 - o0) * 1e6 / n
    return r


def measure_fixed(t: Target, origin: Owned, rate: int, duration: float) -> dict:
    proxy_pids = t.proc.pids() if t.proc else []
    if t.sidecar:
        t.sidecar.start()
    p0 = cpu_seconds(proxy_pids)
    r = run_oha(t.port, rate, duration, OHA_CONNECTIONS)
    p1 = cpu_seconds(proxy_pids)
    if t.sidecar:
        r["sidecar"] = t.sidecar.stop()
    r["proxy_cpu_us_per_req"] = (p1 - p0) * 1e6 / max(r["good"], 1) if t.proc else None
    return r


def med(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(targets: list[Target]) -> dict:
    direct = targets[0]
    out = {}
    for t in targets:
        s = {
            "label": t.label,
            "rps": med(r["rps"] for r in t.rounds),
            "p50_us": med(r["p50_us"] for r in t.rounds),
            "p99_us": med(r["p99_us"] for r in t.rounds),
            "proxy_cpu_us_per_req": med(r["proxy_cpu_us_per_req"] for r in t.rounds),
            "origin_cpu_us_per_req": med(r["origin_cpu_us_per_req"] for r in t.rounds),
            "errors": sum(r["errors"] for r in t.rounds),
            "socket_errors": sum(r["socket_errors"] for r in t.rounds),
            "non_2xx": sum(r["non_2xx"] for r in t.rounds),
            "requests": sum(r["requests"] for r in t.rounds),
            "good": sum(r["good"] for r in t.rounds),
            "peak_rss_kib": t.rounds[-1].get("peak_rss_kib") if t.rounds else None,
        }
        if t.proc and s["proxy_cpu_us_per_req"] is not None:
            ratios = [r["proxy_cpu_us_per_req"] / r["origin_cpu_us_per_req"]
                      for r in t.rounds if r["origin_cpu_us_per_req"]]
            s["proxy_cpu_x_origin"] = med(ratios)
        if t.fixed:
            s["fixed_p50_us"] = med(r["p50_us"] for r in t.fixed)
            s["fixed_p99_us"] = med(r["p99_us"] for r in t.fixed)
            s["fixed_p999_us"] = med(r["p999_us"] for r in t.fixed)
            s["fixed_errors"] = sum(r["errors"] + r["non_200"] for r in t.fixed)
            s["fixed_non_200"] = sum(r["non_200"] for r in t.fixed)
            s["fixed_socket_errors"] = sum(r["errors"] for r in t.fixed)
            s["fixed_proxy_cpu_us_per_req"] = med(r["proxy_cpu_us_per_req"] for r in t.fixed)
            # Added latency: paired with direct's run of the same round, then the median.
            for key in ("p50_us", "p99_us", "p999_us"):
                s[f"added_{key}"] = med(
                    a[key] - d[key] for a, d in zip(t.fixed, direct.fixed)
                    if a[key] is not None and d[key] is not None) if t is not direct else 0.0
        out[t.name] = s
    return out


def fmt(v, spec: str = ".0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}×"


def print_table(summary: dict, rate: int) -> None:
    ng = summary["nginx"]
    head = ("target", "req/s", "vs nginx", "p50 µs", "p99 µs", "CPU µs/req", "vs nginx",
            "× origin", "peak RSS", f"+p50 @{rate}/s", "+p99", "+p99.9", "non-2xx", "sock err")
    rows = []
    for s in summary.values():
        rss = s.get("peak_rss_kib")
        rows.append((
            s["label"], fmt(s["rps"]), ratio(s["rps"], ng["rps"]),
            fmt(s["p50_us"]), fmt(s["p99_us"]),
            fmt(s["proxy_cpu_us_per_req"], ".1f"),
            ratio(s["proxy_cpu_us_per_req"], ng["proxy_cpu_us_per_req"]),
            fmt(s.get("proxy_cpu_x_origin"), ".2f") + ("×" if s.get("proxy_cpu_x_origin") else ""),
            "-" if not rss else f"{rss / 1024:.1f} MiB",
            fmt(s.get("added_p50_us"), "+.0f"), fmt(s.get("added_p99_us"), "+.0f"),
            fmt(s.get("added_p999_us"), "+.0f"),
            str(s["non_2xx"] + s.get("fixed_non_200", 0)),
            str(s["socket_errors"] + s.get("fixed_socket_errors", 0)),
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                for i, (x, w) in enumerate(zip(r, widths))) + " |")
    o = summary["direct"]
    print("(req/s and CPU/request count good answers only: 2xx/3xx from wrk, 200 from oha)")
    print(f"\norigin (nginx, 1 worker, return 200) CPU per request served directly: "
          f"{fmt(o['origin_cpu_us_per_req'], '.1f')} µs")


@dataclass
class Paired:
    """a[key] / b[key] within each round (a round's runs are minutes closer in time than the
    rounds are to each other, so drift cancels better than in a ratio of medians): the median
    over rounds and the spread (lowest and highest round)."""

    median: float
    lo: float
    hi: float
    rounds: int

    def text(self, scale: float = 1.0, offset: float = 0.0, spec: str = ".3f",
             unit: str = "") -> str:
        f = lambda v: format((v + offset) * scale, spec) + unit  # noqa: E731
        return f"{f(self.median)} (rounds {f(self.lo)} … {f(self.hi)}, n={self.rounds})"


def paired(a: Target, b: Target, key: str) -> Paired | None:
    vals = [x[key] / y[key] for x, y in zip(a.rounds, b.rounds)
            if x.get(key) is not None and y.get(key)]
    if not vals:
        return None
    return Paired(statistics.median(vals), min(vals), max(vals), len(vals))


def verdict(p: Paired, ok) -> str:
    """MET only when every round meets the limit, NOT MET when the median misses it, and
    UNDECIDED between (or with one round): the spread does not allow a call."""
    if not ok(p.median):
        return "NOT MET"
    if p.rounds >= 2 and ok(p.lo) and ok(p.hi):
        return "MET"
    return "UNDECIDED"


def checks(summary: dict, targets: dict[str, Target]) -> list[dict]:
    ng, on = summary["nginx"], summary["pf-trace"]
    out = []

    def add(name, value, limit, status):
        out.append({"target": name, "value": value, "limit": limit, "status": status,
                    "met": status == "MET"})

    c = paired(targets["pf-trace"], targets["nginx"], "proxy_cpu_us_per_req")
    if c:
        add("CPU/request, phantom-fast (tracing on) vs nginx, paired by round",
            c.text(unit="×"), "≤ 0.75×", verdict(c, lambda v: v <= 0.75))
    if on["proxy_cpu_us_per_req"] and ng["proxy_cpu_us_per_req"]:
        m = on["proxy_cpu_us_per_req"] / ng["proxy_cpu_us_per_req"]
        add("CPU/request, phantom-fast (tracing on) vs nginx, ratio of medians", f"{m:.3f}×",
            "≤ 0.75×", "MET" if m <= 0.75 else "NOT MET")
    if on.get("added_p50_us") is not None and ng.get("added_p50_us") is not None:
        add("added p50 at fixed rate, phantom-fast (tracing on) vs nginx",
            f"{on['added_p50_us']:+.0f} µs vs {ng['added_p50_us']:+.0f} µs", "≤ nginx",
            "MET" if on["added_p50_us"] <= ng["added_p50_us"] else "NOT MET")
    base = targets["pf-notrace"]
    for name, what, limit in (("pf-16rules", "16 non-matching rules vs none", 0.03),
                              ("pf-16new", "16 non-matching new-kind rules vs none", 0.03),
                              ("pf-trace", "tracing on vs off", 0.05)):
        if name not in targets:
            continue
        r = paired(targets[name], base, "rps")
        if r:
            add(f"req/s, {what}, paired ratio by round (median, spread)",
                r.text(100, -1, "+.1f", "%"), f"≥ -{limit * 100:g}%",
                verdict(r, lambda v, lim=limit: v - 1 >= -lim))
        c = paired(targets[name], base, "proxy_cpu_us_per_req")
        if c:
            add(f"(also) CPU/request, {what}, paired ratio by round (median, spread)",
                c.text(100, -1, "+.1f", "%"), f"≤ +{limit * 100:g}%",
                verdict(c, lambda v, lim=limit: v - 1 <= lim))
    if "pf-admin" in targets:
        admin = targets["pf-admin"]
        c = paired(admin, base, "proxy_cpu_us_per_req")
        if c:
            add("CPU/request, admin on and scraped 1/s vs admin off, paired ratio by round "
                "(median, spread)", c.text(100, -1, "+.1f", "%"), "≤ +1%",
                verdict(c, lambda v: v - 1 <= 0.01))
        r = paired(admin, base, "rps")
        if r:
            add("(also) req/s, admin on and scraped 1/s vs admin off, paired ratio by round "
                "(median, spread)", r.text(100, -1, "+.1f", "%"), "≥ -1%",
                verdict(r, lambda v: v - 1 >= -0.01))
        side = sidecar_totals(admin)
        add("scrapes of /metrics during the admin target's runs (one a second), answered 200",
            f"{side['ok']} of {side['calls']} over {side['seconds']:.1f} s"
            + (f"; last error {side['last_error']}" if side["last_error"] else ""),
            "all", "MET" if side["calls"] and side["ok"] == side["calls"] else "NOT MET")
    if "pf-swap" in targets:
        swap = targets["pf-swap"]
        side = sidecar_totals(swap)
        answered = sum(r["good"] for r in swap.rounds)
        bad = sum(r["non_2xx"] + r["socket_errors"] for r in swap.rounds)
        ok = side["failed"] == 0 and bad == 0 and answered > 0
        add("table swapped under wrk load: PUT /faults answered 200 (after every worker applied "
            "it), and no request lost",
            f"{side['ok']} swaps in {side['seconds']:.1f} s = {side['per_s']:.0f}/s, "
            f"{side['failed']} failed; wrk {answered} answered, {bad} non-2xx or socket errors"
            + (f"; last error {side['last_error']}" if side["last_error"] else ""),
            "≥ 95 swaps/s, none failed, no error",
            "MET" if ok and side["per_s"] >= 95 else "NOT MET")
        c = paired(swap, base, "proxy_cpu_us_per_req")
        if c:
            add("(info) CPU/request while the table is swapped 100/s vs admin off, paired ratio "
                "by round", c.text(100, -1, "+.1f", "%"), "-", "INFO")
    return out


def unexpected_errors(targets: list[Target]) -> list[str]:
    """One line per target that answered errors it was not asked to inject."""
    out = []
    for t in targets:
        if t.injects_errors:
            continue
        sock = sum(r["socket_errors"] for r in t.rounds) + sum(r["errors"] for r in t.fixed)
        bad = sum(r["non_2xx"] for r in t.rounds) + sum(r["non_200"] for r in t.fixed)
        if sock or bad:
            out.append(f"{t.name}: {bad} non-2xx answers, {sock} socket errors")
    return out


def sidecar_note(r: dict) -> str:
    side = r.get("sidecar")
    if not side:
        return ""
    return (f"  side load {side['ok']}/{side['calls']} ok ({side['per_s']:.0f}/s)"
            + (f", last error {side['last_error']}" if side["last_error"] else ""))


def start_wrk_peers(procs: Processes, tmp: str) -> tuple[int, Owned, int, Owned]:
    """wrk's done() hook, the nginx origin and nginx as a reverse proxy in front of it:
    (origin port, origin, proxy port, proxy)."""
    with open(f"{tmp}/done.lua", "w") as f:
        f.write(WRK_DONE_LUA)
    origin_port, nginx_port = free_port(), free_port()
    origin = start_nginx(procs, tmp, "origin", origin_port,
                         ORIGIN_HTTP.format(port=origin_port, body=ORIGIN_BODY.replace("\n", "\\n")),
                         nofile=16384, conns=8192)
    nginx = start_nginx(procs, tmp, "nginx", nginx_port,
                        NGINX_PROXY_HTTP.format(port=nginx_port, origin_port=origin_port,
                                                keepalive_requests=KEEPALIVE_REQUESTS),
                        nofile=16384, conns=8192)
    return origin_port, origin, nginx_port, nginx


def compare(args, tmp: str, procs: Processes) -> dict:
    origin_port, origin, nginx_port, nginx = start_wrk_peers(procs, tmp)
    targets = [Target("direct", "direct (no proxy)", origin_port, None),
               Target("nginx", "nginx reverse proxy, 1 worker", nginx_port, nginx)]
    os.makedirs(f"{tmp}/traces", exist_ok=True)
    variants = [
        ("pf-notrace", "phantom-fast, tracing off", ["--no-traces"]),
        ("pf-trace", "phantom-fast, tracing on", ["--trace-dir", f"{tmp}/traces", "--trace-reset"]),
        ("pf-16rules", "phantom-fast, 16 rules, none match",
         ["--no-traces"] + [a for rule in NON_MATCHING_RULES for a in ("--fault", rule)]),
        ("pf-16new", "phantom-fast, 16 new-kind rules, none match",
         ["--no-traces"] + [a for rule in NEW_KIND_RULES for a in ("--fault", rule)]),
        ("pf-delay1ms", "phantom-fast, delay:1ms", ["--no-traces", "--fault", "delay:1ms"]),
    ]
    for name, label, extra in variants:
        o, port = start_phantom(procs, tmp, args.bin, name, origin_port,
                                ["--workers", "1"] + extra)
        targets.append(Target(name, label, port, o))
    # Issue 11: the admin endpoint scraped every second, and the table swapped 100 times a
    # second, each against "pf-notrace" (the same flags without --admin).
    for name, label, side in (("pf-admin", "phantom-fast, admin on, scraped 1/s", scraper),
                              ("pf-swap", "phantom-fast, table swapped 100/s", swapper)):
        admin_port = free_port()
        o, port = start_phantom(procs, tmp, args.bin, name, origin_port,
                                ["--workers", "1", "--no-traces", "--admin",
                                 f"127.0.0.1:{admin_port}"])
        wait_port(admin_port, STARTUP_TIMEOUT_S)
        targets.append(Target(name, label, port, o, sidecar=side(admin_port)))

    # Warm-up: connection pools, page cache, CPU frequency; results discarded.
    for t in targets:
        run_wrk(tmp, t.port, args.warmup, WRK_CONNECTIONS, timeout_s=2)

    n = len(targets)
    for rnd in range(args.rounds):
        # Round-robin, rotated each round, so no target always runs first or last.
        order = [targets[(i + rnd) % n] for i in range(n)]
        log(f"round {rnd + 1}/{args.rounds}: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
            f"-d{args.duration:g}s, load {os.getloadavg()[0]:.2f}")
        for t in order:
            r = measure_wrk(t, origin, tmp, args.duration)
            if t.proc:
                r["peak_rss_kib"] = sum(status_kib(p, "VmHWM") for p in t.proc.pids())
            r["round"] = rnd
            t.rounds.append(r)
            log(f"  {t.name:12} {r['rps']:9.0f} req/s  p50 {r['p50_us']:6.0f} µs  "
                f"p99 {r['p99_us']:6.0f} µs  cpu {fmt(r['proxy_cpu_us_per_req'], '.1f'):>5} µs/req"
                f"  origin {r['origin_cpu_us_per_req']:.1f}  non-2xx {r['non_2xx']}  socket "
                f"errors {r['socket_errors']}" + sidecar_note(r))
        if args.rate > 0:
            for t in order:
                r = measure_fixed(t, origin, args.rate, args.fixed_duration)
                r["round"] = rnd
                t.fixed.append(r)
                log(f"  {t.name:12} @{args.rate}/s p50 {r['p50_us']:6.0f} µs  p99 "
                    f"{r['p99_us']:6.0f} µs  p99.9 {r['p999_us']:6.0f} µs  errors "
                    f"{r['errors'] + r['non_200']}")
    # The direct target's peak RSS is the origin's.
    targets[0].rounds[-1]["peak_rss_kib"] = sum(status_kib(p, "VmHWM") for p in origin.pids())
    summary = summarise(targets)
    return {"summary": summary,
            "rounds": {t.name: {"wrk": t.rounds, "fixed_rate": t.fixed} for t in targets},
            "checks": checks(summary, {t.name: t for t in targets}),
            "unexpected_errors": unexpected_errors(targets)}


# --------------------------------------------------------------------------------------------
# Scale


def fd_count(pid: int) -> int:
    """Open descriptors of pid: client plus upstream sockets (plus a few fixed ones)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def open_connections(port: int, conns: int) -> tuple:
    """Opens `conns` non-blocking connections to 127.0.0.1:port at once and waits (30 s) for
    their connects, then (15 s) until the proxy has accepted them all (they may still sit in its
    listen backlog). Returns the epoll they are registered with (for EPOLLOUT), the sockets by
    descriptor, and how many failed to connect."""
    addr = ("127.0.0.1", port)
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    connect_errors = 0
    for _ in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(addr) not in (0, 115):  # EINPROGRESS
            connect_errors += 1
            s.close()
            continue
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLOUT)
    pending = set(socks)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for fd, _ev in ep.poll(1.0):
            if fd in pending:
                pending.discard(fd)
                if socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    connect_errors += 1
    connect_errors += len(pending)
    deadline = time.monotonic() + 15
    while established_on_port(port) < len(socks) and time.monotonic() < deadline:
        time.sleep(0.1)
    return ep, socks, connect_errors


def burst(port: int, conns: int, waves: int, proxy: Owned, origin: Owned,
          hold_s: float) -> dict:
    """Opens `conns` keep-alive connections, then `waves` times sends one request on every one of
    them at once (so all of them wait in the delay together) and reads every answer; then holds
    them all open and idle for `hold_s`."""
    rss0 = status_kib(proxy.pid, "VmRSS")
    anon0 = status_kib(proxy.pid, "RssAnon")
    hwm0 = status_kib(proxy.pid, "VmHWM")
    kern0 = kernel_socket_kib()
    ns0 = netstat()
    t0 = time.monotonic()
    ep, socks, connect_errors = open_connections(port, conns)
    accepted = established_on_port(port)
    connect_s = time.monotonic() - t0
    # Every connection open, none has sent a byte: what an idle connection costs.
    time.sleep(0.5)
    rss_idle = status_kib(proxy.pid, "VmRSS")
    ns1 = netstat()
    for fd in socks:
        ep.modify(fd, select.EPOLLIN)
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    lat_ms: list[float] = []
    failures = 0
    wave_stats = []
    peak_fds = fd_count(proxy.pid)
    for wave in range(waves):
        c0, oc0 = cpu_seconds([proxy.pid]), cpu_seconds(origin.pids())
        self0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        w0 = time.monotonic()
        sent: dict[int, float] = {}
        bufs: dict[int, bytearray] = {}
        for fd, s in socks.items():
            try:
                s.send(request)
                sent[fd] = time.monotonic()
                bufs[fd] = bytearray()
            except OSError:
                failures += 1
        send_s = time.monotonic() - w0
        wave_lat: list[float] = []
        waiting = set(sent)
        deadline = time.monotonic() + 15
        next_sample = 0.0
        while waiting and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                peak_fds = max(peak_fds, fd_count(proxy.pid))
                next_sample = now + 0.1
            for fd, _ev in ep.poll(0.1):
                if fd not in waiting:
                    continue
                try:
                    chunk = socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    waiting.discard(fd)
                    failures += 1
                    continue
                b = bufs[fd]
                b += chunk
                end = b.find(b"\r\n\r\n")
                if end < 0:
                    continue
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", b[:end])
                if m and len(b) < end + 4 + int(m.group(1)):
                    continue
                wave_lat.append((time.monotonic() - sent[fd]) * 1e3)
                if not b.startswith(b"HTTP/1.1 200"):
                    failures += 1
                waiting.discard(fd)
        failures += len(waiting)
        wall = time.monotonic() - w0
        c1, oc1 = cpu_seconds([proxy.pid]), cpu_seconds(origin.pids())
        self1 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        wave_lat.sort()
        lat_ms.extend(wave_lat)
        q = quantiles(wave_lat)
        wave_stats.append({"requests": len(sent), "answered": len(wave_lat), "send_s": send_s,
                           "wall_s": wall, "proxy_cpu_s": c1 - c0,
                           "proxy_cpu_us_per_req": (c1 - c0) * 1e6 / max(len(sent), 1),
                           "p50_ms": q.get("p50", {}).get("observed"),
                           "p99_ms": q.get("p99", {}).get("observed"),
                           "origin_cpu_s": oc1 - oc0, "client_cpu_s": self1 - self0})
        log(f"  wave {wave + 1}/{waves}: {len(sent)} requests sent in {send_s * 1e3:.0f} ms, "
            f"{len(wave_lat)} answered after {wall:.2f}s (p50 {wave_stats[-1]['p50_ms']} ms, "
            f"p99 {wave_stats[-1]['p99_ms']} ms), proxy CPU {(c1 - c0) * 1e3:.0f} ms, "
            f"failures so far {failures}")
    ns2 = netstat()
    rss1 = status_kib(proxy.pid, "VmRSS")
    anon1 = status_kib(proxy.pid, "RssAnon")
    hwm = status_kib(proxy.pid, "VmHWM")
    kern1 = kernel_socket_kib()
    # Idle hold: every connection open, nothing to do; the proxy should use next to no CPU.
    c0 = cpu_seconds([proxy.pid])
    time.sleep(hold_s)
    idle_cpu = cpu_seconds([proxy.pid]) - c0
    still_open = established_on_port(port)
    for s in socks.values():
        s.close()
    ep.close()
    n = max(len(socks), 1)
    lat_ms.sort()
    return {
        "connections": len(socks), "connect_errors": connect_errors, "connect_s": connect_s,
        "accepted_by_proxy": accepted, "still_open_after_hold": still_open,
        "waves": wave_stats, "answered": len(lat_ms), "failures": failures,
        "latency_ms": quantiles(lat_ms), "peak_proxy_fds": peak_fds,
        "kernel_connect": netstat_delta(ns0, ns1), "kernel_waves": netstat_delta(ns1, ns2),
        "idle_hold_s": hold_s, "idle_hold_proxy_cpu_ms": idle_cpu * 1e3,
        "idle_hold_proxy_cpu_pct": idle_cpu / hold_s * 100,
        "rss_before_kib": rss0, "rss_with_conns_kib": rss1, "vm_hwm_kib": hwm,
        "rss_anon_before_kib": anon0, "rss_anon_with_conns_kib": anon1,
        "rss_per_conn_bytes": (rss1 - rss0) * 1024 / n,
        "rss_idle_kib": rss_idle, "rss_idle_per_conn_bytes": (rss_idle - rss0) * 1024 / n,
        "rss_anon_per_conn_bytes": (anon1 - anon0) * 1024 / n,
        "hwm_per_conn_bytes": hwm * 1024 / n,
        # What the connections added to the peak, over the proxy's size before them.
        "hwm_added_per_conn_bytes": (hwm - hwm0) * 1024 / n,
        "kernel_kib_before": kern0, "kernel_kib_with_conns": kern1,
        # Both ends of every loopback connection (the client's socket and the proxy's), plus
        # whatever else the machine opened meanwhile: an upper bound for the proxy's side.
        "kernel_per_conn_bytes": sum(kern1[k] - kern0[k] for k in kern0) * 1024 / n,
    }


QUANTS = (0.0, 0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999, 1.0)


def quantiles(sorted_ms: list[float]) -> dict:
    """Observed quantiles beside those of the injected uniform delay."""
    if not sorted_ms:
        return {}
    out = {}
    lo, hi = SCALE_DELAY_MS
    for q in QUANTS:
        i = min(len(sorted_ms) - 1, int(q * len(sorted_ms)))
        out[f"p{q * 100:g}"] = {"observed": round(sorted_ms[i], 1),
                                "injected": round(lo + (hi - lo) * q, 1)}
    return out


# Observed delays "match" the injected ones when none ends early and the p1..p99 quantiles land
# within this much after the injected quantile (the proxying itself takes well under 1 ms).
MATCH_SLACK_MS = 25.0


def matches_injected(pcts: dict[str, float | None]) -> bool:
    """`pcts`: observed ms by quantile name (p1, p50, p99…)."""
    lo, hi = SCALE_DELAY_MS
    for name, observed in pcts.items():
        if observed is None:
            return False
        want = lo + (hi - lo) * float(name[1:]) / 100
        if observed < want - 1.0 or observed > want + MATCH_SLACK_MS:
            return False
    return True


def run_sampled(argv: list[str], out_path: str, port: int, proxy: Owned,
                timeout_s: float) -> tuple[str, dict]:
    """Runs a load generator, sampling the proxy's client connections and descriptors each
    second; returns its stdout and the peaks."""
    peak = {"clients": 0, "proxy_fds": 0}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(out_path + ".err", "wb") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        try:
            while p.poll() is None and time.monotonic() < deadline:
                peak["clients"] = max(peak["clients"], established_on_port(port))
                peak["proxy_fds"] = max(peak["proxy_fds"], fd_count(proxy.pid))
                time.sleep(1.0)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The load generator's own CPU (children reaped meanwhile: only it), as a share of a core.
    peak["generator_cpu_pct"] = ((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                                 / max(time.monotonic() - t0, 1e-3) * 100)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if p.returncode != 0:
        with open(out_path + ".err", encoding="utf-8", errors="replace") as f:
            raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {f.read().strip()}")
    return text, peak


def scale(args, tmp: str, procs: Processes) -> dict:
    with open(f"{tmp}/done.lua", "w") as f:
        f.write(WRK_DONE_LUA)
    origin_port = free_port()
    origin = start_nginx(procs, tmp, "origin", origin_port,
                         ORIGIN_HTTP.format(port=origin_port, body=ORIGIN_BODY.replace("\n", "\\n")),
                         nofile=16384, conns=8192)
    conns = args.connections
    proxy, port = start_phantom(
        procs, tmp, args.bin, "pf-scale", origin_port,
        ["--workers", "1", "--no-traces", "--max-connections", str(conns + 1024),
         "--fault", SCALE_FAULT])
    res: dict = {"fault": SCALE_FAULT, "connections": conns, "workers": 1,
                 "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}

    log(f"scale 1/4: {conns} keep-alive connections, one request each, all sent at once "
        f"into {SCALE_FAULT}")
    res["burst"] = b = burst(port, conns, args.waves, proxy, origin, args.hold)
    log(f"  RSS {b['rss_before_kib'] / 1024:.1f} → {b['rss_with_conns_kib'] / 1024:.1f} MiB, "
        f"idle hold {args.hold:g}s: proxy CPU {b['idle_hold_proxy_cpu_ms']:.0f} ms, kernel "
        f"{b['kernel_waves']}")

    if args.rate_held > 0:
        log(f"scale 2/4: oha -c {conns} -q {args.rate_held} -z {args.held_duration:g}s "
            f"(open loop, keep-alive, below saturation)")
        ns0, p0, o0 = netstat(), cpu_seconds([proxy.pid]), cpu_seconds(origin.pids())
        text, peak = run_sampled(oha_argv(port, args.rate_held, args.held_duration, conns),
                                 f"{tmp}/oha-held.json", port, proxy, args.held_duration + 60)
        r = parse_oha(text)
        p1 = cpu_seconds([proxy.pid])
        r.update(peak_clients=peak["clients"], peak_proxy_fds=peak["proxy_fds"],
                 kernel=netstat_delta(ns0, netstat()),
                 generator_cpu_pct=peak["generator_cpu_pct"],
                 origin_cpu_pct=(cpu_seconds(origin.pids()) - o0) / args.held_duration * 100,
                 proxy_cpu_us_per_req=(p1 - p0) * 1e6 / max(r["good"], 1),
                 proxy_cpu_pct=(p1 - p0) / args.held_duration * 100,
                 vm_hwm_kib=status_kib(proxy.pid, "VmHWM"))
        res["open_loop"] = r
        log(f"  {r['requests']} requests, errors {r['errors']}, non-200 {r['non_200']}, peak "
            f"{r['peak_clients']} connections, ms p50 {r['p50_us'] / 1e3:.0f} p99 "
            f"{r['p99_us'] / 1e3:.0f}, proxy {r['proxy_cpu_us_per_req']:.1f} µs/req "
            f"({r['proxy_cpu_pct']:.0f}% of a core)")

    if args.scale_duration > 0:
        log(f"scale 3/4: wrk -t1 -c{conns} -d{args.scale_duration:g}s (closed loop: asks for "
            f"{conns / 0.3:.0f} req/s)")
        ns0, p0, o0 = netstat(), cpu_seconds([proxy.pid]), cpu_seconds(origin.pids())
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(args.scale_duration))}s",
                "--timeout=10s", "--latency", "-s", f"{tmp}/done.lua",
                f"http://127.0.0.1:{port}/"]
        text, peak = run_sampled(argv, f"{tmp}/wrk-scale.out", port, proxy,
                                 args.scale_duration + 60)
        w = parse_wrk(text)
        p1, o1 = cpu_seconds([proxy.pid]), cpu_seconds(origin.pids())
        w.update(peak_clients=peak["clients"], peak_proxy_fds=peak["proxy_fds"],
                 generator_cpu_pct=peak["generator_cpu_pct"],
                 kernel=netstat_delta(ns0, netstat()),
                 proxy_cpu_us_per_req=(p1 - p0) * 1e6 / max(w["good"], 1),
                 proxy_cpu_pct=(p1 - p0) / (w["duration_us"] / 1e6) * 100,
                 origin_cpu_pct=(o1 - o0) / (w["duration_us"] / 1e6) * 100,
                 vm_hwm_kib=status_kib(proxy.pid, "VmHWM"))
        res["closed_loop"] = w
        log(f"  {w['requests']} requests, {w['rps']:.0f} req/s, errors {w['errors']}, peak "
            f"{w['peak_clients']} connections, ms p50 {w['p50_us'] / 1e3:.0f} p99 "
            f"{w['p99_us'] / 1e3:.0f}, kernel {w['kernel']}")

    if args.rate_new > 0:
        # In flight ≈ rate × delay (≤ 500 ms); room for twice that.
        c = max(64, int(args.rate_new * SCALE_DELAY_MS[1] / 1e3 * 2))
        log(f"scale 4/4: oha --disable-keepalive -q {args.rate_new} -c {c} "
            f"-z {args.new_duration:g}s")
        ns0, p0 = netstat(), cpu_seconds([proxy.pid])
        text, peak = run_sampled(oha_argv(port, args.rate_new, args.new_duration, c,
                                          keepalive=False),
                                 f"{tmp}/oha-new.json", port, proxy, args.new_duration + 60)
        r = parse_oha(text)
        p1 = cpu_seconds([proxy.pid])
        r.update(connections_flag=c, peak_clients=peak["clients"],
                 generator_cpu_pct=peak["generator_cpu_pct"], peak_proxy_fds=peak["proxy_fds"],
                 kernel=netstat_delta(ns0, netstat()),
                 proxy_cpu_us_per_req=(p1 - p0) * 1e6 / max(r["good"], 1),
                 proxy_cpu_pct=(p1 - p0) / args.new_duration * 100)
        res["new_connections"] = r
        log(f"  {r['requests']} requests ({r['rps']:.0f}/s), errors {r['errors']}, non-200 "
            f"{r['non_200']}, ms p50 {r['p50_us'] / 1e3:.0f} p99 {r['p99_us'] / 1e3:.0f}, "
            f"proxy {r['proxy_cpu_us_per_req']:.1f} µs/req ({r['proxy_cpu_pct']:.0f}% of a core)")
    res["vm_hwm_kib"] = status_kib(proxy.pid, "VmHWM")
    return res


def scale_compare(args, tmp: str, procs: Processes) -> dict:
    """`--scale --bin-before BIN`: the burst (phase 1) and the open loop (phase 2) for BIN and for this
    binary, one proxy at a time against the same origin, rounds interleaved in alternating order
    so load on the machine falls on both alike."""
    origin_port = free_port()
    origin = start_nginx(procs, tmp, "origin", origin_port,
                         ORIGIN_HTTP.format(port=origin_port, body=ORIGIN_BODY.replace("\n", "\\n")),
                         nofile=16384, conns=8192)
    conns = args.connections
    bins = {"before": args.bin_before, "after": args.bin}
    runs: dict[str, list[dict]] = {k: [] for k in bins}
    for r in range(args.rounds):
        for label in (("before", "after") if r % 2 == 0 else ("after", "before")):
            proxy, port = start_phantom(
                procs, tmp, bins[label], f"pf-{label}-{r}", origin_port,
                ["--workers", "1", "--no-traces", "--max-connections", str(conns + 1024),
                 "--fault", SCALE_FAULT])
            load = os.getloadavg()[0]
            log(f"round {r + 1}/{args.rounds}, {label} ({bins[label]}), load average {load:.2f}: "
                f"{conns} connections, {args.waves} wave(s)")
            res: dict = {"load": load, "burst": burst(port, conns, args.waves, proxy, origin,
                                                       args.hold)}
            b = res["burst"]
            log(f"  peak RSS {b['hwm_per_conn_bytes'] / 1024:.1f} KiB per connection, "
                f"failures {b['failures']}")
            if args.rate_held > 0:
                text, _peak = run_sampled(oha_argv(port, args.rate_held, args.held_duration, conns),
                                          f"{tmp}/oha-{label}-{r}.json", port, proxy,
                                          args.held_duration + 60)
                res["open_loop"] = parse_oha(text)
            procs.stop(proxy)
            runs[label].append(res)
    return {"fault": SCALE_FAULT, "connections": conns, "rounds": args.rounds, "bins": bins,
            "runs": runs}


def print_scale_compare(res: dict) -> list[str]:
    """The before/after table (medians over rounds); returns the phases that had errors."""
    runs = res["runs"]

    def col(label: str, get) -> str:
        vals = [v for v in (get(r) for r in runs[label]) if v is not None]
        return "-" if not vals else f"{statistics.median(vals):.1f}"

    def burst(key, scale=1.0):
        return lambda r: r["burst"][key] * scale

    def lat(q):
        return lambda r: r["burst"]["latency_ms"].get(q, {}).get("observed")

    def open_loop(key, scale=1.0):
        return lambda r: (r["open_loop"][key] or 0) * scale if "open_loop" in r else None

    rows = [
        ("peak RSS ÷ connections (KiB)", burst("hwm_per_conn_bytes", 1 / 1024)),
        ("RSS per connection, opened, no request yet (KiB)",
         burst("rss_idle_per_conn_bytes", 1 / 1024)),
        ("RSS added per connection after the waves (KiB)", burst("rss_per_conn_bytes", 1 / 1024)),
        ("  of it anonymous (KiB)", burst("rss_anon_per_conn_bytes", 1 / 1024)),
        ("peak added per connection (KiB)", burst("hwm_added_per_conn_bytes", 1 / 1024)),
        ("kernel per connection, both ends (KiB)", burst("kernel_per_conn_bytes", 1 / 1024)),
        ("burst: failed requests", lambda r: r["burst"]["failures"]
         + r["burst"]["connect_errors"]),
        ("burst: latency p1 (ms; injected 104)", lat("p1")),
        ("burst: latency p50 (ms; injected 300)", lat("p50")),
        ("burst: latency p99 (ms; injected 496)", lat("p99")),
        ("burst: proxy CPU per request (µs)", lambda r: statistics.mean(
            w["proxy_cpu_us_per_req"] for w in r["burst"]["waves"])),
        ("open loop: errors + non-200", lambda r: r["open_loop"]["errors"]
         + r["open_loop"]["non_200"] if "open_loop" in r else None),
        ("open loop: p50 (ms; injected 300)", open_loop("p50_us", 1e-3)),
        ("open loop: p99 (ms; injected 496)", open_loop("p99_us", 1e-3)),
        ("load average at the start", lambda r: r["load"]),
    ]
    print(f"## Scale before/after: {res['connections']} keep-alive connections through one "
          f"worker, --fault {res['fault']}; {res['rounds']} round(s) interleaved, medians")
    print(f"   before: {res['bins']['before']}\n   after:  {res['bins']['after']}\n")
    width = max(len(name) for name, _ in rows)
    print(f"   {'':{width}}  {'before':>9}  {'after':>9}")
    for name, get in rows:
        print(f"   {name:{width}}  {col('before', get):>9}  {col('after', get):>9}")
    print()
    after = statistics.median(r["burst"]["hwm_per_conn_bytes"] for r in runs["after"]) / 1024
    print(f"target: ≤ {HAPROXY_KIB_PER_CONN:g} KiB per connection (HAProxy), peak RSS ÷ "
          f"connections: {after:.1f} KiB → {'MET' if after <= HAPROXY_KIB_PER_CONN else 'NOT MET'}")
    errors = []
    for label in ("before", "after"):
        for i, r in enumerate(runs[label]):
            n = r["burst"]["failures"] + r["burst"]["connect_errors"]
            if "open_loop" in r:
                n += r["open_loop"]["errors"] + r["open_loop"]["non_200"]
            if n:
                errors.append(f"{label} round {i + 1}: {n} errors")
    return errors


def _ms(us) -> str:
    return "-" if us is None else f"{us / 1e3:.0f}"


def print_scale(res: dict) -> list[str]:
    """Prints the scale report; returns one line per phase that had errors (the scale fault only
    delays, so every error is unexpected)."""
    b, n_conns = res["burst"], res["connections"]
    print(f"## Scale: {n_conns} keep-alive connections through one worker, "
          f"--fault {res['fault']}")
    print(f"\n1. All at once: {b['accepted_by_proxy']} connections accepted in "
          f"{b['connect_s']:.1f}s (connect errors {b['connect_errors']}; kernel "
          f"{b['kernel_connect']}), {len(b['waves'])} wave(s) of one request on every "
          f"connection: {b['answered']} answered, {b['failures']} failed; "
          f"{b['still_open_after_hold']} still open after the idle hold")
    print("   latency (ms), every request of every wave, observed vs the injected uniform "
          "100-500:")
    print("   " + "  ".join(f"{k} {v['observed']:.0f}/{v['injected']:.0f}"
                            for k, v in b["latency_ms"].items()))
    for i, w in enumerate(b["waves"]):
        print(f"   wave {i + 1}: sent in {w['send_s'] * 1e3:.0f} ms, all answered after "
              f"{w['wall_s']:.2f}s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, proxy CPU "
              f"{w['proxy_cpu_s'] * 1e3:.0f} ms = {w['proxy_cpu_us_per_req']:.1f} µs/request "
              f"(origin {w['origin_cpu_s'] * 1e3:.0f} ms, this Python client "
              f"{w['client_cpu_s'] * 1e3:.0f} ms)")
    print(f"   peak proxy descriptors {b['peak_proxy_fds']}; kernel during the waves "
          f"{b['kernel_waves']}")
    print(f"   idle hold {b['idle_hold_s']:g}s with every connection open: proxy CPU "
          f"{b['idle_hold_proxy_cpu_ms']:.0f} ms ({b['idle_hold_proxy_cpu_pct']:.2f}% of a core)")
    print(f"   RSS {b['rss_before_kib'] / 1024:.1f} MiB before, "
          f"{b['rss_idle_kib'] / 1024:.1f} MiB with every connection open before any request "
          f"({b['rss_idle_per_conn_bytes'] / 1024:.1f} KiB each), "
          f"{b['rss_with_conns_kib'] / 1024:.1f} MiB after the waves → "
          f"{b['rss_per_conn_bytes'] / 1024:.1f} KiB per connection (anonymous "
          f"{b['rss_anon_per_conn_bytes'] / 1024:.1f} KiB); VmHWM {b['vm_hwm_kib'] / 1024:.1f} "
          f"MiB = {b['hwm_per_conn_bytes'] / 1024:.1f} KiB per connection, everything included")
    if "kernel_per_conn_bytes" in b:
        k0, k1 = b["kernel_kib_before"], b["kernel_kib_with_conns"]
        print(f"   kernel (not in RSS, machine-wide, both ends of each loopback connection): TCP "
              f"slab {k0['tcp_slab_kib'] / 1024:.1f} → {k1['tcp_slab_kib'] / 1024:.1f} MiB, "
              f"socket inodes {k0['sock_inode_kib'] / 1024:.1f} → "
              f"{k1['sock_inode_kib'] / 1024:.1f} MiB, socket buffers "
              f"{k0['tcp_buffers_kib'] / 1024:.1f} → {k1['tcp_buffers_kib'] / 1024:.1f} MiB: "
              f"{b['kernel_per_conn_bytes'] / 1024:.1f} KiB per connection")
    phases = [("burst", b["failures"] + b["connect_errors"]
               + (n_conns * len(b["waves"]) - b["answered"]))]
    o = res.get("open_loop")
    if o:
        print(f"\n2. Open loop, keep-alive: {o['rps']:.0f} req/s over up to {o['peak_clients']} "
              f"connections: {o['requests']} requests, errors {o['errors']}, non-200 "
              f"{o['non_200']} {o['error_kinds'] or ''}")
        print(f"   latency ms (latency-corrected): p50 {_ms(o['p50_us'])} p90 {_ms(o['p90_us'])} "
              f"p99 {_ms(o['p99_us'])} p99.9 {_ms(o['p999_us'])} max {_ms(o['max_us'])} "
              f"(injected p50 300, p90 460, p99 496, max 500)")
        print(f"   proxy {o['proxy_cpu_us_per_req']:.1f} µs CPU/request, "
              f"{o['proxy_cpu_pct']:.0f}% of a core (origin {o['origin_cpu_pct']:.0f}%, oha "
              f"{o['generator_cpu_pct']:.0f}%); peak descriptors {o['peak_proxy_fds']}; "
              f"kernel {o['kernel']}")
        phases.append(("open loop", o["errors"] + o["non_200"]))
    w = res.get("closed_loop")
    if w:
        print(f"\n3. Closed loop (wrk, every connection asks again at once: "
              f"{n_conns / 0.3:.0f} req/s wanted): {w['rps']:.0f} req/s, {w['requests']} "
              f"requests, errors {w['errors']} (connect {w['connect']}, read {w['read']}, write "
              f"{w['write']}, status {w['status']}, timeout {w['timeout']}), peak "
              f"{w['peak_clients']} connections")
        print(f"   latency ms: min {_ms(w['min_us'])} p50 {_ms(w['p50_us'])} p90 "
              f"{_ms(w['p90_us'])} p99 {_ms(w['p99_us'])} max {_ms(w['max_us'])}; proxy "
              f"{w['proxy_cpu_us_per_req']:.1f} µs/req ({w['proxy_cpu_pct']:.0f}% of a core), "
              f"origin {w['origin_cpu_pct']:.0f}%, wrk {w['generator_cpu_pct']:.0f}%; peak descriptors "
              f"{w['peak_proxy_fds']}; kernel {w['kernel']}")
        phases.append(("closed loop", w["errors"]))
    nc = res.get("new_connections")
    if nc:
        print(f"\n4. New connection per request: {nc['rps']:.0f}/s, {nc['requests']} requests, "
              f"errors {nc['errors']}, non-200 {nc['non_200']} {nc['error_kinds'] or ''}; "
              f"latency ms p50 {_ms(nc['p50_us'])} p99 {_ms(nc['p99_us'])} max "
              f"{_ms(nc['max_us'])}; proxy {nc['proxy_cpu_us_per_req']:.1f} µs/req "
              f"({nc['proxy_cpu_pct']:.0f}% of a core, oha {nc['generator_cpu_pct']:.0f}%); peak "
              f"descriptors {nc['peak_proxy_fds']}; kernel {nc['kernel']}")
        phases.append(("new connections", nc["errors"] + nc["non_200"]))
    print()
    for name, errors in phases:
        print(f"target: no errors, {name}: {errors} → {'MET' if errors == 0 else 'NOT MET'}")
    per = b["hwm_per_conn_bytes"] / 1024
    print(f"target: ≤ {HAPROXY_KIB_PER_CONN:g} KiB RSS per connection (HAProxy's): {per:.1f} KiB "
          f"(peak RSS ÷ connections) → {'MET' if per <= HAPROXY_KIB_PER_CONN else 'NOT MET'}")
    pick = ("p1", "p50", "p99")
    burst_ok = matches_injected({k: b["latency_ms"].get(k, {}).get("observed") for k in pick})
    print(f"expectation: latency matches the injected delay, all at once: "
          f"{'yes' if burst_ok else 'no'} (p1/p50/p99 within +{MATCH_SLACK_MS:.0f} ms)")
    if o:
        ok = matches_injected({"p50": o["p50_us"] and o["p50_us"] / 1e3,
                               "p99": o["p99_us"] and o["p99_us"] / 1e3})
        print(f"expectation: latency matches the injected delay, open loop: "
              f"{'yes' if ok else 'no'}")
    return [f"{name}: {errors} errors" for name, errors in phases if errors]


# --------------------------------------------------------------------------------------------
# The delay-cost run (issue 14): what a delayed request costs the proxy next to an undelayed one


# (rate req/s, keep-alive connections): the issue's two load points. In flight ≈ rate × delay:
# 2 000/s × 300 ms mean = 600 of 1 000 connections, 5 000/s = 1 500 of 2 000.
DELAY_COST_LOADS = ((2000, 1000), (5000, 2000))
DELAY_COST_FAULTS = (("none", []), ("delay:1ms", ["--fault", "delay:1ms"]),
                     ("delay:100ms-500ms", ["--fault", "delay:100ms-500ms"]))
# perf stat tracepoints, counted on the proxy's threads over the measured window.
DELAY_COST_EVENTS = {
    "enter": "syscalls:sys_enter_io_uring_enter",
    "sqe": "io_uring:io_uring_submit_req",
    "cqe": "io_uring:io_uring_complete",
    "syscalls": "raw_syscalls:sys_enter",
    "settime": "syscalls:sys_enter_timerfd_settime",
}
# A delayed request costs at most this many times an undelayed one (issue 14's goal)…
DELAY_COST_MAX_RATIO = 1.25
# …and ends at most this late at p99 (observed minus injected, proxy's own time included).
DELAY_COST_MAX_LATE_US = 2000.0
# A run whose proxy served less than this share of the offered rate, or whose median exchange took
# longer than this of its own (late p50), fell behind: it was batching a backlog, which flatters
# its CPU per request, so its figures are flagged.
DELAY_COST_BEHIND_SHARE = 0.95
DELAY_COST_BEHIND_US = 5000.0


def steal_ms() -> float:
    """Steal time so far, all CPUs (ms): the hypervisor running others on this VM's vCPUs."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000 / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def task_counters(pid: int) -> tuple[int, int]:
    """(CPU ns, context switches) summed over every thread of pid: schedstat's run time
    (utime + stime at nanosecond resolution) and voluntary + nonvoluntary switches."""
    cpu_ns = switches = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                cpu_ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return cpu_ns, switches


def perf_events_available() -> list[str]:
    """The DELAY_COST_EVENTS keys this kernel and perf can count (none without perf)."""
    if not shutil.which("perf"):
        return []
    ok = []
    for key, ev in DELAY_COST_EVENTS.items():
        p = subprocess.run(["perf", "stat", "-x,", "-e", ev, "--", "true"], capture_output=True,
                           text=True, timeout=30)
        if p.returncode == 0 and "not supported" not in p.stderr and "<not" not in p.stderr:
            ok.append(key)
    return ok


def marked_sleep(seconds: float) -> list[str]:
    """A workload for perf that prints the wall clock when it starts and when it ends: perf's
    window, without perf's own start-up and tear-down (which take a while on a loaded machine)."""
    return ["sh", "-c", f"date +%s.%N; sleep {seconds:g}; date +%s.%N"]


def marks(stdout: str, fallback: tuple[float, float]) -> tuple[float, float]:
    try:
        t0, t1 = (float(x) for x in stdout.split()[:2])
        return t0, t1
    except ValueError:
        return fallback


def perf_window(pid: int, keys: list[str], seconds: float) -> tuple[dict, float, float]:
    """Counts `keys` on pid's threads for `seconds` (a plain sleep without perf); returns the
    counts and the window's start and end (wall clock)."""
    if not keys:
        t0 = time.time()
        time.sleep(seconds)
        return {}, t0, time.time()
    events = ",".join(DELAY_COST_EVENTS[k] for k in keys)
    t = time.time()
    p = subprocess.run(["perf", "stat", "-x,", "-e", events, "-p", str(pid), "--"]
                       + marked_sleep(seconds), capture_output=True, text=True,
                       timeout=seconds + 30)
    w0, w1 = marks(p.stdout, (t, time.time()))
    by_event = {}
    for line in p.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            by_event[parts[2]] = int(parts[0])
    return {k: by_event.get(DELAY_COST_EVENTS[k]) for k in keys}, w0, w1


def window_records(binary: str, trace_dir: str, t0: float, t1: float) -> list[dict]:
    """The trace records of exchanges that ended in [t0, t1) (wall clock, seconds)."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 2))
    p = subprocess.run([binary, "traces", "--trace-dir", trace_dir, "--since", since],
                       capture_output=True, text=True, timeout=120)
    out = []
    for line in p.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        end = r["timestamp_ms"] / 1e3 + r["duration_us"] / 1e6
        if t0 <= end < t1:
            out.append(r)
    return out


def pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


LATENESS_FAMILY = "phantom_delay_lateness_seconds"


def lateness_buckets(admin: int) -> list[tuple[float, float]] | None:
    """The proxy's delay lateness histogram (cumulative (le, count) pairs, +Inf last), or None
    when its /metrics has none (a binary from before it)."""
    status, body = admin_request(admin, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = []
    for line in body.decode().splitlines():
        m = re.match(LATENESS_FAMILY + r'_bucket\{le="([^"]+)"\} (\S+)$', line)
        if m:
            out.append((float(m.group(1)), float(m.group(2))))
    return out or None


def bucket_quantile(before, after, q: float) -> float | None:
    """The q-quantile (µs) of what was counted between two scrapes, interpolated within its
    bucket as PromQL's histogram_quantile does; the top finite bound when it falls in +Inf."""
    if not before or not after:
        return None
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return lo * 1e6
            return (lo + (le - lo) * ((rank - below) / (n - below) if n > below else 1.0)) * 1e6
        lo, below = le, n
    return None


def delay_cost_run(args, tmp: str, label: str, binary: str, fault: str, proxy: Owned,
                   ports: tuple[int, int], rate: int, conns: int, keys: list[str]) -> dict:
    """One oha open-loop run; the proxy's CPU, switches, ring counts, delay lateness histogram and
    records are taken over a window that starts once every connection is up and the delays are
    in steady state."""
    port, admin = ports
    window = args.cost_window
    total = args.cost_warmup + window + 1.0
    oha = start_oha(port, rate, total, conns)
    try:
        time.sleep(args.cost_warmup)
        h0 = lateness_buckets(admin)
        t0 = time.time()
        c0, s0 = task_counters(proxy.pid)
        st0 = steal_ms()
        counts, w0, w1 = perf_window(proxy.pid, keys, window)
        st1 = steal_ms()
        c1, s1 = task_counters(proxy.pid)
        t1 = time.time()
        h1 = lateness_buckets(admin)
        out, err = oha.communicate(timeout=total + 60)
    finally:
        if oha.poll() is None:
            oha.kill()
            oha.wait()
    if oha.returncode != 0:
        raise RuntimeError(f"oha failed ({oha.returncode}): {err.strip()}")
    o = parse_oha(out)
    records = window_records(binary, f"{args.cost_traces}/{proxy.name}", t0, t1)
    n = len(records)
    # perf counted over its own window, inside [t0, t1]: per request of that window.
    n_perf = sum(1 for r in records
                 if w0 <= r["timestamp_ms"] / 1e3 + r["duration_us"] / 1e6 < w1)
    late = sorted(r["duration_us"] - r["injected_delay_us"] for r in records)
    injected = sum(1 for r in records if r["injected_delay_us"] > 0)
    res = {
        "binary": label, "fault": fault, "rate": rate, "connections": conns,
        "window_s": t1 - t0, "requests": n, "delayed": injected,
        "served_per_s": n / (t1 - t0) if t1 > t0 else None,
        "load": os.getloadavg()[0],
        "cpu_us_per_req": (c1 - c0) / 1e3 / n if n else None,
        "switches_per_req": (s1 - s0) / n if n else None,
        "oha_errors": o["errors"] + o["non_200"], "oha_p50_us": o["p50_us"],
        "oha_p99_us": o["p99_us"],
        "late_min_us": pct(late, 0.0), "late_p50_us": pct(late, 0.5),
        "late_p99_us": pct(late, 0.99), "early": sum(1 for d in late if d < 0),
        # The proxy's own histogram: how long after its deadline each delay ended.
        "timer_p50_us": bucket_quantile(h0, h1, 0.5), "timer_p99_us": bucket_quantile(h0, h1, 0.99),
        "not_ok": sum(1 for r in records if r["status_code"] != 200),
        # Time the hypervisor ran something else on our vCPUs during the window (all CPUs).
        "steal_ms": st1 - st0,
    }
    for k, v in counts.items():
        res[f"{k}_per_req"] = v / n_perf if (v is not None and n_perf) else None
    return res


def delay_cost(args, tmp: str, procs: Processes) -> dict:
    # The rings go to tmpfs when there is one: the first write to each page of a ring on disk
    # faults it in through the file system, several µs per request on a fresh ring, which would
    # be counted as the proxy's CPU and drown the difference measured here.
    shm = "/dev/shm"
    args.cost_traces = (tempfile.mkdtemp(prefix="phantom-delay-cost.", dir=shm)
                        if os.path.isdir(shm) and os.access(shm, os.W_OK) else f"{tmp}/traces")
    try:
        return _delay_cost(args, tmp, procs)
    finally:
        shutil.rmtree(args.cost_traces, ignore_errors=True)


def _delay_cost(args, tmp: str, procs: Processes) -> dict:
    # --pin: the proxies get core 1 to themselves, the script, oha and nginx share core 0 (as in
    # --overhead), so a delay's lateness is the proxy's and not the load generator's time slice.
    pin = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, {0})
    origin_port = free_port()
    origin = start_nginx(procs, tmp, "origin", origin_port,
                         ORIGIN_HTTP.format(port=origin_port, body=ORIGIN_BODY.replace("\n", "\\n")),
                         nofile=16384, conns=8192)
    binaries = [("after", args.bin)]
    if args.bin_before:
        binaries.insert(0, ("before", args.bin_before))
    # --no-perf-counts: no perf attached at all (CPU, switches and lateness only).
    keys = [] if args.no_perf_counts else perf_events_available()
    if len(keys) < len(DELAY_COST_EVENTS) and not args.no_perf_counts:
        log(f"delay-cost: perf counts only {keys or 'nothing'} here")
    targets = {}
    max_conns = max(c for _, c in DELAY_COST_LOADS)
    # --paired: one more undelayed proxy, the A/A pair that shows the method's own noise.
    faults = DELAY_COST_FAULTS + ((DELAY_COST_AA, []),) if args.paired else DELAY_COST_FAULTS
    for label, binary in binaries:
        for fault, extra in faults:
            name = f"pf-{label}-{len(targets)}"
            # The admin endpoint only for its lateness histogram, scraped around each window.
            admin = free_port()
            proxy, port = start_phantom(
                procs, tmp, binary, name, origin_port,
                ["--workers", "1", "--max-connections", str(max_conns + 1024),
                 "--trace-dir", f"{args.cost_traces}/{name}", "--trace-capacity", "128MiB",
                 "--admin", f"127.0.0.1:{admin}"]
                + extra, prefix=["taskset", "-c", "1"] if pin else [])
            wait_port(admin, STARTUP_TIMEOUT_S)
            targets[(label, fault)] = (binary, proxy, port, admin)
    if args.paired:
        return {"delay_cost_paired": delay_cost_paired(args, targets),
                "binaries": {label: b for label, b in binaries}}
    runs = []
    for rnd in range(args.rounds):
        for rate, conns in DELAY_COST_LOADS:
            order = list(targets.items())
            # Rotate the order each round so no case always runs first (or after the same one).
            k = rnd % len(order)
            for (label, fault), (binary, proxy, port, admin) in order[k:] + order[:k]:
                r = delay_cost_run(args, tmp, label, binary, fault, proxy, (port, admin), rate,
                                   conns, keys)
                r["round"] = rnd
                runs.append(r)
                log(f"round {rnd + 1}/{args.rounds} {rate}/s -c {conns} {label:6} {fault:18}: "
                    f"{r['requests']} req, {fmt(r['cpu_us_per_req'], '.1f')} µs CPU/req, "
                    f"{fmt(r['switches_per_req'], '.2f')} cs/req, enter "
                    f"{fmt(r.get('enter_per_req'), '.2f')}, SQE {fmt(r.get('sqe_per_req'), '.2f')}"
                    f", late µs p50 {fmt(r['late_p50_us'])} p99 {fmt(r['late_p99_us'])}, delay end "
                    f"after deadline µs p50 {fmt(r['timer_p50_us'])} p99 {fmt(r['timer_p99_us'])}"
                    f", errors "
                    f"{r['oha_errors']}, steal {r['steal_ms']:.0f} ms, load {r['load']:.2f}")
    profiles = []
    if args.profile:
        for rate, conns in DELAY_COST_LOADS:
            for (label, fault), (binary, proxy, port, _) in targets.items():
                pr = delay_cost_profile(args, tmp, label, binary, fault, proxy, port, rate, conns)
                profiles.append(pr)
                log(f"profile {rate}/s {label:6} {fault:18}: {pr['requests']} requests sampled")
    return {"delay_cost": {"runs": runs, "perf_events": keys, "profiles": profiles,
                           "binaries": {label: b for label, b in binaries}}}


# --paired: the second undelayed proxy's name in the table.
DELAY_COST_AA = "none (A/A)"


def delay_cost_paired(args, targets: dict) -> list[dict]:
    """Each delayed proxy (and the A/A one) and the undelayed one serve the same load at the same
    moment, each from its own oha, both on core 1 with --pin: whatever the host does to that
    core in those seconds (frequency, steal, a neighbour) it does to both. One after the other,
    the same undelayed case measured 22 to 35 µs per request from one round to the next."""
    pairs = []
    for rnd in range(args.rounds):
        for rate, conns in DELAY_COST_LOADS:
            for label in dict.fromkeys(lbl for lbl, _ in targets):
                base = targets[(label, "none")]
                others = [f for (lbl, f) in targets if lbl == label and f != "none"]
                k = rnd % len(others)
                for fault in others[k:] + others[:k]:
                    p = delay_cost_pair(args, (targets[(label, fault)], base), rate, conns)
                    p.update(binary=label, fault=fault, rate=rate, connections=conns, round=rnd)
                    pairs.append(p)
                    log(f"round {rnd + 1}/{args.rounds} {rate}/s -c {conns} {label:6} "
                        f"{fault:18}: {fmt(p['cpu_us_per_req'], '.1f')} µs CPU/req against "
                        f"the undelayed one's {fmt(p['base_cpu_us_per_req'], '.1f')} at the "
                        f"same time ({fmt(p['ratio'], '.3f')}×), switches/req "
                        f"{fmt(p['switches_per_req'], '.2f')} against "
                        f"{fmt(p['base_switches_per_req'], '.2f')}, errors {p['errors']}, "
                        f"steal {p['steal_ms']:.0f} ms")
    return pairs


def delay_cost_pair(args, sides: tuple, rate: int, conns: int) -> dict:
    """One window of a delayed proxy and the undelayed one side by side; each one's CPU and
    context switches per record that ended in the window."""
    window = args.cost_window
    total = args.cost_warmup + window + 1.0
    ohas = [start_oha(port, rate, total, conns) for _, _, port, _ in sides]
    try:
        time.sleep(args.cost_warmup)
        t0 = time.time()
        before = [task_counters(proxy.pid) for _, proxy, _, _ in sides]
        st0 = steal_ms()
        time.sleep(window)
        st1 = steal_ms()
        after = [task_counters(proxy.pid) for _, proxy, _, _ in sides]
        t1 = time.time()
        outs = [o.communicate(timeout=total + 60) for o in ohas]
    finally:
        for o in ohas:
            if o.poll() is None:
                o.kill()
                o.wait()
    for o, (_, err) in zip(ohas, outs):
        if o.returncode != 0:
            raise RuntimeError(f"oha failed ({o.returncode}): {err.strip()}")
    errors = sum(r["errors"] + r["non_200"] for r in (parse_oha(out) for out, _ in outs))
    per = []
    for (binary, proxy, _, _), (c0, s0), (c1, s1) in zip(sides, before, after):
        records = window_records(binary, f"{args.cost_traces}/{proxy.name}", t0, t1)
        n = len(records)
        per.append(((c1 - c0) / 1e3 / n if n else None, (s1 - s0) / n if n else None, n,
                    sum(1 for r in records if r["duration_us"] < r["injected_delay_us"])))
    (cpu, sw, n, early), (bcpu, bsw, bn, _) = per
    return {"requests": n, "base_requests": bn, "cpu_us_per_req": cpu,
            "base_cpu_us_per_req": bcpu, "ratio": cpu / bcpu if cpu and bcpu else None,
            "switches_per_req": sw, "base_switches_per_req": bsw, "early": early,
            "errors": errors, "steal_ms": st1 - st0, "window_s": t1 - t0}


def print_delay_cost_paired(pairs: list[dict]) -> list[str]:
    """Per binary, load and fault: the paired CPU ratio's median and spread over rounds, and a
    verdict against the 1.25× goal (the A/A row shows how far the method moves on its own)."""
    print("| binary | req/s × conns | fault | CPU µs/req | undelayed's, at the same time | "
          "paired ratio: median (lowest … highest) | switches/req (undelayed's) | early | "
          "steal ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    problems, verdicts = [], []
    for label in dict.fromkeys(p["binary"] for p in pairs):
        for rate, conns in DELAY_COST_LOADS:
            for fault in dict.fromkeys(p["fault"] for p in pairs):
                mine = [p for p in pairs if (p["binary"], p["rate"], p["fault"]) == (label, rate, fault)]
                if not mine:
                    continue
                ratios = sorted(p["ratio"] for p in mine if p["ratio"])
                errors = sum(p["errors"] for p in mine)
                if errors:
                    problems.append(f"{label} {rate}/s {fault}: {errors} errors")
                m = statistics.median(ratios) if ratios else None
                spread = f"{ratios[0]:.2f} … {ratios[-1]:.2f}" if ratios else "-"
                print(f"| {label} | {rate} × {conns} | {fault} | "
                      f"{fmt(med(p['cpu_us_per_req'] for p in mine), '.1f')} | "
                      f"{fmt(med(p['base_cpu_us_per_req'] for p in mine), '.1f')} | "
                      f"**{fmt(m, '.2f')}×** ({spread}), n={len(ratios)} | "
                      f"{fmt(med(p['switches_per_req'] for p in mine), '.2f')} "
                      f"({fmt(med(p['base_switches_per_req'] for p in mine), '.2f')}) | "
                      f"{sum(p['early'] for p in mine)} | "
                      f"{fmt(med(p['steal_ms'] for p in mine), '.0f')} | {errors} |")
                if fault != DELAY_COST_AA and m is not None:
                    verdicts.append((label, rate, fault, m))
    print("\nratio = the delayed proxy's CPU per request ÷ the undelayed proxy's over the same "
          "seconds, each serving its own oha at the rate (CPU = schedstat run time of every "
          "thread, per record that ended in the window). Lateness is not judged here: two proxies "
          "share core 1, so each one's wake-ups wait on the other's; the sequential run "
          "(without --paired) measures it.")
    for label, rate, fault, m in verdicts:
        print(f"target: {label}: {fault} at {rate}/s costs ≤ 1.25× undelayed (paired): "
              f"{m:.2f}× → {'MET' if m <= 1.25 else 'NOT MET'}")
    early = sum(p["early"] for p in pairs)
    print(f"target: never early: {early} record(s) shorter than their injected delay → "
          f"{'MET' if early == 0 else 'NOT MET'}")
    if early:
        problems.append(f"{early} records shorter than their injected delay")
    return problems


# Where a request's CPU goes: perf record -g of the proxy over one window per case, each sample
# put in the first of these categories its call chain meets, from the leaf up (substring match).
PROFILE_CATEGORIES = (
    ("timerfd (arm, read)", ("timerfd_",)),
    ("poll(2) hang-up watch", ("do_sys_poll", "__x64_sys_poll")),
    ("io_uring cancel", ("io_async_cancel", "io_try_cancel")),
    ("TCP send (with the peer's receive softirq)", ("io_send", "io_sendmsg", "tcp_sendmsg")),
    ("TCP receive", ("io_recv", "tcp_recvmsg")),
    ("sleep and wake-up (io_cqring_wait, schedule)", ("io_cqring_wait", "schedule",
                                                     "finish_task_switch")),
    ("io_uring completion task work", ("task_work_run", "tctx_task_work", "io_handle_tw_list")),
    ("page faults", ("asm_exc_page_fault",)),
    ("io_uring_enter, the rest", ("io_submit_sqes", "__do_sys_io_uring_enter")),
    ("other syscalls", ("do_syscall_64", "entry_SYSCALL")),
    ("phantom-fast (user)", ("phantom_fast::",)),
    ("monoio (user)", ("monoio::",)),
    # Fallbacks, by the leaf frame: kernel (interrupts, softirqs) or user (libc, std, alloc).
    ("other kernel", ()),
    ("libc, std, alloc (user)", ()),
)
PROFILE_HZ = 4999


def profile_categories(data: str) -> dict:
    """Samples per PROFILE_CATEGORIES name in a perf.data file."""
    p = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True,
                       text=True, timeout=300)
    counts = {name: 0 for name, _ in PROFILE_CATEGORIES}

    def settle(chain: list[str]) -> None:
        if not chain:
            return
        for frame in chain:
            for name, needles in PROFILE_CATEGORIES[:-2]:
                if any(n in frame for n in needles):
                    counts[name] += 1
                    return
        counts[PROFILE_CATEGORIES[-2 if chain[0].endswith("[kernel]") else -1][0]] += 1

    chain: list[str] = []
    for line in p.stdout.splitlines():
        if not line.strip():
            settle(chain)
            chain = []
            continue
        parts = line.split(None, 1)
        ip, sym = parts[0], (parts[1] if len(parts) > 1 else "")
        chain.append(sym + (" [kernel]" if ip.startswith("ffff") else ""))
    settle(chain)
    return counts


def delay_cost_profile(args, tmp: str, label: str, binary: str, fault: str, proxy: Owned,
                       port: int, rate: int, conns: int) -> dict:
    """One run like delay_cost_run, sampled with perf record -g instead of counted."""
    window = args.cost_window
    total = args.cost_warmup + window + 1.0
    data = f"{tmp}/{proxy.name}-{rate}.perf.data"
    oha = start_oha(port, rate, total, conns)
    try:
        time.sleep(args.cost_warmup)
        t = time.time()
        p = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PROFILE_HZ),
                            "-g", "-p", str(proxy.pid), "-o", data, "--"]
                           + marked_sleep(window), capture_output=True, text=True,
                           timeout=window + 60)
        t0, t1 = marks(p.stdout, (t, time.time()))
        oha.communicate(timeout=total + 60)
    finally:
        if oha.poll() is None:
            oha.kill()
            oha.wait()
    n = len(window_records(binary, f"{args.cost_traces}/{proxy.name}", t0, t1))
    counts = profile_categories(data)
    us = {k: v / PROFILE_HZ * 1e6 / n if n else None for k, v in counts.items()}
    return {"binary": label, "fault": fault, "rate": rate, "connections": conns,
            "requests": n, "us_per_req": us}


def print_delay_profile(profiles: list[dict]) -> None:
    """Per load point: µs of proxy CPU per request by category, one column per case."""
    for rate, conns in DELAY_COST_LOADS:
        cols = [p for p in profiles if p["rate"] == rate]
        if not cols:
            continue
        print(f"\n### Where a request's CPU goes at {rate}/s over {conns} connections "
              f"(perf record -g -e cpu-clock -F {PROFILE_HZ}, µs per request)")
        print("| category | " + " | ".join(f"{p['binary']} {p['fault']}" for p in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name, _ in PROFILE_CATEGORIES:
            print(f"| {name} | " + " | ".join(fmt(p["us_per_req"][name], ".1f") for p in cols)
                  + " |")
        totals = [sum(v for v in p["us_per_req"].values() if v is not None) for p in cols]
        print("| **total (sampled)** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")


DELAY_COST_COLUMNS = ("cpu_us_per_req", "switches_per_req", "enter_per_req", "sqe_per_req",
                      "cqe_per_req", "syscalls_per_req", "settime_per_req", "late_min_us",
                      "late_p50_us", "late_p99_us", "timer_p50_us", "timer_p99_us", "oha_p50_us",
                      "oha_p99_us", "steal_ms")


def print_delay_cost(res: dict) -> list[str]:
    """The table, then one check line per goal; returns the unexpected errors."""
    runs = res["runs"]
    labels = list(dict.fromkeys(r["binary"] for r in runs))
    print("| binary | req/s × conns | fault | CPU µs/req | × undelayed | switches/req | "
          "io_uring_enter/req | SQEs/req | CQEs/req | syscalls/req | timerfd_settime/req | "
          "late µs min / p50 / p99 | delay end after deadline µs p50 / p99 | oha ms p50 / p99 | "
          "steal ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict = {}
    worst_late: dict = {}
    worst_timer: dict = {}
    errors = []
    early = 0
    for label in labels:
        for rate, conns in DELAY_COST_LOADS:
            for fault, _ in DELAY_COST_FAULTS:
                mine = [r for r in runs if r["binary"] == label and r["fault"] == fault
                        and r["rate"] == rate]
                if not mine:
                    continue
                m = {c: med(r.get(c) for r in mine) for c in DELAY_COST_COLUMNS}
                # Delayed ÷ undelayed, paired within each round, median over rounds.
                per_round = []
                for r in mine:
                    base = [b for b in runs if b["binary"] == label and b["fault"] == "none"
                            and b["rate"] == rate and b["round"] == r["round"]]
                    if base and base[0]["cpu_us_per_req"] and r["cpu_us_per_req"]:
                        per_round.append(r["cpu_us_per_req"] / base[0]["cpu_us_per_req"])
                x = med(per_round)
                if fault != "none":
                    ratios[(label, rate, fault)] = x
                    worst_late[(label, rate, fault)] = m["late_p99_us"]
                    worst_timer[(label, rate, fault)] = m["timer_p99_us"]
                errs = sum(r["oha_errors"] + r["not_ok"] for r in mine)
                early += sum(r["early"] for r in mine)
                if errs:
                    errors.append(f"{label} {rate}/s {fault}: {errs} errors")
                late = " / ".join(fmt(m[c]) for c in ("late_min_us", "late_p50_us", "late_p99_us"))
                timer = " / ".join(fmt(m[c]) for c in ("timer_p50_us", "timer_p99_us"))
                oha = " / ".join(fmt(m[c] and m[c] / 1e3, ".1f") for c in ("oha_p50_us",
                                                                          "oha_p99_us"))
                print(f"| {label} | {rate} × {conns} | {fault} | {fmt(m['cpu_us_per_req'], '.1f')} | "
                      f"{'-' if fault == 'none' else fmt(x, '.2f') + '×'} | "
                      f"{fmt(m['switches_per_req'], '.2f')} | {fmt(m['enter_per_req'], '.2f')} | "
                      f"{fmt(m['sqe_per_req'], '.2f')} | {fmt(m['cqe_per_req'], '.2f')} | "
                      f"{fmt(m['syscalls_per_req'], '.2f')} | {fmt(m['settime_per_req'], '.3f')} | "
                      f"{late} | {timer} | {oha} | {fmt(m['steal_ms'], '.0f')} | {errs} |")
    print("\nlate = the proxy's record: duration − injected delay (its own time and the origin's "
          "included; for `none` that is all of it). delay end after deadline = the proxy's "
          f"{LATENESS_FAMILY} histogram over the window (interpolated within its buckets, as "
          "histogram_quantile does): the delay's own lateness, the timer's slack included. steal = time the hypervisor ran something else on this VM's CPUs during the window (both CPUs, median over rounds). CPU = schedstat run time (utime + stime) of "
          "the proxy's threads over the window; counts from perf stat on them; per request = "
          "per record that ended in the window.\n")
    for label in labels:
        for rate, _ in DELAY_COST_LOADS:
            for fault, _ in DELAY_COST_FAULTS[1:]:
                x = ratios.get((label, rate, fault))
                if x is None:
                    continue
                ok = x <= DELAY_COST_MAX_RATIO
                print(f"target: {label}: {fault} at {rate}/s costs ≤ {DELAY_COST_MAX_RATIO}× "
                      f"undelayed: {x:.2f}× → {'MET' if ok else 'NOT MET'}")
        for fault, _ in DELAY_COST_FAULTS[1:]:
            timer = worst_timer.get((label, 5000, fault))
            if timer is not None:
                ok = timer <= DELAY_COST_MAX_LATE_US
                print(f"target: {label}: {fault} at 5000/s p99 delay end after its deadline ≤ "
                      f"{DELAY_COST_MAX_LATE_US / 1e3:g} ms: {timer / 1e3:.2f} ms → "
                      f"{'MET' if ok else 'NOT MET'}")
            late = worst_late.get((label, 5000, fault))
            if late is not None:
                ok = late <= DELAY_COST_MAX_LATE_US
                print(f"target: {label}: {fault} at 5000/s p99 late ≤ "
                      f"{DELAY_COST_MAX_LATE_US / 1e3:g} ms: {late / 1e3:.2f} ms → "
                      f"{'MET' if ok else 'NOT MET'}")
    print(f"target: never early: {early} record(s) shorter than their injected delay → "
          f"{'MET' if early == 0 else 'NOT MET'}")
    behind = [r for r in runs
              if (r.get("served_per_s") or 0) < DELAY_COST_BEHIND_SHARE * r["rate"]
              or (r["late_p50_us"] or 0) > DELAY_COST_BEHIND_US]
    for r in behind:
        print(f"warning: round {r['round'] + 1} {r['binary']} {r['rate']}/s {r['fault']}: served "
              f"{fmt(r.get('served_per_s'))}/s, late p50 {fmt(r['late_p50_us'])} µs: the machine "
              f"fell behind, so this run's CPU per request (and its ratio) is not comparable")
    if behind:
        print(f"warning: {len(behind)} of {len(runs)} runs fell behind: rerun on a quieter machine "
              f"or with more --rounds (the medians lean on the runs that kept up)")
    return errors


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Throttled and hung connections (issue 12: they cost no CPU while they wait)

# Each fault as the real grammar writes it: the response body at 1 KiB/s (one 1448-byte segment
# at a time, as a slow link delivers it; and in 4 KiB and 8 KiB pieces, which trade that fidelity
# for a third and a sixth of the writes), and no answer at all.
THROTTLE_FAULTS = [("bandwidth", "bandwidth:1KiB/s"),
                   ("bandwidth-burst4", "bandwidth:1KiB/s:burst=4KiB"),
                   ("bandwidth-burst8", "bandwidth:1KiB/s:burst=8KiB"),
                   ("bandwidth-nginx", "(peer) nginx proxy_pass, limit_rate 1k"), ("hang", "hang")]
# The peer row: nginx as the throttling reverse proxy, one worker, reading the origin only as fast
# as it sends (4 KiB proxy buffers, no temp file), its worker's CPU measured.
THROTTLE_PEER = "bandwidth-nginx"
THROTTLE_PEER_FD_SLACK = 1024
NGINX_THROTTLE_HTTP = """\
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            limit_rate 1k;
            proxy_buffer_size 4k;
            proxy_buffers 4 4k;
            proxy_max_temp_file_size 0;
        }}
    }}"""
THROTTLE_RATE_BPS = 1024
# Issue 12: 10 000 connections throttled at 1 KiB/s cost the proxy under 5% of a core.
THROTTLE_CPU_LIMIT_PCT = 5.0
# The origin's body: at 1 KiB/s it lasts over four minutes, longer than any window.
THROTTLE_BODY_BYTES = 256 * 1024
# Descriptors kept free besides the sockets (listeners, rings, pipes, the runtime's own).
THROTTLE_FD_SLACK = 256
# Pause after a run, so the kernel's teardown of its connections is not measured in the next.
THROTTLE_TEARDOWN_S = 2.0
# The proxy's limit on a held connection must not end a window early.
THROTTLE_IDLE_TIMEOUT = "600s"

ORIGIN_FILE_HTTP = """\
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location / {{ root {root}; }}
    }}"""


def user_seconds(pid: int) -> float:
    """User CPU seconds of pid (all threads; clock ticks), the rest of its CPU being the
    kernel's (system calls, and loopback TCP processed in the sender's context)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def raise_nofile(want: int) -> int:
    """Raises this process's descriptor limit (inherited by what it starts) towards `want`: the
    soft limit up to the hard one, and the hard one too where permitted (root, up to
    fs.nr_open). A per-process limit, no system setting. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(hard, want)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def throttle_run(args, tmp: str, procs: Processes, origin: Owned, origin_port: int, kind: str,
                 fault: str, conns: int) -> dict:
    """Opens `conns` connections through a one-worker proxy injecting `fault`, sends one request
    on each, lets them settle, then measures the proxy's CPU over the window while every one of
    them is held (throttled or hung); then drains what each received."""
    if kind == THROTTLE_PEER:
        proxy, port, measured = start_throttling_nginx(procs, tmp, origin_port, conns)
    else:
        proxy, port = start_phantom(procs, tmp, args.bin, f"pf-{kind}", origin_port,
                                    ["--workers", "1", "--no-traces", "--idle-timeout",
                                     THROTTLE_IDLE_TIMEOUT, "--max-connections",
                                     str(conns + 64), "--max-upstream-connections",
                                     str(conns + 64), "--fault", fault])
        measured = proxy.pid
    t_open = time.monotonic()
    ep, socks, connect_errors = open_connections(port, conns)
    request = f"GET /big HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    send_failures = 0
    t_sent = time.monotonic()
    for sk in socks.values():
        try:
            sk.send(request)
        except OSError:
            send_failures += 1
    open_s = time.monotonic() - t_open
    for fd in socks:
        ep.modify(fd, select.EPOLLIN)

    def drain(sk: socket.socket) -> tuple[int, bool]:
        """Bytes waiting on sk, read and dropped; whether it was closed on us."""
        n = 0
        while True:
            try:
                chunk = sk.recv(1 << 16)
            except BlockingIOError:
                return n, False
            except OSError:
                return n, True
            if not chunk:
                return n, True
            n += len(chunk)

    # Settle: a throttled connection has its head and first paced piece (a hung one cannot), and
    # then a little longer, so the window sees only connections waiting in their fault.
    first = set() if kind.startswith("bandwidth") else set(socks)
    deadline = time.monotonic() + args.throttle_first_byte_timeout
    while len(first) < len(socks) and time.monotonic() < deadline:
        for fd, _ev in ep.poll(0.5):
            if fd not in first and drain(socks[fd])[0] > 0:
                first.add(fd)
    first_byte_s = time.monotonic() - t_sent
    time.sleep(args.throttle_settle)
    for sk in socks.values():
        drain(sk)
    held0 = established_on_port(port)
    # schedstat: CPU time at nanosecond resolution, every thread of the proxy.
    (c0, sw0), w0, u0 = task_counters(measured), time.monotonic(), user_seconds(measured)
    time.sleep(args.throttle_window)
    (c1, sw1), w1, u1 = task_counters(measured), time.monotonic(), user_seconds(measured)
    held1 = established_on_port(port)
    # What each connection received during the window (and which were closed on us).
    got: list[int] = []
    closed = 0
    for sk in socks.values():
        n, eof = drain(sk)
        got.append(n)
        closed += eof
    t_drain = time.monotonic()
    for sk in socks.values():
        sk.close()
    ep.close()
    procs.stop(proxy)
    # Ten thousand closes are kernel work for a while after; not the next run's window.
    time.sleep(THROTTLE_TEARDOWN_S)
    window = w1 - w0
    n = max(len(socks), 1)
    got.sort()
    cpu = (c1 - c0) / 1e9
    return {
        "kind": kind, "fault": fault, "connections": len(socks), "connect_errors": connect_errors,
        "send_failures": send_failures, "open_s": open_s, "held_at_start": held0,
        "held_at_end": held1, "window_s": window, "proxy_cpu_s": cpu,
        "proxy_cpu_pct": cpu / window * 100, "proxy_cpu_us_per_conn_s": cpu * 1e6 / (n * window),
        "proxy_user_pct": (u1 - u0) / window * 100,
        "switches_per_s": (sw1 - sw0) / window,
        "received_bytes_median": got[len(got) // 2] if got else 0,
        "received_bytes_min": got[0] if got else 0, "received_bytes_max": got[-1] if got else 0,
        "received_bps_median": (got[len(got) // 2] / (t_drain - w0)) if got else 0.0,
        "first_bytes": len(first), "first_byte_s": first_byte_s,
        "closed_early": closed, "load": os.getloadavg()[0],
    }


def throttle_label(kind: str, fault: str) -> str:
    """A throttle row's name: the flag for phantom-fast's rows, the peer's own description."""
    return fault if kind == THROTTLE_PEER else f"--fault {fault}"


def start_throttling_nginx(procs: Processes, tmp: str, origin_port: int,
                           conns: int) -> tuple[Owned, int, int]:
    """The peer: nginx throttling at 1 KiB/s in front of the origin. Returns it, its port and
    its worker's pid (the process that does the work; the master only waits)."""
    port = free_port()
    ng = start_nginx(procs, tmp, "throttler", port,
                     NGINX_THROTTLE_HTTP.format(port=port, origin_port=origin_port),
                     nofile=2 * conns + THROTTLE_PEER_FD_SLACK, conns=4 * conns)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(ng.pid)], capture_output=True,
                              text=True).stdout.split()
        if kids:
            return ng, port, int(kids[0])
        time.sleep(0.05)
    raise RuntimeError("the throttling nginx started no worker")


def throttle(args, tmp: str, procs: Processes) -> dict:
    # Bandwidth holds an upstream socket beside each client one; hang holds only the client's.
    soft = raise_nofile(2 * args.connections + THROTTLE_FD_SLACK)
    conns = {kind: min(args.connections,
                       (soft - THROTTLE_FD_SLACK) // (2 if kind.startswith("bandwidth") else 1))
             for kind, _ in THROTTLE_FAULTS}
    # nginx needs descriptors of its own beyond the two per client, and more worker_connections
    # than two per client (at 2 per client + 512 it warned "worker_connections are not enough,
    # reusing connections" and closed 354 of 9 488).
    conns[THROTTLE_PEER] = min(args.connections, (soft - THROTTLE_PEER_FD_SLACK) // 2)
    for kind, n in conns.items():
        if n < args.connections:
            log(f"throttle: descriptor limit {soft}: {kind} runs with {n} connections, not "
                f"{args.connections}")
    root = f"{tmp}/www"
    os.makedirs(root, exist_ok=True)
    with open(f"{root}/big", "wb") as f:
        f.write(b"x" * THROTTLE_BODY_BYTES)
    origin_port = free_port()
    origin = start_nginx(procs, tmp, "origin", origin_port,
                         ORIGIN_FILE_HTTP.format(port=origin_port, root=root),
                         nofile=max(soft, 1024), conns=max(soft - 64, 1024))
    runs: dict[str, list[dict]] = {kind: [] for kind, _ in THROTTLE_FAULTS}
    for rnd in range(args.rounds):
        order = THROTTLE_FAULTS if rnd % 2 == 0 else list(reversed(THROTTLE_FAULTS))
        for kind, fault in order:
            log(f"round {rnd + 1}/{args.rounds} {kind}: {conns[kind]} connections through "
                f"{throttle_label(kind, fault)}, {args.throttle_settle:g} s settle, {args.throttle_window:g} s "
                f"window, load {os.getloadavg()[0]:.2f}")
            r = throttle_run(args, tmp, procs, origin, origin_port, kind, fault, conns[kind])
            r["round"] = rnd
            runs[kind].append(r)
            log(f"  first bytes on {r['first_bytes']} after {r['first_byte_s']:.1f} s; held "
                f"{r['held_at_start']}→{r['held_at_end']}, proxy CPU "
                f"{r['proxy_cpu_pct']:.2f}% of a core (user {r['proxy_user_pct']:.1f}%; "
                f"{r['proxy_cpu_us_per_conn_s']:.2f} µs per connection-second), "
                f"{r['switches_per_s']:.0f} switches/s, window median "
                f"{r['received_bytes_median']} B ({r['received_bps_median']:.0f} B/s), closed "
                f"early {r['closed_early']}")
    return {"throttle": runs, "connections": conns}


def print_throttle(res: dict, limit_pct: float) -> list[str]:
    head = ("fault", "connections", "held (start→end)", "proxy CPU % of a core",
            "µs per conn-second", "switches/s", "window bytes (median)", "B/s per conn",
            "closed early", "load")
    rows, problems = [], []
    for kind, fault in THROTTLE_FAULTS:
        rs = res["throttle"][kind]
        if not rs:
            continue
        pct = sorted(r["proxy_cpu_pct"] for r in rs)
        rows.append((
            throttle_label(kind, fault), str(rs[0]["connections"]),
            " ".join(f"{r['held_at_start']}→{r['held_at_end']}" for r in rs),
            f"{statistics.median(pct):.2f} ({pct[0]:.2f} … {pct[-1]:.2f})",
            f"{med(r['proxy_cpu_us_per_conn_s'] for r in rs):.2f}",
            f"{med(r['switches_per_s'] for r in rs):.0f}",
            f"{med(r['received_bytes_median'] for r in rs):.0f} B",
            f"{med(r['received_bps_median'] for r in rs):.0f}",
            str(sum(r["closed_early"] for r in rs)),
            " ".join(f"{r['load']:.1f}" for r in rs)))
        for r in rs:
            # The peer's own closes are its behaviour, shown in the table, not our failure.
            if kind != THROTTLE_PEER and (r["closed_early"] or r["connect_errors"]
                                          or r["send_failures"]):
                problems.append(f"{kind} round {r['round'] + 1}: {r['closed_early']} closed "
                                f"early, {r['connect_errors']} connect errors, "
                                f"{r['send_failures']} send failures")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                for i, (x, w) in enumerate(zip(r, widths))) + " |")
    for kind, fault in THROTTLE_FAULTS:
        rs = res["throttle"][kind]
        if not rs:
            continue
        pct = [r["proxy_cpu_pct"] for r in rs]
        if kind == THROTTLE_PEER:
            print(f"peer: {fault}: its worker's CPU while {rs[0]['connections']} connections are "
                  f"throttled: {statistics.median(pct):.2f}% of a core")
            continue
        status = ("NOT MET" if statistics.median(pct) >= limit_pct else
                  "MET" if max(pct) < limit_pct else "UNDECIDED")
        print(f"target: proxy CPU while {rs[0]['connections']} connections wait in --fault "
              f"{fault}: {statistics.median(pct):.2f}% of a core (want < {limit_pct:g}%) → "
              f"{status}")
    for kind, fault in THROTTLE_FAULTS:
        bw = res["throttle"].get(kind) or [] if kind.startswith("bandwidth") else []
        if bw:
            bps = med(r["received_bps_median"] for r in bw)
            print(f"({throttle_label(kind, fault)} fidelity: the median connection received "
                  f"{bps:.0f} B/s "
                  f"during the window, {THROTTLE_RATE_BPS} B/s asked)")
    return problems


# --------------------------------------------------------------------------------------------
# The overhead run (issues 11 and 12): what the admin endpoint scraped every second, and sixteen
# rules that never match, cost per request. The comparison measures these at saturation, where
# wrk, nginx and the proxy fight over two cores and one round differs from the next by ±15%; here
# each target serves the same fixed rate (oha open loop, one worker, tracing off) far from
# saturation, and the proxy's CPU per request (schedstat, every thread) is paired with the
# baseline's within each round, over many short rounds.

OVERHEAD_RATE = 4000
OVERHEAD_CONNECTIONS = 64
# Paired rounds a verdict needs.
OVERHEAD_MIN_ROUNDS = 6
# (name, label, flags, side load, limit on the paired CPU/request increase)
OVERHEAD_TARGETS = (
    ("base", "admin off, no rules (the baseline)", [], None, None),
    ("aa", "A/A: the baseline's flags again (the method's noise)", [], None, 0.01),
    ("admin", "admin on, scraped 1/s", ["--admin"], scraper, 0.01),
    ("16rules", "16 non-matching seed-kind rules",
     [a for rule in NON_MATCHING_RULES for a in ("--fault", rule)], None, 0.03),
    ("16new", "16 non-matching new-kind rules",
     [a for rule in NEW_KIND_RULES for a in ("--fault", rule)], None, 0.03),
    # The trace ring in the run's temp dir (on disk, as a user's default data dir is).
    ("trace", "tracing on (ring on disk)", ["--trace-dir", "{tmp}/traces-overhead"], None, 0.03),
)


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """schedstat run time (ns) per thread name of pid (threads of one name summed)."""
    out: dict[str, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                out[name] = out.get(name, 0) + int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return out


def overhead(args, tmp: str, procs: Processes) -> dict:
    # The proxy gets core 1 to itself, everything else (this script, nginx, oha) shares core 0:
    # unpinned, where the scheduler put each proxy next to oha made one process cost up to ±7%
    # more than another with the same flags (an A/A pair of targets showed it).
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, {0})
    origin_port = free_port()
    start_nginx(procs, tmp, "origin", origin_port,
                ORIGIN_HTTP.format(port=origin_port, body=ORIGIN_BODY.replace("\n", "\\n")),
                nofile=16384, conns=8192)
    targets = []
    for name, label, flags, side, limit in OVERHEAD_TARGETS:
        if args.only and name != "base" and name not in args.only:
            continue
        flags = [f.format(tmp=tmp) for f in flags]
        extra = ["--workers", "1"] + ([] if "--trace-dir" in flags else ["--no-traces"])
        sidecar = None
        if flags[:1] == ["--admin"]:
            admin_port = free_port()
            extra += ["--admin", f"127.0.0.1:{admin_port}"] + flags[1:]
        else:
            extra += flags
        proxy, port = start_phantom(procs, tmp, args.bin, f"pf-{name}", origin_port, extra,
                                    prefix=["taskset", "-c", "1"] if pin else [])
        if side:
            wait_port(admin_port, STARTUP_TIMEOUT_S)
            sidecar = side(admin_port)
        targets.append({"name": name, "label": label, "proxy": proxy, "port": port,
                        "sidecar": sidecar, "limit": limit, "runs": []})
    for t in targets:  # warm-up: pools, page cache; discarded
        run_oha(t["port"], args.rate, 1.0, OVERHEAD_CONNECTIONS)
    base, others = targets[0], targets[1:]
    for rnd in range(args.rounds):
        k = rnd % len(others)
        for t in others[k:] + others[:k]:
            # The target and the baseline serve at once, each its own oha at the rate, on the
            # same core: whatever the host does to that core (frequency, steal) it does to both.
            pair = overhead_pair(args, base, t)
            pair["round"] = rnd
            t["runs"].append(pair)
            log(f"round {rnd + 1}/{args.rounds} {t['name']:8}: {pair['requests']} req, "
                f"{fmt(pair['cpu_us_per_req'], '.2f')} µs CPU/req against the baseline's "
                f"{fmt(pair['base_cpu_us_per_req'], '.2f')} at the same time "
                f"({fmt(pair['ratio'] and (pair['ratio'] - 1) * 100, '+.1f')}%), admin thread "
                f"{pair['admin_thread_us_per_s']:.0f} µs/s, errors {pair['errors']}, "
                f"load {pair['load']:.2f}")
    return {"overhead": [{k: v for k, v in t.items() if k not in ("proxy", "sidecar")}
                         for t in others]}


def overhead_pair(args, base: dict, t: dict) -> dict:
    """One run of `t` and the baseline side by side; each one's CPU per 200 answer."""
    if t["sidecar"]:
        t["sidecar"].start()
    ohas = [start_oha(x["port"], args.rate, args.overhead_window, OVERHEAD_CONNECTIONS)
            for x in (t, base)]
    c0 = [thread_cpu_ns(x["proxy"].pid) for x in (t, base)]
    w0 = time.monotonic()
    outs = [o.communicate(timeout=args.overhead_window + 60) for o in ohas]
    c1 = [thread_cpu_ns(x["proxy"].pid) for x in (t, base)]
    w1 = time.monotonic()
    side = t["sidecar"].stop() if t["sidecar"] else None
    for o, (_, err) in zip(ohas, outs):
        if o.returncode != 0:
            raise RuntimeError(f"oha failed ({o.returncode}): {err.strip()}")
    res = [parse_oha(out) for out, _ in outs]
    by_thread = [{k: b.get(k, 0) - a.get(k, 0) for k in b} for a, b in zip(c0, c1)]
    per_req = [sum(d.values()) / 1e3 / r["ok"] if r["ok"] else None
               for d, r in zip(by_thread, res)]
    worker = sum(v for k, v in by_thread[0].items() if k.startswith("pf-worker"))
    return {"requests": res[0]["ok"], "base_requests": res[1]["ok"],
            "errors": sum(r["errors"] + r["non_200"] for r in res),
            "seconds": w1 - w0, "load": os.getloadavg()[0],
            "cpu_us_per_req": per_req[0], "base_cpu_us_per_req": per_req[1],
            "ratio": per_req[0] / per_req[1] if per_req[0] and per_req[1] else None,
            "worker_us_per_req": worker / 1e3 / res[0]["ok"] if res[0]["ok"] else None,
            "admin_thread_us_per_s": by_thread[0].get("pf-admin", 0) / 1e3 / (w1 - w0),
            "sidecar": side}


def print_overhead(res: list[dict], rate: int) -> list[str]:
    problems = []
    print("| target | CPU µs/req (median) | baseline's, at the same time | paired: median "
          "(lowest … highest; middle half) | worker thread µs/req | admin thread µs/s | errors |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for t in res:
        runs = t["runs"]
        pair = sorted(r["ratio"] - 1 for r in runs if r["ratio"])
        errors = sum(r["errors"] for r in runs)
        if errors:
            problems.append(f"{t['name']}: {errors} errors")
        rel = "-"
        if pair:
            q1, q3 = pair[len(pair) // 4], pair[(3 * len(pair)) // 4]
            m = statistics.median(pair)
            rel = (f"{m * 100:+.2f}% ({pair[0] * 100:+.1f} … {pair[-1] * 100:+.1f}; "
                   f"{q1 * 100:+.1f} … {q3 * 100:+.1f}), n={len(pair)}")
            verdicts.append((t, m, q3))
        print(f"| {t['label']} | {fmt(med(r['cpu_us_per_req'] for r in runs), '.2f')} | "
              f"{fmt(med(r['base_cpu_us_per_req'] for r in runs), '.2f')} | {rel} | "
              f"{fmt(med(r['worker_us_per_req'] for r in runs), '.2f')} | "
              f"{fmt(med(r['admin_thread_us_per_s'] for r in runs), '.0f')} | {errors} |")
    for t, m, _q3 in verdicts:
        lim = t["limit"]
        # The paired median is the estimate (the A/A row shows how far the method's own noise
        # moves it); fewer than OVERHEAD_MIN_ROUNDS rounds do not allow a call.
        n = sum(1 for r in t["runs"] if r["ratio"])
        status = "NOT MET" if m > lim else "MET" if n >= OVERHEAD_MIN_ROUNDS else "UNDECIDED"
        print(f"target: CPU/request, {t['label']} vs the baseline, at {rate} req/s each: "
              f"{m * 100:+.2f}% (want ≤ +{lim * 100:g}%) → {status}")
    for t in res:
        sides = [r["sidecar"] for r in t["runs"] if r["sidecar"]]
        if sides:
            calls, ok = sum(s["calls"] for s in sides), sum(s["ok"] for s in sides)
            print(f"{t['label']}: {ok} of {calls} scrapes of /metrics answered 200")
            if ok != calls:
                problems.append(f"{t['name']}: {calls - ok} scrapes failed")
    return problems


# --------------------------------------------------------------------------------------------
# Saturation side by side: phantom-fast against nginx in the same seconds (issue 14)

# Each of the pair's two wrk runs: one thread, half the comparison's 64 connections, so the two
# proxies together see the comparison's load.
SIDE_CONNECTIONS = 32
SIDE_MAX_RATIO = 0.9


def wrk_side_by_side(tmp: str, pair: list[Target], duration: float) -> dict:
    """One wrk per target, started together; each proxy's CPU (utime + stime of every process
    and thread) per good answer over the same seconds."""
    argv = lambda port: ["wrk", f"-t{WRK_THREADS}", f"-c{SIDE_CONNECTIONS}",  # noqa: E731
                         f"-d{max(1, round(duration))}s", "--timeout=2s", "-s",
                         f"{tmp}/done.lua", f"http://127.0.0.1:{port}/"]
    pids = [t.proc.pids() for t in pair]
    c0 = [cpu_seconds(p) for p in pids]
    runs = [subprocess.Popen(argv(t.port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, preexec_fn=_die_with_parent)
            for t in pair]
    outs = [r.communicate(timeout=duration + 60)[0] for r in runs]
    c1 = [cpu_seconds(p) for p in pids]
    res = [parse_wrk(out) for out in outs]
    per_req = [(b - a) * 1e6 / r["good"] if r["good"] else None
               for a, b, r in zip(c0, c1, res)]
    return {"targets": [t.name for t in pair], "rps": [r["rps"] for r in res],
            "cpu_us_per_req": per_req, "errors": [r["errors"] for r in res],
            "ratio": per_req[0] / per_req[1] if per_req[0] and per_req[1] else None,
            "load": os.getloadavg()[0]}


def side_by_side(args, tmp: str, procs: Processes) -> dict:
    """Rounds of two pairs, each pair's proxies loaded by their own wrk at the same time:
    phantom-fast (tracing off) with nginx, and phantom-fast with a second phantom-fast (A/A:
    the method's own noise). Sequential runs drift ±20% on a shared host; a pair sees the same
    host."""
    origin_port, _origin, nginx_port, nginx = start_wrk_peers(procs, tmp)
    ng = Target("nginx", "nginx reverse proxy, 1 worker", nginx_port, nginx)
    pfs = []
    for name in ("pf", "pf-aa"):
        o, port = start_phantom(procs, tmp, args.bin, name, origin_port,
                                ["--workers", "1", "--no-traces"])
        pfs.append(Target(name, "phantom-fast, tracing off", port, o))
    pairs = {"vs-nginx": [pfs[0], ng], "a/a": [pfs[1], pfs[0]]}
    if args.bin_before:
        o, port = start_phantom(procs, tmp, args.bin_before, "pf-before", origin_port,
                                ["--workers", "1", "--no-traces"])
        pairs["vs-before"] = [pfs[0], Target("pf-before", "phantom-fast before", port, o)]
    for pair in pairs.values():  # warm-up: pools, page cache, CPU frequency; discarded
        wrk_side_by_side(tmp, pair, args.warmup)
    runs: dict[str, list[dict]] = {k: [] for k in pairs}
    for rnd in range(args.rounds):
        k = rnd % len(pairs)
        for key in list(pairs)[k:] + list(pairs)[:k]:
            r = wrk_side_by_side(tmp, pairs[key], args.duration)
            r["round"] = rnd
            runs[key].append(r)
            (a, b), (ra, rb) = r["targets"], r["rps"]
            log(f"round {rnd + 1}/{args.rounds} {key:8}: {a} {fmt(r['cpu_us_per_req'][0], '.2f')}"
                f" µs/req ({ra:.0f} req/s), {b} {fmt(r['cpu_us_per_req'][1], '.2f')} µs/req "
                f"({rb:.0f} req/s), ratio {fmt(r['ratio'], '.3f')}, errors {sum(r['errors'])}, "
                f"load {r['load']:.2f}")
    return {"side_by_side": runs}


def print_side_by_side(runs: dict[str, list[dict]]) -> list[str]:
    problems = []
    print("| pair | CPU µs/req, first (median) | second (median) | first ÷ second, paired: median "
          "(lowest … highest; middle half) | req/s each (median) | errors |")
    print("|---|---|---|---|---|---|")
    verdict = None
    for key, label in (("vs-nginx", "phantom-fast ÷ nginx"),
                       ("a/a", "phantom-fast ÷ phantom-fast (A/A)"),
                       ("vs-before", "phantom-fast ÷ --bin-before")):
        rs = runs.get(key)
        if not rs:
            continue
        ratios = sorted(r["ratio"] for r in rs if r["ratio"])
        errors = sum(sum(r["errors"]) for r in rs)
        if errors:
            problems.append(f"{key}: {errors} errors")
        rel = "-"
        if ratios:
            m = statistics.median(ratios)
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            rel = (f"{m:.3f}× ({ratios[0]:.3f} … {ratios[-1]:.3f}; {q1:.3f} … {q3:.3f}), "
                   f"n={len(ratios)}")
            if key == "vs-nginx":
                verdict = (m, q3, len(ratios))
        print(f"| {label} | {fmt(med(r['cpu_us_per_req'][0] for r in rs), '.2f')} | "
              f"{fmt(med(r['cpu_us_per_req'][1] for r in rs), '.2f')} | {rel} | "
              f"{fmt(med(r['rps'][0] for r in rs), '.0f')} / "
              f"{fmt(med(r['rps'][1] for r in rs), '.0f')} | {errors} |")
    if verdict:
        m, q3, n = verdict
        # The paired median is the estimate (the A/A row is the method's own noise); MET also
        # wants the upper quartile under the line, and enough rounds for quartiles to mean it.
        status = ("NOT MET" if m > SIDE_MAX_RATIO else
                  "MET" if q3 <= SIDE_MAX_RATIO and n >= OVERHEAD_MIN_ROUNDS else "UNDECIDED")
        print(f"target: CPU/request at saturation, phantom-fast (tracing off) vs nginx, side by "
              f"side: {m:.3f}× (want ≤ {SIDE_MAX_RATIO}×, upper quartile {q3:.3f}×) → {status}")
    return problems


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
            "python": platform.python_version()}


def revision(repo: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def tool_version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0].split(" Copyright")[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/loadtest.sh", description=(
        "phantom-fast against nginx and against no proxy, on loopback. Default: the comparison "
        "table (~5 min). --quick: a short run to check the setup. --scale: 10 000 delayed "
        "keep-alive connections and new connections per second."))
    p.add_argument("--quick", action="store_true", help="1 round of 2 s runs (~40 s)")
    p.add_argument("--scale", action="store_true", help="the scale run instead of the comparison")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    p.add_argument("--bin", default="target/release/phantom-fast", help="the proxy binary")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 4, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 5, quick 2)")
    p.add_argument("--fixed-duration", type=float, help="seconds per oha run (default 4, quick 2)")
    p.add_argument("--rate", type=int,
                   help="oha fixed rate, requests/s, below saturation (0: skip; default 5000)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk warm-up per target")
    p.add_argument("--connections", type=int, default=10_000, help="scale: connections")
    p.add_argument("--waves", type=int, default=3, help="scale: requests per held connection")
    p.add_argument("--hold", type=float, default=3.0, help="scale: idle hold, seconds")
    p.add_argument("--rate-held", type=int, default=5000,
                   help="scale: open-loop req/s over all connections (0: skip; default 5000)")
    p.add_argument("--held-duration", type=float, help="scale: oha seconds (default 15, quick 6)")
    p.add_argument("--scale-duration", type=float,
                   help="scale: closed-loop wrk seconds (0: skip; default 10, quick 5)")
    p.add_argument("--rate-new", type=int, default=2000,
                   help="scale: new connections/s without keep-alive (0: skip)")
    p.add_argument("--new-duration", type=float, help="scale: oha seconds (default 10, quick 4)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--delay-cost", action="store_true",
                   help="CPU, switches and io_uring calls per delayed vs undelayed request "
                        "(issue 14) instead of the comparison (~5 min; --quick ~90 s)")
    p.add_argument("--throttle", action="store_true",
                   help="proxy CPU while --connections (10 000) connections are throttled at "
                        "1 KiB/s, and while as many hang (issue 12; ~2 min; --quick ~40 s)")
    p.add_argument("--throttle-window", type=float,
                   help="throttle: measured seconds per run (default 10, quick 4)")
    p.add_argument("--throttle-settle", type=float,
                   help="throttle: seconds between the last first byte and the window "
                        "(default 2, quick 1)")
    p.add_argument("--throttle-first-byte-timeout", type=float, default=60.0,
                   help="throttle: longest wait for every throttled connection's first bytes")
    p.add_argument("--overhead", action="store_true",
                   help="CPU per request at a fixed rate (--rate, default 4000 each) of admin on and "
                        "scraped 1/s, 16 non-matching rules and tracing on, each side by side "
                        "with a baseline and an A/A pair (~4 min; --quick ~1 min)")
    p.add_argument("--side-by-side", action="store_true",
                   help="CPU per request at saturation, phantom-fast and nginx each under its "
                        "own wrk -c32 in the same seconds, and an A/A pair (default 8 rounds)")
    p.add_argument("--only", metavar="NAMES", type=lambda v: set(v.split(",")),
                   help="overhead: only these targets besides the baseline (comma-separated: "
                        + ", ".join(t[0] for t in OVERHEAD_TARGETS[1:]) + ")")
    p.add_argument("--overhead-window", type=float,
                   help="overhead: seconds per oha run (default 3, quick 2)")
    p.add_argument("--bin-before", metavar="PATH",
                   help="delay-cost, scale and side-by-side: also measure this (older) binary, rounds "
                        "interleaved, as `before`, and print both side by side (scale runs "
                        "phases 1-2 for both; rounds: default 2, quick 1)")
    p.add_argument("--cost-window", type=float,
                   help="delay-cost: measured seconds per run (default 4, quick 2)")
    p.add_argument("--pin", action="store_true",
                   help="delay-cost: the proxies on core 1, oha, nginx and this script on core 0")
    p.add_argument("--paired", action="store_true",
                   help="delay-cost: each delayed proxy side by side with the undelayed one, in "
                        "the same seconds (and an A/A pair): the CPU ratio without the host's "
                        "drift between runs; no perf counts, no lateness (default 6 rounds)")
    p.add_argument("--no-perf-counts", action="store_true",
                   help="delay-cost: no perf stat tracepoint counts (io_uring_enter, SQEs, …)")
    p.add_argument("--profile", action="store_true",
                   help="delay-cost: then one more run per case under perf record -g, and the "
                        "table of where each µs goes")
    p.add_argument("--cost-warmup", type=float,
                   help="delay-cost: seconds before the window (default 1.5, quick 1)")
    a = p.parse_args(argv)
    q = a.quick
    if a.delay_cost:
        a.rounds = a.rounds or (1 if q else 6 if a.paired else 3)
        a.cost_window = a.cost_window or (2.0 if q else 4.0)
        a.cost_warmup = a.cost_warmup or (1.0 if q else 1.5)
    if a.side_by_side:
        a.rounds = a.rounds or (2 if q else 8)
    if a.overhead:
        a.rounds = a.rounds or (4 if q else 12)
        a.overhead_window = a.overhead_window or (2.0 if q else 3.0)
        a.rate = OVERHEAD_RATE if a.rate is None else a.rate
    a.rate = 5000 if a.rate is None else a.rate
    if a.bin_before:
        a.bin_before = os.path.abspath(a.bin_before)
        if not os.access(a.bin_before, os.X_OK):
            p.error(f"--bin-before {a.bin_before}: not an executable")
    if a.throttle:
        a.rounds = a.rounds or (1 if q else 2)
        a.throttle_window = a.throttle_window or (4.0 if q else 10.0)
        a.throttle_settle = a.throttle_settle or (1.0 if q else 2.0)
    a.rounds = a.rounds or (1 if q else (2 if a.scale and a.bin_before else 4))
    a.duration = a.duration or (2.0 if q else 5.0)
    a.fixed_duration = a.fixed_duration or (2.0 if q else 4.0)
    a.held_duration = a.held_duration or (6.0 if q else 15.0)
    if a.scale_duration is None:
        a.scale_duration = 5.0 if q else 10.0
    a.new_duration = a.new_duration or (4.0 if q else 10.0)
    if q:
        a.warmup = min(a.warmup, 0.5)
        a.waves = min(a.waves, 2)
        a.hold = min(a.hold, 1.0)
    if a.rounds < 1 or a.rounds > 20 or a.duration > 120 or a.fixed_duration > 120:
        p.error("bounded: 1-20 rounds, at most 120 s per run")
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.bin = args.bin if os.path.isabs(args.bin) else os.path.join(repo, args.bin)
    if not os.access(args.bin, os.X_OK):
        log(f"no proxy binary at {args.bin} (cargo build --release)")
        return 2
    # SIGTERM/SIGHUP become SystemExit, so the finally below stops what we started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    tmp = tempfile.mkdtemp(prefix="phantom-loadtest.")
    procs = Processes()
    started = time.monotonic()
    report = {
        "revision": revision(repo),
        "machine": machine(),
        "tools": {"wrk": tool_version(["wrk", "-v"]), "oha": tool_version(["oha", "--version"]),
                  "nginx": tool_version(["nginx", "-v"]),
                  "phantom-fast": tool_version([args.bin, "--version"])},
        "load_before": os.getloadavg(),
        "mode": ("delay-cost" if args.delay_cost else "overhead" if args.overhead
                 else "side-by-side" if args.side_by_side else "throttle" if args.throttle
                 else "scale" if args.scale
                 else "quick" if args.quick else "full"),
    }
    print(f"phantom-fast load test — revision {report['revision']}")
    m = report["machine"]
    print(f"machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}; load average "
          f"{report['load_before'][0]:.2f}; {report['tools']['nginx']}, {report['tools']['wrk']}, "
          f"{report['tools']['oha']}")
    try:
        if args.delay_cost:
            report["params"] = {"rounds": args.rounds, "window_s": args.cost_window,
                                "warmup_s": args.cost_warmup, "loads": DELAY_COST_LOADS,
                                "faults": [f for f, _ in DELAY_COST_FAULTS], "pin": args.pin}
            report.update(delay_cost(args, tmp, procs))
        elif args.overhead:
            report["params"] = {"rounds": args.rounds, "window_s": args.overhead_window,
                                "rate": args.rate, "connections": OVERHEAD_CONNECTIONS,
                                "targets": [(n, lbl, f) for n, lbl, f, _, _ in OVERHEAD_TARGETS]}
            report.update(overhead(args, tmp, procs))
        elif args.side_by_side:
            report["params"] = {"rounds": args.rounds, "wrk_seconds": args.duration,
                                "warmup_s": args.warmup,
                                "wrk": f"-t{WRK_THREADS} -c{SIDE_CONNECTIONS} each"}
            report.update(side_by_side(args, tmp, procs))
        elif args.throttle:
            report["params"] = {"rounds": args.rounds, "connections": args.connections,
                                "window_s": args.throttle_window,
                                "settle_s": args.throttle_settle,
                                "faults": [f for _, f in THROTTLE_FAULTS],
                                "body_bytes": THROTTLE_BODY_BYTES,
                                "idle_timeout": THROTTLE_IDLE_TIMEOUT}
            report.update(throttle(args, tmp, procs))
        elif args.scale:
            report["params"] = {k: getattr(args, k) for k in (
                "connections", "waves", "hold", "rate_held", "held_duration", "scale_duration", "rate_new",
                "rounds", "bin_before",
                "new_duration")}
            if args.bin_before:
                report["scale_compare"] = scale_compare(args, tmp, procs)
            else:
                report["scale"] = scale(args, tmp, procs)
        else:
            report["params"] = {"rounds": args.rounds, "wrk_seconds": args.duration,
                                "wrk": f"-t{WRK_THREADS} -c{WRK_CONNECTIONS}",
                                "fixed_rate": args.rate, "fixed_seconds": args.fixed_duration,
                                "oha_connections": OHA_CONNECTIONS,
                                "non_matching_rules": NON_MATCHING_RULES,
                                "non_matching_new_kind_rules": NEW_KIND_RULES}
            report.update(compare(args, tmp, procs))
    finally:
        procs.stop_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"temp dir kept: {tmp}")
    report["load_after"] = os.getloadavg()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    if args.delay_cost:
        print(f"## Delay cost: {args.rounds} interleaved round(s), one worker, tracing on, oha "
              f"open loop (keep-alive, --latency-correction), {args.cost_window:g} s measured "
              f"after {args.cost_warmup:g} s; medians over rounds"
              + ("; proxies pinned to core 1, oha and nginx on core 0" if args.pin else ""))
        if args.paired:
            report["unexpected_errors"] = print_delay_cost_paired(report["delay_cost_paired"])
        else:
            report["unexpected_errors"] = print_delay_cost(report["delay_cost"])
            print_delay_profile(report["delay_cost"]["profiles"])
    elif args.overhead:
        print(f"## Overhead: {args.rounds} interleaved round(s), one worker, tracing off, oha "
              f"open loop at {args.rate} req/s over {OVERHEAD_CONNECTIONS} keep-alive connections, "
              f"{args.overhead_window:g} s per run; CPU = schedstat run time of every proxy "
              f"thread over the run, per 200 answer")
        report["unexpected_errors"] = print_overhead(report["overhead"], args.rate)
    elif args.side_by_side:
        print(f"## Saturation side by side: {args.rounds} round(s) of two pairs, each proxy one "
              f"worker under its own wrk -t{WRK_THREADS} -c{SIDE_CONNECTIONS} -d{args.duration:g}s"
              f" at the same time (after {args.warmup:g} s of warm-up); CPU = utime + stime per "
              f"good answer")
        report["unexpected_errors"] = print_side_by_side(report["side_by_side"])
    elif args.throttle:
        print(f"## Throttled and hung connections: {args.rounds} round(s), one worker, tracing "
              f"off, {args.throttle_window:g} s measured after {args.throttle_settle:g} s; "
              f"origin body {THROTTLE_BODY_BYTES // 1024} KiB; medians (spread) over rounds")
        report["unexpected_errors"] = print_throttle(report, THROTTLE_CPU_LIMIT_PCT)
    elif args.scale and args.bin_before:
        report["unexpected_errors"] = print_scale_compare(report["scale_compare"])
    elif args.scale:
        report["unexpected_errors"] = print_scale(report["scale"])
    else:
        print(f"## {args.rounds} interleaved round(s): wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
              f"-d{args.duration:g}s (medians); fixed rate oha -q {args.rate} -c {OHA_CONNECTIONS}"
              f" -z {args.fixed_duration:g}s --latency-correction, latency added over direct")
        print_table(report["summary"], args.rate)
        for c in report["checks"]:
            print(f"target: {c['target']}: {c['value']} (want {c['limit']}) → {c['status']}")
    la = report["load_after"]
    print(f"\nelapsed {report['elapsed_s']:.0f}s; load average before {report['load_before'][0]:.2f}"
          f", after {la[0]:.2f} (the run's own load)" +
          ("\nthe machine was busy before the run (load > 1): consider a re-run"
           if report['load_before'][0] > 1.0 else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
        print(f"JSON written to {args.json}")
    if report["unexpected_errors"]:
        print("FAILED: errors no target was asked to inject: "
              + "; ".join(report["unexpected_errors"]))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)

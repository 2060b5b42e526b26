#!/usr/bin/env python3
"""TLS load test (scripts/loadtest.sh --tls): phantom-fast against nginx, one worker each, loopback.

Three questions, side by side in one run:
  1. https listener, plain upstream, keep-alive wrk over https: CPU per request (user+sys of the
     proxy's processes over the run, divided by the requests served).
  2. New connections at saturation (oha --disable-keepalive): handshakes per second, and CPU per
     handshake.
  3. MITM (phantom-fast --mitm only; nginx has no such mode): CPU per request with keep-alive
     clients, and with a new connection per request (Python clients through CONNECT: oha's
     CONNECT carries no Host, which phantom-fast answers with 400). Their req/s is the clients'
     limit, not the proxy's; the CPU per request is the figure.
Both proxies use the same ECDSA P-256 certificate, TLS 1.3 and its suite (AES-128-GCM-SHA256, the
servers choosing it); nginx has a shared session cache. A second nginx row speaks TLS 1.2 only
(what nginx before 1.23.4 does by default). Every process is started here, in a mktemp dir, and
stopped by PID when the run ends. Loopback only, bounded.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "hello, world\\n"


def log(msg):
    print(f"loadtest-tls: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def tree(pid):
    """pid and its children (nginx master + worker)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


class Procs:
    def __init__(self):
        self.owned = []

    def start(self, argv, log_path, stop=signal.SIGTERM):
        p = subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.owned.append((p, stop))
        return p

    def stop_all(self):
        for p, sig in reversed(self.owned):
            if p.poll() is None:
                p.send_signal(sig)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


NGINX = """worker_processes 1;
{user}
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/{name}-tmp/body;
    proxy_temp_path {dir}/{name}-tmp/proxy;
    fastcgi_temp_path {dir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {dir}/{name}-tmp/uwsgi;
    scgi_temp_path {dir}/{name}-tmp/scgi;
    default_type text/plain;
{body}
}}
"""


def nginx(procs, tmp, name, body):
    os.makedirs(f"{tmp}/{name}-tmp", exist_ok=True)
    conf = NGINX.format(user="user root;" if os.geteuid() == 0 else "", dir=tmp, name=name,
                        body=body)
    path = f"{tmp}/{name}.conf"
    with open(path, "w") as f:
        f.write(conf)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return procs.start([binary, "-p", f"{tmp}/", "-c", path, "-e", f"{tmp}/{name}.error.log"],
                       f"{tmp}/{name}.out", stop=signal.SIGQUIT)


def wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    return int(m.group(1)) if m else 0


def oha(url, seconds, conns, extra):
    argv = ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(conns),
            "--insecure"] + extra + [url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        return 0
    return sum(data.get("statusCodeDistribution", {}).values())


MITM_CLIENT = r"""
import socket, ssl, sys, time
proxy, port, seconds, keep = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
def connect():
    raw = socket.create_connection(("127.0.0.1", proxy))
    raw.sendall(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % (port, port))
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(4096)
    return ctx.wrap_socket(raw, server_hostname="localhost")
n, end, s = 0, time.time() + seconds, None
while time.time() < end:
    if s is None:
        s = connect()
    s.sendall(req)
    got = b""
    while not got.endswith(b"hello, world\n"):
        data = s.recv(65536)
        if not data:
            raise SystemExit(f"closed after {n}")
        got += data
    n += 1
    if not keep:
        s.close()
        s = None
print(n)
"""


def mitm_clients(proxy_port, origin_port, seconds, clients, keep):
    """`clients` Python processes through CONNECT (oha sends CONNECT without Host, a 400)."""
    argv = ["python3", "-c", MITM_CLIENT, str(proxy_port), str(origin_port), str(seconds),
            "1" if keep else "0"]
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0
    for p in running:
        out, _ = p.communicate(timeout=seconds + 60)
        total += int(out.strip() or 0)
    return total


def measure(pid, run):
    before = cpu_seconds(pid)
    started = time.time()
    n = run()
    elapsed = time.time() - started
    cpu = cpu_seconds(pid) - before
    return {"requests": n, "per_s": n / elapsed if elapsed else 0,
            "cpu_us_per_request": cpu / n * 1e6 if n else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tls", action="store_true", help="(what loadtest.sh passes through)")
    ap.add_argument("--quick", action="store_true", help="3 s per measurement instead of 10 s")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    seconds = 3 if args.quick else 10
    conns = 32
    tmp = tempfile.mkdtemp(prefix="pf-loadtest-tls-")
    procs = Procs()
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                       check=True, capture_output=True)
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        origin, origin_tls, ng, ng12, pf, mitm = (free_port() for _ in range(6))
        nginx(procs, tmp, "origin", f"""
    server {{ listen 127.0.0.1:{origin}; location / {{ return 200 "{BODY}"; }} }}
    server {{ listen 127.0.0.1:{origin_tls} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
             location / {{ return 200 "{BODY}"; }} }}""")
        # nginx twice: TLS 1.3 with the suite phantom-fast's servers choose (AES-128-GCM with
        # SHA-256), the like-for-like row; and TLS 1.2 only, what nginx before 1.23.4 speaks when
        # not told otherwise (its handshake is a different, cheaper one in OpenSSL 3).
        proxies_ng = {}
        for name, port, protocols in (("nginx", ng, "TLSv1.2 TLSv1.3"),
                                      ("nginx TLS 1.2", ng12, "TLSv1.2")):
            proxies_ng[name] = (nginx(procs, tmp, name.replace(" ", "-").replace(".", ""), f"""
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
    ssl_session_cache shared:SSL:10m;
    ssl_protocols {protocols};
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    server {{
        listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
        location / {{ proxy_pass http://origin; proxy_http_version 1.1;
                     proxy_set_header Connection ""; }}
    }}"""), port)
        common = ["--workers", "1", "--no-traces"]
        proxy_pf = procs.start([args.bin, "--listen", f"127.0.0.1:{pf}", "--upstream",
                                f"127.0.0.1:{origin}", "--tls-cert", cert, "--tls-key", key] + common,
                               f"{tmp}/pf.log")
        proxy_mitm = procs.start([args.bin, "--listen", f"127.0.0.1:{mitm}", "--mitm", "--ca-dir",
                                  f"{tmp}/ca", "--insecure"] + common, f"{tmp}/mitm.log")
        for port in (origin, origin_tls, ng, ng12, pf, mitm):
            wait_port(port)
        results = {}
        targets = [(name, proc.pid, port) for name, (proc, port) in proxies_ng.items()]
        for name, pid, port in targets + [("phantom-fast", proxy_pf.pid, pf)]:
            url = f"https://127.0.0.1:{port}/"
            log(f"{name}: keep-alive over https")
            keep = measure(pid, lambda: wrk(url, seconds, conns))
            log(f"{name}: a new connection per request")
            fresh = measure(pid, lambda: oha(url, seconds, conns, ["--disable-keepalive"]))
            results[name] = {"keep_alive": keep, "new_connections": fresh}
        log("phantom-fast --mitm: keep-alive clients (Python, 4 processes)")
        keep = measure(proxy_mitm.pid, lambda: mitm_clients(mitm, origin_tls, seconds, 4, True))
        log("phantom-fast --mitm: a new connection per request")
        fresh = measure(proxy_mitm.pid, lambda: mitm_clients(mitm, origin_tls, seconds, 4, False))
        results["phantom-fast --mitm"] = {"keep_alive": keep, "new_connections": fresh}
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"{'target':<22} {'keep-alive req/s':>17} {'CPU µs/req':>11} "
          f"{'new conn/s':>11} {'CPU µs/conn':>12}")
    for name, r in results.items():
        k, n = r["keep_alive"], r["new_connections"]
        print(f"{name:<22} {f(k['per_s'], '.0f'):>17} {f(k['cpu_us_per_request'], '.1f'):>11} "
              f"{f(n['per_s'], '.0f'):>11} {f(n['cpu_us_per_request'], '.1f'):>12}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

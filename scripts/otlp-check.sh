#!/usr/bin/env bash
# Decodes what the exporter really sends with an OTLP implementation we did not write: PyPI's
# opentelemetry-proto (the OpenTelemetry project's Python bindings over protobuf). A Python
# collector on loopback receives POST /v1/traces from the real binary (proxy in front of a Python
# origin: a forwarded, a faulted and a delayed exchange), parses each
# ExportTraceServiceRequest with those bindings and checks ids, parentage, kinds, attributes,
# fault attributes and events, and statuses. Prints one span as OTLP JSON and one
# `N passed, N failed` line.
#
# opentelemetry-proto is installed once into a venv under ${PF_VENV:-~/.cache/phantom-fast/venv}
# (idempotent). BIN overrides the binary (default: a debug build made here).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PF_VENV:-$HOME/.cache/phantom-fast/venv}
echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -z "${BIN:-}" ]; then
    cargo build --locked --quiet --bin phantom-fast
    BIN=target/debug/phantom-fast
fi
if ! "$venv/bin/python" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q opentelemetry-proto
fi
echo "== opentelemetry-proto $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"), "protobuf", m.version("protobuf"))')"
exec "$venv/bin/python" - "$BIN" <<'PY'
import http.client, http.server, json, os, re, signal, subprocess, sys, tempfile, threading, time

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

BIN = sys.argv[1]
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
received, forwarded = [], {}

class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def body(self):
        return self.rfile.read(int(self.headers.get("content-length") or 0))

class Origin(Quiet):
    def do_GET(self):
        self.do_POST()
    def do_POST(self):
        self.body()
        forwarded[self.path] = self.headers.get("traceparent")
        text = f"{self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

class Collector(Quiet):
    def do_POST(self):
        raw = self.body()
        req = ExportTraceServiceRequest()
        req.ParseFromString(raw)  # raises on anything that is not a valid message
        received.append((self.path, self.headers.get("content-type"), req))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

origin, collector = serve(Origin), serve(Collector)
traces = tempfile.mkdtemp(prefix="pf-otlp-check-")
proxy = subprocess.Popen(
    [BIN, "--listen", "127.0.0.1:0", "--workers", "1", "--trace-dir", traces,
     "--upstream", f"127.0.0.1:{origin.server_address[1]}",
     "--fault", "error:503:/boom", "--fault", "delay:20ms:/slow",
     "--otlp-endpoint", f"http://127.0.0.1:{collector.server_address[1]}",
     "--otlp-batch-delay", "100ms"],
    stderr=subprocess.PIPE, text=True)
stderr_lines = []
addr = None
for line in proxy.stderr:
    stderr_lines.append(line)
    m = re.search(r"listening on (\S+)", line)
    if m:
        addr = m.group(1)
        break
if addr is None:
    sys.exit("the proxy did not start:\n" + "".join(stderr_lines))
threading.Thread(target=lambda: stderr_lines.extend(proxy.stderr), daemon=True).start()
host, port = addr.rsplit(":", 1)

def send(method, path, headers=None, body=None):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status

statuses = {
    "/ok": send("GET", "/ok?x=1", {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                                  "tracestate": "vendor=abc", "user-agent": "otlp-check/1"}),
    "/boom": send("GET", "/boom"),
    "/slow": send("POST", "/slow", body=b"12345"),
}
spans = []
deadline = time.time() + 30
while time.time() < deadline and len(spans) < 3:
    time.sleep(0.1)
    spans = [s for _, _, r in list(received) for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
proxy.send_signal(signal.SIGTERM)
proxy.wait(timeout=30)

passed = failed = 0
def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok  ", name)
    else:
        failed += 1
        print("FAIL", name, detail)

def attrs(kvs):
    out = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = ([getattr(x, x.WhichOneof("value")) for x in v.array_value.values]
                       if kind == "array_value" else getattr(v, kind))
    return out

by_path = {}
for s in spans:
    a = attrs(s.attributes)
    by_path[a.get("url.path")] = (s, a)
check("one span per exchange", len(spans) == 3 and set(by_path) == {"/ok", "/boom", "/slow"},
      f"{len(spans)} spans: {sorted(map(str, by_path))}")
check("statuses the client saw", statuses == {"/ok": 200, "/boom": 503, "/slow": 200}, statuses)
check("POST /v1/traces, application/x-protobuf",
      all(p == "/v1/traces" and ct == "application/x-protobuf" for p, ct, _ in received))
resource = attrs(received[0][2].resource_spans[0].resource.attributes) if received else {}
check("resource service.name", resource.get("service.name") == "phantom-fast", resource)
check("every span is SERVER", all(s.kind == Span.SPAN_KIND_SERVER for s in spans))
if "/ok" in by_path:
    s, a = by_path["/ok"]
    tp = forwarded.get("/ok?x=1") or ""
    check("trace id continues the caller's", s.trace_id.hex() == CALLER_TRACE, s.trace_id.hex())
    check("parent is the caller's span", s.parent_span_id.hex() == CALLER_SPAN, s.parent_span_id.hex())
    check("span id is the one forwarded upstream", tp == f"00-{CALLER_TRACE}-{s.span_id.hex()}-01", tp)
    check("tracestate carried over", s.trace_state == "vendor=abc", s.trace_state)
    check("flags: sampled, parent remote", s.flags == 0x301, hex(s.flags))
    want = {"http.request.method": "GET", "url.scheme": "http", "url.query": "x=1",
            "server.address": host, "server.port": int(port),
            "http.response.status_code": 200, "network.protocol.version": "1.1",
            "user_agent.original": "otlp-check/1", "client.address": "127.0.0.1"}
    check("HTTP semantic-convention attributes", all(a.get(k) == v for k, v in want.items()),
          {k: a.get(k) for k in want})
    check("a 200 has no error status", s.status.code == Status.STATUS_CODE_UNSET)
if "/boom" in by_path:
    s, a = by_path["/boom"]
    check("fault attributes", a.get("phantom.fault.kind") == ["error"]
          and a.get("phantom.fault.rule_id") == ["r0"] and a.get("phantom.fault.spec") == ["error:503:/boom"]
          and a.get("phantom.fault.value") == [503] and a.get("phantom.fault.unit") == ["status"], a)
    check("fault event", [e.name for e in s.events] == ["phantom.fault"]
          and attrs(s.events[0].attributes).get("phantom.fault.kind") == "error")
    check("a 503 is an error with error.type",
          s.status.code == Status.STATUS_CODE_ERROR and a.get("error.type") == "503", a.get("error.type"))
    check("a root span has no parent", s.parent_span_id == b"" and len(s.trace_id) == 16)
if "/slow" in by_path:
    s, a = by_path["/slow"]
    check("delay fault value is the sampled delay",
          a.get("phantom.fault.value") == [20_000_000] and a.get("phantom.fault.unit") == ["ns"], a)
    check("the span lasts at least the delay", s.end_time_unix_nano - s.start_time_unix_nano >= 20_000_000)
    check("request body size", a.get("http.request.body.size") == 5, a.get("http.request.body.size"))
check("proxy exited 0 with the export summary",
      proxy.returncode == 0 and any("export: 3 spans exported" in l for l in stderr_lines),
      "".join(stderr_lines[-5:]))
if "/boom" in by_path:
    print(json.dumps(MessageToDict(by_path["/boom"][0]), indent=1))
print(f"otlp-check: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

//! End-to-end OTLP export tests: owns checking what the real binary sends to a collector (ids,
//! parentage, HTTP semantic-convention attributes, faults, error status) from the proxy's own
//! exporter thread and from `phantom-fast export`, and how it behaves when the collector is
//! down, throttles, refuses or hangs.
//! It does not unit-test the span mapping or the retry rules (`src/export` does).

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};

use crate::support::otlp::{Collector, ExportCmd, SILENCE_HOLD, attr, find, hex, int, text};
use crate::support::{
    Origin, Proxy, ReservedPort, closed_port, echo, request, response, wait_until,
};

/// How long spans may take to reach the collector (batch delay 100 ms; debug build, busy cores).
const SPAN_WAIT: Duration = Duration::from_secs(20);
/// The caller's trace and span, as a client would send them.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Flags the test proxies share: a short batch delay so spans arrive quickly.
fn otlp_flags(url: &str) -> Vec<String> {
    ["--otlp-endpoint", url, "--otlp-batch-delay", "100ms"]
        .map(str::to_owned)
        .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Waits until `collector` received `n` export requests.
fn collector_wait(collector: &Collector, n: usize) {
    assert!(
        wait_until(SPAN_WAIT, || collector.exports().len() >= n),
        "the exporter did not reach the collector within {SPAN_WAIT:?}"
    );
}

/// The span whose `url.path` is `path`.
fn by_path<'s>(spans: &'s [Span], path: &str) -> &'s Span {
    spans
        .iter()
        .find(|s| text(s, "url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no span for {path}; got {spans:#?}"))
}

/// The first element of an array attribute.
fn first(span: &Span, key: &str) -> Option<Value> {
    match attr(span, key) {
        Some(Value::ArrayValue(a)) => a.values.first().and_then(|v| v.value.clone()),
        _ => None,
    }
}

/// The proxy's span ids, as the origin saw them in the forwarded `traceparent`s.
fn forwarded_span_ids(origin: &Origin) -> BTreeSet<String> {
    origin
        .requests()
        .iter()
        .filter_map(|r| r.header("traceparent").map(str::to_owned))
        .map(|tp| {
            tp.split('-')
                .nth(2)
                .expect("traceparent span id")
                .to_owned()
        })
        .collect()
}

#[test]
fn proxy_exports_forwarded_faulted_and_failed_exchanges() {
    let origin = Origin::start(|req| {
        if req.target.starts_with("/sleepy") {
            thread::sleep(Duration::from_millis(1500));
        }
        echo(req)
    });
    let collector = Collector::start();
    let mut flags = otlp_flags(&collector.url());
    flags.extend(
        [
            "--fault",
            "error:503:/boom",
            "--fault",
            "delay:50ms:/slow",
            "--upstream-timeout",
            "300ms",
        ]
        .map(str::to_owned),
    );
    let proxy = Proxy::reverse(origin.addr(), &args(&flags));
    let banner_line = format!("otlp → {}/v1/traces", collector.url());
    assert!(
        proxy.wait_for_stderr(&banner_line, SPAN_WAIT),
        "banner: {}",
        proxy.stderr()
    );
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let ok = proxy.connect().roundtrip(&request(
        "GET",
        "/ok?x=1",
        "test.local",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
            ("user-agent", "export-test/1"),
        ],
        b"",
    ));
    assert!(ok.status_line().contains(" 200 "), "{}", ok.status_line());
    let boom = proxy
        .connect()
        .roundtrip(&request("GET", "/boom", "test.local", &[], b""));
    assert!(
        boom.status_line().contains(" 503 "),
        "{}",
        boom.status_line()
    );
    let slow = proxy
        .connect()
        .roundtrip(&request("POST", "/slow", "test.local", &[], b"12345"));
    assert!(
        slow.status_line().contains(" 200 "),
        "{}",
        slow.status_line()
    );
    let sleepy = proxy
        .connect()
        .roundtrip(&request("GET", "/sleepy", "test.local", &[], b""));
    assert!(
        sleepy.status_line().contains(" 504 "),
        "{}",
        sleepy.status_line()
    );
    // An upstream that refuses connections: a second proxy, same collector.
    let dead = Proxy::reverse(closed_port(), &args(&otlp_flags(&collector.url())));
    let refused = dead
        .connect()
        .roundtrip(&request("GET", "/dead", "test.local", &[], b""));
    assert!(
        refused.status_line().contains(" 502 "),
        "{}",
        refused.status_line()
    );

    let spans = collector.wait_for_spans(5, SPAN_WAIT);
    assert_eq!(spans.len(), 5, "one span per exchange: {spans:#?}");
    let exports = collector.exports();
    for e in &exports {
        assert_eq!(e.req.method, "POST");
        assert_eq!(e.req.target, "/v1/traces");
        assert_eq!(e.req.header("content-type"), Some("application/x-protobuf"));
        let resource = e.body.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        assert_eq!(
            find(&resource.attributes, "service.name"),
            Some(&Value::StringValue("phantom-fast".into()))
        );
    }
    for s in &spans {
        assert_eq!(s.kind, SpanKind::Server as i32, "{s:?}");
        assert_eq!(s.span_id.len(), 8);
        assert_eq!(s.trace_id.len(), 16);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }

    // Forwarded: the proxy's span is the one it forwarded; the caller's span is its parent.
    let ok = by_path(&spans, "/ok");
    assert_eq!(hex(&ok.trace_id), CALLER_TRACE);
    assert_eq!(hex(&ok.parent_span_id), CALLER_SPAN);
    let forwarded = origin
        .requests()
        .iter()
        .find(|r| r.target.starts_with("/ok"))
        .and_then(|r| r.header("traceparent").map(str::to_owned))
        .expect("forwarded traceparent");
    assert_eq!(
        forwarded,
        format!("00-{CALLER_TRACE}-{}-01", hex(&ok.span_id))
    );
    assert_eq!(ok.trace_state, "vendor=abc");
    assert_eq!(ok.flags & 0xff, 0x01, "sampled flag carried over");
    assert_eq!(ok.flags & 0x300, 0x300, "parent is remote");
    assert_eq!(ok.name, "GET");
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
        ("url.query", "x=1"),
        ("server.address", "test.local"),
        ("client.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("user_agent.original", "export-test/1"),
        ("phantom.outcome", "ok"),
    ] {
        assert_eq!(text(ok, key).as_deref(), Some(want), "/ok {key}");
    }
    assert_eq!(int(ok, "http.response.status_code"), Some(200));
    assert_eq!(int(ok, "server.port"), Some(80));
    assert!(int(ok, "client.port").is_some_and(|p| p > 0));
    assert_eq!(
        int(ok, "http.response.body.size"),
        Some("GET /ok?x=1".len() as i64)
    );
    assert!(ok.status.is_none(), "a 200 is not an error");
    assert!(ok.events.is_empty());
    assert_eq!(attr(ok, "phantom.fault.kind"), None);

    // Faulted: a synthetic 503, an error span with the fault as attributes and an event.
    let boom = by_path(&spans, "/boom");
    assert!(boom.parent_span_id.is_empty(), "no caller: a root span");
    assert_eq!(boom.flags & 0xff, 0x01);
    assert_eq!(int(boom, "http.response.status_code"), Some(503));
    assert_eq!(text(boom, "error.type").as_deref(), Some("503"));
    assert_eq!(
        boom.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        first(boom, "phantom.fault.rule_id"),
        Some(Value::StringValue("r1".into()))
    );
    assert_eq!(
        first(boom, "phantom.fault.kind"),
        Some(Value::StringValue("error".into()))
    );
    assert_eq!(
        first(boom, "phantom.fault.spec"),
        Some(Value::StringValue("error:503:/boom".into()))
    );
    assert_eq!(
        first(boom, "phantom.fault.value"),
        Some(Value::IntValue(503))
    );
    assert_eq!(boom.events.len(), 1);
    assert_eq!(boom.events[0].name, "phantom.fault");
    assert_eq!(
        find(&boom.events[0].attributes, "phantom.fault.kind"),
        Some(&Value::StringValue("error".into()))
    );

    // Delayed: forwarded, not an error; the sampled delay is the fault's value.
    let slow = by_path(&spans, "/slow");
    assert_eq!(text(slow, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(int(slow, "http.request.body.size"), Some(5));
    assert!(slow.status.is_none());
    assert_eq!(
        first(slow, "phantom.fault.kind"),
        Some(Value::StringValue("delay".into()))
    );
    assert_eq!(
        first(slow, "phantom.fault.rule_id"),
        Some(Value::StringValue("r2".into()))
    );
    assert_eq!(
        first(slow, "phantom.fault.value"),
        Some(Value::IntValue(50_000_000))
    );
    assert!(slow.end_time_unix_nano - slow.start_time_unix_nano >= 50_000_000);

    // Failed: upstream timeout and upstream refused.
    for (path, status, error_type) in [
        ("/sleepy", 504, "upstream-timeout"),
        ("/dead", 502, "upstream-error"),
    ] {
        let s = by_path(&spans, path);
        assert_eq!(int(s, "http.response.status_code"), Some(status), "{path}");
        assert_eq!(text(s, "error.type").as_deref(), Some(error_type), "{path}");
        assert_eq!(
            text(s, "phantom.outcome").as_deref(),
            Some(error_type),
            "{path}"
        );
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(StatusCode::Error as i32),
            "{path}"
        );
    }

    let (status, stderr) = proxy.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("export: 4 spans exported"),
        "exit summary: {stderr}"
    );
}

#[test]
fn collector_down_then_up_loses_nothing_the_ring_held() {
    let origin = Origin::echo();
    // Held (refusing connects) until the collector listens on it: nothing else can take it.
    let collector_port = ReservedPort::new();
    let url = format!("http://{}", collector_port.addr());
    let proxy = Proxy::reverse(origin.addr(), &args(&otlp_flags(&url)));
    let total = 30;
    for i in 0..total {
        let target = format!("/down/{i}");
        let resp = proxy
            .connect()
            .roundtrip(&request("GET", &target, "test.local", &[], b""));
        assert!(
            resp.status_line().contains(" 200 "),
            "{}",
            resp.status_line()
        );
    }
    assert!(
        proxy.wait_for_stderr("unavailable", SPAN_WAIT),
        "the exporter says the collector is down: {}",
        proxy.stderr()
    );
    // More requests while it is down: the proxy does not wait for the collector.
    let started = Instant::now();
    for i in total..2 * total {
        let target = format!("/down/{i}");
        proxy
            .connect()
            .roundtrip(&request("GET", &target, "test.local", &[], b""));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{total} requests took {:?} with the collector down",
        started.elapsed()
    );
    let collector = Collector::start_on(collector_port);
    let spans = collector.wait_for_spans(2 * total, SPAN_WAIT);
    let exported: BTreeSet<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
    assert_eq!(
        exported,
        forwarded_span_ids(&origin),
        "every exchange exported"
    );
    assert!(
        proxy.wait_for_stderr("collector back", SPAN_WAIT),
        "{}",
        proxy.stderr()
    );
    let (status, stderr) = proxy.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("export: {} spans exported", 2 * total)),
        "{stderr}"
    );
    assert!(stderr.contains("0 records lost in the rings"), "{stderr}");
}

#[test]
fn retry_after_is_honoured_and_a_400_is_not_retried() {
    let origin = Origin::echo();
    let throttling = Collector::scripted(|n| {
        if n == 0 {
            response("503 Service Unavailable", &[("retry-after", "2")], b"")
        } else {
            crate::support::otlp::ok()
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &args(&otlp_flags(&throttling.url())));
    proxy
        .connect()
        .roundtrip(&request("GET", "/throttled", "test.local", &[], b""));
    throttling.wait_for_spans(2, SPAN_WAIT);
    let exports = throttling.exports();
    let gap = exports[1].at - exports[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried {gap:?} after a Retry-After: 2"
    );
    assert_eq!(
        exports[0].body, exports[1].body,
        "the same request sent again"
    );
    drop(proxy);

    let refusing = Collector::scripted(|_| response("400 Bad Request", &[], b"no"));
    let proxy = Proxy::reverse(origin.addr(), &args(&otlp_flags(&refusing.url())));
    proxy
        .connect()
        .roundtrip(&request("GET", "/refused", "test.local", &[], b""));
    assert!(
        proxy.wait_for_stderr("refused 1 spans (HTTP 400 no)", SPAN_WAIT),
        "{}",
        proxy.stderr()
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(refusing.exports().len(), 1, "a 400 is not retried");
    let (_, stderr) = proxy.stop();
    assert!(stderr.contains("1 rejected by the collector"), "{stderr}");
}

#[test]
fn a_hanging_collector_does_not_slow_the_proxy() {
    let origin = Origin::echo();
    // Reads each export request and never answers (for SILENCE_HOLD, then closes).
    let hanging = Collector::scripted(|_| Vec::new());
    // One export request may take longer than the silence lasts: the exporter stays stuck in
    // each for the whole SILENCE_HOLD (the default 10 s OTLP timeout would be too close to what
    // a request may take on a loaded machine to tell a waiting request path from a slow one).
    let otlp_timeout_ms = (2 * SILENCE_HOLD).as_millis().to_string();
    let upstream = origin.addr().to_string();
    let proxy = Proxy::start_with_env(
        &[
            "--upstream",
            &upstream,
            "--otlp-endpoint",
            &hanging.url(),
            "--otlp-batch-delay",
            "10ms",
            "--otlp-batch-size",
            "1",
        ],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", &otlp_timeout_ms)],
    );
    // A first exchange, whose export request then hangs: the exporter is stuck in it from here.
    proxy
        .connect()
        .roundtrip(&request("GET", "/hang/first", "test.local", &[], b""));
    collector_wait(&hanging, 1);
    // A request path that waited on the stuck export would take the rest of SILENCE_HOLD: half
    // of it tells the two apart on any machine, and a client reading as long as the hold lasts
    // sees such a request through and fails on its time instead of on a read timeout.
    let bound = SILENCE_HOLD / 2;
    for i in 0..50 {
        let one = Instant::now();
        let target = format!("/hang/{i}");
        let mut conn = proxy.connect();
        conn.set_timeout(SILENCE_HOLD + Duration::from_secs(10));
        let resp = conn.roundtrip(&request("GET", &target, "test.local", &[], b""));
        let took = one.elapsed();
        assert!(
            resp.status_line().contains(" 200 "),
            "{}",
            resp.status_line()
        );
        assert!(
            took < bound,
            "request {i} took {took:?} while the collector hung: the request path waits on the \
             exporter"
        );
    }
}

#[test]
fn export_subcommand_sends_the_backlog_and_what_follows() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    for i in 0..3 {
        let target = format!("/backlog/{i}");
        proxy
            .connect()
            .roundtrip(&request("GET", &target, "test.local", &[], b""));
    }
    let collector = Collector::start();
    let dir = proxy
        .trace_dir()
        .to_str()
        .expect("utf-8 temp dir")
        .to_owned();
    let export = ExportCmd::start(&[
        "--trace-dir",
        &dir,
        "--otlp-endpoint",
        &collector.url(),
        "--otlp-batch-delay",
        "100ms",
    ]);
    collector.wait_for_spans(3, SPAN_WAIT);
    proxy
        .connect()
        .roundtrip(&request("GET", "/live", "test.local", &[], b""));
    let spans = collector.wait_for_spans(4, SPAN_WAIT);
    let ids: BTreeSet<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
    assert_eq!(ids, forwarded_span_ids(&origin));
    let (status, stderr) = export.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("export: 4 spans exported"), "{stderr}");
}

#[test]
fn export_without_an_endpoint_is_bad_input() {
    let (status, stderr) = Proxy::run_expect_exit(&["--no-traces", "--otlp-endpoint", "http://x"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains("--no-traces"), "{stderr}");
    let (status, stderr) = Proxy::run_expect_exit(&["--otlp-endpoint", "grpc://x:4317"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains("http://"), "{stderr}");
}

/// The exit summary's numbers: (exported, lost in the rings).
fn exported_and_lost(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("export: ") && l.contains("spans exported"))
        .unwrap_or_else(|| panic!("no export summary in {stderr}"));
    let number_before = |what: &str| -> u64 {
        let end = line
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} in {line}"));
        line[..end]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {what:?} in {line}"))
    };
    (
        number_before(" spans exported"),
        number_before(" records lost"),
    )
}

#[test]
fn records_the_ring_overwrote_while_the_collector_was_down_are_counted() {
    let origin = Origin::echo();
    // Held (refusing connects) until the collector listens on it: nothing else can take it.
    let collector_port = ReservedPort::new();
    let url = format!("http://{}", collector_port.addr());
    let mut flags = otlp_flags(&url);
    // The smallest ring: a few hundred requests wrap it many times.
    flags.extend(["--trace-capacity", "64KiB"].map(str::to_owned));
    let proxy = Proxy::reverse(origin.addr(), &args(&flags));
    let total = 600u64;
    let mut conn = proxy.connect();
    for i in 0..total {
        let target = format!("/lapped/{i}");
        let resp = conn.roundtrip(&request("GET", &target, "test.local", &[], b""));
        assert!(
            resp.status_line().contains(" 200 "),
            "{}",
            resp.status_line()
        );
    }
    // Stopped as soon as the collector is back: what is left is sent in the exporter's last
    // flush (a flush that ends while stopping must not be taken for the end of the rings).
    let collector = Collector::start_on(collector_port);
    let (status, stderr) = proxy.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("overwritten in the rings"),
        "the loss is reported: {stderr}"
    );
    assert!(stderr.contains(", 0 unsent at exit"), "{stderr}");
    let (exported, lost) = exported_and_lost(&stderr);
    assert!(lost > 0 && exported > 0, "{stderr}");
    assert_eq!(
        exported + lost,
        total,
        "every record exported or counted: {stderr}"
    );
    let spans = collector.spans();
    let ids: BTreeSet<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
    assert_eq!(ids.len() as u64, exported, "{stderr}");
    assert!(ids.is_subset(&forwarded_span_ids(&origin)));
}

#[test]
fn admin_metrics_carry_the_exporter_counters() {
    let origin = Origin::echo();
    let collector = Collector::start();
    let mut flags = otlp_flags(&collector.url());
    flags.extend(["--admin", "127.0.0.1:0"].map(str::to_owned));
    let proxy = Proxy::reverse(origin.addr(), &args(&flags));
    assert!(
        proxy.wait_for_stderr("admin on http://", SPAN_WAIT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    let admin: std::net::SocketAddr = stderr
        .split("admin on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("admin address in {stderr}"));
    for i in 0..3 {
        let target = format!("/metered/{i}");
        proxy
            .connect()
            .roundtrip(&request("GET", &target, "test.local", &[], b""));
    }
    collector.wait_for_spans(3, SPAN_WAIT);
    let started = Instant::now();
    loop {
        let mut conn = crate::support::Conn::connect(admin);
        let metrics = conn
            .roundtrip(&request("GET", "/metrics", "admin", &[], b""))
            .text();
        if metrics.contains("phantom_export_spans_total{result=\"exported\"} 3\n") {
            assert!(metrics.contains("# TYPE phantom_export_records_lost_total counter\n"));
            assert!(metrics.contains("phantom_export_records_lost_total 0\n"));
            break;
        }
        assert!(
            started.elapsed() < SPAN_WAIT,
            "no exporter counters in /metrics:\n{metrics}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

//! End-to-end trace tests: owns checking the records the real binary writes, read back through the
//! `traces` and `stats` subcommands (every field, `traceparent`, faults, outcomes, SIGKILL and
//! restart, filters, corrupted rings, `--no-traces`).
//! It does not unit-test the ring or the record layout (`src/trace` does) nor proxy framing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{
    CMD_TIMEOUT, Conn, Origin, Proxy, RawOrigin, Response, WAIT_TIMEOUT, closed_port, get,
    join_within, output_within, pattern, request, response, wait_until,
};

/// The binary under test (the same one `support` spawns).
const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");
/// How long a record may take to appear after its response (written after the send; debug build).
const RECORD_WAIT: Duration = WAIT_TIMEOUT;
/// How long a `traces`/`stats` run may take before the test calls it hung.
const CLI_TIMEOUT: Duration = CMD_TIMEOUT;
/// How long a proxy spawned here may take to print `listening on`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often polling loops look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Responses the SIGKILL clients must have received, between them, before the kill.
const KILL_AFTER_RESPONSES: usize = 20;
/// Exit code of a Rust process that panicked.
const PANIC_EXIT_CODE: i32 = 101;
/// Smallest ring the proxy accepts; keeps copied and corrupted rings small.
const SMALL_RING: &str = "64KiB";
/// The synthetic fault body (CLI contract: 20 bytes).
const FAULT_BODY: &str = r#"{"fault":"injected"}"#;
/// A W3C example `traceparent` (trace-context spec §3.2.2.6 style), sampled.
const INCOMING_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The span of [`INCOMING_TRACE_ID`]'s caller.
const INCOMING_SPAN_ID: &str = "00f067aa0ba902b7";
/// Keep-alive client threads hammering the proxy before the SIGKILL.
const KILL_CLIENTS: usize = 4;
/// How long the clients run at least before the SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(1);
/// Requests sent after the restart on the same trace dir.
const RESTART_REQUESTS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Reading traces through the CLI
// ---------------------------------------------------------------------------------------------

/// What one `phantom-fast traces|stats` run left behind.
struct CliRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (a subcommand and its flags) and waits for it, bounded.
fn run_cli(args: &[&str]) -> CliRun {
    let out = output_within(
        Command::new(BIN).args(args).env("RUST_BACKTRACE", "1"),
        CLI_TIMEOUT,
    );
    CliRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `traces --trace-dir DIR FILTERS` as parsed JSON Lines; panics unless it exits 0.
fn traces(dir: &Path, filters: &[&str]) -> Vec<Value> {
    let run = run_query("traces", dir, filters);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("traces line {l:?} is not JSON: {e}"))
        })
        .collect()
}

/// `stats --trace-dir DIR FILTERS` as one JSON object; panics unless it exits 0.
fn stats(dir: &Path, filters: &[&str]) -> Value {
    let run = run_query("stats", dir, filters);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stats output {:?} is not JSON: {e}", run.stdout))
}

fn run_query(sub: &str, dir: &Path, filters: &[&str]) -> CliRun {
    let dir = dir.to_str().expect("temp dirs are UTF-8");
    let mut args = vec![sub, "--trace-dir", dir];
    args.extend_from_slice(filters);
    let run = run_cli(&args);
    assert!(
        run.status.success(),
        "phantom-fast {args:?} failed with {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    run
}

/// Polls `traces` until it lists at least `want` records; returns them all.
fn wait_records(dir: &Path, want: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let records = traces(dir, &[]);
        if records.len() >= want {
            return records;
        }
        assert!(
            started.elapsed() < RECORD_WAIT,
            "want {want} records in {}, have {} after {RECORD_WAIT:?}: {records:#?}",
            dir.display(),
            records.len()
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for exactly one record and returns it.
fn wait_one(dir: &Path) -> Value {
    let mut records = wait_records(dir, 1);
    assert_eq!(records.len(), 1, "one request, records: {records:#?}");
    records.remove(0)
}

/// The trace dir a harness proxy announced on stderr (`  traces → DIR`, CLI contract).
fn trace_dir(proxy: &Proxy) -> PathBuf {
    // The line follows `listening on`, which is all `Proxy::start` waits for.
    proxy.wait_for_stderr("traces → ", WAIT_TIMEOUT);
    let stderr = proxy.stderr();
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("traces → "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no `traces → DIR` line on stderr:\n{stderr}"))
}

fn str_field<'a>(record: &'a Value, name: &str) -> &'a str {
    record[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {record:#}"))
}

fn u64_field(record: &Value, name: &str) -> u64 {
    record[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not an unsigned integer in {record:#}"))
}

fn urls(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| str_field(r, "url").to_owned())
        .collect()
}

/// Whether `s` is `digits` lower-case hex digits and not all zero (W3C: all-zero ids are invalid).
fn is_hex_id(s: &str, digits: usize) -> bool {
    s.len() == digits
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

/// Header fields as a trace prints them: lower-cased names, repeats joined with `, ` in order.
fn header_object(headers: &[(String, String)]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match out.get_mut(&name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            _ => {
                out.insert(name, Value::String(value.clone()));
            }
        }
    }
    Value::Object(out)
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit u64")
}

// ---------------------------------------------------------------------------------------------
// A proxy on a trace dir of our choosing (the harness keeps its own dir private and deletes it)
// ---------------------------------------------------------------------------------------------

/// The binary on `127.0.0.1:<ephemeral>` tracing into a caller-owned dir; SIGKILLed on drop.
struct OwnProxy {
    child: Child,
    addr: SocketAddr,
}

impl OwnProxy {
    fn start(trace_dir: &Path, args: &[&str]) -> OwnProxy {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--trace-dir"])
            .arg(trace_dir)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("XDG_DATA_HOME", trace_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning phantom-fast");
        let pipe = child.stderr.take().expect("stderr piped");
        let seen = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if let Some(addr) = line
                        .split_once("listening on ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.push_str(&line);
                    seen.push('\n');
                }
            });
        }
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => OwnProxy { child, addr },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("phantom-fast {args:?} never listened ({e}); stderr:\n{seen}");
            }
        }
    }

    /// SIGKILL (std's `Child::kill`), then reap.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the proxy");
        let _ = self.child.wait();
    }
}

impl Drop for OwnProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarded requests
// ---------------------------------------------------------------------------------------------

#[test]
fn trace_forwarded_request_every_field_recorded() {
    const BODY_BYTES: usize = 8;
    const DELAY_MS: u64 = 100;
    let origin_body = b"origin says hello, longer than eight".to_vec();
    let origin = {
        let origin_body = origin_body.clone();
        Origin::start(move |_| {
            response(
                "200 OK",
                &[
                    ("Content-Type", "text/plain"),
                    ("X-Rep", "a"),
                    ("x-rep", "b"),
                ],
                &origin_body,
            )
        })
    };
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--trace-body-bytes", "8", "--fault", "delay:100ms:/delayed"],
    );
    let dir = trace_dir(&proxy);
    let stream = TcpStream::connect(proxy.addr()).expect("connecting to the proxy");
    let client_addr = stream.local_addr().expect("client local_addr");
    let mut client = Conn::new(stream);
    let host = proxy.addr().to_string();
    let req_body = b"client request body, also long";
    let before_ms = now_ms();

    let resp = client.roundtrip(&request(
        "POST",
        "/delayed/path?q=1&r=two",
        &host,
        &[("X-Multi", "1"), ("x-multi", "2"), ("Mixed-Case", "V")],
        req_body,
    ));
    let after_ms = now_ms();
    let record = wait_one(&dir);

    assert_eq!(resp.status, 200, "response {:?}", resp.head);
    assert_eq!(resp.body, origin_body);
    let trace_id = str_field(&record, "trace_id");
    let span_id = str_field(&record, "span_id");
    assert!(is_hex_id(trace_id, 32), "trace_id {trace_id:?}");
    assert!(is_hex_id(span_id, 16), "span_id {span_id:?}");
    assert_eq!(
        record["parent_span_id"],
        Value::Null,
        "no incoming traceparent"
    );
    let ts = u64_field(&record, "timestamp_ms");
    assert!(
        (before_ms..=after_ms).contains(&ts),
        "timestamp_ms {ts} outside [{before_ms}, {after_ms}]"
    );
    assert_eq!(record["method"], "POST");
    assert_eq!(
        record["url"],
        format!("http://{host}/delayed/path?q=1&r=two")
    );
    assert_eq!(record["status_code"], 200);
    assert_eq!(record["protocol_version"], "HTTP/1.1");
    assert_eq!(
        record["request_headers"],
        json!({
            "host": host,
            "x-multi": "1, 2",
            "mixed-case": "V",
            "content-length": req_body.len().to_string(),
        }),
        "request headers as received"
    );
    assert_eq!(
        record["response_headers"],
        header_object(&resp.headers),
        "response headers as the client received them"
    );
    assert_eq!(record["response_headers"]["x-rep"], "a, b");
    assert_eq!(record["response_headers"]["via"], "1.1 phantom-fast");
    assert_eq!(
        record["request_body"],
        String::from_utf8_lossy(&req_body[..BODY_BYTES]).as_ref()
    );
    assert_eq!(record["request_body_bytes"], req_body.len());
    assert_eq!(record["request_body_truncated"], true);
    assert_eq!(
        record["response_body"],
        String::from_utf8_lossy(&origin_body[..BODY_BYTES]).as_ref()
    );
    assert_eq!(record["response_body_bytes"], origin_body.len());
    assert_eq!(record["response_body_truncated"], true);
    assert_eq!(record["source_addr"], client_addr.to_string());
    assert_eq!(record["dest_addr"], origin.addr().to_string());
    assert_eq!(
        record["fault"],
        json!({"rule": 0, "kind": "delay", "spec": "delay:100ms:/delayed"})
    );
    assert_eq!(record["injected_delay_ms"], DELAY_MS);
    let duration_ms = u64_field(&record, "duration_ms");
    let duration_us = u64_field(&record, "duration_us");
    assert!(
        duration_ms >= DELAY_MS,
        "duration_ms {duration_ms} < delay {DELAY_MS}"
    );
    assert!(
        duration_us >= DELAY_MS * 1000,
        "duration_us {duration_us} < delay"
    );
    assert_eq!(duration_ms, duration_us / 1000, "ms and us disagree");
    let ttfb_us = u64_field(&record, "upstream_ttfb_us");
    assert!(
        ttfb_us <= duration_us,
        "upstream_ttfb_us {ttfb_us} > duration_us {duration_us}"
    );
    assert_eq!(record["outcome"], "ok");
}

#[test]
fn trace_short_bodies_whole_not_truncated_empty_omitted() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let dir = trace_dir(&proxy);
    let mut c = proxy.connect();

    let posted = c.roundtrip(&request("POST", "/p", "t", &[], b"short body"));
    let got = c.roundtrip(&get("/g"));
    let records = wait_records(&dir, 2);

    assert_eq!(posted.text(), "short body");
    assert_eq!(got.text(), "GET /g");
    assert_eq!(records.len(), 2, "{records:#?}");
    let (post, get_) = (&records[0], &records[1]);
    assert_eq!(post["method"], "POST");
    assert_eq!(post["request_body"], "short body");
    assert_eq!(post["request_body_bytes"], 10);
    assert_eq!(post["request_body_truncated"], false);
    assert_eq!(post["response_body"], "short body");
    assert_eq!(post["response_body_truncated"], false);
    assert_eq!(get_["method"], "GET");
    assert!(
        get_.get("request_body").is_none(),
        "empty request_body must be omitted: {get_:#}"
    );
    assert_eq!(get_["request_body_bytes"], 0);
    assert_eq!(get_["request_body_truncated"], false);
    assert_eq!(get_["response_body"], "GET /g");
    assert_eq!(get_["response_body_bytes"], 6);
}

#[test]
fn trace_body_bytes_zero_bodies_omitted_lengths_kept() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--trace-body-bytes", "0"]);
    let dir = trace_dir(&proxy);

    let resp = proxy
        .connect()
        .roundtrip(&request("POST", "/p", "t", &[], b"0123456789"));
    let record = wait_one(&dir);

    assert_eq!(resp.text(), "0123456789");
    assert!(record.get("request_body").is_none(), "{record:#}");
    assert!(record.get("response_body").is_none(), "{record:#}");
    assert_eq!(record["request_body_bytes"], 10);
    assert_eq!(record["response_body_bytes"], 10);
    assert_eq!(record["request_body_truncated"], true);
    assert_eq!(record["response_body_truncated"], true);
}

// ---------------------------------------------------------------------------------------------
// traceparent
// ---------------------------------------------------------------------------------------------

#[test]
fn trace_traceparent_incoming_parent_recorded_child_forwarded() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let dir = trace_dir(&proxy);
    let incoming = format!("00-{INCOMING_TRACE_ID}-{INCOMING_SPAN_ID}-01");

    let resp = proxy.connect().roundtrip(&request(
        "GET",
        "/tp",
        "t",
        &[("traceparent", &incoming)],
        b"",
    ));
    let record = wait_one(&dir);

    assert_eq!(resp.status, 200);
    assert_eq!(record["trace_id"], INCOMING_TRACE_ID);
    assert_eq!(record["parent_span_id"], INCOMING_SPAN_ID);
    let span_id = str_field(&record, "span_id");
    assert!(is_hex_id(span_id, 16), "span_id {span_id:?}");
    assert_ne!(span_id, INCOMING_SPAN_ID, "the proxy's span is its own");
    let requests = origin.requests();
    assert_eq!(requests.len(), 1);
    let forwarded: Vec<&str> = requests[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        forwarded,
        [format!("00-{INCOMING_TRACE_ID}-{span_id}-01")],
        "exactly one traceparent upstream, naming the proxy's span, sampled flag kept"
    );
    assert_eq!(
        record["request_headers"]["traceparent"], incoming,
        "request headers are the client's, not the forwarded ones"
    );
}

#[test]
fn trace_no_traceparent_random_ids_child_forwarded() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let dir = trace_dir(&proxy);
    let mut c = proxy.connect();

    c.roundtrip(&get("/one"));
    c.roundtrip(&get("/two"));
    let records = wait_records(&dir, 2);

    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    for (record, req) in records.iter().zip(&requests) {
        assert_eq!(record["parent_span_id"], Value::Null);
        let trace_id = str_field(record, "trace_id");
        let span_id = str_field(record, "span_id");
        let forwarded = req
            .header("traceparent")
            .unwrap_or_else(|| panic!("no traceparent upstream for {}", req.target));
        let parts: Vec<&str> = forwarded.split('-').collect();
        assert_eq!(parts.len(), 4, "traceparent {forwarded:?}");
        assert_eq!(parts[0], "00", "version of {forwarded:?}");
        assert_eq!(parts[1], trace_id, "trace id of {forwarded:?}");
        assert_eq!(parts[2], span_id, "parent id of {forwarded:?}");
        assert!(
            is_hex_id(parts[3], 2) || parts[3] == "00",
            "flags of {forwarded:?}"
        );
    }
    assert_ne!(
        records[0]["trace_id"], records[1]["trace_id"],
        "each request starts its own trace"
    );
    assert_ne!(records[0]["span_id"], records[1]["span_id"]);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn trace_fault_error_503_record_has_status_headers_body_rule() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503"]);
    let dir = trace_dir(&proxy);

    let resp = proxy.connect().roundtrip(&get("/x"));
    let record = wait_one(&dir);

    assert_eq!(resp.status, 503);
    assert_eq!(record["status_code"], 503);
    assert_eq!(record["outcome"], "fault");
    assert_eq!(
        record["response_headers"]["content-type"],
        "application/json"
    );
    assert_eq!(record["response_headers"]["x-fault-injected"], "phantom");
    assert_eq!(
        record["response_headers"],
        header_object(&resp.headers),
        "the synthetic head as sent"
    );
    assert_eq!(record["response_body"], FAULT_BODY);
    assert_eq!(record["response_body_bytes"], FAULT_BODY.len());
    assert_eq!(
        record["fault"],
        json!({"rule": 0, "kind": "error", "spec": "error:503"})
    );
    assert_eq!(record["injected_delay_ms"], 0);
    assert!(
        record["upstream_ttfb_us"].is_null(),
        "upstream not contacted, ttfb must be absent: {record:#}"
    );
    assert_eq!(origin.connections(), 0);
}

#[test]
fn trace_fault_delay_record_has_delay_and_rule_index() {
    const DELAY_MS: u64 = 100;
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "error:500:/never", "--fault", "delay:100ms"],
    );
    let dir = trace_dir(&proxy);

    let resp = proxy.connect().roundtrip(&get("/slow"));
    let record = wait_one(&dir);

    assert_eq!(resp.text(), "GET /slow");
    assert_eq!(record["status_code"], 200);
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["injected_delay_ms"], DELAY_MS);
    assert_eq!(
        record["fault"],
        json!({"rule": 1, "kind": "delay", "spec": "delay:100ms"})
    );
    let duration_ms = u64_field(&record, "duration_ms");
    assert!(duration_ms >= DELAY_MS, "duration_ms {duration_ms}");
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

#[test]
fn trace_malformed_request_400_bad_request_record() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let dir = trace_dir(&proxy);
    let mut c = proxy.connect();

    c.send(b"GET / HTTP/1.1\r\nhost: t\r\nthis is not a header\r\n\r\n");
    let resp = c.read_response().expect("a 400 answer");
    let record = wait_one(&dir);

    assert_eq!(resp.status, 400);
    assert_eq!(record["status_code"], 400);
    assert_eq!(record["outcome"], "bad-request");
    assert_eq!(record["fault"], Value::Null);
    assert_eq!(origin.connections(), 0);
}

#[test]
fn trace_upstream_refused_502_upstream_error_record() {
    let dead = closed_port();
    let proxy = Proxy::reverse(dead, &[]);
    let dir = trace_dir(&proxy);

    let resp = proxy.connect().roundtrip(&get("/refused"));
    let record = wait_one(&dir);

    assert_eq!(resp.status, 502);
    assert_eq!(record["status_code"], 502);
    assert_eq!(record["outcome"], "upstream-error");
    assert_eq!(record["url"], "http://test.local/refused");
    assert_eq!(record["dest_addr"], dead.to_string());
}

#[test]
fn trace_upstream_silent_504_upstream_timeout_record() {
    const TIMEOUT_MS: u64 = 300;
    let origin = RawOrigin::start(|mut conn, _| {
        // Read the request, then say nothing until the proxy gives up and closes.
        let _ = conn.read_request(false);
        let _ = conn.read_until_close();
    });
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "300ms"]);
    let dir = trace_dir(&proxy);

    let resp = proxy.connect().roundtrip(&get("/silent"));
    let record = wait_one(&dir);

    assert_eq!(resp.status, 504);
    assert_eq!(record["status_code"], 504);
    assert_eq!(record["outcome"], "upstream-timeout");
    let duration_ms = u64_field(&record, "duration_ms");
    assert!(duration_ms >= TIMEOUT_MS, "duration_ms {duration_ms}");
}

#[test]
fn trace_client_closes_during_delay_client_closed_record() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:2s"]);
    let dir = trace_dir(&proxy);

    {
        let mut c = proxy.connect();
        c.send(&get("/gone"));
        thread::sleep(Duration::from_millis(200));
        // Dropping the connection closes it while the proxy still sleeps on the delay.
    }
    let record = wait_one(&dir);

    assert_eq!(record["outcome"], "client-closed", "{record:#}");
    assert_eq!(record["url"], "http://test.local/gone");
    assert_eq!(record["fault"]["rule"], 0, "{record:#}");
    assert_eq!(record["fault"]["kind"], "delay", "{record:#}");
    // The spec as given or in the proxy's canonical spelling (it prints `delay:2000ms`).
    let spec = &record["fault"]["spec"];
    assert!(spec == "delay:2s" || spec == "delay:2000ms", "spec {spec}");
}

/// A delay far longer than the record wait: the client's hang-up must be noticed while it
/// lasts (the delay asks the socket at least every second, `exchange/decide.rs`), not at its end.
#[test]
fn trace_client_closes_during_long_delay_noticed_before_its_end() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:60s"]);
    let dir = trace_dir(&proxy);

    {
        let mut c = proxy.connect();
        c.send(&get("/long-gone"));
        thread::sleep(Duration::from_millis(200));
    }
    let record = wait_one(&dir);

    assert_eq!(record["outcome"], "client-closed", "{record:#}");
    assert_eq!(record["url"], "http://test.local/long-gone");
    assert!(
        u64_field(&record, "duration_ms") < 60_000,
        "noticed only at the deadline: {record:#}"
    );
    assert!(origin.requests().is_empty(), "the request was forwarded");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL and restart
// ---------------------------------------------------------------------------------------------

/// One keep-alive connection sending `/k/<client>/<n>` until the proxy dies; returns the targets
/// whose responses it fully received, in order, and counts each in `received`.
fn hammer(addr: SocketAddr, client: usize, received: &AtomicUsize) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(stream) = TcpStream::connect(addr) else {
        return done;
    };
    let mut conn = Conn::new(stream);
    for n in 0.. {
        let target = format!("/k/{client}/{n}");
        if conn.try_send(&get(&target)).is_err() {
            break;
        }
        match conn.read_response() {
            Ok(resp) if resp.status == 200 && resp.text() == format!("GET {target}") => {
                done.push(target);
                received.fetch_add(1, Ordering::SeqCst);
            }
            _ => break,
        }
    }
    done
}

#[test]
fn trace_sigkill_under_load_every_received_response_recorded_restart_appends() {
    let origin = Origin::echo();
    let upstream = origin.addr().to_string();
    let dir = tempfile::tempdir().expect("a trace dir");
    let proxy_args = ["--workers", "2", "--upstream", upstream.as_str()];
    let proxy = OwnProxy::start(dir.path(), &proxy_args);
    let addr = proxy.addr;

    let counted = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..KILL_CLIENTS)
        .map(|i| {
            let counted = Arc::clone(&counted);
            thread::spawn(move || hammer(addr, i, &counted))
        })
        .collect();
    // Under load for a while, and some responses in (a loaded machine may take longer to get
    // them than the while lasts).
    thread::sleep(KILL_AFTER);
    assert!(
        wait_until(WAIT_TIMEOUT, || counted.load(Ordering::SeqCst)
            >= KILL_AFTER_RESPONSES),
        "the clients got {} responses within {WAIT_TIMEOUT:?}",
        counted.load(Ordering::SeqCst)
    );
    proxy.kill();
    let received: Vec<Vec<String>> = clients
        .into_iter()
        .map(|h| join_within(h, WAIT_TIMEOUT, "a client thread").expect("client thread"))
        .collect();
    let before = traces(dir.path(), &[]);

    let total: usize = received.iter().map(Vec::len).sum();
    assert!(total > 0, "no client got a response before the kill");
    let recorded: BTreeSet<String> = before
        .iter()
        .map(|r| {
            let url = str_field(r, "url");
            url.strip_prefix("http://test.local")
                .unwrap_or_else(|| panic!("unexpected url {url:?}"))
                .to_owned()
        })
        .collect();
    assert_eq!(recorded.len(), before.len(), "duplicate records");
    // Per connection: every fully received response is recorded, except that the last one may
    // be missing (its record is written just after the send, and the kill may land in between)
    // or the one after it may be present (answered and recorded, not yet fully read). At most
    // one exchange per connection differs from what the client saw.
    for (i, done) in received.iter().enumerate() {
        let prefix = format!("/k/{i}/");
        let mut got: Vec<usize> = recorded
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix)?.parse().ok())
            .collect();
        got.sort_unstable();
        let received_n = done.len();
        let allowed = [received_n.saturating_sub(1), received_n, received_n + 1];
        let contiguous = got.iter().enumerate().all(|(k, n)| k == *n);
        assert!(
            contiguous && allowed.contains(&got.len()),
            "connection {i}: client fully received /k/{i}/0..{received_n}, records hold {} \
             (missing {:?}, extra {:?})",
            got.len(),
            (0..received_n)
                .filter(|n| !got.contains(n))
                .collect::<Vec<_>>(),
            got.iter().filter(|n| **n >= received_n).collect::<Vec<_>>(),
        );
    }
    let strays: Vec<&String> = recorded.iter().filter(|t| !t.starts_with("/k/")).collect();
    assert!(strays.is_empty(), "records nobody asked for: {strays:?}");

    // Restart on the same dir: old records survive, new ones come after them.
    let proxy = OwnProxy::start(dir.path(), &proxy_args);
    let mut c = Conn::connect(proxy.addr);
    for n in 0..RESTART_REQUESTS {
        let resp = c.roundtrip(&get(&format!("/r/{n}")));
        assert_eq!(resp.status, 200);
    }
    let after = wait_records(dir.path(), before.len() + RESTART_REQUESTS);
    drop(proxy);

    assert_eq!(
        after.len(),
        before.len() + RESTART_REQUESTS,
        "records after restart: {:?}",
        urls(&after)
    );
    let span_ids = |rs: &[Value]| -> Vec<String> {
        rs.iter()
            .map(|r| str_field(r, "span_id").to_owned())
            .collect()
    };
    assert_eq!(
        span_ids(&after[..before.len()]),
        span_ids(&before),
        "the pre-kill records, unchanged and first"
    );
    let new_urls = urls(&after[before.len()..]);
    let want: Vec<String> = (0..RESTART_REQUESTS)
        .map(|n| format!("http://test.local/r/{n}"))
        .collect();
    assert_eq!(new_urls, want, "the new records, after the old ones");
    let times: Vec<u64> = after.iter().map(|r| u64_field(r, "timestamp_ms")).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "traces not oldest first: {times:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Filters and stats over known traffic
// ---------------------------------------------------------------------------------------------

/// GETs of `/a` answered 200.
const TRAFFIC_OK_GETS: usize = 10;
/// GETs of `/b` answered by `error:503:/b`.
const TRAFFIC_FAULTED: usize = 5;
/// POSTs of `/c` answered 200.
const TRAFFIC_POSTS: usize = 3;
/// All of the above.
const TRAFFIC_TOTAL: usize = TRAFFIC_OK_GETS + TRAFFIC_FAULTED + TRAFFIC_POSTS;

/// Sends the known traffic through a proxy with `error:503:/b`; returns it, its dir and records.
fn known_traffic() -> (Origin, Proxy, PathBuf, Vec<Value>) {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/b"]);
    let dir = trace_dir(&proxy);
    let mut c = proxy.connect();
    for i in 0..TRAFFIC_OK_GETS {
        assert_eq!(c.roundtrip(&get(&format!("/a/{i}"))).status, 200);
    }
    for i in 0..TRAFFIC_FAULTED {
        assert_eq!(c.roundtrip(&get(&format!("/b/{i}"))).status, 503);
    }
    for i in 0..TRAFFIC_POSTS {
        let resp: Response = c.roundtrip(&request("POST", &format!("/c/{i}"), "t", &[], b"p"));
        assert_eq!(resp.status, 200);
    }
    let records = wait_records(&dir, TRAFFIC_TOTAL);
    assert_eq!(records.len(), TRAFFIC_TOTAL, "{:?}", urls(&records));
    (origin, proxy, dir, records)
}

#[test]
fn trace_filters_known_traffic_selected_exactly() {
    let (_origin, _proxy, dir, all) = known_traffic();
    let faulted_urls: Vec<String> = (0..TRAFFIC_FAULTED)
        .map(|i| format!("http://test.local/b/{i}"))
        .collect();
    let post_urls: Vec<String> = (0..TRAFFIC_POSTS)
        .map(|i| format!("http://t/c/{i}"))
        .collect();
    let rows: &[(&str, &[&str], Vec<String>)] = &[
        ("status_503", &["--status", "503"], faulted_urls.clone()),
        ("status_5xx", &["--status", "5xx"], faulted_urls.clone()),
        ("url_b", &["--url", "/b"], faulted_urls.clone()),
        ("method_post", &["--method", "POST"], post_urls),
        ("faulted", &["--faulted"], faulted_urls.clone()),
        (
            "limit_2_newest",
            &["--limit", "2"],
            urls(&all[TRAFFIC_TOTAL - 2..]),
        ),
        (
            "status_2xx_and_url_a",
            &["--status", "2xx", "--url", "/a/"],
            urls(&all[..TRAFFIC_OK_GETS]),
        ),
    ];
    for (name, filters, want) in rows {
        let got = urls(&traces(&dir, filters));
        assert_eq!(&got, want, "row {name}: traces {filters:?}");
    }

    let table = run_query("traces", &dir, &["--format", "table"]).stdout;
    let mut lines = table.lines();
    let header = lines.next().expect("a table header line");
    for column in ["STATUS", "METHOD", "OUTCOME", "URL"] {
        assert!(
            header.contains(column),
            "table header {header:?} lacks {column}"
        );
    }
    let rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), TRAFFIC_TOTAL, "table:\n{table}");
    assert!(rows[TRAFFIC_OK_GETS].contains("503"), "table:\n{table}");
    assert!(rows[TRAFFIC_OK_GETS].contains("http://test.local/b/0"));
}

#[test]
fn trace_stats_known_traffic_figures_match() {
    let (_origin, _proxy, dir, _) = known_traffic();

    let all = stats(&dir, &[]);
    let posts = stats(&dir, &["--method", "POST"]);

    assert_eq!(all["records"], TRAFFIC_TOTAL, "{all:#}");
    assert_eq!(
        all["by_outcome"],
        json!({
            "ok": TRAFFIC_OK_GETS + TRAFFIC_POSTS,
            "fault": TRAFFIC_FAULTED,
            "bad-request": 0,
            "upstream-error": 0,
            "upstream-timeout": 0,
            "client-closed": 0,
            "client-tls-failed": 0,
        })
    );
    assert_eq!(
        all["by_status_class"],
        json!({
            "1xx": 0,
            "2xx": TRAFFIC_OK_GETS + TRAFFIC_POSTS,
            "3xx": 0,
            "4xx": 0,
            "5xx": TRAFFIC_FAULTED,
            "other": 0,
        })
    );
    assert_eq!(
        all["faults_by_rule"],
        json!({"0": {"count": TRAFFIC_FAULTED, "kind": "error", "spec": "error:503:/b"}})
    );
    assert_eq!(all["duration_ms"]["all"]["count"], TRAFFIC_TOTAL);
    assert_eq!(all["duration_ms"]["faulted"]["count"], TRAFFIC_FAULTED);
    assert_eq!(
        all["duration_ms"]["unfaulted"]["count"],
        TRAFFIC_OK_GETS + TRAFFIC_POSTS
    );
    for key in ["p50", "p90", "p99", "p99.9", "max"] {
        let v = all["duration_ms"]["all"][key].as_f64();
        assert!(
            v.is_some_and(|v| v >= 0.0),
            "duration_ms.all.{key}: {all:#}"
        );
    }
    let first = u64_field(&all, "first_timestamp_ms");
    let last = u64_field(&all, "last_timestamp_ms");
    assert!(first <= last, "time span {first}..{last}");
    assert_eq!(posts["records"], TRAFFIC_POSTS, "{posts:#}");
    assert_eq!(posts["by_outcome"]["ok"], TRAFFIC_POSTS);
}

// ---------------------------------------------------------------------------------------------
// Damaged rings and --no-traces
// ---------------------------------------------------------------------------------------------

/// A real ring holding two records, copied out of a running proxy's dir.
fn valid_ring() -> (Vec<u8>, Vec<Value>) {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--trace-capacity", SMALL_RING]);
    let dir = trace_dir(&proxy);
    let mut c = proxy.connect();
    c.roundtrip(&get("/v/0"));
    c.roundtrip(&get("/v/1"));
    let records = wait_records(&dir, 2);
    let bytes = std::fs::read(dir.join("core-0.ring")).expect("reading core-0.ring");
    (bytes, records)
}

/// Where a ring file states its header size (`header bytes u32` at offset 12, little-endian):
/// the frames start right after the header.
const RING_HEADER_BYTES_AT: usize = 12;
/// A frame's own header: `seq u64 | len u32 | crc32 u32`, then the payload padded to 16.
const FRAME_HEADER_BYTES: usize = 16;

/// The file offsets of the first two frames' payloads, as (start, len), read off the ring's
/// own header and framing (see `src/trace/ring.rs`).
fn frame_payloads(ring: &[u8]) -> [(usize, usize); 2] {
    let u32_at = |at: usize| u32::from_le_bytes(ring[at..at + 4].try_into().expect("4 bytes"));
    let payload = |frame: usize| (frame + FRAME_HEADER_BYTES, u32_at(frame + 8) as usize);
    let first = payload(u32_at(RING_HEADER_BYTES_AT) as usize);
    let second = payload(first.0 + first.1.div_ceil(16) * 16);
    [first, second]
}

/// The `span_id`s of `records`, sorted (a multiset: a copied ring repeats the good one's ids).
fn span_ids<'a>(records: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    let mut ids: Vec<String> = records
        .into_iter()
        .map(|r| str_field(r, "span_id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn trace_corrupted_ring_clear_error_or_exact_good_records_no_panic() {
    let (valid, valid_records) = valid_ring();
    assert_eq!(valid_records.len(), 2, "the valid ring holds two records");
    let [first, second] = frame_payloads(&valid);
    let flip = |range: std::ops::Range<usize>| {
        let mut bytes = valid.clone();
        for b in &mut bytes[range] {
            *b ^= 0x5a;
        }
        bytes
    };
    let by_url = |url: &str| {
        valid_records
            .iter()
            .find(|r| str_field(r, "url").ends_with(url))
            .unwrap_or_else(|| panic!("no record for {url}"))
            .clone()
    };
    let (rec0, rec1) = (by_url("/v/0"), by_url("/v/1"));
    // Each row: the bytes of core-9.ring and the records that may be read from it (none when
    // nothing in it is whole; the untouched frames when only some are damaged).
    let rows: Vec<(&str, Vec<u8>, Vec<Value>)> = vec![
        ("empty", Vec::new(), vec![]),
        ("truncated_header", valid[..10].to_vec(), vec![]),
        ("truncated_half", valid[..valid.len() / 2].to_vec(), vec![]),
        ("zeroed", vec![0; valid.len()], vec![]),
        ("random_garbage", pattern(valid.len()), vec![]),
        ("short_garbage", pattern(100), vec![]),
        (
            "both_records_bit_flipped",
            flip(first.0 - FRAME_HEADER_BYTES..second.0 + second.1),
            vec![],
        ),
        (
            "first_payload_byte_flipped",
            flip(first.0 + first.1 / 2..first.0 + first.1 / 2 + 1),
            vec![rec1.clone()],
        ),
        (
            "second_payload_byte_flipped",
            flip(second.0 + second.1 / 2..second.0 + second.1 / 2 + 1),
            vec![rec0.clone()],
        ),
        (
            "foreign_text",
            b"this is not a phantom-fast ring\n".repeat(4096),
            vec![],
        ),
    ];
    for (name, bytes, from_bad) in &rows {
        for with_valid in [false, true] {
            let dir = tempfile::tempdir().expect("a temp dir");
            std::fs::write(dir.path().join("core-9.ring"), bytes).expect("writing core-9.ring");
            let mut want: Vec<Value> = from_bad.clone();
            if with_valid {
                std::fs::write(dir.path().join("core-0.ring"), &valid)
                    .expect("writing core-0.ring");
                want.extend(valid_records.iter().cloned());
            }
            let path = dir.path().to_str().expect("UTF-8 temp dir");
            for sub in ["traces", "stats"] {
                let run = run_cli(&[sub, "--trace-dir", path]);
                let context = format!(
                    "row {name} (valid ring too: {with_valid}) `{sub}`: {}\nstdout:\n{}\nstderr:\n{}",
                    run.status, run.stdout, run.stderr
                );
                assert_ne!(run.status.code(), Some(PANIC_EXIT_CODE), "{context}");
                assert!(run.status.code().is_some(), "killed by a signal: {context}");
                assert!(!run.stderr.contains("panicked"), "{context}");
                if !run.status.success() {
                    assert!(
                        run.stderr.contains("core-9.ring"),
                        "an error must name the file: {context}"
                    );
                    continue;
                }
                if sub == "stats" {
                    let stats: Value = serde_json::from_str(&run.stdout)
                        .unwrap_or_else(|e| panic!("stats not JSON ({e}): {context}"));
                    assert_eq!(stats["records"], want.len(), "record count: {context}");
                    continue;
                }
                // Skipped damage: exactly the good records, each whole, and nothing else.
                let got: Vec<Value> = run
                    .stdout
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        serde_json::from_str(l)
                            .unwrap_or_else(|e| panic!("line {l:?} is not JSON ({e}): {context}"))
                    })
                    .collect();
                assert_eq!(span_ids(&got), span_ids(&want), "records read: {context}");
                for record in &got {
                    let same = want.iter().find(|w| w["span_id"] == record["span_id"]);
                    assert_eq!(Some(record), same, "a bogus record: {context}");
                }
            }
        }
    }
}

#[test]
fn trace_no_traces_writes_no_ring_files() {
    let origin = Origin::echo();
    let upstream = origin.addr().to_string();
    let dir = tempfile::tempdir().expect("a trace dir");
    let proxy = OwnProxy::start(dir.path(), &["--no-traces", "--upstream", &upstream]);
    let mut c = Conn::connect(proxy.addr);

    let resp = c.roundtrip(&get("/untraced"));
    // Records would be written right after the send; give a writer the time it would need.
    thread::sleep(Duration::from_millis(500));
    drop(proxy);

    assert_eq!(resp.text(), "GET /untraced");
    let mut files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("listing the trace dir") {
            let path = entry.expect("a dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.is_empty(), "--no-traces wrote {files:?}");
}

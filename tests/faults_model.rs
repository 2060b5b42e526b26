//! Issue 12's faults end to end, a real client over loopback seeing what each fault promises:
//! reset → ECONNRESET, close, garbage, hang until `--idle-timeout`, slow time to first byte with
//! the upstream's real body, method matchers, header-driven faults (applied, never forwarded),
//! `--max-active-faults` overflow counted, bandwidth's `burst=` pieces against its default ones,
//! and the trace record's measured values (how long a hang held, what a truncate or a reset let
//! through). It does not test the grammar (the `fault`
//! unit tests do). Delays are bounded from below only: the machine may be loaded.

use std::io::{ErrorKind, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Conn, Origin, Proxy, WAIT_TIMEOUT, get, pattern, request, response, trace_records, wait_until,
};

/// The applied faults of the proxy's only trace record, as `(kind, value)`, once it is written
/// (a record follows its response, so it may lag the client's view by a little).
fn recorded_faults(proxy: &Proxy) -> Vec<(String, u64)> {
    recorded(proxy)["faults"]
        .as_array()
        .expect("a faults list")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().expect("a kind").to_owned(),
                f["value"].as_u64().expect("a value"),
            )
        })
        .collect()
}

/// The proxy's first trace record, as `traces` prints it.
fn recorded(proxy: &Proxy) -> serde_json::Value {
    all_records(proxy, 1).swap_remove(0)
}

/// Every trace record of `proxy`, polled until there are at least `want`.
fn all_records(proxy: &Proxy, want: usize) -> Vec<serde_json::Value> {
    trace_records(proxy.trace_dir(), want)
}

/// A raw read of the first bytes the proxy sends, or the error it ended with.
fn first_read(c: &mut Conn) -> std::io::Result<Vec<u8>> {
    let mut stream = c.writer();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

#[test]
fn fault_model_reset_gives_econnreset_origin_not_contacted() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "reset"]);
    let mut c = proxy.connect();
    c.send(&get("/x"));
    let got = first_read(&mut c);
    let err = got.expect_err("a reset, not bytes or EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(origin.connections(), 0);
}

#[test]
fn fault_model_close_is_eof_without_a_response() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "close:/api"]);
    let mut c = proxy.connect();
    c.send(&get("/api/x"));
    assert_eq!(first_read(&mut c).expect("a clean close"), b"");
    // Unmatched requests are forwarded as usual.
    let mut other = proxy.connect();
    assert_eq!(other.roundtrip(&get("/home")).status, 200);
}

#[test]
fn fault_model_garbage_is_not_http_then_close() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "garbage"]);
    let mut c = proxy.connect();
    c.send(&get("/x"));
    let bytes = c.read_until_close().expect("garbage then close");
    assert!(
        !bytes.is_empty() && !bytes.starts_with(b"HTTP/"),
        "{bytes:?}"
    );
}

#[test]
fn fault_model_hang_answers_nothing_until_idle_timeout() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "hang", "--idle-timeout", "1500ms"],
    );
    let mut c = proxy.connect();
    let started = Instant::now();
    c.send(&get("/x"));
    // The client's own timeout fires first: nothing came.
    c.set_timeout(Duration::from_millis(500));
    let err = first_read(&mut c).expect_err("no answer while hung");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    // Then the proxy gives up after --idle-timeout and closes.
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(
        first_read(&mut c).expect("closed after the idle timeout"),
        b""
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(origin.connections(), 0);
    // The record says how long it actually held: the idle timeout, not 0.
    let faults = recorded_faults(&proxy);
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(faults[0].0, "hang");
    assert!(faults[0].1 >= 1_500_000_000, "{faults:?}");
    // The ledger counts the hang as injected time, not as the proxy's own overhead.
    let rec = recorded(&proxy);
    let us = |k: &str| rec[k].as_u64().unwrap_or_else(|| panic!("{k}: {rec:#}"));
    assert!(us("injected_delay_us") >= 1_500_000, "{rec:#}");
    assert!(us("overhead_us") < us("injected_delay_us"), "{rec:#}");
    assert_eq!(
        us("duration_us"),
        us("injected_delay_us") + us("upstream_us") + us("overhead_us"),
        "duration = injected + upstream + overhead: {rec:#}"
    );
}

#[test]
fn fault_model_head_delay_keeps_the_upstream_body() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:400ms:at=head"]);
    let mut c = proxy.connect();
    let started = Instant::now();
    let resp = c.roundtrip(&request("POST", "/echo", "test.local", &[], b"real body"));
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"real body");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    // The upstream had answered long before: the delay sat between its head and ours.
    assert_eq!(origin.requests().len(), 1);
    // Keep-alive survives a delay.
    assert_eq!(c.roundtrip(&get("/again")).status, 200);
}

#[test]
fn fault_model_method_matcher_picks_requests() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:method=POST"]);
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(&get("/x")).status, 200);
    let post = c.roundtrip(&request("POST", "/x", "test.local", &[], b"b"));
    assert_eq!(post.status, 503);
    assert_eq!(post.header("x-fault-injected"), Some("phantom"));
}

#[test]
fn fault_model_custom_synthetic_answer() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &[
            "--fault",
            "error:429:body=slow%20down:set.retry-after=2:set.content-type=text/plain",
        ],
    );
    let mut c = proxy.connect();
    let resp = c.roundtrip(&get("/x"));
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("2"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("content-length"), Some("9"));
    assert_eq!(resp.body, b"slow down");
}

#[test]
fn fault_model_header_fault_applied_and_not_forwarded() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--allow-header-faults"]);
    let mut c = proxy.connect();
    let teapot = c.roundtrip(&request(
        "GET",
        "/x",
        "test.local",
        &[("x-phantom-fault", "error:418")],
        b"",
    ));
    assert_eq!(teapot.status, 418);
    assert_eq!(teapot.header("x-fault-injected"), Some("phantom"));
    let started = Instant::now();
    let slow = c.roundtrip(&request(
        "GET",
        "/y",
        "test.local",
        &[("X-Phantom-Fault", "delay:300ms")],
        b"",
    ));
    assert_eq!(slow.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let seen = origin.requests();
    assert_eq!(seen.len(), 1, "the 418 never reached the origin");
    assert_eq!(
        seen[0].header("x-phantom-fault"),
        None,
        "{:?}",
        seen[0].headers
    );
}

#[test]
fn fault_model_header_fault_without_flag_stripped_and_ignored() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let resp = c.roundtrip(&request(
        "GET",
        "/x",
        "test.local",
        &[("x-phantom-fault", "error:418"), ("x-other", "kept")],
        b"",
    ));
    assert_eq!(resp.status, 200);
    let seen = origin.requests();
    assert_eq!(seen[0].header("x-phantom-fault"), None);
    assert_eq!(seen[0].header("x-other"), Some("kept"));
}

#[test]
fn fault_model_max_active_faults_overflow_counted() {
    let origin = Origin::echo();
    // Placed at the head, the delay holds its slot from the request's decision on, while the
    // origin already has the request: its arrival there says the slot is taken. The delay
    // outlasts however long the second request then takes on a loaded machine.
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "delay:5s:at=head", "--max-active-faults", "1"],
    );
    let addr = proxy.addr();
    let held = thread::spawn(move || {
        let mut c = Conn::connect(addr);
        let started = Instant::now();
        let status = c.roundtrip(&get("/held")).status;
        (status, started.elapsed())
    });
    // The first request holds the one slot before the second is sent.
    assert!(
        wait_until(WAIT_TIMEOUT, || origin
            .requests()
            .iter()
            .any(|r| r.target == "/held")),
        "the first request never reached the origin"
    );
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(&get("/overflow")).status, 200);
    let (status, slow) =
        crate::support::join_within(held, WAIT_TIMEOUT, "the held client").expect("held client");
    assert_eq!(status, 200);
    assert!(slow >= Duration::from_secs(5), "{slow:?}");
    let records = all_records(&proxy, 2);
    let delay_of = |path: &str| {
        let record = records
            .iter()
            .find(|r| r["url"].as_str().is_some_and(|u| u.ends_with(path)))
            .unwrap_or_else(|| panic!("no record of {path}: {records:#?}"));
        record["injected_delay_ms"].as_u64()
    };
    assert_eq!(delay_of("/held"), Some(5_000), "{records:#?}");
    assert_eq!(
        delay_of("/overflow"),
        Some(0),
        "overflow was delayed: {records:#?}"
    );
    let (_, stderr) = proxy.stop();
    assert!(
        stderr.contains("fault overflow (--max-active-faults): 1"),
        "{stderr}"
    );
}

/// An origin answering every request with `len` bytes of a known pattern.
fn big_origin(len: usize) -> Origin {
    Origin::start(move |_| response("200 OK", &[], &pattern(len)))
}

#[test]
fn fault_model_truncate_short_body_then_close() {
    let origin = big_origin(10_000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "truncate:25%"]);
    let mut c = proxy.connect();
    c.send(&get("/big"));
    let bytes = c.read_until_close().expect("a short body, then close");
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    assert!(head.contains("content-length: 10000"), "{head}");
    assert_eq!(&bytes[head_end..], &pattern(10_000)[..2_500]);
    // The record has the bytes that went out (25% of 10 000), not the rule's 25%.
    assert_eq!(recorded_faults(&proxy), [("truncate".to_owned(), 2_500)]);
}

#[test]
fn fault_model_reset_after_bytes() {
    let origin = big_origin(100_000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "reset:after=1KiB"]);
    let mut c = proxy.connect();
    c.send(&get("/big"));
    let mut stream = c.writer();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let err = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("FIN instead of a reset after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4);
    // A reset may drop bytes still in flight, never add any.
    assert!(
        got.len() - head_end <= 1024,
        "{} body bytes",
        got.len() - head_end
    );
    // The record has the body bytes written before the RST.
    assert_eq!(recorded_faults(&proxy), [("reset".to_owned(), 1024)]);
}

#[test]
fn fault_model_truncate_bytes_beyond_a_short_body_records_the_body() {
    // truncate:64KiB of a 10 000-byte body lets all of it through: the record says 10 000.
    let origin = big_origin(10_000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "truncate:64KiB"]);
    let mut c = proxy.connect();
    c.send(&get("/big"));
    let bytes = c.read_until_close().expect("the body, then close");
    assert!(bytes.ends_with(&pattern(10_000)), "{} bytes", bytes.len());
    assert_eq!(recorded_faults(&proxy), [("truncate".to_owned(), 10_000)]);
}

#[test]
fn fault_model_dribble_spreads_the_whole_body() {
    let origin = big_origin(50_000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "dribble:5,1s"]);
    let mut c = proxy.connect();
    let started = Instant::now();
    let resp = c.roundtrip(&get("/big"));
    let elapsed = started.elapsed();
    assert_eq!(resp.body, pattern(50_000));
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(c.roundtrip(&get("/again")).status, 200, "keep-alive kept");
}

#[test]
fn fault_model_bandwidth_64kib_per_sec_over_1mib_takes_16s() {
    let origin = big_origin(1 << 20);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "bandwidth:64KiB/s"]);
    let mut c = proxy.connect();
    c.set_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let resp = c.roundtrip(&get("/big"));
    let elapsed = started.elapsed();
    assert_eq!(resp.body.len(), 1 << 20);
    assert!(resp.body == pattern(1 << 20), "body altered");
    // Bounded from below only: a loaded machine may be slower, never faster.
    assert!(elapsed >= Duration::from_secs(16), "{elapsed:?}");
    eprintln!("bandwidth 64KiB/s over 1 MiB: {elapsed:?}");
}

/// Sends `GET /big` on a fresh connection and reads the answer raw until `len` body bytes came:
/// the body, and each read of it as (time since the request was sent, body bytes it held).
fn timed_body_reads(proxy: &Proxy, len: usize) -> (Vec<u8>, Vec<(Duration, usize)>) {
    let mut stream = proxy.connect().writer();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    stream.write_all(&get("/big")).expect("sending the request");
    let sent = Instant::now();
    let (mut raw, mut reads) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf).expect("the paced body");
        assert!(n > 0, "closed after {} bytes", raw.len());
        let at = sent.elapsed();
        let before = raw.len();
        raw.extend_from_slice(&buf[..n]);
        let Some(start) = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
            continue;
        };
        let body_before = before.saturating_sub(start);
        let body = raw.len() - start;
        if body > body_before {
            reads.push((at, body - body_before));
        }
        if body >= len {
            return (raw.split_off(start), reads);
        }
    }
}

#[test]
fn fault_model_bandwidth_burst_sends_the_body_in_bursts() {
    // 64 KiB at 16 KiB/s: the last byte is due 4 s after the body starts, whatever the pieces.
    // With burst=16KiB that is 4 pieces of about 16 KiB, one a second; with the default pieces
    // (one 1 448-byte segment every 88 ms) about 45. A loaded machine only merges reads (a late
    // reader, or a late write finding the next piece due as well), so the burst's read count is
    // bounded from above, the default's from below, and time from below only.
    const LEN: usize = 64 * 1024;
    const RATE: f64 = 16.0 * 1024.0;
    let origin = big_origin(LEN);
    let bursty = Proxy::reverse(origin.addr(), &["--fault", "bandwidth:16KiB/s:burst=16KiB"]);
    let faithful = Proxy::reverse(origin.addr(), &["--fault", "bandwidth:16KiB/s"]);
    let (burst, default) = thread::scope(|s| {
        let default = s.spawn(|| timed_body_reads(&faithful, LEN));
        let burst = timed_body_reads(&bursty, LEN);
        (burst, default.join().expect("the default run"))
    });
    for (name, (body, reads)) in [("burst", &burst), ("default", &default)] {
        assert!(*body == pattern(LEN), "{name}: body altered");
        let (last, _) = reads.last().expect("body reads");
        assert!(*last >= Duration::from_millis(3900), "{name}: {last:?}");
        // The bucket starts empty: no byte arrives before it is due (bar the timer's slack).
        let mut got = 0;
        for (at, n) in reads {
            got += n;
            let due = RATE * (at.as_secs_f64() + 0.05);
            assert!(got as f64 <= due, "{name}: {got} B by {at:?}: {reads:?}");
        }
    }
    eprintln!(
        "bandwidth 16KiB/s over 64 KiB: {} reads with burst=16KiB, {} without",
        burst.1.len(),
        default.1.len()
    );
    assert!(burst.1.len() <= 12, "a trickle, not bursts: {:?}", burst.1);
    assert!(
        default.1.len() > 12,
        "the default in bursts: {:?}",
        default.1
    );
    // The record carries the fault as without burst=: kind and rate.
    assert_eq!(
        recorded_faults(&bursty),
        [("throttle".to_owned(), 16 * 1024)]
    );
}

#[test]
fn fault_model_slow_head_dribbles_the_head() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "slow-head:800ms"]);
    let mut c = proxy.connect();
    let started = Instant::now();
    let resp = c.roundtrip(&request("POST", "/x", "test.local", &[], b"intact"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"intact");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[test]
fn fault_model_request_bandwidth_paces_the_upload() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "bandwidth:32KiB/s:side=request:method=POST"],
    );
    let mut c = proxy.connect();
    let body = pattern(64 * 1024);
    let started = Instant::now();
    let resp = c.roundtrip(&request("POST", "/up", "test.local", &[], &body));
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(resp.body == body, "echo differs");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn fault_model_request_truncate_never_completes_the_upload() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "truncate:1KiB:side=request"]);
    let mut c = proxy.connect();
    let resp = c.roundtrip(&request("POST", "/up", "test.local", &[], &pattern(8192)));
    assert_eq!(resp.status, 502);
    // The origin never saw a complete request.
    assert!(
        origin.requests().is_empty(),
        "{:?}",
        origin.requests().len()
    );
    // The record has where the upload was cut.
    assert_eq!(
        recorded_faults(&proxy),
        [("request-truncate".to_owned(), 1024)]
    );
}

/// An origin answering every request with `len` pattern bytes, chunked in pieces of `piece`.
fn chunked_origin(len: usize, piece: usize) -> Origin {
    Origin::start(move |_| {
        let body = pattern(len);
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for chunk in body.chunks(piece) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    })
}

/// The body after the head of a raw close-delimited answer.
fn after_head(bytes: &[u8]) -> &[u8] {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    &bytes[at..]
}

#[test]
fn fault_model_dechunked_body_is_paced() {
    // An HTTP/1.0 client of a chunked upstream gets the payload de-chunked, and paced: 8 KiB at
    // 4 KiB/s is not complete before 2 s.
    let origin = chunked_origin(8192, 1000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "bandwidth:4KiB/s"]);
    let mut c = proxy.connect();
    let started = Instant::now();
    c.send(b"GET /big HTTP/1.0\r\nhost: t\r\n\r\n");
    let bytes = c.read_until_close().expect("the body, then close");
    let elapsed = started.elapsed();
    assert_eq!(after_head(&bytes), &pattern(8192)[..]);
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn fault_model_dechunked_body_is_truncated() {
    let origin = chunked_origin(8192, 1000);
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "truncate:2500"]);
    let mut c = proxy.connect();
    c.send(b"GET /big HTTP/1.0\r\nhost: t\r\n\r\n");
    let bytes = c.read_until_close().expect("a short body, then close");
    assert_eq!(after_head(&bytes), &pattern(8192)[..2500]);
    assert_eq!(recorded_faults(&proxy), [("truncate".to_owned(), 2500)]);
}

#[test]
fn fault_model_synthetic_answer_is_truncated() {
    // The synthetic answer's body is cut like a forwarded one: its content-length stays, so the
    // client can tell, and the connection closes.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "truncate:5", "--fault", "error:503"],
    );
    let mut c = proxy.connect();
    c.send(&get("/x"));
    let bytes = c.read_until_close().expect("a short answer, then close");
    let head = String::from_utf8_lossy(&bytes[..bytes.len() - after_head(&bytes).len()]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("content-length: 20"), "{head}");
    assert_eq!(after_head(&bytes), b"{\"fau");
    assert_eq!(
        recorded_faults(&proxy),
        [("truncate".to_owned(), 5), ("error".to_owned(), 503)]
    );
    assert_eq!(origin.connections(), 0);
}

#[test]
fn fault_model_synthetic_answer_is_paced() {
    // A 20-byte synthetic body dribbled in 4 pieces over 1.5 s.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "dribble:4,1500ms", "--fault", "error:503"],
    );
    let mut c = proxy.connect();
    let started = Instant::now();
    let resp = c.roundtrip(&get("/x"));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body, br#"{"fault":"injected"}"#);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

//! `--fault` end to end: the synthetic response bytes, delays (bounded from below only), URL
//! filters, probabilities under `--seed`, rule combination, forward mode and CONNECT, bad specs.
//! It does not test the grammar exhaustively (the `fault` unit tests do) nor trace records.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Conn, Origin, Proxy, RawOrigin, Response, get, request};

/// The synthetic fault body (CLI contract: 20 bytes, sent with its true length).
const FAULT_BODY: &[u8] = br#"{"fault":"injected"}"#;

/// Asserts `resp` is the synthetic fault answer with `status_line`.
fn assert_fault(resp: &Response, status_line: &str) {
    let head = String::from_utf8_lossy(&resp.head);
    assert_eq!(resp.status_line(), status_line, "head {head:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "head {head:?}"
    );
    assert_eq!(
        resp.header("x-fault-injected"),
        Some("phantom"),
        "head {head:?}"
    );
    assert_eq!(resp.header("content-length"), Some("20"), "head {head:?}");
    assert_eq!(resp.text(), String::from_utf8_lossy(FAULT_BODY));
}

fn timed(c: &mut Conn, bytes: &[u8]) -> (Response, Duration) {
    let started = Instant::now();
    let resp = c.roundtrip(bytes);
    (resp, started.elapsed())
}

#[test]
fn fault_error_503_synthetic_response_origin_not_contacted() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/anything"));

    assert_fault(&resp, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        origin.connections(),
        0,
        "origin contacted for a faulted request"
    );
}

#[test]
fn fault_error_keepalive_continues() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503"]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/1"));
    let second = c.roundtrip(&get("/2"));

    assert_fault(&first, "HTTP/1.1 503 Service Unavailable");
    assert_fault(&second, "HTTP/1.1 503 Service Unavailable");
}

#[test]
fn fault_error_client_close_connection_closed() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("GET", "/", "t", &[("connection", "close")], b""));

    assert_fault(&resp, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(c.wait_closed(), Ok(()));
}

#[test]
fn fault_error_500_status_line_and_same_body() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:500"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    assert_fault(&resp, "HTTP/1.1 500 Internal Server Error");
}

#[test]
fn fault_error_post_body_drained_keepalive_continues() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/drop"]);
    let mut c = proxy.connect();

    let faulted = c.roundtrip(&request(
        "POST",
        "/drop",
        "t",
        &[],
        b"GET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n",
    ));
    let next = c.roundtrip(&get("/keep"));

    assert_fault(&faulted, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        next.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&next.head)
    );
    assert_eq!(next.text(), "GET /keep");
    let targets: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        ["/keep"],
        "the faulted body must not be read as a request"
    );
}

#[test]
fn fault_delay_300ms_adds_at_least_300ms_real_response() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:300ms"]);
    let mut c = proxy.connect();

    let (resp, took) = timed(&mut c, &get("/slow"));

    assert!(
        took >= Duration::from_millis(300),
        "delay:300ms answered in {took:?}"
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "GET /slow");
    assert!(resp.header("x-fault-injected").is_none());
}

#[test]
fn fault_delay_bare_number_is_milliseconds() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:200"]);
    let mut c = proxy.connect();

    let (resp, took) = timed(&mut c, &get("/"));

    assert!(
        took >= Duration::from_millis(200),
        "delay:200 answered in {took:?}"
    );
    assert_eq!(resp.text(), "GET /");
}

#[test]
fn fault_error_url_filter_only_matching_urls_faulted() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/api/health"]);
    let mut c = proxy.connect();

    let health = c.roundtrip(&get("/api/health"));
    let health_query = c.roundtrip(&get("/v1/api/health?full=1"));
    let other = c.roundtrip(&get("/api/users"));
    let root = c.roundtrip(&get("/"));

    assert_fault(&health, "HTTP/1.1 503 Service Unavailable");
    assert_fault(&health_query, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(other.text(), "GET /api/users");
    assert_eq!(root.text(), "GET /");
    let targets: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/api/users", "/"]);
}

#[test]
fn fault_url_filter_matches_query_string() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/search?q=boom"]);
    let mut c = proxy.connect();

    let boom = c.roundtrip(&get("/search?q=boom"));
    let fine = c.roundtrip(&get("/search?q=fine"));

    assert_fault(&boom, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(fine.text(), "GET /search?q=fine");
}

#[test]
fn fault_url_filter_reverse_mode_url_built_from_host() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503://faulty.test"]);
    let mut c = proxy.connect();

    let faulty = c.roundtrip(&request("GET", "/x", "faulty.test", &[], b""));
    let healthy = c.roundtrip(&request("GET", "/x", "healthy.test", &[], b""));

    assert_fault(&faulty, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(healthy.text(), "GET /x");
}

/// Statuses of `n` sequential keep-alive GETs through a proxy started with `args`.
fn statuses(origin: &Origin, args: &[&str], n: usize) -> Vec<u16> {
    let proxy = Proxy::reverse(origin.addr(), args);
    let mut c = proxy.connect();
    (0..n)
        .map(|i| c.roundtrip(&get(&format!("/p/{i}"))).status)
        .collect()
}

#[test]
fn fault_error_probability_half_seed_42_ratio_within_bounds() {
    let origin = Origin::echo();

    let got = statuses(&origin, &["--seed", "42", "--fault", "error:503:0.5"], 2000);

    let faulted = got.iter().filter(|&&s| s == 503).count();
    let passed = got.iter().filter(|&&s| s == 200).count();
    assert_eq!(faulted + passed, 2000, "statuses other than 200/503");
    let ratio = faulted as f64 / 2000.0;
    assert!(
        (0.45..=0.55).contains(&ratio),
        "503 ratio {ratio} ({faulted}/2000)"
    );
    assert_eq!(
        origin.requests().len(),
        passed,
        "origin saw a faulted request"
    );
}

#[test]
fn fault_seed_same_seed_same_decisions() {
    let origin = Origin::echo();
    let args = ["--seed", "7", "--fault", "error:503:0.5"];

    let first = statuses(&origin, &args, 200);
    let second = statuses(&origin, &args, 200);

    assert_eq!(first, second, "--seed 7 gave two different fault sequences");
    assert!(
        first.contains(&503) && first.contains(&200),
        "degenerate sequence {first:?}"
    );
}

/// Sequential requests that look for the low half of the delay range when the concurrent ones
/// were all slowed past it by load.
const DELAY_RANGE_QUIET_PROBES: usize = 40;

#[test]
fn fault_delay_range_500_requests_span_range() {
    const CONNECTIONS: usize = 50;
    const REQUESTS_PER_CONNECTION: usize = 10;
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:50ms-150ms"]);
    let addr = proxy.addr();

    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            thread::spawn(move || {
                let mut c = Conn::connect(addr);
                (0..REQUESTS_PER_CONNECTION)
                    .map(|i| {
                        let (resp, took) = timed(&mut c, &get(&format!("/d/{k}/{i}")));
                        assert_eq!(resp.text(), format!("GET /d/{k}/{i}"));
                        took
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let took: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("client thread"))
        .collect();

    assert_eq!(took.len(), CONNECTIONS * REQUESTS_PER_CONNECTION);
    let min = took.iter().min().copied().unwrap_or_default();
    let below_100 = took
        .iter()
        .filter(|d| **d < Duration::from_millis(100))
        .count();
    assert!(
        min >= Duration::from_millis(50),
        "a request took only {min:?}"
    );
    // Each latency is the drawn delay plus the proxy's and the client's own time, which on a
    // loaded machine with 50 client threads can push every one of them past 100 ms. If none came
    // in under 100 ms, the low half is looked for where that overhead is small: one client, one
    // request at a time, through the same proxy and rule (P(no draw under 90 ms in 40) < 1e-8).
    let low_half_seen = below_100 > 0 || {
        let mut c = proxy.connect();
        let quiet: Vec<Duration> = (0..DELAY_RANGE_QUIET_PROBES)
            .map(|i| timed(&mut c, &get(&format!("/quiet/{i}"))).1)
            .collect();
        eprintln!(
            "delay range: none of {} concurrent requests under 100 ms (load); one at a time: {:?}",
            took.len(),
            quiet
        );
        quiet.iter().any(|d| *d < Duration::from_millis(100))
    };
    assert!(
        low_half_seen,
        "no request under 100 ms: the range's low half never drawn"
    );
    assert!(
        below_100 < took.len(),
        "no request at or over 100 ms: the high half never drawn"
    );
}

#[test]
fn fault_two_delays_accumulate() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "delay:150ms", "--fault", "delay:200ms"],
    );
    let mut c = proxy.connect();

    let (resp, took) = timed(&mut c, &get("/"));

    assert!(
        took >= Duration::from_millis(350),
        "150ms + 200ms delays answered in {took:?}"
    );
    assert_eq!(resp.text(), "GET /");
}

#[test]
fn fault_error_after_matching_delay_still_delayed() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "delay:300ms:/api", "--fault", "error:503:/api"],
    );
    let mut c = proxy.connect();

    let (api, took) = timed(&mut c, &get("/api/x"));
    let other = c.roundtrip(&get("/other"));

    assert_fault(&api, "HTTP/1.1 503 Service Unavailable");
    assert!(
        took >= Duration::from_millis(300),
        "delayed error answered in {took:?}"
    );
    assert_eq!(other.text(), "GET /other");
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn fault_first_firing_error_rule_wins() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &[
            "--fault",
            "error:503:0.0",
            "--fault",
            "error:500",
            "--fault",
            "error:502",
        ],
    );
    let mut c = proxy.connect();

    let statuses: Vec<u16> = (0..20).map(|_| c.roundtrip(&get("/")).status).collect();

    assert!(
        statuses.iter().all(|&s| s == 500),
        "want only 500s, got {statuses:?}"
    );
    assert_eq!(origin.connections(), 0);
}

#[test]
fn fault_banner_lists_compiled_rules() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "error:503:0.5", "--fault", "delay:100ms:/api"],
    );

    let listed = proxy.wait_for_stderr("fault[1]", crate::support::WAIT_TIMEOUT);

    let stderr = proxy.stderr();
    assert!(listed, "no fault[1] line; stderr:\n{stderr}");
    assert!(
        stderr.contains("  fault[0] error:503:0.5"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("  fault[1] delay:100ms:/api"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn fault_forward_mode_filter_matches_absolute_url() {
    let origin = Origin::echo();
    let authority = origin.authority();
    let proxy = Proxy::start(&["--fault", "error:503:/api"]);
    let mut c = proxy.connect();

    let api = c.roundtrip(&request(
        "GET",
        &format!("http://{authority}/api/x"),
        &authority,
        &[],
        b"",
    ));
    let other = c.roundtrip(&request(
        "GET",
        &format!("http://{authority}/web"),
        &authority,
        &[],
        b"",
    ));

    assert_fault(&api, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(other.text(), "GET /web");
    assert_eq!(origin.requests().len(), 1);
}

fn connect_request(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").into_bytes()
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

#[test]
fn fault_connect_error_answers_connect() {
    let origin = RawOrigin::tcp_echo();
    let proxy = Proxy::start(&["--fault", "error:503"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip_to("CONNECT", &connect_request(&origin.authority()));

    assert_fault(&resp, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        origin.connections(),
        0,
        "tunnel target contacted despite the fault"
    );
}

#[test]
fn fault_connect_delay_postpones_tunnel() {
    let origin = RawOrigin::tcp_echo();
    let proxy = Proxy::start(&["--fault", "delay:300ms"]);
    let mut c = proxy.connect();
    let started = Instant::now();

    c.send(&connect_request(&origin.authority()));
    let established = c
        .read_exact_bytes(ESTABLISHED.len())
        .expect("the CONNECT answer");
    let took = started.elapsed();
    c.send(b"through");
    let echoed = c.read_exact_bytes(7).expect("tunnel echo");

    assert_eq!(established, ESTABLISHED);
    assert!(
        took >= Duration::from_millis(300),
        "tunnel opened after {took:?}"
    );
    assert_eq!(echoed, b"through");
}

#[test]
fn fault_connect_path_filter_never_matches_authority() {
    // For CONNECT the URL is `host:port`; a filter starts with `/`, so it cannot match.
    let origin = RawOrigin::tcp_echo();
    let proxy = Proxy::start(&["--fault", "error:503:/api"]);
    let mut c = proxy.connect();

    c.send(&connect_request(&origin.authority()));
    let established = c
        .read_exact_bytes(ESTABLISHED.len())
        .expect("the CONNECT answer");

    assert_eq!(
        String::from_utf8_lossy(&established),
        String::from_utf8_lossy(ESTABLISHED)
    );
}

#[test]
fn fault_bad_specs_exit_2_with_message() {
    let specs: &[(&str, &str)] = &[
        ("status_over_599", "error:700"),
        ("status_under_100", "error:99"),
        ("status_not_numeric", "error:abc"),
        ("error_without_status", "error:"),
        ("range_reversed", "delay:500ms-100ms"),
        ("probability_over_1", "error:503:1.5"),
        ("probability_negative", "error:503:-0.1"),
        ("probability_nan", "error:503:nan"),
        ("unknown_kind", "boom:100ms"),
        ("empty_spec", ""),
        ("delay_empty_duration", "delay:"),
        ("delay_not_numeric", "delay:abc"),
        ("delay_negative", "delay:-5ms"),
        ("delay_overflow", "delay:99999999999999999999999ms"),
        ("filter_without_slash", "delay:100ms:api"),
    ];
    let mut failures = Vec::new();

    for (name, spec) in specs {
        let (status, stderr) = Proxy::run_expect_exit(&["--fault", spec]);
        let want = format!("invalid fault spec \"{spec}\"");
        let code = status.and_then(|s| s.code());
        if code != Some(2) || !stderr.contains(&want) || stderr.contains("listening on") {
            failures.push(format!(
                "{name} ({spec:?}): exit code {code:?}, stderr {stderr:?}"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "bad specs not refused as expected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fault_pipelined_middle_request_faulted_order_kept() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/b"]);
    let mut c = proxy.connect();
    let mut burst = get("/a");
    burst.extend_from_slice(&get("/b"));
    burst.extend_from_slice(&get("/c"));

    c.send(&burst);
    let a = c.read_response().expect("response /a");
    let b = c.read_response().expect("response /b");
    let cc = c.read_response().expect("response /c");

    assert_eq!(a.text(), "GET /a");
    assert_fault(&b, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(cc.text(), "GET /c");
}

#[test]
fn fault_delay_client_gone_request_not_forwarded() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "delay:400ms"]);

    for _ in 0..20 {
        let mut c = proxy.connect();
        c.send(&get("/abandoned"));
        // Dropping the connection closes it while the request is still being delayed.
    }
    thread::sleep(Duration::from_millis(800));
    let (resp, took) = timed(&mut proxy.connect(), &get("/kept"));

    assert_eq!(resp.text(), "GET /kept");
    assert!(took >= Duration::from_millis(400));
    let targets: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        ["/kept"],
        "requests of departed clients were forwarded"
    );
}

#[test]
fn fault_error_head_request_no_body_keepalive_continues() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--fault", "error:503:/probe"]);
    let mut c = proxy.connect();

    let head = c.roundtrip_to("HEAD", &request("HEAD", "/probe", "t", &[], b""));
    let next = c.roundtrip(&get("/after"));

    assert_eq!(head.status_line(), "HTTP/1.1 503 Service Unavailable");
    assert!(head.body.is_empty());
    assert_eq!(
        next.status,
        200,
        "bytes after the HEAD answer: {:?}",
        String::from_utf8_lossy(&next.head)
    );
    assert_eq!(next.text(), "GET /after");
}

#[test]
fn fault_shutdown_summary_counts_matched_and_faulted_per_rule() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--fault", "error:503:/api", "--fault", "delay:1ms"],
    );
    let mut c = proxy.connect();
    for target in ["/api/1", "/web/1", "/api/2", "/web/2", "/api/3"] {
        c.roundtrip(&get(target));
    }
    drop(c);

    let (status, stderr) = proxy.stop();

    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    // The error rule short-circuits: the delay rule only sees the two /web requests.
    let rule_line = |index: usize| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("fault[{index}]")) && l.contains("matched"))
            .unwrap_or_else(|| panic!("no summary line for fault[{index}]; stderr:\n{stderr}"))
            .to_owned()
    };
    let error_rule = rule_line(0);
    let delay_rule = rule_line(1);
    assert!(stderr.contains("5 requests"), "stderr:\n{stderr}");
    assert!(
        error_rule.contains("matched 3") && error_rule.contains("faulted 3"),
        "{error_rule:?}"
    );
    assert!(
        delay_rule.contains("matched 2") && delay_rule.contains("faulted 2"),
        "{delay_rule:?}"
    );
}

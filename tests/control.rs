//! The control plane end to end: `--admin` probes, `/metrics` against what a client saw, the fault
//! API changing the very next request, edits under load, refusals, and `--faults-file` reloads.
//! It does not unit-test the rule grammar or the metrics encoding (`src/control` does).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    CMD_TIMEOUT, Conn, IO_TIMEOUT, Origin, Proxy, WAIT_TIMEOUT, get, output_within, pattern,
    response, wait_until,
};

/// One admin answer: status, head text, body text.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request to the admin endpoint (it closes after answering).
fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connecting to the admin endpoint");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The admin address the banner printed (`admin on http://ADDR`).
fn admin_addr(proxy: &Proxy) -> SocketAddr {
    assert!(
        proxy.wait_for_stderr("admin on http://", WAIT_TIMEOUT),
        "no admin line in the banner: {}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    let (_, rest) = stderr.split_once("admin on http://").unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A proxy with `--admin 127.0.0.1:0` plus `args`, in front of an echo origin; waits for ready.
fn start(origin: &Origin, args: &[&str]) -> (Proxy, SocketAddr) {
    let mut all = vec!["--admin", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let proxy = Proxy::reverse(origin.addr(), &all);
    let addr = admin_addr(&proxy);
    assert!(
        wait_until(WAIT_TIMEOUT, || admin(addr, "GET", "/ready", &[], "")
            .status
            == 200),
        "/ready not 200 within {WAIT_TIMEOUT:?}"
    );
    (proxy, addr)
}

/// The value of one series in a scrape (`name{labels} value`), 0 when absent.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `want` (a record lands after its answer is sent) or
/// `WAIT_TIMEOUT` passes; the last scrape (the caller asserts on it).
fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> String {
    scrape_while_not(addr, series, WAIT_TIMEOUT, |n| n >= want)
}

fn status_of(conn: &mut Conn, path: &str) -> u16 {
    let resp = conn.roundtrip(&get(path));
    resp.status_line()
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap()
}

#[test]
fn control_put_applies_to_the_very_next_request_and_delete_restores() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &[]);
    let mut conn = proxy.connect();
    assert_eq!(status_of(&mut conn, "/api/x"), 200);
    let put = admin(
        addr,
        "PUT",
        "/faults",
        &[("content-type", "text/plain")],
        "error:503:/api\n",
    );
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.header("etag"), Some("\"2\""));
    // Same keep-alive connection, sent right after the 200: already the new rules.
    assert_eq!(status_of(&mut conn, "/api/x"), 503);
    assert_eq!(status_of(&mut conn, "/other"), 200);
    let delete = admin(addr, "DELETE", "/faults", &[], "");
    assert_eq!(delete.status, 200, "{}", delete.body);
    assert_eq!(status_of(&mut conn, "/api/x"), 200);
    let listed = admin(addr, "GET", "/faults", &[], "").json();
    assert_eq!(listed["generation"], 3);
    assert_eq!(listed["workers"], serde_json::json!([3]));
    assert_eq!(listed["rules"], serde_json::json!([]));
}

#[test]
fn control_metrics_equal_what_the_client_saw() {
    let origin = Origin::echo();
    let (proxy, addr) = start(
        &origin,
        &[
            "--seed",
            "7",
            "--fault",
            "error:503:/fail",
            "--fault",
            "error:500:0.5:/half",
        ],
    );
    let initial = admin(addr, "GET", "/metrics", &[], "").body;
    for outcome in [
        "ok",
        "fault",
        "bad-request",
        "upstream-error",
        "upstream-timeout",
        "client-closed",
    ] {
        let series = format!("phantom_requests_total{{outcome=\"{outcome}\"}} 0");
        assert!(
            initial.contains(&series),
            "{series} missing from the first scrape:\n{initial}"
        );
    }
    let mut conn = proxy.connect();
    let (mut ok, mut fail, mut half_500) = (0u64, 0u64, 0u64);
    for i in 0..60 {
        let path = ["/fail", "/half", "/ok"][i % 3];
        match (path, status_of(&mut conn, path)) {
            (_, 200) => ok += 1,
            ("/fail", 503) => fail += 1,
            ("/half", 500) => half_500 += 1,
            (path, status) => panic!("{path} answered {status}"),
        }
    }
    assert_eq!(fail, 20);
    assert!(
        half_500 > 0 && half_500 < 20,
        "probability 0.5 over 20: {half_500}"
    );
    let scrape = scrape_until(addr, "phantom_requests_total{outcome=\"ok\"}", ok as f64);
    let rows: &[(&str, u64)] = &[
        ("phantom_requests_total{outcome=\"ok\"}", ok),
        ("phantom_requests_total{outcome=\"fault\"}", fail + half_500),
        (
            "phantom_faults_matched_total{rule=\"r1\",kind=\"error\"}",
            20,
        ),
        (
            "phantom_faults_injected_total{rule=\"r1\",kind=\"error\"}",
            fail,
        ),
        (
            "phantom_faults_matched_total{rule=\"r2\",kind=\"error\"}",
            20,
        ),
        (
            "phantom_faults_injected_total{rule=\"r2\",kind=\"error\"}",
            half_500,
        ),
        ("phantom_request_duration_seconds_count", 60),
        ("phantom_fault_rules_generation", 1),
    ];
    for (series, want) in rows {
        assert_eq!(metric(&scrape, series), *want as f64, "{series}\n{scrape}");
    }
    assert_eq!(
        metric(&scrape, "phantom_fault_probability_ratio{rule=\"r2\"}"),
        0.5
    );
}

#[test]
fn control_refuses_browsers_and_missing_tokens() {
    let origin = Origin::echo();
    let (_proxy, addr) = start(
        &origin,
        &["--admin-token", "s3cret", "--fault", "error:503:/x"],
    );
    let bearer = ("authorization", "Bearer s3cret");
    // (name, method, path, headers, status)
    type Row<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let rows: &[Row<'_>] = &[
        ("no_token", "DELETE", "/faults", &[], 401),
        (
            "wrong_token",
            "DELETE",
            "/faults",
            &[("authorization", "Bearer nope")],
            401,
        ),
        (
            "origin",
            "DELETE",
            "/faults",
            &[bearer, ("origin", "http://evil.example")],
            403,
        ),
        (
            "sec_fetch",
            "POST",
            "/faults/reset",
            &[bearer, ("sec-fetch-mode", "cors")],
            403,
        ),
        ("get_needs_no_token", "GET", "/faults", &[], 200),
        ("metrics_needs_no_token", "GET", "/metrics", &[], 200),
    ];
    for (name, method, path, headers, status) in rows {
        let answer = admin(addr, method, path, headers, "");
        assert_eq!(answer.status, *status, "{name}: {}", answer.body);
    }
    let listed = admin(addr, "GET", "/faults", &[], "").json();
    assert_eq!(
        listed["generation"], 1,
        "no refused request changed anything"
    );
    let delete = admin(addr, "DELETE", "/faults", &[bearer], "");
    assert_eq!(delete.status, 200, "{}", delete.body);
}

#[test]
fn control_bad_body_is_400_and_changes_nothing() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &["--fault", "error:503:/x"]);
    let answer = admin(addr, "PUT", "/faults", &[], "error:502\nerror:700\n");
    assert_eq!(answer.status, 400);
    let error = answer.json();
    assert_eq!(error["rule"], "line 2");
    assert!(
        error["expected"]
            .as_str()
            .unwrap()
            .contains("out of range 100–599"),
        "{error}"
    );
    let stale = admin(
        addr,
        "PUT",
        "/faults",
        &[("if-match", "\"9\"")],
        "error:502\n",
    );
    assert_eq!(stale.status, 412);
    let mut conn = proxy.connect();
    assert_eq!(
        status_of(&mut conn, "/x"),
        503,
        "the startup rule still answers"
    );
}

#[test]
fn control_faults_file_edit_applies_and_a_bad_edit_keeps_the_rules() {
    let origin = Origin::echo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.txt");
    std::fs::write(&path, "# start\nerror:503:/a\n").unwrap();
    let file = path.to_str().unwrap();
    let (proxy, _addr) = start(&origin, &["--faults-file", file]);
    let mut conn = proxy.connect();
    assert_eq!(status_of(&mut conn, "/a"), 503);

    // The file is polled (README: applied within a second); on a loaded machine the test waits
    // longer than that rather than assert a wall-clock bound, and fails only if it never applies.
    std::fs::write(&path, "error:502:/a\n").unwrap();
    assert!(
        wait_until(WAIT_TIMEOUT, || status_of(&mut conn, "/a") == 502),
        "edit not applied within {WAIT_TIMEOUT:?}"
    );

    // Replaced atomically, as an editor's save or a ConfigMap update does (an in-place write
    // stalled between truncating and writing for over a poll would be read as it stands).
    let staged = dir.path().join("rules.txt.new");
    std::fs::write(&staged, "error:502:/a\nerror:700\n").unwrap();
    std::fs::rename(&staged, &path).unwrap();
    assert!(
        proxy.wait_for_stderr("keeping the live rules", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    assert!(proxy.stderr().contains("line 2"), "{}", proxy.stderr());
    assert_eq!(
        status_of(&mut conn, "/a"),
        502,
        "the broken edit changed nothing"
    );

    // SIGHUP reloads (and does not stop the proxy): a fixed file applies at once.
    std::fs::write(&path, "error:504:/a\n").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(
        wait_until(WAIT_TIMEOUT, || status_of(&mut conn, "/a") == 504),
        "SIGHUP did not reload within {WAIT_TIMEOUT:?}"
    );
}

#[test]
fn control_many_puts_under_load_lose_nothing() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &[]);
    let trace_dir = trace_dir(&proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let proxy_addr = proxy.addr();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || {
                let mut conn = Conn::connect(proxy_addr);
                while !stop.load(Ordering::Relaxed) {
                    let status = status_of(&mut conn, "/api");
                    // Only what a rule set asked for: 200, or one of the two error rules.
                    assert!(matches!(status, 200 | 500 | 503), "unexpected {status}");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..200 {
        let body = match i % 3 {
            0 => "error:503:/api\n",
            1 => "error:500:/api\n",
            _ => "",
        };
        let put = admin(addr, "PUT", "/faults", &[], body);
        assert_eq!(put.status, 200, "PUT {i}: {}", put.body);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        crate::support::join_within(client, WAIT_TIMEOUT, "a client thread")
            .expect("a client saw only the faults asked for");
    }
    let listed = admin(addr, "GET", "/faults", &[], "").json();
    assert_eq!(listed["generation"], 201);
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered > 0);
    let scrape = scrape_until(
        addr,
        "phantom_request_duration_seconds_count",
        answered as f64,
    );
    assert_eq!(
        metric(&scrape, "phantom_request_duration_seconds_count"),
        answered as f64,
        "every request the clients saw answered is counted"
    );
    // Every trace record's generation explains its fault: no request saw half of two tables.
    let records = traces_at_least(&trace_dir, answered as usize);
    assert_eq!(
        records.len() as u64,
        answered,
        "one record per answered request"
    );
    // PUT i installed generation i + 2 (the startup set, no rules, is generation 1).
    let asked = |generation: u64| match generation.checked_sub(2).map(|i| i % 3) {
        Some(0) => (503, Some("error:503:/api")),
        Some(1) => (500, Some("error:500:/api")),
        _ => (200, None),
    };
    for record in &records {
        let generation = record["generation"].as_u64().expect("a generation");
        let (status, spec) = asked(generation);
        assert_eq!(record["status_code"].as_u64(), Some(status), "{record}");
        assert_eq!(record["fault"]["spec"].as_str(), spec, "{record}");
        assert_eq!(record["faults"][0]["spec"].as_str(), spec, "{record}");
    }

    // The shutdown summary agrees with /metrics: requests, and the one rule id (r1) per kind.
    let injected = metric(
        &scrape,
        "phantom_faults_injected_total{rule=\"r1\",kind=\"error\"}",
    );
    let matched = metric(
        &scrape,
        "phantom_faults_matched_total{rule=\"r1\",kind=\"error\"}",
    );
    assert!(injected > 0.0, "{scrape}");
    let (exit, stderr) = proxy.stop();
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(
        stderr.contains(&format!("phantom-fast: {answered} requests in")),
        "{stderr}"
    );
    let line = format!("  rule r1 (error): matched {matched}, faulted {injected}\n");
    assert!(stderr.contains(&line), "{line:?} not in\n{stderr}");
}

/// The trace dir the harness proxy announced (`  traces → DIR`).
fn trace_dir(proxy: &Proxy) -> std::path::PathBuf {
    assert!(
        proxy.wait_for_stderr("traces → ", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("traces → "))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no traces line:\n{stderr}"))
}

/// Every record of `phantom-fast traces --trace-dir DIR`, as JSON.
fn traces(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_phantom-fast"))
            .arg("traces")
            .arg("--trace-dir")
            .arg(dir),
        CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `traces` polled until it lists at least `want` records (each is written just after its
/// answer), or `WAIT_TIMEOUT` passes; the last listing (the caller asserts on it).
fn traces_at_least(dir: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    wait_until(WAIT_TIMEOUT, || {
        records = traces(dir);
        records.len() >= want
    });
    records
}

/// Scrapes until the proxy counts a request inside a fault (`phantom_active_faults` >= `n`);
/// fails the test after `WAIT_TIMEOUT`.
fn wait_active_faults(addr: SocketAddr, n: f64) {
    let scrape = scrape_while_not(addr, "phantom_active_faults", WAIT_TIMEOUT, |v| v >= n);
    assert!(
        metric(&scrape, "phantom_active_faults") >= n,
        "fewer than {n} requests inside a fault after {WAIT_TIMEOUT:?}:\n{scrape}"
    );
}

#[test]
fn control_ready_turns_503_while_draining_and_live_stays_200() {
    let origin = Origin::echo();
    // The delay keeps the drain going while /ready, /live and a PUT are asked; the grace
    // outlasts it.
    let (proxy, addr) = start(&origin, &["--fault", "delay:3s:/slow", "--grace", "10s"]);
    assert_eq!(admin(addr, "GET", "/live", &[], "").status, 200);
    let proxy_addr = proxy.addr();
    let in_flight = thread::spawn(move || {
        let mut conn = Conn::connect(proxy_addr);
        status_of(&mut conn, "/slow")
    });
    // In flight (inside its delay) before the SIGTERM, however late its thread ran.
    wait_active_faults(addr, 1.0);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_until(WAIT_TIMEOUT, || admin(addr, "GET", "/ready", &[], "")
            .status
            == 503),
        "/ready still 200 while draining"
    );
    assert_eq!(
        admin(addr, "GET", "/live", &[], "").status,
        200,
        "alive while draining"
    );
    // Workers keep applying edits while they drain (they used to stop ticking, so a PUT here
    // waited out the apply timeout and held the exit).
    let put = admin(addr, "PUT", "/faults", &[], "error:418:/teapot\n");
    assert_eq!(put.status, 200, "an edit while draining: {}", put.body);
    assert_eq!(
        crate::support::join_within(in_flight, WAIT_TIMEOUT, "the in-flight client").unwrap(),
        200,
        "the in-flight request finished"
    );
    let (exit, _) = proxy.stop();
    assert!(exit.success(), "{exit}");
}

/// Scrapes until `done` holds for the value of `series` or `within` passes; the last scrape.
fn scrape_while_not(
    addr: SocketAddr,
    series: &str,
    within: Duration,
    done: impl Fn(f64) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let scrape = admin(addr, "GET", "/metrics", &[], "").body;
        if done(metric(&scrape, series)) || started.elapsed() > within {
            return scrape;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn control_active_faults_count_every_holding_fault() {
    // A 256 KiB body: paced at 1 KiB/s or dribbled over 20 s, it is still being sent. The
    // delays outlast however long the six take to be inside their faults together.
    let origin = Origin::start(|_| response("200 OK", &[], &pattern(256 * 1024)));
    let (proxy, addr) = start(
        &origin,
        &[
            "--fault",
            "delay:20s:/fwd",
            "--fault",
            "delay:20s:at=head:/head",
            "--fault",
            "hang:/hang",
            "--fault",
            "bandwidth:1KiB/s:/slow",
            "--fault",
            "dribble:10,20s:/drib",
            "--fault",
            "slow-head:20s:/slowhead",
        ],
    );
    let paths = ["/fwd", "/head", "/hang", "/slow", "/drib", "/slowhead"];
    let clients: Vec<Conn> = paths
        .iter()
        .map(|path| {
            let mut conn = proxy.connect();
            conn.send(&get(path));
            conn
        })
        .collect();
    let want = paths.len() as f64;
    let scrape = scrape_while_not(addr, "phantom_active_faults", WAIT_TIMEOUT, |n| n >= want);
    assert_eq!(
        metric(&scrape, "phantom_active_faults"),
        want,
        "one per request inside a fault (delays at forward and head, hang, bandwidth, dribble, \
         slow head):\n{scrape}"
    );
    // Every holding fault leaves the gauge when its exchange ends (here: the clients go).
    drop(clients);
    let scrape = scrape_while_not(addr, "phantom_active_faults", WAIT_TIMEOUT, |n| n == 0.0);
    assert_eq!(metric(&scrape, "phantom_active_faults"), 0.0, "{scrape}");
}

/// Per rule id, the sum of the sampled delays the trace records name, in nanoseconds.
fn traced_delay_ns(records: &[serde_json::Value], rule: &str) -> u64 {
    records
        .iter()
        .flat_map(|r| r["faults"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["rule_id"] == rule)
        .map(|f| f["value"].as_u64().unwrap())
        .sum()
}

#[test]
fn control_fault_delay_seconds_are_the_applied_delays_of_every_placement() {
    let origin = Origin::echo();
    let (proxy, addr) = start(
        &origin,
        &[
            "--seed",
            "11",
            "--fault",
            "delay:20ms:0.5:/d",
            "--fault",
            "delay:30ms:at=head:/d",
            "--fault",
            "delay:7ms:1in2:at=body:/d",
        ],
    );
    let trace_dir = trace_dir(&proxy);
    let mut conn = proxy.connect();
    let requests = 20;
    for _ in 0..requests {
        assert_eq!(status_of(&mut conn, "/d"), 200);
    }
    let scrape = scrape_until(
        addr,
        "phantom_request_duration_seconds_count",
        requests as f64,
    );
    let records = traces_at_least(&trace_dir, requests);
    assert_eq!(records.len(), requests, "one record per request");
    // (rule, fixed delay in ns): each rule's total is exactly its injected count times its
    // delay, and exactly what the trace records name for it.
    for (rule, kind_ns) in [("r1", 20_000_000u64), ("r2", 30_000_000), ("r3", 7_000_000)] {
        let injected = metric(
            &scrape,
            &format!("phantom_faults_injected_total{{rule=\"{rule}\",kind=\"delay\"}}"),
        ) as u64;
        let seconds = metric(
            &scrape,
            &format!("phantom_fault_delay_seconds_total{{rule=\"{rule}\"}}"),
        );
        let ns = (seconds * 1e9).round() as u64;
        assert!(injected > 0, "{rule} injected nothing:\n{scrape}");
        assert_eq!(
            ns,
            injected * kind_ns,
            "{rule}: injected {injected}\n{scrape}"
        );
        assert_eq!(
            ns,
            traced_delay_ns(&records, rule),
            "{rule}: the records' sum"
        );
    }
    assert!(
        metric(
            &scrape,
            "phantom_faults_injected_total{rule=\"r1\",kind=\"delay\"}"
        ) < 20.0,
        "probability 0.5 over 20 requests fired on all:\n{scrape}"
    );

    // A request inside its delay while another rule is edited (the table swapped under it):
    // its delay still counts, to its rule's id.
    // Long enough to stay inside it while the scrape sees it and the other rule is posted.
    let late = admin(addr, "POST", "/faults", &[], "delay:3s:id=late:/late\n");
    assert_eq!(late.status, 201, "{}", late.body);
    let proxy_addr = proxy.addr();
    let in_flight = thread::spawn(move || {
        let mut conn = Conn::connect(proxy_addr);
        status_of(&mut conn, "/late")
    });
    let scrape = scrape_while_not(addr, "phantom_active_faults", WAIT_TIMEOUT, |n| n >= 1.0);
    assert_eq!(metric(&scrape, "phantom_active_faults"), 1.0, "{scrape}");
    let other = admin(addr, "POST", "/faults", &[], "error:418:id=other:/other\n");
    assert_eq!(other.status, 201, "{}", other.body);
    assert_eq!(
        crate::support::join_within(in_flight, WAIT_TIMEOUT, "the delayed client").unwrap(),
        200
    );
    let series = "phantom_fault_delay_seconds_total{rule=\"late\"}";
    let scrape = scrape_until(addr, series, 3.0);
    assert_eq!(metric(&scrape, series), 3.0, "{scrape}");
}

#[test]
fn control_missing_body_file_is_400_naming_the_rule_and_the_file() {
    let origin = Origin::echo();
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("503.json");
    std::fs::write(&body, "{\"down\":true}").unwrap();
    let missing = dir.path().join("gone.json");
    let rules = dir.path().join("rules.txt");
    std::fs::write(
        &rules,
        format!("error:503:body=@{}:id=api:/api\n", body.display()),
    )
    .unwrap();
    let (proxy, addr) = start(&origin, &["--faults-file", rules.to_str().unwrap()]);
    let mut conn = proxy.connect();
    assert_eq!(status_of(&mut conn, "/api"), 503);

    // (name, method, path, body): each names the rule and the file, and changes nothing.
    let spec = format!("error:502:body=@{}:id=bad:/api", missing.display());
    let rows: &[(&str, &str, &str, String)] = &[
        ("put_all", "PUT", "/faults", format!("{spec}\n")),
        ("post", "POST", "/faults", format!("{spec}\n")),
        (
            "put_one",
            "PUT",
            "/faults/api",
            format!("error:502:body=@{}:/api", missing.display()),
        ),
    ];
    for (name, method, path, body) in rows {
        let answer = admin(addr, method, path, &[], body);
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        let error = answer.json();
        let want_rule = if *path == "/faults/api" { "api" } else { "bad" };
        assert_eq!(error["rule"], want_rule, "{name}: {error}");
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains(&missing.display().to_string()),
            "{name}: the file is named: {error}"
        );
        assert_eq!(
            admin(addr, "GET", "/faults", &[], "").json()["generation"],
            1,
            "{name} changed nothing"
        );
        assert_eq!(status_of(&mut conn, "/api"), 503, "{name}");
    }

    // The rules file: the same edit keeps the old rules and says why on stderr.
    let staged = dir.path().join("rules.txt.new");
    std::fs::write(&staged, format!("{spec}\n")).unwrap();
    std::fs::rename(&staged, &rules).unwrap();
    assert!(
        proxy.wait_for_stderr("keeping the live rules", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("keeping the live rules"))
        .unwrap();
    assert!(
        line.contains("bad") && line.contains(&missing.display().to_string()),
        "names the rule and the file: {line}"
    );
    let response = conn.roundtrip(&get("/api"));
    assert_eq!(response.status, 503);
    assert_eq!(
        response.text(),
        "{\"down\":true}",
        "the old body file's answer"
    );
}

#[test]
fn control_rule_counters_are_bounded_and_kept_ids_keep_theirs() {
    let origin = Origin::echo();
    let (proxy, addr) = start(
        &origin,
        &[
            "--fault",
            "error:503:id=keep:/keep",
            "--fault",
            "error:500:id=other:/other",
        ],
    );
    let mut conn = proxy.connect();
    for _ in 0..3 {
        assert_eq!(status_of(&mut conn, "/keep"), 503);
    }
    // Editing the other rule (and adding 300 more) leaves `keep`'s counters alone.
    let many = 300;
    let mut set = String::from("error:503:id=keep:/keep\nerror:502:id=other:/other\n");
    for i in 0..many {
        // Slow heads of 1 ms: the first matching one applies, every one matches and counts.
        set.push_str(&format!("slow-head:1ms:id=m{i}:/many\n"));
    }
    let put = admin(addr, "PUT", "/faults", &[], &set);
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(status_of(&mut conn, "/many"), 200);
    assert_eq!(status_of(&mut conn, "/keep"), 503);
    // The 300 ids leave the live set at once: at most 256 keep their own series, the oldest
    // fold into rule="(removed)", and no count is lost.
    let put = admin(addr, "PUT", "/faults", &[], "error:503:id=keep:/keep\n");
    assert_eq!(put.status, 200, "{}", put.body);
    let series = "phantom_faults_matched_total{rule=\"(removed)\",kind=\"slow-head\"}";
    let scrape = scrape_until(addr, series, 1.0);
    assert_eq!(
        metric(
            &scrape,
            "phantom_faults_matched_total{rule=\"keep\",kind=\"error\"}"
        ),
        4.0,
        "{scrape}"
    );
    let own = scrape
        .lines()
        .filter(|l| l.starts_with("phantom_faults_matched_total{rule=\"m"))
        .count();
    assert_eq!(own, 256, "removed ids with their own series:\n{scrape}");
    let matched: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("phantom_faults_matched_total{") && l.contains("slow-head"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(matched, many as f64, "every match still counted:\n{scrape}");
    assert_eq!(metric(&scrape, series), (many - 256) as f64, "{scrape}");
}

#[test]
fn control_trace_ring_losses_are_in_metrics_and_agree_with_the_summary() {
    let origin = Origin::echo();
    // The smallest ring: a few hundred requests wrap it.
    let (proxy, addr) = start(&origin, &["--trace-capacity", "64KiB"]);
    let mut conn = proxy.connect();
    let requests = 600;
    for _ in 0..requests {
        assert_eq!(status_of(&mut conn, "/wrap"), 200);
    }
    let scrape = scrape_until(addr, "phantom_trace_records_total", requests as f64);
    let overwritten = metric(&scrape, "phantom_trace_records_overwritten_total");
    assert!(overwritten > 0.0, "the ring wrapped:\n{scrape}");
    assert!(overwritten < requests as f64, "{scrape}");
    assert!(
        scrape.contains("phantom_trace_records_dropped_total 0\n"),
        "{scrape}"
    );
    let (exit, stderr) = proxy.stop();
    assert!(exit.success(), "{exit}: {stderr}");
    let line = format!("traces: {requests} records, {overwritten} overwritten by newer ones");
    assert!(stderr.contains(&line), "{line:?} not in\n{stderr}");
}

#[test]
fn control_sigterm_at_the_connection_limit_still_stops() {
    // Seen once: SIGTERM under load left an `--admin` proxy running. At `--max-connections`
    // the accept loop paused without looking at the stop, so the worker never began its drain
    // while the clients kept their keep-alive connections open.
    let origin = Origin::echo();
    let (proxy, _addr) = start(&origin, &["--max-connections", "2", "--grace", "1s"]);
    let mut served: Vec<Conn> = (0..2).map(|_| proxy.connect()).collect();
    for conn in &mut served {
        assert_eq!(status_of(conn, "/"), 200);
    }
    // A third waits in the listen backlog: the worker is at its limit.
    let _queued = proxy.connect();
    thread::sleep(Duration::from_millis(100));
    let (exit, stderr) = proxy.stop();
    assert!(exit.success(), "{exit}: {stderr}");
    drop(served);
}

/// One thread of `pid` by name: (voluntary context switches, CPU time) from `/proc`.
fn thread_counters(pid: u32, name: &str) -> (u64, Duration) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
        let ns: u64 = schedstat.split(' ').next().unwrap().parse().unwrap();
        return (switches, Duration::from_nanos(ns));
    }
    panic!("no thread {name} in {pid}");
}

#[test]
fn control_an_idle_admin_costs_no_ticks_and_a_scrape_counts_what_just_happened() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &[]);
    // Idle: the worker wakes for its stop-flag poll (20 a second) and little else; a control
    // tick of its own (every 5 ms) made that 200+. The admin thread sleeps between its 100 ms
    // ticks; a wait rounded down to 0 ms made it spin through the last millisecond of each.
    thread::sleep(Duration::from_millis(300));
    let (worker0, _) = thread_counters(proxy.pid(), "pf-worker-0");
    let (_, admin0) = thread_counters(proxy.pid(), "pf-admin");
    let window = Duration::from_secs(2);
    thread::sleep(window);
    let (worker1, _) = thread_counters(proxy.pid(), "pf-worker-0");
    let (_, admin1) = thread_counters(proxy.pid(), "pf-admin");
    let wakes = (worker1 - worker0) as f64 / window.as_secs_f64();
    assert!(wakes < 100.0, "idle worker woke {wakes:.0} times a second");
    let admin_cpu = admin1 - admin0;
    assert!(
        admin_cpu < Duration::from_millis(8),
        "idle admin thread used {admin_cpu:?} of CPU in {window:?}"
    );
    // A scrape asks the workers for their counters: the request just answered is in it at once
    // (they used to report every 50 ms).
    let mut conn = proxy.connect();
    for n in 1..=3 {
        assert_eq!(status_of(&mut conn, "/x"), 200);
        let scrape = admin(addr, "GET", "/metrics", &[], "").body;
        assert_eq!(
            metric(&scrape, "phantom_requests_total{outcome=\"ok\"}"),
            f64::from(n),
            "scrape right after request {n}"
        );
    }
}

// Each injected delay that ends counts once in phantom_delay_lateness_seconds, with how long after
// its deadline it ended; an undelayed request and a delay whose client hung up count nothing.
#[test]
fn control_delay_lateness_counts_each_delay_that_ended_by_its_lateness() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &["--fault", "delay:30ms:/slow"]);
    let mut conn = proxy.connect();
    assert_eq!(status_of(&mut conn, "/fast"), 200);
    let mut gone = proxy.connect();
    gone.send(&get("/slow/gone"));
    drop(gone);
    for _ in 0..3 {
        assert_eq!(status_of(&mut conn, "/slow"), 200);
    }
    let scrape = scrape_until(
        addr,
        "phantom_requests_total{outcome=\"client-closed\"}",
        1.0,
    );
    let count = metric(&scrape, "phantom_delay_lateness_seconds_count");
    assert_eq!(count, 3.0, "{scrape}");
    let late = metric(&scrape, "phantom_delay_lateness_seconds_sum");
    assert!(late >= 0.0, "{scrape}");
    // Every count is in a bucket: the +Inf bucket holds them all, and the buckets never fall.
    let buckets: Vec<f64> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("phantom_delay_lateness_seconds_bucket{le=\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.last(), Some(&3.0), "{scrape}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{scrape}");
}

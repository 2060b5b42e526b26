//! The control plane end to end: `--admin` probes, `/metrics` against what a client saw, the fault
//! API changing the very next request, edits under load, refusals, and `--faults-file` reloads.
//! It does not unit-test the rule grammar or the metrics encoding (`src/control` does).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Conn, IO_TIMEOUT, Origin, Proxy, get};

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
        proxy.wait_for_stderr("admin on http://", Duration::from_secs(10)),
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
    let started = Instant::now();
    while admin(addr, "GET", "/ready", &[], "").status != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        thread::sleep(Duration::from_millis(20));
    }
    (proxy, addr)
}

/// The value of one series in a scrape (`name{labels} value`), 0 when absent.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `want` (workers report on their tick) or 5 s pass.
fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> String {
    let started = Instant::now();
    loop {
        let scrape = admin(addr, "GET", "/metrics", &[], "").body;
        if metric(&scrape, series) >= want || started.elapsed() > Duration::from_secs(5) {
            return scrape;
        }
        thread::sleep(Duration::from_millis(20));
    }
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
fn control_faults_file_edit_applies_within_a_second_and_a_bad_edit_keeps_the_rules() {
    let origin = Origin::echo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.txt");
    std::fs::write(&path, "# start\nerror:503:/a\n").unwrap();
    let file = path.to_str().unwrap();
    let (proxy, _addr) = start(&origin, &["--faults-file", file]);
    let mut conn = proxy.connect();
    assert_eq!(status_of(&mut conn, "/a"), 503);

    std::fs::write(&path, "error:502:/a\n").unwrap();
    let edited = Instant::now();
    while status_of(&mut conn, "/a") != 502 {
        assert!(
            edited.elapsed() < Duration::from_secs(1),
            "edit not applied within 1 s"
        );
        thread::sleep(Duration::from_millis(10));
    }

    // Replaced atomically, as an editor's save or a ConfigMap update does (an in-place write
    // stalled between truncating and writing for over a poll would be read as it stands).
    let staged = dir.path().join("rules.txt.new");
    std::fs::write(&staged, "error:502:/a\nerror:700\n").unwrap();
    std::fs::rename(&staged, &path).unwrap();
    assert!(
        proxy.wait_for_stderr("keeping the live rules", Duration::from_secs(2)),
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
    let signalled = Instant::now();
    while status_of(&mut conn, "/a") != 504 {
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "SIGHUP did not reload"
        );
        thread::sleep(Duration::from_millis(10));
    }
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
        client
            .join()
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
    let started = Instant::now();
    let records = loop {
        let records = traces(&trace_dir);
        if records.len() as u64 >= answered || started.elapsed() > Duration::from_secs(5) {
            break records;
        }
        thread::sleep(Duration::from_millis(50));
    };
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
    assert!(proxy.wait_for_stderr("traces → ", Duration::from_secs(10)));
    let stderr = proxy.stderr();
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("traces → "))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no traces line:\n{stderr}"))
}

/// Every record of `phantom-fast traces --trace-dir DIR`, as JSON.
fn traces(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom-fast"))
        .arg("traces")
        .arg("--trace-dir")
        .arg(dir)
        .output()
        .expect("running phantom-fast traces");
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

#[test]
fn control_ready_turns_503_while_draining_and_live_stays_200() {
    let origin = Origin::echo();
    let (proxy, addr) = start(&origin, &["--fault", "delay:1500ms:/slow", "--grace", "5s"]);
    assert_eq!(admin(addr, "GET", "/live", &[], "").status, 200);
    let proxy_addr = proxy.addr();
    let in_flight = thread::spawn(move || {
        let mut conn = Conn::connect(proxy_addr);
        status_of(&mut conn, "/slow")
    });
    thread::sleep(Duration::from_millis(200));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    while admin(addr, "GET", "/ready", &[], "").status != 503 {
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "/ready still 200 while draining"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        admin(addr, "GET", "/live", &[], "").status,
        200,
        "alive while draining"
    );
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the in-flight request finished"
    );
    let (exit, _) = proxy.stop();
    assert!(exit.success(), "{exit}");
}

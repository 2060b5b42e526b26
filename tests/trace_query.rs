//! End-to-end tests of the trace queries of issue 16 and the latency ledger: every `traces`
//! filter, `traces get`, `traces clear`, `--format json`, body and header rendering, bad values,
//! and `stats`' ledger, over rings a real proxy wrote with known traffic.
//! It does not test the ring or record layout (`src/trace` does) nor proxy framing.

use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{Conn, Origin, get, request, response};
use crate::trace_survival::{CliRun, DirProxy, cli, stats};

/// The trace id the `/traced` request carries in its `traceparent`.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The injected delay of `/slow`, ms.
const DELAY_MS: u64 = 40;

/// `traces --trace-dir DIR ARGS` (exit 0 asserted) as the URL paths it printed, in order.
fn paths(dir: &Path, args: &[&str]) -> Vec<String> {
    records(dir, args)
        .iter()
        .map(|r| {
            let url = r["url"].as_str().unwrap_or_default();
            url.strip_prefix("http://test.local")
                .unwrap_or(url)
                .to_owned()
        })
        .collect()
}

/// `traces --trace-dir DIR ARGS` (exit 0 asserted) as parsed records.
fn records(dir: &Path, args: &[&str]) -> Vec<Value> {
    let run = traces(dir, args);
    assert!(run.status.success(), "traces {args:?}: {}", run.stderr);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn traces(dir: &Path, args: &[&str]) -> CliRun {
    let mut all = vec!["traces", "--trace-dir", dir.to_str().expect("UTF-8 dir")];
    all.extend_from_slice(args);
    cli(&all)
}

/// RFC 3339 (UTC, ms) of now.
fn rfc3339_now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, day) = (secs / 86_400, secs % 86_400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// Known traffic, in this order, through a proxy whose rings are in `dir`:
/// early phase: `GET /a`, `POST /p` (body `hello`), `GET /missing` (404), `HEAD /h`;
/// then the returned boundary time; late phase: `GET /b` (fault 503), `GET /slow` (delayed
/// 40 ms), `GET /traced` (traceparent with [`TRACE_ID`], `Authorization`, `Cookie`,
/// `X-Api-Key` headers).
fn known_traffic(dir: &Path) -> (DirProxy, Origin, String) {
    let origin = Origin::start(|req| match req.target.as_str() {
        "/missing" => response("404 Not Found", &[], b"nope"),
        _ => crate::support::echo(req),
    });
    let upstream = origin.addr().to_string();
    let proxy = DirProxy::start(
        dir,
        &[
            "--workers",
            "1",
            "--upstream",
            &upstream,
            "--fault",
            "error:503:/b",
            "--fault",
            &format!("delay:{DELAY_MS}ms:/slow"),
        ],
    );
    let mut c = Conn::connect(proxy.addr);
    c.roundtrip(&get("/a"));
    c.roundtrip(&request("POST", "/p", "test.local", &[], b"hello"));
    c.roundtrip(&get("/missing"));
    c.roundtrip_to("HEAD", &request("HEAD", "/h", "test.local", &[], b""));
    // Records are written after the response: wait for the early phase before the boundary.
    wait_count(dir, 4);
    thread::sleep(Duration::from_millis(20));
    let boundary = rfc3339_now();
    thread::sleep(Duration::from_millis(20));
    c.roundtrip(&get("/b"));
    c.roundtrip(&get("/slow"));
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    c.roundtrip(&request(
        "GET",
        "/traced",
        "test.local",
        &[
            ("traceparent", &traceparent),
            ("authorization", "Bearer s3cret"),
            ("cookie", "session=abc"),
            ("x-api-key", "k-123"),
        ],
        b"",
    ));
    wait_count(dir, 7);
    (proxy, origin, boundary)
}

fn wait_count(dir: &Path, want: usize) {
    for _ in 0..400 {
        if paths(dir, &[]).len() >= want {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("fewer than {want} records: {:?}", paths(dir, &[]));
}

#[test]
fn trace_query_each_filter_selects_exactly() {
    let dir = tempfile::tempdir().expect("a trace dir");
    let (_proxy, _origin, boundary) = known_traffic(dir.path());
    let d = dir.path();
    let all = ["/a", "/p", "/missing", "/h", "/b", "/slow", "/traced"];
    let rows: &[(&str, &[&str], &[&str])] = &[
        ("no_filter_oldest_first", &[], &all),
        ("status_exact", &["--status", "503"], &["/b"]),
        (
            "status_class",
            &["--status", "2xx"],
            &["/a", "/p", "/h", "/slow", "/traced"],
        ),
        (
            "status_range",
            &["--status", "400-503"],
            &["/missing", "/b"],
        ),
        ("method_one", &["--method", "post"], &["/p"]),
        (
            "method_repeated",
            &["--method", "POST", "--method", "HEAD"],
            &["/p", "/h"],
        ),
        ("url", &["--url", "/sl"], &["/slow"]),
        ("faulted", &["--faulted"], &["/b", "/slow"]),
        ("trace_id", &["--trace-id", TRACE_ID], &["/traced"]),
        (
            "until_boundary",
            &["--until", &boundary],
            &["/a", "/p", "/missing", "/h"],
        ),
        (
            "since_boundary",
            &["--since", &boundary],
            &["/b", "/slow", "/traced"],
        ),
        ("since_ago_everything", &["--since", "1h"], &all),
        ("until_ago_nothing", &["--until", "1h"], &[]),
        ("limit_newest", &["--limit", "2"], &["/slow", "/traced"]),
        (
            "offset_pages_back",
            &["--limit", "2", "--offset", "2"],
            &["/h", "/b"],
        ),
        ("offset_alone", &["--offset", "5"], &["/a", "/p"]),
        (
            "reverse",
            &["--reverse", "--limit", "3"],
            &["/traced", "/slow", "/b"],
        ),
        (
            "reverse_all",
            &["--reverse"],
            &["/traced", "/slow", "/b", "/h", "/missing", "/p", "/a"],
        ),
    ];
    for (name, args, want) in rows {
        assert_eq!(paths(d, args), *want, "row {name}");
    }
}

#[test]
fn trace_query_get_json_bodies_and_redaction() {
    let dir = tempfile::tempdir().expect("a trace dir");
    let (_proxy, _origin, _) = known_traffic(dir.path());
    let d = dir.path();
    let dir_arg = d.to_str().expect("UTF-8 dir");

    // --format json: one array of the same records.
    let run = traces(d, &["--format", "json"]);
    assert!(run.status.success(), "{}", run.stderr);
    let array: Value = serde_json::from_str(&run.stdout).expect("one JSON array");
    assert_eq!(array.as_array().map(Vec::len), Some(7), "{}", run.stdout);
    let empty = traces(d, &["--format", "json", "--url", "nothing-matches"]);
    assert_eq!(
        serde_json::from_str::<Value>(&empty.stdout).ok(),
        Some(Value::Array(vec![]))
    );

    // traces get SPAN_ID: that record; an unknown one exits 1 naming it.
    let traced = &records(d, &["--trace-id", TRACE_ID])[0];
    let span = traced["span_id"].as_str().expect("span id");
    let got = cli(&["traces", "get", span, "--trace-dir", dir_arg]);
    assert!(got.status.success(), "{}", got.stderr);
    let one: Value = serde_json::from_str(got.stdout.trim()).expect("one record");
    assert_eq!(one["span_id"], span);
    assert_eq!(one["trace_id"], TRACE_ID);
    let missing = cli(&["traces", "get", "0123456789abcdef", "--trace-dir", dir_arg]);
    assert_eq!(missing.status.code(), Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("0123456789abcdef"),
        "{}",
        missing.stderr
    );

    // Redaction: authorization and cookie by default, more on request, none with --no-redact.
    let headers = |args: &[&str]| {
        records(d, &[&["--trace-id", TRACE_ID], args].concat())[0]["request_headers"].clone()
    };
    let h = headers(&[]);
    assert_eq!(h["authorization"], "[redacted]");
    assert_eq!(h["cookie"], "[redacted]");
    assert_eq!(h["x-api-key"], "k-123");
    let h = headers(&["--redact-header", "X-Api-Key"]);
    assert_eq!(h["x-api-key"], "[redacted]");
    let h = headers(&["--no-redact"]);
    assert_eq!(h["authorization"], "Bearer s3cret");
    assert_eq!(h["cookie"], "session=abc");

    // Bodies: --max-body caps them, --headers-only leaves them out; lengths stay.
    let post = |args: &[&str]| records(d, &[&["--method", "POST"], args].concat())[0].clone();
    let p = post(&[]);
    assert_eq!(p["request_body"], "hello");
    let p = post(&["--max-body", "2"]);
    assert_eq!(p["request_body"], "he");
    assert_eq!(p["request_body_truncated"], true);
    assert_eq!(p["request_body_bytes"], 5);
    let p = post(&["--headers-only"]);
    assert!(
        p.get("request_body").is_none() && p.get("response_body").is_none(),
        "{p:#}"
    );
    assert_eq!(p["request_body_bytes"], 5);
}

#[test]
fn trace_query_bad_values_exit_2_naming_value_and_expectation() {
    let dir = tempfile::tempdir().expect("a trace dir");
    let d = dir.path().to_str().expect("UTF-8 dir");
    let rows: &[(&str, &[&str], &[&str])] = &[
        (
            "status_word",
            &["traces", "--status", "teapot"],
            &["teapot", "400-499"],
        ),
        (
            "status_backwards",
            &["traces", "--status", "499-400"],
            &["499-400", "range"],
        ),
        (
            "until_garbage",
            &["traces", "--until", "yesterday"],
            &["yesterday", "RFC 3339"],
        ),
        (
            "since_no_zone",
            &["stats", "--since", "2026-01-01T00:00:00"],
            &["2026-01-01T00:00:00", "RFC 3339"],
        ),
        (
            "trace_id_short",
            &["traces", "--trace-id", "abc"],
            &["abc", "32 hex digits"],
        ),
        (
            "span_id_bad",
            &["traces", "get", "xyz"],
            &["xyz", "16 hex digits"],
        ),
        (
            "method_not_token",
            &["traces", "--method", "G T"],
            &["G T", "method token"],
        ),
        (
            "header_not_token",
            &["traces", "--redact-header", "a:b"],
            &["a:b", "field name"],
        ),
        (
            "max_body_word",
            &["traces", "--max-body", "lots"],
            &["lots", "number"],
        ),
        ("offset_negative", &["traces", "--offset", "-1"], &["-1"]),
        (
            "json_follow",
            &["traces", "--format", "json", "--follow"],
            &["json", "--follow"],
        ),
    ];
    for (name, args, wants) in rows {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--trace-dir", d]);
        let run = cli(&all);
        assert_eq!(run.status.code(), Some(2), "row {name}: {}", run.stderr);
        for want in *wants {
            assert!(
                run.stderr.contains(want),
                "row {name}: no {want:?} in {}",
                run.stderr
            );
        }
    }
}

#[test]
fn trace_clear_refused_while_proxy_runs_then_deletes_with_yes() {
    let dir = tempfile::tempdir().expect("a trace dir");
    let (proxy, _origin, _) = known_traffic(dir.path());
    let d = dir.path().to_str().expect("UTF-8 dir");
    let ring = dir.path().join("core-0.ring");
    let no_yes = cli(&["traces", "clear", "--trace-dir", d]);
    assert_ne!(no_yes.status.code(), Some(0));
    assert!(no_yes.stderr.contains("--yes"), "{}", no_yes.stderr);
    let busy = cli(&["traces", "clear", "--yes", "--trace-dir", d]);
    assert_eq!(busy.status.code(), Some(1), "{}", busy.stderr);
    assert!(
        busy.stderr.contains("running phantom-fast"),
        "{}",
        busy.stderr
    );
    assert!(ring.exists(), "a ring in use was deleted");
    let (status, stderr) = proxy.stop();
    assert!(status.success(), "{stderr}");
    // The shutdown summary carries the ledger and the ring counts of the run.
    for want in [
        "  faulted µs p50/p90/p99/p99.9: injected ",
        "  unfaulted µs p50/p90/p99/p99.9: injected 0/0/0/0  upstream ",
        "  traces: 7 records",
    ] {
        assert!(
            stderr.contains(want),
            "no {want:?} in the summary:\n{stderr}"
        );
    }
    let done = cli(&["traces", "clear", "--yes", "--trace-dir", d]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(!ring.exists(), "ring still there after clear --yes");
    assert_eq!(paths(dir.path(), &[]), Vec::<String>::new());
}

#[test]
fn trace_ledger_adds_up_on_known_delays() {
    let dir = tempfile::tempdir().expect("a trace dir");
    let (_proxy, _origin, _) = known_traffic(dir.path());
    let d = dir.path();
    for rec in records(d, &[]) {
        let n = |k: &str| rec[k].as_u64().unwrap_or_else(|| panic!("{k} in {rec:#}"));
        let upstream = n("upstream_connect_us")
            + rec["upstream_ttfb_us"].as_u64().unwrap_or(0)
            + n("upstream_body_us");
        assert_eq!(n("upstream_us"), upstream, "{rec:#}");
        assert_eq!(
            n("duration_us"),
            n("injected_delay_us") + n("upstream_us") + n("overhead_us"),
            "duration = injected + upstream + overhead: {rec:#}"
        );
        assert_eq!(n("injected_delay_ms"), n("injected_delay_us") / 1000);
    }
    let slow = &records(d, &["--url", "/slow"])[0];
    // The sampled delay exactly, not truncated to whole ms.
    assert_eq!(slow["injected_delay_us"], DELAY_MS * 1000, "{slow:#}");
    assert_eq!(slow["faults"][0]["kind"], "delay");
    assert_eq!(
        slow["faults"][0]["rule_id"], "r2",
        "the default id of the second rule"
    );
    assert_eq!(slow["faults"][0]["value"], DELAY_MS * 1_000_000);
    let refused = &records(d, &["--url", "/b"])[0];
    assert_eq!(
        refused["upstream_us"], 0,
        "a synthetic answer has no upstream share"
    );
    assert_eq!(refused["faults"][0]["value"], 503);

    let s = stats(d);
    let ledger = &s["latency_us"];
    assert_eq!(ledger["faulted"]["injected"]["count"], 2, "{ledger:#}");
    assert_eq!(
        ledger["faulted"]["injected"]["max"],
        DELAY_MS * 1000,
        "{ledger:#}"
    );
    assert_eq!(ledger["unfaulted"]["injected"]["max"], 0, "{ledger:#}");
    assert_eq!(ledger["unfaulted"]["upstream"]["count"], 5, "{ledger:#}");
    for group in ["faulted", "unfaulted"] {
        for part in ["injected", "upstream", "overhead"] {
            for p in ["p50", "p90", "p99", "p99.9"] {
                assert!(
                    ledger[group][part][p].is_u64(),
                    "{group}.{part}.{p}: {ledger:#}"
                );
            }
        }
    }
    assert_eq!(s["faults_by_kind"]["delay"], 1);
    assert_eq!(s["faults_by_kind"]["error"], 1);
}

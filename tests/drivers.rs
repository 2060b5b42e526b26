//! The same exchanges on both I/O drivers: io_uring and epoll. Everything else in the suite runs
//! on the default (`auto`) driver; this module checks that both paths serve, and that io_uring is
//! really there: a machine that refuses it fails here unless `CI_ALLOW_NO_URING=1` says that an
//! epoll-only run is expected (containers with seccomp, `kernel.io_uring_disabled`).

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{Origin, Proxy, get, request};

/// Keep-alive GETs, a POST body, a precise delay and a synthetic fault through one proxy.
fn exchanges_work_on(driver: &str) {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(
        origin.addr(),
        &[
            "--driver",
            driver,
            "--fault",
            "delay:50ms:/slow",
            "--fault",
            "error:503:/fail",
        ],
    );
    assert!(
        proxy.stderr().contains(&format!(
            "driver {}",
            if driver == "uring" {
                "io_uring"
            } else {
                driver
            }
        )),
        "banner names the driver: {}",
        proxy.stderr()
    );
    println!("driver {driver}: running");
    let mut c = proxy.connect();
    for i in 0..3 {
        let resp = c.roundtrip(&get(&format!("/ka/{i}")));
        assert_eq!(resp.status, 200, "keep-alive GET {i} on {driver}");
        assert_eq!(resp.text(), format!("GET /ka/{i}"));
    }
    let resp = c.roundtrip(&request("POST", "/post", "t", &[], b"body on the wire"));
    assert_eq!(resp.text(), "body on the wire", "POST body on {driver}");
    let started = Instant::now();
    let resp = c.roundtrip(&get("/slow"));
    assert_eq!(resp.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "delay honoured on {driver}"
    );
    let resp = c.roundtrip(&get("/fail"));
    assert_eq!(resp.status, 503, "fault on {driver}");
    assert_eq!(resp.header("x-fault-injected"), Some("phantom"));
    assert_eq!(
        origin.connections(),
        1,
        "one pooled upstream connection on {driver}"
    );
}

#[test]
fn driver_epoll_serves_keepalive_bodies_delays_faults() {
    exchanges_work_on("epoll");
    announce("epoll ran");
}

/// The variable that accepts a machine without io_uring (then `auto` runs on epoll).
const ALLOW_NO_URING: &str = "CI_ALLOW_NO_URING";

/// Says which driver ran on the test's stderr directly, past libtest's output capture, so that
/// every `cargo test` log (CI's included) shows it.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "drivers: {line}");
}

#[test]
fn driver_uring_serves_keepalive_bodies_delays_faults() {
    // io_uring can be refused (sysctl kernel.io_uring_disabled, seccomp in containers): `auto`
    // then says so and runs on epoll, and a forced `--driver uring` exits 2.
    let probe = Proxy::start(&[]);
    if probe.stderr().contains("io_uring is not available") {
        let (status, stderr) = Proxy::run_expect_exit(&["--driver", "uring"]);
        assert_eq!(status.and_then(|s| s.code()), Some(2), "stderr: {stderr}");
        let allowed = std::env::var(ALLOW_NO_URING).is_ok_and(|v| v == "1");
        announce(&format!(
            "io_uring unavailable on this kernel (forced uring refused, exit 2); `auto` runs \
             epoll; {ALLOW_NO_URING}={}",
            if allowed {
                "1: accepted"
            } else {
                "unset: failing"
            }
        ));
        assert!(
            allowed,
            "io_uring is refused on this machine, so the suite ran on epoll only; set \
             {ALLOW_NO_URING}=1 where that is expected. Proxy stderr:\n{}",
            probe.stderr()
        );
        return;
    }
    assert!(
        probe.stderr().contains("driver io_uring"),
        "`auto` chose no io_uring although it is available: {}",
        probe.stderr()
    );
    exchanges_work_on("uring");
    announce("io_uring available; `auto` and `--driver uring` ran io_uring");
}

/// The CPUs this test process may run on (`Cpus_allowed_list` of /proc/self/status).
fn allowed_cpus(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status")
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap()
        })
        .collect()
}

// Thread-per-core pins worker i to the i-th CPU the process may use. It used to pin worker 0 to
// CPU 0 whatever the mask: under `taskset -c 1` the worker left CPU 1 for CPU 0, where the load
// generator ran.
#[test]
fn workers_are_pinned_inside_the_affinity_mask_they_were_given() {
    let mine = allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap());
    let cpu = *mine.last().expect("at least one CPU");
    let origin = Origin::echo();
    let proxy = Proxy::reverse_on_cpu(origin.addr(), cpu, &[]);
    let mut conn = proxy.connect();
    assert_eq!(conn.roundtrip(&get("/")).status, 200);
    let tasks = format!("/proc/{}/task", proxy.pid());
    let worker = std::fs::read_dir(&tasks)
        .unwrap()
        .map(|t| t.unwrap().path())
        .find(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == "pf-worker-0")
        .expect("a pf-worker-0 thread");
    let status = std::fs::read_to_string(worker.join("status")).unwrap();
    assert_eq!(
        allowed_cpus(&status),
        [cpu],
        "pf-worker-0 runs where it was allowed to"
    );
}

//! The request path allocates nothing in steady state: the proxy runs in this process under a
//! counting global allocator while a keep-alive client sends requests through it, for each kind
//! of exchange: forwarded (through 16 rules that do not match), delayed by a fault, and answered
//! with a synthetic fault error.
//!
//! The origin and the client (`tests/fixed`) use fixed buffers and std blocking sockets, which allocate
//! nothing per request, so every allocation counted in the window is the proxy's.

use std::{
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use clap::Parser;
use phantom_fast::{cli::Cli, server::Server};

#[path = "counting/mod.rs"]
mod counting;

#[path = "fixed/mod.rs"]
mod fixed;

#[path = "support/wait.rs"]
#[allow(dead_code)]
mod wait;

/// How long the in-process proxy may take to stop once asked.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

use fixed::{exchange, origin, round_trip};

/// Requests that warm pools, buffers, the ring's first pages and the timer up to steady state.
const WARM_UP: u64 = 2_000;

/// A request matching only the `/delayed` rule.
const DELAYED: &[u8] = b"GET /delayed/items HTTP/1.1\r\nhost: example.test\r\naccept: */*\r\n\r\n";
/// A request matching only the `/fail` rule.
const FAILED: &[u8] = b"GET /fail/items HTTP/1.1\r\nhost: example.test\r\naccept: */*\r\n\r\n";

/// The rule set every exchange kind runs against: sixteen rules that never match the plain
/// request (so forwarding walks all of them), a 1 ms delay and an always-on synthetic 503.
fn rules() -> Vec<String> {
    let mut rules: Vec<String> = (0..16)
        .map(|i| format!("--fault=error:500:0.5:/nomatch{i}"))
        .collect();
    rules.push("--fault=delay:1ms:/delayed".to_owned());
    rules.push("--fault=error:503:/fail".to_owned());
    rules
}

/// The allocation counter is process-wide: the tests of this binary take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the proxy in-process with [`rules`] and tracing, makes `WARM_UP + requests` exchanges
/// with `exchange` on one keep-alive connection (it sends, reads and checks one response), and
/// returns the allocations per request counted over the last `requests`.
fn allocations_per_request(
    mut exchange: impl FnMut(&mut TcpStream, &mut [u8]),
    requests: u64,
) -> f64 {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let origin = origin();
    let trace_dir = tempfile::tempdir().unwrap();
    let upstream = origin.to_string();
    let rules = rules();
    let mut args = vec![
        "phantom-fast",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--upstream",
        &upstream,
        "--trace-dir",
        trace_dir.path().to_str().unwrap(),
        "--trace-capacity",
        "4MiB",
    ];
    args.extend(rules.iter().map(String::as_str));
    let config = Cli::try_parse_from(args)
        .unwrap()
        .run
        .into_config()
        .unwrap();
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || server.run(stop).unwrap())
    };
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 8192];
    for _ in 0..WARM_UP {
        exchange(&mut client, &mut buf);
    }
    let before = counting::allocations();
    for _ in 0..requests {
        exchange(&mut client, &mut buf);
    }
    let after = counting::allocations();
    drop(client);
    stop.store(true, Ordering::Relaxed);
    let summary = wait::join_within(running, STOP_TIMEOUT, "the in-process proxy").unwrap();
    assert!(
        summary.requests >= WARM_UP + requests,
        "requests counted: {}",
        summary.requests
    );
    (after - before) as f64 / requests as f64
}

#[test]
fn forwarded_through_16_rules_traced_allocates_nothing() {
    let per_request = allocations_per_request(round_trip, 10_000);
    println!("forwarded: allocations per request after warm-up: {per_request}");
    assert_eq!(per_request, 0.0, "the forwarding path allocated");
}

/// A delayed exchange allocates nothing either: the delay asks the client's socket whether it
/// hung up at its timer wake-ups (`net/watch.rs`) instead of watching it with a read that had to
/// be cancelled, and each such cancel made monoio 0.2.4's `Canceller::cancel` return a fresh
/// canceller in a new `Rc` (1.0 allocation per delayed request before issue 14).
#[test]
fn delayed_by_fault_traced_allocates_nothing() {
    // 1 ms each: 2 000 requests keep the window to a few seconds.
    let per_request = allocations_per_request(
        |s, buf| assert_eq!(exchange(s, DELAYED, buf).0, 200, "delayed"),
        2_000,
    );
    println!("delayed: allocations per request after warm-up: {per_request}");
    assert_eq!(per_request, 0.0, "the delay path allocated");
}

#[test]
fn synthetic_fault_error_traced_allocates_nothing() {
    let per_request = allocations_per_request(
        |s, buf| assert_eq!(exchange(s, FAILED, buf).0, 503, "synthetic"),
        10_000,
    );
    println!("synthetic 503: allocations per request after warm-up: {per_request}");
    assert_eq!(per_request, 0.0, "the synthetic-error path allocated");
}

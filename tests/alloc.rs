//! The request path allocates nothing in steady state: the proxy runs in this process under a
//! counting global allocator while a keep-alive client sends 10 000 requests through it.
//!
//! The origin and the client (`tests/fixed`) use fixed buffers and std blocking sockets, which allocate
//! nothing per request, so every allocation counted in the window is the proxy's.

use std::{
    net::TcpStream,
    sync::{
        Arc,
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

use fixed::{origin, round_trip};

fn allocations_per_request(extra_args: &[&str]) -> f64 {
    let origin = origin();
    let trace_dir = tempfile::tempdir().unwrap();
    let upstream = origin.to_string();
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
    args.extend_from_slice(extra_args);
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
    // Warm-up: pools, buffers, the ring's first pages and the timer wheel reach steady state.
    for _ in 0..2_000 {
        round_trip(&mut client, &mut buf);
    }
    const REQUESTS: u64 = 10_000;
    let before = counting::allocations();
    for _ in 0..REQUESTS {
        round_trip(&mut client, &mut buf);
    }
    let after = counting::allocations();
    drop(client);
    stop.store(true, Ordering::Relaxed);
    let summary = running.join().unwrap();
    assert!(
        summary.requests >= 12_000,
        "requests counted: {}",
        summary.requests
    );
    (after - before) as f64 / REQUESTS as f64
}

#[test]
fn request_path_with_traces_and_faults_allocates_nothing() {
    // Sixteen rules that never match, plus tracing: the full per-request work.
    let faults: Vec<String> = (0..16)
        .map(|i| format!("--fault=error:500:0.5:/nomatch{i}"))
        .collect();
    let mut args: Vec<&str> = faults.iter().map(String::as_str).collect();
    args.push("--fault=delay:0ms:/api");
    let per_request = allocations_per_request(&args);
    println!("allocations per request after warm-up: {per_request}");
    assert_eq!(per_request, 0.0, "the request path allocated");
}

//! What phantom-fast adds per request: one keep-alive client doing request/response over
//! loopback against a minimal origin, directly and through the proxy (tracing off and on).
//! The difference between `direct` and the others is the proxy's added latency per request.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::{cli::Cli, server::Server};

#[path = "../tests/fixed/mod.rs"]
mod fixed;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A one-worker proxy in front of `origin`, stopped when the guard drops.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    _trace_dir: tempfile::TempDir,
}

impl Proxy {
    fn start(origin: SocketAddr, traces: bool) -> Proxy {
        let trace_dir = tempfile::tempdir().expect("temp dir");
        let upstream = origin.to_string();
        let dir = trace_dir
            .path()
            .to_str()
            .expect("utf-8 temp path")
            .to_owned();
        let mut args = vec!["phantom-fast", "--listen", "127.0.0.1:0", "--workers", "1"];
        args.extend(["--upstream", &upstream, "--trace-dir", &dir]);
        if !traces {
            args.push("--no-traces");
        }
        let config = Cli::try_parse_from(args)
            .expect("valid flags")
            .run
            .into_config()
            .expect("config");
        let server = Server::bind(config).expect("bind");
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            server.run(flag).expect("proxy runs");
        });
        Proxy {
            addr,
            stop,
            thread: Some(thread),
            _trace_dir: trace_dir,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bench_round_trip(c: &mut Criterion) {
    let origin = fixed::origin();
    let mut group = c.benchmark_group("proxy_overhead");
    group.throughput(Throughput::Elements(1));
    let mut buf = vec![0u8; 8192];
    let mut run = |name: &str, addr: SocketAddr| {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        group.bench_function(name, |b| {
            b.iter(|| fixed::round_trip(&mut stream, &mut buf))
        });
    };
    run("direct", origin);
    let proxy = Proxy::start(origin, false);
    run("phantom-fast", proxy.addr);
    drop(proxy);
    let proxy = Proxy::start(origin, true);
    run("phantom-fast+traces", proxy.addr);
    drop(proxy);
    group.finish();
}

criterion_group!(benches, bench_round_trip);
criterion_main!(benches);

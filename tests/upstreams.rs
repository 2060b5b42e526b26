//! Upstream names with several addresses (issue 15 §2): new requests spread over them, a
//! refused connect moves on to the next, and only all of them refusing is a 502; in reverse mode
//! and for forward-mode `CONNECT` tunnels alike. The proxy runs in this process with a `Config`
//! whose names no resolver knows (`moving.test`), their addresses scripted: the worker's name
//! cache holds exactly those for the TTL, so no lookup runs. It does not cover re-resolution
//! after the TTL, nor connect timeouts sharing --upstream-timeout (unit tests in
//! `src/upstream/resolve.rs` cover the first).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use clap::Parser;
use phantom_fast::{
    cli::Cli,
    config::{Config, Mode, Upstream},
    server::Server,
};

use crate::support::{
    Conn, Origin, WAIT_TIMEOUT, assert_proxy_error, closed_port, get, wait_until,
};

/// The upstream name: nothing resolves it, so only the scripted addresses can be used.
const NAME: &str = "moving.test:80";

/// A proxy served by a thread of this process, stopped (and joined) on drop.
struct InProcess {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcess {
    /// One worker in front of `NAME`, which "resolved" to `addrs` at startup.
    fn start(addrs: Vec<SocketAddr>) -> InProcess {
        let placeholder = addrs[0].to_string();
        let mut config = config(&["--upstream", &placeholder]);
        config.mode = Mode::Reverse(Upstream {
            authority: NAME.to_owned(),
            addrs,
            host_override: None,
            tls: None,
        });
        InProcess::run(config)
    }

    /// One forward-mode worker that knows `NAME` as `addrs`.
    fn forward(addrs: Vec<SocketAddr>) -> InProcess {
        let mut config = config(&[]);
        config.hosts = vec![(NAME.to_owned(), addrs)];
        InProcess::run(config)
    }

    fn run(config: Config) -> InProcess {
        let server = Server::bind(config).expect("binding 127.0.0.1:0");
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                server.run(stop).expect("the proxy runs");
            })
        };
        InProcess {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

/// One worker on `127.0.0.1:0`, no traces, plus `extra` flags.
fn config(extra: &[&str]) -> Config {
    let mut args = vec![
        "phantom-fast",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-traces",
    ];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
        .expect("valid flags")
        .run
        .into_config()
        .expect("a valid config")
}

/// `CONNECT NAME`, then a `GET` through the tunnel: the tunnel's status and the origin's.
fn tunnel_get(proxy: SocketAddr, target: &str) -> (u16, Option<u16>) {
    let mut c = Conn::connect(proxy);
    let connect = format!("CONNECT {NAME} HTTP/1.1\r\nhost: {NAME}\r\n\r\n");
    let resp = c.roundtrip_to("CONNECT", connect.as_bytes());
    if resp.status != 200 {
        return (resp.status, None);
    }
    (200, Some(c.roundtrip(&get(target)).status))
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if wait_until(WAIT_TIMEOUT, || thread.is_finished()) {
                let _ = thread.join();
            } else if !thread::panicking() {
                panic!("the in-process proxy did not stop within {WAIT_TIMEOUT:?}");
            }
        }
    }
}

#[test]
fn upstream_refused_address_moves_on_to_the_next() {
    let origin = Origin::echo();
    let proxy = InProcess::start(vec![closed_port(), origin.addr()]);
    let mut c = Conn::connect(proxy.addr);

    let statuses: Vec<u16> = (0..4)
        .map(|i| c.roundtrip(&get(&format!("/r/{i}"))).status)
        .collect();

    assert_eq!(statuses, [200; 4], "a refused address reached the client");
    assert_eq!(origin.requests().len(), 4);
}

#[test]
fn upstream_new_requests_spread_over_every_address() {
    let (a, b) = (Origin::echo(), Origin::echo());
    let proxy = InProcess::start(vec![a.addr(), b.addr()]);
    let mut c = Conn::connect(proxy.addr);

    for i in 0..10 {
        assert_eq!(c.roundtrip(&get(&format!("/s/{i}"))).status, 200);
    }

    assert_eq!(
        (a.requests().len(), b.requests().len()),
        (5, 5),
        "requests not spread over both addresses"
    );
}

#[test]
fn upstream_every_address_refused_is_502() {
    let proxy = InProcess::start(vec![closed_port(), closed_port()]);
    let mut c = Conn::connect(proxy.addr);

    let resp = c.roundtrip(&get("/all-closed"));

    assert_proxy_error(&resp, 502);
}

#[test]
fn connect_refused_address_moves_on_to_the_next() {
    let origin = Origin::echo();
    let proxy = InProcess::forward(vec![closed_port(), origin.addr()]);

    // Round-robin: the first tunnel starts at the closed address, the second at the open one.
    let got: Vec<(u16, Option<u16>)> = (0..2)
        .map(|i| tunnel_get(proxy.addr, &format!("/t/{i}")))
        .collect();

    assert_eq!(
        got,
        [(200, Some(200)); 2],
        "a refused address ended a tunnel"
    );
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn connect_every_address_refused_is_502() {
    let proxy = InProcess::forward(vec![closed_port(), closed_port()]);

    let (status, _) = tunnel_get(proxy.addr, "/never");

    assert_eq!(status, 502);
}

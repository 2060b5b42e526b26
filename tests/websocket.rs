//! WebSocket pass-through end to end: a real RFC 6455 server and client (Python `websockets`,
//! installed by `scripts/ws-deps.sh`) through the proxy in both modes: echoed messages, binary
//! frames, both close handshakes, a refused upgrade, plain HTTP beside it, the idle timeout on a
//! silent tunnel, faults on the handshake and the trace record written when the tunnel closes;
//! and the same inside TLS: `wss://` through `--mitm`, and an https listener in front of an https
//! upstream. It does not cover opaque `CONNECT` tunnels (`forward`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    CMD_TIMEOUT, Proxy, WAIT_TIMEOUT, child_output_within, output_within, request,
};
use crate::tls::{Leaf, TestPki};

/// The binary under test, for reading its traces.
const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");
/// How long the Python server may take to print its port (a cold interpreter on a busy box).
const SERVER_START: Duration = Duration::from_secs(30);
/// How long a record may take to appear after the tunnel closed.
const RECORD_WAIT: Duration = WAIT_TIMEOUT;
/// A handshake any RFC 6455 server accepts (the RFC's own sample key).
const HANDSHAKE_HEADERS: &[(&str, &str)] = &[
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws/peer.py")
}

/// The Python echo server on `127.0.0.1:<ephemeral>`, killed on drop.
struct WsServer {
    child: Child,
    port: u16,
}

impl WsServer {
    fn start() -> WsServer {
        WsServer::spawn(&[])
    }

    /// A `wss://` server with this certificate and key.
    fn start_tls(cert: &Path, key: &Path) -> WsServer {
        WsServer::spawn(&[cert.to_str().unwrap(), key.to_str().unwrap()])
    }

    fn spawn(tls: &[&str]) -> WsServer {
        let mut child = Command::new("python3")
            .arg(peer_script())
            .arg("server")
            .args(tls)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/ws-deps.sh installs what the tests need)");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(SERVER_START).unwrap_or_default();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "the WebSocket server printed {line:?} and exited {status:?}: is `websockets` \
                 installed? run scripts/ws-deps.sh"
            );
        };
        WsServer { child, port }
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `peer.py ARGS` and asserts it reports `ok`.
fn run_peer(args: &[&str], proxy: &Proxy) {
    let child = Command::new("python3")
        .arg(peer_script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running the WebSocket client");
    let Output { status, stdout, .. } =
        child_output_within(child, CMD_TIMEOUT, &format!("peer.py {args:?}"));
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success() && stdout.starts_with("ok "),
        "peer.py {args:?} exited {status}: {stdout}; proxy stderr:\n{}",
        proxy.stderr()
    );
}

/// A reverse proxy in front of the server, and a client scenario through it.
fn reverse_scenario(scenario: &str, path: &str) {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority()]);
    let url = format!("ws://{}{path}", proxy.addr());
    run_peer(&["client", &url, scenario], &proxy);
}

#[test]
fn websocket_reverse_1000_messages_echoed() {
    reverse_scenario("echo", "/echo");
}

#[test]
fn websocket_reverse_binary_frames_echoed() {
    reverse_scenario("binary", "/bin");
}

#[test]
fn websocket_reverse_client_close_handshake_completes() {
    reverse_scenario("close", "/close");
}

#[test]
fn websocket_reverse_server_initiated_close_reaches_client() {
    reverse_scenario("server-close", "/server-close");
}

#[test]
fn websocket_reverse_refused_upgrade_is_relayed_as_a_response() {
    reverse_scenario("refused", "/refuse");
}

#[test]
fn websocket_forward_absolute_form_upgrade_1000_messages_and_close() {
    let server = WsServer::start();
    let proxy = Proxy::start(&[]);
    let (addr, origin) = (proxy.addr().to_string(), server.authority());
    run_peer(&["raw", &addr, &origin, "echo"], &proxy);
}

#[test]
fn websocket_plain_http_beside_upgrades_stays_http() {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority()]);
    let url = format!("ws://{}/echo", proxy.addr());
    run_peer(&["client", &url, "echo"], &proxy);
    let mut c = proxy.connect();

    // A client that never upgrades: the server's 426 comes back as a normal response…
    let plain = c.roundtrip(&request("GET", "/", "t", &[], b""));
    // …and an upgrade refused on the same connection leaves it HTTP as well.
    let refused = c.roundtrip(&request("GET", "/refuse", "t", HANDSHAKE_HEADERS, b""));
    let again = c.roundtrip(&request("GET", "/", "t", &[], b""));

    assert_eq!(
        plain.status,
        426,
        "head {:?}",
        String::from_utf8_lossy(&plain.head)
    );
    assert_eq!(
        refused.status,
        403,
        "head {:?}",
        String::from_utf8_lossy(&refused.head)
    );
    assert_eq!(again.status, 426, "the connection stopped being HTTP");
}

#[test]
fn websocket_upgrade_on_post_is_not_forwarded() {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority()]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("POST", "/echo", "t", HANDSHAKE_HEADERS, b""));

    assert_ne!(resp.status, 101, "a POST was upgraded");
}

#[test]
fn websocket_silent_tunnel_closes_after_idle_timeout() {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority(), "--idle-timeout", "1s"]);
    let mut c = proxy.connect();
    c.send(&request("GET", "/echo", "t", HANDSHAKE_HEADERS, b""));
    let head = c.read_head().expect("reading the 101").expect("a 101 head");
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let started = Instant::now();

    assert_eq!(c.wait_closed(), Ok(()), "silent tunnel still open");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before --idle-timeout 1s"
    );
}

#[test]
fn websocket_error_fault_refuses_the_handshake() {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority(), "--fault", "error:503"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("GET", "/echo", "t", HANDSHAKE_HEADERS, b""));

    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-fault-injected"), Some("phantom"));
}

#[test]
fn websocket_record_written_at_close_with_bytes_each_way() {
    let server = WsServer::start();
    let proxy = Proxy::start(&["--upstream", &server.authority(), "--fault", "delay:50ms"]);
    let url = format!("ws://{}/echo", proxy.addr());
    run_peer(&["client", &url, "echo"], &proxy);

    let record = wait_for_record(proxy.trace_dir(), 101);

    // 1 000 messages each way (permessage-deflate may shrink the payloads, not the frame
    // headers): a masked client frame has at least 6 header bytes, a server frame at least 2.
    let sent = record["request_body_bytes"].as_u64().unwrap_or(0);
    let received = record["response_body_bytes"].as_u64().unwrap_or(0);
    assert!(sent >= 6_000, "client → server bytes {sent} in {record}");
    assert!(
        received >= 2_000,
        "server → client bytes {received} in {record}"
    );
    let duration = record["duration_us"].as_u64().unwrap_or(0);
    assert!(
        duration >= 50_000,
        "duration {duration} µs misses the 50 ms delay: {record}"
    );
    assert_eq!(record["outcome"], "ok", "{record}");
}

/// The first trace record with `status_code == status`, polled until it appears.
fn wait_for_record(dir: &Path, status: u64) -> Value {
    let started = Instant::now();
    loop {
        let out = output_within(
            Command::new(BIN).args(["traces", "--trace-dir"]).arg(dir),
            CMD_TIMEOUT,
        );
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["status_code"].as_u64() == Some(status));
        if let Some(record) = found {
            return record;
        }
        assert!(
            started.elapsed() < RECORD_WAIT,
            "no record with status {status}; traces printed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `wss://` through `--mitm`: the client trusts our CA, we trust the server's (a test CA).
// See: issue 16 ("with --mitm, wss:// works the same inside TLS").
#[test]
fn websocket_mitm_wss_1000_messages_and_close_recorded_at_close() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let server = WsServer::start_tls(&cert, &key);
    let ca_dir = tempfile::tempdir().unwrap();
    let test_ca = pki.path("ca.pem");
    let proxy = Proxy::start(&[
        "--mitm",
        "--ca-dir",
        ca_dir.path().to_str().unwrap(),
        "--upstream-ca",
        test_ca.to_str().unwrap(),
    ]);
    assert!(
        proxy.wait_for_stderr("MITM on", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let our_ca = ca_dir.path().join("ca.pem");
    let proxy_url = format!("http://{}", proxy.addr());
    let url = format!("wss://localhost:{}/echo", server.port);
    run_peer(
        &["client", &url, "echo", our_ca.to_str().unwrap(), &proxy_url],
        &proxy,
    );

    let record = wait_for_record(proxy.trace_dir(), 101);
    assert_eq!(
        record["url"],
        format!("https://localhost:{}/echo", server.port),
        "{record}"
    );
    let sent = record["request_body_bytes"].as_u64().unwrap_or(0);
    let received = record["response_body_bytes"].as_u64().unwrap_or(0);
    assert!(sent >= 6_000, "client → server bytes {sent} in {record}");
    assert!(
        received >= 2_000,
        "server → client bytes {received} in {record}"
    );
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["client_tls"]["server_name"], "localhost", "{record}");
    assert_eq!(
        record["upstream_tls"]["verification"], "verified",
        "{record}"
    );
    // The ledger: the tunnel's life is the upstream's body time; the parts add up.
    let n = |k: &str| {
        record[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {record}"))
    };
    assert!(n("upstream_body_us") > 0, "{record}");
    assert_eq!(
        n("duration_us"),
        n("injected_delay_us") + n("upstream_us") + n("overhead_us"),
        "{record}"
    );
}

/// An https listener in front of an https upstream, both directions of close, and the idle
/// timeout on a silent TLS tunnel.
#[test]
fn websocket_https_listener_to_https_upstream_echo_closes_and_idle() {
    let pki = TestPki::new();
    let (origin_cert, origin_key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let (cert, key) = pki.leaf("listener", &["localhost"], Leaf::Good);
    let server = WsServer::start_tls(&origin_cert, &origin_key);
    let test_ca = pki.path("ca.pem");
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("https://localhost:{}", server.port),
        "--upstream-ca",
        test_ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--idle-timeout",
        "1s",
    ]);
    let url = format!("wss://localhost:{}/echo", proxy.addr().port());
    let ca = test_ca.to_str().unwrap();
    for scenario in ["echo", "binary", "close", "server-close"] {
        run_peer(&["client", &url, scenario, ca], &proxy);
    }
    let started = Instant::now();
    run_peer(&["client", &url, "silent", ca], &proxy);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before --idle-timeout 1s"
    );
    let record = wait_for_record(proxy.trace_dir(), 101);
    assert!(
        record["client_tls"]["version"].is_string()
            && record["upstream_tls"]["version"].is_string(),
        "{record}"
    );
}

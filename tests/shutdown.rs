//! Shutdown under load (issue 15 §3): SIGTERM while 64 keep-alive connections each have 32
//! pipelined requests waiting behind `--fault delay:300ms-800ms` (2 048 in flight) and one
//! request sits in a slow origin. New connections are refused, the in-flight requests finish
//! within `--grace` and their last response says `connection: close`, no response is cut short,
//! every answered request has its trace record, and the process exits 0 with its summary.
//!
//! The proxy is spawned here (not through `Proxy::stop`) because the trace dir must outlive the
//! process to be read with `traces --trace-dir`.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{CMD_TIMEOUT, Origin, join_within, output_within, response, wait_child};

const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");
/// Keep-alive client connections driving the load.
const CONNECTIONS: usize = 64;
/// Requests each connection pipelines up front (64 × 32 = 2 048 in flight).
const PIPELINED: usize = 32;
/// How long the load runs before SIGTERM (a few delayed answers per connection).
const LOAD_BEFORE_SIGTERM: Duration = Duration::from_millis(1200);
/// How long the origin holds the one slow request: it is still in flight when new connections
/// must already be refused.
const SLOW_ORIGIN: Duration = Duration::from_secs(4);
/// The grace the proxy gets; well above the slowest in-flight request (0.8 s delay + 4 s).
const GRACE: &str = "8s";
/// Generous bounds for a debug build on two loaded cores; they only stop a hang.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(20);
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// The Host every client sends; trace urls are `http://HOST/PATH`.
const HOST: &str = "shutdown.test";

/// What one client connection saw.
#[derive(Default)]
struct ConnLog {
    /// Paths answered with a complete, correct response, in order.
    answered: Vec<String>,
    /// Whether the last complete response said `connection: close`.
    last_close: bool,
    /// Whether a `connection: close` response came before the last one (it must be the last).
    close_not_last: bool,
    /// A response cut short, a wrong body, a reset, or a timeout: the failure, if any.
    error: Option<String>,
    /// How the connection ended after the last response (EOF expected).
    ended: Option<String>,
}

/// The body the origin answers `path` with: long enough to span reads, checkable per byte.
fn body_for(path: &str) -> Vec<u8> {
    format!("{path};").repeat(64).into_bytes()
}

#[test]
fn shutdown_under_load_finishes_in_flight_and_refuses_new() {
    let slow_received = Arc::new(AtomicBool::new(false));
    let origin = {
        let slow_received = Arc::clone(&slow_received);
        Origin::start(move |req| {
            if req.target == "/slow" {
                slow_received.store(true, Ordering::SeqCst);
                thread::sleep(SLOW_ORIGIN);
            }
            response("200 OK", &[], &body_for(&req.target))
        })
    };
    let trace_dir = tempfile::tempdir().expect("a temp trace dir");
    let upstream = origin.addr().to_string();
    let (child, addr, stderr) = spawn(
        trace_dir.path(),
        &[
            "--upstream",
            &upstream,
            "--fault",
            "delay:300ms-800ms",
            "--grace",
            GRACE,
        ],
    );
    let mut child = KillOnDrop(child);

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let paths: Vec<String> = (0..PIPELINED).map(|i| format!("/c{c}/r{i}")).collect();
            thread::spawn(move || drive(addr, &paths))
        })
        .collect();
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow = {
        let slow_done = Arc::clone(&slow_done);
        thread::spawn(move || {
            let log = drive(addr, &["/slow".to_owned()]);
            slow_done.store(true, Ordering::SeqCst);
            log
        })
    };
    let started = Instant::now();
    while !slow_received.load(Ordering::SeqCst) || started.elapsed() < LOAD_BEFORE_SIGTERM {
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "the origin never got /slow; stderr:\n{}",
            lock(&stderr)
        );
        thread::sleep(POLL);
    }
    signal(&child.0, "-TERM");

    // New connections are refused while requests are still in flight (the slow one at least).
    let refused_at = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            refused_at.elapsed() < REFUSAL_TIMEOUT,
            "connections still accepted {REFUSAL_TIMEOUT:?} after SIGTERM"
        );
        thread::sleep(POLL);
    }
    assert!(
        !slow_done.load(Ordering::SeqCst),
        "the slow connection ended (answered or cut) before new connections were refused"
    );
    assert!(
        child.0.try_wait().expect("polling the proxy").is_none(),
        "the proxy exited before the in-flight slow request was answered"
    );

    let status = wait_deadline(&mut child.0, EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no exit within {EXIT_TIMEOUT:?} of SIGTERM (grace {GRACE}); stderr:\n{}",
            lock(&stderr)
        )
    });
    let stderr = lock(&stderr).clone();
    assert!(
        status.success(),
        "exit {status} after SIGTERM; stderr:\n{stderr}"
    );

    // The proxy exited: every connection is closed, each client ends at its next read.
    let mut logs: Vec<ConnLog> = clients
        .into_iter()
        .map(|c| join_within(c, CLIENT_READ_TIMEOUT, "a client thread").expect("a client thread"))
        .collect();
    let slow = join_within(slow, CLIENT_READ_TIMEOUT, "the slow client thread")
        .expect("the slow client thread");
    assert_eq!(
        slow.answered,
        ["/slow"],
        "the in-flight slow request did not finish within the grace: {:?} / {:?}",
        slow.error,
        slow.ended
    );
    logs.push(slow);

    let mut answered = Vec::new();
    for (c, log) in logs.iter().enumerate() {
        assert!(
            log.error.is_none(),
            "connection {c}: {} after {} answers",
            log.error.as_deref().unwrap_or_default(),
            log.answered.len()
        );
        // Every connection had a request in flight at SIGTERM: it was answered, with close.
        assert!(
            !log.answered.is_empty() && log.last_close && !log.close_not_last,
            "connection {c}: {} answers, last with close: {}, close before the last: {}",
            log.answered.len(),
            log.last_close,
            log.close_not_last
        );
        assert_eq!(
            log.ended.as_deref(),
            Some("eof"),
            "connection {c}: after its close response"
        );
        answered.extend(log.answered.iter().cloned());
    }

    // The summary counts at least what the clients got.
    let line = stderr
        .lines()
        .find(|l| l.starts_with("phantom-fast: ") && l.contains(" requests in "))
        .unwrap_or_else(|| panic!("no summary after SIGTERM; stderr:\n{stderr}"));
    let counted: usize = line["phantom-fast: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary line {line:?}"));
    assert!(
        counted >= answered.len(),
        "summary counts {counted} requests, clients got {}: {line}",
        answered.len()
    );

    // Every answered request has its trace record, with the status the client saw.
    let traced: HashSet<String> = traces(trace_dir.path())
        .iter()
        .filter(|r| r["status_code"] == 200)
        .filter_map(|r| r["url"].as_str())
        .filter_map(|u| u.strip_prefix(&format!("http://{HOST}")).map(str::to_owned))
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|p| !traced.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no trace record: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(10)]
    );
}

/// One keep-alive connection: sends every request at once (pipelined), then reads responses in
/// order until the proxy closes or all are answered.
fn drive(addr: SocketAddr, paths: &[String]) -> ConnLog {
    let mut log = ConnLog::default();
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            log.error = Some(format!("connect: {e}"));
            return log;
        }
    };
    stream
        .set_read_timeout(Some(CLIENT_READ_TIMEOUT))
        .expect("read timeout");
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(format!("GET {p} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes());
    }
    if let Err(e) = stream.write_all(&out) {
        log.error = Some(format!("sending: {e}"));
        return log;
    }
    let mut reader = BufReader::new(stream);
    for p in paths {
        match read_response(&mut reader) {
            Ok(None) => {
                log.ended = Some("eof".to_owned());
                return log;
            }
            Ok(Some((head, body))) => {
                if !head.starts_with("HTTP/1.1 200 ") {
                    log.error = Some(format!("{p}: {head:?}"));
                    return log;
                }
                if body != body_for(p) {
                    log.error = Some(format!("{p}: wrong body of {} bytes", body.len()));
                    return log;
                }
                log.close_not_last |= log.last_close;
                log.last_close = head
                    .to_ascii_lowercase()
                    .lines()
                    .any(|l| l.trim() == "connection: close");
                log.answered.push(p.clone());
            }
            Err(e) => {
                log.error = Some(format!("{p}: {e}"));
                return log;
            }
        }
    }
    // All answered: the proxy must still close (the last one was in flight at SIGTERM).
    let mut rest = Vec::new();
    log.ended = Some(match reader.read_to_end(&mut rest) {
        Ok(0) => "eof".to_owned(),
        Ok(n) => format!("{n} stray bytes"),
        Err(e) => e.to_string(),
    });
    log
}

/// A response head (as text) and its `content-length` body; `None` on EOF before any byte.
/// A head or body cut short is an error.
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::other(format!("head cut short: {head:?}")));
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other(format!("no content-length: {head:?}")))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| io::Error::other(format!("body cut short ({e}) after {head:?}")))?;
    Ok(Some((head, body)))
}

/// Spawns the proxy with one worker on `127.0.0.1:0`; waits for its `listening on` line.
fn spawn(trace_dir: &std::path::Path, args: &[&str]) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--trace-dir"])
        .arg(trace_dir)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("XDG_DATA_HOME", trace_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning phantom-fast");
    let pipe = child.stderr.take().expect("stderr piped");
    let seen = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    {
        let seen = Arc::clone(&seen);
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line
                    .split_once("listening on ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                let mut seen = lock(&seen);
                seen.push_str(&line);
                seen.push('\n');
            }
        });
    }
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(addr) => (child, addr, seen),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "phantom-fast {args:?} never listened ({e}); stderr:\n{}",
                lock(&seen)
            );
        }
    }
}

/// `traces --trace-dir DIR` as parsed JSON Lines; panics unless it exits 0.
fn traces(dir: &std::path::Path) -> Vec<Value> {
    let out = output_within(
        Command::new(BIN).arg("traces").arg("--trace-dir").arg(dir),
        CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "traces failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("traces line {l:?}: {e}")))
        .collect()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .expect("running kill(1)");
    assert!(status.success(), "kill {sig} {}: {status}", child.id());
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_child(child, timeout)
}

/// Kills and reaps the proxy when the test panics before it exited.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

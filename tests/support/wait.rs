//! Bounded waiting, the one way a test waits for something: a condition polled to a deadline,
//! a child process run or reaped to a deadline, a thread joined to a deadline, and loopback
//! ports held for as long as a test needs them. Every wait here ends in a panic that says what
//! did not happen, never in a hang; the bounds are generous (a debug build on two loaded cores)
//! and only stop a stuck test, they measure nothing.
//!
//! Self-contained, so that the test binaries outside `integration` (the allocation proofs)
//! include it with `#[path]` too.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How often a bounded wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a test waits for something the proxy must do by itself (a record written, a counter
/// reached, a rules file applied, a connection closed) before calling it stuck.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child process the tests run to its end (`traces`, `stats`, openssl, curl, a Python
/// peer) may take before it is killed and the test fails.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `done` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for `child` to exit, for at most `timeout`; `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("polling a child process") {
            return Some(status);
        }
        if started.elapsed() > timeout {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// `cmd.output()` bounded by `timeout`: stdin from /dev/null, stdout and stderr captured. A run
/// that does not exit in time is killed and the test fails with what it printed so far.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    child_output_within(child, timeout, &format!("{cmd:?}"))
}

/// `child.wait_with_output()` bounded by `timeout` (for a child whose stdin the caller feeds);
/// kills it and panics naming `what` if it does not exit in time. Its stdout and stderr must be
/// piped (or not captured: they come back empty).
pub fn child_output_within(mut child: Child, timeout: Duration, what: &str) -> Output {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The pipes close with the process (killed or not), so the readers end.
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader.map_or_else(Vec::new, |r| {
            join_within(r, timeout, "a child's output reader").unwrap_or_default()
        })
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    let Some(status) = status else {
        panic!(
            "{what} did not exit within {timeout:?}; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Reads `pipe` (a child's stdout, say) line by line on a thread until `find` picks a value out
/// of a line; returns it, or `None` when the pipe ends first or `timeout` passes. The thread then
/// drains the rest of the pipe, so the writer neither blocks on it nor finds it closed.
pub fn find_line_within<T: Send + 'static>(
    pipe: impl Read + Send + 'static,
    timeout: Duration,
    mut find: impl FnMut(&str) -> Option<T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(found) = find(&line) {
                let _ = tx.send(found);
                break;
            }
        }
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(timeout).ok()
}

/// `handle.join()` bounded by `timeout`: the thread's result (`Err` if it panicked), or a panic
/// naming `what` if it is still running (it is left detached).
pub fn join_within<T>(
    handle: thread::JoinHandle<T>,
    timeout: Duration,
    what: &str,
) -> thread::Result<T> {
    let finished = wait_until(timeout, || handle.is_finished());
    assert!(finished, "{what} still running after {timeout:?}");
    handle.join()
}

/// A loopback port bound (not listening) for as long as this value lives: nothing else on the
/// machine can take it, and a connect to it is refused until [`ReservedPort::listen`].
pub struct ReservedPort {
    socket: socket2::Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Binds `127.0.0.1:0`. No `SO_REUSEADDR`: no other socket may bind the port meanwhile.
    pub fn new() -> ReservedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("a loopback address");
        socket.bind(&any.into()).expect("binding a loopback port");
        let addr = socket
            .local_addr()
            .expect("reserved port local_addr")
            .as_socket()
            .expect("an IP address");
        ReservedPort { socket, addr }
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the reserved port (no window in which another socket could take it).
    pub fn listen(self) -> TcpListener {
        self.socket
            .listen(128)
            .expect("listening on a reserved port");
        self.socket.into()
    }
}

/// Ports [`closed_port`] handed out, held until the test binary exits.
static CLOSED_PORTS: Mutex<Vec<ReservedPort>> = Mutex::new(Vec::new());

/// A loopback address on which nothing listens, for as long as the test binary runs: connects to
/// it are refused. It stays bound, so no other test's listener can get it and no connect can
/// land on it as its own source port (a TCP self-connect).
pub fn closed_port() -> SocketAddr {
    let port = ReservedPort::new();
    let addr = port.addr();
    lock(&CLOSED_PORTS).push(port);
    addr
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread poisons nothing we cannot still use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! The end-to-end harness: owns spawning the real `phantom-fast` binary, scripted origins on
//! loopback and a raw HTTP/1.1 client that frames responses the way the tests need them.
//! It does not validate HTTP (that is what the proxy is tested for) and uses no async runtime.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub mod otlp;
pub mod seccomp;

/// The binary under test, built by cargo for this test target.
const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");
/// How long a client or origin read may block before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy may take to print its `listening on` line (debug build, 2 busy cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the proxy may take to exit after SIGTERM or a bad flag; above the 5 s default grace.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a run that must fail on its flags may take to exit (it should be instant).
const BAD_FLAGS_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `wait_closed` waits for the peer's FIN before calling the connection still open.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A head bigger than this is a framing bug in the peer, not something to keep buffering.
const MAX_TEST_HEAD_BYTES: usize = 1024 * 1024;
/// How often a waiting loop polls the child process or the stderr buffer.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// A running `phantom-fast` on `127.0.0.1:<ephemeral>` with one worker and a private trace dir.
/// Dropping it SIGKILLs the process; `stop` is the graceful path.
pub struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    _trace_dir: tempfile::TempDir,
}

impl Proxy {
    /// Spawns the binary with the harness flags plus `args` and waits for `listening on ADDR`.
    pub fn start(args: &[&str]) -> Proxy {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), args);
        cmd.stderr(Stdio::piped());
        Proxy::launch(cmd, trace_dir, &format!("{args:?}"))
    }

    /// Spawns `cmd` (stderr piped) and waits for its `listening on ADDR` line; `what` names the
    /// run in panic messages.
    fn launch(mut cmd: Command, trace_dir: tempfile::TempDir, what: &str) -> Proxy {
        let mut child = cmd.spawn().expect("spawning the phantom-fast binary");
        let pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr_reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(pipe, &stderr, Some(tx)))
        };
        let started = Instant::now();
        loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(addr) => {
                    return Proxy {
                        child: Some(child),
                        addr,
                        stderr,
                        stderr_reader: Some(stderr_reader),
                        _trace_dir: trace_dir,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().expect("polling the child") {
                        let _ = stderr_reader.join();
                        panic!(
                            "phantom-fast {what} exited with {status} before listening; stderr:\n{}",
                            snapshot(&stderr)
                        );
                    }
                    if started.elapsed() > STARTUP_TIMEOUT {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "phantom-fast {what} printed no `listening on` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                            snapshot(&stderr)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed without the line: the process is exiting or exited.
                    let status = wait_deadline(&mut child, EXIT_TIMEOUT);
                    panic!(
                        "phantom-fast {what} closed stderr before listening (status {status:?}); stderr:\n{}",
                        snapshot(&stderr)
                    );
                }
            }
        }
    }

    /// Reverse mode in front of `upstream`, plus `args`.
    pub fn reverse(upstream: SocketAddr, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        Proxy::start(&all)
    }

    /// Runs the binary expecting it to exit by itself (bad flags); returns its status (`None`:
    /// still running after a few seconds, then killed) and its stderr.
    pub fn run_expect_exit(args: &[&str]) -> (Option<ExitStatus>, String) {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut child = command(trace_dir.path(), args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the phantom-fast binary");
        let pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(pipe, &stderr, None))
        };
        let status = wait_deadline(&mut child, BAD_FLAGS_EXIT_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = reader.join();
        (status, snapshot(&stderr))
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh client connection to the proxy.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Everything the proxy printed on stderr so far.
    pub fn stderr(&self) -> String {
        snapshot(&self.stderr)
    }

    /// Waits until stderr contains `needle`; returns whether it did within `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if snapshot(&self.stderr).contains(needle) {
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGTERM, waits for the exit and returns the status and the whole stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self
            .child
            .take()
            .expect("the child is present until stop or drop");
        signal(&child, "-TERM");
        let status = wait_deadline(&mut child, EXIT_TIMEOUT);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "phantom-fast did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                snapshot(&self.stderr)
            );
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        (status, snapshot(&self.stderr))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command(trace_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "1", "--trace-dir"])
        .arg(trace_dir)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("XDG_DATA_HOME", trace_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Appends every stderr line to `buf`; sends the first `listening on` address through `tx`.
fn collect_stderr(pipe: impl Read, buf: &Mutex<String>, mut tx: Option<mpsc::Sender<SocketAddr>>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        lock(buf).push_str(&text);
        if let Some(addr) = parse_listening(&text)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
        }
    }
}

/// `phantom-fast listening on 127.0.0.1:PORT (reverse → …)` → the address.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .expect("running kill(1)");
    assert!(
        status.success(),
        "kill {sig} {} failed: {status}",
        child.id()
    );
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return Some(status);
        }
        if started.elapsed() > timeout {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread poisons nothing we cannot still read.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn snapshot(m: &Mutex<String>) -> String {
    lock(m).clone()
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A request as an origin received it.
#[derive(Clone, Debug)]
pub struct Req {
    /// The head exactly as received, request line through the empty line.
    pub head: Vec<u8>,
    /// Method token.
    pub method: String,
    /// Request target as it arrived (origin-form expected from the proxy).
    pub target: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body with framing removed.
    pub body: Vec<u8>,
    /// The body bytes as framed on the wire (chunk sizes, extensions, trailers).
    pub raw_body: Vec<u8>,
}

impl Req {
    /// The request line without CRLF.
    pub fn request_line(&self) -> String {
        first_line(&self.head)
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A response as a client received it.
#[derive(Clone, Debug)]
pub struct Response {
    /// The final head exactly as received.
    pub head: Vec<u8>,
    /// Status code of the final response.
    pub status: u16,
    /// Header fields of the final response in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body with framing removed.
    pub body: Vec<u8>,
    /// The body bytes as framed on the wire.
    pub raw_body: Vec<u8>,
    /// Heads of interim 1xx responses that preceded the final one.
    pub interim: Vec<Vec<u8>>,
}

impl Response {
    /// The status line without CRLF.
    pub fn status_line(&self) -> String {
        first_line(&self.head)
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as lossy UTF-8, for readable assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn first_line(head: &[u8]) -> String {
    let end = find(head, b"\r\n").unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end]).into_owned()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether any header named `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Splits a head into its start line and its fields (no validation; tests assert on bytes).
fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    (start, headers)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Builds an HTTP/1.1 request; adds `content-length` when there is a body or the method is POST.
pub fn request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `GET target` with `host: test.local`.
pub fn get(target: &str) -> Vec<u8> {
    request("GET", target, "test.local", &[], b"")
}

/// A response with `content-length` set from `body`.
pub fn response(status_line: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status_line}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The default origin answer: 200, the request body echoed, or `METHOD TARGET` when it is empty.
pub fn echo(req: &Req) -> Vec<u8> {
    let body = if req.body.is_empty() {
        format!("{} {}", req.method, req.target).into_bytes()
    } else {
        req.body.clone()
    };
    response("200 OK", &[("content-type", "text/plain")], &body)
}

/// A fast deterministic checksum for large bodies (std's SipHash is plenty fast for 10 MB).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// `len` deterministic, non-repeating-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            // xorshift32: cheap even in a debug build, and no two 4 KiB pages alike.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A buffered raw connection (client side and origin side)
// ---------------------------------------------------------------------------------------------

/// A TCP stream with a read buffer, so pipelined messages and leftovers are never lost.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Wraps an accepted or connected stream; reads time out after `IO_TIMEOUT`.
    pub fn new(stream: TcpStream) -> Conn {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("setting a read timeout");
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Conn::new(stream)
    }

    /// Changes the read timeout (e.g. to fail fast where an answer is due at once).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("setting a read timeout");
    }

    /// Writes all of `bytes` or panics.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes: {e}", bytes.len()));
    }

    /// Writes `bytes`, ignoring errors: the peer may legitimately reject and close mid-write.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Fallible write, for origins whose peer may have gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes the write side (FIN), keeping reads open.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads once more into the buffer; returns the bytes read, 0 on EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Reads through the first empty line. `Ok(None)`: clean EOF before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n\r\n") {
                return Ok(Some(self.take(searched + i + 4)));
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_TEST_HEAD_BYTES {
                return Err(invalid("head over 1 MiB without an empty line"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.take(n))
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(self.take(i + 2));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Reads a chunked body; returns (decoded, raw wire bytes including the trailer section).
    pub fn read_chunked(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut body = Vec::new();
        let mut raw = Vec::new();
        loop {
            let line = self.read_line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size_text = text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(&format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                loop {
                    let trailer = self.read_line()?;
                    raw.extend_from_slice(&trailer);
                    if trailer == b"\r\n" {
                        return Ok((body, raw));
                    }
                }
            }
            let data = self.read_exact_bytes(size + 2)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            body.extend_from_slice(&data[..size]);
            raw.extend_from_slice(&data);
        }
    }

    /// Reads everything until the peer closes (a reset after data counts as the end).
    pub fn read_until_close(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads a request (origin side); answers `Expect: 100-continue` first when `send_continue`.
    /// `Ok(None)`: the peer closed cleanly between requests.
    pub fn read_request(&mut self, send_continue: bool) -> io::Result<Option<Req>> {
        let Some(head) = self.read_head()? else {
            return Ok(None);
        };
        let (line, headers) = parse_head(&head);
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        if send_continue && has_token(&headers, "expect", "100-continue") {
            self.try_send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let (body, raw_body) = if has_token(&headers, "transfer-encoding", "chunked") {
            self.read_chunked()?
        } else if let Some(len) = find_header(&headers, "content-length") {
            let len = len
                .parse()
                .map_err(|_| invalid(&format!("bad content-length {len:?}")))?;
            let body = self.read_exact_bytes(len)?;
            (body.clone(), body)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Some(Req {
            head,
            method,
            target,
            headers,
            body,
            raw_body,
        }))
    }

    /// Reads a response to a `GET`.
    pub fn read_response(&mut self) -> io::Result<Response> {
        self.read_response_to("GET")
    }

    /// Reads a final response to a request with `method`, collecting interim 1xx heads on the way.
    pub fn read_response_to(&mut self, method: &str) -> io::Result<Response> {
        let mut interim = Vec::new();
        loop {
            let head = self.read_head()?.ok_or_else(|| {
                io::Error::new(ErrorKind::UnexpectedEof, "closed before a response")
            })?;
            let (line, headers) = parse_head(&head);
            if !line.starts_with("HTTP/1.") {
                return Err(invalid(&format!("not a status line: {line:?}")));
            }
            let status: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| invalid(&format!("no status code in {line:?}")))?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(head);
                continue;
            }
            let bodiless = method == "HEAD"
                || status == 204
                || status == 304
                || (method == "CONNECT" && (200..300).contains(&status));
            let (body, raw_body) = if bodiless {
                (Vec::new(), Vec::new())
            } else if has_token(&headers, "transfer-encoding", "chunked") {
                self.read_chunked()?
            } else if let Some(len) = find_header(&headers, "content-length") {
                let len = len
                    .parse()
                    .map_err(|_| invalid(&format!("bad content-length {len:?}")))?;
                let body = self.read_exact_bytes(len)?;
                (body.clone(), body)
            } else {
                let body = self.read_until_close()?;
                (body.clone(), body)
            };
            return Ok(Response {
                head,
                status,
                headers,
                body,
                raw_body,
                interim,
            });
        }
    }

    /// Sends `bytes` and reads the response to `method`, panicking with context on failure.
    pub fn roundtrip_to(&mut self, method: &str, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response_to(method)
            .unwrap_or_else(|e| panic!("no response to {:?}: {e}", first_line(bytes)))
    }

    /// `roundtrip_to` for anything but HEAD/CONNECT.
    pub fn roundtrip(&mut self, bytes: &[u8]) -> Response {
        self.roundtrip_to("GET", bytes)
    }

    /// `Ok(())` when the peer closes (EOF or reset) with no further bytes within a few seconds.
    pub fn wait_closed(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unread bytes before close: {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        self.set_timeout(CLOSE_TIMEOUT);
        match self.fill() {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!(
                "bytes instead of close: {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!("connection still open after {CLOSE_TIMEOUT:?}"))
            }
            Err(e) => Err(format!("read error instead of close: {e}")),
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

/// The accept loop shared by both origin kinds; one thread per connection.
struct Acceptor {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Acceptor {
    fn start(serve: impl Fn(Conn, usize) + Send + Sync + 'static) -> Acceptor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding an origin");
        let addr = listener.local_addr().expect("origin local_addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        {
            let connections = Arc::clone(&connections);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let index = connections.fetch_add(1, Ordering::SeqCst);
                    let serve = Arc::clone(&serve);
                    thread::spawn(move || serve(Conn::new(stream), index));
                }
            });
        }
        Acceptor {
            addr,
            connections,
            stop,
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag and exits.
        let _ = TcpStream::connect(self.addr);
    }
}

type Handler = dyn Fn(&Req) -> Vec<u8> + Send + Sync;

/// A scripted HTTP/1.1 origin: parses requests, records them, answers with a closure's raw bytes.
/// Keep-alive unless the request or response says `connection: close` or the response is
/// close-delimited. Answers `Expect: 100-continue` with a 100 before reading the body.
pub struct Origin {
    acceptor: Acceptor,
    requests: Arc<Mutex<Vec<Req>>>,
}

impl Origin {
    /// Starts an origin answering every request with `handler(req)`.
    pub fn start(handler: impl Fn(&Req) -> Vec<u8> + Send + Sync + 'static) -> Origin {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = {
            let requests = Arc::clone(&requests);
            Acceptor::start(move |conn, _| serve_http(conn, &*handler, &requests))
        };
        Origin { acceptor, requests }
    }

    /// An origin answering with `echo`.
    pub fn echo() -> Origin {
        Origin::start(echo)
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }

    /// `127.0.0.1:PORT`, for Host headers and absolute-form URLs.
    pub fn authority(&self) -> String {
        self.acceptor.addr.to_string()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.acceptor.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, in arrival order across connections.
    pub fn requests(&self) -> Vec<Req> {
        lock(&self.requests).clone()
    }
}

fn serve_http(mut conn: Conn, handler: &Handler, requests: &Mutex<Vec<Req>>) {
    loop {
        let Ok(Some(req)) = conn.read_request(true) else {
            return;
        };
        let resp = handler(&req);
        let close = wants_close(&req, &resp);
        lock(requests).push(req);
        if conn.try_send(&resp).is_err() {
            return;
        }
        if close {
            conn.shutdown_write();
            // Drain until the proxy closes, so our close is a FIN and never a reset.
            let _ = conn.read_until_close();
            return;
        }
    }
}

/// Whether the origin closes after `resp` (RFC 9112 §9.6 close, or §6.3 close-delimited body).
fn wants_close(req: &Req, resp: &[u8]) -> bool {
    let end = find(resp, b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let (line, headers) = parse_head(&resp[..end]);
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let bodiless = req.method == "HEAD" || status == 204 || status == 304;
    let framed = find_header(&headers, "content-length").is_some()
        || find_header(&headers, "transfer-encoding").is_some();
    has_token(&req.headers, "connection", "close")
        || has_token(&headers, "connection", "close")
        || (!bodiless && !framed)
}

/// An origin that hands each raw connection (and its index, from 0) to a closure: for
/// close-delimited bodies, 1xx, garbage, silence, echo tunnels.
pub struct RawOrigin {
    acceptor: Acceptor,
}

impl RawOrigin {
    /// Starts the origin.
    pub fn start(serve: impl Fn(Conn, usize) + Send + Sync + 'static) -> RawOrigin {
        RawOrigin {
            acceptor: Acceptor::start(serve),
        }
    }

    /// A TCP echo server (for CONNECT tunnels): writes back every byte until the peer closes.
    pub fn tcp_echo() -> RawOrigin {
        RawOrigin::start(|mut conn, _| {
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.stream.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            conn.shutdown_write();
        })
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.acceptor.addr.to_string()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.acceptor.connections.load(Ordering::SeqCst)
    }
}

/// A loopback address on which nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a probe listener");
    listener.local_addr().expect("probe local_addr")
}

/// Asserts `resp` is a proxy-generated error: the status, `text/plain`, `connection: close`,
/// a content-length matching the body.
pub fn assert_proxy_error(resp: &Response, status: u16) {
    assert!(
        resp.status_line()
            .starts_with(&format!("HTTP/1.1 {status} ")),
        "want status {status}, got head {:?} body {:?}",
        String::from_utf8_lossy(&resp.head),
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.to_ascii_lowercase().starts_with("text/plain"),
        "proxy error content-type {content_type:?}; head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "proxy error content-length; head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
}

// ---------------------------------------------------------------------------------------------
// Process probes and hostile-client tools (issue 6, `hostile`)
// ---------------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc/<pid>/stat` times when `getconf CLK_TCK` cannot be asked.
const DEFAULT_CLOCK_TICKS_PER_SEC: u64 = 100;

impl Proxy {
    /// The proxy's process id, for `/proc/<pid>/…` probes.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the child is present until stop or drop")
            .id()
    }

    /// The proxy's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"))
    }

    /// User plus system CPU time the proxy has used so far (`/proc/<pid>/stat` utime + stime).
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        // There, field 3 (state) is index 0, so utime (14) and stime (15) are indices 11 and 12.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("no field {i} after the name in {path}: {stat:?}"))
        };
        let per_sec = clock_ticks_per_sec();
        let total = ticks(11) + ticks(12);
        Duration::from_millis(total * 1000 / per_sec)
    }

    /// How many file descriptors the proxy holds open (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("listing {path}: {e}"))
            .count()
    }

    /// `reverse`, with the open-file limit lowered to `max_fds` before the binary starts
    /// (`sh -c 'ulimit -n MAX_FDS; exec BIN ARGS…'`, so the pid is the proxy's own).
    pub fn reverse_with_fd_limit(upstream: SocketAddr, max_fds: u32, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let plain = command(trace_dir.path(), &all);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(plain.get_args())
            .env("RUST_BACKTRACE", "1")
            .env("XDG_DATA_HOME", trace_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Proxy::launch(
            cmd,
            trace_dir,
            &format!("under `ulimit -n {max_fds}` {all:?}"),
        )
    }
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS_PER_SEC)
}

impl Conn {
    /// A second handle on the socket, for writing from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("cloning a socket handle")
    }

    /// Closes with `SO_LINGER` 0, so the peer sees a reset (RST) instead of a FIN.
    pub fn reset(self) {
        reset(self.stream);
    }
}

/// Closes `stream` with `SO_LINGER` 0: a reset (RST), no FIN and no TIME_WAIT on our side.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

//! The admin thread's loop: blocking `std::net` I/O, one request per connection, HTTP/1.1 heads
//! through the crate's own parser with bounded sizes and a deadline on every read. Between
//! connections (at least every [`TICK`]) it moves ramps and reloads the rules file.
//! It never runs on a worker and never touches a worker's state except through the publisher.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    api::{Admin, Request, Response},
    file::RulesFile,
};
use crate::http::{self, BodyKind, Limits};

/// How often the loop wakes without a connection: ramp steps and file polls happen at this pace.
pub const TICK: Duration = Duration::from_millis(100);

/// A whole request must arrive within this (the admin thread serves one connection at a time,
/// so a slow client must not hold it; curl and Prometheus send in one go).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Writing the answer must not take longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest admin request head (a browser's is ~1 KiB; hyper's default is ~400 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines in an admin request.
const MAX_HEADERS: usize = 64;

/// Largest admin request body (a rule set of [`super::rules::MAX_RULES`] long lines fits).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Binds the admin listener, warning on stderr when it is reachable beyond this host.
///
/// # Errors
/// The bind error.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "phantom-fast: warning: the admin endpoint on {addr} is reachable from other hosts and \
             its API can change faults; bind 127.0.0.1 or set --admin-token"
        );
    }
    Ok(listener)
}

/// Serves admin requests until `exit` is set; moves ramps and reloads `file` between them.
/// Once `stop` is set (shutdown began) `/ready` answers 503 while the workers drain. Without a
/// listener (`--faults-file` alone) it only ticks.
pub fn serve<T: Send + Sync>(
    listener: Option<TcpListener>,
    mut admin: Admin<T>,
    mut file: Option<RulesFile>,
    stop: Arc<AtomicBool>,
    exit: Arc<AtomicBool>,
) {
    let mut next_tick = Instant::now();
    while !exit.load(Ordering::Acquire) {
        if stop.load(Ordering::Relaxed) {
            admin.set_draining();
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let Some(listener) = &listener else {
            std::thread::sleep(wait);
            tick(&mut admin, &mut file, &mut next_tick);
            continue;
        };
        if readable(listener, wait) {
            match listener.accept() {
                Ok((stream, _)) => {
                    // An error is a client that vanished or stalled: nothing left to answer.
                    let _ = serve_connection(stream, &mut admin);
                }
                Err(e) => {
                    eprintln!("phantom-fast: admin accept failed: {e}");
                    std::thread::sleep(TICK);
                }
            }
        }
        tick(&mut admin, &mut file, &mut next_tick);
    }
}

/// Ramp steps and the file poll, when their time has come.
fn tick<T: Send + Sync>(admin: &mut Admin<T>, file: &mut Option<RulesFile>, next: &mut Instant) {
    let now = Instant::now();
    if now >= *next {
        admin.tick(now);
        if let Some(file) = file {
            file.poll(admin);
        }
        *next = now + TICK;
    }
}

/// Waits up to `wait` for a connection to accept.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a wait of under a millisecond rounded down to 0 made the thread spin until the
    // tick (8.6 ms of CPU a second, idle).
    let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `fd` is one valid, initialised pollfd on this stack frame and nfds is 1; poll only
    // writes its `revents`.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    ready > 0 && fd.revents & libc::POLLIN != 0
}

/// Reads one request, answers it and closes.
fn serve_connection<T: Send + Sync>(mut stream: TcpStream, admin: &mut Admin<T>) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let limits = Limits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
        max_uri_bytes: MAX_HEAD_BYTES,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::new();
    let head_len = loop {
        let mut headers = http::header_slots::<MAX_HEADERS>();
        match http::parse_request(&buf, &mut headers, &limits) {
            Ok(Some(head)) => break head.head_len,
            Ok(None) => {}
            Err(err) => {
                http::encode_parse_error(err, &mut out);
                return stream.write_all(&out);
            }
        }
        if read_some(&mut stream, &mut buf, deadline)? == 0 {
            return Ok(());
        }
    };
    let mut headers = http::header_slots::<MAX_HEADERS>();
    let head = http::parse_request(&buf[..head_len], &mut headers, &limits)
        .ok()
        .flatten()
        .ok_or_else(|| io::Error::other("head parsed once, not twice"))?;
    let length = match http::request_body_kind(&head) {
        Ok(BodyKind::Empty) => 0,
        Ok(BodyKind::Length(n)) if n <= MAX_BODY_BYTES as u64 => n as usize,
        Ok(BodyKind::Length(_)) => {
            http::encode_error(413, &mut out);
            return stream.write_all(&out);
        }
        Ok(_) => {
            // Chunked bodies are not needed by any admin client (curl sends Content-Length).
            http::encode_error(411, &mut out);
            return stream.write_all(&out);
        }
        Err(err) => {
            http::encode_parse_error(err, &mut out);
            return stream.write_all(&out);
        }
    };
    if length > buf.len() - head_len && http::expects_continue(head.headers) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let head_method = head.method.to_owned();
    let target = head.target.to_owned();
    let header_pairs: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    while buf.len() - head_len < length {
        if read_some(&mut stream, &mut buf, deadline)? == 0 {
            return Ok(());
        }
    }
    let headers: Vec<httparse::Header<'_>> = header_pairs
        .iter()
        .map(|(name, value)| httparse::Header { name, value })
        .collect();
    let path = target.split('?').next().unwrap_or_default();
    let response = admin.handle(&Request {
        method: &head_method,
        path,
        headers: &headers,
        body: &buf[head_len..head_len + length],
    });
    encode_response(&response, head_method == "HEAD", &mut out);
    stream.write_all(&out)?;
    stream.flush()
}

/// Appends up to 4 KiB to `buf`, waiting no later than `deadline`; 0 means the peer closed.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The response with `content-length` and `connection: close`; a HEAD answer keeps the length
/// and drops the body (RFC 9110 §9.3.2).
fn encode_response(response: &Response, head_only: bool, out: &mut Vec<u8>) {
    let extra: Vec<(&str, &[u8])> = response
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_bytes()))
        .collect();
    http::encode_simple_response(
        response.status,
        response.content_type,
        &extra,
        &response.body,
        false,
        out,
    );
    if head_only {
        out.truncate(out.len() - response.body.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        api::{CompileFn, Compiled},
        client::{self, Call},
        rules,
    };

    /// The admin loop on 127.0.0.1:0 with one acking worker; returns the address and the exit flag.
    fn start(startup: &str) -> (String, Arc<AtomicBool>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let compile: CompileFn<usize> = Box::new(|c: Compiled<'_>| Ok(c.rules.len()));
        let (admin, publisher) =
            Admin::new(1, rules::parse_text(startup).unwrap(), compile, None).unwrap();
        let exit = Arc::new(AtomicBool::new(false));
        let mut link = publisher.worker(0);
        let flag = Arc::clone(&exit);
        std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                if link.poll().is_some() {
                    link.ack();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let flag = Arc::clone(&exit);
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn(move || serve(Some(listener), admin, None, stop, flag));
        (addr, exit)
    }

    fn raw(addr: &str, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn client_calls_round_trip_over_loopback() {
        let (addr, exit) = start("id=a error:503:/api\n");
        let (status, body) = client::send(&addr, None, &Call::add("id=b delay:5ms")).unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let (status, body) = client::send(&addr, None, &Call::list()).unwrap();
        assert_eq!(status, 200);
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(listed["generation"], 2);
        assert_eq!(listed["workers"], serde_json::json!([2]));
        assert_eq!(listed["rules"][1]["spec"], "delay:5ms");
        let (status, _) = client::send(&addr, None, &Call::rm(Some("zz"))).unwrap();
        assert_eq!(status, 404);
        let (status, _) = client::send(&addr, None, &Call::reset()).unwrap();
        assert_eq!(status, 200);
        exit.store(true, Ordering::Release);
    }

    #[test]
    fn framing_continue_head_and_limits() {
        let (addr, exit) = start("");
        // curl's way: the head, then the body only after 100 Continue.
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"PUT /faults HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(b"error:503\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("etag: \"2\"\r\n"), "{answer}");
        let answer = raw(&addr, b"HEAD /live HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("content-length: 5\r\n") && answer.ends_with("\r\n\r\n"),
            "{answer}"
        );
        let answer = raw(&addr, b"GET /metrics?x=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(
            answer.contains("phantom_fault_rules_generation 2\n"),
            "{answer}"
        );
        let big = format!(
            "PUT /faults HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(raw(&addr, big.as_bytes()).starts_with("HTTP/1.1 413 "));
        let chunked =
            b"PUT /faults HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(raw(&addr, chunked).starts_with("HTTP/1.1 411 "));
        assert!(raw(&addr, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge_head = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(raw(&addr, huge_head.as_bytes()).starts_with("HTTP/1.1 431 "));
        exit.store(true, Ordering::Release);
    }

    #[test]
    fn a_stalled_client_is_dropped_and_the_next_is_served() {
        let (addr, exit) = start("");
        let mut stalled = TcpStream::connect(&addr).unwrap();
        stalled.write_all(b"GET /live HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let answer = raw(&addr, b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        let waited = started.elapsed();
        assert!(
            waited < REQUEST_DEADLINE + Duration::from_secs(1),
            "{waited:?}"
        );
        exit.store(true, Ordering::Release);
    }
}

//! The origin role: the request an origin received, reading requests off a [`Conn`], response
//! builders, and the two scripted origins (`Origin` parses and records, `RawOrigin` hands over the
//! raw connection). TLS origins, when they come, sit beside these in their own file.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use super::conn::{Conn, READ_CHUNK_BYTES, invalid};
use super::lock;
use super::message::{find, find_header, first_line, has_token, parse_head};

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

impl Conn {
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
}

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

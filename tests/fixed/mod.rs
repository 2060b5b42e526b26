//! A fixed-response origin and a keep-alive client that allocate nothing per request, shared by
//! the allocation test and the `proxy_overhead` bench (included with `#[path]`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

/// What the origin answers to every request: 13 bytes of body, like the load-test origin.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: text/plain\r\n\r\nhello, world\n";

/// A typical small request.
pub const REQUEST: &[u8] =
    b"GET /api/items?id=7 HTTP/1.1\r\nhost: example.test\r\nuser-agent: fixed-client\r\naccept: */*\r\n\r\n";

/// Starts an origin on 127.0.0.1:0 answering every head with [`RESPONSE`]; one thread per
/// connection, a fixed buffer each.
pub fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_nodelay(true);
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match stream.read(&mut buf[filled..]) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    while let Some(end) = head_end(&buf[..filled]) {
                        if stream.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end..filled, 0);
                        filled -= end;
                    }
                }
            });
        }
    });
    addr
}

/// End of the head (after the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Sends [`REQUEST`] and reads one 13-byte-body response into `buf`, checking it.
///
/// # Panics
/// When the response is not the origin's.
pub fn round_trip(stream: &mut TcpStream, buf: &mut [u8]) {
    let (status, body) = exchange(stream, REQUEST, buf);
    assert_eq!(status, 200, "unexpected response");
    assert_eq!(&buf[body], b"hello, world\n");
}

/// Sends `request` and reads one response framed by `content-length` into `buf`; returns its
/// status code and where in `buf` its body is. Parses by hand so that the client side allocates
/// nothing.
///
/// # Panics
/// When the connection closes early, the response does not fit `buf` or has no content-length.
pub fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut [u8],
) -> (u16, std::ops::Range<usize>) {
    stream.write_all(request).expect("send the request");
    let mut filled = 0;
    loop {
        let n = match stream.read(&mut buf[filled..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.expect("read the response"),
        };
        assert!(n > 0, "connection closed mid-response");
        filled += n;
        let Some(end) = head_end(&buf[..filled]) else {
            assert!(filled < buf.len(), "response head over {} bytes", buf.len());
            continue;
        };
        let len = content_length(&buf[..end]).expect("a content-length response");
        if filled >= end + len {
            assert_eq!(filled, end + len, "bytes after the response");
            let status = buf[9..12]
                .iter()
                .fold(0, |acc, d| acc * 10 + u16::from(d - b'0'));
            return (status, end..filled);
        }
    }
}

/// The `content-length` value of a response head (name case-insensitive), without allocating.
fn content_length(head: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"\r\ncontent-length:";
    let at = head
        .windows(NAME.len())
        .position(|w| w.eq_ignore_ascii_case(NAME))?;
    let digits = head[at + NAME.len()..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0, |acc, d| acc * 10 + usize::from(d - b'0')))
}

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
    stream.write_all(REQUEST).expect("send the request");
    let mut filled = 0;
    loop {
        let n = match stream.read(&mut buf[filled..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.expect("read the response"),
        };
        assert!(n > 0, "connection closed mid-response");
        filled += n;
        if let Some(end) = head_end(&buf[..filled])
            && filled >= end + 13
        {
            assert!(
                buf.starts_with(b"HTTP/1.1 200 OK\r\n"),
                "unexpected response"
            );
            assert_eq!(&buf[end..end + 13], b"hello, world\n");
            return;
        }
    }
}

//! The client role: request builders, the response a client received, reading responses off a
//! [`Conn`] (1xx collected, framing per RFC 9112 §6.3) and the proxy-error assertion.

use std::io::{self, ErrorKind};

use super::conn::{Conn, invalid};
use super::message::{find_header, first_line, has_token, parse_head};

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

impl Conn {
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
    assert!(
        has_token(&resp.headers, "connection", "close"),
        "proxy error without `connection: close`; head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "proxy error content-length; head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
}

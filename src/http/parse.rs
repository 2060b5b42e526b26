//! Request and response heads parsed in place with httparse, checked against the configured limits.
//!
//! Body framing is decided in `body.rs`; this file only validates the head itself (syntax, sizes,
//! version, `Host`).

use std::{fmt, mem::MaybeUninit};

use httparse::{Header, ParserConfig, Status};

/// Hard upper bound of `--max-headers`: the size of the header array every caller passes in.
pub const MAX_HEADERS_CAP: usize = 1024;

/// Storage for up to `N` parsed header lines, left uninitialised: httparse writes only the slots
/// it fills, so a request costs no clearing of all `N` (4 KiB for 128) first.
#[must_use]
pub const fn header_slots<'b, const N: usize>() -> [MaybeUninit<Header<'b>>; N] {
    [MaybeUninit::uninit(); N]
}

/// Default limit on the head (start line plus header lines), in bytes: the CLI default.
/// hyper ~400 KiB, pingora 1 MiB, nginx 8 KiB per line.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;

/// Default limit on the number of header lines (hyper 100, pingora 256).
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Longest request-target accepted before answering 414, in bytes (nginx 8 KiB per line,
/// hyper `u16::MAX - 1`, pingora the head size). The one limit: the CLI uses it as is.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// The HTTP version of a parsed message; only HTTP/1.0 and HTTP/1.1 are supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `HTTP/1.0`: not persistent unless `Connection: keep-alive`, no `Transfer-Encoding`.
    Http10,
    /// `HTTP/1.1`: persistent unless `Connection: close`, `Host` required.
    Http11,
}

impl Version {
    /// The protocol token as it appears on the wire, e.g. `"HTTP/1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size limits applied while parsing a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum bytes of start line plus header lines (and the empty line ending them) → 431.
    pub max_head_bytes: usize,
    /// Maximum number of header lines (capped at [`MAX_HEADERS_CAP`]) → 431.
    pub max_headers: usize,
    /// Maximum bytes of the request-target → 414. Ignored for responses.
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: MAX_URI_BYTES,
        }
    }
}

/// Why a head (or its framing) was rejected. Each variant maps to exactly one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Bad request line, header syntax, invalid characters or obs-fold → 400.
    Malformed,
    /// Request-target longer than [`Limits::max_uri_bytes`] → 414.
    UriTooLong,
    /// Head longer than [`Limits::max_head_bytes`] → 431.
    HeadTooLarge,
    /// More header lines than [`Limits::max_headers`] → 431.
    TooManyHeaders,
    /// A well-formed `HTTP/x.y` other than 1.0 and 1.1 → 505.
    UnsupportedVersion,
    /// Both `Transfer-Encoding` and `Content-Length` → 400.
    ConflictingFraming,
    /// `Content-Length` not all digits, overflowing, or differing duplicates → 400.
    InvalidContentLength,
    /// `Transfer-Encoding` not ending in a single `chunked`, or sent with HTTP/1.0 → 400.
    UnsupportedTransferEncoding,
    /// HTTP/1.1 request without `Host`, or any request with more than one `Host` → 400.
    MissingHost,
}

impl ParseError {
    /// The status code to answer a client with.
    ///
    /// For an upstream response the proxy answers 502 instead, whatever the variant.
    pub fn status(self) -> u16 {
        match self {
            ParseError::Malformed
            | ParseError::ConflictingFraming
            | ParseError::InvalidContentLength
            | ParseError::UnsupportedTransferEncoding
            | ParseError::MissingHost => 400,
            ParseError::UriTooLong => 414,
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => 431,
            ParseError::UnsupportedVersion => 505,
        }
    }

    /// A short, human-readable text for the body of the error response.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Malformed => "malformed request head",
            ParseError::UriTooLong => "request-target too long",
            ParseError::HeadTooLarge => "request head too large",
            ParseError::TooManyHeaders => "too many header fields",
            ParseError::UnsupportedVersion => "HTTP version not supported",
            ParseError::ConflictingFraming => "both Transfer-Encoding and Content-Length",
            ParseError::InvalidContentLength => "invalid Content-Length",
            ParseError::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            ParseError::MissingHost => "missing or duplicate Host header",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ParseError {}

/// A parsed request head, borrowing the read buffer (`'b`) and the header array (`'h`).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'h, 'b> {
    /// The method token, e.g. `"GET"`.
    pub method: &'b str,
    /// The request-target as sent (origin-, absolute-, authority- or asterisk-form).
    pub target: &'b str,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header lines in order, names and values as received (values without surrounding OWS).
    pub headers: &'h [Header<'b>],
    /// Bytes of the head in the buffer, including leading empty lines and the final empty line;
    /// the body (or the next request) starts at this offset.
    pub head_len: usize,
}

/// A parsed response head, borrowing the read buffer (`'b`) and the header array (`'h`).
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'h, 'b> {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code, always in 100..=599.
    pub status: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: &'b str,
    /// The header lines in order, names and values as received.
    pub headers: &'h [Header<'b>],
    /// Bytes of the head in the buffer; the body starts at this offset.
    pub head_len: usize,
}

/// Parses a request head from the start of `buf`.
///
/// `headers` is caller-owned storage (normally [`header_slots::<MAX_HEADERS_CAP>()`]); only
/// the first `limits.max_headers` slots are used. Leading empty lines are skipped (RFC 9112 §2.2).
/// Returns `Ok(None)` while the head is incomplete and still within limits.
///
/// This checks the head only; call [`request_body_kind`](super::request_body_kind) for framing.
///
/// # Errors
/// - [`ParseError::UriTooLong`] as soon as the buffered request-target exceeds `max_uri_bytes`,
///   even before the request line is complete.
/// - [`ParseError::HeadTooLarge`] when the head, or the incomplete head buffered so far, exceeds
///   `max_head_bytes`.
/// - [`ParseError::TooManyHeaders`] when there are more than `max_headers` header lines.
/// - [`ParseError::UnsupportedVersion`] for a well-formed version other than 1.0 and 1.1.
/// - [`ParseError::MissingHost`] for an HTTP/1.1 request without `Host`, or any request with more
///   than one `Host` line or a `Host` value that is a list (RFC 9112 §3.2).
/// - [`ParseError::Malformed`] for any other syntax error, including obs-fold and whitespace
///   between a field name and its colon (RFC 9112 §5.1, §5.2).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    limits: &Limits,
) -> Result<Option<RequestHead<'h, 'b>>, ParseError> {
    let slots = limits.max_headers.min(headers.len());
    let mut req = httparse::Request::new(&mut []);
    // Default config is the strict one for requests: no obs-fold, no whitespace before the colon,
    // single spaces in the request line.
    let config = ParserConfig::default();
    let status =
        match config.parse_request_with_uninit_headers(&mut req, buf, &mut headers[..slots]) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
            Err(httparse::Error::Version) => {
                check_request_target(buf, limits)?;
                return classify_version_error(buf, request_version_token(buf), limits);
            }
            Err(_) => {
                // A 70 KiB target with some later syntax error is still better answered with 414.
                check_request_target(buf, limits)?;
                return Err(ParseError::Malformed);
            }
        };
    let head_len = match status {
        Status::Complete(len) => len,
        Status::Partial => {
            check_request_target(buf, limits)?;
            return partial(buf, limits);
        }
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let (Some(method), Some(target), Some(minor)) = (method, path, version) else {
        // httparse fills all three before reporting Complete; treat anything else as garbage.
        return Err(ParseError::Malformed);
    };
    if target.len() > limits.max_uri_bytes {
        return Err(ParseError::UriTooLong);
    }
    if head_len > limits.max_head_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    let version = version_from_minor(minor);
    let headers: &'h [Header<'b>] = headers;
    check_host(version, headers)?;
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        head_len,
    }))
}

/// Parses a response head from the start of `buf`.
///
/// Same contract as [`parse_request`]; `max_uri_bytes` is ignored. Whitespace between a field name
/// and its colon is removed (RFC 9112 §5.1 lets a proxy do so instead of rejecting); obs-fold is
/// rejected (RFC 9112 §5.2: a proxy replaces it by 502 or by spaces; we do not rewrite values).
///
/// # Errors
/// [`ParseError::HeadTooLarge`], [`ParseError::TooManyHeaders`], [`ParseError::UnsupportedVersion`]
/// and [`ParseError::Malformed`] (also for a status code outside 100..=599), as for requests. The
/// proxy answers every one of them with 502.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    limits: &Limits,
) -> Result<Option<ResponseHead<'h, 'b>>, ParseError> {
    let slots = limits.max_headers.min(headers.len());
    let mut res = httparse::Response::new(&mut []);
    let mut config = ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let status =
        match config.parse_response_with_uninit_headers(&mut res, buf, &mut headers[..slots]) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
            Err(httparse::Error::Version) => {
                return classify_version_error(buf, response_version_token(buf), limits);
            }
            Err(_) => return Err(ParseError::Malformed),
        };
    let head_len = match status {
        Status::Complete(len) => len,
        Status::Partial => return partial(buf, limits),
    };
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = res;
    let (Some(minor), Some(status), Some(reason)) = (version, code, reason) else {
        return Err(ParseError::Malformed);
    };
    if head_len > limits.max_head_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    // RFC 9110 §15: valid status codes are 100..=599; httparse accepts any three digits.
    if !(100..=599).contains(&status) {
        return Err(ParseError::Malformed);
    }
    Ok(Some(ResponseHead {
        version: version_from_minor(minor),
        status,
        reason,
        headers,
        head_len,
    }))
}

/// The parts of an absolute-form request-target (RFC 9112 §3.2.2), as sent to a forward proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsoluteTarget<'b> {
    /// The scheme as sent, e.g. `"http"` (compare case-insensitively).
    pub scheme: &'b str,
    /// `host[:port]`; the proxy sends it as `Host` (RFC 9112 §3.2.3).
    pub authority: &'b str,
    /// Path and query, the origin-form to send upstream. May be empty or start with `?` when the
    /// path is empty; [`encode_request_head`](super::encode_request_head) then writes the `/`.
    pub path: &'b str,
}

/// Splits an absolute-form request-target `scheme://authority[path][?query]`.
///
/// Returns `None` when `target` is not absolute-form (origin-form `/x`, authority-form `h:443`,
/// asterisk-form `*`), when the authority is empty, or when it carries userinfo (`user@`, which
/// RFC 9110 §4.2.4 forbids for http and which would hide the real host). A fragment is not part
/// of a request-target (RFC 9112 §3.2) but httparse accepts `#`, so everything from `#` on is
/// dropped.
pub fn split_absolute_form(target: &str) -> Option<AbsoluteTarget<'_>> {
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = path.split_once('#').map_or(path, |(before, _)| before);
    Some(AbsoluteTarget {
        scheme,
        authority,
        path,
    })
}

fn version_from_minor(minor: u8) -> Version {
    if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    }
}

/// The verdict for an incomplete head: wait for more bytes unless the buffer is already too big.
fn partial<T>(buf: &[u8], limits: &Limits) -> Result<Option<T>, ParseError> {
    if buf.len() > limits.max_head_bytes {
        Err(ParseError::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// Bytes after the empty lines a recipient skips before a start line (RFC 9112 §2.2).
fn skip_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    &buf[start..]
}

/// 414 as soon as the request-target seen so far is longer than allowed, complete or not.
fn check_request_target(buf: &[u8], limits: &Limits) -> Result<(), ParseError> {
    let line = skip_empty_lines(buf);
    let Some(method_end) = memchr::memchr3(b' ', b'\r', b'\n', line) else {
        return Ok(());
    };
    if line[method_end] != b' ' {
        return Ok(());
    }
    let rest = &line[method_end + 1..];
    let target_len = memchr::memchr3(b' ', b'\r', b'\n', rest).unwrap_or(rest.len());
    if target_len > limits.max_uri_bytes {
        Err(ParseError::UriTooLong)
    } else {
        Ok(())
    }
}

/// The version token of a request line (after the second space) and whether the line is complete.
fn request_version_token(buf: &[u8]) -> (&[u8], bool) {
    let (line, complete) = first_line(buf);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let _method = parts.next();
    let _target = parts.next();
    (parts.next().unwrap_or(b""), complete)
}

/// The version token of a status line (before the first space) and whether it is complete.
fn response_version_token(buf: &[u8]) -> (&[u8], bool) {
    let (line, complete) = first_line(buf);
    match memchr::memchr(b' ', line) {
        Some(end) => (&line[..end], true),
        None => (line, complete),
    }
}

/// The start line without its line ending, and whether its end has been received.
fn first_line(buf: &[u8]) -> (&[u8], bool) {
    let line = skip_empty_lines(buf);
    match memchr::memchr(b'\n', line) {
        Some(end) => {
            let line = &line[..end];
            (line.strip_suffix(b"\r").unwrap_or(line), true)
        }
        None => (line, false),
    }
}

/// httparse rejects every version but 1.0 and 1.1 alike. RFC 9112 §2.3 defines the syntax
/// `HTTP/DIGIT.DIGIT`: a well-formed other version is 505, anything else is 400. A token that is
/// still a prefix of that syntax (`HTTP/2` of `HTTP/2.0`) needs more bytes to decide.
fn classify_version_error<T>(
    buf: &[u8],
    (token, complete): (&[u8], bool),
    limits: &Limits,
) -> Result<Option<T>, ParseError> {
    const PATTERN: &[u8; 8] = b"HTTP/0.0";
    let matches_at = |i: usize, b: u8| {
        if PATTERN[i] == b'0' {
            b.is_ascii_digit()
        } else {
            b == PATTERN[i]
        }
    };
    let is_prefix =
        token.len() <= PATTERN.len() && token.iter().enumerate().all(|(i, &b)| matches_at(i, b));
    if is_prefix && token.len() == PATTERN.len() {
        Err(ParseError::UnsupportedVersion)
    } else if is_prefix && !complete {
        partial(buf, limits)
    } else {
        Err(ParseError::Malformed)
    }
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host` and to any
/// request with more than one `Host` line or an invalid `Host` value (a list is never valid).
fn check_host(version: Version, headers: &[Header<'_>]) -> Result<(), ParseError> {
    let mut count = 0usize;
    for h in headers {
        if h.name.eq_ignore_ascii_case("host") {
            count += 1;
            if count > 1 || h.value.contains(&b',') {
                return Err(ParseError::MissingHost);
            }
        }
    }
    if count == 0 && version == Version::Http11 {
        return Err(ParseError::MissingHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 256,
            max_headers: 4,
            max_uri_bytes: 32,
        }
    }

    type Outcome = Result<Option<(String, String, Version, usize)>, ParseError>;

    fn req(buf: &[u8], limits: &Limits) -> Outcome {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        parse_request(buf, &mut headers, limits).map(|o| {
            o.map(|h| {
                (
                    h.method.to_string(),
                    h.target.to_string(),
                    h.version,
                    h.headers.len(),
                )
            })
        })
    }

    fn ok(method: &str, target: &str, version: Version, n: usize) -> Outcome {
        Ok(Some((method.to_string(), target.to_string(), version, n)))
    }

    #[test]
    fn parse_request_table() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(40));
        let long_target_partial = format!("GET /{}", "a".repeat(40));
        let long_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(300)
        );
        let long_head_partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "b".repeat(300));
        let target_at_limit = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(31));
        let rows: &[(&str, &[u8], Outcome)] = &[
            (
                "simple_get_parses",
                b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
                ok("GET", "/x", Version::Http11, 1),
            ),
            (
                "http10_without_host_parses",
                b"GET / HTTP/1.0\r\n\r\n",
                ok("GET", "/", Version::Http10, 0),
            ),
            (
                "leading_empty_lines_are_skipped",
                b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                ok("GET", "/", Version::Http11, 1),
            ),
            (
                "bare_lf_line_endings_are_accepted",
                b"GET / HTTP/1.1\nHost: a\n\n",
                ok("GET", "/", Version::Http11, 1),
            ),
            ("empty_input_is_incomplete", b"", Ok(None)),
            ("only_empty_lines_are_incomplete", b"\r\n\r\n", Ok(None)),
            ("partial_request_line_is_incomplete", b"GET /x HT", Ok(None)),
            (
                "partial_headers_are_incomplete",
                b"GET / HTTP/1.1\r\nHost: a\r\n",
                Ok(None),
            ),
            (
                "missing_host_on_http11_is_rejected",
                b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
                Err(ParseError::MissingHost),
            ),
            (
                "two_hosts_are_rejected",
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                Err(ParseError::MissingHost),
            ),
            (
                "two_hosts_on_http10_are_rejected",
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                Err(ParseError::MissingHost),
            ),
            (
                "host_list_is_rejected",
                b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
                Err(ParseError::MissingHost),
            ),
            (
                "empty_host_is_accepted",
                b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
                ok("GET", "/", Version::Http11, 1),
            ),
            (
                "obs_fold_is_rejected",
                b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "space_before_colon_is_rejected",
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "bad_method_char_is_rejected",
                b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "double_space_in_request_line_is_rejected",
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "space_in_target_is_rejected_not_505",
                b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "http09_request_line_is_rejected",
                b"GET /\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "lowercase_version_is_rejected",
                b"GET / http/1.1\r\nHost: a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "http20_is_unsupported_version",
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                Err(ParseError::UnsupportedVersion),
            ),
            (
                "http12_is_unsupported_version",
                b"GET / HTTP/1.2\r\n\r\n",
                Err(ParseError::UnsupportedVersion),
            ),
            ("http2_prefix_is_incomplete", b"GET / HTTP/2", Ok(None)),
            (
                "http2_without_minor_is_rejected",
                b"GET / HTTP/2\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "nul_in_header_value_is_rejected",
                b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "lone_cr_is_rejected",
                b"GET / HTTP/1.1\rHost: a\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "uri_too_long_complete_is_414",
                long_target.as_bytes(),
                Err(ParseError::UriTooLong),
            ),
            (
                "uri_too_long_partial_is_414",
                long_target_partial.as_bytes(),
                Err(ParseError::UriTooLong),
            ),
            (
                "uri_at_limit_is_accepted",
                target_at_limit.as_bytes(),
                ok("GET", &format!("/{}", "a".repeat(31)), Version::Http11, 1),
            ),
            (
                "head_too_large_complete_is_431",
                long_head.as_bytes(),
                Err(ParseError::HeadTooLarge),
            ),
            (
                "head_too_large_partial_is_431",
                long_head_partial.as_bytes(),
                Err(ParseError::HeadTooLarge),
            ),
            (
                "max_headers_is_accepted",
                b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                ok("GET", "/", Version::Http11, 4),
            ),
            (
                "too_many_headers_is_431",
                b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
                Err(ParseError::TooManyHeaders),
            ),
            (
                "too_many_headers_partial_is_431",
                b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n",
                Err(ParseError::TooManyHeaders),
            ),
        ];
        for (name, input, want) in rows {
            assert_eq!(&req(input, &limits()), want, "{name}");
        }
    }

    #[test]
    fn parse_request_head_len_points_at_body() {
        let buf = b"\r\nPOST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        let head = parse_request(buf, &mut headers, &Limits::default())
            .ok()
            .flatten()
            .map(|h| h.head_len);
        assert_eq!(head, Some(buf.len() - b"abcGET".len()));
    }

    #[test]
    fn parse_request_every_prefix_is_incomplete() {
        let buf = b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        for end in 0..buf.len() {
            assert_eq!(
                req(&buf[..end], &Limits::default()),
                Ok(None),
                "prefix {end}"
            );
        }
        assert!(matches!(req(buf, &Limits::default()), Ok(Some(_))));
    }

    #[test]
    fn parse_request_partial_over_limit_only_when_buffered_exceeds() {
        // Exactly max_head_bytes buffered without the end of the head is still incomplete.
        let l = Limits {
            max_head_bytes: 20,
            ..limits()
        };
        let rows: &[(&str, &[u8], Outcome)] = &[
            (
                "at_limit_is_incomplete",
                b"GET / HTTP/1.1\r\nHost",
                Ok(None),
            ),
            (
                "over_limit_is_431",
                b"GET / HTTP/1.1\r\nHost:",
                Err(ParseError::HeadTooLarge),
            ),
        ];
        for (name, input, want) in rows {
            assert_eq!(&req(input, &l), want, "{name}");
        }
    }

    type ResOutcome = Result<Option<(Version, u16, String, usize)>, ParseError>;

    fn res(buf: &[u8]) -> ResOutcome {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        parse_response(buf, &mut headers, &limits())
            .map(|o| o.map(|h| (h.version, h.status, h.reason.to_string(), h.headers.len())))
    }

    #[test]
    fn parse_response_table() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "b".repeat(300));
        let rows: &[(&str, &[u8], ResOutcome)] = &[
            (
                "simple_200_parses",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Ok(Some((Version::Http11, 200, "OK".into(), 1))),
            ),
            (
                "http10_without_reason_parses",
                b"HTTP/1.0 404\r\n\r\n",
                Ok(Some((Version::Http10, 404, String::new(), 0))),
            ),
            (
                "space_before_colon_is_tolerated",
                b"HTTP/1.1 200 OK\r\nServer : x\r\n\r\n",
                Ok(Some((Version::Http11, 200, "OK".into(), 1))),
            ),
            ("partial_is_incomplete", b"HTTP/1.1 200 OK\r\n", Ok(None)),
            (
                "obs_fold_is_rejected",
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "status_below_100_is_rejected",
                b"HTTP/1.1 099 Odd\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "status_above_599_is_rejected",
                b"HTTP/1.1 600 Odd\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "http2_is_unsupported_version",
                b"HTTP/2.0 200 OK\r\n\r\n",
                Err(ParseError::UnsupportedVersion),
            ),
            (
                "garbage_is_malformed",
                b"hello world\r\n\r\n",
                Err(ParseError::Malformed),
            ),
            (
                "too_many_headers_is_431",
                b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
                Err(ParseError::TooManyHeaders),
            ),
            (
                "head_too_large_is_431",
                long.as_bytes(),
                Err(ParseError::HeadTooLarge),
            ),
            (
                "head_too_large_partial_is_431",
                &long.as_bytes()[..long.len() - 4],
                Err(ParseError::HeadTooLarge),
            ),
        ];
        for (name, input, want) in rows {
            assert_eq!(&res(input), want, "{name}");
        }
    }

    #[test]
    fn parse_error_status_table() {
        let rows: &[(&str, ParseError, u16)] = &[
            ("malformed_is_400", ParseError::Malformed, 400),
            ("uri_too_long_is_414", ParseError::UriTooLong, 414),
            ("head_too_large_is_431", ParseError::HeadTooLarge, 431),
            ("too_many_headers_is_431", ParseError::TooManyHeaders, 431),
            ("version_is_505", ParseError::UnsupportedVersion, 505),
            ("conflicting_is_400", ParseError::ConflictingFraming, 400),
            ("bad_cl_is_400", ParseError::InvalidContentLength, 400),
            (
                "bad_te_is_400",
                ParseError::UnsupportedTransferEncoding,
                400,
            ),
            ("missing_host_is_400", ParseError::MissingHost, 400),
        ];
        for (name, err, want) in rows {
            assert_eq!(err.status(), *want, "{name}");
            assert!(!err.reason().is_empty(), "{name}");
        }
    }

    #[test]
    fn split_absolute_form_table() {
        let t = |scheme, authority, path| {
            Some(AbsoluteTarget {
                scheme,
                authority,
                path,
            })
        };
        let rows: &[(&str, &str, Option<AbsoluteTarget<'_>>)] = &[
            (
                "absolute_with_port_and_query_splits",
                "http://h:8080/a/b?c=d",
                t("http", "h:8080", "/a/b?c=d"),
            ),
            (
                "absolute_without_path_has_empty_path",
                "http://h",
                t("http", "h", ""),
            ),
            (
                "absolute_query_only_keeps_query",
                "http://h?x=1",
                t("http", "h", "?x=1"),
            ),
            (
                "absolute_fragment_is_dropped",
                "http://h/p#frag",
                t("http", "h", "/p"),
            ),
            (
                "absolute_upper_scheme_is_kept",
                "HTTP://h/",
                t("HTTP", "h", "/"),
            ),
            (
                "absolute_ipv6_authority_splits",
                "http://[::1]:80/x",
                t("http", "[::1]:80", "/x"),
            ),
            ("origin_form_is_none", "/a/b", None),
            ("authority_form_is_none", "h:443", None),
            ("asterisk_form_is_none", "*", None),
            ("empty_authority_is_none", "http:///p", None),
            ("userinfo_is_none", "http://u:p@h/x", None),
            ("bad_scheme_is_none", "1http://h/", None),
            ("path_with_scheme_like_query_is_none", "/r?u=http://h", None),
        ];
        for (name, input, want) in rows {
            assert_eq!(&split_absolute_form(input), want, "{name}");
        }
    }

    #[test]
    fn parse_response_every_prefix_is_incomplete() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\n";
        for end in 0..buf.len() {
            assert_eq!(res(&buf[..end]), Ok(None), "prefix {end}");
        }
        assert!(matches!(res(buf), Ok(Some(_))));
    }

    /// Deterministic xorshift so the test needs no rand dependency.
    fn next_rand(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn parse_random_bytes_never_panics() {
        let alphabet = b"GET /HTP1.0\r\n:;, \tHost:xa\x00\x7f\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let len = (next_rand(&mut state) % 64) as usize;
            for _ in 0..len {
                let i = (next_rand(&mut state) % alphabet.len() as u64) as usize;
                buf.push(alphabet[i]);
            }
            let mut headers = header_slots::<8>();
            let _ = parse_request(&buf, &mut headers, &limits());
            let mut headers = header_slots::<8>();
            let _ = parse_response(&buf, &mut headers, &limits());
        }
    }

    #[test]
    fn version_display_is_wire_token() {
        assert_eq!(Version::Http10.to_string(), "HTTP/1.0");
        assert_eq!(Version::Http11.to_string(), "HTTP/1.1");
    }
}

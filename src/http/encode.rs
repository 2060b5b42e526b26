//! Encoding of forwarded heads and proxy-generated responses into a caller-owned, reused `Vec<u8>`.
//!
//! It decides no framing and no keep-alive itself: callers pass the [`BodyKind`] and persistence
//! they chose, and write bodies themselves.

use httparse::Header;

use super::body::BodyKind;
use super::headers::{connection_has, is_fixed_hop_by_hop};
use super::parse::{ParseError, RequestHead, ResponseHead, Version};

const CRLF: &[u8] = b"\r\n";

/// The reason phrase registered for `status` (RFC 9110 §15, plus RFC 6585 and RFC 8297);
/// `""` for codes without one.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Appends the request head sent upstream, always as HTTP/1.1 and persistent.
///
/// Writes `METHOD target HTTP/1.1` (a `target` that is empty or starts with `?` gets a leading
/// `/`, RFC 9112 §3.2.1), then `Host: <host>` first when `host` is `Some` (replacing every
/// `Host` line of `head`), then each header of `head` except hop-by-hop ones (see
/// [`is_hop_by_hop`](super::is_hop_by_hop)), `Content-Length` and those `extra` replaces (see
/// `replaced_by_extra`), then `extra` verbatim, then
/// the framing for `body`:
/// - `Length(n)`: `content-length: n`;
/// - `Chunked`: the request's own `Transfer-Encoding` lines (validated to end in `chunked`, so
///   codings such as `gzip, chunked` survive), or `transfer-encoding: chunked` if it had none;
/// - `Empty`: `content-length: 0` for POST, PUT and PATCH (RFC 9110 §8.6: a user agent should
///   send it when a body is expected but empty), nothing otherwise;
/// - `CloseDelimited`: never valid for a request (RFC 9112 §6.3 (7)); written like `Empty`.
///
/// A `Host` line is kept even if a `Connection` line names it, so a client cannot strip it.
/// With `host == None` and no `Host` in `head` (an HTTP/1.0 client), no `Host` is sent:
/// pass one.
pub fn encode_request_head(
    head: &RequestHead<'_, '_>,
    target: &str,
    host: Option<&[u8]>,
    body: BodyKind,
    extra: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    // RFC 9112 §3.2.1: an empty path in origin-form is sent as "/" (see `split_absolute_form`).
    if target.is_empty() || target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        push_header(out, "Host", host);
    }
    let has_connection = has_connection_line(head.headers);
    for h in head.headers {
        let is_host = h.name.eq_ignore_ascii_case("host");
        if is_host {
            if host.is_none() {
                push_header(out, h.name, h.value);
            }
            continue;
        }
        if is_dropped(h.name, head.headers, has_connection) || replaced_by_extra(h.name, extra) {
            continue;
        }
        push_header(out, h.name, h.value);
    }
    push_extra(out, extra);
    match body {
        BodyKind::Length(n) => push_content_length(out, n),
        BodyKind::Chunked => push_transfer_encoding(out, head.headers),
        BodyKind::Empty | BodyKind::CloseDelimited => {
            if matches!(head.method, "POST" | "PUT" | "PATCH") {
                push_content_length(out, 0);
            }
        }
    }
    out.extend_from_slice(CRLF);
}

/// Appends the response head sent to the client.
///
/// Writes `HTTP/1.1 status reason` (HTTP/1.1 even to an HTTP/1.0 client, RFC 9110 §6.2; the
/// upstream's reason, or [`reason_phrase`] when it sent none), each header of `head` except
/// hop-by-hop ones, `Content-Length` and those `extra` replaces (see `replaced_by_extra`), then
/// `extra` verbatim, then the framing for `body`:
/// - `Length(n)`: `content-length: n`;
/// - `Chunked`: the upstream's `Transfer-Encoding` lines, or `transfer-encoding: chunked` if it
///   had none. Never pass `Chunked` for an HTTP/1.0 client (RFC 9112 §6.1): de-chunk and pass
///   `CloseDelimited` instead;
/// - `Empty`: the upstream's `Content-Length` lines unchanged, except for 1xx and 204 (for HEAD
///   and 304 they describe the representation, RFC 9110 §8.6, and no body follows anyway);
/// - `CloseDelimited`: nothing.
///
/// Then `connection: close` when the connection will not persist, or `connection: keep-alive`
/// when it will and the client speaks HTTP/1.0 (RFC 9112 §9.3). A `CloseDelimited` body always
/// gets `connection: close`, whatever `keep_alive` says: its end is the close. 1xx interim
/// responses get no `Connection` line; the final response carries it.
pub fn encode_response_head(
    head: &ResponseHead<'_, '_>,
    body: BodyKind,
    keep_alive: bool,
    client_version: Version,
    extra: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) {
    let reason = if head.reason.is_empty() {
        reason_phrase(head.status)
    } else {
        head.reason
    };
    push_status_line(out, head.status, reason);
    let has_connection = has_connection_line(head.headers);
    for h in head.headers {
        if is_dropped(h.name, head.headers, has_connection) || replaced_by_extra(h.name, extra) {
            continue;
        }
        push_header(out, h.name, h.value);
    }
    push_extra(out, extra);
    let interim = (100..200).contains(&head.status);
    match body {
        BodyKind::Length(n) => push_content_length(out, n),
        BodyKind::Chunked => push_transfer_encoding(out, head.headers),
        BodyKind::Empty => {
            // RFC 9110 §8.6: a server must not send Content-Length in a 1xx or 204 response.
            if !interim && head.status != 204 {
                let lengths = head
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
                for h in lengths {
                    push_header(out, h.name, h.value);
                }
            }
        }
        BodyKind::CloseDelimited => {}
    }
    if !interim {
        let persistent = keep_alive && body != BodyKind::CloseDelimited;
        push_connection(out, persistent, client_version);
    }
    out.extend_from_slice(CRLF);
}

/// Appends a complete small response generated by the proxy (errors, synthetic faults).
///
/// Writes the status line with [`reason_phrase`], `content-type` (skipped when `content_type` is
/// empty), `extra` verbatim, `content-length`, `connection: close` when `!keep_alive`, the empty
/// line and `body`. For 1xx, 204 and 304, which cannot have a body (RFC 9112 §6.3 (1)), neither
/// `content-length` nor `body` is written.
pub fn encode_simple_response(
    status: u16,
    content_type: &str,
    extra: &[(&str, &[u8])],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    encode_simple_parts(status, content_type, extra, &[body], keep_alive, out);
}

/// Appends a proxy-generated error for `status`: `content-type: text/plain`,
/// `connection: close` (the proxy always closes after a rejected request or a failed exchange)
/// and a one-line body, the reason phrase (or `error` for a code without one).
pub fn encode_error(status: u16, out: &mut Vec<u8>) {
    let reason = match reason_phrase(status) {
        "" => "error",
        reason => reason,
    };
    encode_simple_parts(
        status,
        "text/plain",
        &[],
        &[reason.as_bytes(), b"\n"],
        false,
        out,
    );
}

/// Appends the error response for a rejected request head: [`ParseError::status`] with a
/// one-line text/plain body of [`ParseError::reason`], and `connection: close`.
pub fn encode_parse_error(err: ParseError, out: &mut Vec<u8>) {
    encode_simple_parts(
        err.status(),
        "text/plain",
        &[],
        &[err.reason().as_bytes(), b"\n"],
        false,
        out,
    );
}

/// [`encode_simple_response`] with the body given in pieces, so callers need not join them.
fn encode_simple_parts(
    status: u16,
    content_type: &str,
    extra: &[(&str, &[u8])],
    body: &[&[u8]],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    push_status_line(out, status, reason_phrase(status));
    if !content_type.is_empty() {
        push_header(out, "content-type", content_type.as_bytes());
    }
    push_extra(out, extra);
    let has_body = !((100..200).contains(&status) || status == 204 || status == 304);
    if has_body {
        let len: usize = body.iter().map(|part| part.len()).sum();
        // usize → u64 never truncates on the 32- and 64-bit targets we build for.
        push_content_length(out, len as u64);
    }
    if !keep_alive {
        push_header(out, "connection", b"close");
    }
    out.extend_from_slice(CRLF);
    if has_body {
        for part in body {
            out.extend_from_slice(part);
        }
    }
}

/// Whether a received field is not copied: `Content-Length` (re-emitted from the framing) and
/// hop-by-hop fields (RFC 9110 §7.6.1). Same result as [`is_hop_by_hop`](super::is_hop_by_hop),
/// but the per-field `Connection` scan, quadratic in the header count, only runs when the message
/// has a `Connection` line at all.
fn is_dropped(name: &str, headers: &[Header<'_>], has_connection: bool) -> bool {
    name.eq_ignore_ascii_case("content-length")
        || is_fixed_hop_by_hop(name)
        || (has_connection && connection_has(headers, name))
}

fn has_connection_line(headers: &[Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"))
}

fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(CRLF);
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(CRLF);
}

/// Whether an incoming header gives way to one of `extra`: a header the proxy sets (e.g. the
/// `traceparent` naming its own span) replaces the sender's, except `Via`, a list every hop
/// appends to (RFC 9110 §7.6.3), so the incoming lines stay and ours follows them.
fn replaced_by_extra(name: &str, extra: &[(&str, &[u8])]) -> bool {
    !name.eq_ignore_ascii_case("via") && extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn push_extra(out: &mut Vec<u8>, extra: &[(&str, &[u8])]) {
    for (name, value) in extra {
        push_header(out, name, value);
    }
}

fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(CRLF);
}

/// The message's own `Transfer-Encoding` lines (already validated to end in a single
/// `chunked`), or a plain `chunked` when it had none (the caller chose to chunk).
fn push_transfer_encoding(out: &mut Vec<u8>, headers: &[Header<'_>]) {
    let mut written = false;
    let lines = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    for h in lines {
        push_header(out, "transfer-encoding", h.value);
        written = true;
    }
    if !written {
        push_header(out, "transfer-encoding", b"chunked");
    }
}

fn push_connection(out: &mut Vec<u8>, keep_alive: bool, client_version: Version) {
    match (keep_alive, client_version) {
        (false, _) => push_header(out, "connection", b"close"),
        (true, Version::Http10) => push_header(out, "connection", b"keep-alive"),
        (true, Version::Http11) => {}
    }
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::is_hop_by_hop;
    use crate::http::parse::{
        Limits, MAX_HEADERS_CAP, header_slots, parse_request, parse_response,
    };

    fn with_request<R>(raw: &[u8], f: impl FnOnce(&RequestHead<'_, '_>) -> R) -> R {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        match parse_request(raw, &mut headers, &Limits::default()) {
            Ok(Some(head)) => f(&head),
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn with_response<R>(raw: &[u8], f: impl FnOnce(&ResponseHead<'_, '_>) -> R) -> R {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        match parse_response(raw, &mut headers, &Limits::default()) {
            Ok(Some(head)) => f(&head),
            other => panic!("test response did not parse: {other:?}"),
        }
    }

    type ReqRow<'a> = (
        &'a str,
        &'a [u8],
        &'a str,
        Option<&'a [u8]>,
        BodyKind,
        &'a [(&'a str, &'a [u8])],
        &'a str,
    );

    #[test]
    fn encode_request_head_table() {
        let rows: &[ReqRow<'_>] = &[
            (
                "request_plain_get_is_copied",
                b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[],
                "GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
            ),
            (
                "request_extra_traceparent_replaces_incoming_via_appends",
                b"GET /a HTTP/1.1\r\nHost: h\r\ntraceparent: old\r\nVia: 1.1 edge\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[("via", b"1.1 phantom-fast"), ("traceparent", b"new")],
                "GET /a HTTP/1.1\r\nHost: h\r\nVia: 1.1 edge\r\nvia: 1.1 phantom-fast\r\ntraceparent: new\r\n\r\n",
            ),
            (
                "request_host_override_is_first",
                b"GET /a HTTP/1.1\r\nAccept: */*\r\nHost: h\r\n\r\n",
                "/a",
                Some(b"up:81"),
                BodyKind::Empty,
                &[],
                "GET /a HTTP/1.1\r\nHost: up:81\r\nAccept: */*\r\n\r\n",
            ),
            (
                "request_hop_by_hop_are_dropped",
                b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: 5\r\nX-Hop: 1\r\nTE: trailers\r\nProxy-Authorization: b\r\nUpgrade: ws\r\nX-End: 2\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[],
                "GET /a HTTP/1.1\r\nHost: h\r\nX-End: 2\r\n\r\n",
            ),
            (
                "request_connection_cannot_strip_host",
                b"GET /a HTTP/1.1\r\nConnection: host\r\nHost: h\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[],
                "GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (
                "request_http10_is_sent_as_http11",
                b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                "/a",
                Some(b"h"),
                BodyKind::Empty,
                &[],
                "GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (
                "request_length_is_reemitted",
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nHost: h\r\n\r\n",
                "/a",
                None,
                BodyKind::Length(3),
                &[],
                "POST /a HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\n",
            ),
            (
                "request_chunked_keeps_codings",
                b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "/a",
                None,
                BodyKind::Chunked,
                &[],
                "POST /a HTTP/1.1\r\nHost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            ),
            (
                "request_chunked_without_te_writes_chunked",
                b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
                "/a",
                None,
                BodyKind::Chunked,
                &[],
                "POST /a HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            (
                "request_empty_post_gets_zero_length",
                b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[],
                "POST /a HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "request_empty_delete_gets_nothing",
                b"DELETE /a HTTP/1.1\r\nHost: h\r\n\r\n",
                "/a",
                None,
                BodyKind::Empty,
                &[],
                "DELETE /a HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (
                "request_extra_and_target_rewrite",
                b"GET http://h:1/a?b HTTP/1.1\r\nHost: h:1\r\n\r\n",
                "/a?b",
                None,
                BodyKind::Empty,
                &[("via", b"1.1 phantom-fast")],
                "GET /a?b HTTP/1.1\r\nHost: h:1\r\nvia: 1.1 phantom-fast\r\n\r\n",
            ),
            (
                "request_empty_target_becomes_slash",
                b"GET http://h HTTP/1.1\r\nHost: h\r\n\r\n",
                "",
                None,
                BodyKind::Empty,
                &[],
                "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (
                "request_query_only_target_gets_slash",
                b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n",
                "?q",
                None,
                BodyKind::Empty,
                &[],
                "GET /?q HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (
                "request_asterisk_target_is_kept",
                b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
                "*",
                None,
                BodyKind::Empty,
                &[],
                "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
        ];
        for (name, raw, target, host, body, extra, want) in rows {
            let mut out = Vec::new();
            with_request(raw, |head| {
                encode_request_head(head, target, *host, *body, extra, &mut out)
            });
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
        }
    }

    #[test]
    fn encode_request_head_round_trip_parses_to_same_minus_hop_by_hop() {
        let raw: &[u8] = b"PUT /x?y=1 HTTP/1.1\r\nHost: example.com\r\nConnection: X-A\r\nX-A: drop\r\nAccept: a\r\nProxy-Connection: k\r\nX-Multi: 1\r\nX-Multi: 2\r\nContent-Length: 4\r\n\r\n";
        with_request(raw, |head| {
            let mut out = Vec::new();
            encode_request_head(head, head.target, None, BodyKind::Length(4), &[], &mut out);
            let mut again = header_slots::<MAX_HEADERS_CAP>();
            let parsed = match parse_request(&out, &mut again, &Limits::default()) {
                Ok(Some(p)) => p,
                other => panic!("re-encoded head did not parse: {other:?}"),
            };
            assert_eq!(parsed.method, head.method);
            assert_eq!(parsed.target, head.target);
            assert_eq!(parsed.version, Version::Http11);
            assert_eq!(parsed.head_len, out.len());
            let kept: Vec<(String, Vec<u8>)> = head
                .headers
                .iter()
                .filter(|h| !is_hop_by_hop(h.name, head.headers))
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            let got: Vec<(String, Vec<u8>)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            // Content-Length moves to the end (re-emitted framing); compare as multisets in order
            // of the remaining fields.
            let strip = |v: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
                v.iter()
                    .filter(|(n, _)| n != "content-length")
                    .cloned()
                    .collect()
            };
            assert_eq!(strip(&got), strip(&kept));
            assert_eq!(
                crate::http::headers::header(parsed.headers, "content-length"),
                Some(&b"4"[..])
            );
        });
    }

    type ResRow<'a> = (&'a str, &'a [u8], BodyKind, bool, Version, &'a str);

    #[test]
    fn encode_response_head_table() {
        let rows: &[ResRow<'_>] = &[
            (
                "response_length_keep_alive_11",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\n\r\n",
                BodyKind::Length(2),
                true,
                Version::Http11,
                "HTTP/1.1 200 OK\r\nServer: s\r\ncontent-length: 2\r\n\r\n",
            ),
            (
                "response_keep_alive_10_client_says_keep_alive",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                BodyKind::Length(2),
                true,
                Version::Http10,
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
            ),
            (
                "response_not_keep_alive_says_close",
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
                BodyKind::Length(2),
                false,
                Version::Http11,
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
            ),
            (
                "response_http10_upstream_is_sent_as_11",
                b"HTTP/1.0 404 Nope\r\nContent-Length: 0\r\n\r\n",
                BodyKind::Length(0),
                true,
                Version::Http11,
                "HTTP/1.1 404 Nope\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "response_missing_reason_gets_registered_one",
                b"HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n",
                BodyKind::Length(0),
                true,
                Version::Http11,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "response_chunked_keeps_te_and_drops_trailer_field",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n",
                BodyKind::Chunked,
                true,
                Version::Http11,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            (
                "response_close_delimited_forces_close",
                b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\n",
                BodyKind::CloseDelimited,
                true,
                Version::Http11,
                "HTTP/1.1 200 OK\r\nServer: s\r\nconnection: close\r\n\r\n",
            ),
            (
                "response_head_keeps_content_length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                BodyKind::Empty,
                true,
                Version::Http11,
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            ),
            (
                "response_304_keeps_content_length",
                b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n",
                BodyKind::Empty,
                true,
                Version::Http11,
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n",
            ),
            (
                "response_204_drops_content_length",
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                BodyKind::Empty,
                true,
                Version::Http11,
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                "response_100_has_no_connection_line",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                BodyKind::Empty,
                false,
                Version::Http11,
                "HTTP/1.1 100 Continue\r\n\r\n",
            ),
        ];
        for (name, raw, body, keep_alive, client, want) in rows {
            let mut out = Vec::new();
            with_response(raw, |head| {
                encode_response_head(head, *body, *keep_alive, *client, &[], &mut out)
            });
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
        }
    }

    #[test]
    fn encode_response_head_extra_goes_before_framing() {
        let mut out = Vec::new();
        with_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", |head| {
            encode_response_head(
                head,
                BodyKind::Length(1),
                true,
                Version::Http11,
                &[("via", b"1.1 phantom-fast")],
                &mut out,
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nvia: 1.1 phantom-fast\r\ncontent-length: 1\r\n\r\n"
        );
    }

    #[test]
    fn encode_simple_response_table() {
        type Row<'a> = (
            &'a str,
            u16,
            &'a str,
            &'a [(&'a str, &'a [u8])],
            &'a [u8],
            bool,
            &'a str,
        );
        let rows: &[Row<'_>] = &[
            (
                "simple_fault_503_keep_alive",
                503,
                "application/json",
                &[("x-fault-injected", b"phantom")],
                b"{\"fault\":\"injected\"}",
                true,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-fault-injected: phantom\r\ncontent-length: 20\r\n\r\n{\"fault\":\"injected\"}",
            ),
            (
                "simple_close_adds_connection_close",
                200,
                "text/plain",
                &[],
                b"hi",
                false,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
            ),
            (
                "simple_204_has_no_length_or_body",
                204,
                "",
                &[],
                b"ignored",
                true,
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                "simple_unknown_status_has_empty_reason",
                299,
                "",
                &[],
                b"",
                true,
                "HTTP/1.1 299 \r\ncontent-length: 0\r\n\r\n",
            ),
        ];
        for (name, status, ct, extra, body, keep_alive, want) in rows {
            let mut out = Vec::new();
            encode_simple_response(*status, ct, extra, body, *keep_alive, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
        }
    }

    #[test]
    fn encode_error_table() {
        let rows: &[(&str, u16, &str)] = &[
            (
                "error_502_text_plain_close",
                502,
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nBad Gateway\n",
            ),
            (
                "error_431_has_reason",
                431,
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\nRequest Header Fields Too Large\n",
            ),
            (
                "error_unknown_status_says_error",
                599,
                "HTTP/1.1 599 \r\ncontent-type: text/plain\r\ncontent-length: 6\r\nconnection: close\r\n\r\nerror\n",
            ),
        ];
        for (name, status, want) in rows {
            let mut out = Vec::new();
            encode_error(*status, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
        }
    }

    #[test]
    fn encode_parse_error_uses_status_and_reason() {
        let mut out = Vec::new();
        encode_parse_error(ParseError::UriTooLong, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nrequest-target too long\n"
        );
    }

    #[test]
    fn encode_appends_without_reallocating_once_capacity_exists() {
        let mut out = Vec::with_capacity(4096);
        let ptr = out.as_ptr();
        for _ in 0..10 {
            out.clear();
            encode_error(502, &mut out);
            encode_simple_response(503, "application/json", &[], b"{}", true, &mut out);
        }
        assert_eq!(out.as_ptr(), ptr);
    }

    #[test]
    fn push_decimal_table() {
        let rows: &[(&str, u64, &str)] = &[
            ("decimal_zero", 0, "0"),
            ("decimal_ten", 10, "10"),
            ("decimal_max", u64::MAX, "18446744073709551615"),
        ];
        for (name, n, want) in rows {
            let mut out = Vec::new();
            push_decimal(&mut out, *n);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
        }
    }

    #[test]
    fn reason_phrase_table() {
        let rows: &[(&str, u16, &str)] = &[
            ("reason_200", 200, "OK"),
            ("reason_413", 413, "Content Too Large"),
            ("reason_431", 431, "Request Header Fields Too Large"),
            ("reason_504", 504, "Gateway Timeout"),
            ("reason_unknown_empty", 299, ""),
        ];
        for (name, status, want) in rows {
            assert_eq!(reason_phrase(*status), *want, "{name}");
        }
    }
}

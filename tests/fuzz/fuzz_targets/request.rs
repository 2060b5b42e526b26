//! Fuzz target `request`: arbitrary client bytes through request-head parsing, body framing and
//! the chunked decoder, exactly as the proxy walks a pipelined client stream.
//! It checks the pure `http` module only; sockets, timeouts and the proxy loop are not involved.
//!
//! Oracles, per request in the stream:
//! - `parse_request` and `request_body_kind` return a value or an error, never panic.
//! - A request that frames (`Ok(kind)`) re-serialised by `encode_request_head` parses again to the
//!   same method, target, non-hop-by-hop headers and body framing (version becomes HTTP/1.1): what
//!   the proxy sends upstream is the request it accepted, so nothing can be smuggled past it.
//! - A chunked body decodes to the same bytes and outcome whether fed in one piece, split at any
//!   point, or one byte at a time, and every call makes progress (no unbounded loop).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_fast::http::{
    BodyKind, Limits, MAX_HEADERS_CAP, RequestHead, Version, encode_request_head, header_slots,
    is_hop_by_hop, parse_request, request_body_kind,
};

/// Host sent upstream for an HTTP/1.0 request without one, as the proxy does in reverse mode.
const FALLBACK_HOST: &[u8] = b"upstream.invalid";

/// Limits for re-parsing what we encoded: the upstream's limits are not ours, and encoding may add
/// a `Host` and a framing line to a head that was at our limit.
const REPARSE_LIMITS: Limits = Limits {
    max_head_bytes: usize::MAX,
    max_headers: MAX_HEADERS_CAP,
    max_uri_bytes: usize::MAX,
};

#[path = "chunked.rs"]
mod chunked;

use chunked::decode_equivalently;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    // Each round consumes at least one byte (a head is never empty), so this ends.
    while !rest.is_empty() {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        let head = match parse_request(rest, &mut headers, &limits) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        assert!(
            head.head_len > 0 && head.head_len <= rest.len(),
            "head_len {} outside 1..={}",
            head.head_len,
            rest.len()
        );
        let Ok(kind) = request_body_kind(&head) else {
            return;
        };
        assert!(
            kind != BodyKind::CloseDelimited,
            "a request is never close-delimited"
        );
        check_reencode(&head, kind);
        let body = &rest[head.head_len..];
        let body_len = match kind {
            BodyKind::Empty => 0,
            BodyKind::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= body.len() => n,
                _ => return,
            },
            BodyKind::Chunked => match decode_equivalently(body, body.len() / 2) {
                Some(consumed) => consumed,
                None => return,
            },
            BodyKind::CloseDelimited => return,
        };
        rest = &body[body_len..];
    }
});

/// Encodes `head` as the proxy would for the upstream and checks the result parses back to it.
fn check_reencode(head: &RequestHead<'_, '_>, kind: BodyKind) {
    let has_host = head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"));
    let host = if has_host { None } else { Some(FALLBACK_HOST) };
    let mut out = Vec::new();
    encode_request_head(head, head.target, host, kind, &[], &mut out);

    let mut headers = header_slots::<MAX_HEADERS_CAP>();
    let again = match parse_request(&out, &mut headers, &REPARSE_LIMITS) {
        Ok(Some(again)) => again,
        other => panic!(
            "re-encoded head does not parse ({:?}):\n{}",
            other.map(|o| o.map(|h| h.head_len)),
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(
        again.head_len,
        out.len(),
        "re-encoded head has trailing bytes"
    );
    assert_eq!(again.method, head.method, "method changed");
    // RFC 9112 §3.2.1: an empty path is sent as "/" (the encoder adds it before a bare query).
    let want_target = if head.target.starts_with('?') {
        format!("/{}", head.target)
    } else {
        head.target.to_owned()
    };
    assert_eq!(again.target, want_target, "target changed");
    assert_eq!(
        again.version,
        Version::Http11,
        "upstream requests are HTTP/1.1"
    );

    let want: Vec<(String, &[u8])> = host
        .map(|h| ("Host".to_owned(), h))
        .into_iter()
        .chain(
            head.headers
                .iter()
                .filter(|h| {
                    h.name.eq_ignore_ascii_case("host")
                        || !(is_framing(h.name) || is_hop_by_hop(h.name, head.headers))
                })
                .map(|h| (h.name.to_owned(), h.value)),
        )
        .collect();
    let got: Vec<(String, &[u8])> = again
        .headers
        .iter()
        .filter(|h| !is_framing(h.name))
        .map(|h| (h.name.to_owned(), h.value))
        .collect();
    assert_eq!(got, want, "end-to-end headers changed");

    let again_kind = request_body_kind(&again);
    // RFC 9110 §8.6: an empty POST/PUT/PATCH gets an explicit `Content-Length: 0`.
    let want_kind = match kind {
        BodyKind::Empty if matches!(head.method, "POST" | "PUT" | "PATCH") => BodyKind::Length(0),
        other => other,
    };
    assert_eq!(again_kind, Ok(want_kind), "body framing changed");
}

fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

//! Fuzz target `response`: arbitrary upstream bytes through response-head parsing, body framing
//! and the chunked decoder, as the proxy reads a (possibly hostile) upstream connection.
//! It checks the pure `http` module only; sockets and the proxy's 502 mapping are not involved.
//!
//! Input: one control byte, then the upstream's bytes. Bit 0 of the control byte says whether
//! the request was HEAD; the other seven pick where a chunked body is split (0 = start, 127 =
//! end).
//!
//! Oracles, per response in the stream (1xx interim responses are followed by more):
//! - `parse_response` and `response_body_kind` return a value or an error, never panic.
//! - A response that frames (`Ok(kind)`) re-encoded by `encode_response_head` parses again to the
//!   same status, non-hop-by-hop headers and body framing, with `connection: close` exactly when
//!   the body is close-delimited: the client sees the framing the proxy decided on.
//! - A chunked body decodes to the same bytes and outcome whether fed in one piece, split at the
//!   chosen point, or one byte at a time, and every call makes progress (no unbounded loop).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_fast::http::{
    BodyKind, Limits, MAX_HEADERS_CAP, ResponseHead, Version, encode_response_head, header_slots,
    is_hop_by_hop, keep_alive, parse_response, response_body_kind,
};

#[path = "chunked.rs"]
mod chunked;

use chunked::decode_equivalently;

/// Largest value of the split selector (seven bits of the control byte).
const SPLIT_STEPS: usize = 127;

/// Limits for re-parsing what we encoded: the encoder may add a `connection` line to a head that
/// was at our limit.
const REPARSE_LIMITS: Limits = Limits {
    max_head_bytes: usize::MAX,
    max_headers: MAX_HEADERS_CAP,
    max_uri_bytes: usize::MAX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let request_was_head = control & 1 == 1;
    let split_step = usize::from(control >> 1);
    let limits = Limits::default();
    // Each round consumes at least one byte (a head is never empty), so this ends.
    while !rest.is_empty() {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        let head = match parse_response(rest, &mut headers, &limits) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        assert!(
            head.head_len > 0 && head.head_len <= rest.len(),
            "head_len {} outside 1..={}",
            head.head_len,
            rest.len()
        );
        assert!(
            (100..=599).contains(&head.status),
            "status {} accepted",
            head.status
        );
        let Ok(kind) = response_body_kind(&head, request_was_head) else {
            return;
        };
        check_reencode(&head, kind, request_was_head);
        let body = &rest[head.head_len..];
        let body_len = match kind {
            BodyKind::Empty => 0,
            BodyKind::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= body.len() => n,
                _ => return,
            },
            BodyKind::Chunked => {
                let split = body.len() * split_step / SPLIT_STEPS;
                match decode_equivalently(body, split) {
                    Some(consumed) => consumed,
                    None => return,
                }
            }
            // The rest of the connection is the body.
            BodyKind::CloseDelimited => return,
        };
        rest = &body[body_len..];
    }
});

/// Encodes `head` as the proxy would for an HTTP/1.1 client and checks it parses back to it.
fn check_reencode(head: &ResponseHead<'_, '_>, kind: BodyKind, request_was_head: bool) {
    let mut out = Vec::new();
    encode_response_head(head, kind, true, Version::Http11, &[], &mut out);

    let mut headers = header_slots::<MAX_HEADERS_CAP>();
    let again = match parse_response(&out, &mut headers, &REPARSE_LIMITS) {
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
    assert_eq!(again.status, head.status, "status changed");
    if !head.reason.is_empty() {
        assert_eq!(again.reason, head.reason, "reason changed");
    }
    assert_eq!(
        again.version,
        Version::Http11,
        "responses are sent as HTTP/1.1"
    );

    let want: Vec<(String, &[u8])> = head
        .headers
        .iter()
        .filter(|h| !(is_framing(h.name) || is_hop_by_hop(h.name, head.headers)))
        .map(|h| (h.name.to_owned(), h.value))
        .collect();
    let got: Vec<(String, &[u8])> = again
        .headers
        .iter()
        .filter(|h| !(is_framing(h.name) || h.name.eq_ignore_ascii_case("connection")))
        .map(|h| (h.name.to_owned(), h.value))
        .collect();
    assert_eq!(got, want, "end-to-end headers changed");

    assert_eq!(
        response_body_kind(&again, request_was_head),
        Ok(kind),
        "body framing changed"
    );
    let interim = (100..200).contains(&head.status);
    if !interim {
        assert_eq!(
            keep_alive(Version::Http11, again.headers),
            kind != BodyKind::CloseDelimited,
            "persistence does not match the framing"
        );
    }
}

fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

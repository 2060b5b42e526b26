//! The trace record: one answered request, borrowed from the proxy's buffers when written and read
//! back zero-copy (validated by rkyv's bytecheck) from a ring; plus W3C `traceparent` handling.
//!
//! It does not frame, store or render records: `ring` stores bytes, `query` renders them.

use std::net::SocketAddr;

use rkyv::{Archive, Serialize};

/// Which kind of fault rule fired. `trace`'s own copy, so that `trace` does not depend on `fault`.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum FaultKind {
    /// The request was held back before being forwarded.
    Delay,
    /// A synthetic error response was sent instead of forwarding.
    Error,
}

impl FaultKind {
    /// The name used in `--fault` specs and in JSON output (`"delay"`, `"error"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Error => "error",
        }
    }
}

impl ArchivedFaultKind {
    /// The unarchived value (fieldless enum, so this is a plain copy).
    pub fn get(&self) -> FaultKind {
        match self {
            ArchivedFaultKind::Delay => FaultKind::Delay,
            ArchivedFaultKind::Error => FaultKind::Error,
        }
    }
}

/// How an exchange ended, from the client's point of view.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Outcome {
    /// Forwarded and answered by the upstream.
    Ok,
    /// Answered (or delayed) by a fault rule.
    Fault,
    /// The client's request was rejected (400, 408, 431, 501 ...).
    BadRequest,
    /// The upstream was unreachable, refused or sent garbage (502).
    UpstreamError,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The client went away before the response was complete.
    ClientClosed,
}

impl Outcome {
    /// Every outcome, in declaration order (stable order for `stats` output).
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Fault,
        Outcome::BadRequest,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::ClientClosed,
    ];

    /// The kebab-case name used in JSON output: `"ok"`, `"fault"`, `"bad-request"`,
    /// `"upstream-error"`, `"upstream-timeout"`, `"client-closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fault => "fault",
            Outcome::BadRequest => "bad-request",
            Outcome::UpstreamError => "upstream-error",
            Outcome::UpstreamTimeout => "upstream-timeout",
            Outcome::ClientClosed => "client-closed",
        }
    }
}

impl ArchivedOutcome {
    /// The unarchived value (fieldless enum, so this is a plain copy).
    pub fn get(&self) -> Outcome {
        match self {
            ArchivedOutcome::Ok => Outcome::Ok,
            ArchivedOutcome::Fault => Outcome::Fault,
            ArchivedOutcome::BadRequest => Outcome::BadRequest,
            ArchivedOutcome::UpstreamError => Outcome::UpstreamError,
            ArchivedOutcome::UpstreamTimeout => Outcome::UpstreamTimeout,
            ArchivedOutcome::ClientClosed => Outcome::ClientClosed,
        }
    }
}

/// The fault rule that fired for a request.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultHit<'a> {
    /// Index of the rule in the `--fault` list (0-based).
    pub rule: u32,
    /// Delay or error.
    pub kind: FaultKind,
    /// The rule's canonical spec text, e.g. `error:503:0.5`.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub spec: &'a str,
}

/// One answered request, as the proxy saw it. Borrows everything: building one allocates nothing.
///
/// Written with [`TraceWriter::write`](super::TraceWriter::write); read back as
/// [`ArchivedTraceEvent`] without copying.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent<'a> {
    /// W3C trace id: from the incoming `traceparent`, random otherwise. Never 0.
    pub trace_id: u128,
    /// This proxy's span for the exchange (random, never 0).
    pub span_id: u64,
    /// The span named by an incoming `traceparent`, if any.
    pub parent_span_id: Option<u64>,
    /// When the request head started arriving, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// From `start_unix_ns` to the last response byte sent (or the failure), ns.
    pub duration_ns: u64,
    /// From sending the request upstream to the upstream's first response byte, ns; `None` if the
    /// upstream was not contacted.
    pub upstream_ttfb_ns: Option<u64>,
    /// Delay added by a fault rule, ns (0 if none).
    pub injected_delay_ns: u64,
    /// The fault rule that fired, if any.
    pub fault: Option<FaultHit<'a>>,
    /// Request method as received, e.g. `GET`.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub method: &'a [u8],
    /// Full URL: absolute-form as received in forward mode, reconstructed in reverse mode.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub url: &'a [u8],
    /// Protocol version of the request, e.g. `HTTP/1.1`.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub version: &'a str,
    /// Status code sent to the client (0 if none was sent, e.g. the client closed first).
    pub status: u16,
    /// Raw request head as received: request line, headers, final CRLF CRLF.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub request_head: &'a [u8],
    /// Raw response head as sent to the client.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub response_head: &'a [u8],
    /// The first `--trace-body-bytes` of the request body.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub request_body: &'a [u8],
    /// Full length of the request body in bytes (≥ `request_body.len()`).
    pub request_body_len: u64,
    /// The first `--trace-body-bytes` of the response body as sent.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub response_body: &'a [u8],
    /// Full length of the response body in bytes (≥ `response_body.len()`).
    pub response_body_len: u64,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The upstream's address, if one was contacted.
    pub upstream_addr: Option<SocketAddr>,
    /// How the exchange ended.
    pub outcome: Outcome,
}

/// Length of a version-00 `traceparent` value: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_BYTES: usize = 55;

/// Parses a W3C Trace Context `traceparent` header value
/// (`<version>-<trace-id 32 hex>-<parent-id 16 hex>-<flags 2 hex>`) into
/// `(trace_id, parent_span_id, flags)`.
///
/// Follows W3C Trace Context §3.2: lower-case hex only, version `ff` is invalid, all-zero trace or
/// parent ids are invalid, version 00 is exactly 55 bytes, and a higher version may append
/// `-<more>` which is ignored. Surrounding spaces/tabs (header OWS) are trimmed. Returns `None`
/// for anything invalid: the proxy then starts a fresh trace.
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    let value = value.trim_ascii();
    if value.len() < TRACEPARENT_BYTES {
        return None;
    }
    let version = parse_hex(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != TRACEPARENT_BYTES) {
        return None;
    }
    if value.len() > TRACEPARENT_BYTES && value[TRACEPARENT_BYTES] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex(&value[3..35])?;
    let span_id = parse_hex(&value[36..52])? as u64;
    let flags = parse_hex(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// Lower-case hex of at most 32 digits; `None` on any other byte.
fn parse_hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(nibble))
    })
}

/// Appends a version-00 `traceparent` value, `00-{trace:032x}-{span:016x}-{flags:02x}`, to `out`
/// (allocates only if `out` lacks 55 bytes of spare capacity).
pub fn encode_traceparent(trace_id: u128, span_id: u64, flags: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(b"00-");
    encode_hex(trace_id, 32, out);
    out.push(b'-');
    encode_hex(u128::from(span_id), 16, out);
    out.push(b'-');
    encode_hex(u128::from(flags), 2, out);
}

/// Appends the low `digits` nibbles of `value` as lower-case hex, most significant first.
fn encode_hex(value: u128, digits: u32, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize]);
    }
}

/// A random, non-zero trace id (W3C forbids the all-zero id).
pub fn random_trace_id(rng: &mut fastrand::Rng) -> u128 {
    loop {
        let id = rng.u128(..);
        if id != 0 {
            return id;
        }
    }
}

/// A random, non-zero span id (W3C forbids the all-zero id).
pub fn random_span_id(rng: &mut fastrand::Rng) -> u64 {
    loop {
        let id = rng.u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    #[test]
    fn parse_traceparent_rows() {
        type Parsed = Option<(u128, u64, u8)>;
        let rows: &[(&str, &str, Parsed)] = &[
            (
                "spec_example_sampled",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some((TRACE, SPAN, 1)),
            ),
            (
                "not_sampled",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some((TRACE, SPAN, 0)),
            ),
            (
                "ows_trimmed",
                " \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                Some((TRACE, SPAN, 1)),
            ),
            (
                "future_version_with_suffix_accepted",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                Some((TRACE, SPAN, 1)),
            ),
            (
                "version_00_with_suffix_rejected",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                None,
            ),
            (
                "version_ff_rejected",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "zero_trace_id_rejected",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "zero_span_id_rejected",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "uppercase_hex_rejected",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "short_rejected",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                None,
            ),
            (
                "wrong_separator_rejected",
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "non_hex_rejected",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                None,
            ),
            ("empty_rejected", "", None),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_traceparent(input.as_bytes()), *want, "row {name}");
        }
    }

    #[test]
    fn encode_traceparent_rows() {
        let rows: &[(&str, u128, u64, u8, &str)] = &[
            (
                "spec_example",
                TRACE,
                SPAN,
                1,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "small_values_zero_padded",
                1,
                2,
                0,
                "00-00000000000000000000000000000001-0000000000000002-00",
            ),
            (
                "max_values",
                u128::MAX,
                u64::MAX,
                0xff,
                "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff",
            ),
        ];
        for (name, trace, span, flags, want) in rows {
            let mut out = b"prefix:".to_vec();
            encode_traceparent(*trace, *span, *flags, &mut out);
            assert_eq!(out, [b"prefix:", want.as_bytes()].concat(), "row {name}");
        }
    }

    #[test]
    fn traceparent_encode_then_parse_round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let (trace, span, flags) = (
                random_trace_id(&mut rng),
                random_span_id(&mut rng),
                rng.u8(..),
            );
            let mut out = Vec::new();
            encode_traceparent(trace, span, flags, &mut out);
            assert_eq!(parse_traceparent(&out), Some((trace, span, flags)));
        }
    }

    #[test]
    fn outcome_as_str_rows() {
        let rows: &[(&str, Outcome, &str)] = &[
            ("ok", Outcome::Ok, "ok"),
            ("fault", Outcome::Fault, "fault"),
            ("bad_request", Outcome::BadRequest, "bad-request"),
            ("upstream_error", Outcome::UpstreamError, "upstream-error"),
            (
                "upstream_timeout",
                Outcome::UpstreamTimeout,
                "upstream-timeout",
            ),
            ("client_closed", Outcome::ClientClosed, "client-closed"),
        ];
        for (name, outcome, want) in rows {
            assert_eq!(outcome.as_str(), *want, "row {name}");
        }
        assert_eq!(Outcome::ALL.len(), rows.len());
    }
}

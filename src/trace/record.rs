//! The trace record: one answered request, borrowed from the proxy's buffers when written and read
//! back zero-copy (validated by rkyv's bytecheck) from a ring; plus W3C `traceparent` handling.
//!
//! It does not frame, store or render records: `ring` stores bytes, `render` renders them.

use std::net::SocketAddr;

use rkyv::{Archive, Serialize};

/// Version of the record schema this release writes and reads. Bump on any change to
/// [`TraceEvent`] or what it holds; the ring format version moves with it, so a ring of another
/// schema is refused with a clear message instead of having every record skipped.
///
/// Schema 3: the `client-tls-failed` outcome.
pub const RECORD_SCHEMA: u16 = 3;

/// What a fault did to an exchange. `trace`'s own list (it names the rule kinds of the fault
/// model; `fault` maps its plan onto these): the seed's two kinds first, then the response-side,
/// body and connection faults.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum FaultKind {
    /// Held back before being forwarded. Value: the sampled delay, ns.
    Delay,
    /// A synthetic response was sent instead of forwarding. Value: its status code.
    Error,
    /// Held back before the upstream's response head was relayed. Value: the delay, ns.
    ResponseDelay,
    /// Held back between response body chunks. Value: the total delay, ns.
    BodyDelay,
    /// The response body was paced to a bandwidth. Value: bytes per second.
    Throttle,
    /// The response body was sent in pieces over a total time. Value: the total time, ns.
    Dribble,
    /// The response body was cut short and the connection closed. Value: bytes sent.
    Truncate,
    /// The connection was reset (RST). Value: response body bytes sent before it.
    Reset,
    /// The connection was closed without a response. Value: 0.
    Close,
    /// Nothing was answered until the client gave up. Value: how long it hung, ns.
    Hang,
    /// Bytes that are not HTTP were sent. Value: how many.
    Garbage,
    /// The response head was dribbled. Value: the total time, ns.
    SlowHeaders,
    /// The request body going upstream was paced. Value: bytes per second.
    RequestThrottle,
    /// The request body going upstream was cut short. Value: bytes sent.
    RequestTruncate,
}

impl FaultKind {
    /// Every kind, in declaration order (stable order for `stats` output).
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Delay,
        FaultKind::Error,
        FaultKind::ResponseDelay,
        FaultKind::BodyDelay,
        FaultKind::Throttle,
        FaultKind::Dribble,
        FaultKind::Truncate,
        FaultKind::Reset,
        FaultKind::Close,
        FaultKind::Hang,
        FaultKind::Garbage,
        FaultKind::SlowHeaders,
        FaultKind::RequestThrottle,
        FaultKind::RequestTruncate,
    ];

    /// The kebab-case name used in JSON output (`"delay"`, `"error"`, `"response-delay"` …).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Error => "error",
            FaultKind::ResponseDelay => "response-delay",
            FaultKind::BodyDelay => "body-delay",
            FaultKind::Throttle => "throttle",
            FaultKind::Dribble => "dribble",
            FaultKind::Truncate => "truncate",
            FaultKind::Reset => "reset",
            FaultKind::Close => "close",
            FaultKind::Hang => "hang",
            FaultKind::Garbage => "garbage",
            FaultKind::SlowHeaders => "slow-headers",
            FaultKind::RequestThrottle => "request-throttle",
            FaultKind::RequestTruncate => "request-truncate",
        }
    }

    /// What [`AppliedFault::value`] counts for this kind: `"ns"`, `"status"`, `"bytes"` or
    /// `"bytes_per_second"`.
    pub fn unit(self) -> &'static str {
        match self {
            FaultKind::Delay
            | FaultKind::ResponseDelay
            | FaultKind::BodyDelay
            | FaultKind::Dribble
            | FaultKind::Hang
            | FaultKind::SlowHeaders => "ns",
            FaultKind::Error => "status",
            FaultKind::Throttle | FaultKind::RequestThrottle => "bytes_per_second",
            FaultKind::Truncate
            | FaultKind::Reset
            | FaultKind::Close
            | FaultKind::Garbage
            | FaultKind::RequestTruncate => "bytes",
        }
    }
}

impl ArchivedFaultKind {
    /// The unarchived value (fieldless enum, so this is a plain copy).
    pub fn get(&self) -> FaultKind {
        match self {
            ArchivedFaultKind::Delay => FaultKind::Delay,
            ArchivedFaultKind::Error => FaultKind::Error,
            ArchivedFaultKind::ResponseDelay => FaultKind::ResponseDelay,
            ArchivedFaultKind::BodyDelay => FaultKind::BodyDelay,
            ArchivedFaultKind::Throttle => FaultKind::Throttle,
            ArchivedFaultKind::Dribble => FaultKind::Dribble,
            ArchivedFaultKind::Truncate => FaultKind::Truncate,
            ArchivedFaultKind::Reset => FaultKind::Reset,
            ArchivedFaultKind::Close => FaultKind::Close,
            ArchivedFaultKind::Hang => FaultKind::Hang,
            ArchivedFaultKind::Garbage => FaultKind::Garbage,
            ArchivedFaultKind::SlowHeaders => FaultKind::SlowHeaders,
            ArchivedFaultKind::RequestThrottle => FaultKind::RequestThrottle,
            ArchivedFaultKind::RequestTruncate => FaultKind::RequestTruncate,
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
    /// The client's TLS handshake with the proxy failed (it does not trust the `--mitm` CA,
    /// spoke garbage or plain HTTP to the https listener, stalled): the reason is the record's
    /// `client_tls.failure`.
    ClientTlsFailed,
}

impl Outcome {
    /// Every outcome, in declaration order (stable order for `stats` output).
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Fault,
        Outcome::BadRequest,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::ClientClosed,
        Outcome::ClientTlsFailed,
    ];

    /// The kebab-case name used in JSON output: `"ok"`, `"fault"`, `"bad-request"`,
    /// `"upstream-error"`, `"upstream-timeout"`, `"client-closed"`, `"client-tls-failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fault => "fault",
            Outcome::BadRequest => "bad-request",
            Outcome::UpstreamError => "upstream-error",
            Outcome::UpstreamTimeout => "upstream-timeout",
            Outcome::ClientClosed => "client-closed",
            Outcome::ClientTlsFailed => "client-tls-failed",
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
            ArchivedOutcome::ClientTlsFailed => Outcome::ClientTlsFailed,
        }
    }
}

/// One fault applied to an exchange, with the value sampled for it.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedFault<'a> {
    /// What the fault did.
    pub kind: FaultKind,
    /// Index of the rule in its table (0-based, in the order given).
    pub rule: u32,
    /// The rule's stable id (`r1` for the first rule, `r2` … unless the rules file or admin API
    /// named it).
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub rule_id: &'a str,
    /// The rule's canonical spec text, e.g. `error:503:0.5`.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub spec: &'a str,
    /// The sampled value, in the kind's [`FaultKind::unit`] (a delay in ns, a status code …).
    pub value: u64,
}

/// How a TLS peer's certificate was judged.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum TlsVerification {
    /// The proxy was the server and asked for no client certificate.
    NotApplicable,
    /// The peer's chain and name were verified.
    Verified,
    /// `--insecure`: not checked.
    Skipped,
}

impl TlsVerification {
    /// The name used in JSON output: `not-applicable`, `verified`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVerification::NotApplicable => "not-applicable",
            TlsVerification::Verified => "verified",
            TlsVerification::Skipped => "skipped",
        }
    }
}

impl ArchivedTlsVerification {
    /// The unarchived value (fieldless enum, so this is a plain copy).
    pub fn get(&self) -> TlsVerification {
        match self {
            ArchivedTlsVerification::NotApplicable => TlsVerification::NotApplicable,
            ArchivedTlsVerification::Verified => TlsVerification::Verified,
            ArchivedTlsVerification::Skipped => TlsVerification::Skipped,
        }
    }
}

/// One TLS session of an exchange (the client's, when the proxy terminated TLS, or the one the
/// proxy opened to the upstream): what `net::tls` reports about it, borrowed.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSession<'a> {
    /// Protocol version as rustls names it (`TLSv1_3`); empty before the handshake finished.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub version: &'a str,
    /// Cipher suite as rustls names it (`TLS13_AES_128_GCM_SHA256`); empty before the handshake.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub cipher_suite: &'a str,
    /// The version as on the wire (`0x0304` for TLS 1.3); 0 before the handshake.
    pub version_code: u16,
    /// The cipher suite's IANA code point; 0 before the handshake.
    pub cipher_suite_code: u16,
    /// The SNI name sent (to an upstream) or received (from a client); empty if none.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub server_name: &'a str,
    /// How the peer's certificate was judged.
    pub verification: TlsVerification,
    /// The session was resumed rather than fully negotiated.
    pub resumed: bool,
    /// Why the handshake failed, in a few words (`unknown issuer`); empty when it did not.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub failure: &'a str,
}

/// One answered request, as the proxy saw it. Borrows everything: building one allocates nothing.
///
/// Written with [`TraceWriter::write`](super::TraceWriter::write) (which stamps it with
/// [`RECORD_SCHEMA`]); read back as [`ArchivedTraceEvent`] without copying.
///
/// # Latency ledger
/// `duration_ns` = `injected_delay_ns` + upstream (`upstream_connect_ns` + `upstream_ttfb_ns` +
/// `upstream_body_ns`) + what the proxy itself added (`overhead`, derived, never stored).
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
    /// Connecting to the upstream (TCP, and TLS when originated), ns; 0 for a pooled
    /// connection or when the upstream was not contacted.
    pub upstream_connect_ns: u64,
    /// From sending the request upstream to the upstream's first response byte, ns; `None` if the
    /// upstream was not contacted.
    pub upstream_ttfb_ns: Option<u64>,
    /// From the upstream's first response byte to its last body byte, ns (0 when none). Time
    /// spent in injected body faults belongs to `injected_delay_ns`, not here.
    pub upstream_body_ns: u64,
    /// Every delay the faults added, summed, ns (0 if none).
    pub injected_delay_ns: u64,
    /// Generation of the fault table the exchange was decided against (1: the startup table; each change bumps it).
    pub generation: u64,
    /// Every fault applied, in the order they acted (empty: not faulted).
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub faults: &'a [AppliedFault<'a>],
    /// The client's TLS session, when the proxy terminated TLS (an https listener, `--mitm`).
    pub client_tls: Option<TlsSession<'a>>,
    /// The TLS session to the upstream, when the proxy originated TLS.
    pub upstream_tls: Option<TlsSession<'a>>,
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

/// What a ring payload holds: the schema version, then the record. Only the writer builds one.
#[derive(Archive, Serialize)]
pub(super) struct Stored<'e, 'a> {
    /// [`RECORD_SCHEMA`] of the writer.
    pub(super) schema: u16,
    /// The record itself.
    #[rkyv(with = rkyv::with::Inline)]
    pub(super) event: &'e TraceEvent<'a>,
}

impl<'a> ArchivedTraceEvent<'a> {
    /// The first fault applied, if any (what the seed's single `fault` field showed).
    pub fn first_fault(&self) -> Option<&ArchivedAppliedFault<'a>> {
        self.faults.get().first()
    }
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
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    encode_hex(trace_id, &mut value[3..35]);
    encode_hex(u128::from(span_id), &mut value[36..52]);
    encode_hex(u128::from(flags), &mut value[53..55]);
    out.extend_from_slice(&value);
}

/// Writes the low `out.len()` nibbles of `value` into `out` as lower-case hex, most significant
/// first.
fn encode_hex(mut value: u128, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
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
            (
                "client_tls_failed",
                Outcome::ClientTlsFailed,
                "client-tls-failed",
            ),
        ];
        for (name, outcome, want) in rows {
            assert_eq!(outcome.as_str(), *want, "row {name}");
        }
        assert_eq!(Outcome::ALL.len(), rows.len());
    }
}

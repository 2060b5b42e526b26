//! Rendering records for people and programs: JSON Lines, one JSON array, or a table; with
//! bodies capped or left out and sensitive header values redacted.
//!
//! It reads archived records and appends text to a `Vec<u8>`; it does not choose, sort or read
//! records (see `query.rs`).

use std::io::Write;

use super::ledger::Ledger;
use super::{ArchivedTlsSession, ArchivedTraceEvent, TraceError};

/// Rendered output is handed to the writer in chunks of about this size.
const OUTPUT_CHUNK_BYTES: usize = 64 * 1024;

/// Header names whose values are redacted in output unless `--no-redact`.
pub const DEFAULT_REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// What a redacted header value is shown as.
const REDACTED: &str = "[redacted]";

/// Output format of `traces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of those objects (not for `--follow`).
    Json,
    /// Aligned columns for people.
    Table,
}

/// How much of each record is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// `--headers-only`: leave the bodies out (their lengths stay).
    pub headers_only: bool,
    /// `--max-body N`: show at most N bytes of each body (the record keeps what it kept).
    pub max_body: Option<usize>,
    /// Header names (lower case) whose values are shown as `[redacted]`.
    pub redact: Vec<String>,
}

impl Default for RenderOptions {
    /// Bodies as recorded, [`DEFAULT_REDACTED_HEADERS`] redacted.
    fn default() -> RenderOptions {
        RenderOptions {
            headers_only: false,
            max_body: None,
            redact: DEFAULT_REDACTED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
        }
    }
}

impl RenderOptions {
    fn redacts(&self, name: &[u8]) -> bool {
        self.redact
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Buffers rendered text and hands it to `out` in large chunks.
pub(super) struct Output<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    format: Format,
    opts: &'a RenderOptions,
    /// Records rendered so far (the JSON array needs separators).
    rendered: usize,
}

impl<'a> Output<'a> {
    /// Starts the output: the table's header line, the array's opening bracket.
    pub(super) fn start(
        out: &'a mut dyn Write,
        format: Format,
        opts: &'a RenderOptions,
    ) -> Output<'a> {
        let mut buf = Vec::with_capacity(OUTPUT_CHUNK_BYTES);
        match format {
            Format::Table => buf.extend_from_slice(TABLE_HEADER.as_bytes()),
            Format::Json => buf.push(b'['),
            Format::Jsonl => {}
        }
        Output {
            out,
            buf,
            format,
            opts,
            rendered: 0,
        }
    }

    /// Renders one record.
    pub(super) fn record(&mut self, rec: &ArchivedTraceEvent<'_>) -> Result<(), TraceError> {
        match self.format {
            Format::Jsonl => {
                encode_json(rec, self.opts, &mut self.buf);
                self.buf.push(b'\n');
            }
            Format::Json => {
                self.buf
                    .extend_from_slice(if self.rendered == 0 { b"\n" } else { b",\n" });
                encode_json(rec, self.opts, &mut self.buf);
            }
            Format::Table => encode_table_row(rec, &mut self.buf),
        }
        self.rendered += 1;
        if self.buf.len() >= OUTPUT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands everything rendered so far to the writer.
    pub(super) fn flush(&mut self) -> Result<(), TraceError> {
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(TraceError::Output)?;
        self.buf.clear();
        Ok(())
    }

    /// Ends the output (closes the array) and flushes it.
    pub(super) fn finish(mut self) -> Result<(), TraceError> {
        if self.format == Format::Json {
            self.buf.extend_from_slice(b"\n]\n");
        }
        self.flush()
    }
}

/// Appends one record as a JSON object (no newline), keys in schema order.
pub(super) fn encode_json(rec: &ArchivedTraceEvent<'_>, opts: &RenderOptions, out: &mut Vec<u8>) {
    let mut obj = JsonObject::start(out);
    obj.key("trace_id");
    write!(obj.out, "\"{:032x}\"", rec.trace_id.to_native()).ok();
    obj.key("span_id");
    write!(obj.out, "\"{:016x}\"", rec.span_id.to_native()).ok();
    obj.key("parent_span_id");
    match rec.parent_span_id.as_ref() {
        Some(id) => write!(obj.out, "\"{:016x}\"", id.to_native()).ok(),
        None => write!(obj.out, "null").ok(),
    };
    let (start_ns, duration_ns) = (rec.start_unix_ns.to_native(), rec.duration_ns.to_native());
    obj.number("timestamp_ms", start_ns / 1_000_000);
    obj.number("duration_ms", duration_ns / 1_000_000);
    obj.number("duration_us", duration_ns / 1_000);
    obj.lossy("method", rec.method.get());
    obj.lossy("url", rec.url.get());
    obj.number("status_code", u64::from(rec.status.to_native()));
    obj.string("protocol_version", rec.version.get());
    obj.key("request_headers");
    encode_headers(rec.request_head.get(), opts, obj.out);
    obj.key("response_headers");
    encode_headers(rec.response_head.get(), opts, obj.out);
    let bodies = [
        (
            "request_body",
            "request_body_bytes",
            "request_body_truncated",
            rec.request_body.get(),
            rec.request_body_len.to_native(),
        ),
        (
            "response_body",
            "response_body_bytes",
            "response_body_truncated",
            rec.response_body.get(),
            rec.response_body_len.to_native(),
        ),
    ];
    for (body_key, bytes_key, truncated_key, body, full_len) in bodies {
        let shown = match (opts.headers_only, opts.max_body) {
            (true, _) => &body[..0],
            (false, Some(max)) => &body[..body.len().min(max)],
            (false, None) => body,
        };
        if !shown.is_empty() {
            obj.key(body_key);
            encode_json_str(&String::from_utf8_lossy(shown), obj.out);
        }
        obj.number(bytes_key, full_len);
        obj.key(truncated_key);
        let truncated = (shown.len() as u64) < full_len && !opts.headers_only;
        obj.out
            .extend_from_slice(if truncated { b"true" } else { b"false" });
    }
    obj.key("source_addr");
    write!(obj.out, "\"{}\"", rec.client_addr.as_socket_addr()).ok();
    obj.key("dest_addr");
    match rec.upstream_addr.as_ref() {
        Some(addr) => write!(obj.out, "\"{}\"", addr.as_socket_addr()).ok(),
        None => write!(obj.out, "null").ok(),
    };
    obj.key("upstream_ttfb_us");
    match rec.upstream_ttfb_ns.as_ref() {
        Some(ns) => write!(obj.out, "{}", ns.to_native() / 1_000).ok(),
        None => write!(obj.out, "null").ok(),
    };
    obj.key("fault");
    match rec.first_fault() {
        Some(hit) => {
            let mut fault = JsonObject::start(obj.out);
            fault.number("rule", u64::from(hit.rule.to_native()));
            fault.string("kind", hit.kind.get().as_str());
            fault.string("spec", hit.spec.get());
            fault.end();
        }
        None => obj.out.extend_from_slice(b"null"),
    }
    obj.number(
        "injected_delay_ms",
        rec.injected_delay_ns.to_native() / 1_000_000,
    );
    obj.string("outcome", rec.outcome.get().as_str());
    // Schema 2: the ledger, every fault applied, the table generation, TLS.
    let ledger = Ledger::of_archived(rec);
    obj.number("injected_delay_us", ledger.injected_us);
    obj.number("upstream_connect_us", ledger.upstream_connect_us);
    obj.number("upstream_body_us", ledger.upstream_body_us);
    obj.number("upstream_us", ledger.upstream_us);
    obj.number("overhead_us", ledger.overhead_us);
    obj.key("faults");
    obj.out.push(b'[');
    for (i, f) in rec.faults.iter().enumerate() {
        if i > 0 {
            obj.out.push(b',');
        }
        let kind = f.kind.get();
        let mut fault = JsonObject::start(obj.out);
        fault.string("kind", kind.as_str());
        fault.number("rule", u64::from(f.rule.to_native()));
        // A record that names no id gets the fault table's default: `r1` for the first rule.
        match f.rule_id.get() {
            "" => {
                fault.key("rule_id");
                write!(fault.out, "\"r{}\"", u64::from(f.rule.to_native()) + 1).ok();
            }
            id => fault.string("rule_id", id),
        }
        fault.string("spec", f.spec.get());
        fault.number("value", f.value.to_native());
        fault.string("unit", kind.unit());
        fault.end();
    }
    obj.out.push(b']');
    obj.number("generation", rec.generation.to_native());
    for (key, session) in [
        ("client_tls", rec.client_tls.as_ref()),
        ("upstream_tls", rec.upstream_tls.as_ref()),
    ] {
        obj.key(key);
        match session {
            Some(tls) => encode_tls(tls, obj.out),
            None => obj.out.extend_from_slice(b"null"),
        }
    }
    obj.end();
}

/// Appends one TLS session as a JSON object; empty names (before a handshake finished) are
/// `null`.
fn encode_tls(tls: &ArchivedTlsSession<'_>, out: &mut Vec<u8>) {
    let mut t = JsonObject::start(out);
    for (key, value) in [
        ("version", tls.version.get()),
        ("cipher_suite", tls.cipher_suite.get()),
        ("server_name", tls.server_name.get()),
        ("failure", tls.failure.get()),
    ] {
        if value.is_empty() {
            t.key(key);
            t.out.extend_from_slice(b"null");
        } else {
            t.string(key, value);
        }
    }
    t.number("version_code", u64::from(tls.version_code.to_native()));
    t.number(
        "cipher_suite_code",
        u64::from(tls.cipher_suite_code.to_native()),
    );
    t.string("verification", tls.verification.get().as_str());
    t.key("resumed");
    t.out
        .extend_from_slice(if tls.resumed { b"true" } else { b"false" });
    t.end();
}

/// Writes a JSON object key by key, in the caller's order.
struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> JsonObject<'o> {
    fn start(out: &'o mut Vec<u8>) -> JsonObject<'o> {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        encode_json_str(key, self.out);
        self.out.push(b':');
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        write!(self.out, "{value}").ok();
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        encode_json_str(value, self.out);
    }

    /// A string value from bytes that should be UTF-8 (invalid sequences become U+FFFD).
    fn lossy(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        self.out.push(b'"');
        encode_json_lossy_body(value, self.out);
        self.out.push(b'"');
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// Appends `s` as a JSON string (RFC 8259 §7: quote, backslash and control characters escaped).
fn encode_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    encode_json_str_body(s.as_bytes(), out);
    out.push(b'"');
}

/// Bytes that JSON strings must (or, for DEL, should) escape: controls, quote, backslash.
const fn needs_escape_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
}
const NEEDS_ESCAPE: [bool; 256] = needs_escape_table();

/// The inside of a JSON string for valid UTF-8 `bytes` (no quotes).
fn encode_json_str_body(bytes: &[u8], out: &mut Vec<u8>) {
    // Copy runs of plain bytes at once; only the (rare) escapes are written one by one.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                write!(out, "\\u{b:04x}").ok();
            }
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// `bytes` as the inside of a JSON string, invalid UTF-8 replaced by U+FFFD.
fn encode_json_lossy_body(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.utf8_chunks() {
        encode_json_str_body(chunk.valid().as_bytes(), out);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

/// Appends the header fields of a raw head (start line skipped) as a JSON object: names
/// lower-cased, in order of first appearance; repeated fields combined with `", "` as RFC 9110
/// §5.3 allows, so none is dropped. Obsolete line folding (RFC 9112 §5.2) is unfolded with a
/// space. Lines without a colon are ignored. Values of names in `opts.redact` are replaced.
fn encode_headers(head: &[u8], opts: &RenderOptions, out: &mut Vec<u8>) {
    // (name, value lines): a field with obs-fold continuations has several value lines.
    let mut fields: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // request or status line
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, values)) = fields.last_mut() {
                values.push(line.trim_ascii());
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        fields.push((
            line[..colon].trim_ascii(),
            vec![line[colon + 1..].trim_ascii()],
        ));
    }
    out.push(b'{');
    let mut first = true;
    for (i, (name, _)) in fields.iter().enumerate() {
        if fields[..i]
            .iter()
            .any(|(seen, _)| seen.eq_ignore_ascii_case(name))
        {
            continue; // combined into its first occurrence
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        let lower_from = out.len();
        encode_json_lossy_body(name, out);
        out[lower_from..].make_ascii_lowercase();
        out.extend_from_slice(b"\":\"");
        if opts.redacts(name) {
            out.extend_from_slice(REDACTED.as_bytes());
            out.push(b'"');
            continue;
        }
        let same_name = fields[i..]
            .iter()
            .filter(|(other, _)| other.eq_ignore_ascii_case(name));
        for (n, (_, values)) in same_name.enumerate() {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            for (v, value) in values.iter().enumerate() {
                if v > 0 {
                    out.push(b' ');
                }
                encode_json_lossy_body(value, out);
            }
        }
        out.push(b'"');
    }
    out.push(b'}');
}

pub(super) const TABLE_HEADER: &str =
    "TIME (UTC)               STATUS  DURATION_MS  METHOD   OUTCOME            FAULT  URL\n";

/// Appends one record as a table row under [`TABLE_HEADER`]: the URL comes last and unpadded,
/// so long URLs do not break the columns before it; after it, a failed TLS handshake's reason
/// (`[client tls: peer alert: unknown CA]`).
pub(super) fn encode_table_row(rec: &ArchivedTraceEvent<'_>, out: &mut Vec<u8>) {
    encode_utc(rec.start_unix_ns.to_native(), out);
    let duration_ms = rec.duration_ns.to_native() as f64 / 1e6;
    let fault = rec
        .first_fault()
        .map_or_else(|| "-".to_owned(), |f| format!("#{}", f.rule.to_native()));
    write!(
        out,
        "  {:<6}  {:>11.3}  {:<7}  {:<17}  {:<5}  {}",
        rec.status.to_native(),
        duration_ms,
        String::from_utf8_lossy(rec.method.get()),
        rec.outcome.get().as_str(),
        fault,
        String::from_utf8_lossy(rec.url.get()),
    )
    .ok();
    for (side, tls) in [
        ("client", rec.client_tls.as_ref()),
        ("upstream", rec.upstream_tls.as_ref()),
    ] {
        if let Some(failure) = tls.map(|t| t.failure.get()).filter(|f| !f.is_empty()) {
            write!(out, " [{side} tls: {failure}]").ok();
        }
    }
    out.push(b'\n');
}

/// Appends `2026-01-01 00:00:00.123` for ns since the Unix epoch (UTC, proleptic Gregorian).
fn encode_utc(unix_ns: u64, out: &mut Vec<u8>) {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns / 1_000_000) % 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{millis:03}",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
    .ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::record::Stored;
    use crate::trace::tests::{SYNTHETIC_503_HEAD, full_event};
    use crate::trace::{
        AppliedFault, FaultKind, Outcome, RECORD_SCHEMA, TraceEvent, access_record,
    };
    use rkyv::util::AlignedVec;
    use serde_json::{Value, json};

    fn archived(ev: &TraceEvent<'_>) -> AlignedVec {
        let stored = Stored {
            schema: RECORD_SCHEMA,
            event: ev,
        };
        rkyv::api::low::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Failure>(
            &stored,
            AlignedVec::new(),
            rkyv::ser::allocator::Arena::new().acquire(),
        )
        .expect("serialise")
    }

    fn json_line(ev: &TraceEvent<'_>) -> String {
        json_line_with(ev, &RenderOptions::default())
    }

    fn json_line_with(ev: &TraceEvent<'_>, opts: &RenderOptions) -> String {
        let bytes = archived(ev);
        let mut out = Vec::new();
        encode_json(access_record(&bytes).expect("valid"), opts, &mut out);
        out.push(b'\n');
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn json_line_golden_synthetic_503() {
        let ev = TraceEvent {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0xb7ad_6b71_6920_3331,
            parent_span_id: None,
            start_unix_ns: 1_767_225_600_123_456_789,
            duration_ns: 2_345_678,
            upstream_connect_ns: 0,
            upstream_ttfb_ns: None,
            upstream_body_ns: 0,
            injected_delay_ns: 0,
            generation: 3,
            faults: &[AppliedFault {
                kind: FaultKind::Error,
                rule: 0,
                rule_id: "r1",
                spec: "error:503:0.5",
                value: 503,
            }],
            client_tls: None,
            upstream_tls: None,
            method: b"GET",
            url: b"http://127.0.0.1:3000/health",
            version: "HTTP/1.1",
            status: 503,
            request_head: b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: t\r\n\r\n",
            response_head: SYNTHETIC_503_HEAD,
            request_body: b"",
            request_body_len: 0,
            response_body: b"{\"fault\":\"injected\"}",
            response_body_len: 20,
            client_addr: "127.0.0.1:50000".parse().expect("addr"),
            upstream_addr: None,
            outcome: Outcome::Fault,
        };
        let want = concat!(
            r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":null,"#,
            r#""timestamp_ms":1767225600123,"duration_ms":2,"duration_us":2345,"method":"GET","#,
            r#""url":"http://127.0.0.1:3000/health","status_code":503,"protocol_version":"HTTP/1.1","#,
            r#""request_headers":{"host":"127.0.0.1:3000","user-agent":"t"},"#,
            r#""response_headers":{"content-type":"application/json","x-fault-injected":"phantom","content-length":"20"},"#,
            r#""request_body_bytes":0,"request_body_truncated":false,"#,
            r#""response_body":"{\"fault\":\"injected\"}","response_body_bytes":20,"response_body_truncated":false,"#,
            r#""source_addr":"127.0.0.1:50000","dest_addr":null,"upstream_ttfb_us":null,"#,
            r#""fault":{"rule":0,"kind":"error","spec":"error:503:0.5"},"injected_delay_ms":0,"outcome":"fault","#,
            r#""injected_delay_us":0,"upstream_connect_us":0,"upstream_body_us":0,"upstream_us":0,"overhead_us":2345,"#,
            r#""faults":[{"kind":"error","rule":0,"rule_id":"r1","spec":"error:503:0.5","value":503,"unit":"status"}],"#,
            r#""generation":3,"client_tls":null,"upstream_tls":null}"#,
            "\n"
        );
        assert_eq!(json_line(&ev), want);
        let parsed: Value = serde_json::from_str(want).expect("valid JSON");
        assert_eq!(parsed["response_body"], "{\"fault\":\"injected\"}");
    }

    #[test]
    fn table_row_names_a_failed_client_handshake() {
        let ev = TraceEvent {
            method: b"CONNECT",
            url: b"localhost:8443",
            status: 200,
            faults: &[],
            outcome: Outcome::ClientTlsFailed,
            client_tls: Some(crate::trace::TlsSession {
                failure: "peer alert: unknown CA",
                ..full_event().client_tls.expect("the full event has one")
            }),
            upstream_tls: None,
            ..full_event()
        };
        let bytes = archived(&ev);
        let mut out = Vec::new();
        encode_table_row(access_record(&bytes).expect("valid"), &mut out);
        let row = String::from_utf8(out).expect("utf-8");
        let header_at = TABLE_HEADER.find("OUTCOME").expect("column");
        assert_eq!(row.find("client-tls-failed"), Some(header_at), "{row}");
        assert_eq!(
            &row[TABLE_HEADER.find("FAULT").expect("column")..][..1],
            "-"
        );
        assert!(
            row.ends_with("localhost:8443 [client tls: peer alert: unknown CA]\n"),
            "{row}"
        );
        assert_eq!(row.lines().count(), 1);
    }

    #[test]
    fn json_line_full_record_parses_with_every_field() {
        let line = json_line(&full_event());
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        let rows: &[(&str, Value)] = &[
            ("trace_id", json!("4bf92f3577b34da6a3ce929d0e0e4736")),
            ("span_id", json!("1122334455667788")),
            ("parent_span_id", json!("00f067aa0ba902b7")),
            ("timestamp_ms", json!(1_767_225_600_123u64)),
            ("duration_ms", json!(261)),
            ("duration_us", json!(261_234)),
            ("method", json!("POST")),
            ("url", json!("http://127.0.0.1:3000/api/items?id=7")),
            ("status_code", json!(503)),
            ("protocol_version", json!("HTTP/1.1")),
            (
                "request_headers",
                json!({"host": "127.0.0.1:3000", "accept": "a, b", "content-length": "11"}),
            ),
            ("request_body", json!("hello world")),
            ("request_body_bytes", json!(11)),
            ("request_body_truncated", json!(false)),
            ("response_body_bytes", json!(20)),
            ("source_addr", json!("127.0.0.1:54321")),
            ("dest_addr", json!("[::1]:3000")),
            ("upstream_ttfb_us", json!(456)),
            (
                "fault",
                json!({"rule": 1, "kind": "delay", "spec": "delay:250ms"}),
            ),
            ("injected_delay_ms", json!(250)),
            ("outcome", json!("fault")),
            ("injected_delay_us", json!(250_000)),
            ("upstream_connect_us", json!(123)),
            ("upstream_body_us", json!(78)),
            ("upstream_us", json!(123 + 456 + 78)),
            ("overhead_us", json!(261_234 - 250_000 - (123 + 456 + 78))),
            (
                "faults",
                json!([
                    {"kind": "delay", "rule": 1, "rule_id": "r1", "spec": "delay:250ms",
                     "value": 250_000_000u64, "unit": "ns"},
                    {"kind": "error", "rule": 2, "rule_id": "refuse-items",
                     "spec": "error:503:0.5", "value": 503, "unit": "status"},
                ]),
            ),
            ("generation", json!(7)),
            (
                "client_tls",
                json!({"version": "TLSv1_3", "cipher_suite": "TLS13_AES_128_GCM_SHA256",
                       "server_name": "api.test", "failure": null, "version_code": 0x0304,
                       "cipher_suite_code": 0x1301, "verification": "not-applicable",
                       "resumed": true}),
            ),
            (
                "upstream_tls",
                json!({"version": null, "cipher_suite": null, "server_name": "origin.test",
                       "failure": "unknown issuer", "version_code": 0, "cipher_suite_code": 0,
                       "verification": "verified", "resumed": false}),
            ),
        ];
        for (key, want) in rows {
            assert_eq!(&v[key], want, "field {key}");
        }
    }

    #[test]
    fn json_line_bodies_rows() {
        // (name, captured body, full length, want body field, want truncated)
        type Row<'a> = (&'a str, &'a [u8], u64, Option<&'a str>, bool);
        let rows: &[Row<'_>] = &[
            ("empty_body_omitted", b"", 0, None, false),
            ("truncated_prefix_flagged", b"abc", 10, Some("abc"), true),
            (
                "invalid_utf8_lossy",
                b"a\xffb",
                3,
                Some("a\u{fffd}b"),
                false,
            ),
            (
                "control_chars_escaped",
                b"a\x01\"\\\n",
                5,
                Some("a\u{1}\"\\\n"),
                false,
            ),
            ("captured_none_of_nonempty_body", b"", 7, None, true),
        ];
        for (name, body, len, want_body, want_truncated) in rows {
            let ev = TraceEvent {
                request_body: body,
                request_body_len: *len,
                ..full_event()
            };
            let v: Value = serde_json::from_str(&json_line(&ev)).expect("valid JSON");
            assert_eq!(
                v.get("request_body").and_then(Value::as_str),
                *want_body,
                "row {name}"
            );
            assert_eq!(v["request_body_truncated"], *want_truncated, "row {name}");
            assert_eq!(v["request_body_bytes"], *len, "row {name}");
        }
    }

    #[test]
    fn encode_headers_rows() {
        let rows: &[(&str, &[u8], Value)] = &[
            (
                "lower_cased",
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Thing: Y\r\n\r\n",
                json!({"host": "x", "x-thing": "Y"}),
            ),
            (
                "repeated_combined",
                b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
                json!({"set-cookie": "a=1, b=2"}),
            ),
            (
                "ows_trimmed",
                b"GET / HTTP/1.1\r\nA:   v  \r\n\r\n",
                json!({"a": "v"}),
            ),
            (
                "empty_value_kept",
                b"GET / HTTP/1.1\r\nA:\r\n\r\n",
                json!({"a": ""}),
            ),
            (
                "obs_fold_unfolded",
                b"GET / HTTP/1.1\r\nA: one\r\n  two\r\n\r\n",
                json!({"a": "one two"}),
            ),
            (
                "bare_lf_accepted",
                b"GET / HTTP/1.1\nA: 1\nB: 2\n\n",
                json!({"a": "1", "b": "2"}),
            ),
            (
                "no_colon_ignored",
                b"GET / HTTP/1.1\r\ngarbage\r\nA: 1\r\n\r\n",
                json!({"a": "1"}),
            ),
            (
                "invalid_utf8_lossy",
                b"GET / HTTP/1.1\r\nX-B\xffd: x\xffy\r\n\r\n",
                json!({"x-b\u{fffd}d": "x\u{fffd}y"}),
            ),
            (
                "quotes_escaped",
                b"GET / HTTP/1.1\r\nA: \"q\"\\\r\n\r\n",
                json!({"a": "\"q\"\\"}),
            ),
            (
                "three_repeats_first_position",
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nA: 3\r\na: 4\r\n\r\n",
                json!({"a": "1, 3, 4", "b": "2"}),
            ),
            ("start_line_only", b"GET / HTTP/1.1\r\n\r\n", json!({})),
            ("empty_head", b"", json!({})),
        ];
        for (name, head, want) in rows {
            let mut out = Vec::new();
            // Redaction has its own test: here every value is shown.
            let opts = RenderOptions {
                redact: Vec::new(),
                ..RenderOptions::default()
            };
            encode_headers(head, &opts, &mut out);
            let got: Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(&got, want, "row {name}");
        }
    }

    #[test]
    fn encode_utc_rows() {
        let rows: &[(&str, u64, &str)] = &[
            ("epoch", 0, "1970-01-01 00:00:00.000"),
            (
                "leap_day",
                951_782_400_000_000_000,
                "2000-02-29 00:00:00.000",
            ),
            (
                "millis",
                1_767_225_600_123_456_789,
                "2026-01-01 00:00:00.123",
            ),
            (
                "end_of_day",
                1_767_311_999_999_000_000,
                "2026-01-01 23:59:59.999",
            ),
        ];
        for (name, ns, want) in rows {
            let mut out = Vec::new();
            encode_utc(*ns, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), *want, "row {name}");
        }
    }

    #[test]
    fn render_options_rows() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nCookie: a=1\r\nX-Api-Key: k\r\n\r\n";
        let ev = TraceEvent {
            request_head: head,
            request_body: b"0123456789",
            request_body_len: 10,
            ..full_event()
        };
        let redact = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        // (name, options, authorization, x-api-key, request body, truncated flag)
        type Row = (
            &'static str,
            RenderOptions,
            &'static str,
            &'static str,
            Option<&'static str>,
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                "defaults_redact_credentials",
                RenderOptions::default(),
                "[redacted]",
                "k",
                Some("0123456789"),
                false,
            ),
            (
                "no_redact_shows_them",
                RenderOptions {
                    redact: Vec::new(),
                    ..RenderOptions::default()
                },
                "Bearer s3cret",
                "k",
                Some("0123456789"),
                false,
            ),
            (
                "extra_header_redacted",
                RenderOptions {
                    redact: redact(&["authorization", "x-api-key"]),
                    ..RenderOptions::default()
                },
                "[redacted]",
                "[redacted]",
                Some("0123456789"),
                false,
            ),
            (
                "max_body_caps_and_flags",
                RenderOptions {
                    max_body: Some(4),
                    ..RenderOptions::default()
                },
                "[redacted]",
                "k",
                Some("0123"),
                true,
            ),
            (
                "headers_only_leaves_bodies_out",
                RenderOptions {
                    headers_only: true,
                    ..RenderOptions::default()
                },
                "[redacted]",
                "k",
                None,
                false,
            ),
        ];
        for (name, opts, auth, key, body, truncated) in rows {
            let v: Value = serde_json::from_str(&json_line_with(&ev, &opts)).expect("json");
            assert_eq!(v["request_headers"]["authorization"], auth, "row {name}");
            assert_eq!(v["request_headers"]["x-api-key"], key, "row {name}");
            assert_eq!(v["request_headers"]["host"], "h", "row {name}");
            assert_eq!(
                v.get("request_body").and_then(Value::as_str),
                body,
                "row {name}"
            );
            assert_eq!(v["request_body_truncated"], truncated, "row {name}");
            assert_eq!(v["request_body_bytes"], 10, "row {name}");
        }
    }
}

//! Reading traces back: all `core-*.ring` files of a directory merged oldest first (by start
//! time), filtered, rendered as JSON Lines or a table, followed live, or summarised as one JSON
//! object of statistics.
//!
//! It never writes a ring, and it does not parse command-line text other than `--status`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rkyv::util::AlignedVec;
use serde_json::{Value, json};

use super::ring::{Cursor, RingReader};
use super::{ArchivedTraceEvent, Outcome, TraceError, access_record};

/// How often `--follow` looks for new records (and new ring files).
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Rendered output is handed to the writer in chunks of about this size.
const OUTPUT_CHUNK_BYTES: usize = 64 * 1024;
/// Percentiles reported by `stats`, as (JSON key, fraction).
const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// `--status`: an exact code (`503`) or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// This status code only.
    Exact(u16),
    /// Codes `class*100 ..= class*100+99`, e.g. `Class(5)` for `5xx`.
    Class(u8),
}

impl StatusFilter {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Exact(code) => status == code,
            StatusFilter::Class(class) => status / 100 == u16::from(class),
        }
    }
}

/// Parses `--status`: a code `100`–`599` or a class `1xx`–`5xx` (`X` accepted).
///
/// # Errors
/// A message naming the input when it is neither.
pub fn parse_status_filter(s: &str) -> Result<StatusFilter, String> {
    let err =
        || format!("invalid status filter {s:?}: expected a code like 503 or a class like 5xx");
    let b = s.trim().as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return Err(err());
    }
    if b[1..].eq_ignore_ascii_case(b"xx") {
        return Ok(StatusFilter::Class(b[0] - b'0'));
    }
    if b[1..].iter().all(u8::is_ascii_digit) {
        let code = b.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        return Ok(StatusFilter::Exact(code));
    }
    Err(err())
}

/// Which records to show. All conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--status`: status code or class sent to the client.
    pub status: Option<StatusFilter>,
    /// `--url`: a substring of the URL (case-sensitive, as URLs are).
    pub url: Option<String>,
    /// `--method`: request method, compared ASCII case-insensitively (`get` finds `GET`).
    pub method: Option<String>,
    /// `--faulted`: only records where a fault rule fired.
    pub faulted: bool,
    /// `--since`: only records that started at most this long before now.
    pub since: Option<Duration>,
    /// `--limit`: only the newest N matching records (still printed oldest first, like
    /// `tail -n`); with `--follow` it limits the backlog printed before following.
    pub limit: Option<usize>,
}

/// Output format of `traces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the schema of issue 4).
    Jsonl,
    /// Aligned columns for people.
    Table,
}

/// A filter with `since` resolved against the clock once.
struct Matcher<'a> {
    filter: &'a Filter,
    not_before_ns: u64,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a Filter, now: SystemTime) -> Matcher<'a> {
        let not_before_ns = match filter.since {
            Some(since) => {
                unix_ns(now).saturating_sub(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
            }
            None => 0,
        };
        Matcher {
            filter,
            not_before_ns,
        }
    }

    fn matches(&self, rec: &ArchivedTraceEvent<'_>) -> bool {
        let f = self.filter;
        rec.start_unix_ns.to_native() >= self.not_before_ns
            && f.status.is_none_or(|s| s.matches(rec.status.to_native()))
            && f.url
                .as_ref()
                .is_none_or(|u| contains(rec.url.get(), u.as_bytes()))
            && f.method
                .as_ref()
                .is_none_or(|m| rec.method.get().eq_ignore_ascii_case(m.as_bytes()))
            && (!f.faulted || rec.fault.is_some())
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One validated record, owned (copied out of its ring) so it can be sorted with the others.
struct Loaded {
    start_ns: u64,
    ring: usize,
    seq: u64,
    bytes: AlignedVec,
}

impl Loaded {
    fn record(&self) -> Option<&ArchivedTraceEvent<'static>> {
        access_record(&self.bytes)
    }
}

/// One ring being read.
struct Source {
    path: PathBuf,
    reader: RingReader,
    cursor: Cursor,
}

/// All rings of a directory, each with its read position.
struct Sources {
    dir: PathBuf,
    rings: Vec<Source>,
    /// Reused copy buffer for frames.
    frame: Vec<u8>,
}

impl Sources {
    fn open(dir: &Path) -> Result<Sources, TraceError> {
        let mut sources = Sources {
            dir: dir.to_path_buf(),
            rings: Vec::new(),
            frame: Vec::new(),
        };
        sources.refresh()?;
        Ok(sources)
    }

    /// Opens rings that appeared since the last call (a proxy started with more workers).
    fn refresh(&mut self) -> Result<(), TraceError> {
        for path in ring_paths(&self.dir)? {
            if self.rings.iter().all(|s| s.path != path) {
                let reader = RingReader::open(&path)?;
                let cursor = reader.oldest();
                self.rings.push(Source {
                    path,
                    reader,
                    cursor,
                });
            }
        }
        Ok(())
    }

    /// Reads every record written since the last call; keeps the valid, matching ones.
    fn drain(&mut self, matcher: &Matcher<'_>, into: &mut Vec<Loaded>) {
        for (ring, source) in self.rings.iter_mut().enumerate() {
            while let Some(seq) = source.reader.next(&mut source.cursor, &mut self.frame) {
                let mut bytes = AlignedVec::with_capacity(self.frame.len());
                bytes.extend_from_slice(&self.frame);
                // A frame with a valid crc that is not a valid record (another format version
                // writing the same magic, a bug) is skipped like a torn frame.
                let Some(rec) = access_record(&bytes) else {
                    continue;
                };
                if matcher.matches(rec) {
                    let start_ns = rec.start_unix_ns.to_native();
                    into.push(Loaded {
                        start_ns,
                        ring,
                        seq,
                        bytes,
                    });
                }
            }
        }
    }
}

/// `core-<n>.ring` files of `dir`, by worker number.
fn ring_paths(dir: &Path) -> Result<Vec<PathBuf>, TraceError> {
    let io = |source| TraceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let worker = name
            .to_str()
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.strip_suffix(".ring"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(worker) = worker {
            found.push((worker, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Sorts oldest first and keeps the newest `limit`.
fn order_and_limit(records: &mut Vec<Loaded>, limit: Option<usize>) {
    records.sort_by_key(|r| (r.start_ns, r.ring, r.seq));
    if let Some(limit) = limit {
        let excess = records.len().saturating_sub(limit);
        records.drain(..excess);
    }
}

/// Buffers rendered text and hands it to `out` in large chunks.
struct Output<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl Output<'_> {
    fn maybe_flush(&mut self) -> Result<(), TraceError> {
        if self.buf.len() >= OUTPUT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TraceError> {
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(TraceError::Output)?;
        self.buf.clear();
        Ok(())
    }

    fn render(&mut self, records: &[Loaded], format: Format) -> Result<(), TraceError> {
        for rec in records.iter().filter_map(Loaded::record) {
            match format {
                Format::Jsonl => encode_json_line(rec, &mut self.buf),
                Format::Table => encode_table_row(rec, &mut self.buf),
            }
            self.maybe_flush()?;
        }
        self.flush()
    }
}

/// Prints the records of every ring in `dir`, merged oldest first by start time, filtered, as
/// JSON Lines or a table. With `follow`, then keeps polling (every 100 ms) for new records and
/// new rings and prints them as they appear, until `out` fails (e.g. the pipe closes) or the
/// process is killed.
///
/// # Errors
/// [`TraceError::Io`] when `dir` cannot be listed or a ring cannot be opened;
/// [`TraceError::Format`] naming a ring that is not a trace ring (damaged records inside a ring
/// are skipped, not errors); [`TraceError::Output`] when writing to `out` fails.
pub fn write_traces(
    dir: &Path,
    filter: &Filter,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), TraceError> {
    let mut keep_going = || follow;
    follow_traces(
        dir,
        filter,
        format,
        out,
        FOLLOW_POLL_INTERVAL,
        &mut keep_going,
    )
}

/// `write_traces`, polling every `poll` while `keep_going()` says so (tests stop it).
fn follow_traces(
    dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    poll: Duration,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<(), TraceError> {
    let mut sources = Sources::open(dir)?;
    let mut output = Output {
        out,
        buf: Vec::with_capacity(OUTPUT_CHUNK_BYTES),
    };
    if format == Format::Table {
        output.buf.extend_from_slice(TABLE_HEADER.as_bytes());
    }
    let mut batch = Vec::new();
    sources.drain(&Matcher::new(filter, SystemTime::now()), &mut batch);
    order_and_limit(&mut batch, filter.limit);
    output.render(&batch, format)?;
    // New records are recent by definition: only the backlog is subject to since/limit.
    let live = Filter {
        since: None,
        limit: None,
        ..filter.clone()
    };
    while keep_going() {
        std::thread::sleep(poll);
        sources.refresh()?;
        batch.clear();
        sources.drain(&Matcher::new(&live, SystemTime::now()), &mut batch);
        order_and_limit(&mut batch, None);
        output.render(&batch, format)?;
    }
    Ok(())
}

/// Prints one JSON object summarising the matching records of every ring in `dir`: count, time
/// span, requests per second, counts by status class and by outcome, faults by rule, and
/// duration percentiles (p50, p90, p99, p99.9, max, in ms) overall, faulted and unfaulted.
///
/// # Errors
/// As [`write_traces`].
pub fn write_stats(dir: &Path, filter: &Filter, out: &mut dyn Write) -> Result<(), TraceError> {
    let mut sources = Sources::open(dir)?;
    let mut records = Vec::new();
    sources.drain(&Matcher::new(filter, SystemTime::now()), &mut records);
    order_and_limit(&mut records, filter.limit);
    let stats = stats_of(records.iter().filter_map(Loaded::record));
    let mut text = serde_json::to_vec_pretty(&stats).map_err(|e| TraceError::Output(e.into()))?;
    text.push(b'\n');
    out.write_all(&text)
        .and_then(|()| out.flush())
        .map_err(TraceError::Output)
}

/// The `stats` object of some records.
fn stats_of<'r>(records: impl Iterator<Item = &'r ArchivedTraceEvent<'static>>) -> Value {
    let mut count = 0u64;
    let (mut first_start, mut last_end) = (u64::MAX, 0u64);
    let mut status_classes = [0u64; 6]; // 1xx..5xx, then anything else
    let mut outcomes = [0u64; Outcome::ALL.len()];
    let mut faults: BTreeMap<u32, (u64, &str, &str)> = BTreeMap::new();
    let (mut all, mut faulted, mut unfaulted) = (Vec::new(), Vec::new(), Vec::new());
    for rec in records {
        count += 1;
        let (start, duration) = (rec.start_unix_ns.to_native(), rec.duration_ns.to_native());
        first_start = first_start.min(start);
        last_end = last_end.max(start.saturating_add(duration));
        let class = usize::from(rec.status.to_native() / 100);
        status_classes[if (1..=5).contains(&class) {
            class - 1
        } else {
            5
        }] += 1;
        let outcome = rec.outcome.get();
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            outcomes[i] += 1;
        }
        all.push(duration);
        match rec.fault.as_ref() {
            Some(hit) => {
                let entry = faults.entry(hit.rule.to_native()).or_insert((0, "", ""));
                *entry = (entry.0 + 1, hit.kind.get().as_str(), hit.spec.get());
                faulted.push(duration);
            }
            None => unfaulted.push(duration),
        }
    }
    let span_ns = last_end.saturating_sub(first_start);
    let span_seconds = (count > 0).then(|| span_ns as f64 / 1e9);
    let rps = span_seconds.filter(|s| *s > 0.0).map(|s| count as f64 / s);
    let mut by_status = serde_json::Map::new();
    for (i, n) in status_classes.iter().enumerate() {
        let key = if i < 5 {
            format!("{}xx", i + 1)
        } else {
            "other".to_owned()
        };
        by_status.insert(key, json!(n));
    }
    let by_outcome: serde_json::Map<String, Value> = Outcome::ALL
        .iter()
        .zip(outcomes)
        .map(|(o, n)| (o.as_str().to_owned(), json!(n)))
        .collect();
    let by_rule: serde_json::Map<String, Value> = faults
        .iter()
        .map(|(rule, (n, kind, spec))| {
            (
                rule.to_string(),
                json!({ "count": n, "kind": kind, "spec": spec }),
            )
        })
        .collect();
    json!({
        "records": count,
        "first_timestamp_ms": (count > 0).then_some(first_start / 1_000_000),
        "last_timestamp_ms": (count > 0).then_some(last_end / 1_000_000),
        "span_seconds": span_seconds,
        "requests_per_second": rps,
        "by_status_class": by_status,
        "by_outcome": by_outcome,
        "faults_by_rule": by_rule,
        "duration_ms": {
            "all": percentiles(&mut all),
            "faulted": percentiles(&mut faulted),
            "unfaulted": percentiles(&mut unfaulted),
        },
    })
}

/// Count, nearest-rank percentiles and max of durations in ns, reported in ms (µs precision).
fn percentiles(durations: &mut [u64]) -> Value {
    durations.sort_unstable();
    let ms = |ns: u64| Value::from((ns / 1_000) as f64 / 1_000.0);
    let mut obj = serde_json::Map::new();
    obj.insert("count".to_owned(), json!(durations.len()));
    for (key, q) in PERCENTILES {
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = (q * durations.len() as f64).ceil() as usize;
        let value = durations
            .get(rank.saturating_sub(1))
            .map_or(Value::Null, |ns| ms(*ns));
        obj.insert(key.to_owned(), value);
    }
    obj.insert(
        "max".to_owned(),
        durations.last().map_or(Value::Null, |ns| ms(*ns)),
    );
    Value::Object(obj)
}

/// Appends one record as a JSON object and a newline, keys in schema order.
fn encode_json_line(rec: &ArchivedTraceEvent<'_>, out: &mut Vec<u8>) {
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
    encode_headers(rec.request_head.get(), obj.out);
    obj.key("response_headers");
    encode_headers(rec.response_head.get(), obj.out);
    for (name, body, full_len) in [
        (
            "request",
            rec.request_body.get(),
            rec.request_body_len.to_native(),
        ),
        (
            "response",
            rec.response_body.get(),
            rec.response_body_len.to_native(),
        ),
    ] {
        if !body.is_empty() {
            obj.key(if name == "request" {
                "request_body"
            } else {
                "response_body"
            });
            encode_json_str(&String::from_utf8_lossy(body), obj.out);
        }
        obj.number(
            if name == "request" {
                "request_body_bytes"
            } else {
                "response_body_bytes"
            },
            full_len,
        );
        obj.key(if name == "request" {
            "request_body_truncated"
        } else {
            "response_body_truncated"
        });
        obj.out
            .extend_from_slice(if (body.len() as u64) < full_len {
                b"true"
            } else {
                b"false"
            });
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
    match rec.fault.as_ref() {
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
    obj.end();
    out.push(b'\n');
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
/// space. Lines without a colon are ignored.
fn encode_headers(head: &[u8], out: &mut Vec<u8>) {
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

const TABLE_HEADER: &str =
    "TIME (UTC)               STATUS  DURATION_MS  METHOD   OUTCOME           FAULT  URL\n";

/// Appends one record as a table row under [`TABLE_HEADER`]: the URL comes last and unpadded,
/// so long URLs do not break the columns before it.
fn encode_table_row(rec: &ArchivedTraceEvent<'_>, out: &mut Vec<u8>) {
    encode_utc(rec.start_unix_ns.to_native(), out);
    let duration_ms = rec.duration_ns.to_native() as f64 / 1e6;
    let fault = rec
        .fault
        .as_ref()
        .map_or_else(|| "-".to_owned(), |f| format!("#{}", f.rule.to_native()));
    writeln!(
        out,
        "  {:<6}  {:>11.3}  {:<7}  {:<16}  {:<5}  {}",
        rec.status.to_native(),
        duration_ms,
        String::from_utf8_lossy(rec.method.get()),
        rec.outcome.get().as_str(),
        fault,
        String::from_utf8_lossy(rec.url.get()),
    )
    .ok();
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
    use crate::trace::tests::{SYNTHETIC_503_HEAD, TempDir, full_event};
    use crate::trace::{FaultHit, FaultKind, MIN_RING_BYTES, TraceConfig, TraceEvent, TraceWriter};

    fn archived(ev: &TraceEvent<'_>) -> AlignedVec {
        rkyv::api::low::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Failure>(
            ev,
            AlignedVec::new(),
            rkyv::ser::allocator::Arena::new().acquire(),
        )
        .expect("serialise")
    }

    fn json_line(ev: &TraceEvent<'_>) -> String {
        let bytes = archived(ev);
        let mut out = Vec::new();
        encode_json_line(access_record(&bytes).expect("valid"), &mut out);
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
            upstream_ttfb_ns: None,
            injected_delay_ns: 0,
            fault: Some(FaultHit {
                rule: 0,
                kind: FaultKind::Error,
                spec: "error:503:0.5",
            }),
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
            r#""fault":{"rule":0,"kind":"error","spec":"error:503:0.5"},"injected_delay_ms":0,"outcome":"fault"}"#,
            "\n"
        );
        assert_eq!(json_line(&ev), want);
        let parsed: Value = serde_json::from_str(want).expect("valid JSON");
        assert_eq!(parsed["response_body"], "{\"fault\":\"injected\"}");
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
            ("duration_ms", json!(1)),
            ("duration_us", json!(1234)),
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
                json!({"rule": 2, "kind": "error", "spec": "error:503:0.5"}),
            ),
            ("injected_delay_ms", json!(250)),
            ("outcome", json!("fault")),
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
            encode_headers(head, &mut out);
            let got: Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(&got, want, "row {name}");
        }
    }

    #[test]
    fn parse_status_filter_rows() {
        let rows: &[(&str, &str, Result<StatusFilter, ()>)] = &[
            ("exact", "503", Ok(StatusFilter::Exact(503))),
            ("class", "5xx", Ok(StatusFilter::Class(5))),
            ("class_upper", "4XX", Ok(StatusFilter::Class(4))),
            ("lowest", "100", Ok(StatusFilter::Exact(100))),
            ("too_high", "600", Err(())),
            ("six_class", "6xx", Err(())),
            ("two_digits", "50", Err(())),
            ("mixed", "5x3", Err(())),
            ("word", "error", Err(())),
            ("empty", "", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(
                parse_status_filter(input).map_err(|_| ()),
                *want,
                "row {name}"
            );
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

    const BASE_NS: u64 = 1_700_000_000_000_000_000;

    /// Known traffic over two rings: 10 records, interleaved start times.
    /// i: 0..10, ring i%2, start BASE + i ms (written out of order per ring), duration (i+1) ms,
    /// status 200 except i in {3, 7} → 503 (faulted by rule 0) and i == 5 → 404;
    /// method GET except i == 4 → POST; url /item/<i>.
    fn write_known_traffic(dir: &Path) {
        let cfg = TraceConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: MIN_RING_BYTES,
            reset: false,
        };
        let mut rings = [
            TraceWriter::open(&cfg, 0).expect("ring 0"),
            TraceWriter::open(&cfg, 1).expect("ring 1"),
        ];
        let urls: Vec<String> = (0..10).map(|i| format!("http://h/item/{i}")).collect();
        // Each ring gets its records in reverse start order, so output order must come from sorting.
        for i in (0..10u64).rev() {
            let faulted = i == 3 || i == 7;
            let ev = TraceEvent {
                start_unix_ns: BASE_NS + i * 1_000_000,
                duration_ns: (i + 1) * 1_000_000,
                status: if faulted {
                    503
                } else if i == 5 {
                    404
                } else {
                    200
                },
                method: if i == 4 { b"POST" } else { b"GET" },
                url: urls[i as usize].as_bytes(),
                fault: faulted.then_some(FaultHit {
                    rule: 0,
                    kind: FaultKind::Error,
                    spec: "error:503:0.5",
                }),
                outcome: if faulted { Outcome::Fault } else { Outcome::Ok },
                ..full_event()
            };
            rings[(i % 2) as usize].write(&ev);
        }
    }

    fn urls_of(dir: &Path, filter: &Filter) -> Vec<String> {
        let mut out = Vec::new();
        write_traces(dir, filter, Format::Jsonl, false, &mut out).expect("traces");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json");
                v["url"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("http://h/item/")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn write_traces_filter_rows() {
        let dir = TempDir::new("query-filters");
        write_known_traffic(dir.path());
        let rows: &[(&str, Filter, &[&str])] = &[
            (
                "all_merged_oldest_first",
                Filter::default(),
                &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            ),
            (
                "status_exact",
                Filter {
                    status: Some(StatusFilter::Exact(503)),
                    ..Filter::default()
                },
                &["3", "7"],
            ),
            (
                "status_class",
                Filter {
                    status: Some(StatusFilter::Class(4)),
                    ..Filter::default()
                },
                &["5"],
            ),
            (
                "faulted",
                Filter {
                    faulted: true,
                    ..Filter::default()
                },
                &["3", "7"],
            ),
            (
                "method_case_insensitive",
                Filter {
                    method: Some("post".into()),
                    ..Filter::default()
                },
                &["4"],
            ),
            (
                "url_substring",
                Filter {
                    url: Some("item/9".into()),
                    ..Filter::default()
                },
                &["9"],
            ),
            (
                "limit_keeps_newest",
                Filter {
                    limit: Some(3),
                    ..Filter::default()
                },
                &["7", "8", "9"],
            ),
            (
                "combined",
                Filter {
                    method: Some("GET".into()),
                    limit: Some(1),
                    faulted: true,
                    ..Filter::default()
                },
                &["7"],
            ),
            // BASE_NS is in 2023: "since 1 hour" excludes everything, "since 100 years" nothing.
            (
                "since_excludes_old",
                Filter {
                    since: Some(Duration::from_secs(3600)),
                    ..Filter::default()
                },
                &[],
            ),
            (
                "since_includes_recent",
                Filter {
                    since: Some(Duration::from_secs(100 * 365 * 86_400)),
                    limit: Some(1),
                    ..Filter::default()
                },
                &["9"],
            ),
        ];
        for (name, filter, want) in rows {
            assert_eq!(urls_of(dir.path(), filter), *want, "row {name}");
        }
    }

    #[test]
    fn write_stats_known_traffic_figures() {
        let dir = TempDir::new("query-stats");
        write_known_traffic(dir.path());
        let mut out = Vec::new();
        write_stats(dir.path(), &Filter::default(), &mut out).expect("stats");
        let v: Value = serde_json::from_slice(&out).expect("json");
        let rows: &[(&str, &str, Value)] = &[
            ("record_count", "/records", json!(10)),
            (
                "first_start",
                "/first_timestamp_ms",
                json!(BASE_NS / 1_000_000),
            ),
            // Last end: record 9 starts at +9 ms and lasts 10 ms.
            (
                "last_end",
                "/last_timestamp_ms",
                json!(BASE_NS / 1_000_000 + 19),
            ),
            ("span", "/span_seconds", json!(0.019)),
            ("two_xx", "/by_status_class/2xx", json!(7)),
            ("four_xx", "/by_status_class/4xx", json!(1)),
            ("five_xx", "/by_status_class/5xx", json!(2)),
            ("outcome_ok", "/by_outcome/ok", json!(8)),
            ("outcome_fault", "/by_outcome/fault", json!(2)),
            ("outcome_zero_listed", "/by_outcome/client-closed", json!(0)),
            (
                "faults_by_rule",
                "/faults_by_rule/0",
                json!({"count": 2, "kind": "error", "spec": "error:503:0.5"}),
            ),
            // Durations 1..=10 ms: nearest rank p50 = 5th = 5 ms, p90 = 9th, p99 = p99.9 = max = 10th.
            ("all_p50", "/duration_ms/all/p50", json!(5.0)),
            ("all_p90", "/duration_ms/all/p90", json!(9.0)),
            ("all_p99", "/duration_ms/all/p99", json!(10.0)),
            ("all_p999", "/duration_ms/all/p99.9", json!(10.0)),
            ("all_max", "/duration_ms/all/max", json!(10.0)),
            ("faulted_count", "/duration_ms/faulted/count", json!(2)),
            // Faulted durations 4 and 8 ms.
            ("faulted_p50", "/duration_ms/faulted/p50", json!(4.0)),
            ("faulted_max", "/duration_ms/faulted/max", json!(8.0)),
            ("unfaulted_count", "/duration_ms/unfaulted/count", json!(8)),
            ("unfaulted_p50", "/duration_ms/unfaulted/p50", json!(5.0)),
        ];
        for (name, pointer, want) in rows {
            assert_eq!(v.pointer(pointer), Some(want), "row {name}: {v:#}");
        }
        let rps = v["requests_per_second"].as_f64().unwrap_or_default();
        assert!((rps - 10.0 / 0.019).abs() < 1e-6, "{rps}");
    }

    #[test]
    fn write_stats_empty_directory_has_nulls() {
        let dir = TempDir::new("query-stats-empty");
        let mut out = Vec::new();
        write_stats(dir.path(), &Filter::default(), &mut out).expect("stats");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["records"], 0);
        assert_eq!(v["requests_per_second"], Value::Null);
        assert_eq!(v["duration_ms"]["all"]["p50"], Value::Null);
    }

    #[test]
    fn write_traces_table_has_header_and_rows() {
        let dir = TempDir::new("query-table");
        write_known_traffic(dir.path());
        let mut out = Vec::new();
        let filter = Filter {
            faulted: true,
            ..Filter::default()
        };
        write_traces(dir.path(), &filter, Format::Table, false, &mut out).expect("table");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME (UTC)"));
        // Every column header starts where its values do.
        for column in ["STATUS", "METHOD", "OUTCOME", "FAULT", "URL"] {
            let at = lines[0].find(column).unwrap_or(usize::MAX);
            let value = &lines[1][at..];
            assert!(
                at > 0 && !value.starts_with(' ') && lines[1].as_bytes()[at - 1] == b' ',
                "{column}"
            );
        }
        assert_eq!(
            lines[1],
            "2023-11-14 22:13:20.003  503           4.000  GET      fault             #0     http://h/item/3"
        );
    }

    #[test]
    fn write_traces_bad_inputs_are_errors_naming_the_path() {
        let dir = TempDir::new("query-errors");
        let missing = dir.path().join("nope");
        let err = write_traces(
            &missing,
            &Filter::default(),
            Format::Jsonl,
            false,
            &mut Vec::new(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("nope"), "{err}");
        std::fs::write(
            dir.path().join("core-0.ring"),
            b"#!/bin/sh\necho not a ring\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"ignored: not a ring name").expect("write");
        let err = write_stats(dir.path(), &Filter::default(), &mut Vec::new())
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("core-0.ring") && err.contains("not a trace ring"),
            "{err}"
        );
    }

    #[test]
    fn follow_streams_records_written_later() {
        let dir = TempDir::new("query-follow");
        let cfg = TraceConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: MIN_RING_BYTES,
            reset: false,
        };
        let mut w0 = TraceWriter::open(&cfg, 0).expect("ring 0");
        w0.write(&TraceEvent {
            url: b"backlog",
            ..full_event()
        });
        let writer = std::thread::spawn(move || {
            for i in 0..50u64 {
                std::thread::sleep(Duration::from_millis(2));
                w0.write(&TraceEvent {
                    url: b"live-0",
                    start_unix_ns: BASE_NS + i,
                    ..full_event()
                });
            }
            // A ring that appears while following is picked up too.
            let mut w1 = TraceWriter::open(&cfg, 1).expect("ring 1");
            w1.write(&TraceEvent {
                url: b"live-1",
                ..full_event()
            });
        });
        let mut out = Vec::new();
        // Poll until the writer is done, then once more (bounded in case it hangs).
        let (mut polls, mut writer_done) = (0, false);
        let mut keep_going = || {
            polls += 1;
            let go = !writer_done && polls < 2000;
            writer_done = writer.is_finished();
            go
        };
        follow_traces(
            dir.path(),
            &Filter::default(),
            Format::Jsonl,
            &mut out,
            Duration::from_millis(5),
            &mut keep_going,
        )
        .expect("follow");
        writer.join().expect("writer thread");
        let text = String::from_utf8(out).expect("utf-8");
        let urls: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("json")["url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(urls.first().map(String::as_str), Some("backlog"));
        assert_eq!(urls.iter().filter(|u| *u == "live-0").count(), 50);
        assert_eq!(urls.last().map(String::as_str), Some("live-1"));
    }
}

//! Reading traces back: all `core-*.ring` files of a directory merged oldest first (by start
//! time), filtered, paged, rendered, followed live, looked up by span id, cleared, or summarised
//! as one JSON object of statistics.
//!
//! It never writes a ring (`traces clear` deletes them, under the writer's lock) and parses no
//! command-line text: `cli.rs` turns flags into a [`Filter`] and [`RenderOptions`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rkyv::util::AlignedVec;
use serde_json::{Value, json};

use super::ledger::Ledger;
use super::render::{Format, Output, RenderOptions};
use super::ring::RingLock;
use super::ring::RingUsage;
use super::tail::{Start, Tail, TailRecord, ring_paths};
use super::{ArchivedTraceEvent, FaultKind, Outcome, TraceError, access_record};

/// How often `--follow` looks for new records (and new or replaced ring files).
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Percentiles reported by `stats`, as (JSON key, fraction).
const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// `--status`: an exact code (`503`), a class (`5xx`) or an inclusive range (`400-499`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// This status code only.
    Exact(u16),
    /// Codes `class*100 ..= class*100+99`, e.g. `Class(5)` for `5xx`.
    Class(u8),
    /// Codes from `low` to `high`, both included.
    Range {
        /// Lowest code matched.
        low: u16,
        /// Highest code matched.
        high: u16,
    },
}

impl StatusFilter {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Exact(code) => status == code,
            StatusFilter::Class(class) => status / 100 == u16::from(class),
            StatusFilter::Range { low, high } => (low..=high).contains(&status),
        }
    }
}

/// `--since` / `--until`: a moment, given as a time ago or as an absolute time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBound {
    /// This long before now (`10m`).
    Ago(Duration),
    /// This many ns since the Unix epoch (from an RFC 3339 time).
    At(u64),
}

impl TimeBound {
    fn unix_ns(self, now_ns: u64) -> u64 {
        match self {
            TimeBound::Ago(d) => {
                now_ns.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }
            TimeBound::At(ns) => ns,
        }
    }
}

/// Which records to show, and which page of them. All conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--status`: status code, class or range sent to the client.
    pub status: Option<StatusFilter>,
    /// `--url`: a substring of the URL (case-sensitive, as URLs are).
    pub url: Option<String>,
    /// `--method` (repeatable): any of these methods, compared ASCII case-insensitively.
    pub methods: Vec<String>,
    /// `--faulted`: only records where a fault was applied.
    pub faulted: bool,
    /// `--trace-id`: only this W3C trace.
    pub trace_id: Option<u128>,
    /// Only this span (`traces get`).
    pub span_id: Option<u64>,
    /// `--since`: only records that started at or after this moment.
    pub since: Option<TimeBound>,
    /// `--until`: only records that started at or before this moment.
    pub until: Option<TimeBound>,
    /// `--limit`: at most N records, the newest (after `offset`); printed oldest first (like
    /// `tail -n`) unless `reverse`. With `--follow` it limits the backlog only.
    pub limit: Option<usize>,
    /// `--offset`: skip the newest N matching records first (the next page back in time).
    pub offset: usize,
    /// `--reverse`: newest first.
    pub reverse: bool,
}

/// A filter with its time bounds resolved against the clock once.
struct Matcher<'a> {
    filter: &'a Filter,
    not_before_ns: u64,
    not_after_ns: u64,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a Filter, now: SystemTime) -> Matcher<'a> {
        let now_ns = unix_ns(now);
        Matcher {
            filter,
            not_before_ns: filter.since.map_or(0, |b| b.unix_ns(now_ns)),
            not_after_ns: filter.until.map_or(u64::MAX, |b| b.unix_ns(now_ns)),
        }
    }

    fn matches(&self, rec: &ArchivedTraceEvent<'_>) -> bool {
        let f = self.filter;
        let start = rec.start_unix_ns.to_native();
        (self.not_before_ns..=self.not_after_ns).contains(&start)
            && f.status.is_none_or(|s| s.matches(rec.status.to_native()))
            && f.url
                .as_ref()
                .is_none_or(|u| contains(rec.url.get(), u.as_bytes()))
            && (f.methods.is_empty()
                || f.methods
                    .iter()
                    .any(|m| rec.method.get().eq_ignore_ascii_case(m.as_bytes())))
            && (!f.faulted || !rec.faults.is_empty())
            && f.trace_id.is_none_or(|id| rec.trace_id == id)
            && f.span_id.is_none_or(|id| rec.span_id == id)
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

/// Reads what the tail has new; keeps the matching records.
fn collect(
    tail: &mut Tail,
    matcher: &Matcher<'_>,
    into: &mut Vec<Loaded>,
) -> Result<(), TraceError> {
    tail.poll(&mut |rec: TailRecord<'_>| {
        if matcher.matches(rec.event) {
            let mut bytes = AlignedVec::with_capacity(rec.bytes.len());
            bytes.extend_from_slice(rec.bytes);
            into.push(Loaded {
                start_ns: rec.event.start_unix_ns.to_native(),
                ring: rec.worker,
                seq: rec.seq,
                bytes,
            });
        }
    })?;
    Ok(())
}

/// Sorts oldest first, then applies `offset` and `limit` from the newest end, and `reverse`.
fn select(records: &mut Vec<Loaded>, filter: &Filter) {
    records.sort_by_key(|r| (r.start_ns, r.ring, r.seq));
    let end = records.len().saturating_sub(filter.offset);
    records.truncate(end);
    if let Some(limit) = filter.limit {
        let excess = records.len().saturating_sub(limit);
        records.drain(..excess);
    }
    if filter.reverse {
        records.reverse();
    }
}

/// Prints the records of every ring in `dir`, merged oldest first by start time, filtered, as
/// JSON Lines, JSON or a table with default [`RenderOptions`]; see [`write_traces_with`].
///
/// # Errors
/// As [`write_traces_with`].
pub fn write_traces(
    dir: &Path,
    filter: &Filter,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), TraceError> {
    write_traces_with(dir, filter, &RenderOptions::default(), format, follow, out)
}

/// Prints the records of every ring in `dir`, merged by start time, filtered and paged. With
/// `follow`, then keeps polling (every 100 ms) for new records, new rings and replaced rings
/// and prints them as they appear, until `out` fails (e.g. the pipe closes) or the process is
/// killed.
///
/// # Errors
/// [`TraceError::Io`] when `dir` cannot be listed or a ring cannot be opened;
/// [`TraceError::Format`] naming a ring that is not a trace ring of this release (damaged
/// records inside a ring are skipped, not errors); [`TraceError::Output`] when writing to `out`
/// fails.
pub fn write_traces_with(
    dir: &Path,
    filter: &Filter,
    render: &RenderOptions,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), TraceError> {
    let mut keep_going = || follow;
    follow_traces(
        dir,
        filter,
        render,
        format,
        out,
        FOLLOW_POLL_INTERVAL,
        &mut keep_going,
    )
}

/// `write_traces_with`, polling every `poll` while `keep_going()` says so (tests stop it).
fn follow_traces(
    dir: &Path,
    filter: &Filter,
    render: &RenderOptions,
    format: Format,
    out: &mut dyn Write,
    poll: Duration,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<(), TraceError> {
    let mut tail = Tail::open(dir, Start::Oldest)?;
    let mut output = Output::start(out, format, render);
    let mut batch = Vec::new();
    collect(
        &mut tail,
        &Matcher::new(filter, SystemTime::now()),
        &mut batch,
    )?;
    select(&mut batch, filter);
    for rec in batch.iter().filter_map(Loaded::record) {
        output.record(rec)?;
    }
    output.flush()?;
    // New records are recent by definition: only the backlog is subject to the time bounds
    // and paging.
    let live = Filter {
        since: None,
        until: None,
        limit: None,
        offset: 0,
        reverse: false,
        ..filter.clone()
    };
    while keep_going() {
        std::thread::sleep(poll);
        batch.clear();
        collect(
            &mut tail,
            &Matcher::new(&live, SystemTime::now()),
            &mut batch,
        )?;
        select(&mut batch, &live);
        for rec in batch.iter().filter_map(Loaded::record) {
            output.record(rec)?;
        }
        output.flush()?;
    }
    output.finish()
}

/// `traces get`: prints the record with span id `span_id` (the newest, should several rings
/// hold one).
///
/// # Errors
/// [`TraceError::NotFound`] when no ring of `dir` holds it; otherwise as [`write_traces_with`].
pub fn write_record(
    dir: &Path,
    span_id: u64,
    render: &RenderOptions,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), TraceError> {
    let filter = Filter {
        span_id: Some(span_id),
        limit: Some(1),
        ..Filter::default()
    };
    let mut tail = Tail::open(dir, Start::Oldest)?;
    let mut found = Vec::new();
    collect(
        &mut tail,
        &Matcher::new(&filter, SystemTime::now()),
        &mut found,
    )?;
    select(&mut found, &filter);
    let Some(rec) = found.first().and_then(Loaded::record) else {
        return Err(TraceError::NotFound {
            dir: dir.to_path_buf(),
            span_id,
        });
    };
    let mut output = Output::start(out, format, render);
    output.record(rec)?;
    output.finish()
}

/// `traces clear`: deletes every ring of `dir` and returns how many. Refused without `yes`, and
/// when a running proxy writes any of them (it holds the ring's lock): then nothing is deleted.
///
/// # Errors
/// [`TraceError::Refused`] without `yes`; [`TraceError::Format`] naming the ring a proxy holds;
/// [`TraceError::Io`] when `dir` cannot be listed or a ring removed.
pub fn clear_traces(dir: &Path, yes: bool) -> Result<usize, TraceError> {
    let rings = ring_paths(dir)?;
    if !yes {
        return Err(TraceError::Refused(format!(
            "traces clear would delete {} ring file(s) in {}; add --yes to do it",
            rings.len(),
            dir.display()
        )));
    }
    // Every ring locked first: a ring in use refuses the whole clear, and nothing is deleted.
    let locks = rings
        .iter()
        .map(|(_, path)| {
            RingLock::acquire(path).map_err(|e| match e {
                TraceError::Format { path, .. } => TraceError::Refused(format!(
                    "{}: a running phantom-fast is writing this ring; stop it before clearing {}",
                    path.display(),
                    dir.display()
                )),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for lock in locks {
        lock.remove()?;
    }
    Ok(rings.len())
}

/// Prints one JSON object summarising the matching records of every ring in `dir`: count, time
/// span, requests per second, counts by status class, outcome, fault rule and fault kind, failed
/// TLS handshakes by reason (the client's with us, ours with the upstream),
/// duration percentiles (ms) overall, faulted and unfaulted, the latency ledger (µs: injected,
/// upstream, overhead; faulted and unfaulted) and the records the rings lost.
///
/// # Errors
/// As [`write_traces`].
pub fn write_stats(dir: &Path, filter: &Filter, out: &mut dyn Write) -> Result<(), TraceError> {
    let mut tail = Tail::open(dir, Start::Oldest)?;
    let mut records = Vec::new();
    collect(
        &mut tail,
        &Matcher::new(filter, SystemTime::now()),
        &mut records,
    )?;
    select(&mut records, filter);
    let mut stats = stats_of(records.iter().filter_map(Loaded::record));
    stats["lost"] = lost(tail.usage(), tail.skipped());
    let mut text = serde_json::to_vec_pretty(&stats).map_err(|e| TraceError::Output(e.into()))?;
    text.push(b'\n');
    out.write_all(&text)
        .and_then(|()| out.flush())
        .map_err(TraceError::Output)
}

/// The `lost` object of `stats`: what the rings could not keep.
fn lost(usage: RingUsage, skipped: u64) -> Value {
    json!({
        "written": usage.written,
        "overwritten": usage.overwritten,
        "dropped": usage.dropped,
        "unreadable": skipped,
        "hint": (usage.overwritten > 0).then_some(
            "the rings wrapped and overwrote their oldest records: raise --trace-capacity to keep them"
        ),
    })
}

/// Durations of one group of records, in the ledger's terms.
#[derive(Default)]
struct LedgerSamples {
    injected: Vec<u64>,
    upstream: Vec<u64>,
    overhead: Vec<u64>,
}

impl LedgerSamples {
    fn push(&mut self, l: Ledger) {
        self.injected.push(l.injected_us);
        self.upstream.push(l.upstream_us);
        self.overhead.push(l.overhead_us);
    }

    fn percentiles(&mut self) -> Value {
        json!({
            "injected": percentiles_us(&mut self.injected),
            "upstream": percentiles_us(&mut self.upstream),
            "overhead": percentiles_us(&mut self.overhead),
        })
    }
}

/// The `stats` object of some records.
fn stats_of<'r>(records: impl Iterator<Item = &'r ArchivedTraceEvent<'static>>) -> Value {
    let mut count = 0u64;
    let (mut first_start, mut last_end) = (u64::MAX, 0u64);
    let mut status_classes = [0u64; 6]; // 1xx..5xx, then anything else
    let mut outcomes = [0u64; Outcome::ALL.len()];
    let mut kinds = [0u64; FaultKind::ALL.len()];
    let mut faults: BTreeMap<u32, (u64, &str, &str)> = BTreeMap::new();
    let (mut all, mut faulted, mut unfaulted) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ledger_faulted, mut ledger_unfaulted) =
        (LedgerSamples::default(), LedgerSamples::default());
    // Failed TLS handshakes by reason: the client's with us, ours with the upstream.
    let (mut client_tls, mut upstream_tls): (BTreeMap<&str, u64>, BTreeMap<&str, u64>) =
        Default::default();
    for rec in records {
        count += 1;
        for (tls, by_reason) in [
            (rec.client_tls.as_ref(), &mut client_tls),
            (rec.upstream_tls.as_ref(), &mut upstream_tls),
        ] {
            if let Some(failure) = tls.map(|t| t.failure.get()).filter(|f| !f.is_empty()) {
                *by_reason.entry(failure).or_default() += 1;
            }
        }
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
        for f in rec.faults.iter() {
            let kind = f.kind.get();
            if let Some(i) = FaultKind::ALL.iter().position(|k| *k == kind) {
                kinds[i] += 1;
            }
        }
        let ledger = Ledger::of_archived(rec);
        match rec.first_fault() {
            Some(hit) => {
                let entry = faults.entry(hit.rule.to_native()).or_insert((0, "", ""));
                *entry = (entry.0 + 1, hit.kind.get().as_str(), hit.spec.get());
                faulted.push(duration);
                ledger_faulted.push(ledger);
            }
            None => {
                unfaulted.push(duration);
                ledger_unfaulted.push(ledger);
            }
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
    let by_kind: serde_json::Map<String, Value> = FaultKind::ALL
        .iter()
        .zip(kinds)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.as_str().to_owned(), json!(n)))
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
        "faults_by_kind": by_kind,
        "tls_failures": { "client": client_tls, "upstream": upstream_tls },
        "duration_ms": {
            "all": percentiles(&mut all),
            "faulted": percentiles(&mut faulted),
            "unfaulted": percentiles(&mut unfaulted),
        },
        "latency_us": {
            "faulted": ledger_faulted.percentiles(),
            "unfaulted": ledger_unfaulted.percentiles(),
        },
    })
}

/// Nearest rank: the smallest value with at least `q` of the (sorted) samples at or below it.
fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// Count, nearest-rank percentiles and max of durations in ns, reported in ms (µs precision).
fn percentiles(durations: &mut [u64]) -> Value {
    durations.sort_unstable();
    let ms = |ns: u64| Value::from((ns / 1_000) as f64 / 1_000.0);
    let mut obj = serde_json::Map::new();
    obj.insert("count".to_owned(), json!(durations.len()));
    for (key, q) in PERCENTILES {
        let value = nearest_rank(durations, q).map_or(Value::Null, ms);
        obj.insert(key.to_owned(), value);
    }
    obj.insert(
        "max".to_owned(),
        durations.last().map_or(Value::Null, |ns| ms(*ns)),
    );
    Value::Object(obj)
}

/// Count, nearest-rank percentiles and max of µs samples, as whole µs.
fn percentiles_us(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let mut obj = serde_json::Map::new();
    obj.insert("count".to_owned(), json!(samples.len()));
    for (key, q) in PERCENTILES {
        obj.insert(key.to_owned(), json!(nearest_rank(samples, q)));
    }
    obj.insert("max".to_owned(), json!(samples.last()));
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::{TempDir, full_event};
    use crate::trace::{AppliedFault, MIN_RING_BYTES, TraceConfig, TraceEvent, TraceWriter};

    const BASE_NS: u64 = 1_700_000_000_000_000_000;

    /// Known traffic over two rings: 10 records, interleaved start times.
    /// i: 0..10, ring i%2, start BASE + i ms (written out of order per ring), duration (i+1) ms,
    /// status 200 except i in {3, 7} → 503 (faulted by rule 0) and i == 5 → 404;
    /// method GET except i == 4 → POST; url /item/<i>.
    const REFUSED: &[AppliedFault<'static>] = &[AppliedFault {
        kind: FaultKind::Error,
        rule: 0,
        rule_id: "r1",
        spec: "error:503:0.5",
        value: 503,
    }];

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
                faults: if faulted { REFUSED } else { &[] },
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
                    methods: vec!["post".into()],
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
                    methods: vec!["GET".into()],
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
                    since: Some(TimeBound::Ago(Duration::from_secs(3600))),
                    ..Filter::default()
                },
                &[],
            ),
            (
                "status_range",
                Filter {
                    status: Some(StatusFilter::Range {
                        low: 404,
                        high: 503,
                    }),
                    ..Filter::default()
                },
                &["3", "5", "7"],
            ),
            (
                "methods_any_of",
                Filter {
                    methods: vec!["PUT".into(), "POST".into()],
                    ..Filter::default()
                },
                &["4"],
            ),
            (
                "until_absolute",
                Filter {
                    until: Some(TimeBound::At(BASE_NS + 2_000_000)),
                    ..Filter::default()
                },
                &["0", "1", "2"],
            ),
            (
                "since_and_until_absolute",
                Filter {
                    since: Some(TimeBound::At(BASE_NS + 4_000_000)),
                    until: Some(TimeBound::At(BASE_NS + 5_000_000)),
                    ..Filter::default()
                },
                &["4", "5"],
            ),
            (
                "offset_then_limit_pages_back",
                Filter {
                    limit: Some(3),
                    offset: 3,
                    ..Filter::default()
                },
                &["4", "5", "6"],
            ),
            (
                "reverse_newest_first",
                Filter {
                    limit: Some(3),
                    reverse: true,
                    ..Filter::default()
                },
                &["9", "8", "7"],
            ),
            (
                "trace_id_none_match",
                Filter {
                    trace_id: Some(1),
                    ..Filter::default()
                },
                &[],
            ),
            (
                "since_includes_recent",
                Filter {
                    since: Some(TimeBound::Ago(Duration::from_secs(100 * 365 * 86_400))),
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
                "outcome_tls_listed",
                "/by_outcome/client-tls-failed",
                json!(0),
            ),
            (
                "tls_failures_by_reason",
                "/tls_failures/upstream/unknown issuer",
                json!(10),
            ),
            (
                "tls_failures_client_none",
                "/tls_failures/client",
                json!({}),
            ),
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
    fn write_stats_ledger_and_lost_known_traffic() {
        let dir = TempDir::new("query-stats-ledger");
        write_known_traffic(dir.path());
        let mut out = Vec::new();
        write_stats(dir.path(), &Filter::default(), &mut out).expect("stats");
        let v: Value = serde_json::from_slice(&out).expect("json");
        // full_event: injected 250 000 µs, upstream 123 + 456 + 78 µs; durations (i+1) ms are
        // shorter than that, so overhead clamps to 0 and upstream is the same for every record.
        let rows: &[(&str, &str, Value)] = &[
            (
                "faulted_count",
                "/latency_us/faulted/injected/count",
                json!(2),
            ),
            (
                "faulted_injected",
                "/latency_us/faulted/injected/p50",
                json!(250_000),
            ),
            (
                "unfaulted_upstream",
                "/latency_us/unfaulted/upstream/p99.9",
                json!(657),
            ),
            (
                "unfaulted_overhead",
                "/latency_us/unfaulted/overhead/max",
                json!(0),
            ),
            ("kind_error", "/faults_by_kind/error", json!(2)),
            ("written", "/lost/written", json!(10)),
            ("overwritten", "/lost/overwritten", json!(0)),
            ("dropped", "/lost/dropped", json!(0)),
            ("no_hint", "/lost/hint", Value::Null),
        ];
        for (name, pointer, want) in rows {
            assert_eq!(v.pointer(pointer), Some(want), "row {name}: {v:#}");
        }
    }

    #[test]
    fn write_record_and_clear() {
        let dir = TempDir::new("query-get-clear");
        write_known_traffic(dir.path());
        let mut out = Vec::new();
        let span = full_event().span_id;
        write_record(
            dir.path(),
            span,
            &RenderOptions::default(),
            Format::Jsonl,
            &mut out,
        )
        .expect("get");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["url"], "http://h/item/9", "the newest of equal spans");
        let err = write_record(
            dir.path(),
            7,
            &RenderOptions::default(),
            Format::Jsonl,
            &mut out,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("0000000000000007"), "{err}");
        assert!(clear_traces(dir.path(), false).is_err());
        assert_eq!(clear_traces(dir.path(), true).expect("clear"), 2);
        assert!(ring_paths(dir.path()).expect("list").is_empty());
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
            "2023-11-14 22:13:20.003  503           4.000  GET      fault              #0     http://h/item/3 [upstream tls: unknown issuer]"
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
        // Older than every live record, so it is first even when the writer thread gets ahead
        // of the follower's first read.
        w0.write(&TraceEvent {
            url: b"backlog",
            start_unix_ns: BASE_NS - 1,
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
            &RenderOptions::default(),
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

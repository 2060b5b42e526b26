//! What `/metrics` shows: the counters each worker reports on its tick ([`WorkerReport`]), their
//! sum at scrape time, and the Prometheus text format 0.0.4 encoding of it.
//! It reads no socket and no worker state: workers fill reports, the admin thread encodes.
//!
//! Names follow Prometheus conventions (base units, `_total` counters); a rule's series are
//! labelled by its id, never its spec, so a ramp does not mint a new series per step.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{fault::FaultKind, trace::Outcome};

/// Upper bounds of the duration histogram buckets, in seconds: 100 µs … 60 s. `+Inf` follows.
/// 2 ms is there so that "p99 of a delay's lateness at most 2 ms" can be read off exactly.
pub const DURATION_BUCKETS_S: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// [`DURATION_BUCKETS_S`] in nanoseconds, for recording without floats.
const DURATION_BUCKETS_NS: [u64; 19] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// A fixed-bucket duration histogram: `Copy`, recording allocates nothing and uses no float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationHistogram {
    /// Per bucket (not cumulative); the last slot counts values above 60 s.
    pub counts: [u64; DURATION_BUCKETS_S.len() + 1],
    /// Sum of every recorded value in nanoseconds (saturating).
    pub sum_ns: u64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            counts: [0; DURATION_BUCKETS_S.len() + 1],
            sum_ns: 0,
        }
    }
}

impl DurationHistogram {
    /// Counts one value (a bucket's bound is inclusive, as Prometheus' `le`).
    #[inline]
    pub fn record(&mut self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let slot = DURATION_BUCKETS_NS.partition_point(|bound| *bound < ns);
        self.counts[slot] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &DurationHistogram) {
        for (total, n) in self.counts.iter_mut().zip(other.counts) {
            *total += n;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// One rule's counters in one worker, cumulative since the process started (they survive edits
/// of other rules and of the rule itself while its id stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounters {
    /// The rule's id.
    pub id: Arc<str>,
    /// The rule's kind (a second series when an id changes kind).
    pub kind: FaultKind,
    /// Requests the rule matched.
    pub matched: u64,
    /// Requests it acted on.
    pub injected: u64,
    /// Injected delay, nanoseconds in all.
    pub delay_ns: u64,
}

/// The `rule` label the counters of removed ids are folded into: `(` is never part of an id, so
/// it cannot be taken by a rule.
pub const REMOVED_RULE_ID: &str = "(removed)";

/// How long the counters of an id that left the live rule set keep their own series before they
/// fold into [`REMOVED_RULE_ID`]: two minutes, several scrapes at any usual scrape interval, so
/// Prometheus sees each id's last value.
pub const REMOVED_ID_KEPT: Duration = Duration::from_secs(120);

/// At most this many removed ids keep their own series (the oldest fold first beyond it), so
/// minting ids under a fast edit loop cannot grow a worker's counters without bound.
pub const MAX_REMOVED_IDS: usize = 256;

/// One id's retired counters and, once its id left the live rule set, since when.
#[derive(Debug, Clone)]
struct Retired {
    counters: RuleCounters,
    removed_at: Option<Instant>,
}

/// A worker's per-rule counters across table swaps: the counts of tables it no longer uses
/// (retired, by id and kind) plus those of the live one. Lives in the worker (not `Send` needed);
/// the tick hook writes [`RuleTally::fill`]'s result into its [`WorkerReport`].
///
/// Bounded: an id of the live set (scheduled-off rules included) keeps its counters however the
/// other rules are edited; an id no longer in it keeps them for [`REMOVED_ID_KEPT`] (at most
/// [`MAX_REMOVED_IDS`] such ids), then they are added to the [`REMOVED_RULE_ID`] series of their
/// kind. Sums over every rule stay what they were, and stay monotonic.
#[derive(Debug, Clone, Default)]
pub struct RuleTally {
    retired: Vec<Retired>,
}

impl RuleTally {
    /// Adds the final counts of a table being swapped out (or of any finished counting period).
    pub fn retire(&mut self, counts: impl IntoIterator<Item = RuleCounters>) {
        for rule in counts {
            match self
                .retired
                .iter_mut()
                .find(|r| r.counters.id == rule.id && r.counters.kind == rule.kind)
            {
                Some(total) => total.counters.add(&rule),
                None => self.retired.push(Retired {
                    counters: rule,
                    removed_at: None,
                }),
            }
        }
    }

    /// Applies the bound at `now`, given the ids of the live rule set: ids back in it are kept
    /// again, ids that left it start their [`REMOVED_ID_KEPT`]; an id that left with nothing
    /// counted goes at once, one gone longer (or beyond [`MAX_REMOVED_IDS`], oldest first) is
    /// folded into [`REMOVED_RULE_ID`].
    pub fn prune(&mut self, live: &[Arc<str>], now: Instant) {
        let live: HashSet<&str> = live.iter().map(|id| &**id).collect();
        for rule in &mut self.retired {
            if &*rule.counters.id == REMOVED_RULE_ID || live.contains(&*rule.counters.id) {
                rule.removed_at = None;
            } else if rule.removed_at.is_none() {
                rule.removed_at = Some(now);
            }
        }
        self.retired
            .retain(|r| r.removed_at.is_none() || !r.counters.is_zero());
        self.fold_expired(now);
    }

    /// Folds the removed ids whose [`REMOVED_ID_KEPT`] ended by `now` (or beyond
    /// [`MAX_REMOVED_IDS`]); between swaps, on the report tick. Allocates nothing when there is
    /// nothing to fold.
    pub fn fold_expired(&mut self, now: Instant) {
        let removed = self
            .retired
            .iter()
            .filter(|r| r.removed_at.is_some())
            .count();
        let expired = |r: &Retired| {
            r.removed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= REMOVED_ID_KEPT)
        };
        if removed <= MAX_REMOVED_IDS && !self.retired.iter().any(expired) {
            return;
        }
        // Oldest removal first: beyond the cap, those fold first.
        let mut removed: Vec<(Instant, usize)> = self
            .retired
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.removed_at?, i)))
            .collect();
        removed.sort_unstable();
        let excess = removed.len().saturating_sub(MAX_REMOVED_IDS);
        let mut fold = vec![false; self.retired.len()];
        for (n, (at, i)) in removed.into_iter().enumerate() {
            fold[i] = n < excess || now.saturating_duration_since(at) >= REMOVED_ID_KEPT;
        }
        let mut folded = Vec::new();
        let mut index = 0;
        self.retired.retain(|r| {
            let keep = !fold[index];
            index += 1;
            if !keep {
                folded.push(RuleCounters {
                    id: Arc::from(REMOVED_RULE_ID),
                    ..r.counters.clone()
                });
            }
            keep
        });
        self.retire(folded);
    }

    /// Retired totals plus the live table's counts, into `out` (cleared first).
    pub fn fill(&self, live: impl IntoIterator<Item = RuleCounters>, out: &mut Vec<RuleCounters>) {
        out.clear();
        out.extend(self.retired.iter().map(|r| r.counters.clone()));
        add_counters(out, live);
    }
}

impl RuleCounters {
    fn add(&mut self, other: &RuleCounters) {
        self.matched += other.matched;
        self.injected += other.injected;
        self.delay_ns = self.delay_ns.saturating_add(other.delay_ns);
    }

    fn is_zero(&self) -> bool {
        self.matched == 0 && self.injected == 0 && self.delay_ns == 0
    }
}

/// Adds `counts` into `totals`, merging by (id, kind).
pub fn add_counters(
    totals: &mut Vec<RuleCounters>,
    counts: impl IntoIterator<Item = RuleCounters>,
) {
    for rule in counts {
        match totals
            .iter_mut()
            .find(|r| r.id == rule.id && r.kind == rule.kind)
        {
            Some(total) => total.add(&rule),
            None => totals.push(rule),
        }
    }
}

/// What one worker reports on its tick; the admin thread sums them at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Answered requests per [`Outcome::ALL`] entry.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Whole exchanges, first byte in to last byte out.
    pub request_duration: DurationHistogram,
    /// Upstream time to first byte of the response head.
    pub upstream_duration: DurationHistogram,
    /// How long after its deadline each injected delay ended.
    pub delay_lateness: DurationHistogram,
    /// Per rule, cumulative.
    pub rules: Vec<RuleCounters>,
    /// Requests inside a fault now (delayed, hung, throttled).
    pub active_faults: u64,
    /// Client connections open now.
    pub client_connections: u64,
    /// Upstream connections carrying an exchange now.
    pub upstream_busy: u64,
    /// Pooled idle upstream connections now.
    pub upstream_idle: u64,
    /// Trace records written.
    pub trace_records: u64,
    /// Trace records of this run overwritten by newer ones when the ring wrapped.
    pub trace_overwritten: u64,
    /// Trace records of this run not stored (larger than the ring, or the write failed).
    pub trace_dropped: u64,
}

impl WorkerReport {
    /// Adds another report into this one; rules are merged by (id, kind).
    pub fn merge(&mut self, other: &WorkerReport) {
        for (total, n) in self.outcomes.iter_mut().zip(other.outcomes) {
            *total += n;
        }
        self.request_duration.merge(&other.request_duration);
        self.upstream_duration.merge(&other.upstream_duration);
        self.delay_lateness.merge(&other.delay_lateness);
        add_counters(&mut self.rules, other.rules.iter().cloned());
        self.active_faults += other.active_faults;
        self.client_connections += other.client_connections;
        self.upstream_busy += other.upstream_busy;
        self.upstream_idle += other.upstream_idle;
        self.trace_records += other.trace_records;
        self.trace_overwritten += other.trace_overwritten;
        self.trace_dropped += other.trace_dropped;
    }
}

/// A rule of the live set as the admin thread sees it at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRuleGauge {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: FaultKind,
    /// Probability in force now (ramps and schedules applied).
    pub probability: f64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// The workers' reports, summed.
    pub total: WorkerReport,
    /// The live rules, in order.
    pub rules: Vec<LiveRuleGauge>,
    /// The live rule set's generation.
    pub generation: u64,
    /// `CARGO_PKG_VERSION`.
    pub version: &'static str,
}

/// Appends the Prometheus text format 0.0.4 of `scrape` to `out`: HELP and TYPE once per family,
/// every outcome and every live rule present (zero until counted), histogram buckets ascending
/// with `+Inf` equal to `_count`.
pub fn encode_metrics(scrape: &Scrape, out: &mut String) {
    let total = &scrape.total;
    family(
        out,
        "phantom_requests_total",
        "counter",
        "Answered requests by outcome.",
    );
    for (outcome, n) in Outcome::ALL.iter().zip(total.outcomes) {
        sample(
            out,
            "phantom_requests_total",
            &[("outcome", outcome.as_str())],
            n,
        );
    }
    histogram(
        out,
        "phantom_request_duration_seconds",
        "Exchange duration, first request byte to last response byte.",
        &total.request_duration,
    );
    histogram(
        out,
        "phantom_upstream_duration_seconds",
        "Upstream time to the first byte of the response head.",
        &total.upstream_duration,
    );
    histogram(
        out,
        "phantom_delay_lateness_seconds",
        "How long after its deadline each injected delay ended (never before it): the timer's \
         coalescing slack, at most 1/32 of the delay and 1 ms (up to 4 ms when the worker holds 500 \
         sleeps), plus the worker's own wake-up.",
        &total.delay_lateness,
    );

    // Live rules first (zero until they count), then ids no longer live that did count.
    let mut series: BTreeMap<(String, String), (usize, u64, u64, u64)> = BTreeMap::new();
    for (order, rule) in scrape.rules.iter().enumerate() {
        series.insert((rule.id.clone(), rule.kind.to_string()), (order, 0, 0, 0));
    }
    for rule in &total.rules {
        let next = series.len() + scrape.rules.len();
        let entry = series
            .entry((rule.id.to_string(), rule.kind.to_string()))
            .or_insert((next, 0, 0, 0));
        entry.1 += rule.matched;
        entry.2 += rule.injected;
        entry.3 = entry.3.saturating_add(rule.delay_ns);
    }
    let mut series: Vec<_> = series.into_iter().collect();
    series.sort_by_key(|(_, (order, ..))| *order);
    family(
        out,
        "phantom_faults_matched_total",
        "counter",
        "Requests a fault rule matched.",
    );
    for ((id, kind), (_, matched, _, _)) in &series {
        sample(
            out,
            "phantom_faults_matched_total",
            &[("rule", id), ("kind", kind)],
            *matched,
        );
    }
    family(
        out,
        "phantom_faults_injected_total",
        "counter",
        "Requests a fault rule acted on.",
    );
    for ((id, kind), (_, _, injected, _)) in &series {
        sample(
            out,
            "phantom_faults_injected_total",
            &[("rule", id), ("kind", kind)],
            *injected,
        );
    }
    family(
        out,
        "phantom_fault_delay_seconds_total",
        "counter",
        "Injected delay per rule.",
    );
    let mut delay: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for ((id, _), (order, _, _, ns)) in &series {
        let entry = delay.entry(id).or_insert((*order, 0));
        entry.1 = entry.1.saturating_add(*ns);
    }
    let mut delay: Vec<_> = delay.into_iter().collect();
    delay.sort_by_key(|(_, (order, _))| *order);
    for (id, (_, ns)) in delay {
        sample_f64(
            out,
            "phantom_fault_delay_seconds_total",
            &[("rule", id)],
            seconds(ns),
        );
    }
    family(
        out,
        "phantom_active_faults",
        "gauge",
        "Requests inside a holding fault now (a delay at any placement, a hang, a paced body, a slow head).",
    );
    sample(out, "phantom_active_faults", &[], total.active_faults);
    family(
        out,
        "phantom_fault_probability_ratio",
        "gauge",
        "Probability each live rule fires with now (ramps and schedules applied).",
    );
    for rule in &scrape.rules {
        sample_f64(
            out,
            "phantom_fault_probability_ratio",
            &[("rule", &rule.id)],
            rule.probability,
        );
    }
    family(
        out,
        "phantom_fault_rules_generation",
        "gauge",
        "Generation of the live fault rule set.",
    );
    sample(
        out,
        "phantom_fault_rules_generation",
        &[],
        scrape.generation,
    );
    family(
        out,
        "phantom_connections_active",
        "gauge",
        "Open connections by side.",
    );
    sample(
        out,
        "phantom_connections_active",
        &[("side", "client")],
        total.client_connections,
    );
    sample(
        out,
        "phantom_connections_active",
        &[("side", "upstream")],
        total.upstream_busy + total.upstream_idle,
    );
    family(
        out,
        "phantom_upstream_connections",
        "gauge",
        "Upstream connections by state.",
    );
    sample(
        out,
        "phantom_upstream_connections",
        &[("state", "busy")],
        total.upstream_busy,
    );
    sample(
        out,
        "phantom_upstream_connections",
        &[("state", "idle")],
        total.upstream_idle,
    );
    family(
        out,
        "phantom_trace_records_total",
        "counter",
        "Trace records written.",
    );
    sample(out, "phantom_trace_records_total", &[], total.trace_records);
    family(
        out,
        "phantom_trace_records_overwritten_total",
        "counter",
        "Trace records overwritten by newer ones when a ring wrapped (raise --trace-capacity).",
    );
    sample(
        out,
        "phantom_trace_records_overwritten_total",
        &[],
        total.trace_overwritten,
    );
    family(
        out,
        "phantom_trace_records_dropped_total",
        "counter",
        "Trace records not stored (larger than the ring, or the write failed).",
    );
    sample(
        out,
        "phantom_trace_records_dropped_total",
        &[],
        total.trace_dropped,
    );
    family(
        out,
        "phantom_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    sample(out, "phantom_build_info", &[("version", scrape.version)], 1);
}

/// The `# HELP` and `# TYPE` lines of one family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &DurationHistogram) {
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, n) in DURATION_BUCKETS_S.iter().zip(h.counts) {
        cumulative += n;
        let le = format_f64(*bound);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", format_f64(seconds(h.sum_ns)));
    let _ = writeln!(out, "{name}_count {count}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    labels_into(out, name, labels);
    let _ = writeln!(out, " {value}");
}

fn sample_f64(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    labels_into(out, name, labels);
    let _ = writeln!(out, " {}", format_f64(value));
}

fn labels_into(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str(name);
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"{}\"", escape_label(value));
    }
    out.push('}');
}

/// A label value in the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Shortest text that reads back as the same f64 (`0.0001`, `1`, `2.5`), as Go's client prints.
fn format_f64(value: f64) -> String {
    if value.is_finite() && value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        let mut report = WorkerReport::default();
        report.outcomes[0] = 7;
        report.outcomes[1] = 3;
        for us in [50, 100, 101, 2_000, 70_000_000] {
            report.request_duration.record(Duration::from_micros(us));
        }
        report.upstream_duration.record(Duration::from_millis(3));
        report.delay_lateness.record(Duration::from_micros(700));
        report.rules.push(RuleCounters {
            id: "slow".into(),
            kind: FaultKind::Delay,
            matched: 2,
            injected: 2,
            delay_ns: 1_500_000_000,
        });
        report.rules.push(RuleCounters {
            id: "gone".into(),
            kind: FaultKind::Error,
            matched: 1,
            injected: 1,
            delay_ns: 0,
        });
        report.rules.push(RuleCounters {
            id: REMOVED_RULE_ID.into(),
            kind: FaultKind::Delay,
            matched: 6,
            injected: 5,
            delay_ns: 250_000_000,
        });
        report.client_connections = 4;
        report.upstream_busy = 1;
        report.upstream_idle = 2;
        report.trace_records = 10;
        report.trace_overwritten = 4;
        report.trace_dropped = 1;
        let mut total = report.clone();
        total.merge(&WorkerReport {
            outcomes: [1, 0, 0, 0, 0, 0, 0],
            ..WorkerReport::default()
        });
        Scrape {
            total,
            rules: vec![
                LiveRuleGauge {
                    id: "api".into(),
                    kind: FaultKind::Error,
                    probability: 0.25,
                },
                LiveRuleGauge {
                    id: "slow".into(),
                    kind: FaultKind::Delay,
                    probability: 1.0,
                },
            ],
            generation: 3,
            version: "0.1.0",
        }
    }

    #[test]
    fn metrics_text_matches_golden() {
        let mut out = String::new();
        encode_metrics(&scrape(), &mut out);
        let golden = include_str!("metrics.golden");
        if std::env::var_os("PHANTOM_BLESS").is_some() {
            // `PHANTOM_BLESS=1 cargo test --lib metrics_text` rewrites the golden file; review its diff.
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/control/metrics.golden"),
                &out,
            )
            .unwrap();
            return;
        }
        if out != golden {
            // Shows the first differing line rather than two 100-line blobs.
            for (i, (got, want)) in out.lines().zip(golden.lines()).enumerate() {
                assert_eq!(got, want, "line {}", i + 1);
            }
            assert_eq!(out.lines().count(), golden.lines().count(), "line count");
        }
    }

    #[test]
    fn metrics_text_is_well_formed() {
        let mut out = String::new();
        encode_metrics(&scrape(), &mut out);
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name.to_owned()), "HELP twice: {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(typed.insert(name.to_owned()), "TYPE twice: {name}");
            }
        }
        assert_eq!(helped, typed);
        for name in [
            "phantom_request_duration_seconds",
            "phantom_upstream_duration_seconds",
        ] {
            let buckets: Vec<(f64, u64)> = out
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
                .map(|rest| {
                    let (le, value) = rest.split_once("\"} ").unwrap();
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    (le, value.parse().unwrap())
                })
                .collect();
            assert_eq!(buckets.len(), DURATION_BUCKETS_S.len() + 1, "{name}");
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}"
            );
            assert_eq!(buckets[0].0, 0.0001, "{name}: first bucket 100 µs");
            assert_eq!(
                buckets[buckets.len() - 2].0,
                60.0,
                "{name}: last bucket 60 s"
            );
            let count_line = format!("{name}_count ");
            let count: u64 = out
                .lines()
                .find_map(|l| l.strip_prefix(&count_line))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                buckets.last().unwrap().1,
                count,
                "{name}: +Inf equals _count"
            );
        }
        for outcome in Outcome::ALL {
            let series = format!(
                "phantom_requests_total{{outcome=\"{}\"}} ",
                outcome.as_str()
            );
            assert!(out.contains(&series), "{series}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let rows: &[(&str, &str, &str)] = &[
            ("plain", "r0", "r0"),
            ("quote", "a\"b", "a\\\"b"),
            ("backslash", "a\\b", "a\\\\b"),
            ("newline", "a\nb", "a\\nb"),
        ];
        for (name, raw, want) in rows {
            assert_eq!(escape_label(raw), *want, "{name}");
        }
        let mut out = String::new();
        let mut s = scrape();
        s.version = "1.0\"\n";
        encode_metrics(&s, &mut out);
        assert!(out.contains("phantom_build_info{version=\"1.0\\\"\\n\"} 1\n"));
    }

    #[test]
    fn tally_keeps_counts_across_swaps_by_id() {
        let counters = |id: &str, matched| RuleCounters {
            id: id.into(),
            kind: FaultKind::Error,
            matched,
            injected: matched,
            delay_ns: 0,
        };
        let mut tally = RuleTally::default();
        tally.retire([counters("a", 5), counters("b", 1)]);
        let mut out = Vec::new();
        // The new table dropped b and re-added a: a's series keeps counting from 5.
        tally.fill([counters("a", 2), counters("c", 1)], &mut out);
        assert_eq!(out, [counters("a", 7), counters("b", 1), counters("c", 1)]);
    }

    fn counted(id: &str, kind: FaultKind, n: u64) -> RuleCounters {
        RuleCounters {
            id: id.into(),
            kind,
            matched: n,
            injected: n,
            delay_ns: n * 1_000,
        }
    }

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|id| Arc::from(*id)).collect()
    }

    fn filled(tally: &RuleTally) -> Vec<RuleCounters> {
        let mut out = Vec::new();
        tally.fill([], &mut out);
        out
    }

    #[test]
    fn tally_prune_keeps_live_ids_and_folds_removed_ones_after_the_window() {
        let t0 = Instant::now();
        let mut tally = RuleTally::default();
        tally.retire([
            counted("kept", FaultKind::Error, 5),
            counted("gone", FaultKind::Delay, 3),
            counted("idle", FaultKind::Error, 0),
        ]);
        // "kept" stays in the live set (scheduled off, say) through edits of other rules.
        tally.prune(&ids(&["kept"]), t0);
        assert_eq!(
            filled(&tally),
            [
                counted("kept", FaultKind::Error, 5),
                counted("gone", FaultKind::Delay, 3)
            ],
            "a removed id with nothing counted goes at once; one that counted keeps its series"
        );
        tally.fold_expired(t0 + REMOVED_ID_KEPT / 2);
        assert_eq!(filled(&tally).len(), 2, "within the window");
        tally.fold_expired(t0 + REMOVED_ID_KEPT);
        assert_eq!(
            filled(&tally),
            [
                counted("kept", FaultKind::Error, 5),
                counted(REMOVED_RULE_ID, FaultKind::Delay, 3)
            ],
            "after the window it folds into (removed), its kind kept"
        );
        // Long after: the live id still has its counters, the fold stays.
        tally.prune(&ids(&["kept"]), t0 + REMOVED_ID_KEPT * 100);
        assert_eq!(filled(&tally).len(), 2);
    }

    #[test]
    fn tally_prune_a_returning_id_keeps_its_counters() {
        let t0 = Instant::now();
        let mut tally = RuleTally::default();
        tally.retire([counted("a", FaultKind::Error, 4)]);
        tally.prune(&ids(&[]), t0);
        tally.prune(&ids(&["a"]), t0 + REMOVED_ID_KEPT / 2);
        tally.prune(&ids(&["a"]), t0 + REMOVED_ID_KEPT * 2);
        assert_eq!(filled(&tally), [counted("a", FaultKind::Error, 4)]);
    }

    #[test]
    fn tally_prune_caps_removed_ids_oldest_first() {
        let t0 = Instant::now();
        let mut tally = RuleTally::default();
        let extra = 10;
        for i in 0..MAX_REMOVED_IDS + extra {
            let id = format!("id{i}");
            tally.retire([counted(&id, FaultKind::Error, 1)]);
            // Each id leaves the live set a moment after the one before.
            tally.prune(&ids(&[]), t0 + Duration::from_millis(i as u64));
        }
        let out = filled(&tally);
        assert_eq!(out.len(), MAX_REMOVED_IDS + 1, "the cap plus the fold");
        let fold = out.iter().find(|r| &*r.id == REMOVED_RULE_ID).unwrap();
        assert_eq!(fold.matched, extra as u64, "the oldest folded");
        assert!(!out.iter().any(|r| &*r.id == "id0"));
        assert!(
            out.iter()
                .any(|r| *r.id == *format!("id{}", MAX_REMOVED_IDS + extra - 1))
        );
        let total: u64 = out.iter().map(|r| r.matched).sum();
        assert_eq!(
            total,
            (MAX_REMOVED_IDS + extra) as u64,
            "folding loses no count"
        );
    }

    #[test]
    fn histogram_bounds_are_inclusive() {
        let mut h = DurationHistogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_nanos(100_001));
        h.record(Duration::from_secs(61));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[DURATION_BUCKETS_S.len()], 1);
        assert_eq!(h.count(), 3);
        let all_equal = DURATION_BUCKETS_NS
            .iter()
            .zip(DURATION_BUCKETS_S)
            .all(|(ns, s)| (*ns as f64 / 1e9 - s).abs() < 1e-12);
        assert!(all_equal);
    }
}

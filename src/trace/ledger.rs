//! The latency ledger: a record's duration split into what the faults injected, what the
//! upstream took (connect, time to first byte, body) and what the proxy itself added, in whole
//! microseconds such that `duration = injected + upstream + overhead` holds exactly.
//!
//! It reads records; it does not measure anything (the exchange fills the record's fields).
//! [`LedgerSummary`] keeps the same split as histograms for the shutdown summary.

use std::fmt;

use hdrhistogram::Histogram;

use super::{ArchivedTraceEvent, TraceEvent};

/// Highest value the summary's histograms track, µs (an hour; larger values saturate).
const MAX_TRACKED_US: u64 = 3_600_000_000;
/// Significant decimal digits the summary's histograms keep.
const SIGNIFICANT_DIGITS: u8 = 3;

/// One exchange's time, split. Every field is whole µs (each ns field truncated once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// From the first request byte to the last response byte sent.
    pub duration_us: u64,
    /// Every delay the faults added.
    pub injected_us: u64,
    /// Connecting to the upstream (0 on a pooled connection).
    pub upstream_connect_us: u64,
    /// Request sent upstream → first response byte (0 when the upstream was not contacted).
    pub upstream_ttfb_us: u64,
    /// First response byte → last body byte from the upstream.
    pub upstream_body_us: u64,
    /// `upstream_connect_us + upstream_ttfb_us + upstream_body_us`.
    pub upstream_us: u64,
    /// What the proxy added: `duration_us - injected_us - upstream_us` (0 if the parts, measured
    /// on different clocks, add up to more than the whole).
    pub overhead_us: u64,
}

impl Ledger {
    /// The ledger of a record about to be written.
    pub fn of(ev: &TraceEvent<'_>) -> Ledger {
        Ledger::from_parts(
            ev.duration_ns,
            ev.injected_delay_ns,
            ev.upstream_connect_ns,
            ev.upstream_ttfb_ns.unwrap_or(0),
            ev.upstream_body_ns,
        )
    }

    /// The ledger of a record read back from a ring.
    pub fn of_archived(rec: &ArchivedTraceEvent<'_>) -> Ledger {
        Ledger::from_parts(
            rec.duration_ns.to_native(),
            rec.injected_delay_ns.to_native(),
            rec.upstream_connect_ns.to_native(),
            rec.upstream_ttfb_ns.as_ref().map_or(0, |v| v.to_native()),
            rec.upstream_body_ns.to_native(),
        )
    }

    /// The ledger of an exchange from its parts in ns (what a record would hold), for counting
    /// without a record (`--no-traces`).
    pub fn from_parts(duration: u64, injected: u64, connect: u64, ttfb: u64, body: u64) -> Ledger {
        let us = |ns: u64| ns / 1_000;
        let (connect, ttfb, body) = (us(connect), us(ttfb), us(body));
        let upstream = connect.saturating_add(ttfb).saturating_add(body);
        let (duration, injected) = (us(duration), us(injected));
        Ledger {
            duration_us: duration,
            injected_us: injected,
            upstream_connect_us: connect,
            upstream_ttfb_us: ttfb,
            upstream_body_us: body,
            upstream_us: upstream,
            overhead_us: duration.saturating_sub(injected.saturating_add(upstream)),
        }
    }
}

/// Injected, upstream and overhead histograms of one group of exchanges.
#[derive(Clone, Debug)]
struct Parts {
    injected: Histogram<u64>,
    upstream: Histogram<u64>,
    overhead: Histogram<u64>,
}

impl Parts {
    fn new() -> Parts {
        let h = || {
            Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_DIGITS)
                .expect("static histogram bounds are valid")
        };
        Parts {
            injected: h(),
            upstream: h(),
            overhead: h(),
        }
    }
}

/// The ledger of many exchanges, faulted and unfaulted apart, for the shutdown summary: one per
/// worker, recorded on the request path (allocation-free), merged at shutdown.
#[derive(Clone, Debug)]
pub struct LedgerSummary {
    faulted: Parts,
    unfaulted: Parts,
}

impl Default for LedgerSummary {
    fn default() -> LedgerSummary {
        LedgerSummary::new()
    }
}

impl LedgerSummary {
    /// Empty histograms (allocates them: call at startup).
    pub fn new() -> LedgerSummary {
        LedgerSummary {
            faulted: Parts::new(),
            unfaulted: Parts::new(),
        }
    }

    /// Counts one exchange's ledger; allocates nothing.
    pub fn record(&mut self, ledger: &Ledger, faulted: bool) {
        let parts = if faulted {
            &mut self.faulted
        } else {
            &mut self.unfaulted
        };
        parts.injected.saturating_record(ledger.injected_us);
        parts.upstream.saturating_record(ledger.upstream_us);
        parts.overhead.saturating_record(ledger.overhead_us);
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &LedgerSummary) {
        for (mine, theirs) in [
            (&mut self.faulted, &other.faulted),
            (&mut self.unfaulted, &other.unfaulted),
        ] {
            let _ = mine.injected.add(&theirs.injected);
            let _ = mine.upstream.add(&theirs.upstream);
            let _ = mine.overhead.add(&theirs.overhead);
        }
    }
}

impl fmt::Display for LedgerSummary {
    /// Up to two lines per group with exchanges, e.g.
    /// `  unfaulted µs p50/p90/p99/p99.9: injected 0/0/0/0  upstream 310/420/900/1200  overhead 40/55/90/130`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, parts) in [("faulted", &self.faulted), ("unfaulted", &self.unfaulted)] {
            if parts.injected.is_empty() {
                continue;
            }
            let q = |h: &Histogram<u64>| {
                let v = |q: f64| h.value_at_quantile(q);
                format!("{}/{}/{}/{}", v(0.5), v(0.9), v(0.99), v(0.999))
            };
            writeln!(
                f,
                "  {name} µs p50/p90/p99/p99.9: injected {}  upstream {}  overhead {}",
                q(&parts.injected),
                q(&parts.upstream),
                q(&parts.overhead)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::full_event;

    #[test]
    fn ledger_rows_add_up() {
        // (name, duration, injected, connect, ttfb, body, want overhead), all ns.
        type Row = (&'static str, u64, u64, u64, Option<u64>, u64, u64);
        let rows: &[Row] = &[
            (
                "unfaulted",
                1_500_000,
                0,
                100_000,
                Some(900_000),
                200_000,
                300,
            ),
            (
                "delayed",
                101_000_999,
                100_000_000,
                0,
                Some(500_999),
                0,
                500,
            ),
            (
                "synthetic_no_upstream",
                250_120_000,
                250_000_000,
                0,
                None,
                0,
                120,
            ),
            (
                "parts_exceed_whole_clamped",
                1_000_000,
                900_000,
                0,
                Some(200_000),
                0,
                0,
            ),
        ];
        for &(name, duration_ns, injected, connect, ttfb, body, want) in rows {
            let ev = TraceEvent {
                duration_ns,
                injected_delay_ns: injected,
                upstream_connect_ns: connect,
                upstream_ttfb_ns: ttfb,
                upstream_body_ns: body,
                ..full_event()
            };
            let l = Ledger::of(&ev);
            assert_eq!(l.overhead_us, want, "row {name}");
            assert_eq!(
                l.upstream_us,
                l.upstream_connect_us + l.upstream_ttfb_us + l.upstream_body_us,
                "row {name}"
            );
            if want > 0 {
                assert_eq!(
                    l.duration_us,
                    l.injected_us + l.upstream_us + l.overhead_us,
                    "row {name}"
                );
            }
        }
    }

    #[test]
    fn ledger_summary_splits_groups_and_merges() {
        let mut a = LedgerSummary::new();
        let mut b = LedgerSummary::new();
        let delayed = Ledger {
            injected_us: 50_000,
            upstream_us: 300,
            overhead_us: 40,
            ..Ledger::default()
        };
        let plain = Ledger {
            upstream_us: 200,
            overhead_us: 30,
            ..Ledger::default()
        };
        a.record(&delayed, true);
        b.record(&plain, false);
        assert!(!a.to_string().contains("unfaulted"), "{a}");
        a.merge(&b);
        let text = a.to_string();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("faulted µs p50/p90/p99/p99.9: injected 50015/"),
            "{text}"
        );
        assert!(
            text.contains("unfaulted µs p50/p90/p99/p99.9: injected 0/0/0/0  upstream 200/"),
            "{text}"
        );
    }
}

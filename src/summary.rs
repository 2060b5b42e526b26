//! The shutdown summary: every worker's counters added up and printed on one screen (requests,
//! outcomes, latency percentiles, faults per rule).
//!
//! It counts nothing itself: workers count into their `Stats`, the server adds them here.

use std::{fmt, time::Duration};

use hdrhistogram::Histogram;

use crate::{
    control::{RuleCounters, metrics::add_counters},
    exchange::{Stats, latency_histogram},
    fault::{FaultRule, RuleStats},
    trace::{LedgerSummary, Outcome, RingUsage},
};

/// What all workers did, printed at shutdown.
pub struct Summary {
    /// Answered requests.
    pub requests: u64,
    /// Per outcome name (`ok`, `fault`, …).
    pub outcomes: Vec<(&'static str, u64)>,
    /// Per fault rule: its canonical text and counts.
    pub rules: Vec<(String, RuleStats)>,
    /// With a control plane (rules may have changed while serving): counts per rule id and
    /// kind, as `/metrics` shows them; printed instead of `rules`.
    pub by_id: Vec<RuleCounters>,
    /// Exchange durations in microseconds.
    pub latency_us: Histogram<u64>,
    /// Wall time served.
    pub elapsed: Duration,
    /// Trace records written, overwritten by wrapping and dropped in this run (`None`:
    /// `--no-traces`).
    pub traces: Option<RingUsage>,
    /// The latency ledger: injected, upstream and overhead, faulted and unfaulted apart.
    pub ledger: LedgerSummary,
    /// Requests sent through unfaulted because `--max-active-faults` was reached.
    pub fault_overflow: u64,
}

impl Summary {
    /// Zero counts for the startup rules.
    pub(crate) fn new(rules: &[FaultRule]) -> Summary {
        Summary {
            requests: 0,
            outcomes: Outcome::ALL.iter().map(|o| (o.as_str(), 0)).collect(),
            rules: rules
                .iter()
                .map(|r| (r.to_string(), RuleStats::default()))
                .collect(),
            by_id: Vec::new(),
            latency_us: latency_histogram(),
            elapsed: Duration::ZERO,
            traces: None,
            ledger: LedgerSummary::new(),
            fault_overflow: 0,
        }
    }

    /// Adds one worker's counters.
    pub(crate) fn add(&mut self, stats: &Stats) {
        self.requests += stats.requests;
        for (slot, n) in self.outcomes.iter_mut().zip(stats.outcomes) {
            slot.1 += n;
        }
        for ((_, total), worker) in self.rules.iter_mut().zip(&stats.rules) {
            total.matched += worker.matched;
            total.faulted += worker.faulted;
        }
        add_counters(&mut self.by_id, stats.by_id.iter().cloned());
        let _ = self.latency_us.add(&stats.latency_us);
        self.ledger.merge(&stats.ledger);
        self.fault_overflow += stats.fault_overflow;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "phantom-fast: {} requests in {:.1}s ({:.0}/s)",
            self.requests,
            secs,
            self.requests as f64 / secs
        )?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| format!("{o} {n}"))
            .collect();
        if !outcomes.is_empty() {
            writeln!(f, "  outcomes: {}", outcomes.join(", "))?;
        }
        if self.requests > 0 {
            let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
            writeln!(
                f,
                "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                self.latency_us.max() as f64 / 1000.0
            )?;
            write!(f, "{}", self.ledger)?;
        }
        if let Some(traces) = &self.traces {
            writeln!(f, "{}", traces.summary_line())?;
        }
        if !self.by_id.is_empty() {
            for rule in &self.by_id {
                writeln!(
                    f,
                    "  rule {} ({}): matched {}, faulted {}",
                    rule.id, rule.kind, rule.matched, rule.injected
                )?;
            }
        } else {
            for (i, (spec, stats)) in self.rules.iter().enumerate() {
                writeln!(
                    f,
                    "  fault[{i}] {spec}: matched {}, faulted {}",
                    stats.matched, stats.faulted
                )?;
            }
        }
        if self.fault_overflow > 0 {
            writeln!(
                f,
                "  fault overflow (--max-active-faults): {}",
                self.fault_overflow
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_overflow_is_printed_with_rule_ids_too() {
        let mut summary = Summary::new(&[]);
        summary.fault_overflow = 3;
        summary.by_id.push(RuleCounters {
            id: "slow".into(),
            kind: crate::fault::FaultKind::Delay,
            matched: 4,
            injected: 1,
            delay_ns: 0,
        });
        let text = summary.to_string();
        assert!(
            text.contains("rule slow (delay): matched 4, faulted 1"),
            "{text}"
        );
        assert!(
            text.contains("fault overflow (--max-active-faults): 3"),
            "{text}"
        );
    }
}

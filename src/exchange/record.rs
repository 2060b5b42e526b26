//! The record phase: one finished exchange → the worker's counters and one trace record,
//! written after the response went out. The trace body captures are filled here too.
//!
//! It sends nothing: by the time it runs the client has its answer (or is gone).

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::{
    control::{DurationHistogram, RuleCounters},
    fault::{self, DelayAt, FaultKind, FaultSource, MAX_APPLIED, RuleStats, Side},
    net::tls,
    trace::{self, AppliedFault, Outcome, TlsSession, TlsVerification, TraceEvent},
};

/// The trace record's rule index for a fault from an `x-phantom-fault` header.
const HEADER_RULE: u32 = u32::MAX;

/// A blank slot of the on-stack list of applied faults.
const EMPTY_FAULT: AppliedFault<'static> = AppliedFault {
    kind: trace::FaultKind::Delay,
    rule: 0,
    rule_id: "",
    spec: "",
    value: 0,
};

use super::{Exchange, Session};

/// Largest exchange duration the latency histograms hold: one hour, in microseconds.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Significant digits the latency histograms keep.
const LATENCY_SIGFIG: u8 = 3;

/// A latency histogram, 1 µs .. 1 h at 3 significant digits: allocated once, recording never
/// allocates. The workers' [`Stats`] and the shutdown summary both use this shape.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Counters one worker keeps; added up by the server into the shutdown summary.
pub(crate) struct Stats {
    /// Answered requests.
    pub(crate) requests: u64,
    /// Per `Outcome::ALL` entry.
    pub(crate) outcomes: [u64; Outcome::ALL.len()],
    /// Per fault rule: matched / faulted.
    pub(crate) rules: Vec<RuleStats>,
    /// Total exchange duration in microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// The same durations in `/metrics`' fixed buckets.
    pub(crate) durations: DurationHistogram,
    /// Upstream time to first byte, in `/metrics`' fixed buckets.
    pub(crate) upstream_ttfb: DurationHistogram,
    /// How long after its deadline each injected delay ended, in `/metrics`' fixed buckets.
    pub(crate) delay_lateness: DurationHistogram,
    /// Injected delay per rule of the current table, nanoseconds (same order as `rules`),
    /// counted when decided, as `rules` is.
    pub(crate) delay_ns: Vec<u64>,
    /// Trace records written.
    pub(crate) trace_records: u64,
    /// The latency ledger (injected, upstream, overhead), faulted and unfaulted apart.
    pub(crate) ledger: trace::LedgerSummary,
    /// At shutdown, with a control plane: per-rule counters by id over every table used
    /// (`rules` then only covers the last one).
    pub(crate) by_id: Vec<RuleCounters>,
    /// Requests sent through unfaulted because `--max-active-faults` was reached.
    pub(crate) fault_overflow: u64,
}

impl Stats {
    /// Zero counters for a table of `rules` rules.
    pub(crate) fn new(rules: usize) -> Stats {
        Stats {
            requests: 0,
            outcomes: [0; Outcome::ALL.len()],
            rules: vec![RuleStats::default(); rules],
            latency_us: latency_histogram(),
            durations: DurationHistogram::default(),
            upstream_ttfb: DurationHistogram::default(),
            delay_lateness: DurationHistogram::default(),
            delay_ns: vec![0; rules],
            trace_records: 0,
            ledger: trace::LedgerSummary::new(),
            by_id: Vec::new(),
            fault_overflow: 0,
        }
    }
}

/// Appends to a trace capture up to `limit` bytes.
pub(super) fn capture(into: &mut Vec<u8>, limit: usize, data: &[u8]) {
    let room = limit.saturating_sub(into.len());
    into.extend_from_slice(&data[..room.min(data.len())]);
}

/// Nanoseconds of a duration, saturating.
pub(super) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Session<'_> {
    /// Counts the exchange and appends its trace record (after the response went out).
    pub(super) fn record(&mut self) {
        self.exchanges += 1;
        let duration = self.ex.started.elapsed();
        self.count(duration);
        let mut trace = self.w.trace.borrow_mut();
        let Some(writer) = trace.as_mut() else {
            return;
        };
        let decision = self.ex.decision;
        // The rule index is read against the snapshot this exchange pinned.
        let mut faults = [EMPTY_FAULT; MAX_APPLIED];
        let mut n = 0;
        for (slot, applied) in faults.iter_mut().zip(decision.applied.as_slice()) {
            *slot = self.trace_fault(applied);
            n += 1;
        }
        let method = self.request_head.get(..self.ex.method_len).unwrap_or(b"");
        let (client_tls, upstream_tls) = self.tls_sessions();
        let event = TraceEvent {
            trace_id: self.ex.trace_id,
            span_id: self.ex.span_id,
            parent_span_id: self.ex.parent_span_id,
            start_unix_ns: self.ex.start_unix_ns,
            duration_ns: nanos(duration),
            upstream_connect_ns: nanos(self.ex.upstream_connect),
            upstream_ttfb_ns: self.ex.ttfb.map(nanos),
            upstream_body_ns: nanos(self.ex.upstream_body),
            injected_delay_ns: self.injected_ns(),
            generation: self.faults.generation,
            faults: &faults[..n],
            client_tls,
            upstream_tls,
            method,
            url: &self.url,
            version: self.ex.version.as_str(),
            status: self.ex.status,
            request_head: &self.request_head,
            response_head: &self.out[..self.ex.response_head_len.min(self.out.len())],
            request_body: &self.request_body,
            request_body_len: self.ex.request_body_len,
            response_body: &self.response_body,
            response_body_len: self.ex.response_body_len,
            client_addr: self.peer,
            upstream_addr: self.ex.upstream_addr,
            outcome: self.ex.outcome,
        };
        writer.write(&event);
        drop(trace);
        self.w.stats.borrow_mut().trace_records += 1;
        self.request_head.clear();
        self.url.clear();
    }

    /// Every delay the faults injected, ns: the forward delay and the head delay as sampled (the
    /// timer's lateness is the proxy's own), a slow head's total, a paced body's relay time.
    fn injected_ns(&self) -> u64 {
        self.ex
            .decision
            .forward_delay_ns
            .saturating_add(self.ex.injected_ns)
    }

    /// A response body was cut short of its framing (`truncate`, or `reset:after=` when
    /// `reset`): the connection resets on close for a reset, and the record gets the `delivered`
    /// bytes that went out, not what the rule asked for.
    pub(super) fn response_cut(&mut self, reset: bool, delivered: u64) {
        if reset {
            self.client.reset_on_close();
        }
        let kind = if reset {
            FaultKind::Reset
        } else {
            FaultKind::Truncate
        };
        self.ex
            .decision
            .applied
            .set_measured(kind, Side::Response, delivered);
    }

    /// A response body relayed since `from`: the upstream's time, or, when the plan paced it
    /// (`shaped`: a bandwidth, dribble or body-delay fault), injected time.
    pub(super) fn body_relayed(&mut self, from: Instant, shaped: bool) {
        let took = from.elapsed();
        if shaped {
            self.ex.injected_ns = self.ex.injected_ns.saturating_add(nanos(took));
        } else {
            self.ex.upstream_body += took;
        }
    }

    /// The https listener's handshake with a new client failed (`reason`): a record of its own,
    /// timed from the accept (`accepted`), with what the session got to (SNI, version) and why.
    pub(super) fn record_client_tls_failure(&mut self, accepted: Instant, reason: &'static str) {
        self.ex = Exchange::new(accepted);
        // `Exchange::new` reads the wall clock now; the exchange began at the accept.
        self.ex.start_unix_ns = self
            .ex
            .start_unix_ns
            .saturating_sub(nanos(accepted.elapsed()));
        let mut ids = self.w.id_rng.borrow_mut();
        self.ex.trace_id = trace::random_trace_id(&mut ids);
        self.ex.span_id = trace::random_span_id(&mut ids);
        drop(ids);
        self.ex.outcome = Outcome::ClientTlsFailed;
        self.ex.error_reason = Some(reason);
        self.record();
    }

    /// The exchange's TLS sessions: the client's when it spoke TLS to us (the https listener,
    /// an intercepted tunnel; with the reason when its handshake failed), and the upstream's when
    /// we spoke TLS to it (its failure reason when the handshake failed).
    fn tls_sessions(&self) -> (Option<TlsSession<'_>>, Option<TlsSession<'_>>) {
        let client_failure = match self.ex.outcome {
            Outcome::ClientTlsFailed => Some(self.ex.error_reason.unwrap_or("")),
            _ => None,
        };
        let client = match (
            self.client.transport().and_then(|t| t.tls()),
            client_failure,
        ) {
            (Some(tls), failure) => Some(session(&tls.facts(), failure.unwrap_or(""))),
            // It failed before a session existed (not even a ClientHello could be read).
            (None, Some(failure)) => Some(failed_session("", failure)),
            (None, None) => None,
        };
        let upstream = self.ex.upstream_sni.as_deref().map(|name| {
            let failure = self.ex.error_reason.unwrap_or("");
            match &self.ex.upstream_tls {
                Some(facts) => TlsSession {
                    server_name: name,
                    ..session(facts, failure)
                },
                None => failed_session(name, failure),
            }
        });
        (client, upstream)
    }

    /// One applied fault as the trace record names it, read against the pinned snapshot.
    fn trace_fault(&self, applied: &fault::AppliedFault) -> AppliedFault<'_> {
        let (rule, rule_id, spec) = match applied.source {
            FaultSource::Rule(rule) => {
                let index = usize::from(rule);
                (
                    u32::from(rule),
                    self.faults.ids.get(index).map_or("", |id| &**id),
                    self.faults.specs.get(index).map_or("", String::as_str),
                )
            }
            FaultSource::Header => (HEADER_RULE, "header", "x-phantom-fault"),
        };
        let request = applied.side == Side::Request;
        let kind = match applied.kind {
            FaultKind::Delay => match applied.at {
                DelayAt::Forward => trace::FaultKind::Delay,
                DelayAt::Head => trace::FaultKind::ResponseDelay,
                DelayAt::Body => trace::FaultKind::BodyDelay,
            },
            FaultKind::Error => trace::FaultKind::Error,
            FaultKind::Bandwidth | FaultKind::Dribble if request => {
                trace::FaultKind::RequestThrottle
            }
            FaultKind::Bandwidth => trace::FaultKind::Throttle,
            FaultKind::Dribble => trace::FaultKind::Dribble,
            FaultKind::Truncate if request => trace::FaultKind::RequestTruncate,
            FaultKind::Truncate => trace::FaultKind::Truncate,
            FaultKind::Reset => trace::FaultKind::Reset,
            FaultKind::Close => trace::FaultKind::Close,
            FaultKind::Hang => trace::FaultKind::Hang,
            FaultKind::Garbage => trace::FaultKind::Garbage,
            FaultKind::SlowHead => trace::FaultKind::SlowHeaders,
        };
        AppliedFault {
            kind,
            rule,
            rule_id,
            spec,
            value: applied.value,
        }
    }

    /// The worker's counters for one exchange.
    fn count(&self, duration: std::time::Duration) {
        let mut stats = self.w.stats.borrow_mut();
        stats.requests += 1;
        let slot = Outcome::ALL
            .iter()
            .position(|o| *o == self.ex.outcome)
            .unwrap_or(0);
        stats.outcomes[slot] += 1;
        let micros = u64::try_from(duration.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        stats.latency_us.saturating_record(micros);
        stats.durations.record(duration);
        if let Some(ttfb) = self.ex.ttfb {
            stats.upstream_ttfb.record(ttfb);
        }
        let decision = self.ex.decision;
        let ledger = trace::Ledger::from_parts(
            nanos(duration),
            self.injected_ns(),
            nanos(self.ex.upstream_connect),
            self.ex.ttfb.map_or(0, nanos),
            nanos(self.ex.upstream_body),
        );
        stats
            .ledger
            .record(&ledger, !decision.applied.as_slice().is_empty());
    }
}

/// A TLS session that never got far enough to report facts: only its name and why it failed.
fn failed_session<'a>(server_name: &'a str, failure: &'a str) -> TlsSession<'a> {
    TlsSession {
        version: "",
        cipher_suite: "",
        version_code: 0,
        cipher_suite_code: 0,
        server_name,
        verification: TlsVerification::NotApplicable,
        resumed: false,
        failure,
    }
}

/// A TLS session as the trace record keeps it.
fn session<'a>(facts: &tls::TlsFacts<'a>, failure: &'a str) -> TlsSession<'a> {
    TlsSession {
        version: facts.version.unwrap_or(""),
        cipher_suite: facts.cipher_suite.unwrap_or(""),
        version_code: facts.version_code,
        cipher_suite_code: facts.cipher_suite_code,
        server_name: facts.server_name.unwrap_or(""),
        verification: facts.verification,
        resumed: facts.resumed,
        failure,
    }
}

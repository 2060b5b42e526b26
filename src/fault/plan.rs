//! [`FaultPlan`]: everything one request's faults ask of the exchange, as one `Copy` value read at
//! four points (before forwarding, before the response head, while a body is relayed, at the end).
//! It decides nothing and performs nothing: `table.rs` fills it, the exchange carries it out.

use std::num::NonZeroU64;
use std::time::Duration;

use super::rule::{DelayAt, FaultKind, Side};

/// Most faults one plan records for the trace record; a further applied fault still acts but is
/// only counted in [`AppliedFaults::dropped`]. Eight covers every slot of a plan at once.
pub const MAX_APPLIED: usize = 8;

/// Where an applied fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultSource {
    /// Rule at this index of the table the plan was decided against (its id is
    /// [`FaultTable::rule_id`](super::FaultTable::rule_id) of the same, pinned table).
    Rule(u16),
    /// An `x-phantom-fault` request header (`--allow-header-faults`).
    Header,
}

/// One fault applied to a request, for the trace record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppliedFault {
    /// The rule (or header) that applied it.
    pub source: FaultSource,
    /// What it does.
    pub kind: FaultKind,
    /// Where a delay happened (`Forward` for every other kind).
    pub at: DelayAt,
    /// Which body a shaping fault applied to (`Response` for every other kind).
    pub side: Side,
    /// The sampled or configured value, in the kind's unit: nanoseconds for delays, dribble and
    /// slow heads; the status for errors; bytes per second for bandwidth; bytes (or parts per
    /// million of the body, see [`Limit`]) for truncate; bytes for `reset:after=`; 0 otherwise.
    /// Once the exchange has carried the fault out, what it measured replaces it
    /// ([`AppliedFaults::set_measured`]): a hang's nanoseconds held, and the body bytes a
    /// response truncate or `reset:after=` delivered before the cut.
    pub value: u64,
}

/// The faults applied to one request, in the order they applied; fixed capacity, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppliedFaults {
    items: [AppliedFault; MAX_APPLIED],
    len: u8,
    /// Faults that applied beyond [`MAX_APPLIED`] (they act, but the record cannot list them).
    pub dropped: u8,
}

impl AppliedFaults {
    /// No fault applied.
    pub const EMPTY: AppliedFaults = AppliedFaults {
        items: [AppliedFault {
            source: FaultSource::Header,
            kind: FaultKind::Delay,
            at: DelayAt::Forward,
            side: Side::Response,
            value: 0,
        }; MAX_APPLIED],
        len: 0,
        dropped: 0,
    };

    /// Appends one fault, or counts it in `dropped` when full.
    pub fn push(&mut self, fault: AppliedFault) {
        match self.items.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = fault;
                self.len += 1;
            }
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }

    /// Replaces the value of the first recorded fault of `kind` on `side` with what the
    /// exchange measured carrying it out; says whether there was one.
    pub fn set_measured(&mut self, kind: FaultKind, side: Side, value: u64) -> bool {
        let len = usize::from(self.len);
        match self.items[..len]
            .iter_mut()
            .find(|f| f.kind == kind && f.side == side)
        {
            Some(fault) => {
                fault.value = value;
                true
            }
            None => false,
        }
    }

    /// The recorded faults, in order.
    pub fn as_slice(&self) -> &[AppliedFault] {
        &self.items[..usize::from(self.len)]
    }

    /// True when no fault applied.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.dropped == 0
    }
}

/// How the request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Forward upstream (shaped by the rest of the plan).
    Forward,
    /// A synthetic response with `status`; its bytes are prebuilt per rule
    /// ([`FaultTable::synthetic`](super::FaultTable::synthetic)); `rule: None` (a header fault)
    /// means the default body `{"fault":"injected"}` with `x-fault-injected: phantom`.
    Synthetic {
        /// Status code, 100–599.
        status: u16,
        /// Index of the rule whose response to send, `None` for the default one.
        rule: Option<u16>,
    },
    /// Reset the client connection (`SO_LINGER` 0, then close) without forwarding.
    Reset,
    /// Close the client connection (FIN) without forwarding or answering.
    Close,
    /// Answer nothing and read nothing more until the client gives up (bounded by
    /// `--idle-timeout`), then close.
    Hang,
    /// Send [`GARBAGE`] instead of an HTTP response, then close.
    Garbage,
}

/// The bytes a `garbage` fault sends: no HTTP status line, a NUL and invalid UTF-8 included, so
/// every client parser rejects it.
pub const GARBAGE: &[u8] = b"\x16\x03\x01\x00\xffPHANTOM-GARBAGE \x00\xfe not http\r\n\r\n";

/// How far a body may go before it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// After this many body bytes.
    Bytes(u64),
    /// After this share of the body's declared length, in parts per million (1..=1 000 000).
    PartsPerMillion(u32),
}

impl Limit {
    /// Body bytes allowed through, given the declared length: `None` when the limit cannot apply
    /// (a fraction of a body whose length is unknown: chunked or close-delimited), else the cut,
    /// never beyond `len` when `len` is known.
    pub fn resolve(self, len: Option<u64>) -> Option<u64> {
        match (self, len) {
            (Limit::Bytes(n), Some(len)) => Some(n.min(len)),
            (Limit::Bytes(n), None) => Some(n),
            (Limit::PartsPerMillion(ppm), Some(len)) => {
                Some((u128::from(len) * u128::from(ppm) / 1_000_000) as u64)
            }
            (Limit::PartsPerMillion(_), None) => None,
        }
    }
}

/// How a body's bytes are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pace {
    /// As fast as both ends go.
    Full,
    /// At most this many bytes per second, paced by the worker's timer.
    Bandwidth {
        /// Bytes per second, at least 1.
        bytes_per_sec: u64,
        /// Largest piece per write; `None`: the pacer's default step.
        burst: Option<NonZeroU64>,
    },
    /// The body in `pieces` equal pieces spread evenly over `total_ns`.
    Dribble {
        /// Number of pieces, at least 1.
        pieces: u32,
        /// Time from the first piece to the last, in nanoseconds.
        total_ns: u64,
    },
}

/// How a response body ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cut {
    /// It does not: the whole body is relayed.
    None,
    /// After the limit, close the client connection (FIN); the body is short of its framing, so
    /// the client can tell (never framed as complete: no final chunk, fewer bytes than declared).
    Truncate(Limit),
    /// After this many body bytes, reset the client connection (`SO_LINGER` 0).
    Reset(u64),
}

/// What one request's faults ask of the exchange. `Copy`, no allocation; [`FaultPlan::NONE`] is
/// "forward untouched".
///
/// The exchange reads it at four points:
/// 1. before forwarding: wait [`forward_delay_ns`](Self::forward_delay_ns), then act on
///    [`answer`](Self::answer) (and shape the request body with `request_pace`/`request_cut`);
/// 2. before the response head: wait `head_delay_ns`, send the head over `slow_head_ns`;
/// 3. while relaying the response body: `response_pace`, `chunk_delay_ns`, `response_cut`;
/// 4. at the end: [`keeps_alive`](Self::keeps_alive) and the `applied` list for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultPlan {
    /// Nanoseconds to wait before forwarding or answering (sum of the delay rules `at=forward`).
    pub forward_delay_ns: u64,
    /// What answers the request.
    pub answer: Answer,
    /// Nanoseconds to wait after the upstream's response head arrives and before relaying it
    /// (slow time to first byte; sum of the delay rules `at=head`).
    pub head_delay_ns: u64,
    /// Nanoseconds over which the response head is dribbled (0: sent at once).
    pub slow_head_ns: u64,
    /// Pacing of the response body.
    pub response_pace: Pace,
    /// Nanoseconds to wait before each response body chunk after the first (sum of the delay
    /// rules `at=body`).
    pub chunk_delay_ns: u64,
    /// How the response body ends early, if it does.
    pub response_cut: Cut,
    /// Pacing of the request body sent upstream.
    pub request_pace: Pace,
    /// Cut of the request body sent upstream: after the limit the upstream connection is closed
    /// and the request is answered 502 (the request body is never framed as complete).
    pub request_cut: Option<Limit>,
    /// Every fault applied, with its sampled value.
    pub applied: AppliedFaults,
}

impl FaultPlan {
    /// Forward untouched.
    pub const NONE: FaultPlan = FaultPlan {
        forward_delay_ns: 0,
        answer: Answer::Forward,
        head_delay_ns: 0,
        slow_head_ns: 0,
        response_pace: Pace::Full,
        chunk_delay_ns: 0,
        response_cut: Cut::None,
        request_pace: Pace::Full,
        request_cut: None,
        applied: AppliedFaults::EMPTY,
    };

    /// True when no fault applied: the exchange may take its unfaulted fast path.
    pub fn is_none(&self) -> bool {
        self.applied.is_empty()
    }

    /// The delay before forwarding, as a `Duration`.
    pub fn forward_delay(&self) -> Duration {
        Duration::from_nanos(self.forward_delay_ns)
    }

    /// Status of the synthetic answer, if the request is answered synthetically.
    pub fn synthetic_status(&self) -> Option<u16> {
        match self.answer {
            Answer::Synthetic { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Whether the plan holds the request inside a fault for a while (a delay, a hang, a paced
    /// body or a slow head): what `--max-active-faults` counts.
    pub fn holds(&self) -> bool {
        self.forward_delay_ns > 0
            || self.head_delay_ns > 0
            || self.slow_head_ns > 0
            || self.chunk_delay_ns > 0
            || self.answer == Answer::Hang
            || self.response_pace != Pace::Full
            || self.request_pace != Pace::Full
    }

    /// Whether the client connection may stay open after this exchange, as far as faults go:
    /// connection faults (reset, close, hang, garbage) and cuts close it; delays, pacing and
    /// synthetic answers keep it (the exchange still applies HTTP's own keep-alive rules).
    pub fn keeps_alive(&self) -> bool {
        matches!(self.answer, Answer::Forward | Answer::Synthetic { .. })
            && self.response_cut == Cut::None
            && self.request_cut.is_none()
    }

    /// The rule a one-fault summary names (the seed's trace field): the rule of the synthetic
    /// answer, else the first rule that applied anything; `None` for header faults only.
    pub fn primary_rule(&self) -> Option<usize> {
        if let Answer::Synthetic {
            rule: Some(rule), ..
        } = self.answer
        {
            return Some(usize::from(rule));
        }
        self.applied.as_slice().iter().find_map(|f| match f.source {
            FaultSource::Rule(rule) => Some(usize::from(rule)),
            FaultSource::Header => None,
        })
    }
}

impl Default for FaultPlan {
    fn default() -> FaultPlan {
        FaultPlan::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(rule: u16) -> AppliedFault {
        AppliedFault {
            source: FaultSource::Rule(rule),
            kind: FaultKind::Delay,
            at: DelayAt::Forward,
            side: Side::Response,
            value: 1,
        }
    }

    #[test]
    fn applied_faults_push_beyond_capacity_counts_dropped() {
        let mut list = AppliedFaults::EMPTY;
        assert!(list.is_empty());
        for rule in 0..10 {
            list.push(applied(rule));
        }
        assert_eq!(list.as_slice().len(), MAX_APPLIED);
        assert_eq!(list.as_slice()[7], applied(7));
        assert_eq!(list.dropped, 2);
        assert!(!list.is_empty());
    }

    #[test]
    fn limit_resolve_against_declared_length() {
        let rows: &[(&str, Limit, Option<u64>, Option<u64>)] = &[
            ("bytes_known", Limit::Bytes(10), Some(100), Some(10)),
            ("bytes_beyond_len", Limit::Bytes(500), Some(100), Some(100)),
            ("bytes_unknown", Limit::Bytes(10), None, Some(10)),
            ("half", Limit::PartsPerMillion(500_000), Some(101), Some(50)),
            ("fraction_unknown", Limit::PartsPerMillion(1), None, None),
            (
                "whole",
                Limit::PartsPerMillion(1_000_000),
                Some(u64::MAX),
                Some(u64::MAX),
            ),
        ];
        for (name, limit, len, want) in rows {
            assert_eq!(limit.resolve(*len), *want, "{name}");
        }
    }

    #[test]
    fn plan_keep_alive_and_hold_per_slot() {
        let mut plan = FaultPlan::NONE;
        assert!(plan.is_none() && plan.keeps_alive() && !plan.holds());
        plan.forward_delay_ns = 1;
        assert!(plan.holds() && plan.keeps_alive());
        let rows: &[(&str, FaultPlan, bool, bool)] = &[
            (
                "synthetic",
                FaultPlan {
                    answer: Answer::Synthetic {
                        status: 503,
                        rule: None,
                    },
                    ..FaultPlan::NONE
                },
                true,
                false,
            ),
            (
                "reset",
                FaultPlan {
                    answer: Answer::Reset,
                    ..FaultPlan::NONE
                },
                false,
                false,
            ),
            (
                "hang",
                FaultPlan {
                    answer: Answer::Hang,
                    ..FaultPlan::NONE
                },
                false,
                true,
            ),
            (
                "truncate",
                FaultPlan {
                    response_cut: Cut::Truncate(Limit::Bytes(1)),
                    ..FaultPlan::NONE
                },
                false,
                false,
            ),
            (
                "bandwidth",
                FaultPlan {
                    response_pace: Pace::Bandwidth {
                        bytes_per_sec: 1,
                        burst: None,
                    },
                    ..FaultPlan::NONE
                },
                true,
                true,
            ),
        ];
        for (name, plan, keeps, holds) in rows {
            assert_eq!(plan.keeps_alive(), *keeps, "{name}");
            assert_eq!(plan.holds(), *holds, "{name}");
        }
    }

    #[test]
    fn primary_rule_prefers_synthetic_answer() {
        let mut plan = FaultPlan::NONE;
        assert_eq!(plan.primary_rule(), None);
        plan.applied.push(applied(2));
        assert_eq!(plan.primary_rule(), Some(2));
        plan.answer = Answer::Synthetic {
            status: 500,
            rule: Some(5),
        };
        assert_eq!(plan.primary_rule(), Some(5));
        assert_eq!(plan.synthetic_status(), Some(500));
    }
}

//! The rule model: what one validated rule matches and does. It parses no text (`spec.rs`) and
//! compiles nothing for the hot path (`table.rs`).

use std::fmt;
use std::time::Duration;

/// What a fault does, for traces, counters and the shutdown summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Hold the request (before forwarding, before the response head, or between body chunks).
    Delay,
    /// Answer with a synthetic response instead of forwarding.
    Error,
    /// Limit a body to a number of bytes per second.
    Bandwidth,
    /// Send a body in a number of pieces spread over a total time.
    Dribble,
    /// Cut a body after some bytes, then close.
    Truncate,
    /// Reset the client connection (before the response, or after some body bytes).
    Reset,
    /// Close the client connection without an answer.
    Close,
    /// Answer nothing until the client gives up.
    Hang,
    /// Answer bytes that are not HTTP.
    Garbage,
    /// Send the response head slowly.
    SlowHead,
}

impl FaultKind {
    /// Every kind, in grammar order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Delay,
        FaultKind::Error,
        FaultKind::Bandwidth,
        FaultKind::Dribble,
        FaultKind::Truncate,
        FaultKind::Reset,
        FaultKind::Close,
        FaultKind::Hang,
        FaultKind::Garbage,
        FaultKind::SlowHead,
    ];

    /// The kind's name in the grammar, e.g. `slow-head`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Error => "error",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Dribble => "dribble",
            FaultKind::Truncate => "truncate",
            FaultKind::Reset => "reset",
            FaultKind::Close => "close",
            FaultKind::Hang => "hang",
            FaultKind::Garbage => "garbage",
            FaultKind::SlowHead => "slow-head",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule does when its URL filter matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultAction {
    /// Delay drawn uniformly from `min..=max` (equal for a fixed delay).
    Delay {
        /// Shortest delay, inclusive.
        min: Duration,
        /// Longest delay, inclusive; `min <= max` for every parsed rule.
        max: Duration,
    },
    /// Synthetic answer with `status`, fired with `probability`.
    Error {
        /// Status code of the synthetic answer, 100–599.
        status: u16,
        /// Chance in `0.0..=1.0` that a matching request is answered; 1.0 when the spec omits it.
        probability: f64,
    },
}

/// One validated `--fault` rule, in the order the user gave it.
///
/// Built by [`str::parse`]; its [`Display`](fmt::Display) is the canonical spec, and parsing that
/// text yields an equal rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// The rule's stable id when given explicitly (`id=NAME`); `None` takes the position's
    /// default, `r1` for the first rule ([`FaultTable::rule_id`](super::FaultTable::rule_id)).
    pub id: Option<String>,
    /// What happens to a matching request.
    pub action: FaultAction,
    /// Substring the full request URL must contain (always starts with `/`); `None` matches all.
    pub url_filter: Option<String>,
}

impl FaultRule {
    /// The rule's family, for traces and the shutdown summary.
    pub fn kind(&self) -> FaultKind {
        match self.action {
            FaultAction::Delay { .. } => FaultKind::Delay,
            FaultAction::Error { .. } => FaultKind::Error,
        }
    }
}

/// Prints the canonical spec: durations always in whole milliseconds, a fixed delay as one value,
/// probability omitted when it is 1.0, e.g. `delay:2000ms`, `delay:100ms-500ms:/api`, `error:503`,
/// `error:500:0.1:/api`. Sub-millisecond parts of a hand-built `Duration` are truncated; the grammar
/// cannot produce them.
impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            FaultAction::Delay { min, max } => {
                write!(f, "delay:{}ms", min.as_millis())?;
                if max != min {
                    write!(f, "-{}ms", max.as_millis())?;
                }
            }
            FaultAction::Error {
                status,
                probability,
            } => {
                write!(f, "error:{status}")?;
                // f64 Display is the shortest text that parses back to the same value, and never
                // uses an exponent, so it stays inside the PROBABILITY grammar.
                if probability != 1.0 {
                    write!(f, ":{probability}")?;
                }
            }
        }
        if let Some(filter) = &self.url_filter {
            write!(f, ":{filter}")?;
        }
        Ok(())
    }
}

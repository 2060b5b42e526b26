//! The rule model: what one validated rule matches and does. It parses no text (`spec.rs`) and
//! compiles nothing for the hot path (`table.rs`).

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use super::plan::Limit;

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

/// How often a matching rule fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Every matching request (the spec gives no rate, or probability 1).
    Always,
    /// Each matching request independently, with this chance in `0.0..1.0`, from the worker's
    /// fault RNG.
    Probability(f64),
    /// Exactly `hits` of every `every` consecutive matching requests per worker, spread evenly
    /// (`1in10`: the 10th, 20th, …; `3in10`: the 4th, 7th, 10th, …); no RNG draw.
    Ratio {
        /// Requests that fire per block, `1..=every`.
        hits: u32,
        /// Block length, at least 1.
        every: u32,
    },
}

/// A delay distribution; every parameter in whole milliseconds as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `min..=max` at nanosecond resolution (the seed's range).
    Uniform {
        /// Shortest, inclusive.
        min: Duration,
        /// Longest, inclusive; `min <= max`.
        max: Duration,
    },
    /// Normal with this mean and standard deviation, truncated at 0 (negative draws are drawn
    /// again).
    Normal {
        /// Mean.
        mean: Duration,
        /// Standard deviation.
        sd: Duration,
    },
    /// Lognormal given by its median and 99th percentile (`0 < p50 < p99`).
    LogNormal {
        /// Median.
        p50: Duration,
        /// 99th percentile.
        p99: Duration,
    },
    /// Pareto (type I): at least `scale`, tail index `shape` (> 0; the mean is finite above 1).
    Pareto {
        /// Minimum value (x_m), more than 0.
        scale: Duration,
        /// Shape (alpha), more than 0.
        shape: f64,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean (1/lambda).
        mean: Duration,
    },
}

/// Where a delay happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelayAt {
    /// Before the request is forwarded (or answered synthetically): the seed's delay.
    Forward,
    /// After the upstream's response head arrives, before it is relayed (slow time to first
    /// byte, with the real answer).
    Head,
    /// Before each response body chunk after the first.
    Body,
}

/// Which body a shaping fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The response body relayed to the client.
    Response,
    /// The request body sent upstream.
    Request,
}

/// What a rule does when it fires. `Copy`: the strings of a synthetic answer (body, headers)
/// live on the [`FaultRule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultAction {
    /// Wait, drawn from `dist`, capped at `max`.
    Delay {
        /// The distribution.
        dist: Dist,
        /// Cap on every draw.
        max: Option<Duration>,
        /// Where the wait happens.
        at: DelayAt,
    },
    /// Answer with a synthetic response instead of forwarding.
    Error {
        /// Status code, 100–599.
        status: u16,
    },
    /// Limit a body's rate.
    Bandwidth {
        /// Bytes per second, at least 1.
        bytes_per_sec: u64,
        /// Largest piece one paced write sends (`burst=SIZE`); `None` is the faithful default,
        /// a twentieth of a second's worth and at least one TCP segment. Each piece still goes
        /// when its last byte is due at the rate, so only the link's burstiness changes.
        burst: Option<NonZeroU64>,
        /// Which body.
        side: Side,
    },
    /// A body in `pieces` pieces spread evenly over `over`.
    Dribble {
        /// Number of pieces, at least 1.
        pieces: u32,
        /// From the first piece to the last.
        over: Duration,
        /// Which body.
        side: Side,
    },
    /// Cut a body after a limit, then close.
    Truncate {
        /// How much gets through.
        limit: Limit,
        /// Which body.
        side: Side,
    },
    /// Reset the client connection: before forwarding, or after this many response body bytes.
    Reset {
        /// Response body bytes relayed before the reset; `None` resets before forwarding.
        after: Option<u64>,
    },
    /// Close the client connection without forwarding or answering.
    Close,
    /// Answer nothing until the client gives up (bounded by `--idle-timeout`).
    Hang,
    /// Answer bytes that are not HTTP, then close.
    Garbage,
    /// Send the response head spread over this long.
    SlowHead {
        /// From the head's first byte to its last.
        over: Duration,
    },
}

impl FaultAction {
    /// The action's kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultAction::Delay { .. } => FaultKind::Delay,
            FaultAction::Error { .. } => FaultKind::Error,
            FaultAction::Bandwidth { .. } => FaultKind::Bandwidth,
            FaultAction::Dribble { .. } => FaultKind::Dribble,
            FaultAction::Truncate { .. } => FaultKind::Truncate,
            FaultAction::Reset { .. } => FaultKind::Reset,
            FaultAction::Close => FaultKind::Close,
            FaultAction::Hang => FaultKind::Hang,
            FaultAction::Garbage => FaultKind::Garbage,
            FaultAction::SlowHead { .. } => FaultKind::SlowHead,
        }
    }
}

/// The body of a synthetic answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// These bytes, as written (percent-decoded).
    Inline(Vec<u8>),
    /// The contents of this file, read once when the table is compiled.
    File(String),
}

/// The part of a request a matcher looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The method token (case-sensitive).
    Method,
    /// The host without its port (ASCII case-insensitive).
    Host,
    /// The path without the query (case-sensitive).
    Path,
    /// The value of this query parameter (name as written, case-sensitive; not decoded).
    Query(String),
    /// The value of any header line with this name (stored lowercase; values case-sensitive).
    Header(String),
}

/// How a matcher compares a field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// The field is there (query parameters and headers only).
    Present,
    /// Equal to (`=`).
    Equal(Vec<u8>),
    /// Starts with (`^=`).
    Prefix(Vec<u8>),
    /// Ends with (`$=`).
    Suffix(Vec<u8>),
    /// Contains (`*=`).
    Contains(Vec<u8>),
}

/// One condition of a rule; all of a rule's matchers must hold (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// What is looked at.
    pub field: Field,
    /// How it is compared.
    pub test: Test,
}

/// One validated rule, in the order the user gave it.
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
    /// How often it happens.
    pub rate: Rate,
    /// Conditions besides the URL filter, all required.
    pub matchers: Vec<Matcher>,
    /// Substring the full request URL must contain (always starts with `/`); `None` matches all.
    pub url_filter: Option<String>,
    /// A synthetic answer's body (`error` only); `None` is the seed's `{"fault":"injected"}`.
    pub body: Option<Body>,
    /// A synthetic answer's extra headers (`error` only), names lowercase, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl FaultRule {
    /// A rule doing `action` to every request, always, with nothing else set.
    pub fn new(action: FaultAction) -> FaultRule {
        FaultRule {
            id: None,
            action,
            rate: Rate::Always,
            matchers: Vec::new(),
            url_filter: None,
            body: None,
            headers: Vec::new(),
        }
    }

    /// The rule's kind, for traces and the shutdown summary.
    pub fn kind(&self) -> FaultKind {
        self.action.kind()
    }
}

//! The fault grammar: parses one spec into a validated [`FaultRule`] (or, for the
//! `x-phantom-fault` header, into a `Copy` [`HeaderFault`] without allocating) and prints a rule
//! back in canonical form. It decides nothing per request; compiling rules is `table.rs`.
//!
//! ```text
//! SPEC     = KIND [":" ARGS] [":" RATE] *(":" OPTION) [":" FILTER]
//! KIND     = delay | error | bandwidth | dribble | truncate | reset | close | hang | garbage
//!          | slow-head
//! ARGS     delay:DIST  error:STATUS  bandwidth:SIZE[/s]  dribble:PIECES,DURATION
//!          truncate:SIZE|PERCENT  slow-head:DURATION    (reset, close, hang, garbage take none)
//! DIST     = DURATION ["-" DURATION] | normal(MEAN,SD) | lognormal(P50,P99)
//!          | pareto(SCALE,SHAPE) | exp(MEAN)
//! RATE     = PROBABILITY | DIGITS "in" DIGITS            0.25, or exactly 1 in every 10: 1in10
//! OPTION   = KEY "=" VALUE | MATCHER | "id=" NAME
//! MATCHER  = FIELD OP VALUE | ("query." | "header.") NAME     (the latter: present)
//! FIELD    = method | host | path | query.NAME | header.NAME
//! OP       = "=" | "^=" | "$=" | "*="                     equal, prefix, suffix, contains
//! FILTER   = "/" ANY*                 the seed's substring of the full URL; always last
//! DURATION = DIGITS ["ms" | "s"]      bare digits are milliseconds (delay:250 = 250 ms)
//! SIZE     = DIGITS ["B" | "KiB" | "MiB" | "GiB"]
//! ```
//!
//! Options by kind: `delay` takes `max=DURATION` and `at=forward|head|body`; `error` takes
//! `body=TEXT`, `body=@PATH` and `set.NAME=VALUE` (response headers); `bandwidth` takes
//! `burst=SIZE` (the largest piece per paced write, at least 1 byte); `bandwidth`, `dribble` and
//! `truncate` take `side=response|request`; `reset` takes `after=SIZE`. Values are
//! percent-decoded (`%3A` is `:`, `%25` is `%`, `%20` a space), so a value never contains a raw
//! `:`. The seed's grammar (`delay:DURATION[-DURATION][:FILTER]`,
//! `error:STATUS[:PROBABILITY][:FILTER]`) is a subset with its meaning unchanged.
//!
//! The URL filter is everything after the first `:/` of the spec, so it may itself contain `:`
//! (`error:503:/v1/items:batchGet` filters on `/v1/items:batchGet`). Nothing before the filter can
//! start with `/`, so this never cuts a duration, status or probability in two. Parsing is strict:
//! no whitespace, units are lower-case, durations are whole numbers, and every malformed spec is an
//! error naming the spec and what was expected, never a silently ignored part.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::Duration;

use super::plan::Limit;
use super::rule::{Body, DelayAt, Dist, FaultAction, FaultRule, Field, Matcher, Rate, Side, Test};

/// Longest delay one bound may name: a day is beyond every client and upstream timeout, so a larger
/// value is a typo (`delay:99999999999999999999ms` is rejected, not wrapped).
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Lowest and highest status code a synthetic answer may carry (RFC 9110 §15: three digits, 1xx–5xx).
const STATUS_RANGE: std::ops::RangeInclusive<u16> = 100..=599;

/// Most pieces a dribble may have (each is one timer wait).
const MAX_DRIBBLE_PIECES: u64 = 1_000_000;

/// Longest rule id.
const MAX_ID_BYTES: usize = 64;

/// Appended to structural errors so the user sees the grammar's shape once.
const GRAMMAR: &str = "expected delay:DURATION[-DURATION][:/FILTER] or error:STATUS[:PROBABILITY][:/FILTER], or another KIND[:ARGS][:RATE][:OPTION...][:/FILTER] (see the README's \"Fault grammar\")";

/// Shown after a malformed duration.
const DURATION_EXAMPLES: &str = "expected a whole number of ms or s, e.g. 100ms, 2s or 250";

/// Shown after a malformed size.
const SIZE_EXAMPLES: &str = "expected a whole number of bytes, e.g. 1024, 64KiB or 1MiB";

/// Every kind the grammar knows, for the unknown-kind message.
const KINDS: &str =
    "delay, error, bandwidth, dribble, truncate, reset, close, hang, garbage or slow-head";

/// A spec that does not follow the grammar.
///
/// Displays exactly as `invalid fault spec "<spec>": <reason>`; the caller exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    spec: String,
    reason: String,
}

impl SpecError {
    pub(super) fn new(spec: &str, reason: impl Into<String>) -> SpecError {
        SpecError {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }

    /// The spec as the user wrote it.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// What was wrong and what was expected, e.g. `status code 700 is out of range 100–599`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` quotes the spec and escapes tabs, newlines and quotes, so the message stays on one
        // line whatever the user typed; ordinary specs print unchanged between the quotes.
        write!(f, "invalid fault spec {:?}: {}", self.spec, self.reason)
    }
}

impl std::error::Error for SpecError {}

/// Why a spec is malformed. Borrows the spec, so rejecting one allocates nothing until it is
/// displayed (the `x-phantom-fault` header is parsed on the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The spec is empty.
    Empty,
    /// The spec contains whitespace.
    Whitespace,
    /// The spec contains a control character.
    Control,
    /// The header value is not UTF-8.
    NotUtf8,
    /// Nothing before the first `:`.
    MissingKind,
    /// The kind is not one the grammar knows.
    UnknownKind(&'a str),
    /// A kind's required argument is missing.
    MissingArg {
        /// The kind.
        kind: &'static str,
        /// What is missing, e.g. `duration`.
        what: &'static str,
    },
    /// A duration is empty.
    EmptyDuration,
    /// A duration has a sign.
    NegativeDuration(&'a str),
    /// A duration is beyond a day.
    DurationTooLarge(&'a str),
    /// A duration is not `DIGITS [ms|s]`.
    BadDuration(&'a str),
    /// A delay range whose minimum exceeds its maximum.
    Reversed {
        /// The range as written.
        range: &'a str,
        /// Its minimum in ms.
        min: u64,
        /// Its maximum in ms.
        max: u64,
    },
    /// A segment where none may be.
    Unexpected {
        /// The segment.
        extra: &'a str,
        /// What it came after, e.g. `the duration`.
        after: &'static str,
    },
    /// An empty status code.
    EmptyStatus,
    /// A status code that is not a number.
    StatusNotNumber(&'a str),
    /// A status code outside 100–599.
    StatusOutOfRange(&'a str),
    /// An empty segment where a probability may be.
    EmptyProbability,
    /// A probability with a sign.
    NegativeProbability(&'a str),
    /// A probability not `DIGITS [. DIGITS]`.
    NotDecimal(&'a str),
    /// `nan`, `inf`.
    NotFinite(&'a str),
    /// Neither a probability nor a filter.
    Neither(&'a str),
    /// A probability above 1.
    ProbabilityOutOfRange(&'a str),
    /// A `KinN` rate with K = 0, N = 0 or K > N.
    BadRatio(&'a str),
    /// A malformed value of a new form: what, the text, what was expected.
    BadValue {
        /// What the value is, e.g. `size`.
        what: &'static str,
        /// The text.
        text: &'a str,
        /// What was expected.
        expected: &'static str,
    },
    /// An option the kind does not take.
    UnknownOption {
        /// The option's key.
        key: &'a str,
        /// The rule's kind.
        kind: &'static str,
    },
    /// The same option twice.
    DuplicateOption(&'a str),
    /// A `%` not followed by two hex digits.
    BadEscape(&'a str),
    /// A part of the grammar a header fault cannot carry.
    NotInHeader(&'a str),
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RANGE: &str = "0.0–1.0";
        match *self {
            Reason::Empty => write!(f, "empty spec; {GRAMMAR}"),
            Reason::Whitespace => write!(f, "whitespace is not allowed; {GRAMMAR}"),
            Reason::Control => write!(f, "control characters are not allowed; {GRAMMAR}"),
            Reason::NotUtf8 => write!(f, "the spec is not UTF-8"),
            Reason::MissingKind => write!(f, "missing fault kind; {GRAMMAR}"),
            Reason::UnknownKind(kind) => {
                write!(f, "unknown fault kind {kind:?}; expected {KINDS}")
            }
            Reason::MissingArg { kind, what } => {
                write!(f, "missing {what} after \"{kind}:\"; {GRAMMAR}")
            }
            Reason::EmptyDuration => write!(f, "empty duration; {DURATION_EXAMPLES}"),
            Reason::NegativeDuration(text) => write!(f, "duration {text:?} is negative"),
            Reason::DurationTooLarge(text) => write!(
                f,
                "duration {text:?} is too large; the maximum is {MAX_DELAY_MS}ms (24 h)"
            ),
            Reason::BadDuration(text) => {
                write!(f, "duration {text:?} is not valid; {DURATION_EXAMPLES}")
            }
            Reason::Reversed { range, min, max } => write!(
                f,
                "delay range {range:?} is reversed: min {min}ms is greater than max {max}ms"
            ),
            Reason::Unexpected { extra: "", after } => write!(
                f,
                "empty segment after {after}; expected a URL filter starting with '/'"
            ),
            Reason::Unexpected { extra, after } => write!(
                f,
                "unexpected segment {extra:?} after {after}; a URL filter must start with '/'"
            ),
            Reason::EmptyStatus => write!(f, "empty status code; expected 100–599"),
            Reason::StatusNotNumber(text) => {
                write!(f, "status code {text:?} is not a number; expected 100–599")
            }
            Reason::StatusOutOfRange(text) => write!(
                f,
                "status code {text} is out of range {}–{}",
                STATUS_RANGE.start(),
                STATUS_RANGE.end()
            ),
            Reason::EmptyProbability => write!(
                f,
                "empty segment after the status code; expected a probability in {RANGE} or a URL filter starting with '/'"
            ),
            Reason::NegativeProbability(text) => {
                write!(f, "probability {text} is negative; expected {RANGE}")
            }
            Reason::NotDecimal(text) => write!(
                f,
                "probability {text:?} is not a decimal number; expected {RANGE}, e.g. 0.5"
            ),
            Reason::NotFinite(text) => write!(
                f,
                "probability {text:?} is not a finite number; expected {RANGE}, e.g. 0.5"
            ),
            Reason::Neither(text) => write!(
                f,
                "{text:?} is neither a probability in {RANGE} nor a URL filter starting with '/'"
            ),
            Reason::ProbabilityOutOfRange(text) => {
                write!(f, "probability {text} is out of range {RANGE}")
            }
            Reason::BadRatio(text) => write!(
                f,
                "rate {text:?} is not valid; expected KinN with 1 <= K <= N, e.g. 1in10"
            ),
            Reason::BadValue {
                what,
                text,
                expected,
            } => write!(f, "{what} {text:?} is not valid; {expected}"),
            Reason::UnknownOption { key, kind } => write!(
                f,
                "option {key:?} is not one \"{kind}\" takes; expected {}a matcher or id=",
                options_of(kind)
            ),
            Reason::DuplicateOption(key) => write!(f, "option {key:?} is given twice"),
            Reason::BadEscape(text) => write!(
                f,
                "{text:?} has a '%' not followed by two hex digits (write %25 for '%')"
            ),
            Reason::NotInHeader(part) => write!(
                f,
                "{part:?} is not allowed in an x-phantom-fault header (a header fault applies to its own request: no matchers, filter, id, 1inN rate or custom response)"
            ),
        }
    }
}

/// The `Copy` part of a spec: what every parse yields before the string-valued options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Core<'a> {
    pub(super) action: FaultAction,
    pub(super) rate: Rate,
    pub(super) filter: Option<&'a str>,
}

/// A string-valued option, handed to the caller raw (still percent-encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extra<'a> {
    /// `id=NAME`.
    Id(&'a str),
    /// `body=TEXT` or `body=@PATH`.
    Body(&'a str),
    /// `set.NAME=VALUE`.
    Set { name: &'a str, value: &'a str },
    /// A matcher: field key (`method`, `host`, `path`, `query.NAME`, `header.NAME`), operator
    /// (`=`, `^`, `$`, `*`, or `?` for present) and raw value.
    Match {
        key: &'a str,
        op: u8,
        value: &'a str,
    },
}

/// Parses the structure of `spec`; string options go to `extra` in order.
pub(super) fn parse_core<'a>(
    spec: &'a str,
    mut extra: impl FnMut(Extra<'a>) -> Result<(), Reason<'a>>,
) -> Result<Core<'a>, Reason<'a>> {
    if spec.is_empty() {
        return Err(Reason::Empty);
    }
    if spec.chars().any(char::is_whitespace) {
        return Err(Reason::Whitespace);
    }
    if spec.chars().any(char::is_control) {
        return Err(Reason::Control);
    }
    let (head, filter) = match spec.find(":/") {
        Some(colon) => (&spec[..colon], Some(&spec[colon + 1..])),
        None => (spec, None),
    };
    let mut segments = head.split(':').peekable();
    let kind = segments.next().unwrap_or_default();
    let (mut action, after) = parse_kind(kind, &mut segments)?;
    let kind_name = action.kind().as_str();

    // The rate slot: right after the arguments, if the next segment is not an option.
    let mut rate = Rate::Always;
    let mut after = after;
    if let Some(&segment) = segments.peek()
        && !is_option(segment)
    {
        segments.next();
        rate = if matches!(action, FaultAction::Error { .. }) {
            parse_rate_seed(segment)?
        } else {
            parse_rate_new(segment, after)?
        };
        after = "the probability";
    }
    let mut seen = 0u32;
    for segment in segments {
        if !is_option(segment) {
            return Err(Reason::Unexpected {
                extra: segment,
                after,
            });
        }
        after = "the options";
        parse_option(segment, kind_name, &mut action, &mut seen, &mut extra)?;
    }
    Ok(Core {
        action,
        rate,
        filter,
    })
}

/// Whether a segment is an option (`key=value`, or a present-matcher).
fn is_option(segment: &str) -> bool {
    segment.contains('=') || segment.starts_with("header.") || segment.starts_with("query.")
}

/// The kind and its required arguments; says what the next segment comes after.
fn parse_kind<'a>(
    kind: &'a str,
    segments: &mut std::iter::Peekable<std::str::Split<'a, char>>,
) -> Result<(FaultAction, &'static str), Reason<'a>> {
    let mut arg = |kind: &'static str, what: &'static str| {
        segments.next().ok_or(Reason::MissingArg { kind, what })
    };
    Ok(match kind {
        "delay" => {
            let text = arg("delay", "duration")?;
            let action = FaultAction::Delay {
                dist: parse_dist(text)?,
                max: None,
                at: DelayAt::Forward,
            };
            (action, "the duration")
        }
        "error" => {
            let status = parse_status(arg("error", "status code")?)?;
            (FaultAction::Error { status }, "the status code")
        }
        "bandwidth" => {
            let text = arg("bandwidth", "rate")?;
            let size = text.strip_suffix("/s").unwrap_or(text);
            let bytes_per_sec = parse_size(size)?;
            if bytes_per_sec == 0 {
                return Err(Reason::BadValue {
                    what: "bandwidth",
                    text,
                    expected: "expected at least 1 byte per second, e.g. 64KiB/s",
                });
            }
            let side = Side::Response;
            (
                FaultAction::Bandwidth {
                    bytes_per_sec,
                    burst: None,
                    side,
                },
                "the rate",
            )
        }
        "dribble" => {
            let text = arg("dribble", "pieces and duration")?;
            let bad = Reason::BadValue {
                what: "dribble",
                text,
                expected: "expected PIECES,DURATION, e.g. 10,2s",
            };
            let (pieces, over) = text.split_once(',').ok_or(bad)?;
            let pieces = match parse_digits(pieces) {
                Digits::Value(n) if (1..=MAX_DRIBBLE_PIECES).contains(&n) => n as u32,
                _ => return Err(bad),
            };
            let over = Duration::from_millis(parse_duration_ms(over)?);
            let side = Side::Response;
            (
                FaultAction::Dribble { pieces, over, side },
                "the pieces and duration",
            )
        }
        "truncate" => {
            let text = arg("truncate", "size or percentage")?;
            let limit = match text.strip_suffix('%') {
                Some(percent) => Limit::PartsPerMillion(parse_percent(percent, text)?),
                None => Limit::Bytes(parse_size(text)?),
            };
            let side = Side::Response;
            (FaultAction::Truncate { limit, side }, "the size")
        }
        "slow-head" => {
            let over = Duration::from_millis(parse_duration_ms(arg("slow-head", "duration")?)?);
            (FaultAction::SlowHead { over }, "the duration")
        }
        "reset" => (FaultAction::Reset { after: None }, "the kind"),
        "close" => (FaultAction::Close, "the kind"),
        "hang" => (FaultAction::Hang, "the kind"),
        "garbage" => (FaultAction::Garbage, "the kind"),
        "" => return Err(Reason::MissingKind),
        other => return Err(Reason::UnknownKind(other)),
    })
}

/// One option segment: Copy options set on `action`, string ones handed to `extra`.
fn parse_option<'a>(
    segment: &'a str,
    kind: &'static str,
    action: &mut FaultAction,
    seen: &mut u32,
    extra: &mut impl FnMut(Extra<'a>) -> Result<(), Reason<'a>>,
) -> Result<(), Reason<'a>> {
    let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
    let present = !segment.contains('=');
    check_escapes(value)?;
    let mut once = |bit: u32| {
        if *seen & bit != 0 {
            return Err(Reason::DuplicateOption(key));
        }
        *seen |= bit;
        Ok(())
    };
    let unknown = Reason::UnknownOption { key, kind };
    match (key, &mut *action) {
        ("id", _) => {
            once(1)?;
            let valid = !value.is_empty()
                && value.len() <= MAX_ID_BYTES
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                return Err(Reason::BadValue {
                    what: "id",
                    text: value,
                    expected: "expected 1–64 of A-Z a-z 0-9 - _ .",
                });
            }
            extra(Extra::Id(value))
        }
        ("max", FaultAction::Delay { max, .. }) => {
            once(2)?;
            *max = Some(Duration::from_millis(parse_duration_ms(value)?));
            Ok(())
        }
        ("at", FaultAction::Delay { at, .. }) => {
            once(4)?;
            *at = match value {
                "forward" => DelayAt::Forward,
                "head" => DelayAt::Head,
                "body" => DelayAt::Body,
                _ => {
                    return Err(Reason::BadValue {
                        what: "at",
                        text: value,
                        expected: "expected forward, head or body",
                    });
                }
            };
            Ok(())
        }
        (
            "side",
            FaultAction::Bandwidth { side, .. }
            | FaultAction::Dribble { side, .. }
            | FaultAction::Truncate { side, .. },
        ) => {
            once(8)?;
            *side = match value {
                "response" => Side::Response,
                "request" => Side::Request,
                _ => {
                    return Err(Reason::BadValue {
                        what: "side",
                        text: value,
                        expected: "expected response or request",
                    });
                }
            };
            Ok(())
        }
        ("after", FaultAction::Reset { after }) => {
            once(16)?;
            *after = Some(parse_size(value)?);
            Ok(())
        }
        ("burst", FaultAction::Bandwidth { burst, .. }) => {
            once(64)?;
            *burst = Some(NonZeroU64::new(parse_size(value)?).ok_or(Reason::BadValue {
                what: "burst",
                text: value,
                expected: "expected the largest piece of a paced write, at least 1 byte, e.g. burst=4KiB",
            })?);
            Ok(())
        }
        ("body", FaultAction::Error { .. }) => {
            once(32)?;
            extra(Extra::Body(value))
        }
        (key, FaultAction::Error { .. }) if key.starts_with("set.") => {
            let name = &key[4..];
            if !is_token(name) {
                return Err(Reason::BadValue {
                    what: "header name",
                    text: name,
                    expected: "expected a header name (letters, digits, - and _)",
                });
            }
            // The proxy frames every synthetic answer itself.
            if ["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|framing| name.eq_ignore_ascii_case(framing))
            {
                return Err(Reason::BadValue {
                    what: "header",
                    text: name,
                    expected: "content-length, transfer-encoding and connection are set by the proxy",
                });
            }
            extra(Extra::Set { name, value })
        }
        _ => {
            let (field, op) = match key.as_bytes().last() {
                Some(op @ (b'^' | b'$' | b'*')) if !present => (&key[..key.len() - 1], *op),
                _ if present => (key, b'?'),
                _ => (key, b'='),
            };
            let name = field
                .strip_prefix("header.")
                .or_else(|| field.strip_prefix("query."));
            match (field, name) {
                ("method" | "host" | "path", _) if op != b'?' => {}
                (_, Some(name)) if field.starts_with("header.") && is_token(name) => {}
                (_, Some(name)) if field.starts_with("query.") && is_query_name(name) => {}
                _ => return Err(unknown),
            }
            extra(Extra::Match {
                key: field,
                op,
                value,
            })
        }
    }
}

/// The kind's own options, for the unknown-option message (every kind also takes matchers and
/// `id=`).
fn options_of(kind: &str) -> &'static str {
    match kind {
        "delay" => "max=, at=, ",
        "error" => "body=, set.NAME=, ",
        "bandwidth" => "burst=, side=, ",
        "dribble" | "truncate" => "side=, ",
        "reset" => "after=, ",
        _ => "",
    }
}

/// A header name: RFC 9110 §5.6.2 tchar, at least one.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b))
}

/// A query parameter name as the grammar can carry it (no `=`, `&`, `%`, `:`).
fn is_query_name(name: &str) -> bool {
    !name.is_empty() && !name.bytes().any(|b| matches!(b, b'=' | b'&' | b'%' | b':'))
}

/// Checks every `%` starts a two-hex-digit escape.
fn check_escapes(value: &str) -> Result<(), Reason<'_>> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'%', &bytes[i..]) {
        let at = i + at;
        let valid = bytes.len() >= at + 3
            && bytes[at + 1].is_ascii_hexdigit()
            && bytes[at + 2].is_ascii_hexdigit();
        if !valid {
            return Err(Reason::BadEscape(value));
        }
        i = at + 3;
    }
    Ok(())
}

/// Percent-decodes a value checked by [`check_escapes`].
fn decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Percent-encodes a value so it parses back to the same bytes and contains no `:`, `%`,
/// whitespace, control or non-ASCII byte.
fn encode(f: &mut fmt::Formatter<'_>, value: &[u8]) -> fmt::Result {
    for &b in value {
        if b.is_ascii_graphic() && b != b'%' && b != b':' {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The seed's rate slot after an error's status: a probability or `KinN`, with the seed's
/// messages.
fn parse_rate_seed(text: &str) -> Result<Rate, Reason<'_>> {
    if let Some(rate) = parse_ratio(text)? {
        return Ok(rate);
    }
    parse_probability(text).map(rate_of)
}

/// The rate slot of every other kind: a probability or `KinN`; anything that does not look like
/// a number is an unexpected segment (the seed rejected every segment after a delay's duration).
fn parse_rate_new<'a>(text: &'a str, after: &'static str) -> Result<Rate, Reason<'a>> {
    if let Some(rate) = parse_ratio(text)? {
        return Ok(rate);
    }
    let numeric = text.starts_with(|c: char| c.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !numeric {
        return Err(Reason::Unexpected { extra: text, after });
    }
    parse_probability(text).map(rate_of)
}

/// A probability as a rate: 1 is [`Rate::Always`].
fn rate_of(probability: f64) -> Rate {
    if probability >= 1.0 {
        Rate::Always
    } else {
        Rate::Probability(probability)
    }
}

/// `DIGITS "in" DIGITS`, or `None` when the text is not of that shape.
fn parse_ratio(text: &str) -> Result<Option<Rate>, Reason<'_>> {
    let Some((hits, every)) = text.split_once("in") else {
        return Ok(None);
    };
    match (parse_digits(hits), parse_digits(every)) {
        (Digits::Invalid, _) | (_, Digits::Invalid) => Ok(None),
        (Digits::Value(hits), Digits::Value(every))
            if hits >= 1 && hits <= every && every <= u64::from(u32::MAX) =>
        {
            Ok(Some(Rate::Ratio {
                hits: hits as u32,
                every: every as u32,
            }))
        }
        _ => Err(Reason::BadRatio(text)),
    }
}

/// A delay distribution: the seed's `DURATION[-DURATION]` or `NAME(ARG,ARG)`.
fn parse_dist(text: &str) -> Result<Dist, Reason<'_>> {
    if text.is_empty() {
        return Err(Reason::EmptyDuration);
    }
    if let Some(open) = text.find('(') {
        return parse_named_dist(text, &text[..open], &text[open + 1..]);
    }
    let (min, max) = match text.split_once('-') {
        // A leading '-' is a sign, not a range separator.
        Some(("", _)) => return Err(Reason::NegativeDuration(text)),
        Some((min, max)) => (parse_duration_ms(min)?, parse_duration_ms(max)?),
        None => {
            let fixed = parse_duration_ms(text)?;
            return Ok(Dist::Fixed(Duration::from_millis(fixed)));
        }
    };
    if min > max {
        return Err(Reason::Reversed {
            range: text,
            min,
            max,
        });
    }
    Ok(if min == max {
        Dist::Fixed(Duration::from_millis(min))
    } else {
        Dist::Uniform {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    })
}

/// `normal(MEAN,SD)`, `lognormal(P50,P99)`, `pareto(SCALE,SHAPE)`, `exp(MEAN)`.
fn parse_named_dist<'a>(text: &'a str, name: &'a str, rest: &'a str) -> Result<Dist, Reason<'a>> {
    let expected = "expected normal(MEAN,SD), lognormal(P50,P99), pareto(SCALE,SHAPE) or exp(MEAN), e.g. lognormal(20ms,400ms)";
    let bad = Reason::BadValue {
        what: "distribution",
        text,
        expected,
    };
    let args = rest.strip_suffix(')').ok_or(bad)?;
    let ms = |t: &'a str| parse_duration_ms(t).map(Duration::from_millis);
    let two = || {
        args.split_once(',')
            .filter(|(_, b)| !b.contains(','))
            .ok_or(bad)
    };
    Ok(match name {
        "normal" => {
            let (mean, sd) = two()?;
            Dist::Normal {
                mean: ms(mean)?,
                sd: ms(sd)?,
            }
        }
        "lognormal" => {
            let (p50, p99) = two()?;
            let (p50, p99) = (ms(p50)?, ms(p99)?);
            if p50.is_zero() || p50 >= p99 {
                return Err(Reason::BadValue {
                    what: "lognormal",
                    text,
                    expected: "expected 0 < P50 < P99",
                });
            }
            Dist::LogNormal { p50, p99 }
        }
        "pareto" => {
            let (scale, shape) = two()?;
            let scale = ms(scale)?;
            let shape_ok = shape.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && shape.starts_with(|c: char| c.is_ascii_digit())
                && !shape.ends_with('.')
                && shape.matches('.').count() <= 1;
            let shape = shape
                .parse::<f64>()
                .ok()
                .filter(|s| shape_ok && *s > 0.0 && *s <= 1000.0);
            match (scale.is_zero(), shape) {
                (false, Some(shape)) => Dist::Pareto { scale, shape },
                _ => {
                    return Err(Reason::BadValue {
                        what: "pareto",
                        text,
                        expected: "expected SCALE > 0 and a decimal SHAPE in (0, 1000], e.g. pareto(10ms,1.5)",
                    });
                }
            }
        }
        "exp" => Dist::Exponential { mean: ms(args)? },
        _ => return Err(bad),
    })
}

/// One duration in milliseconds: `DIGITS ["ms" | "s"]`, at most [`MAX_DELAY_MS`].
fn parse_duration_ms(text: &str) -> Result<u64, Reason<'_>> {
    if text.is_empty() {
        return Err(Reason::EmptyDuration);
    }
    if text.starts_with('-') {
        return Err(Reason::NegativeDuration(text));
    }
    let (digits, ms_per_unit) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, 1)
    } else if let Some(digits) = text.strip_suffix('s') {
        (digits, 1000)
    } else {
        (text, 1)
    };
    match parse_digits(digits) {
        Digits::Value(value) => value
            .checked_mul(ms_per_unit)
            .filter(|ms| *ms <= MAX_DELAY_MS)
            .ok_or(Reason::DurationTooLarge(text)),
        Digits::Overflow => Err(Reason::DurationTooLarge(text)),
        Digits::Invalid => Err(Reason::BadDuration(text)),
    }
}

/// A size in bytes: `DIGITS ["B" | "KiB" | "MiB" | "GiB"]`.
fn parse_size(text: &str) -> Result<u64, Reason<'_>> {
    let bad = Reason::BadValue {
        what: "size",
        text,
        expected: SIZE_EXAMPLES,
    };
    let units: [(&str, u64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    let (digits, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((text, 1));
    match parse_digits(digits) {
        Digits::Value(value) => value.checked_mul(unit).ok_or(bad),
        _ => Err(bad),
    }
}

/// A percentage below 100 with up to four decimals, in parts per million.
fn parse_percent<'a>(percent: &'a str, text: &'a str) -> Result<u32, Reason<'a>> {
    let bad = Reason::BadValue {
        what: "percentage",
        text,
        expected: "expected 0% up to 99.9999% with at most four decimals, e.g. 50%",
    };
    let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
    if percent.ends_with('.')
        || fraction.len() > 4
        || (!fraction.is_empty() && !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad);
    }
    let Digits::Value(whole) = parse_digits(whole) else {
        return Err(bad);
    };
    let mut frac = 0u64;
    for (i, b) in fraction.bytes().enumerate() {
        frac += u64::from(b - b'0') * 10u64.pow(3 - i as u32);
    }
    let ppm = whole.checked_mul(10_000).and_then(|w| w.checked_add(frac));
    match ppm {
        Some(ppm) if ppm < 1_000_000 => Ok(ppm as u32),
        _ => Err(bad),
    }
}

/// A status code: decimal digits in 100–599.
fn parse_status(text: &str) -> Result<u16, Reason<'_>> {
    match parse_digits(text) {
        Digits::Value(value) => u16::try_from(value)
            .ok()
            .filter(|status| STATUS_RANGE.contains(status))
            .ok_or(Reason::StatusOutOfRange(text)),
        Digits::Overflow => Err(Reason::StatusOutOfRange(text)),
        Digits::Invalid if text.is_empty() => Err(Reason::EmptyStatus),
        Digits::Invalid => Err(Reason::StatusNotNumber(text)),
    }
}

/// A probability: `DIGITS ["." DIGITS]` in 0.0–1.0. The syntax is checked before `f64::from_str`,
/// which would otherwise also accept `nan`, `inf`, `+0.5` and `5e-1`.
fn parse_probability(text: &str) -> Result<f64, Reason<'_>> {
    if text.is_empty() {
        return Err(Reason::EmptyProbability);
    }
    if text.starts_with('-') {
        return Err(Reason::NegativeProbability(text));
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || !is_digits(fraction) {
        let looks_numeric = text.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+');
        let finite_word = ["nan", "inf", "infinity"]
            .iter()
            .any(|word| text.eq_ignore_ascii_case(word));
        return Err(if looks_numeric {
            Reason::NotDecimal(text)
        } else if finite_word {
            Reason::NotFinite(text)
        } else {
            Reason::Neither(text)
        });
    }
    match text.parse::<f64>() {
        Ok(probability) if probability <= 1.0 => Ok(probability),
        // Digits-only text always parses; anything else here is just too large.
        _ => Err(Reason::ProbabilityOutOfRange(text)),
    }
}

/// Result of reading an unsigned decimal without a sign.
enum Digits {
    Value(u64),
    Overflow,
    Invalid,
}

/// Reads `text` as unsigned decimal digits; empty text or any other byte is `Invalid`.
fn parse_digits(text: &str) -> Digits {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Digits::Invalid;
    }
    text.bytes()
        .try_fold(0u64, |acc, b| {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
        .map_or(Digits::Overflow, Digits::Value)
}

impl FromStr for FaultRule {
    type Err = SpecError;

    /// Parses one spec (see the module docs for the grammar). A `body=@PATH` names the file only;
    /// it is read when the table is compiled.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the spec and what was expected, for every input outside the grammar:
    /// empty parts, whitespace, unknown kinds or options, non-numeric, negative or overflowing
    /// numbers, `min > max`, status outside 100–599, probability outside 0.0–1.0, trailing
    /// garbage, a filter not starting with `/`, or too many segments.
    fn from_str(spec: &str) -> Result<FaultRule, SpecError> {
        let mut rule = FaultRule::new(FaultAction::Close);
        let core = parse_core(spec, |extra| {
            match extra {
                Extra::Id(id) => rule.id = Some(id.to_owned()),
                Extra::Body(value) => {
                    rule.body = Some(match value.strip_prefix('@') {
                        Some(path) if !path.is_empty() => {
                            Body::File(String::from_utf8_lossy(&decode(path)).into_owned())
                        }
                        _ => Body::Inline(decode(value)),
                    });
                }
                Extra::Set { name, value } => {
                    let value = decode(value);
                    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                        return Err(Reason::BadValue {
                            what: "header value",
                            text: name,
                            expected: "a header value may not contain control characters",
                        });
                    }
                    rule.headers.push((name.to_ascii_lowercase(), value));
                }
                Extra::Match { key, op, value } => rule.matchers.push(matcher(key, op, value)),
            }
            Ok(())
        })
        .map_err(|reason| SpecError::new(spec, reason.to_string()))?;
        rule.action = core.action;
        rule.rate = core.rate;
        rule.url_filter = core.filter.map(str::to_owned);
        Ok(rule)
    }
}

/// The owned matcher of a parsed `Extra::Match`.
fn matcher(key: &str, op: u8, value: &str) -> Matcher {
    let field = match key {
        "method" => Field::Method,
        "host" => Field::Host,
        "path" => Field::Path,
        _ => match key.strip_prefix("header.") {
            Some(name) => Field::Header(name.to_ascii_lowercase()),
            None => Field::Query(key.strip_prefix("query.").unwrap_or(key).to_owned()),
        },
    };
    let mut value = decode(value);
    if field == Field::Host {
        value.make_ascii_lowercase();
    }
    let test = match op {
        b'?' => Test::Present,
        b'^' => Test::Prefix(value),
        b'$' => Test::Suffix(value),
        b'*' => Test::Contains(value),
        _ => Test::Equal(value),
    };
    Matcher { field, test }
}

/// A fault from an `x-phantom-fault` header: the same grammar, parsed from a borrowed value
/// into a `Copy` value without allocating. It carries no matchers, filter, id, `KinN` rate or
/// custom response: it applies to the request that carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeaderFault {
    /// What it does.
    pub action: FaultAction,
    /// How often (a probability draws from the RNG the caller passes).
    pub rate: Rate,
}

impl HeaderFault {
    /// Parses one header value. Allocates nothing, also when it fails.
    ///
    /// # Errors
    ///
    /// The [`Reason`] the value is malformed, or not allowed in a header.
    pub fn parse(value: &[u8]) -> Result<HeaderFault, Reason<'_>> {
        let spec = std::str::from_utf8(value).map_err(|_| Reason::NotUtf8)?;
        let core = parse_core(spec, |extra| {
            Err(Reason::NotInHeader(match extra {
                Extra::Id(_) => "id",
                Extra::Body(_) => "body",
                Extra::Set { name, .. } => name,
                Extra::Match { key, .. } => key,
            }))
        })?;
        if let Some(filter) = core.filter {
            return Err(Reason::NotInHeader(filter));
        }
        if let Rate::Ratio { .. } = core.rate {
            return Err(Reason::NotInHeader("KinN"));
        }
        Ok(HeaderFault {
            action: core.action,
            rate: core.rate,
        })
    }
}

/// A size in the largest binary unit that divides it.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if n >= unit && n.is_multiple_of(unit) {
                return write!(f, "{}{name}", n / unit);
            }
        }
        write!(f, "{n}")
    }
}

/// A duration in whole milliseconds.
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// Prints the canonical spec: durations in whole milliseconds, a fixed delay as one value,
/// sizes in the largest exact binary unit, the rate omitted when it is 1, options in a fixed
/// order (the action's, `burst=` only when given, then `body`, `set.*`, matchers in their order,
/// `id`), the filter last,
/// e.g. `delay:2000ms`, `delay:100ms-500ms:/api`, `error:503`, `error:500:0.1:/api`.
/// Sub-millisecond parts of a hand-built `Duration` are truncated; the grammar cannot produce
/// them.
impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().as_str())?;
        let side = |f: &mut fmt::Formatter<'_>, side: Side| match side {
            Side::Response => Ok(()),
            Side::Request => f.write_str(":side=request"),
        };
        // The action's own argument.
        match self.action {
            FaultAction::Delay { dist, .. } => match dist {
                Dist::Fixed(d) => write!(f, ":{}", Ms(d))?,
                Dist::Uniform { min, max } if min == max => write!(f, ":{}", Ms(min))?,
                Dist::Uniform { min, max } => write!(f, ":{}-{}", Ms(min), Ms(max))?,
                Dist::Normal { mean, sd } => write!(f, ":normal({},{})", Ms(mean), Ms(sd))?,
                Dist::LogNormal { p50, p99 } => write!(f, ":lognormal({},{})", Ms(p50), Ms(p99))?,
                Dist::Pareto { scale, shape } => write!(f, ":pareto({},{shape})", Ms(scale))?,
                Dist::Exponential { mean } => write!(f, ":exp({})", Ms(mean))?,
            },
            FaultAction::Error { status } => write!(f, ":{status}")?,
            FaultAction::Bandwidth { bytes_per_sec, .. } => {
                write!(f, ":{}/s", Size(bytes_per_sec))?
            }
            FaultAction::Dribble { pieces, over, .. } => write!(f, ":{pieces},{}", Ms(over))?,
            FaultAction::Truncate { limit, .. } => match limit {
                Limit::Bytes(n) => write!(f, ":{}", Size(n))?,
                Limit::PartsPerMillion(ppm) => {
                    write!(f, ":{}", ppm / 10_000)?;
                    let frac = ppm % 10_000;
                    if frac != 0 {
                        let digits = format!("{frac:04}");
                        write!(f, ".{}", digits.trim_end_matches('0'))?;
                    }
                    f.write_str("%")?;
                }
            },
            FaultAction::SlowHead { over } => write!(f, ":{}", Ms(over))?,
            FaultAction::Reset { .. }
            | FaultAction::Close
            | FaultAction::Hang
            | FaultAction::Garbage => {}
        }
        match self.rate {
            Rate::Always => {}
            // f64 Display is the shortest text that parses back to the same value, and never
            // uses an exponent, so it stays inside the PROBABILITY grammar.
            Rate::Probability(p) => write!(f, ":{p}")?,
            Rate::Ratio { hits, every } => write!(f, ":{hits}in{every}")?,
        }
        // The action's options.
        match self.action {
            FaultAction::Delay { max, at, .. } => {
                if let Some(max) = max {
                    write!(f, ":max={}", Ms(max))?;
                }
                match at {
                    DelayAt::Forward => {}
                    DelayAt::Head => f.write_str(":at=head")?,
                    DelayAt::Body => f.write_str(":at=body")?,
                }
            }
            FaultAction::Bandwidth { burst, side: s, .. } => {
                if let Some(burst) = burst {
                    write!(f, ":burst={}", Size(burst.get()))?;
                }
                side(f, s)?;
            }
            FaultAction::Dribble { side: s, .. } | FaultAction::Truncate { side: s, .. } => {
                side(f, s)?
            }
            FaultAction::Reset { after: Some(n) } => write!(f, ":after={}", Size(n))?,
            _ => {}
        }
        match &self.body {
            Some(Body::Inline(bytes)) => {
                f.write_str(":body=")?;
                // A leading '@' would read as a file.
                match bytes.split_first() {
                    Some((b'@', rest)) => {
                        f.write_str("%40")?;
                        encode(f, rest)?;
                    }
                    _ => encode(f, bytes)?,
                }
            }
            Some(Body::File(path)) => {
                f.write_str(":body=@")?;
                encode(f, path.as_bytes())?;
            }
            None => {}
        }
        for (name, value) in &self.headers {
            write!(f, ":set.{name}=")?;
            encode(f, value)?;
        }
        for m in &self.matchers {
            match &m.field {
                Field::Method => f.write_str(":method")?,
                Field::Host => f.write_str(":host")?,
                Field::Path => f.write_str(":path")?,
                Field::Query(name) => write!(f, ":query.{name}")?,
                Field::Header(name) => write!(f, ":header.{name}")?,
            }
            let (op, value) = match &m.test {
                Test::Present => continue,
                Test::Equal(v) => ("=", v),
                Test::Prefix(v) => ("^=", v),
                Test::Suffix(v) => ("$=", v),
                Test::Contains(v) => ("*=", v),
            };
            f.write_str(op)?;
            encode(f, value)?;
        }
        if let Some(id) = &self.id {
            write!(f, ":id={id}")?;
        }
        if let Some(filter) = &self.url_filter {
            write!(f, ":{filter}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultKind;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delay(min_ms: u64, max_ms: u64, filter: Option<&str>) -> FaultRule {
        let dist = if min_ms == max_ms {
            Dist::Fixed(ms(min_ms))
        } else {
            Dist::Uniform {
                min: ms(min_ms),
                max: ms(max_ms),
            }
        };
        FaultRule {
            url_filter: filter.map(str::to_owned),
            ..FaultRule::new(FaultAction::Delay {
                dist,
                max: None,
                at: DelayAt::Forward,
            })
        }
    }

    fn error(status: u16, probability: f64, filter: Option<&str>) -> FaultRule {
        FaultRule {
            url_filter: filter.map(str::to_owned),
            rate: rate_of(probability),
            ..FaultRule::new(FaultAction::Error { status })
        }
    }

    #[test]
    fn parse_valid_spec_yields_rule() {
        let cases: &[(&str, &str, FaultRule)] = &[
            // The eight grammar rows of the issue.
            ("delay_fixed_ms", "delay:100ms", delay(100, 100, None)),
            ("delay_range", "delay:100ms-500ms", delay(100, 500, None)),
            (
                "delay_filter",
                "delay:200ms:/api",
                delay(200, 200, Some("/api")),
            ),
            (
                "delay_range_filter",
                "delay:100ms-500ms:/api",
                delay(100, 500, Some("/api")),
            ),
            ("error_always", "error:503", error(503, 1.0, None)),
            ("error_probability", "error:503:0.5", error(503, 0.5, None)),
            (
                "error_filter",
                "error:503:/api",
                error(503, 1.0, Some("/api")),
            ),
            (
                "error_probability_filter",
                "error:500:0.1:/api",
                error(500, 0.1, Some("/api")),
            ),
            // Units and edges.
            (
                "delay_bare_number_is_ms",
                "delay:250",
                delay(250, 250, None),
            ),
            ("delay_seconds", "delay:2s", delay(2000, 2000, None)),
            (
                "delay_mixed_units",
                "delay:500ms-2s",
                delay(500, 2000, None),
            ),
            ("delay_bare_range", "delay:100-500", delay(100, 500, None)),
            ("delay_zero", "delay:0ms", delay(0, 0, None)),
            (
                "delay_equal_range",
                "delay:100ms-100ms",
                delay(100, 100, None),
            ),
            (
                "delay_max",
                "delay:86400s",
                delay(86_400_000, 86_400_000, None),
            ),
            ("error_status_min", "error:100", error(100, 1.0, None)),
            ("error_status_max", "error:599", error(599, 1.0, None)),
            (
                "error_status_leading_zero",
                "error:0503",
                error(503, 1.0, None),
            ),
            (
                "error_probability_zero",
                "error:503:0",
                error(503, 0.0, None),
            ),
            (
                "error_probability_one",
                "error:503:1.0",
                error(503, 1.0, None),
            ),
            (
                "error_probability_tiny",
                "error:503:0.001",
                error(503, 0.001, None),
            ),
            // Filter choice: everything after the first ":/" is the filter, ':' included.
            ("filter_root", "error:503:/", error(503, 1.0, Some("/"))),
            // Issue 12 §1: a delay takes a probability too; the seed rejected this one form.
            (
                "delay_probability",
                "delay:100ms:0.5",
                FaultRule {
                    rate: Rate::Probability(0.5),
                    ..delay(100, 100, None)
                },
            ),
            (
                "filter_contains_colon",
                "error:503:/v1/items:batchGet",
                error(503, 1.0, Some("/v1/items:batchGet")),
            ),
            (
                "filter_looks_like_probability_after",
                "error:503:/api:0.5",
                error(503, 1.0, Some("/api:0.5")),
            ),
            (
                "filter_with_query",
                "delay:5ms:/search?q=a",
                delay(5, 5, Some("/search?q=a")),
            ),
            (
                "filter_double_slash",
                "delay:5ms://host",
                delay(5, 5, Some("//host")),
            ),
        ];
        for (name, spec, want) in cases {
            let got: FaultRule = match spec.parse() {
                Ok(rule) => rule,
                Err(err) => panic!("{name}: {spec} failed: {err}"),
            };
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn parse_malformed_spec_is_rejected_with_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("empty_spec", "", "empty spec"),
            ("kind_only_delay", "delay", "missing duration"),
            ("kind_only_error", "error", "missing status code"),
            ("empty_kind", ":100ms", "missing fault kind"),
            (
                "unknown_kind",
                "latency:100ms",
                "unknown fault kind \"latency\"",
            ),
            (
                "kind_upper_case",
                "DELAY:100ms",
                "unknown fault kind \"DELAY\"",
            ),
            ("filter_only", "/api", "unknown fault kind \"/api\""),
            ("delay_empty_duration", "delay:", "empty duration"),
            (
                "delay_filter_without_duration",
                "delay:/api",
                "missing duration",
            ),
            (
                "delay_non_numeric",
                "delay:abc",
                "duration \"abc\" is not valid",
            ),
            (
                "delay_unit_only",
                "delay:ms",
                "duration \"ms\" is not valid",
            ),
            (
                "delay_unknown_unit",
                "delay:100us",
                "duration \"100us\" is not valid",
            ),
            (
                "delay_minutes_unit",
                "delay:2m",
                "duration \"2m\" is not valid",
            ),
            (
                "delay_upper_unit",
                "delay:100MS",
                "duration \"100MS\" is not valid",
            ),
            (
                "delay_fraction",
                "delay:1.5s",
                "duration \"1.5s\" is not valid",
            ),
            (
                "delay_trailing_garbage",
                "delay:100msx",
                "duration \"100msx\" is not valid",
            ),
            (
                "delay_plus_sign",
                "delay:+100ms",
                "duration \"+100ms\" is not valid",
            ),
            (
                "delay_negative",
                "delay:-100ms",
                "duration \"-100ms\" is negative",
            ),
            (
                "delay_negative_max",
                "delay:100ms--200ms",
                "duration \"-200ms\" is negative",
            ),
            ("delay_range_empty_max", "delay:100ms-", "empty duration"),
            (
                "delay_range_three_parts",
                "delay:1ms-2ms-3ms",
                "\"2ms-3ms\" is not valid",
            ),
            (
                "delay_reversed_range",
                "delay:500ms-100ms",
                "is reversed: min 500ms",
            ),
            (
                "delay_overflow_digits",
                "delay:99999999999999999999ms",
                "is too large; the maximum is 86400000ms",
            ),
            (
                "delay_overflow_seconds",
                "delay:18446744073709551s",
                "is too large",
            ),
            ("delay_above_max", "delay:86401s", "is too large"),
            (
                "delay_extra_segment",
                "delay:100ms:200ms",
                "unexpected segment \"200ms\"",
            ),
            (
                "delay_filter_without_slash",
                "delay:100ms:api",
                "a URL filter must start with '/'",
            ),
            (
                "delay_trailing_colon",
                "delay:100ms:",
                "empty segment after the duration",
            ),
            ("error_empty_status", "error:", "empty status code"),
            (
                "error_filter_without_status",
                "error:/api",
                "missing status code",
            ),
            (
                "error_status_non_numeric",
                "error:abc",
                "status code \"abc\" is not a number",
            ),
            (
                "error_status_negative",
                "error:-503",
                "status code \"-503\" is not a number",
            ),
            (
                "error_status_trailing_garbage",
                "error:503x",
                "\"503x\" is not a number",
            ),
            (
                "error_status_too_high",
                "error:700",
                "status code 700 is out of range 100–599",
            ),
            (
                "error_status_too_low",
                "error:99",
                "status code 99 is out of range 100–599",
            ),
            (
                "error_status_zero",
                "error:0",
                "status code 0 is out of range",
            ),
            (
                "error_status_u16_overflow",
                "error:65536",
                "status code 65536 is out of range",
            ),
            (
                "error_status_u64_overflow",
                "error:99999999999999999999",
                "status code 99999999999999999999 is out of range",
            ),
            (
                "error_probability_above_one",
                "error:503:1.5",
                "probability 1.5 is out of range",
            ),
            (
                "error_probability_two",
                "error:503:2",
                "probability 2 is out of range",
            ),
            (
                "error_probability_negative",
                "error:503:-0.5",
                "probability -0.5 is negative",
            ),
            (
                "error_probability_nan",
                "error:503:nan",
                "\"nan\" is not a finite number",
            ),
            (
                "error_probability_inf",
                "error:503:inf",
                "\"inf\" is not a finite number",
            ),
            (
                "error_probability_exponent",
                "error:503:5e-1",
                "\"5e-1\" is not a decimal",
            ),
            (
                "error_probability_plus",
                "error:503:+0.5",
                "\"+0.5\" is not a decimal",
            ),
            (
                "error_probability_leading_dot",
                "error:503:.5",
                "\".5\" is not a decimal",
            ),
            (
                "error_probability_trailing_dot",
                "error:503:1.",
                "\"1.\" is not a decimal",
            ),
            (
                "error_probability_two_dots",
                "error:503:0.5.1",
                "\"0.5.1\" is not a decimal",
            ),
            (
                "error_probability_percent",
                "error:503:50%",
                "\"50%\" is not a decimal",
            ),
            (
                "error_probability_empty",
                "error:503:",
                "empty segment after the status code",
            ),
            (
                "error_filter_without_slash",
                "error:503:api",
                "\"api\" is neither a probability",
            ),
            (
                "error_probability_filter_without_slash",
                "error:503:0.5:api",
                "unexpected segment \"api\" after the probability",
            ),
            (
                "error_too_many_segments",
                "error:503:0.5:0.5",
                "unexpected segment \"0.5\"",
            ),
            (
                "error_trailing_colon",
                "error:503:0.5:",
                "empty segment after the probability",
            ),
            (
                "whitespace_inside",
                "delay: 100ms",
                "whitespace is not allowed",
            ),
            (
                "whitespace_leading",
                " error:503",
                "whitespace is not allowed",
            ),
            (
                "whitespace_trailing",
                "error:503 ",
                "whitespace is not allowed",
            ),
            (
                "whitespace_in_filter",
                "error:503:/a b",
                "whitespace is not allowed",
            ),
            ("tab", "error:503\t", "whitespace is not allowed"),
            (
                "control_character",
                "error:503:/a\u{7}",
                "control characters are not allowed",
            ),
        ];
        for (name, spec, want) in cases {
            let err = match spec.parse::<FaultRule>() {
                Ok(rule) => panic!("{name}: {spec:?} parsed as {rule:?}"),
                Err(err) => err,
            };
            assert_eq!(err.spec(), *spec, "{name}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid fault spec {spec:?}: ")),
                "{name}: {message}"
            );
            assert!(err.reason().contains(want), "{name}: {message}");
        }
    }

    #[test]
    fn spec_error_display_matches_issue_text() {
        let err = "error:700".parse::<FaultRule>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid fault spec \"error:700\": status code 700 is out of range 100–599"
        );
    }

    #[test]
    fn display_parsed_rule_is_canonical_and_round_trips() {
        let cases: &[(&str, &str, &str)] = &[
            ("delay_fixed_ms", "delay:100ms", "delay:100ms"),
            ("delay_range", "delay:100ms-500ms", "delay:100ms-500ms"),
            ("delay_filter", "delay:200ms:/api", "delay:200ms:/api"),
            (
                "delay_range_filter",
                "delay:100ms-500ms:/api",
                "delay:100ms-500ms:/api",
            ),
            ("error_always", "error:503", "error:503"),
            ("error_probability", "error:503:0.5", "error:503:0.5"),
            ("error_filter", "error:503:/api", "error:503:/api"),
            (
                "error_probability_filter",
                "error:500:0.1:/api",
                "error:500:0.1:/api",
            ),
            ("delay_bare_number", "delay:250", "delay:250ms"),
            ("delay_seconds_in_ms", "delay:2s", "delay:2000ms"),
            ("delay_mixed_units", "delay:1s-1500", "delay:1000ms-1500ms"),
            (
                "delay_equal_range_collapses",
                "delay:100ms-100ms",
                "delay:100ms",
            ),
            (
                "error_probability_one_omitted",
                "error:503:1.0",
                "error:503",
            ),
            (
                "error_probability_zero_kept",
                "error:503:0.0",
                "error:503:0",
            ),
            (
                "error_probability_trailing_zeros",
                "error:503:0.50",
                "error:503:0.5",
            ),
            ("error_status_leading_zero", "error:0503", "error:503"),
            (
                "error_probability_tiny",
                "error:503:0.0000001",
                "error:503:0.0000001",
            ),
            ("filter_with_colon", "error:503:/a:b", "error:503:/a:b"),
        ];
        for (name, spec, canonical) in cases {
            let rule: FaultRule = spec.parse().unwrap();
            assert_eq!(rule.to_string(), *canonical, "{name}");
            let again: FaultRule = canonical.parse().unwrap();
            assert_eq!(again, rule, "{name}: round trip");
        }
    }

    #[test]
    fn kind_of_rule_matches_action() {
        let cases: &[(&str, &str, FaultKind, &str)] = &[
            ("delay", "delay:1ms:/x", FaultKind::Delay, "delay"),
            ("error", "error:500:0.1", FaultKind::Error, "error"),
        ];
        for (name, spec, want, text) in cases {
            let rule: FaultRule = spec.parse().unwrap();
            assert_eq!(rule.kind(), *want, "{name}");
            assert_eq!(rule.kind().to_string(), *text, "{name}");
        }
    }

    #[test]
    fn new_forms_parse_to_canonical_text_and_round_trip() {
        let cases: &[(&str, &str, &str)] = &[
            // Probability and exact rate on every kind.
            ("delay_probability", "delay:100ms:0.25", "delay:100ms:0.25"),
            (
                "delay_range_probability_filter",
                "delay:100ms-500ms:0.25:/api",
                "delay:100ms-500ms:0.25:/api",
            ),
            ("delay_probability_one", "delay:1s:1", "delay:1000ms"),
            ("error_ratio", "error:503:1in10", "error:503:1in10"),
            ("delay_ratio", "delay:5ms:3in100:/x", "delay:5ms:3in100:/x"),
            // Distributions.
            (
                "normal",
                "delay:normal(100ms,20ms)",
                "delay:normal(100ms,20ms)",
            ),
            (
                "lognormal_max",
                "delay:lognormal(20ms,400ms):max=2s",
                "delay:lognormal(20ms,400ms):max=2000ms",
            ),
            (
                "pareto",
                "delay:pareto(10ms,1.50)",
                "delay:pareto(10ms,1.5)",
            ),
            ("exp", "delay:exp(50)", "delay:exp(50ms)"),
            // Placement.
            ("at_head", "delay:200ms:at=head", "delay:200ms:at=head"),
            ("at_body", "delay:10ms:at=body", "delay:10ms:at=body"),
            (
                "at_forward_is_default",
                "delay:10ms:at=forward",
                "delay:10ms",
            ),
            (
                "options_any_order",
                "delay:1s:at=head:max=3s",
                "delay:1000ms:max=3000ms:at=head",
            ),
            // Body shaping.
            ("bandwidth", "bandwidth:64KiB/s", "bandwidth:64KiB/s"),
            ("bandwidth_bytes", "bandwidth:65536", "bandwidth:64KiB/s"),
            ("bandwidth_odd", "bandwidth:1000/s", "bandwidth:1000/s"),
            (
                "bandwidth_request",
                "bandwidth:1MiB/s:side=request",
                "bandwidth:1MiB/s:side=request",
            ),
            (
                "bandwidth_burst",
                "bandwidth:1KiB/s:burst=4KiB",
                "bandwidth:1KiB/s:burst=4KiB",
            ),
            (
                "bandwidth_burst_before_side",
                "bandwidth:32KiB/s:side=request:burst=16384",
                "bandwidth:32KiB/s:burst=16KiB:side=request",
            ),
            (
                "bandwidth_burst_odd_bytes",
                "bandwidth:1000/s:burst=1500B",
                "bandwidth:1000/s:burst=1500",
            ),
            (
                "bandwidth_burst_rate_filter",
                "bandwidth:1KiB/s:0.5:burst=1KiB:method=GET:/dl",
                "bandwidth:1KiB/s:0.5:burst=1KiB:method=GET:/dl",
            ),
            ("dribble", "dribble:10,2s", "dribble:10,2000ms"),
            ("truncate_bytes", "truncate:1024", "truncate:1KiB"),
            ("truncate_percent", "truncate:50%", "truncate:50%"),
            (
                "truncate_fraction_percent",
                "truncate:12.50%",
                "truncate:12.5%",
            ),
            ("truncate_zero", "truncate:0", "truncate:0"),
            (
                "truncate_request",
                "truncate:100B:side=request",
                "truncate:100:side=request",
            ),
            // Connection faults.
            ("reset", "reset", "reset"),
            ("reset_after", "reset:after=1KiB", "reset:after=1KiB"),
            (
                "reset_probability",
                "reset:0.1:after=0",
                "reset:0.1:after=0",
            ),
            ("close", "close:/api", "close:/api"),
            ("hang", "hang:0.01", "hang:0.01"),
            ("garbage", "garbage", "garbage"),
            ("slow_head", "slow-head:2s", "slow-head:2000ms"),
            // Synthetic answers.
            (
                "error_body_headers",
                "error:429:body=slow%20down:set.Retry-After=2",
                "error:429:body=slow%20down:set.retry-after=2",
            ),
            (
                "error_body_file",
                "error:503:body=@/tmp/x.json",
                "error:503:body=@/tmp/x.json",
            ),
            (
                "error_body_at_sign_inline",
                "error:503:body=%40x",
                "error:503:body=%40x",
            ),
            ("error_empty_body", "error:204:body=", "error:204:body="),
            (
                "error_body_colon_escaped",
                "error:500:body=a%3ab",
                "error:500:body=a%3Ab",
            ),
            // Matchers, in order, after the action's options; the id last but the filter.
            (
                "matchers",
                "error:503:0.5:method=POST:host$=.Example.com:path^=/api:query.id=7:header.X-Tenant*=acme:header.x-debug:/v1",
                "error:503:0.5:method=POST:host$=.example.com:path^=/api:query.id=7:header.x-tenant*=acme:header.x-debug:/v1",
            ),
            ("id", "delay:1ms:id=slow-db", "delay:1ms:id=slow-db"),
            (
                "id_goes_last",
                "error:500:id=e1:method=GET",
                "error:500:method=GET:id=e1",
            ),
        ];
        for (name, spec, canonical) in cases {
            let rule: FaultRule = match spec.parse() {
                Ok(rule) => rule,
                Err(err) => panic!("{name}: {err}"),
            };
            assert_eq!(rule.to_string(), *canonical, "{name}");
            let again: FaultRule = canonical.parse().unwrap();
            assert_eq!(again, rule, "{name}: round trip");
        }
    }

    #[test]
    fn new_forms_parse_to_model() {
        let rule: FaultRule =
            "error:429:1in4:body=%7B%7D:set.retry-after=2:method=GET:header.x-t=a:id=x:/api"
                .parse()
                .unwrap();
        assert_eq!(rule.action, FaultAction::Error { status: 429 });
        assert_eq!(rule.rate, Rate::Ratio { hits: 1, every: 4 });
        assert_eq!(rule.body, Some(Body::Inline(b"{}".to_vec())));
        assert_eq!(rule.headers, [("retry-after".to_owned(), b"2".to_vec())]);
        assert_eq!(
            rule.matchers,
            [
                Matcher {
                    field: Field::Method,
                    test: Test::Equal(b"GET".to_vec()),
                },
                Matcher {
                    field: Field::Header("x-t".to_owned()),
                    test: Test::Equal(b"a".to_vec()),
                },
            ]
        );
        assert_eq!(rule.id.as_deref(), Some("x"));
        assert_eq!(rule.url_filter.as_deref(), Some("/api"));
        let paced: FaultRule = "bandwidth:1KiB/s:burst=4KiB".parse().unwrap();
        assert_eq!(
            paced.action,
            FaultAction::Bandwidth {
                bytes_per_sec: 1024,
                burst: NonZeroU64::new(4096),
                side: Side::Response,
            }
        );
        let shaped: FaultRule = "truncate:25%:side=request".parse().unwrap();
        assert_eq!(
            shaped.action,
            FaultAction::Truncate {
                limit: Limit::PartsPerMillion(250_000),
                side: Side::Request,
            }
        );
    }

    #[test]
    fn new_forms_malformed_are_rejected_with_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "dist_unknown",
                "delay:gamma(1ms,2ms)",
                "distribution \"gamma(1ms,2ms)\" is not valid",
            ),
            ("dist_unclosed", "delay:normal(1ms,2ms", "is not valid"),
            (
                "dist_three_args",
                "delay:normal(1ms,2ms,3ms)",
                "is not valid",
            ),
            (
                "dist_bad_unit",
                "delay:exp(5us)",
                "duration \"5us\" is not valid",
            ),
            (
                "lognormal_reversed",
                "delay:lognormal(400ms,20ms)",
                "expected 0 < P50 < P99",
            ),
            (
                "lognormal_zero",
                "delay:lognormal(0ms,20ms)",
                "expected 0 < P50 < P99",
            ),
            ("pareto_zero_shape", "delay:pareto(10ms,0)", "SCALE > 0"),
            ("pareto_exponent", "delay:pareto(10ms,1e3)", "SCALE > 0"),
            (
                "ratio_zero",
                "error:503:0in10",
                "rate \"0in10\" is not valid",
            ),
            (
                "ratio_above",
                "error:503:11in10",
                "rate \"11in10\" is not valid",
            ),
            (
                "ratio_zero_every",
                "delay:1ms:1in0",
                "rate \"1in0\" is not valid",
            ),
            (
                "delay_probability_above_one",
                "delay:1ms:1.5",
                "probability 1.5 is out of range",
            ),
            (
                "rate_after_option",
                "error:503:method=GET:0.5",
                "unexpected segment \"0.5\" after the options",
            ),
            (
                "unknown_option",
                "error:503:speed=9",
                "option \"speed\" is not one \"error\" takes",
            ),
            (
                "option_wrong_kind",
                "error:503:max=1s",
                "option \"max\" is not one \"error\" takes",
            ),
            (
                "at_wrong_kind",
                "bandwidth:1KiB/s:at=head",
                "option \"at\" is not one \"bandwidth\" takes; expected burst=, side=, a matcher or id=",
            ),
            (
                "burst_zero",
                "bandwidth:1KiB/s:burst=0",
                "burst \"0\" is not valid; expected the largest piece of a paced write, at least 1 byte, e.g. burst=4KiB",
            ),
            (
                "burst_zero_with_unit",
                "bandwidth:1KiB/s:burst=0KiB",
                "burst \"0KiB\" is not valid",
            ),
            (
                "burst_bad_unit",
                "bandwidth:1KiB/s:burst=4kb",
                "size \"4kb\" is not valid",
            ),
            (
                "burst_empty",
                "bandwidth:1KiB/s:burst=",
                "size \"\" is not valid",
            ),
            (
                "burst_twice",
                "bandwidth:1KiB/s:burst=1KiB:burst=2KiB",
                "option \"burst\" is given twice",
            ),
            (
                "burst_on_dribble",
                "dribble:10,2s:burst=4KiB",
                "option \"burst\" is not one \"dribble\" takes; expected side=, a matcher or id=",
            ),
            (
                "burst_on_delay",
                "delay:1ms:burst=1KiB",
                "option \"burst\" is not one \"delay\" takes; expected max=, at=, a matcher or id=",
            ),
            (
                "burst_on_hang",
                "hang:burst=1KiB",
                "option \"burst\" is not one \"hang\" takes; expected a matcher or id=",
            ),
            (
                "at_bad_value",
                "delay:1ms:at=later",
                "at \"later\" is not valid",
            ),
            (
                "side_bad_value",
                "truncate:1:side=both",
                "side \"both\" is not valid",
            ),
            (
                "duplicate_option",
                "delay:1ms:max=2ms:max=3ms",
                "option \"max\" is given twice",
            ),
            (
                "duplicate_id",
                "delay:1ms:id=a:id=b",
                "option \"id\" is given twice",
            ),
            ("bad_id", "delay:1ms:id=a/b", "id \"a/b\" is not valid"),
            ("empty_id", "delay:1ms:id=", "id \"\" is not valid"),
            (
                "bad_escape",
                "error:503:body=100%",
                "has a '%' not followed by two hex digits",
            ),
            (
                "bad_escape_hex",
                "error:503:body=%zz",
                "has a '%' not followed",
            ),
            (
                "set_framing",
                "error:503:set.content-length=5",
                "set by the proxy",
            ),
            (
                "set_bad_name",
                "error:503:set.a(b=1",
                "header name \"a(b\" is not valid",
            ),
            (
                "set_control_value",
                "error:503:set.x=a%0Db",
                "may not contain control characters",
            ),
            (
                "present_method",
                "error:503:method",
                "\"method\" is neither a probability",
            ),
            (
                "header_empty_name",
                "error:503:header.=x",
                "option \"header.\" is not one",
            ),
            ("query_bad_name", "error:503:query.a%b=1", "is not one"),
            (
                "path_unknown_op",
                "error:503:path~=/a",
                "option \"path~\" is not one",
            ),
            (
                "bandwidth_zero",
                "bandwidth:0/s",
                "expected at least 1 byte per second",
            ),
            (
                "bandwidth_missing",
                "bandwidth",
                "missing rate after \"bandwidth:\"",
            ),
            (
                "bandwidth_unit",
                "bandwidth:64kb/s",
                "size \"64kb\" is not valid",
            ),
            ("dribble_no_comma", "dribble:10", "expected PIECES,DURATION"),
            (
                "dribble_zero_pieces",
                "dribble:0,1s",
                "expected PIECES,DURATION",
            ),
            (
                "truncate_hundred",
                "truncate:100%",
                "percentage \"100%\" is not valid",
            ),
            (
                "truncate_fraction_no_percent",
                "truncate:0.5",
                "size \"0.5\" is not valid",
            ),
            (
                "truncate_five_decimals",
                "truncate:1.00001%",
                "is not valid",
            ),
            (
                "reset_bad_after",
                "reset:after=x",
                "size \"x\" is not valid",
            ),
            (
                "reset_after_without_key",
                "reset:1024",
                "probability 1024 is out of range",
            ),
            (
                "close_extra",
                "close:now",
                "unexpected segment \"now\" after the kind",
            ),
            (
                "slow_head_missing",
                "slow-head",
                "missing duration after \"slow-head:\"",
            ),
            (
                "size_overflow",
                "truncate:99999999999999999999GiB",
                "is not valid",
            ),
        ];
        for (name, spec, want) in cases {
            let err = match spec.parse::<FaultRule>() {
                Ok(rule) => panic!("{name}: {spec:?} parsed as {rule:?}"),
                Err(err) => err,
            };
            assert!(err.reason().contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn header_fault_parses_copy_kinds_and_rejects_the_rest() {
        let ok: &[(&str, &str)] = &[
            ("delay", "delay:100ms"),
            (
                "delay_dist_head",
                "delay:lognormal(20ms,400ms):0.5:max=1s:at=head",
            ),
            ("error", "error:503"),
            ("bandwidth", "bandwidth:1KiB/s"),
            (
                "bandwidth_burst",
                "bandwidth:1KiB/s:burst=4KiB:side=request",
            ),
            ("truncate", "truncate:50%"),
            ("reset_after", "reset:after=10"),
            ("hang", "hang"),
        ];
        for (name, value) in ok {
            let fault = match HeaderFault::parse(value.as_bytes()) {
                Ok(fault) => fault,
                Err(reason) => panic!("{name}: {reason}"),
            };
            let rule: FaultRule = value.parse().unwrap();
            assert_eq!(
                (fault.action, fault.rate),
                (rule.action, rule.rate),
                "{name}"
            );
        }
        let rejected: &[(&str, &[u8], &str)] = &[
            (
                "matcher",
                b"error:503:method=GET",
                "\"method\" is not allowed",
            ),
            ("filter", b"error:503:/api", "\"/api\" is not allowed"),
            ("id", b"delay:1ms:id=x", "\"id\" is not allowed"),
            ("body", b"error:503:body=x", "\"body\" is not allowed"),
            ("set", b"error:503:set.a=b", "\"a\" is not allowed"),
            ("ratio", b"error:503:1in2", "\"KinN\" is not allowed"),
            ("malformed", b"delay:abc", "duration \"abc\" is not valid"),
            ("not_utf8", b"delay:\xff", "not UTF-8"),
            ("empty", b"", "empty spec"),
        ];
        for (name, value, want) in rejected {
            let reason = HeaderFault::parse(value).unwrap_err();
            assert!(reason.to_string().contains(want), "{name}: {reason}");
        }
    }

    /// A deterministic stand-in for the fuzz target: specs glued from grammar tokens, each
    /// rejected cleanly or printed canonically and parsed back equal.
    #[test]
    fn token_soup_round_trips_or_is_rejected() {
        const TOKENS: &[&str] = &[
            "delay",
            "error",
            "bandwidth",
            "dribble",
            "truncate",
            "reset",
            "close",
            "hang",
            "garbage",
            "slow-head",
            ":",
            ":",
            ":",
            "100ms",
            "2s",
            "250",
            "-",
            "503",
            "0.5",
            "1",
            "0",
            "1in10",
            "3in7",
            "normal(",
            "lognormal(",
            "pareto(",
            "exp(",
            ",",
            ")",
            "1.5",
            "64KiB",
            "/s",
            "50%",
            "12.5%",
            "max=",
            "at=head",
            "at=body",
            "side=request",
            "burst=",
            "after=",
            "body=",
            "@",
            "set.retry-after=",
            "id=",
            "r1",
            "method=",
            "GET",
            "host$=",
            ".example.com",
            "path^=",
            "/api",
            "*=",
            "query.",
            "header.",
            "x-t",
            "=",
            "%3A",
            "%20",
            "%",
            "/",
            "a",
        ];
        let mut rng = fastrand::Rng::with_seed(12);
        let mut parsed = 0;
        for _ in 0..200_000 {
            let mut spec = String::new();
            for _ in 0..rng.usize(1..10) {
                spec.push_str(TOKENS[rng.usize(..TOKENS.len())]);
            }
            let Ok(rule) = spec.parse::<FaultRule>() else {
                continue;
            };
            parsed += 1;
            let canonical = rule.to_string();
            let again: FaultRule = match canonical.parse() {
                Ok(again) => again,
                Err(err) => panic!("{spec:?} -> {canonical:?}: {err}"),
            };
            assert_eq!(again, rule, "{spec:?} -> {canonical:?}");
            assert_eq!(again.to_string(), canonical, "{spec:?}: not a fixed point");
            if let Ok(header) = HeaderFault::parse(spec.as_bytes()) {
                assert_eq!((header.action, header.rate), (rule.action, rule.rate));
            }
        }
        assert!(parsed > 1_000, "only {parsed} specs parsed");
    }
}

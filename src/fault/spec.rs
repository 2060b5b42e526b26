//! The `--fault` grammar: parses one spec into a validated [`FaultRule`] and prints it back in
//! canonical form. It decides nothing per request; compiling rules for the hot path is `table.rs`.
//!
//! ```text
//! delay:DURATION[-DURATION][:FILTER]      e.g. delay:100ms  delay:100ms-500ms:/api
//! error:STATUS[:PROBABILITY][:FILTER]     e.g. error:503    error:500:0.1:/api
//!
//! DURATION    = DIGITS ["ms" | "s"]        bare digits are milliseconds (delay:250 = 250 ms)
//! STATUS      = DIGITS                     100..=599
//! PROBABILITY = DIGITS ["." DIGITS]        0.0..=1.0; no sign, exponent, nan or inf
//! FILTER      = "/" ANY*                   substring of the full URL (http://host:port/path?query)
//! ```
//!
//! The URL filter is everything after the first `:/` of the spec, so it may itself contain `:`
//! (`error:503:/v1/items:batchGet` filters on `/v1/items:batchGet`). Nothing before the filter can
//! start with `/`, so this never cuts a duration, status or probability in two. Parsing is strict:
//! no whitespace, units are lower-case, durations are whole numbers, and every malformed spec is an
//! error naming the spec and what was expected, never a silently ignored part.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::rule::{FaultAction, FaultRule};

/// Longest delay one bound may name: a day is beyond every client and upstream timeout, so a larger
/// value is a typo (`delay:99999999999999999999ms` is rejected, not wrapped).
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Lowest and highest status code a synthetic answer may carry (RFC 9110 §15: three digits, 1xx–5xx).
const STATUS_RANGE: std::ops::RangeInclusive<u16> = 100..=599;

/// Appended to structural errors so the user sees the whole grammar once.
const GRAMMAR: &str =
    "expected delay:DURATION[-DURATION][:/FILTER] or error:STATUS[:PROBABILITY][:/FILTER]";

/// Shown after a malformed duration.
const DURATION_EXAMPLES: &str = "expected a whole number of ms or s, e.g. 100ms, 2s or 250";

/// A `--fault` spec that does not follow the grammar.
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

impl FromStr for FaultRule {
    type Err = SpecError;

    /// Parses one `--fault` spec (see the module docs for the grammar).
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the spec and what was expected, for every input outside the grammar:
    /// empty parts, whitespace, unknown kinds, non-numeric, negative or overflowing numbers,
    /// `min > max`, status outside 100–599, probability outside 0.0–1.0, trailing garbage, a
    /// filter not starting with `/`, or too many segments.
    fn from_str(spec: &str) -> Result<FaultRule, SpecError> {
        parse_rule(spec).map_err(|reason| SpecError::new(spec, reason))
    }
}

/// The parser proper; reasons are built here and wrapped with the spec by `from_str`.
fn parse_rule(spec: &str) -> Result<FaultRule, String> {
    if spec.is_empty() {
        return Err(format!("empty spec; {GRAMMAR}"));
    }
    if spec.chars().any(char::is_whitespace) {
        return Err(format!("whitespace is not allowed; {GRAMMAR}"));
    }
    if spec.chars().any(char::is_control) {
        return Err(format!("control characters are not allowed; {GRAMMAR}"));
    }

    let (head, url_filter) = match spec.find(":/") {
        Some(colon) => (&spec[..colon], Some(spec[colon + 1..].to_owned())),
        None => (spec, None),
    };
    let mut segments = head.split(':');
    let kind = segments.next().unwrap_or_default();
    let action = match kind {
        "delay" => parse_delay(segments)?,
        "error" => parse_error(segments)?,
        "" => return Err(format!("missing fault kind; {GRAMMAR}")),
        other => {
            return Err(format!(
                "unknown fault kind {other:?}; expected \"delay\" or \"error\""
            ));
        }
    };
    Ok(FaultRule {
        id: None,
        action,
        url_filter,
    })
}

/// `DURATION[-DURATION]`, then nothing but the filter (already split off).
fn parse_delay<'a>(mut segments: impl Iterator<Item = &'a str>) -> Result<FaultAction, String> {
    let Some(range) = segments.next() else {
        return Err(format!("missing duration after \"delay:\"; {GRAMMAR}"));
    };
    if let Some(extra) = segments.next() {
        return Err(unexpected_segment(extra, "the duration"));
    }
    if range.is_empty() {
        return Err(format!("empty duration; {DURATION_EXAMPLES}"));
    }
    let (min, max) = match range.split_once('-') {
        // A leading '-' is a sign, not a range separator.
        Some(("", _)) => return Err(format!("duration {range:?} is negative")),
        Some((min, max)) => (parse_duration_ms(min)?, parse_duration_ms(max)?),
        None => {
            let fixed = parse_duration_ms(range)?;
            (fixed, fixed)
        }
    };
    if min > max {
        return Err(format!(
            "delay range {range:?} is reversed: min {min}ms is greater than max {max}ms"
        ));
    }
    Ok(FaultAction::Delay {
        min: Duration::from_millis(min),
        max: Duration::from_millis(max),
    })
}

/// `STATUS[:PROBABILITY]`, then nothing but the filter (already split off).
fn parse_error<'a>(mut segments: impl Iterator<Item = &'a str>) -> Result<FaultAction, String> {
    let Some(status_text) = segments.next() else {
        return Err(format!("missing status code after \"error:\"; {GRAMMAR}"));
    };
    let status = parse_status(status_text)?;
    let probability = match segments.next() {
        Some(text) => parse_probability(text)?,
        None => 1.0,
    };
    if let Some(extra) = segments.next() {
        return Err(unexpected_segment(extra, "the probability"));
    }
    Ok(FaultAction::Error {
        status,
        probability,
    })
}

/// Reason for a segment after the last value a kind takes: the only thing allowed there is a
/// filter, and a filter would have started with `/`.
fn unexpected_segment(extra: &str, after: &str) -> String {
    if extra.is_empty() {
        format!("empty segment after {after}; expected a URL filter starting with '/'")
    } else {
        format!("unexpected segment {extra:?} after {after}; a URL filter must start with '/'")
    }
}

/// One duration bound in milliseconds: `DIGITS ["ms" | "s"]`, at most [`MAX_DELAY_MS`].
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("empty duration; {DURATION_EXAMPLES}"));
    }
    if text.starts_with('-') {
        return Err(format!("duration {text:?} is negative"));
    }
    let (digits, ms_per_unit) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, 1)
    } else if let Some(digits) = text.strip_suffix('s') {
        (digits, 1000)
    } else {
        (text, 1)
    };
    let too_large =
        || format!("duration {text:?} is too large; the maximum is {MAX_DELAY_MS}ms (24 h)");
    match parse_digits(digits) {
        Digits::Value(value) => value
            .checked_mul(ms_per_unit)
            .filter(|ms| *ms <= MAX_DELAY_MS)
            .ok_or_else(too_large),
        Digits::Overflow => Err(too_large()),
        Digits::Invalid => Err(format!(
            "duration {text:?} is not valid; {DURATION_EXAMPLES}"
        )),
    }
}

/// A status code: decimal digits in 100–599.
fn parse_status(text: &str) -> Result<u16, String> {
    let out_of_range = || {
        format!(
            "status code {text} is out of range {}–{}",
            STATUS_RANGE.start(),
            STATUS_RANGE.end()
        )
    };
    match parse_digits(text) {
        Digits::Value(value) => u16::try_from(value)
            .ok()
            .filter(|status| STATUS_RANGE.contains(status))
            .ok_or_else(out_of_range),
        Digits::Overflow => Err(out_of_range()),
        Digits::Invalid if text.is_empty() => Err("empty status code; expected 100–599".to_owned()),
        Digits::Invalid => Err(format!(
            "status code {text:?} is not a number; expected 100–599"
        )),
    }
}

/// A probability: `DIGITS ["." DIGITS]` in 0.0–1.0. The syntax is checked before `f64::from_str`,
/// which would otherwise also accept `nan`, `inf`, `+0.5` and `5e-1`.
fn parse_probability(text: &str) -> Result<f64, String> {
    const RANGE: &str = "0.0–1.0";
    if text.is_empty() {
        return Err(format!(
            "empty segment after the status code; expected a probability in {RANGE} or a URL filter starting with '/'"
        ));
    }
    if text.starts_with('-') {
        return Err(format!("probability {text} is negative; expected {RANGE}"));
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || !is_digits(fraction) {
        let looks_numeric = text.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+');
        let lower = text.to_ascii_lowercase();
        return Err(if looks_numeric {
            format!("probability {text:?} is not a decimal number; expected {RANGE}, e.g. 0.5")
        } else if matches!(lower.as_str(), "nan" | "inf" | "infinity") {
            format!("probability {text:?} is not a finite number; expected {RANGE}, e.g. 0.5")
        } else {
            format!(
                "{text:?} is neither a probability in {RANGE} nor a URL filter starting with '/'"
            )
        });
    }
    match text.parse::<f64>() {
        Ok(probability) if probability <= 1.0 => Ok(probability),
        // Digits-only text always parses; anything else here is just too large.
        _ => Err(format!("probability {text} is out of range {RANGE}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultKind;

    fn delay(min_ms: u64, max_ms: u64, filter: Option<&str>) -> FaultRule {
        FaultRule {
            action: FaultAction::Delay {
                min: Duration::from_millis(min_ms),
                max: Duration::from_millis(max_ms),
            },
            url_filter: filter.map(str::to_owned),
            id: None,
        }
    }

    fn error(status: u16, probability: f64, filter: Option<&str>) -> FaultRule {
        FaultRule {
            action: FaultAction::Error {
                status,
                probability,
            },
            url_filter: filter.map(str::to_owned),
            id: None,
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
                "delay_probability_segment",
                "delay:100ms:0.5",
                "unexpected segment \"0.5\"",
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
}

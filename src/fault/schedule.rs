//! Ramps and time windows: a rule's probability and whether it is active, as pure functions of the
//! time elapsed since its rule set was applied. No clock is read here: callers pass the elapsed
//! [`Duration`], so every value is reproducible in a test.
//!
//! ```text
//! RAMP     = PROB ".." PROB "/" DURATION                  0..0.5/60s   (0 → 50% over a minute)
//! SCHEDULE = WINDOW *("," WINDOW) ["/" DURATION]          10s+30s      (active from 10 s to 40 s)
//! WINDOW   = DURATION "+" DURATION                        0s+10s/1m    (the first 10 s of every minute)
//! DURATION = DIGITS ("ms" | "s" | "m" | "h")              at most 24 h
//! PROB     = DIGITS ["." DIGITS]                          0.0..=1.0
//! ```
//!
//! A ramp moves linearly from `from` to `to` and then stays at `to`. A schedule's windows start
//! at their offset and last their length (start inclusive, end exclusive); with a period the whole
//! pattern repeats, so every window must end within the period. It does not compile rules or
//! decide requests: the control plane recompiles the table as these values move.

use std::{fmt, str::FromStr, time::Duration};

/// Longest duration a ramp, window or period may name (as the `--fault` grammar's delays).
const MAX_SCHEDULE_MS: u64 = 24 * 60 * 60 * 1000;

/// Most windows one schedule may list; more is a generated file gone wrong, not a test plan.
const MAX_WINDOWS: usize = 64;

/// A probability moving linearly from `from` to `to` over `over`, then holding at `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// Probability at the moment the rule set is applied, in `0.0..=1.0`.
    pub from: f64,
    /// Probability reached after `over` and kept afterwards, in `0.0..=1.0`.
    pub to: f64,
    /// How long the ramp takes; zero jumps straight to `to`.
    pub over: Duration,
}

impl Ramp {
    /// The probability `elapsed` after the rule set was applied.
    pub fn probability_at(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.over {
            return self.to;
        }
        let progress = elapsed.as_secs_f64() / self.over.as_secs_f64();
        (self.from + (self.to - self.from) * progress).clamp(0.0, 1.0)
    }

    /// Whether the ramp has reached `to` and no longer moves.
    pub fn is_settled(&self, elapsed: Duration) -> bool {
        elapsed >= self.over || self.from == self.to
    }
}

/// `0..0.5/60s`: the same text [`FromStr`] reads.
impl fmt::Display for Ramp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}/{}", self.from, self.to, DurationText(self.over))
    }
}

impl FromStr for Ramp {
    type Err = String;

    /// Parses `FROM..TO/DURATION`.
    ///
    /// # Errors
    /// A reason naming the text and what was expected.
    fn from_str(text: &str) -> Result<Ramp, String> {
        let expected =
            || format!("ramp {text:?} is not valid; expected FROM..TO/DURATION, e.g. 0..0.5/60s");
        let (range, over) = text.split_once('/').ok_or_else(expected)?;
        let (from, to) = range.split_once("..").ok_or_else(expected)?;
        Ok(Ramp {
            from: parse_probability(from)?,
            to: parse_probability(to)?,
            over: parse_duration(over)?,
        })
    }
}

/// One active stretch: from `start` for `length`, measured from when the rule set was applied (or
/// from the start of each period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Offset at which the window opens (inclusive).
    pub start: Duration,
    /// How long it stays open; never zero.
    pub length: Duration,
}

impl Window {
    fn contains(&self, t: Duration) -> bool {
        self.start <= t && t < self.start + self.length
    }
}

/// When a rule is active: a list of windows, optionally repeating every `every`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The windows, in the order given; at least one.
    pub windows: Vec<Window>,
    /// Repeat period; every window ends within it. `None`: the windows happen once.
    pub every: Option<Duration>,
}

impl Schedule {
    /// Whether the rule is active `elapsed` after the rule set was applied.
    pub fn is_active(&self, elapsed: Duration) -> bool {
        let t = self.phase(elapsed);
        self.windows.iter().any(|w| w.contains(t))
    }

    /// How long after `elapsed` the activity next flips (a window opens or closes), or `None` when
    /// it never changes again. The control plane sleeps until then instead of polling.
    pub fn next_change(&self, elapsed: Duration) -> Option<Duration> {
        let t = self.phase(elapsed);
        let edges = self
            .windows
            .iter()
            .flat_map(|w| [w.start, w.start + w.length]);
        let next_in_period = edges.filter(|edge| *edge > t).min();
        match (next_in_period, self.every) {
            (Some(edge), _) => Some(edge - t),
            // Past every edge of this period: the earliest edge of the next one.
            (None, Some(every)) => {
                let first = self.windows.iter().map(|w| w.start).min()?;
                Some(every - t + first)
            }
            (None, None) => None,
        }
    }

    /// `elapsed` folded into the current period.
    fn phase(&self, elapsed: Duration) -> Duration {
        match self.every {
            Some(every) if !every.is_zero() => {
                let period = every.as_nanos();
                let folded = elapsed.as_nanos() % period;
                // folded < period ≤ 24 h in ns, so it fits in u64.
                Duration::from_nanos(folded as u64)
            }
            _ => elapsed,
        }
    }
}

/// `10s+30s,1m+5s/2m`: the same text [`FromStr`] reads.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, window) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{}+{}",
                DurationText(window.start),
                DurationText(window.length)
            )?;
        }
        if let Some(every) = self.every {
            write!(f, "/{}", DurationText(every))?;
        }
        Ok(())
    }
}

impl FromStr for Schedule {
    type Err = String;

    /// Parses `START+LENGTH[,START+LENGTH...][/PERIOD]`.
    ///
    /// # Errors
    /// A reason naming the text and what was expected: no window, a zero length, more than 64
    /// windows, a zero period, or a window ending after the period.
    fn from_str(text: &str) -> Result<Schedule, String> {
        let expected = || {
            format!(
                "schedule {text:?} is not valid; expected START+LENGTH[,START+LENGTH...][/PERIOD], \
                 e.g. 10s+30s or 0s+10s/1m"
            )
        };
        let (list, every) = match text.split_once('/') {
            Some((list, every)) => (list, Some(parse_duration(every)?)),
            None => (text, None),
        };
        if list.is_empty() {
            return Err(expected());
        }
        let windows = list
            .split(',')
            .map(|item| {
                let (start, length) = item.split_once('+').ok_or_else(expected)?;
                let window = Window {
                    start: parse_duration(start)?,
                    length: parse_duration(length)?,
                };
                if window.length.is_zero() {
                    return Err(format!("schedule window {item:?} has zero length"));
                }
                Ok(window)
            })
            .collect::<Result<Vec<_>, String>>()?;
        if windows.len() > MAX_WINDOWS {
            return Err(format!(
                "schedule {text:?} has {} windows; at most {MAX_WINDOWS}",
                windows.len()
            ));
        }
        if let Some(every) = every {
            if every.is_zero() {
                return Err(format!("schedule {text:?} repeats every 0s"));
            }
            if let Some(w) = windows.iter().find(|w| w.start + w.length > every) {
                return Err(format!(
                    "schedule window {}+{} ends after the period {}",
                    DurationText(w.start),
                    DurationText(w.length),
                    DurationText(every)
                ));
            }
        }
        Ok(Schedule { windows, every })
    }
}

/// A duration printed in the largest unit that keeps it whole: `90s`, `2m`, `1500ms`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let units: [(u128, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
        for (per, unit) in units {
            if ms > 0 && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        if ms == 0 {
            f.write_str("0s")
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// `DIGITS ("ms" | "s" | "m" | "h")`, at most 24 h. Units are required (a bare number would be
/// milliseconds in a delay but is ambiguous here).
///
/// # Errors
/// A reason naming the text and what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "duration {text:?} is not valid; expected a whole number of ms, s, m or h, e.g. 30s"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(invalid());
    }
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(ms_per_unit))
        .filter(|ms| *ms <= MAX_SCHEDULE_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large; the maximum is 24h"))
}

/// `DIGITS ["." DIGITS]` in `0.0..=1.0`, as the `--fault` grammar writes probabilities.
fn parse_probability(text: &str) -> Result<f64, String> {
    let decimal = match text.split_once('.') {
        Some((int, frac)) => {
            !int.is_empty()
                && !frac.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
    };
    if !decimal {
        return Err(format!(
            "probability {text:?} is not a decimal in 0.0–1.0, e.g. 0.25"
        ));
    }
    let value: f64 = text
        .parse()
        .map_err(|_| format!("probability {text:?} is not a decimal"))?;
    if value > 1.0 {
        return Err(format!("probability {text} is out of range 0.0–1.0"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn ramp_probability_at_chosen_instants() {
        let up: Ramp = "0..0.5/60s".parse().unwrap();
        let down: Ramp = "1..0.2/10s".parse().unwrap();
        let jump: Ramp = "0.1..0.9/0s".parse().unwrap();
        let rows: &[(&str, Ramp, Duration, f64)] = &[
            ("up_at_apply", up, s(0), 0.0),
            ("up_a_quarter", up, s(15), 0.125),
            ("up_halfway", up, s(30), 0.25),
            (
                "up_just_before_end",
                up,
                ms(59_999),
                0.5 * 59_999.0 / 60_000.0,
            ),
            ("up_at_end", up, s(60), 0.5),
            ("up_holds_after", up, s(3600), 0.5),
            ("down_halfway", down, s(5), 0.6),
            ("down_after", down, s(11), 0.2),
            ("zero_length_jumps", jump, s(0), 0.9),
        ];
        for (name, ramp, at, want) in rows {
            let got = ramp.probability_at(*at);
            assert!((got - want).abs() < 1e-12, "{name}: {got} != {want}");
        }
        assert!(!up.is_settled(s(59)));
        assert!(up.is_settled(s(60)));
        assert!("0.3..0.3/1h".parse::<Ramp>().unwrap().is_settled(s(0)));
    }

    #[test]
    fn schedule_activity_at_chosen_instants() {
        let once: Schedule = "10s+30s".parse().unwrap();
        let minute: Schedule = "0s+10s/1m".parse().unwrap();
        let two: Schedule = "5s+5s,20s+1s/30s".parse().unwrap();
        let rows: &[(&str, &Schedule, Duration, bool)] = &[
            ("once_before", &once, s(9), false),
            ("once_start_inclusive", &once, s(10), true),
            ("once_inside", &once, s(39), true),
            ("once_end_exclusive", &once, s(40), false),
            ("once_long_after", &once, s(4000), false),
            ("minute_at_apply", &minute, s(0), true),
            ("minute_off", &minute, s(10), false),
            ("minute_second_period", &minute, ms(60_500), true),
            ("minute_tenth_period_off", &minute, s(610), false),
            ("two_first_window", &two, s(7), true),
            ("two_gap", &two, s(12), false),
            ("two_second_window", &two, ms(20_999), true),
            ("two_repeats", &two, s(35), true),
        ];
        for (name, schedule, at, want) in rows {
            assert_eq!(schedule.is_active(*at), *want, "{name}");
        }
    }

    #[test]
    fn schedule_next_change_finds_the_next_edge() {
        let once: Schedule = "10s+30s".parse().unwrap();
        let minute: Schedule = "5s+10s/1m".parse().unwrap();
        let rows: &[(&str, &Schedule, Duration, Option<Duration>)] = &[
            ("once_before_opening", &once, s(4), Some(s(6))),
            ("once_inside", &once, s(30), Some(s(10))),
            ("once_after_never", &once, s(40), None),
            ("minute_before_opening", &minute, s(1), Some(s(4))),
            ("minute_inside", &minute, s(6), Some(s(9))),
            ("minute_wraps_to_next_period", &minute, s(20), Some(s(45))),
            ("minute_later_period", &minute, s(125), Some(s(10))),
        ];
        for (name, schedule, at, want) in rows {
            assert_eq!(schedule.next_change(*at), *want, "{name}");
        }
    }

    #[test]
    fn text_round_trips_canonically() {
        let ramps: &[(&str, &str, &str)] = &[
            ("plain", "0..0.5/60s", "0..0.5/1m"),
            ("millis", "0.25..1.0/1500ms", "0.25..1/1500ms"),
            ("hours", "1..0/7200s", "1..0/2h"),
        ];
        for (name, text, canonical) in ramps {
            let ramp: Ramp = text.parse().unwrap();
            assert_eq!(ramp.to_string(), *canonical, "{name}");
            assert_eq!(
                canonical.parse::<Ramp>().unwrap(),
                ramp,
                "{name}: round trip"
            );
        }
        let schedules: &[(&str, &str, &str)] = &[
            ("one", "10s+30s", "10s+30s"),
            ("repeat", "0ms+10000ms/60s", "0s+10s/1m"),
            ("two", "5s+5s,20s+1s/30s", "5s+5s,20s+1s/30s"),
        ];
        for (name, text, canonical) in schedules {
            let schedule: Schedule = text.parse().unwrap();
            assert_eq!(schedule.to_string(), *canonical, "{name}");
            assert_eq!(
                canonical.parse::<Schedule>().unwrap(),
                schedule,
                "{name}: round trip"
            );
        }
    }

    #[test]
    fn malformed_text_is_rejected_with_reason() {
        let rows: &[(&str, Result<Ramp, String>, &str)] = &[
            (
                "ramp_no_duration",
                "0..0.5".parse(),
                "expected FROM..TO/DURATION",
            ),
            (
                "ramp_no_range",
                "0.5/10s".parse(),
                "expected FROM..TO/DURATION",
            ),
            ("ramp_above_one", "0..1.5/10s".parse(), "out of range"),
            ("ramp_negative", "-0.1..0.5/10s".parse(), "not a decimal"),
            (
                "ramp_bare_duration",
                "0..0.5/10".parse(),
                "duration \"10\" is not valid",
            ),
            ("ramp_too_long", "0..1/25h".parse(), "too large"),
        ];
        for (name, got, want) in rows {
            let err = got.as_ref().unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
        let rows: &[(&str, &str, &str)] = &[
            ("empty", "", "expected START+LENGTH"),
            ("no_plus", "10s", "expected START+LENGTH"),
            ("zero_length", "10s+0s", "zero length"),
            ("zero_period", "0s+1s/0s", "repeats every 0s"),
            ("past_period", "50s+20s/1m", "ends after the period 1m"),
            ("unit_missing", "10+5s", "duration \"10\" is not valid"),
        ];
        for (name, text, want) in rows {
            let err = text.parse::<Schedule>().unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}

//! The live rule set's model: a `--fault` rule with a stable id and an optional ramp and schedule,
//! read from rules-file text (one rule per line) or from JSON, and printed back to both.
//! It does no I/O and keeps no clock; the admin thread owns the set and the time.
//!
//! ```text
//! LINE   = [ "id=" ID ] SPEC [ "ramp=" RAMP ] [ "schedule=" SCHEDULE ]    (separated by spaces)
//!        | "#" comment | empty
//! ID     = 1*64 ( ALPHA / DIGIT / "-" / "_" / "." )          default: r<position>, from r1
//! SPEC   = the --fault grammar (fault::FaultRule)
//! RAMP, SCHEDULE = see fault::schedule
//! ```
//! A `#` starting a word starts a comment to the end of the line.
//! JSON: `{"rules": [{"id": "api", "spec": "error:503:/api", "ramp": "0..0.5/1m",
//! "schedule": "0s+10s/1m"}]}` (or the bare array); only `spec` is required.

use std::{fmt, time::Duration};

use serde_json::{Map, Value, json};

use crate::fault::{
    FaultRule, Rate,
    schedule::{Ramp, Schedule},
};

/// Longest rule id.
const MAX_ID_BYTES: usize = 64;

/// Most rules one set may hold (a table far beyond what a test plan needs; decide is linear).
pub const MAX_RULES: usize = 1024;

/// One rule of the live set.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRule {
    /// Stable id: the `rule` label in `/metrics` and the `{id}` in `/faults/{id}`.
    pub id: String,
    /// The rule as the `--fault` grammar reads it.
    pub rule: FaultRule,
    /// Probability moving over time, replacing the rule's own.
    pub ramp: Option<Ramp>,
    /// When the rule is active at all.
    pub schedule: Option<Schedule>,
}

/// A rule that could not be read: which one, its text, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule's id when known, else its position (`line 3`, `rules[2]`).
    pub rule: String,
    /// The text that was wrong (the spec, or the line).
    pub spec: String,
    /// What was wrong and what was expected (the CLI's message for a bad spec).
    pub reason: String,
}

impl RuleError {
    fn new(rule: impl Into<String>, spec: impl Into<String>, reason: impl Into<String>) -> Self {
        RuleError {
            rule: rule.into(),
            spec: spec.into(),
            reason: reason.into(),
        }
    }

    /// The JSON body of a 400 answer.
    pub fn to_json(&self) -> Value {
        json!({
            "error": self.to_string(),
            "rule": self.rule,
            "spec": self.spec,
            "expected": self.reason,
        })
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.rule, self.spec, self.reason)
    }
}

impl std::error::Error for RuleError {}

impl LiveRule {
    /// The rule's own probability (1 for a rule kind without one).
    pub fn base_probability(&self) -> f64 {
        match self.rule.rate {
            Rate::Always => 1.0,
            Rate::Probability(p) => p,
            Rate::Ratio { hits, every } => f64::from(hits) / f64::from(every.max(1)),
        }
    }

    /// Whether the rule is active `elapsed` after it was applied.
    pub fn is_active(&self, elapsed: Duration) -> bool {
        self.schedule.as_ref().is_none_or(|s| s.is_active(elapsed))
    }

    /// Probability in force `elapsed` after the rule was applied: 0 outside its schedule, the
    /// ramp's value while it ramps, else its own.
    pub fn probability_at(&self, elapsed: Duration) -> f64 {
        if !self.is_active(elapsed) {
            return 0.0;
        }
        match &self.ramp {
            Some(ramp) => ramp.probability_at(elapsed),
            None => self.base_probability(),
        }
    }

    /// The rule to compile `elapsed` after it was applied, or `None` while its schedule keeps it
    /// off.
    pub fn effective(&self, elapsed: Duration) -> Option<FaultRule> {
        if !self.is_active(elapsed) {
            return None;
        }
        let mut rule = self.rule.clone();
        // Every kind takes a probability; a ramp replaces the rule's own rate.
        if let Some(ramp) = &self.ramp {
            let p = ramp.probability_at(elapsed);
            rule.rate = if p >= 1.0 {
                Rate::Always
            } else {
                Rate::Probability(p)
            };
        }
        Some(rule)
    }

    /// When the compiled form next changes after `elapsed`: `Some(ZERO)` while a ramp moves, the
    /// next schedule edge, or `None` when it never changes again.
    pub fn next_change(&self, elapsed: Duration) -> Option<Duration> {
        let ramping =
            self.ramp.as_ref().is_some_and(|r| !r.is_settled(elapsed)) && self.is_active(elapsed);
        if ramping {
            return Some(Duration::ZERO);
        }
        let edge = self.schedule.as_ref().and_then(|s| s.next_change(elapsed));
        let ramp_end = self
            .ramp
            .as_ref()
            .filter(|r| !r.is_settled(elapsed))
            .map(|r| r.over - elapsed);
        match (edge, ramp_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The canonical rules-file line: `id=ID SPEC [ramp=..] [schedule=..]`.
    pub fn to_line(&self) -> String {
        let mut line = format!("id={} {}", self.id, self.rule);
        if let Some(ramp) = &self.ramp {
            line.push_str(&format!(" ramp={ramp}"));
        }
        if let Some(schedule) = &self.schedule {
            line.push_str(&format!(" schedule={schedule}"));
        }
        line
    }

    /// The rule as `GET /faults` shows it, with the state `elapsed` after it was applied.
    pub fn to_json(&self, elapsed: Duration) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("spec".into(), json!(self.rule.to_string()));
        object.insert("kind".into(), json!(self.rule.kind().to_string()));
        if let Some(ramp) = &self.ramp {
            object.insert("ramp".into(), json!(ramp.to_string()));
        }
        if let Some(schedule) = &self.schedule {
            object.insert("schedule".into(), json!(schedule.to_string()));
        }
        object.insert("active".into(), json!(self.is_active(elapsed)));
        object.insert("probability".into(), json!(self.probability_at(elapsed)));
        Value::Object(object)
    }
}

/// The id of a rule given none: `r1` for the first rule of a set, `r2` for the second (as the
/// fault table names them).
pub fn default_id(index: usize) -> String {
    format!("r{}", index + 1)
}

/// Checks an id: 1–64 bytes of letters, digits, `-`, `_` and `.`.
///
/// # Errors
/// The reason, for a [`RuleError`].
pub fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "id {id:?} is not valid; expected 1–{MAX_ID_BYTES} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Reads rules-file text: one rule per line, `#` comments and blank lines skipped. Rules without
/// an id get [`default_id`] of their position among the rules (`r1` first).
///
/// # Errors
/// The first bad line, named `line N` (or by its id), with the CLI's reason; also duplicate ids and
/// more than [`MAX_RULES`] rules.
pub fn parse_text(text: &str) -> Result<Vec<LiveRule>, RuleError> {
    parse_text_from(text, 0)
}

/// [`parse_text`] for rules that follow `first` others (the `--fault` rules before a rules
/// file's): default ids continue after them.
///
/// # Errors
/// As [`parse_text`].
pub fn parse_text_from(text: &str, first: usize) -> Result<Vec<LiveRule>, RuleError> {
    let mut rules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let place = format!("line {}", number + 1);
        if let Some(rule) = parse_line(line, first + rules.len(), &place)? {
            rules.push(rule);
        }
    }
    check_set(&rules)?;
    Ok(rules)
}

/// Reads one line: `Ok(None)` for a blank or comment line. `index` gives the default id, `place`
/// names the line in errors.
///
/// # Errors
/// As [`parse_text`], for this line.
pub fn parse_line(line: &str, index: usize, place: &str) -> Result<Option<LiveRule>, RuleError> {
    let words: Vec<&str> = line
        .split_whitespace()
        .take_while(|word| !word.starts_with('#'))
        .collect();
    let Some((first, _)) = words.split_first() else {
        return Ok(None);
    };
    let fail = |reason: String| RuleError::new(place, line.trim(), reason);
    let (id, rest) = match first.strip_prefix("id=") {
        Some(id) => {
            check_id(id).map_err(fail)?;
            (Id::Given(id.to_owned()), &words[1..])
        }
        None => (Id::Default(default_id(index)), &words[..]),
    };
    let Some((spec, options)) = rest.split_first() else {
        return Err(fail(
            "missing fault spec after the id; expected id=ID SPEC [ramp=..] [schedule=..]".into(),
        ));
    };
    let mut ramp = None;
    let mut schedule = None;
    for option in options {
        if let Some(text) = option.strip_prefix("ramp=") {
            ramp = Some(text.parse().map_err(fail)?);
        } else if let Some(text) = option.strip_prefix("schedule=") {
            schedule = Some(text.parse().map_err(fail)?);
        } else {
            return Err(fail(format!(
                "unexpected word {option:?}; expected ramp=FROM..TO/DURATION or \
                 schedule=START+LENGTH[/PERIOD]"
            )));
        }
    }
    build(id, spec, ramp, schedule)
        .map(Some)
        .map_err(|(spec, reason)| RuleError::new(place, spec, reason))
}

/// A rule's id as the line or object gave it, or the position's default.
enum Id {
    Given(String),
    Default(String),
}

/// The rule from its parts; the error carries the text at fault and the reason.
fn build(
    id: Id,
    spec: &str,
    ramp: Option<Ramp>,
    schedule: Option<Schedule>,
) -> Result<LiveRule, (String, String)> {
    let mut rule: FaultRule = spec
        .parse()
        .map_err(|e: crate::fault::SpecError| (spec.to_owned(), e.to_string()))?;
    // Every kind takes a rate, so a ramp applies to any rule. An `id=` inside the spec names
    // the rule as the line's prefix does; the live rule keeps it (the table gets it back).
    let id = match (rule.id.take(), id) {
        (None, Id::Given(id) | Id::Default(id)) => id,
        (Some(inner), Id::Default(_)) => inner,
        (Some(inner), Id::Given(outer)) if inner == outer => inner,
        (Some(inner), Id::Given(outer)) => {
            return Err((
                spec.to_owned(),
                format!("the spec's id {inner:?} differs from the rule's id {outer:?}; give one"),
            ));
        }
    };
    check_id(&id).map_err(|reason| (spec.to_owned(), reason))?;
    Ok(LiveRule {
        id,
        rule,
        ramp,
        schedule,
    })
}

/// Reads a whole set from JSON: `{"rules": [...]}` or the bare array.
///
/// # Errors
/// The first bad rule, named by its id or `rules[N]`, or a body of the wrong shape.
pub fn parse_json_set(body: &Value) -> Result<Vec<LiveRule>, RuleError> {
    let list = match body {
        Value::Array(list) => list,
        Value::Object(object) => match object.get("rules") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(RuleError::new(
                    "body",
                    body.to_string(),
                    "expected {\"rules\": [...]} or an array of rules",
                ));
            }
        },
        _ => {
            return Err(RuleError::new(
                "body",
                body.to_string(),
                "expected {\"rules\": [...]} or an array of rules",
            ));
        }
    };
    let rules = list
        .iter()
        .enumerate()
        .map(|(index, item)| parse_json_rule(item, index, &format!("rules[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;
    check_set(&rules)?;
    Ok(rules)
}

/// Reads one rule object (`{"spec": ..}` with optional `id`, `ramp`, `schedule`) or a bare spec
/// string. `index` gives the default id, `place` names it in errors.
///
/// # Errors
/// A [`RuleError`] naming the rule and what was expected.
pub fn parse_json_rule(item: &Value, index: usize, place: &str) -> Result<LiveRule, RuleError> {
    if let Value::String(spec) = item {
        return build(Id::Default(default_id(index)), spec, None, None)
            .map_err(|(spec, reason)| RuleError::new(place, spec, reason));
    }
    let Value::Object(object) = item else {
        return Err(RuleError::new(
            place,
            item.to_string(),
            "expected a rule object {\"spec\": \"error:503\", ...} or a spec string",
        ));
    };
    let text = |key: &str| -> Result<Option<&str>, RuleError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(RuleError::new(
                place,
                other.to_string(),
                format!("\"{key}\" must be a string"),
            )),
        }
    };
    if let Some(key) = object.keys().find(|k| {
        !matches!(
            k.as_str(),
            "id" | "spec" | "ramp" | "schedule" | "kind" | "active" | "probability"
        )
    }) {
        return Err(RuleError::new(
            place,
            item.to_string(),
            format!("unknown field {key:?}; expected id, spec, ramp or schedule"),
        ));
    }
    let id = match text("id")? {
        Some(id) => {
            check_id(id).map_err(|reason| RuleError::new(place, id, reason))?;
            Id::Given(id.to_owned())
        }
        None => Id::Default(default_id(index)),
    };
    let name = match &id {
        Id::Given(id) | Id::Default(id) => id.clone(),
    };
    let named = |reason: String, spec: &str| RuleError::new(name.clone(), spec, reason);
    let Some(spec) = text("spec")? else {
        return Err(named(
            "missing \"spec\"; expected e.g. \"error:503:/api\"".into(),
            "",
        ));
    };
    let ramp = match text("ramp")? {
        Some(t) => Some(t.parse::<Ramp>().map_err(|r| named(r, t))?),
        None => None,
    };
    let schedule = match text("schedule")? {
        Some(t) => Some(t.parse::<Schedule>().map_err(|r| named(r, t))?),
        None => None,
    };
    build(id, spec, ramp, schedule).map_err(|(spec, reason)| named(reason, &spec))
}

/// Set-wide checks: unique ids, at most [`MAX_RULES`].
///
/// # Errors
/// The second rule holding an id, or the rule beyond the limit.
pub fn check_set(rules: &[LiveRule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::new(
            format!("rules[{MAX_RULES}]"),
            rules[MAX_RULES].rule.to_string(),
            format!("too many rules; at most {MAX_RULES}"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for rule in rules {
        if !seen.insert(rule.id.as_str()) {
            return Err(RuleError::new(
                rule.id.clone(),
                rule.rule.to_string(),
                "duplicate id; every rule needs its own",
            ));
        }
    }
    Ok(())
}

/// The rules-file text of a set: one canonical line per rule, readable by [`parse_text`].
pub fn to_text(rules: &[LiveRule]) -> String {
    rules.iter().map(|r| r.to_line() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn text_lines_parse_with_ids_options_and_comments() {
        let text = "\
# a comment line

error:503:/api
id=slow delay:100ms-500ms   # trailing comment
id=ramp error:500:/x ramp=0..0.5/60s schedule=0s+30s/1m
";
        let rules = parse_text(text).unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r1", "slow", "ramp"]);
        assert_eq!(rules[1].rule.to_string(), "delay:100ms-500ms");
        assert_eq!(rules[2].ramp.unwrap().to_string(), "0..0.5/1m");
        assert_eq!(rules[2].schedule.as_ref().unwrap().to_string(), "0s+30s/1m");
    }

    #[test]
    fn text_round_trips_through_canonical_lines() {
        let text = "error:503:0.5\nid=b error:500:/a ramp=0..1/60s\nid=c delay:2s schedule=1s+2s\n";
        let rules = parse_text(text).unwrap();
        let canonical = to_text(&rules);
        assert_eq!(
            canonical,
            "id=r1 error:503:0.5\nid=b error:500:/a ramp=0..1/1m\nid=c delay:2000ms schedule=1s+2s\n"
        );
        assert_eq!(parse_text(&canonical).unwrap(), rules);
    }

    #[test]
    fn json_round_trips_through_get_output() {
        let rules = parse_text(
            "id=a error:503:0.25:/api ramp=0..0.5/10s schedule=0s+5s/10s\nid=b delay:10ms\n",
        )
        .unwrap();
        let shown: Vec<Value> = rules.iter().map(|r| r.to_json(s(1))).collect();
        let back = parse_json_set(&json!({ "rules": shown })).unwrap();
        assert_eq!(back, rules);
        let bare = parse_json_set(&json!(["error:503", {"spec": "delay:1ms", "id": "d"}])).unwrap();
        assert_eq!(bare[0].id, "r1");
        assert_eq!(bare[1].id, "d");
    }

    #[test]
    fn bad_rules_name_the_rule_and_what_was_expected() {
        type Row<'a> = (&'a str, Result<Vec<LiveRule>, RuleError>, &'a str, &'a str);
        let rows: &[Row<'_>] = &[
            (
                "bad_spec_line",
                parse_text("error:503\nerror:700\n"),
                "line 2",
                "status code 700 is out of range 100–599",
            ),
            (
                "bad_id",
                parse_text("id=a/b error:503"),
                "line 1",
                "id \"a/b\" is not valid",
            ),
            (
                "unknown_option",
                parse_text("error:503 every=1s"),
                "line 1",
                "unexpected word \"every=1s\"",
            ),
            (
                "spec_id_differs",
                parse_text("id=a error:503:id=b"),
                "line 1",
                "differs from the rule's id",
            ),
            (
                "duplicate_id",
                parse_text("id=r2 error:503\nerror:500\n"),
                "r2",
                "duplicate id",
            ),
            (
                "json_bad_spec",
                parse_json_set(&json!([{"id": "x", "spec": "error:1000"}])),
                "x",
                "out of range",
            ),
            (
                "json_missing_spec",
                parse_json_set(&json!([{"id": "x"}])),
                "x",
                "missing \"spec\"",
            ),
            (
                "json_unknown_field",
                parse_json_set(&json!([{"spec": "error:503", "prob": 1}])),
                "rules[0]",
                "unknown field \"prob\"",
            ),
            (
                "json_wrong_shape",
                parse_json_set(&json!({"rule": []})),
                "body",
                "expected {\"rules\": [...]}",
            ),
            (
                "json_bad_ramp",
                parse_json_set(&json!([{"spec": "error:503", "ramp": "1..2/1s"}])),
                "r1",
                "out of range",
            ),
        ];
        for (name, got, rule, want) in rows {
            let err = got.as_ref().unwrap_err();
            assert_eq!(err.rule, *rule, "{name}: {err}");
            assert!(err.reason.contains(want), "{name}: {err}");
            assert_eq!(err.to_json()["rule"], json!(rule), "{name}");
        }
    }

    #[test]
    fn spec_ids_and_ramps_on_any_kind() {
        let rules =
            parse_text("delay:5ms:id=slow ramp=0..1/1s\nid=same error:503:id=same\n").unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["slow", "same"]);
        assert_eq!(rules[0].rule.id, None, "the id lives on the live rule");
        assert_eq!(parse_text(&to_text(&rules)).unwrap(), rules, "round trip");
    }

    #[test]
    fn effective_rule_follows_ramp_and_schedule() {
        let rule = parse_line("error:503 ramp=0..0.5/10s schedule=0s+20s/30s", 0, "x")
            .unwrap()
            .unwrap();
        let probability = |t| match rule.effective(t).map(|r| r.rate) {
            Some(Rate::Probability(p)) => Some(p),
            Some(Rate::Always) => Some(1.0),
            _ => None,
        };
        assert_eq!(probability(s(0)), Some(0.0));
        assert_eq!(probability(s(5)), Some(0.25));
        assert_eq!(probability(s(15)), Some(0.5));
        assert_eq!(probability(s(25)), None);
        assert_eq!(rule.probability_at(s(25)), 0.0);
        assert_eq!(rule.next_change(s(5)), Some(Duration::ZERO));
        assert_eq!(rule.next_change(s(15)), Some(s(5)));
    }
}

//! The compiled fault table: validated rules turned, once per table, into owned matchers and
//! finders, integer probability thresholds, samplers and prebuilt synthetic answers, stamped with
//! a generation, and the per-request [`FaultPlan`]. It does not parse specs (`spec.rs`), sleep, or
//! answer requests: the exchange carries the plan out.
//!
//! Semantics: rules run in the order given, once per request. A rule applies when its URL filter
//! and every matcher hold and its rate fires. Delays add up per placement. Every other fault fills
//! a slot (the answer; response pace, cut and slow head; request pace and cut): the first rule
//! that fires for a slot takes it, a later one for a taken slot counts as matched, not faulted.
//! An answer (error, reset, close, hang, garbage) ends the evaluation: no later rule runs or is
//! counted, and the delays gathered so far still apply before it.

use std::num::NonZeroU64;

use memchr::memmem::Finder;

use super::dist::Sampler;
use super::index::Index;
use super::matcher::{CompiledMatcher, Needs, Probe, Quick, RequestView};
use super::plan::{Answer, AppliedFault, Cut, FaultPlan, FaultSource, Limit, Pace};
use super::rule::{Body, DelayAt, FaultAction, FaultKind, FaultRule, Rate, Side};
use super::spec::{HeaderFault, SpecError};

/// Bits of a random `u64` compared against a probability threshold. 53 is the f64 mantissa width,
/// so `p * 2^53` keeps every bit of precision a parsed probability has.
const PROBABILITY_BITS: u32 = 53;

/// Threshold of probability 1.0: every 53-bit draw is below it.
const PROBABILITY_ONE: u64 = 1 << PROBABILITY_BITS;

/// Longest explicit or default rule id.
pub const MAX_RULE_ID_BYTES: usize = 64;

/// Most rules one table holds: a rule index must fit the plan's `u16`.
pub const MAX_RULES: usize = 4096;

/// Largest `body=@PATH` file a synthetic answer may carry.
pub const MAX_SYNTHETIC_BODY_BYTES: u64 = 1 << 20;

/// The seed's synthetic body, sent when a rule names none.
pub const DEFAULT_BODY: &[u8] = br#"{"fault":"injected"}"#;

/// One rule's counters. Each worker owns a slice of these (one per rule of its current table),
/// so counting needs no atomics; totals add the workers' slices with `+=`, and a replacement
/// table carries them over by rule id ([`FaultTable::carry_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Requests the rule's matchers and filter accepted (and were evaluated, i.e. not cut short
    /// by an earlier answer).
    pub matched: u64,
    /// Matched requests the rule acted on (its rate fired and its slot was free).
    pub faulted: u64,
}

impl std::ops::AddAssign for RuleStats {
    fn add_assign(&mut self, other: RuleStats) {
        self.matched += other.matched;
        self.faulted += other.faulted;
    }
}

/// Whether a rule fires, precomputed from its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chance {
    /// Probability 0 (or NaN from a hand-built rule): never fires, draws nothing.
    Never,
    /// Probability 1 (or more, from a hand-built rule): always fires, draws nothing.
    Always,
    /// Fires when the top [`PROBABILITY_BITS`] of a random `u64` are below this threshold.
    Below(u64),
    /// Fires for `hits` of every `every` matches, spread evenly by the match count; no draw.
    Ratio { hits: u64, every: u64 },
}

impl Chance {
    fn from_rate(rate: Rate) -> Chance {
        match rate {
            Rate::Always => Chance::Always,
            Rate::Probability(p) => Chance::from_probability(p),
            Rate::Ratio { hits, every } if every > 0 && hits > 0 => Chance::Ratio {
                hits: u64::from(hits.min(every)),
                every: u64::from(every),
            },
            Rate::Ratio { .. } => Chance::Never,
        }
    }

    fn from_probability(probability: f64) -> Chance {
        if probability >= 1.0 {
            Chance::Always
        } else if probability > 0.0 {
            // Exact scaling by a power of two; truncation loses less than 2^-53 of probability.
            Chance::Below((probability * PROBABILITY_ONE as f64) as u64)
        } else {
            Chance::Never
        }
    }

    /// `seen` is how many times the rule matched before this request (per worker).
    #[inline]
    fn fires(self, rng: &mut fastrand::Rng, seen: u64) -> bool {
        match self {
            Chance::Never => false,
            Chance::Always => true,
            Chance::Below(threshold) => (rng.u64(..) >> (u64::BITS - PROBABILITY_BITS)) < threshold,
            // Bresenham: the j-th match of a block fires when floor((j+1)k/n) > floor(jk/n), so
            // 1in10 fires on the 10th, 3in10 on the 4th, 7th and 10th.
            Chance::Ratio { hits, every } => {
                let j = seen % every;
                (j + 1) * hits / every > j * hits / every
            }
        }
    }
}

/// A rule's action in hot-path form.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Delay {
        sampler: Sampler,
        at: DelayAt,
    },
    Error {
        status: u16,
    },
    Bandwidth {
        bytes_per_sec: u64,
        burst: Option<NonZeroU64>,
        side: Side,
    },
    Dribble {
        pieces: u32,
        total_ns: u64,
        side: Side,
    },
    Truncate {
        limit: Limit,
        side: Side,
    },
    ResetAfter {
        bytes: u64,
    },
    Answer(Answer),
    SlowHead {
        ns: u64,
    },
}

impl Action {
    fn new(action: FaultAction) -> Action {
        match action {
            FaultAction::Delay { dist, max, at } => Action::Delay {
                sampler: Sampler::new(dist, max),
                at,
            },
            FaultAction::Error { status } => Action::Error { status },
            FaultAction::Bandwidth {
                bytes_per_sec,
                burst,
                side,
            } => Action::Bandwidth {
                bytes_per_sec: bytes_per_sec.max(1),
                burst,
                side,
            },
            FaultAction::Dribble { pieces, over, side } => Action::Dribble {
                pieces: pieces.max(1),
                total_ns: nanos(over),
                side,
            },
            FaultAction::Truncate { limit, side } => Action::Truncate { limit, side },
            FaultAction::Reset { after: Some(bytes) } => Action::ResetAfter { bytes },
            FaultAction::Reset { after: None } => Action::Answer(Answer::Reset),
            FaultAction::Close => Action::Answer(Answer::Close),
            FaultAction::Hang => Action::Answer(Answer::Hang),
            FaultAction::Garbage => Action::Answer(Answer::Garbage),
            FaultAction::SlowHead { over } => Action::SlowHead { ns: nanos(over) },
        }
    }

    /// Puts the action into `plan` if its slot is free; says whether it applied.
    #[inline]
    fn apply(self, plan: &mut FaultPlan, source: FaultSource, rng: &mut fastrand::Rng) -> bool {
        let (kind, value) = match self {
            Action::Delay { sampler, at } => {
                let ns = sampler.sample(rng);
                let slot = match at {
                    DelayAt::Forward => &mut plan.forward_delay_ns,
                    DelayAt::Head => &mut plan.head_delay_ns,
                    DelayAt::Body => &mut plan.chunk_delay_ns,
                };
                *slot = slot.saturating_add(ns);
                (FaultKind::Delay, ns)
            }
            Action::Error { status } => {
                if plan.answer != Answer::Forward {
                    return false;
                }
                let rule = match source {
                    FaultSource::Rule(index) => Some(index),
                    FaultSource::Header => None,
                };
                plan.answer = Answer::Synthetic { status, rule };
                (FaultKind::Error, u64::from(status))
            }
            Action::Answer(answer) => {
                if plan.answer != Answer::Forward {
                    return false;
                }
                plan.answer = answer;
                let kind = match answer {
                    Answer::Reset => FaultKind::Reset,
                    Answer::Close => FaultKind::Close,
                    Answer::Hang => FaultKind::Hang,
                    _ => FaultKind::Garbage,
                };
                (kind, 0)
            }
            Action::Bandwidth {
                bytes_per_sec,
                burst,
                side,
            } => {
                let slot = pace_slot(plan, side);
                if *slot != Pace::Full {
                    return false;
                }
                *slot = Pace::Bandwidth {
                    bytes_per_sec,
                    burst,
                };
                (FaultKind::Bandwidth, bytes_per_sec)
            }
            Action::Dribble {
                pieces,
                total_ns,
                side,
            } => {
                let slot = pace_slot(plan, side);
                if *slot != Pace::Full {
                    return false;
                }
                *slot = Pace::Dribble { pieces, total_ns };
                (FaultKind::Dribble, total_ns)
            }
            Action::Truncate { limit, side } => {
                let value = match limit {
                    Limit::Bytes(n) => n,
                    Limit::PartsPerMillion(ppm) => u64::from(ppm),
                };
                match side {
                    Side::Response if plan.response_cut == Cut::None => {
                        plan.response_cut = Cut::Truncate(limit);
                    }
                    Side::Request if plan.request_cut.is_none() => plan.request_cut = Some(limit),
                    _ => return false,
                }
                (FaultKind::Truncate, value)
            }
            Action::ResetAfter { bytes } => {
                if plan.response_cut != Cut::None {
                    return false;
                }
                plan.response_cut = Cut::Reset(bytes);
                (FaultKind::Reset, bytes)
            }
            Action::SlowHead { ns } => {
                if plan.slow_head_ns != 0 {
                    return false;
                }
                plan.slow_head_ns = ns;
                (FaultKind::SlowHead, ns)
            }
        };
        let (at, side) = match self {
            Action::Delay { at, .. } => (at, Side::Response),
            Action::Bandwidth { side, .. }
            | Action::Dribble { side, .. }
            | Action::Truncate { side, .. } => (DelayAt::Forward, side),
            _ => (DelayAt::Forward, Side::Response),
        };
        plan.applied.push(AppliedFault {
            source,
            kind,
            at,
            side,
            value,
        });
        true
    }

    fn is_answer(self) -> bool {
        matches!(self, Action::Error { .. } | Action::Answer(_))
    }
}

fn pace_slot(plan: &mut FaultPlan, side: Side) -> &mut Pace {
    match side {
        Side::Response => &mut plan.response_pace,
        Side::Request => &mut plan.request_pace,
    }
}

/// One rule in hot-path form.
#[derive(Debug, Clone)]
struct CompiledRule {
    /// Integer prefilter over the matchers, checked first.
    quick: Quick,
    /// Owned memmem finder for the URL filter; `None` matches every URL. memmem was measured
    /// against anchoring filters at the URL's `/` positions and won at 1, 8 and 64 rules
    /// (about 6 ns per filter on a 40-byte URL).
    filter: Option<Finder<'static>>,
    /// All must hold; cheapest first.
    matchers: Box<[CompiledMatcher]>,
    chance: Chance,
    action: Action,
}

/// A synthetic answer's parts, resolved at compile time (files read once, here): the exchange
/// encodes them into its prebuilt responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    /// Status code, 100–599.
    pub status: u16,
    /// `content-type` (`application/json` unless the rule sets one).
    pub content_type: String,
    /// Further headers in order, `x-fault-injected: phantom` first; never framing headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body; the proxy frames it with its true `content-length`.
    pub body: Vec<u8>,
}

/// The rules of one rule set, compiled once and shared read-only by every worker (`Send + Sync`,
/// put it behind an `Arc`), stamped with the generation it was published as.
#[derive(Debug, Clone)]
pub struct FaultTable {
    /// The rules as given, for the banner, the summary and traces.
    rules: Vec<FaultRule>,
    /// Effective id per rule: the explicit one, else `r<position>` (1-based).
    ids: Vec<String>,
    /// Same order and length as `rules`.
    compiled: Vec<CompiledRule>,
    /// Per rule: the synthetic answer of an `error` rule.
    synthetic: Vec<Option<Synthetic>>,
    /// The request facts the rules' prefilters need (the probe skips the rest).
    needs: Needs,
    /// Candidate bitsets over `compiled`.
    index: Index,
    /// Which publication of the rule set this is: 1 for the startup table, raised by each
    /// replacement (the control plane stamps it with [`FaultTable::with_generation`]).
    generation: u64,
}

impl FaultTable {
    /// Compiles validated rules, keeping their order, as generation 1; reads every `body=@PATH`
    /// file once.
    ///
    /// Values a hand-built rule could carry outside the grammar are clamped: a probability above 1
    /// always fires, one at or below 0 or NaN never does, `min > max` is treated as `max..=min`,
    /// and a delay beyond `u64::MAX` nanoseconds (584 years) saturates.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the rule when two rules share an id (explicit, or explicit and a
    /// position's default), when a body file cannot be read or is over
    /// [`MAX_SYNTHETIC_BODY_BYTES`], or when there are more than [`MAX_RULES`] rules.
    pub fn compile(rules: &[FaultRule]) -> Result<FaultTable, SpecError> {
        if rules.len() > MAX_RULES {
            return Err(SpecError::new(
                "",
                format!("{} rules; at most {MAX_RULES} fit one table", rules.len()),
            ));
        }
        let ids: Vec<String> = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| rule.id.clone().unwrap_or_else(|| default_id(index)))
            .collect();
        for (index, id) in ids.iter().enumerate() {
            if let Some(first) = ids[..index].iter().position(|other| other == id) {
                return Err(SpecError::new(
                    &rules[index].to_string(),
                    format!("rule id {id:?} is already taken by rule {}", first + 1),
                ));
            }
        }
        let synthetic = rules
            .iter()
            .map(synthetic_of)
            .collect::<Result<Vec<_>, _>>()?;
        let compiled: Vec<CompiledRule> = rules.iter().map(CompiledRule::new).collect();
        Ok(FaultTable {
            rules: rules.to_vec(),
            ids,
            needs: compiled
                .iter()
                .fold(Needs::default(), |needs, rule| needs.or(rule.quick.needs())),
            index: Index::new(rules),
            compiled,
            synthetic,
            generation: 1,
        })
    }

    /// The same table stamped with `generation`.
    pub fn with_generation(mut self, generation: u64) -> FaultTable {
        self.generation = generation;
        self
    }

    /// The generation this table was published as (1 at startup).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules: every plan is [`FaultPlan::NONE`].
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules as compiled, in order; their `Display` is the canonical spec.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The stable id of rule `index`: explicit (`id=NAME`), else `r1` for the first rule, `r2`
    /// for the second, and so on.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn rule_id(&self, index: usize) -> &str {
        &self.ids[index]
    }

    /// The index of the rule with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|other| other == id)
    }

    /// The synthetic answer of rule `index`, when it is an `error` rule.
    pub fn synthetic(&self, index: usize) -> Option<&Synthetic> {
        self.synthetic.get(index).and_then(Option::as_ref)
    }

    /// Counters for this table carried over from `previous`'s: a rule whose id was in the old
    /// table keeps its counts (so they stay monotonic per id across replacements), a new id
    /// starts at zero. Off the request path; allocates the new slice.
    pub fn carry_stats(&self, previous: &FaultTable, stats: &[RuleStats]) -> Vec<RuleStats> {
        self.ids
            .iter()
            .map(|id| {
                previous
                    .position(id)
                    .and_then(|old| stats.get(old).copied())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Decides what happens to one request. Hot path: no allocation, no lock, no atomic.
    ///
    /// `stats` is the calling worker's slice for this table, `stats.len() == self.len()`: for
    /// each evaluated rule whose filter and matchers all hold, `matched += 1`; for a rule that
    /// applies, `faulted += 1`. See the module docs for the order and the slots. Draws from `rng`
    /// only for probabilities strictly between 0 and 1 and for delays that are not fixed.
    ///
    /// # Panics
    ///
    /// In debug builds only, when `stats.len() != self.len()`; release builds never panic and
    /// leave rules beyond the end of `stats` uncounted.
    pub fn decide(
        &self,
        request: &RequestView<'_>,
        rng: &mut fastrand::Rng,
        stats: &mut [RuleStats],
    ) -> FaultPlan {
        debug_assert_eq!(stats.len(), self.compiled.len(), "one RuleStats per rule");
        let mut plan = FaultPlan::NONE;
        let probe = Probe::new(request, self.needs);
        let lookup = self.index.look_up(request, &probe);
        // Set bits in index order, so the rules still run in the order given.
        for word_index in 0..self.index.words() {
            let mut bits = self.index.candidates(word_index, &lookup);
            while bits != 0 {
                let index = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let rule = &self.compiled[index];
                if !rule.quick.admits(&probe) {
                    continue;
                }
                if let Some(filter) = &rule.filter
                    && filter.find(request.url).is_none()
                {
                    continue;
                }
                if !rule.matchers.iter().all(|m| m.matches(request, &probe)) {
                    continue;
                }
                let stat = stats.get_mut(index);
                let seen = stat.as_ref().map_or(0, |s| s.matched);
                let applied = rule.chance.fires(rng, seen)
                    && rule
                        .action
                        .apply(&mut plan, FaultSource::Rule(index as u16), rng);
                if let Some(stat) = stat {
                    stat.matched += 1;
                    stat.faulted += u64::from(applied);
                }
                if applied && rule.action.is_answer() {
                    return plan;
                }
            }
        }
        plan
    }
}

impl FaultPlan {
    /// Adds a fault from an `x-phantom-fault` header to a plan the table decided, as if it were a
    /// rule after the table's last (its slot must be free; an answer already decided wins).
    /// Allocates nothing; draws from `rng` as a rule would.
    pub fn apply_header(&mut self, fault: HeaderFault, rng: &mut fastrand::Rng) -> bool {
        Chance::from_rate(fault.rate).fires(rng, 0)
            && Action::new(fault.action).apply(self, FaultSource::Header, rng)
    }
}

impl CompiledRule {
    fn new(rule: &FaultRule) -> CompiledRule {
        let mut matchers: Vec<CompiledMatcher> =
            rule.matchers.iter().map(CompiledMatcher::new).collect();
        matchers.sort_by_key(CompiledMatcher::cost);
        CompiledRule {
            quick: Quick::new(
                &rule.matchers,
                rule.url_filter.as_deref().map(str::as_bytes),
            ),
            // memmem picks its searcher once, here; `into_owned` makes it 'static so the
            // table carries no lifetime.
            filter: rule
                .url_filter
                .as_deref()
                .map(|filter| Finder::new(filter.as_bytes()).into_owned()),
            matchers: matchers.into(),
            chance: Chance::from_rate(rule.rate),
            action: Action::new(rule.action),
        }
    }
}

/// The synthetic answer of an `error` rule, its body file read.
fn synthetic_of(rule: &FaultRule) -> Result<Option<Synthetic>, SpecError> {
    let FaultAction::Error { status } = rule.action else {
        return Ok(None);
    };
    let body = match &rule.body {
        None => DEFAULT_BODY.to_vec(),
        Some(Body::Inline(bytes)) => bytes.clone(),
        Some(Body::File(path)) => read_body(path).map_err(|reason| {
            SpecError::new(&rule.to_string(), format!("body file {path:?}: {reason}"))
        })?,
    };
    let mut content_type = "application/json".to_owned();
    let mut headers = vec![("x-fault-injected".to_owned(), b"phantom".to_vec())];
    for (name, value) in &rule.headers {
        if name == "content-type" {
            content_type = String::from_utf8_lossy(value).into_owned();
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }
    Ok(Some(Synthetic {
        status,
        content_type,
        headers,
        body,
    }))
}

/// Reads a body file of at most [`MAX_SYNTHETIC_BODY_BYTES`].
fn read_body(path: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_SYNTHETIC_BODY_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_SYNTHETIC_BODY_BYTES} are allowed",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

/// The default id of the rule at `index` (0-based): `r1` for the first.
fn default_id(index: usize) -> String {
    format!("r{}", index + 1)
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The seed's three facts of a decision, to keep its tables readable.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Decision {
        delay: Duration,
        error: Option<u16>,
        rule: Option<usize>,
    }

    impl Decision {
        const NONE: Decision = Decision {
            delay: Duration::ZERO,
            error: None,
            rule: None,
        };
    }

    fn decide(
        table: &FaultTable,
        url: &[u8],
        rng: &mut fastrand::Rng,
        stats: &mut [RuleStats],
    ) -> Decision {
        let plan = table.decide(&RequestView::from_url(url), rng, stats);
        Decision {
            delay: plan.forward_delay(),
            error: plan.synthetic_status(),
            rule: plan.primary_rule(),
        }
    }

    const URL_API: &[u8] = b"http://127.0.0.1:8080/api/users?id=7";
    const URL_HOME: &[u8] = b"http://127.0.0.1:8080/home";
    const SEED: u64 = 0x5eed;

    fn table(specs: &[&str]) -> FaultTable {
        let rules: Vec<FaultRule> = specs.iter().map(|spec| spec.parse().unwrap()).collect();
        FaultTable::compile(&rules).unwrap()
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn stat(matched: u64, faulted: u64) -> RuleStats {
        RuleStats { matched, faulted }
    }

    #[test]
    fn decide_deterministic_rules_yield_decision_and_stats() {
        type Row<'a> = (&'a str, &'a [&'a str], &'a [u8], Decision, &'a [RuleStats]);
        let decision = |delay, error, rule| Decision { delay, error, rule };
        let rows: &[Row<'_>] = &[
            ("empty_table_is_none", &[], URL_API, Decision::NONE, &[]),
            (
                "delay_without_filter_matches_all",
                &["delay:100ms"],
                URL_HOME,
                decision(ms(100), None, Some(0)),
                &[stat(1, 1)],
            ),
            (
                "filter_miss_is_none_and_uncounted",
                &["delay:100ms:/api", "error:503:/api"],
                URL_HOME,
                Decision::NONE,
                &[stat(0, 0), stat(0, 0)],
            ),
            (
                "delays_accumulate",
                &[
                    "delay:100ms",
                    "delay:50ms:/api",
                    "delay:7ms:/other",
                    "delay:3s",
                ],
                URL_API,
                decision(ms(3150), None, Some(0)),
                &[stat(1, 1), stat(1, 1), stat(0, 0), stat(1, 1)],
            ),
            (
                "rule_is_first_matching_delay",
                &["delay:1ms:/other", "delay:2ms:/api", "delay:4ms"],
                URL_API,
                decision(ms(6), None, Some(1)),
                &[stat(0, 0), stat(1, 1), stat(1, 1)],
            ),
            (
                "error_short_circuits_later_rules",
                &["delay:10ms", "error:503", "delay:20ms", "error:500"],
                URL_API,
                decision(ms(10), Some(503), Some(1)),
                &[stat(1, 1), stat(1, 1), stat(0, 0), stat(0, 0)],
            ),
            (
                "first_matching_error_wins",
                &["error:500:/api", "error:503"],
                URL_API,
                decision(Duration::ZERO, Some(500), Some(0)),
                &[stat(1, 1), stat(0, 0)],
            ),
            (
                "order_falls_through_to_later_error",
                &["error:500:/api", "error:503"],
                URL_HOME,
                decision(Duration::ZERO, Some(503), Some(1)),
                &[stat(0, 0), stat(1, 1)],
            ),
            (
                "error_never_firing_counts_match_only",
                &["error:500:0", "error:503:0.0:/api"],
                URL_API,
                Decision::NONE,
                &[stat(1, 0), stat(1, 0)],
            ),
            (
                "unfired_error_continues_to_next",
                &["error:500:0", "delay:5ms", "error:502"],
                URL_API,
                decision(ms(5), Some(502), Some(2)),
                &[stat(1, 0), stat(1, 1), stat(1, 1)],
            ),
            (
                "unfired_error_keeps_delay_rule",
                &["error:500:0", "delay:5ms"],
                URL_API,
                decision(ms(5), None, Some(1)),
                &[stat(1, 0), stat(1, 1)],
            ),
            (
                "zero_delay_still_counts_as_fault",
                &["delay:0ms"],
                URL_API,
                decision(Duration::ZERO, None, Some(0)),
                &[stat(1, 1)],
            ),
        ];
        for (name, specs, url, want, want_stats) in rows {
            let table = table(specs);
            let mut stats = vec![RuleStats::default(); table.len()];
            let mut rng = fastrand::Rng::with_seed(SEED);
            assert_eq!(decide(&table, url, &mut rng, &mut stats), *want, "{name}");
            assert_eq!(stats, *want_stats, "{name}");
        }
    }

    #[test]
    fn filter_is_case_sensitive_substring_of_full_url() {
        let rows: &[(&str, &str, &[u8], bool)] = &[
            ("path_prefix", "/api", b"http://h:1/api/users", true),
            ("path_middle", "/api", b"http://h:1/v1/api/users", true),
            ("not_segment_bound", "/api", b"http://h:1/apis", true),
            ("in_query", "/api", b"http://h:1/x?next=/api", true),
            (
                "whole_url_tail",
                "/api/health",
                b"http://h:1/api/health",
                true,
            ),
            ("case_differs", "/API", b"http://h:1/api", false),
            ("absent", "/api", b"http://h:1/home", false),
            (
                "longer_than_url",
                "/api/health/deep",
                b"http://h:1/api",
                false,
            ),
            ("root_matches_everything", "/", b"http://h:1", true),
            ("scheme_separator", "//h:1", b"http://h:1/x", true),
            (
                "colon_in_filter",
                "/items:batchGet",
                b"http://h:1/v1/items:batchGet",
                true,
            ),
            ("connect_authority", "/api", b"example.com:443", false),
            ("empty_url", "/api", b"", false),
        ];
        for (name, filter, url, want) in rows {
            let table = table(&[&format!("error:503:{filter}")]);
            let mut stats = [RuleStats::default()];
            let mut rng = fastrand::Rng::with_seed(SEED);
            let got = decide(&table, url, &mut rng, &mut stats).error.is_some();
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn probability_fires_at_its_rate() {
        const DRAWS: u64 = 100_000;
        let rows: &[(&str, &str, f64)] = &[
            ("zero_never", "error:503:0", 0.0),
            ("one_always", "error:503:1", 1.0),
            ("omitted_always", "error:503", 1.0),
            ("half", "error:503:0.5", 0.5),
            ("tenth", "error:503:0.1", 0.1),
            ("ninety_nine", "error:503:0.99", 0.99),
        ];
        for (name, spec, rate) in rows {
            let table = table(&[spec]);
            let mut stats = [RuleStats::default()];
            let mut rng = fastrand::Rng::with_seed(SEED);
            for _ in 0..DRAWS {
                decide(&table, URL_API, &mut rng, &mut stats);
            }
            assert_eq!(stats[0].matched, DRAWS, "{name}");
            let observed = stats[0].faulted as f64 / DRAWS as f64;
            assert!((observed - rate).abs() <= 0.01, "{name}: {observed}");
            if *rate == 0.0 || *rate == 1.0 {
                assert_eq!(observed, *rate, "{name}: exact");
            }
        }
    }

    #[test]
    fn chance_from_probability_clamps_outside_grammar() {
        let rows: &[(&str, f64, Chance)] = &[
            ("zero", 0.0, Chance::Never),
            ("negative", -0.5, Chance::Never),
            ("nan", f64::NAN, Chance::Never),
            ("one", 1.0, Chance::Always),
            ("above_one", 1.5, Chance::Always),
            ("infinity", f64::INFINITY, Chance::Always),
            ("half", 0.5, Chance::Below(PROBABILITY_ONE / 2)),
            (
                "smallest_step",
                1.0 / PROBABILITY_ONE as f64,
                Chance::Below(1),
            ),
        ];
        for (name, probability, want) in rows {
            assert_eq!(Chance::from_probability(*probability), *want, "{name}");
        }
    }

    #[test]
    fn delay_range_reaches_both_ends_and_stays_inside() {
        const DRAWS: usize = 10_000;
        let rows: &[(&str, Duration, Duration)] = &[
            (
                "nanosecond_span",
                Duration::from_nanos(100),
                Duration::from_nanos(103),
            ),
            ("fixed", ms(7), ms(7)),
            (
                "reversed_hand_built",
                Duration::from_nanos(9),
                Duration::from_nanos(5),
            ),
        ];
        for (name, min, max) in rows {
            let rule = FaultRule::new(FaultAction::Delay {
                dist: crate::fault::Dist::Uniform {
                    min: *min,
                    max: *max,
                },
                max: None,
                at: DelayAt::Forward,
            });
            let table = FaultTable::compile(&[rule]).unwrap();
            let (low, high) = ((*min).min(*max), (*min).max(*max));
            let mut stats = [RuleStats::default()];
            let mut rng = fastrand::Rng::with_seed(SEED);
            let (mut seen_low, mut seen_high) = (false, false);
            for _ in 0..DRAWS {
                let delay = decide(&table, URL_API, &mut rng, &mut stats).delay;
                assert!(low <= delay && delay <= high, "{name}: {delay:?}");
                seen_low |= delay == low;
                seen_high |= delay == high;
            }
            assert!(seen_low && seen_high, "{name}: ends reachable");
        }
    }

    #[test]
    fn delay_range_in_ms_is_uniform() {
        const DRAWS: u32 = 100_000;
        let table = table(&["delay:100ms-200ms"]);
        let mut stats = [RuleStats::default()];
        let mut rng = fastrand::Rng::with_seed(SEED);
        let mut total = Duration::ZERO;
        for _ in 0..DRAWS {
            let delay = decide(&table, URL_API, &mut rng, &mut stats).delay;
            assert!(ms(100) <= delay && delay <= ms(200), "{delay:?}");
            total += delay;
        }
        let mean = total / DRAWS;
        assert!(ms(149) < mean && mean < ms(151), "mean {mean:?}");
    }

    #[test]
    fn compile_keeps_rules_in_canonical_order() {
        let specs = ["delay:2s:/api", "error:500:0.1:/api", "error:503"];
        let table = table(&specs);
        assert_eq!(table.len(), 3);
        assert!(!table.is_empty());
        assert!(FaultTable::compile(&[]).unwrap().is_empty());
        let shown: Vec<String> = table.rules().iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["delay:2000ms:/api", "error:500:0.1:/api", "error:503"]
        );
    }

    #[test]
    fn stats_add_assign_sums_fields() {
        let mut total = stat(1, 2);
        total += stat(10, 20);
        assert_eq!(total, stat(11, 22));
    }

    #[test]
    fn table_and_decision_are_shareable() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        fn assert_copy<T: Copy>() {}
        assert_send_sync::<FaultTable>();
        assert_copy::<FaultPlan>();
        assert_copy::<RuleStats>();
        assert_eq!(FaultPlan::default(), FaultPlan::NONE);
    }

    #[test]
    fn rule_ids_default_to_position_and_must_be_unique() {
        let mut rules: Vec<FaultRule> = ["delay:1ms", "error:503", "error:500"]
            .iter()
            .map(|spec| spec.parse().unwrap())
            .collect();
        rules[1].id = Some("checkout".to_owned());
        let table = FaultTable::compile(&rules).unwrap();
        assert_eq!(
            (table.rule_id(0), table.rule_id(1), table.rule_id(2)),
            ("r1", "checkout", "r3")
        );
        assert_eq!(table.position("r3"), Some(2));
        assert_eq!(table.generation(), 1);
        assert_eq!(table.clone().with_generation(7).generation(), 7);
        rules[1].id = Some("r3".to_owned());
        let err = FaultTable::compile(&rules).unwrap_err();
        assert!(
            err.reason().contains("\"r3\" is already taken by rule 2"),
            "{err}"
        );
    }

    #[test]
    fn carry_stats_keeps_counts_per_id_across_tables() {
        let parse = |specs: &[(&str, Option<&str>)]| -> FaultTable {
            let rules: Vec<FaultRule> = specs
                .iter()
                .map(|(spec, id)| FaultRule {
                    id: id.map(str::to_owned),
                    ..spec.parse().unwrap()
                })
                .collect();
            FaultTable::compile(&rules).unwrap()
        };
        let old = parse(&[("delay:1ms", Some("slow")), ("error:503", None)]);
        let new = parse(&[("error:500", Some("fresh")), ("delay:2ms", Some("slow"))]);
        let carried = new.carry_stats(&old, &[stat(5, 4), stat(9, 9)]);
        assert_eq!(carried, [stat(0, 0), stat(5, 4)]);
    }

    fn plan_of(specs: &[&str], view: &RequestView<'_>) -> (FaultPlan, Vec<RuleStats>) {
        let table = table(specs);
        let mut stats = vec![RuleStats::default(); table.len()];
        let mut rng = fastrand::Rng::with_seed(SEED);
        (table.decide(view, &mut rng, &mut stats), stats)
    }

    #[test]
    fn decide_fills_each_slot_and_first_rule_per_slot_wins() {
        let view = RequestView::from_url(URL_API).with_method(b"GET");
        let (plan, stats) = plan_of(
            &[
                "delay:10ms",
                "delay:5ms:at=head",
                "delay:7ms:at=head",
                "delay:1ms:at=body",
                "bandwidth:1KiB/s",
                "dribble:4,1s",
                "truncate:50%",
                "reset:after=10",
                "slow-head:2s",
                "bandwidth:9/s:burst=3:side=request",
                "truncate:3:side=request",
                "delay:20ms",
            ],
            &view,
        );
        assert_eq!(plan.forward_delay_ns, 30_000_000);
        assert_eq!(plan.head_delay_ns, 12_000_000);
        assert_eq!(plan.chunk_delay_ns, 1_000_000);
        assert_eq!(
            plan.response_pace,
            Pace::Bandwidth {
                bytes_per_sec: 1024,
                burst: None,
            }
        );
        assert_eq!(
            plan.response_cut,
            Cut::Truncate(Limit::PartsPerMillion(500_000))
        );
        assert_eq!(plan.slow_head_ns, 2_000_000_000);
        assert_eq!(
            plan.request_pace,
            Pace::Bandwidth {
                bytes_per_sec: 9,
                burst: NonZeroU64::new(3),
            }
        );
        assert_eq!(plan.request_cut, Some(Limit::Bytes(3)));
        assert_eq!(plan.answer, Answer::Forward);
        assert!(!plan.keeps_alive() && plan.holds());
        // The dribble and the reset found their slots taken: matched, not faulted.
        let faulted: Vec<u64> = stats.iter().map(|s| s.faulted).collect();
        assert_eq!(faulted, [1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1]);
        assert!(stats.iter().all(|s| s.matched == 1));
        assert_eq!(plan.applied.as_slice().len(), crate::fault::MAX_APPLIED);
        assert_eq!(plan.applied.dropped, 2);
        assert_eq!(
            plan.applied.as_slice()[1],
            AppliedFault {
                source: FaultSource::Rule(1),
                kind: FaultKind::Delay,
                at: DelayAt::Head,
                side: Side::Response,
                value: 5_000_000,
            }
        );
    }

    #[test]
    fn decide_first_answer_ends_evaluation() {
        let view = RequestView::from_url(URL_API);
        let rows: &[(&str, &[&str], Answer, &[u64])] = &[
            (
                "reset_before_error",
                &["delay:1ms", "reset", "error:503"],
                Answer::Reset,
                &[1, 1, 0],
            ),
            ("close", &["close:0", "close"], Answer::Close, &[1, 1]),
            ("hang", &["hang", "garbage"], Answer::Hang, &[1, 0]),
            ("garbage", &["garbage"], Answer::Garbage, &[1]),
            (
                "error_rule_index",
                &["truncate:1", "error:502"],
                Answer::Synthetic {
                    status: 502,
                    rule: Some(1),
                },
                &[1, 1],
            ),
            (
                "reset_after_is_not_an_answer",
                &["reset:after=5", "error:500"],
                Answer::Synthetic {
                    status: 500,
                    rule: Some(1),
                },
                &[1, 1],
            ),
        ];
        for (name, specs, answer, matched) in rows {
            let (plan, stats) = plan_of(specs, &view);
            assert_eq!(plan.answer, *answer, "{name}");
            let got: Vec<u64> = stats.iter().map(|s| s.matched).collect();
            assert_eq!(got, *matched, "{name}");
        }
    }

    #[test]
    fn decide_applies_matchers_and_url_filter_together() {
        let headers = [httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        }];
        let view = RequestView::from_url(URL_API)
            .with_method(b"POST")
            .with_headers(&headers);
        let rows: &[(&str, &str, bool)] = &[
            ("method", "error:503:method=POST", true),
            ("method_miss", "error:503:method=GET", false),
            ("tenant", "error:503:header.x-tenant=acme:/api", true),
            (
                "tenant_filter_miss",
                "error:503:header.x-tenant=acme:/home",
                false,
            ),
            ("path_and_query", "error:503:path^=/api/:query.id=7", true),
            ("header_absent", "error:503:header.x-other", false),
        ];
        for (name, spec, want) in rows {
            let (plan, stats) = plan_of(&[spec], &view);
            assert_eq!(plan.synthetic_status().is_some(), *want, "{name}");
            assert_eq!(stats[0].matched, u64::from(*want), "{name}");
        }
    }

    #[test]
    fn ratio_fires_exactly_k_in_every_n_evenly() {
        let rows: &[(&str, &str, &[bool])] = &[
            (
                "one_in_four",
                "error:503:1in4",
                &[false, false, false, true, false, false, false, true],
            ),
            (
                "three_in_seven",
                "error:503:3in7",
                &[false, false, true, false, true, false, true],
            ),
            ("one_in_one", "error:503:1in1", &[true, true]),
        ];
        for (name, spec, want) in rows {
            let table = table(&[spec]);
            let mut stats = [RuleStats::default()];
            let mut rng = fastrand::Rng::with_seed(SEED);
            let before = rng.clone();
            let got: Vec<bool> = want
                .iter()
                .map(|_| {
                    let view = RequestView::from_url(URL_API);
                    table
                        .decide(&view, &mut rng, &mut stats)
                        .synthetic_status()
                        .is_some()
                })
                .collect();
            assert_eq!(got, *want, "{name}");
            assert_eq!(
                rng.u64(..),
                before.clone().u64(..),
                "{name}: drew from the rng"
            );
        }
        // Exactly 10 of every 100 over many blocks.
        let table = table(&["delay:1ms:10in100"]);
        let mut stats = [RuleStats::default()];
        let mut rng = fastrand::Rng::with_seed(SEED);
        for _ in 0..1000 {
            table.decide(&RequestView::from_url(URL_API), &mut rng, &mut stats);
        }
        assert_eq!(stats[0], stat(1000, 100));
    }

    #[test]
    fn probability_applies_to_delays_too() {
        let table = table(&["delay:1ms:0.25"]);
        let mut stats = [RuleStats::default()];
        let mut rng = fastrand::Rng::with_seed(SEED);
        for _ in 0..100_000 {
            table.decide(&RequestView::from_url(URL_API), &mut rng, &mut stats);
        }
        let rate = stats[0].faulted as f64 / 100_000.0;
        assert!((rate - 0.25).abs() < 0.01, "{rate}");
    }

    #[test]
    fn header_fault_fills_free_slots_after_the_table() {
        let mut rng = fastrand::Rng::with_seed(SEED);
        let (mut plan, _) = plan_of(&["delay:5ms"], &RequestView::from_url(URL_API));
        let delay = HeaderFault::parse(b"delay:7ms").unwrap();
        assert!(plan.apply_header(delay, &mut rng));
        assert_eq!(plan.forward_delay_ns, 12_000_000);
        let error = HeaderFault::parse(b"error:418").unwrap();
        assert!(plan.apply_header(error, &mut rng));
        assert_eq!(
            plan.answer,
            Answer::Synthetic {
                status: 418,
                rule: None,
            }
        );
        assert!(!plan.apply_header(HeaderFault::parse(b"reset").unwrap(), &mut rng));
        assert!(!plan.apply_header(HeaderFault::parse(b"hang:0").unwrap(), &mut rng));
        let sources: Vec<FaultSource> = plan.applied.as_slice().iter().map(|f| f.source).collect();
        assert_eq!(
            sources,
            [
                FaultSource::Rule(0),
                FaultSource::Header,
                FaultSource::Header
            ]
        );
        assert_eq!(plan.primary_rule(), Some(0));
    }

    #[test]
    fn synthetic_answers_resolve_bodies_and_headers_at_compile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.txt");
        std::fs::write(&path, b"from a file").unwrap();
        let specs = [
            "error:503".to_owned(),
            "error:429:body=slow%20down:set.retry-after=2:set.content-type=text/plain".to_owned(),
            format!("error:500:body=@{}", path.display()),
            "delay:1ms".to_owned(),
        ];
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let table = table(&specs);
        let default = table.synthetic(0).unwrap();
        assert_eq!(
            (
                default.status,
                default.content_type.as_str(),
                &default.body[..]
            ),
            (503, "application/json", DEFAULT_BODY)
        );
        assert_eq!(
            default.headers,
            [("x-fault-injected".to_owned(), b"phantom".to_vec())]
        );
        let custom = table.synthetic(1).unwrap();
        assert_eq!(custom.content_type, "text/plain");
        assert_eq!(custom.body, b"slow down");
        assert_eq!(custom.headers[1], ("retry-after".to_owned(), b"2".to_vec()));
        assert_eq!(table.synthetic(2).unwrap().body, b"from a file");
        assert!(table.synthetic(3).is_none());
        let missing: FaultRule = "error:500:body=@/nonexistent/phantom-body".parse().unwrap();
        let err = FaultTable::compile(&[missing]).unwrap_err();
        assert!(
            err.reason()
                .contains("body file \"/nonexistent/phantom-body\""),
            "{err}"
        );
    }

    /// `decide` without the index and the prefilters: every rule's filter and matchers, in order.
    fn decide_naive(
        table: &FaultTable,
        request: &RequestView<'_>,
        rng: &mut fastrand::Rng,
        stats: &mut [RuleStats],
    ) -> FaultPlan {
        let mut plan = FaultPlan::NONE;
        let probe = Probe::new(request, table.needs);
        for (index, rule) in table.compiled.iter().enumerate() {
            let url_ok = rule
                .filter
                .as_ref()
                .is_none_or(|f| f.find(request.url).is_some());
            if !url_ok || !rule.matchers.iter().all(|m| m.matches(request, &probe)) {
                continue;
            }
            let applied = rule.chance.fires(rng, stats[index].matched)
                && rule
                    .action
                    .apply(&mut plan, FaultSource::Rule(index as u16), rng);
            stats[index].matched += 1;
            stats[index].faulted += u64::from(applied);
            if applied && rule.action.is_answer() {
                break;
            }
        }
        plan
    }

    #[test]
    fn index_and_prefilters_never_change_a_decision() {
        const MATCHERS: &[&str] = &[
            "method=GET",
            "method=POST",
            "method=PROPFIND",
            "path^=/api",
            "path=/api/users",
            "path^=/api/users/7/details",
            "path*=users",
            "path$=.js",
            "path*=/never/",
            "path=/",
            "path^=/api/users/8",
            "path^=/api/users/7/details/x",
            "host=h",
            "host=A.EXAMPLE.com",
            "header.x-tenant=globex",
            "header.x-b=1",
            "header.accept=text/json",
            "host$=.example.com",
            "query.id=7",
            "query.debug",
            "header.x-tenant=acme",
            "header.x-tenant",
            "header.x-b",
            "header.accept*=json",
            "header.x^y",
            "header.x~y",
            "/api",
            "/static",
        ];
        const ACTIONS: &[&str] = &[
            "delay:1ms",
            "delay:1ms-3ms:0.5",
            "error:503:0.3",
            "truncate:5",
            "reset:0.1",
        ];
        let mut rng = fastrand::Rng::with_seed(99);
        for round in 0..40 {
            let specs: Vec<String> = (0..rng.usize(1..150))
                .map(|_| {
                    let mut spec = ACTIONS[rng.usize(..ACTIONS.len())].to_owned();
                    let mut filter = None;
                    for _ in 0..rng.usize(0..3) {
                        let m = MATCHERS[rng.usize(..MATCHERS.len())];
                        if m.starts_with('/') {
                            filter = Some(m);
                        } else {
                            spec.push(':');
                            spec.push_str(m);
                        }
                    }
                    if let Some(filter) = filter {
                        spec.push(':');
                        spec.push_str(filter);
                    }
                    spec
                })
                .collect();
            let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
            let table = table(&specs);
            let header_sets: [&[httparse::Header<'_>]; 3] = [
                &[
                    httparse::Header {
                        name: "X-Tenant",
                        value: b"acme",
                    },
                    httparse::Header {
                        name: "Accept",
                        value: b"text/json",
                    },
                    httparse::Header {
                        name: "x~y",
                        value: b"",
                    },
                    httparse::Header {
                        name: "x-tenant",
                        value: b"globex",
                    },
                ],
                &[
                    httparse::Header {
                        name: "x-b",
                        value: b"1",
                    },
                    httparse::Header {
                        name: "X^Y",
                        value: b"",
                    },
                ],
                &[],
            ];
            let urls: [&[u8]; 5] = [
                b"http://h/api/users?id=7",
                b"http://a.example.com/api/users/7/details?debug",
                b"http://h/static/app.js",
                b"h:443",
                b"http://H/",
            ];
            let methods: [&[u8]; 4] = [b"GET", b"POST", b"PROPFIND", b"CONNECT"];
            let mut fast_stats = vec![RuleStats::default(); table.len()];
            let mut slow_stats = fast_stats.clone();
            let (mut fast_rng, mut slow_rng) = (
                fastrand::Rng::with_seed(round),
                fastrand::Rng::with_seed(round),
            );
            for i in 0..200 {
                let view = RequestView::from_url(urls[i % 5])
                    .with_method(methods[(i / 4) % 4])
                    .with_headers(header_sets[(i / 16) % 3]);
                let fast = table.decide(&view, &mut fast_rng, &mut fast_stats);
                let slow = decide_naive(&table, &view, &mut slow_rng, &mut slow_stats);
                assert_eq!(fast, slow, "round {round}, request {i}: {specs:?}");
            }
            assert_eq!(fast_stats, slow_stats, "round {round}");
        }
    }
}

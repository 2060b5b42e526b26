//! The compiled fault table: validated rules turned, once per table, into owned substring finders,
//! integer probability thresholds and nanosecond delay ranges, stamped with a generation, and the
//! per-request [`FaultPlan`]. It does not parse specs (`spec.rs`), sleep, or answer requests: the
//! exchange carries the plan out.
//!
//! Semantics (issue 3): rules run in the order given, once per request. Every delay rule whose
//! filter matches adds a delay drawn from its range (delays accumulate); the first error rule whose
//! filter matches and whose probability fires answers the request, and no later rule runs or is
//! counted. The delay accumulated up to that point still applies before the synthetic answer.

use std::time::Duration;

use memchr::memmem::Finder;

use super::matcher::RequestView;
use super::plan::{Answer, AppliedFault, FaultPlan, FaultSource};
use super::rule::{FaultAction, FaultKind, FaultRule};
use super::spec::SpecError;

/// Bits of a random `u64` compared against a probability threshold. 53 is the f64 mantissa width,
/// so `p * 2^53` keeps every bit of precision a parsed probability has.
const PROBABILITY_BITS: u32 = 53;

/// Threshold of probability 1.0: every 53-bit draw is below it.
const PROBABILITY_ONE: u64 = 1 << PROBABILITY_BITS;

/// One rule's counters for the shutdown summary. Each worker owns a slice of these (one per rule),
/// so counting needs no atomics; the summary adds the workers' slices with `+=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Requests whose URL matched the rule's filter (and were evaluated, i.e. not cut short by an
    /// earlier error rule).
    pub matched: u64,
    /// Matched requests the rule acted on: every matched request for a delay rule, the requests
    /// whose probability fired for an error rule.
    pub faulted: u64,
}

impl std::ops::AddAssign for RuleStats {
    fn add_assign(&mut self, other: RuleStats) {
        self.matched += other.matched;
        self.faulted += other.faulted;
    }
}

/// Whether an error rule fires, precomputed from its probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chance {
    /// Probability 0 (or NaN from a hand-built rule): never fires, draws nothing.
    Never,
    /// Probability 1 (or more, from a hand-built rule): always fires, draws nothing.
    Always,
    /// Fires when the top [`PROBABILITY_BITS`] of a random `u64` are below this threshold.
    Below(u64),
}

impl Chance {
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

    #[inline]
    fn fires(self, rng: &mut fastrand::Rng) -> bool {
        match self {
            Chance::Never => false,
            Chance::Always => true,
            Chance::Below(threshold) => (rng.u64(..) >> (u64::BITS - PROBABILITY_BITS)) < threshold,
        }
    }
}

/// A rule's action in hot-path form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Uniform delay in `min_ns..=min_ns + span_ns`.
    Delay { min_ns: u64, span_ns: u64 },
    /// Synthetic answer with `status` when `chance` fires.
    Error { status: u16, chance: Chance },
}

/// One rule in hot-path form.
#[derive(Debug, Clone)]
struct CompiledRule {
    /// Owned memmem finder for the URL filter; `None` matches every URL. memmem was measured
    /// against anchoring filters at the URL's `/` positions and won at 1, 8 and 64 rules
    /// (about 6 ns per filter on a 40-byte URL).
    filter: Option<Finder<'static>>,
    action: Action,
}

/// Longest explicit or default rule id.
pub const MAX_RULE_ID_BYTES: usize = 64;

/// Most rules one table holds: a rule index must fit the plan's `u16`.
pub const MAX_RULES: usize = 4096;

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
    /// Which publication of the rule set this is: 1 for the startup table, raised by each
    /// replacement (the control plane stamps it with [`FaultTable::with_generation`]).
    generation: u64,
}

impl FaultTable {
    /// Compiles validated rules, keeping their order, as generation 1.
    ///
    /// Values a hand-built rule could carry outside the grammar are clamped: a probability above 1
    /// always fires, one at or below 0 or NaN never does, `min > max` is treated as `max..=min`,
    /// and a delay beyond `u64::MAX` nanoseconds (584 years) saturates.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the rule when two rules share an id (explicit, or explicit and a
    /// position's default), or when there are more than [`MAX_RULES`] rules.
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
        let compiled = rules.iter().map(CompiledRule::new).collect();
        Ok(FaultTable {
            rules: rules.to_vec(),
            ids,
            compiled,
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
    /// each evaluated rule whose matchers all match, `matched += 1`; for a rule that applies,
    /// `faulted += 1`. Rules run in order; delays add up, the first firing answer ends the
    /// evaluation (see the README's "Fault grammar" for the full semantics). Draws from `rng`
    /// only for ranges and for probabilities strictly between 0 and 1.
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
        for (index, rule) in self.compiled.iter().enumerate() {
            if let Some(filter) = &rule.filter
                && filter.find(request.url).is_none()
            {
                continue;
            }
            let source = FaultSource::Rule(index as u16);
            let applied = match rule.action {
                Action::Delay { min_ns, span_ns } => {
                    let drawn = if span_ns == 0 {
                        min_ns
                    } else {
                        // min_ns + span_ns is the rule's max, so this cannot overflow.
                        min_ns + rng.u64(0..=span_ns)
                    };
                    plan.forward_delay_ns = plan.forward_delay_ns.saturating_add(drawn);
                    plan.applied.push(AppliedFault {
                        source,
                        kind: FaultKind::Delay,
                        value: drawn,
                    });
                    true
                }
                Action::Error { status, chance } => {
                    let fires = chance.fires(rng);
                    if fires {
                        plan.answer = Answer::Synthetic {
                            status,
                            rule: Some(index as u16),
                        };
                        plan.applied.push(AppliedFault {
                            source,
                            kind: FaultKind::Error,
                            value: u64::from(status),
                        });
                    }
                    fires
                }
            };
            if let Some(stat) = stats.get_mut(index) {
                stat.matched += 1;
                stat.faulted += u64::from(applied);
            }
            if plan.answer != Answer::Forward {
                break;
            }
        }
        plan
    }
}

impl CompiledRule {
    fn new(rule: &FaultRule) -> CompiledRule {
        CompiledRule {
            // memmem picks its searcher once, here; `into_owned` makes it 'static so the
            // table carries no lifetime.
            filter: rule
                .url_filter
                .as_deref()
                .map(|filter| Finder::new(filter.as_bytes()).into_owned()),
            action: match rule.action {
                FaultAction::Delay { min, max } => {
                    let (low, high) = (nanos(min.min(max)), nanos(min.max(max)));
                    Action::Delay {
                        min_ns: low,
                        span_ns: high - low,
                    }
                }
                FaultAction::Error {
                    status,
                    probability,
                } => Action::Error {
                    status,
                    chance: Chance::from_probability(probability),
                },
            },
        }
    }
}

/// The default id of the rule at `index` (0-based): `r1` for the first.
fn default_id(index: usize) -> String {
    format!("r{}", index + 1)
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let rule = FaultRule {
                action: FaultAction::Delay {
                    min: *min,
                    max: *max,
                },
                url_filter: None,
                id: None,
            };
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
}

//! Fault injection: the `--fault` grammar ([`FaultRule`]), the table the exchange consults once per
//! request ([`FaultTable::decide`] over a borrowed [`RequestView`]) and the [`FaultPlan`] it
//! returns. It performs no I/O and no sleeping: the exchange carries the plan out.
//!
//! Rules are parsed and validated once (`spec`, into the model of `rule`), compiled into
//! precomputed matchers, integer probability thresholds and nanosecond delay ranges (`table`),
//! then shared read-only across workers behind an `Arc`, stamped with a generation. Per-rule
//! counters ([`RuleStats`]) are owned by each worker and keyed by stable rule ids across table
//! replacements, so the request path takes no lock, touches no atomic and allocates nothing.

mod matcher;
mod plan;
mod rule;
mod spec;
mod table;

pub use matcher::RequestView;
pub use plan::{
    Answer, AppliedFault, AppliedFaults, Cut, FaultPlan, FaultSource, GARBAGE, Limit, MAX_APPLIED,
    Pace,
};
pub use rule::{FaultAction, FaultKind, FaultRule};
pub use spec::SpecError;
pub use table::{FaultTable, MAX_RULE_ID_BYTES, MAX_RULES, RuleStats};

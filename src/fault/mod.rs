//! Fault injection: the fault grammar ([`FaultRule`], [`HeaderFault`]), the table the exchange
//! consults once per request ([`FaultTable::decide`] over a borrowed [`RequestView`]) and the
//! [`FaultPlan`] it returns. It performs no I/O and no sleeping (a `body=@PATH` file is read once,
//! when a table is compiled): the exchange carries the plan out.
//!
//! Rules are parsed and validated once (`spec`, into the model of `rule`), compiled into
//! precomputed matchers (`matcher`), a candidate index over the rules (`index`), integer
//! probability thresholds, samplers (`dist`) and synthetic answers (`table`), then shared
//! read-only across workers behind an `Arc`, stamped with a generation. Per-rule counters ([`RuleStats`]) are owned by each worker and keyed by
//! stable rule ids across table replacements, so the request path takes no lock, touches no
//! atomic and allocates nothing.

mod dist;
mod index;
mod matcher;
mod plan;
mod rule;
pub mod schedule;
mod spec;
mod table;

pub use dist::Sampler;
pub use matcher::RequestView;
pub use plan::{
    Answer, AppliedFault, AppliedFaults, Cut, FaultPlan, FaultSource, GARBAGE, Limit, MAX_APPLIED,
    Pace,
};
pub use rule::{
    Body, DelayAt, Dist, FaultAction, FaultKind, FaultRule, Field, Matcher, Rate, Side, Test,
};
pub use spec::{HeaderFault, Reason, SpecError};
pub use table::{
    DEFAULT_BODY, FaultTable, MAX_RULE_ID_BYTES, MAX_RULES, MAX_SYNTHETIC_BODY_BYTES, RuleStats,
    Synthetic,
};

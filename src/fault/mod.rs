//! Fault injection: the `--fault` grammar ([`FaultRule`]) and the table the proxy consults once per
//! request ([`FaultTable::decide`]). It performs no I/O and no sleeping: the proxy applies the
//! [`Decision`] (timer, synthetic answer) itself.
//!
//! Rules are parsed and validated once at startup (`spec`), compiled into precomputed substring
//! finders, integer probability thresholds and nanosecond delay ranges (`table`), then shared
//! read-only across workers behind an `Arc`. Per-rule counters ([`RuleStats`]) are owned by each
//! worker, so the request path takes no lock, touches no atomic and allocates nothing.

pub mod schedule;
mod spec;
mod table;

pub use spec::{FaultAction, FaultKind, FaultRule, SpecError};
pub use table::{Decision, FaultTable, RuleStats};

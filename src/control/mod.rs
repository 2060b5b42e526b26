//! The control plane: the admin thread's HTTP endpoint (probes, Prometheus `/metrics`, the fault
//! API), the rules file, and the publisher through which workers pick up new fault tables.
//! It never runs on a worker and never touches a worker's state except through [`Publisher`];
//! starting its thread is `server`'s job.
//!
//! # Layout
//! - [`rules`]: the live rule model (id, spec, ramp, schedule), its text and JSON forms.
//! - [`publish`]: `Send + Sync` latest snapshot + generation, per-worker acks and stats board.
//! - [`metrics`]: the per-worker report, its sum, and the Prometheus text encoding.
//! - [`api`]: the routes, the live set, validation, and publishing edits.
//! - [`listener`]: blocking `std::net` loop, one request per connection, bounded and timed out.
//! - [`file`](mod@file): `--faults-file`, reloaded on change and on SIGHUP.
//! - [`client`]: `phantom-fast faults ...`.

pub mod api;
pub mod client;
pub mod file;
pub mod listener;
pub mod metrics;
pub mod publish;
pub mod rules;

pub use api::{Admin, CompileFn, Compiled};
pub use metrics::{DurationHistogram, RuleCounters, RuleTally, WorkerReport};
pub use publish::{Publisher, WorkerLink};

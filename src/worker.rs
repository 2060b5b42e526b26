//! The per-core state every exchange of one worker shares: the fault-table slot, the upstream
//! and buffer pools, the name cache, the RNGs, counters, the trace ring, the delay timer and the
//! shutdown signal.
//!
//! Built by `server` on the worker's own thread and kept in an `Rc`: nothing here is `Send`, and
//! nothing here performs an exchange (that is `exchange`).

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
    time::Instant,
};

use crate::{
    ca::{LEAF_CACHE_ENTRIES, LeafCache},
    config::{Config, Mode},
    control::{RuleCounters, RuleTally, WorkerLink, WorkerReport},
    exchange::{Faults, Stats},
    fault::{FaultKind, FaultPlan, FaultSource},
    net::{BufPool, FramePool, timer::DelayTimer},
    shutdown::Shutdown,
    trace::{RingUsage, TraceWriter},
    upstream::{Pool, Resolver},
};

/// A fault snapshot as an exchange holds it: an `Rc` around the shared `Arc`, so pinning one
/// costs a non-atomic increment.
pub(crate) type Pinned = Rc<Arc<Faults>>;

/// The worker's current fault snapshot. Replaced only on the worker's tick (between exchanges'
/// synchronous steps, never during one); each exchange pins the one it started with.
pub(crate) struct TableSlot(RefCell<Pinned>);

impl TableSlot {
    fn new(faults: Arc<Faults>) -> TableSlot {
        TableSlot(RefCell::new(Rc::new(faults)))
    }

    /// The current snapshot, for one exchange to keep to its end.
    pub(crate) fn pin(&self) -> Pinned {
        Rc::clone(&self.0.borrow())
    }

    /// Swaps in `latest` unless it is the current snapshot already; `true` if it did. (A ramp
    /// step publishes a new snapshot of the same generation, so identity decides, not the
    /// generation.) Exchanges already running keep the snapshot they pinned.
    fn refresh(&self, latest: &Arc<Faults>) -> bool {
        if Arc::ptr_eq(&self.0.borrow(), latest) {
            return false;
        }
        *self.0.borrow_mut() = Rc::new(Arc::clone(latest));
        true
    }
}

/// Everything one worker's exchanges share. `!Send`: it lives in one thread's `Rc`.
pub(crate) struct Worker {
    pub(crate) config: Arc<Config>,
    /// The fault snapshot new exchanges pin.
    pub(crate) table: TableSlot,
    pub(crate) pool: RefCell<Pool>,
    /// Shared with every connection, which takes and gives back buffers as its needs change.
    pub(crate) bufs: Rc<RefCell<BufPool>>,
    /// Blocks for the state of an exchange's running phase (forwarding, a tunnel).
    pub(crate) frames: Rc<FramePool>,
    pub(crate) resolver: RefCell<Resolver>,
    /// Fault decisions (seeded by `--seed`), and nothing else.
    pub(crate) rng: RefCell<fastrand::Rng>,
    /// Trace and span ids: never seeded, so runs sharing a trace directory never collide.
    pub(crate) id_rng: RefCell<fastrand::Rng>,
    /// Precise deadlines for injected delays.
    pub(crate) timer: Rc<DelayTimer>,
    pub(crate) stats: RefCell<Stats>,
    pub(crate) trace: RefCell<Option<TraceWriter>>,
    /// The ring's counters when this worker opened it: `/metrics` shows what this run lost.
    trace_start: RingUsage,
    /// Connections being served.
    pub(crate) active: Cell<usize>,
    /// Per-rule counters of tables swapped out, for `/metrics`.
    tally: RefCell<RuleTally>,
    /// Requests inside a holding fault now (a delay at any placement, a hang, a paced body, a
    /// slow head; [`FaultPlan::holds`]), from decision to the end of the exchange: what
    /// `--max-active-faults` caps and `phantom_active_faults` shows.
    pub(crate) fault_holds: Cell<usize>,
    pub(crate) shutdown: Shutdown,
    /// The reverse-mode upstream's TLS server name (`--upstream https://…`), shared by every
    /// pool key so keying allocates nothing.
    pub(crate) upstream_name: Option<Rc<str>>,
    /// `--mitm` leaves signed so far, by name (a repeat host costs no signature).
    pub(crate) leaves: RefCell<LeafCache>,
}

impl Worker {
    /// State for worker `index`, with its trace ring (opened on the main thread).
    pub(crate) fn new(
        index: usize,
        config: Arc<Config>,
        faults: Arc<Faults>,
        trace: Option<TraceWriter>,
        timer: Rc<DelayTimer>,
    ) -> Worker {
        let rng = match config.seed {
            // Each worker its own stream, reproducible for a given seed and worker count.
            Some(seed) => fastrand::Rng::with_seed(seed.wrapping_add(index as u64)),
            None => fastrand::Rng::new(),
        };
        let rules = faults.table().len();
        let pool = Pool::new(config.max_upstream_connections);
        let mut resolver = Resolver::default();
        if let Mode::Reverse(up) = &config.mode {
            resolver.seed(&up.authority, &up.addrs);
        }
        for (name, addrs) in &config.hosts {
            resolver.seed(name, addrs);
        }
        let upstream_name = match &config.mode {
            Mode::Reverse(up) => up.tls.as_ref().map(|t| Rc::from(t.server_name.as_str())),
            Mode::Forward => None,
        };
        Worker {
            config,
            table: TableSlot::new(faults),
            pool: RefCell::new(pool),
            bufs: Rc::default(),
            frames: Rc::default(),
            resolver: RefCell::new(resolver),
            rng: RefCell::new(rng),
            id_rng: RefCell::new(fastrand::Rng::new()),
            timer,
            stats: RefCell::new(Stats::new(rules)),
            trace_start: trace
                .as_ref()
                .map_or_else(RingUsage::default, TraceWriter::usage),
            trace: RefCell::new(trace),
            active: Cell::new(0),
            tally: RefCell::default(),
            fault_holds: Cell::new(0),
            shutdown: Shutdown::default(),
            upstream_name,
            leaves: RefCell::new(LeafCache::new(LEAF_CACHE_ENTRIES)),
        }
    }

    /// The worker's step on news from the control plane (and on its stop-poll tick): swaps in a
    /// newer snapshot and acks it, then, when a report was asked for or `report`, copies the
    /// counters into the worker's board slot. Not on the request path.
    pub(crate) fn tick(&self, link: &mut WorkerLink<Faults>, report: bool) {
        let report = report || link.report_wanted();
        if let Some((generation, latest)) = link.poll() {
            debug_assert_eq!(
                latest.generation, generation,
                "published with its own generation"
            );
            let outgoing = self.table.pin();
            if self.table.refresh(&latest) {
                let mut stats = self.stats.borrow_mut();
                let mut tally = self.tally.borrow_mut();
                tally.retire(rule_counters(&outgoing, &stats.rules, &stats.delay_ns));
                tally.prune(&latest.kept_ids, Instant::now());
                let rules = latest.table().len();
                // Positions mean the new table's rules from now on; the summary keeps the
                // totals by position of the startup table, `/metrics` by id (the tally).
                stats.rules = vec![Default::default(); rules];
                stats.delay_ns = vec![0; rules];
            }
            link.ack();
        }
        if report {
            // Removed ids fold on time too, not only on the next swap.
            self.tally.borrow_mut().fold_expired(Instant::now());
            link.report(|report| self.fill_report(report));
        }
    }

    /// Per-rule counters by id over every table this worker used (for the shutdown summary).
    pub(crate) fn rule_totals(&self) -> Vec<RuleCounters> {
        let stats = self.stats.borrow();
        let mut totals = Vec::new();
        self.tally.borrow().fill(
            rule_counters(&self.table.pin(), &stats.rules, &stats.delay_ns),
            &mut totals,
        );
        totals
    }

    /// This worker's counters as `/metrics` sums them.
    fn fill_report(&self, report: &mut WorkerReport) {
        let stats = self.stats.borrow();
        let current = self.table.pin();
        report.outcomes = stats.outcomes;
        report.request_duration = stats.durations;
        report.upstream_duration = stats.upstream_ttfb;
        report.delay_lateness = stats.delay_lateness;
        self.tally.borrow().fill(
            rule_counters(&current, &stats.rules, &stats.delay_ns),
            &mut report.rules,
        );
        report.active_faults = self.fault_holds.get() as u64;
        report.client_connections = self.active.get() as u64;
        let (busy, idle) = self.pool.borrow().counts();
        report.upstream_busy = busy as u64;
        report.upstream_idle = idle as u64;
        report.trace_records = stats.trace_records;
        if let Some(trace) = self.trace.borrow().as_ref() {
            let lost = trace.usage().since(self.trace_start);
            report.trace_overwritten = lost.overwritten;
            report.trace_dropped = lost.dropped;
        }
    }
}

/// Adds each delay `plan` applies (at any placement) to the rule that drew it, by position in
/// the table it was decided with: `phantom_fault_delay_seconds_total` is the sum of the sampled
/// delays the trace records name. Header faults have no rule and are not counted per rule.
pub(crate) fn count_delays(delay_ns: &mut [u64], plan: &FaultPlan) {
    for applied in plan.applied.as_slice() {
        if let (FaultSource::Rule(rule), FaultKind::Delay) = (applied.source, applied.kind)
            && let Some(slot) = delay_ns.get_mut(usize::from(rule))
        {
            *slot = slot.saturating_add(applied.value);
        }
    }
}

/// One table's per-position counters as per-id ones.
fn rule_counters<'a>(
    faults: &'a Faults,
    rules: &'a [crate::fault::RuleStats],
    delay_ns: &'a [u64],
) -> impl Iterator<Item = RuleCounters> + 'a {
    faults
        .table()
        .rules()
        .iter()
        .zip(&faults.ids)
        .zip(rules.iter().zip(delay_ns))
        .map(|((rule, id), (stats, delay))| RuleCounters {
            id: Arc::clone(id),
            kind: rule.kind(),
            matched: stats.matched,
            injected: stats.faulted,
            delay_ns: *delay,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultRule;

    fn snapshot(specs: &[&str], generation: u64) -> Arc<Faults> {
        let rules: Vec<FaultRule> = specs.iter().map(|s| s.parse().unwrap()).collect();
        Arc::new(Faults::compile(&rules, generation).unwrap())
    }

    #[test]
    fn table_slot_pinned_snapshot_survives_a_swap() {
        let first = snapshot(&["error:503"], 0);
        let slot = TableSlot::new(Arc::clone(&first));
        let pinned = slot.pin();

        assert!(!slot.refresh(&first), "the same snapshot swaps nothing");
        assert!(
            slot.refresh(&snapshot(&[], 1)),
            "a new snapshot is swapped in"
        );

        assert_eq!(pinned.generation, 0, "the pinned snapshot is unchanged");
        assert_eq!(pinned.table().len(), 1);
        assert_eq!(slot.pin().generation, 1);
        assert!(slot.pin().table().is_empty());
    }
}

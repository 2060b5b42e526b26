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
};

use crate::{
    ca::{LEAF_CACHE_ENTRIES, LeafCache},
    config::{Config, Mode},
    control::{RuleCounters, RuleTally, WorkerLink, WorkerReport},
    exchange::{Faults, Stats},
    net::{BufPool, FramePool, timer::DelayTimer},
    shutdown::Shutdown,
    trace::TraceWriter,
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

    /// Whether `pinned` is still the current snapshot (per-rule counters follow the current
    /// table only).
    pub(crate) fn is_current(&self, pinned: &Pinned) -> bool {
        Rc::ptr_eq(&self.0.borrow(), pinned)
    }
}

/// Requests inside a fault now (waiting out a delay), for `phantom_active_faults`.
#[derive(Default)]
pub(crate) struct ActiveFaults(Cell<u64>);

impl ActiveFaults {
    /// Counts one request in until the guard drops.
    pub(crate) fn enter(&self) -> ActiveFault<'_> {
        self.0.set(self.0.get() + 1);
        ActiveFault(self)
    }

    /// How many there are now.
    pub(crate) fn get(&self) -> u64 {
        self.0.get()
    }
}

/// One request inside a fault; leaves on drop (also when its exchange is cancelled).
pub(crate) struct ActiveFault<'a>(&'a ActiveFaults);

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.0.set(self.0.0.get() - 1);
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
    pub(crate) frames: FramePool,
    pub(crate) resolver: RefCell<Resolver>,
    /// Fault decisions (seeded by `--seed`), and nothing else.
    pub(crate) rng: RefCell<fastrand::Rng>,
    /// Trace and span ids: never seeded, so runs sharing a trace directory never collide.
    pub(crate) id_rng: RefCell<fastrand::Rng>,
    /// Precise deadlines for injected delays.
    pub(crate) timer: Rc<DelayTimer>,
    pub(crate) stats: RefCell<Stats>,
    pub(crate) trace: RefCell<Option<TraceWriter>>,
    /// Connections being served.
    pub(crate) active: Cell<usize>,
    /// Requests inside a fault now.
    pub(crate) active_faults: ActiveFaults,
    /// Per-rule counters of tables swapped out, for `/metrics`.
    tally: RefCell<RuleTally>,
    /// Exchanges holding a `--max-active-faults` slot.
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
            frames: FramePool::default(),
            resolver: RefCell::new(resolver),
            rng: RefCell::new(rng),
            id_rng: RefCell::new(fastrand::Rng::new()),
            timer,
            stats: RefCell::new(Stats::new(rules)),
            trace: RefCell::new(trace),
            active: Cell::new(0),
            active_faults: ActiveFaults::default(),
            tally: RefCell::default(),
            fault_holds: Cell::new(0),
            shutdown: Shutdown::default(),
            upstream_name,
            leaves: RefCell::new(LeafCache::new(LEAF_CACHE_ENTRIES)),
        }
    }

    /// The worker's periodic step (the server runs it on its stop-poll tick) when a control
    /// plane publishes: swaps in a newer snapshot and acks it, then, when `report`, copies the
    /// counters into the worker's board slot. Not on the request path.
    pub(crate) fn tick(&self, link: &mut WorkerLink<Faults>, report: bool) {
        if let Some((generation, latest)) = link.poll() {
            debug_assert_eq!(
                latest.generation, generation,
                "published with its own generation"
            );
            let outgoing = self.table.pin();
            if self.table.refresh(&latest) {
                let mut stats = self.stats.borrow_mut();
                self.tally.borrow_mut().retire(rule_counters(
                    &outgoing,
                    &stats.rules,
                    &stats.delay_ns,
                ));
                let rules = latest.table().len();
                // Positions mean the new table's rules from now on; the summary keeps the
                // totals by position of the startup table, `/metrics` by id (the tally).
                stats.rules = vec![Default::default(); rules];
                stats.delay_ns = vec![0; rules];
            }
            link.ack();
        }
        if report {
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
        self.tally.borrow().fill(
            rule_counters(&current, &stats.rules, &stats.delay_ns),
            &mut report.rules,
        );
        report.active_faults = self.active_faults.get();
        report.client_connections = self.active.get() as u64;
        let (busy, idle) = self.pool.borrow().counts();
        report.upstream_busy = busy as u64;
        report.upstream_idle = idle as u64;
        report.trace_records = stats.trace_records;
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

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
    config::Config,
    exchange::{Faults, Stats},
    net::{BufPool, timer::DelayTimer},
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

    /// Swaps in `latest` when its generation differs from the current one; `true` if it did.
    /// Exchanges already running keep the snapshot they pinned.
    fn refresh(&self, latest: &Arc<Faults>) -> bool {
        if self.0.borrow().generation == latest.generation {
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
    pub(crate) bufs: RefCell<BufPool>,
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
    /// Exchanges inside a holding fault (`--max-active-faults`).
    pub(crate) active_faults: Cell<usize>,
    pub(crate) shutdown: Shutdown,
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
        Worker {
            config,
            table: TableSlot::new(faults),
            pool: RefCell::new(pool),
            bufs: RefCell::default(),
            resolver: RefCell::default(),
            rng: RefCell::new(rng),
            id_rng: RefCell::new(fastrand::Rng::new()),
            timer,
            stats: RefCell::new(Stats::new(rules)),
            trace: RefCell::new(trace),
            active: Cell::new(0),
            active_faults: Cell::new(0),
            shutdown: Shutdown::default(),
        }
    }

    /// The worker's periodic step (the server runs it on its stop-poll tick): picks up the
    /// latest published fault snapshot. Per-rule counters follow the new table's length.
    pub(crate) fn tick(&self, latest: &Arc<Faults>) {
        if self.table.refresh(latest) {
            let rules = latest.table().len();
            self.stats
                .borrow_mut()
                .rules
                .resize(rules, Default::default());
        }
    }
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

        assert!(!slot.refresh(&first), "the same generation swaps nothing");
        assert!(
            slot.refresh(&snapshot(&[], 1)),
            "a new generation is swapped in"
        );

        assert_eq!(pinned.generation, 0, "the pinned snapshot is unchanged");
        assert_eq!(pinned.table().len(), 1);
        assert_eq!(slot.pin().generation, 1);
        assert!(slot.pin().table().is_empty());
    }
}

//! The per-core state every exchange of one worker shares: the compiled faults with their
//! prebuilt responses, the upstream and buffer pools, RNGs, counters, the trace ring, the delay
//! timer and the shutdown signal.
//!
//! Built by `server` on the worker's own thread and kept in an `Rc`: nothing here is `Send`, and
//! nothing here performs an exchange (that is `proxy`).

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use hdrhistogram::Histogram;

use crate::{
    config::Config,
    connection::BufPool,
    fault::{FaultRule, FaultTable, RuleStats, SpecError},
    http,
    timer::DelayTimer,
    trace::TraceWriter,
    upstream::{Pool, Resolver},
};

/// The fault table plus, per error rule, its synthetic responses prebuilt at startup.
pub(crate) struct Faults {
    table: FaultTable,
    /// Canonical spec text per rule (for traces).
    pub(crate) specs: Vec<String>,
    /// Per rule: the response for a keep-alive client and for a closing one (empty for delays).
    pub(crate) synthetic: Vec<[Vec<u8>; 2]>,
}

impl Faults {
    /// Compiles the rules and prebuilds each error rule's response bytes.
    pub(crate) fn compile(rules: &[FaultRule]) -> Result<Faults, SpecError> {
        let table = FaultTable::compile(rules)?;
        let specs = rules.iter().map(ToString::to_string).collect();
        let synthetic = (0..table.len())
            .map(|index| match table.synthetic(index) {
                Some(answer) => [true, false].map(|keep_alive| {
                    let headers: Vec<(&str, &[u8])> = answer
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_slice()))
                        .collect();
                    let mut out = Vec::new();
                    http::encode::encode_simple_response(
                        answer.status,
                        &answer.content_type,
                        &headers,
                        &answer.body,
                        keep_alive,
                        &mut out,
                    );
                    out
                }),
                None => [Vec::new(), Vec::new()],
            })
            .collect();
        Ok(Faults {
            table,
            specs,
            synthetic,
        })
    }

    /// The compiled table.
    pub(crate) fn table(&self) -> &FaultTable {
        &self.table
    }
}

/// Counters one worker keeps; merged by `server` into the shutdown summary.
pub(crate) struct Stats {
    /// Answered requests.
    pub(crate) requests: u64,
    /// Per `Outcome::ALL` entry.
    pub(crate) outcomes: [u64; 6],
    /// Per fault rule: matched / faulted.
    pub(crate) rules: Vec<RuleStats>,
    /// Total exchange duration in microseconds.
    pub(crate) latency_us: Histogram<u64>,
}

impl Stats {
    pub(crate) fn new(rules: usize) -> Stats {
        Stats {
            requests: 0,
            outcomes: [0; 6],
            rules: vec![RuleStats::default(); rules],
            // 1 µs .. 1 h at 3 significant digits: allocated once, recording never allocates.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

/// Cooperative shutdown of one worker: idle connections waiting for their next request are woken
/// (their read cancelled and awaited), in-flight exchanges finish.
#[derive(Default)]
pub(crate) struct Shutdown {
    fired: Cell<bool>,
    /// One slot per live connection (reused), holding the waker of an idle wait.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// Whether shutdown began.
    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Begins shutdown and wakes every idle connection.
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn register(&self) -> usize {
        if let Some(slot) = self.free.borrow_mut().pop() {
            return slot;
        }
        let mut wakers = self.wakers.borrow_mut();
        wakers.push(None);
        wakers.len() - 1
    }

    pub(crate) fn release(&self, slot: usize) {
        self.wakers.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
    }

    pub(crate) fn wait(&self, slot: usize) -> ShutdownWait<'_> {
        ShutdownWait {
            shutdown: self,
            slot,
        }
    }
}

/// Completes when shutdown begins.
pub(crate) struct ShutdownWait<'a> {
    shutdown: &'a Shutdown,
    slot: usize,
}

impl Future for ShutdownWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.shutdown.wakers.borrow_mut();
        let slot = &mut wakers[self.slot];
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Everything one worker's exchanges share. `!Send`: it lives in one thread's `Rc`.
pub(crate) struct Worker {
    pub(crate) config: Arc<Config>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) pool: RefCell<Pool>,
    pub(crate) bufs: RefCell<BufPool>,
    pub(crate) resolver: RefCell<Resolver>,
    /// Fault decisions (seeded by `--seed`).
    pub(crate) rng: RefCell<fastrand::Rng>,
    /// Trace and span ids: never seeded, so runs sharing a trace directory never collide.
    pub(crate) id_rng: RefCell<fastrand::Rng>,
    /// Precise deadlines for injected delays.
    pub(crate) timer: Rc<DelayTimer>,
    pub(crate) stats: RefCell<Stats>,
    pub(crate) trace: RefCell<Option<TraceWriter>>,
    /// Connections being served.
    pub(crate) active: Cell<usize>,
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
        let rules = faults.table.len();
        let pool = Pool::new(config.max_upstream_connections);
        Worker {
            config,
            faults,
            pool: RefCell::new(pool),
            bufs: RefCell::default(),
            resolver: RefCell::default(),
            rng: RefCell::new(rng),
            id_rng: RefCell::new(fastrand::Rng::new()),
            timer,
            stats: RefCell::new(Stats::new(rules)),
            trace: RefCell::new(trace),
            active: Cell::new(0),
            shutdown: Shutdown::default(),
        }
    }
}

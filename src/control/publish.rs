//! The seam between the admin thread and the workers: the latest compiled snapshot with its
//! generation, each worker's applied-generation ack, and each worker's stats board slot.
//! It compiles nothing and serves nothing; it is only the `Send + Sync` meeting point.
//!
//! A worker holds a [`WorkerLink`] and waits for news on it ([`WorkerLink::poll_news`]: the
//! publisher wakes the waiting task, so an idle worker is not woken by a timer to look). On news
//! it calls [`WorkerLink::poll`], swaps its `Rc` slot when a snapshot comes back, then
//! [`WorkerLink::ack`]s it, and fills its [`WorkerReport`] with [`WorkerLink::report`] when one
//! was asked for. Nothing of this is on the request path. The admin thread
//! [`Publisher::publish`]es and, for a PUT, waits with [`Publisher::wait_applied`] until every
//! worker has swapped; a scrape asks for fresh reports with [`Publisher::refresh_reports`].

use std::{
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use super::metrics::WorkerReport;

/// One published snapshot: the publish sequence (bumped on every publish, ramp steps included),
/// the rule-set generation it belongs to (bumped on edits only), and the snapshot.
struct Latest<T> {
    seq: u64,
    generation: u64,
    snapshot: Arc<T>,
}

struct Shared<T> {
    latest: Mutex<Latest<T>>,
    /// Copy of `latest.seq`, so a worker's poll is one atomic load when nothing changed.
    seq: AtomicU64,
    /// Per worker: the sequence it applied (0: not serving yet).
    applied_seq: Vec<AtomicU64>,
    /// Per worker: the generation of the snapshot it applied.
    applied_generation: Vec<AtomicU64>,
    /// Notified on every ack and report; its mutex guards nothing but the wait.
    acked: (Mutex<()>, Condvar),
    /// Per worker: the counters of its last report.
    board: Vec<Mutex<WorkerReport>>,
    /// Bumped for each report asked for ([`Publisher::refresh_reports`]).
    report_want: AtomicU64,
    /// Per worker: the `report_want` its last report answered.
    reported: Vec<AtomicU64>,
    /// Per worker: its task waiting for news ([`WorkerLink::poll_news`]), woken on a publish
    /// and on a report asked for.
    wakers: Vec<Mutex<Option<Waker>>>,
    /// Per worker: its link was dropped (it stopped ticking to drain): it applies nothing more.
    gone: Vec<AtomicBool>,
    draining: AtomicBool,
}

/// The admin side: publishes snapshots, waits for acks, reads the board. Cheap to clone.
pub struct Publisher<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A poisoned lock here only means another thread panicked mid-copy of plain counters; the data
/// is still usable, and the admin thread must keep answering probes.
fn lock<U>(mutex: &Mutex<U>) -> MutexGuard<'_, U> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Send + Sync> Publisher<T> {
    /// A publisher for `workers` workers whose first snapshot (sequence 1) is `initial`, of rule-set
    /// generation `generation`.
    pub fn new(workers: usize, generation: u64, initial: Arc<T>) -> Publisher<T> {
        Publisher {
            shared: Arc::new(Shared {
                latest: Mutex::new(Latest {
                    seq: 1,
                    generation,
                    snapshot: initial,
                }),
                seq: AtomicU64::new(1),
                applied_seq: (0..workers).map(|_| AtomicU64::new(0)).collect(),
                applied_generation: (0..workers).map(|_| AtomicU64::new(0)).collect(),
                acked: (Mutex::new(()), Condvar::new()),
                board: (0..workers)
                    .map(|_| Mutex::new(WorkerReport::default()))
                    .collect(),
                report_want: AtomicU64::new(0),
                reported: (0..workers).map(|_| AtomicU64::new(0)).collect(),
                wakers: (0..workers).map(|_| Mutex::new(None)).collect(),
                gone: (0..workers).map(|_| AtomicBool::new(false)).collect(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.applied_seq.len()
    }

    /// Makes `snapshot` the latest; returns its sequence number for [`Publisher::wait_applied`].
    pub fn publish(&self, generation: u64, snapshot: Arc<T>) -> u64 {
        let mut latest = lock(&self.shared.latest);
        let seq = latest.seq + 1;
        *latest = Latest {
            seq,
            generation,
            snapshot,
        };
        self.shared.seq.store(seq, Ordering::Release);
        drop(latest);
        self.wake_workers();
        seq
    }

    /// Wakes every worker waiting for news (after the news was stored: see
    /// [`WorkerLink::poll_news`]).
    fn wake_workers(&self) {
        for slot in &self.shared.wakers {
            if let Some(waker) = lock(slot).take() {
                waker.wake();
            }
        }
    }

    /// Asks every worker for a fresh report and waits up to `timeout` for them; a worker that
    /// stopped, or does not answer in time, keeps its last one. A worker answers as soon as its
    /// current task yields (microseconds when idle), so a scrape sees counters of now.
    pub fn refresh_reports(&self, timeout: Duration) {
        let want = self.shared.report_want.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake_workers();
        let deadline = Instant::now() + timeout;
        let (mutex, condvar) = &self.shared.acked;
        let mut guard = lock(mutex);
        loop {
            let answered = self
                .shared
                .reported
                .iter()
                .zip(&self.shared.gone)
                .all(|(r, gone)| r.load(Ordering::Acquire) >= want || gone.load(Ordering::Acquire));
            let left = deadline.saturating_duration_since(Instant::now());
            if answered || left.is_zero() {
                return;
            }
            guard = condvar
                .wait_timeout(guard, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The latest snapshot and its generation.
    pub fn latest(&self) -> (u64, Arc<T>) {
        let latest = lock(&self.shared.latest);
        (latest.generation, Arc::clone(&latest.snapshot))
    }

    /// Waits until every worker applied sequence `seq` (or a later one); false after `timeout`,
    /// or at once when a worker that has not applied it stopped (shutdown: it never will).
    pub fn wait_applied(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (mutex, condvar) = &self.shared.acked;
        let mut guard = lock(mutex);
        loop {
            if self.all_applied(seq) {
                return true;
            }
            if self.stopped_before(seq) {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = condvar
                .wait_timeout(guard, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn all_applied(&self, seq: u64) -> bool {
        self.shared
            .applied_seq
            .iter()
            .all(|a| a.load(Ordering::Acquire) >= seq)
    }

    /// Per worker: the rule-set generation it applied (0 while it has not started).
    pub fn applied_generations(&self) -> Vec<u64> {
        self.shared
            .applied_generation
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// Whether a worker that has not applied `seq` stopped applying snapshots.
    fn stopped_before(&self, seq: u64) -> bool {
        self.shared
            .gone
            .iter()
            .zip(&self.shared.applied_seq)
            .any(|(gone, applied)| {
                gone.load(Ordering::Acquire) && applied.load(Ordering::Acquire) < seq
            })
    }

    /// Whether a worker stopped applying snapshots (at shutdown, once it drained).
    pub fn workers_stopped(&self) -> bool {
        self.shared.gone.iter().any(|g| g.load(Ordering::Acquire))
    }

    /// Whether every worker has applied a snapshot, i.e. serves.
    pub fn all_serving(&self) -> bool {
        self.all_applied(1)
    }

    /// Marks the process as draining (shutdown began): `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// The workers' last reports, summed.
    pub fn total_report(&self) -> WorkerReport {
        let mut total = WorkerReport::default();
        for slot in &self.shared.board {
            total.merge(&lock(slot));
        }
        total
    }

    /// The link worker `index` polls on its tick.
    ///
    /// # Panics
    /// When `index` is not below [`Publisher::workers`] (a startup bug).
    pub fn worker(&self, index: usize) -> WorkerLink<T> {
        assert!(
            index < self.workers(),
            "worker index within the publisher's workers"
        );
        WorkerLink {
            shared: Arc::clone(&self.shared),
            index,
            seen: 0,
            pending: None,
        }
    }
}

/// One worker's side: `Send`, moved into the worker thread; used off the request path only.
pub struct WorkerLink<T> {
    shared: Arc<Shared<T>>,
    index: usize,
    /// Sequence of the last snapshot handed out by `poll`.
    seen: u64,
    /// (seq, generation) handed out by `poll`, acked by `ack`.
    pending: Option<(u64, u64)>,
}

impl<T: Send + Sync> WorkerLink<T> {
    /// Ready when there is news: a snapshot not yet polled, or a report asked for. Pending
    /// otherwise, with the task's waker left for the publisher, which wakes it on news.
    pub fn poll_news(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_news() {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&self.shared.wakers[self.index]);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        // The publisher stores the news before it takes the waker (under this lock), so news
        // stored before the waker was left is seen here, and news after it wakes the task.
        if self.has_news() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn has_news(&self) -> bool {
        self.shared.seq.load(Ordering::Acquire) != self.seen || self.report_wanted()
    }

    /// Whether the admin thread asked for a report this worker has not filled yet.
    pub fn report_wanted(&self) -> bool {
        self.shared.report_want.load(Ordering::Acquire)
            > self.shared.reported[self.index].load(Ordering::Acquire)
    }

    /// The newer snapshot and its generation, when one was published since the last poll (the
    /// first poll always returns one). One atomic load when nothing changed.
    pub fn poll(&mut self) -> Option<(u64, Arc<T>)> {
        if self.shared.seq.load(Ordering::Acquire) == self.seen {
            return None;
        }
        let latest = lock(&self.shared.latest);
        self.seen = latest.seq;
        self.pending = Some((latest.seq, latest.generation));
        Some((latest.generation, Arc::clone(&latest.snapshot)))
    }

    /// Tells the admin thread the snapshot of the last [`WorkerLink::poll`] is now in the slot:
    /// every request that starts from now on uses it.
    pub fn ack(&mut self) {
        let Some((seq, generation)) = self.pending.take() else {
            return;
        };
        self.shared.applied_generation[self.index].store(generation, Ordering::Release);
        self.shared.applied_seq[self.index].store(seq, Ordering::Release);
        let (mutex, condvar) = &self.shared.acked;
        // Taking the lock orders this store before a waiter's next check: no lost wake-up.
        drop(lock(mutex));
        condvar.notify_all();
    }

    /// Fills this worker's board slot (the admin thread sums the slots at scrape time) and
    /// answers the reports asked for until now.
    pub fn report(&self, fill: impl FnOnce(&mut WorkerReport)) {
        let want = self.shared.report_want.load(Ordering::Acquire);
        fill(&mut lock(&self.shared.board[self.index]));
        self.shared.reported[self.index].fetch_max(want, Ordering::AcqRel);
        let (mutex, condvar) = &self.shared.acked;
        // As in `ack`: the lock orders the store before a waiter's next check.
        drop(lock(mutex));
        condvar.notify_all();
    }
}

/// A worker that drops its link (it stopped ticking to drain at shutdown) is marked gone, so
/// an edit published from now on does not wait [`super::api::APPLY_TIMEOUT`] for its ack.
impl<T> Drop for WorkerLink<T> {
    fn drop(&mut self) {
        self.shared.gone[self.index].store(true, Ordering::Release);
        let (mutex, condvar) = &self.shared.acked;
        // As in `ack`: the lock orders the store before a waiter's next check.
        drop(lock(mutex));
        condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_each_new_snapshot_once() {
        let publisher = Publisher::new(1, 1, Arc::new("a"));
        let mut link = publisher.worker(0);
        assert_eq!(link.poll().map(|(g, s)| (g, *s)), Some((1, "a")));
        assert!(link.poll().is_none());
        publisher.publish(2, Arc::new("b"));
        publisher.publish(2, Arc::new("c"));
        assert_eq!(link.poll().map(|(g, s)| (g, *s)), Some((2, "c")));
        assert!(link.poll().is_none());
    }

    #[test]
    fn wait_applied_returns_once_every_worker_acked() {
        let publisher = Publisher::new(2, 1, Arc::new(0u32));
        assert!(!publisher.all_serving());
        let seq = publisher.publish(5, Arc::new(1));
        assert!(!publisher.wait_applied(seq, Duration::from_millis(10)));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let mut link = publisher.worker(i);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20 * (i as u64 + 1)));
                    assert!(link.poll().is_some());
                    link.ack();
                    link.report(|r| r.trace_records = 10 + i as u64);
                })
            })
            .collect();
        assert!(publisher.wait_applied(seq, Duration::from_secs(5)));
        assert!(publisher.all_serving());
        assert_eq!(publisher.applied_generations(), [5, 5]);
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(publisher.total_report().trace_records, 21);
    }

    #[test]
    fn wait_applied_returns_at_once_when_a_worker_stopped() {
        let publisher = Publisher::new(2, 1, Arc::new(0u32));
        let mut first = publisher.worker(0);
        let second = publisher.worker(1);
        assert!(first.poll().is_some());
        first.ack();
        let seq = publisher.publish(2, Arc::new(1));
        let waiter = {
            let publisher = publisher.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (
                    publisher.wait_applied(seq, Duration::from_secs(60)),
                    started.elapsed(),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!publisher.workers_stopped());
        drop(second);
        let (applied, waited) = waiter.join().unwrap();
        assert!(!applied, "a stopped worker never applies it");
        assert!(waited < Duration::from_secs(60), "woken, not timed out");
        assert!(publisher.workers_stopped());
        assert!(!publisher.wait_applied(seq, Duration::from_secs(60)));
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicU64);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn news_wakes_the_waiting_worker_and_nothing_else_does() {
        let publisher = Publisher::new(1, 1, Arc::new(0u32));
        let mut link = publisher.worker(0);
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(
            link.poll_news(&mut cx).is_ready(),
            "the first snapshot is news"
        );
        assert!(link.poll().is_some());
        link.ack();
        assert!(link.poll_news(&mut cx).is_pending());
        assert!(
            link.poll_news(&mut cx).is_pending(),
            "polled again: still waiting"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        publisher.publish(2, Arc::new(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a publish wakes it once");
        assert!(link.poll_news(&mut cx).is_ready());
        assert!(link.poll().is_some());
        link.ack();
        assert!(link.poll_news(&mut cx).is_pending());
        // A report asked for is news too; answering it ends the wait.
        let asker = {
            let publisher = publisher.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                publisher.refresh_reports(Duration::from_secs(60));
                (started.elapsed(), publisher.total_report().trace_records)
            })
        };
        let waiting = Instant::now();
        while count.0.load(Ordering::SeqCst) < 2 {
            let waited = waiting.elapsed();
            assert!(
                waited < Duration::from_secs(60),
                "no wake-up for the report in {waited:?}"
            );
            std::thread::yield_now();
        }
        assert!(link.report_wanted());
        assert!(link.poll_news(&mut cx).is_ready());
        link.report(|r| r.trace_records = 7);
        assert!(!link.report_wanted());
        let (waited, records) = asker.join().unwrap();
        assert!(waited < Duration::from_secs(60), "answered, not timed out");
        assert_eq!(records, 7, "the scrape sees the report it asked for");
        assert!(link.poll_news(&mut cx).is_pending());
    }

    #[test]
    fn refresh_reports_does_not_wait_for_a_stopped_worker() {
        let publisher = Publisher::new(1, 1, Arc::new(()));
        drop(publisher.worker(0));
        let started = Instant::now();
        publisher.refresh_reports(Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn draining_is_sticky() {
        let publisher = Publisher::new(1, 1, Arc::new(()));
        assert!(!publisher.is_draining());
        publisher.set_draining();
        assert!(publisher.is_draining());
    }
}

//! The decide phase: pinning the worker's current fault snapshot for the exchange, consulting
//! its table once, and sleeping for an injected delay while watching the client.
//!
//! It answers nothing: `answer` sends the synthetic response a decision asks for.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    fault::{FaultPlan, FaultRule, FaultTable, HeaderFault, RequestView, SpecError},
    net::{Peer, READ_BUF_BYTES, is_timeout},
};

use super::{Session, answer::Synthetic};
use crate::control::{Compiled, rules::RuleError};
use crate::worker::{Pinned, Worker};

/// The request header that names a request's own fault (`--allow-header-faults`); never
/// forwarded.
pub(super) const FAULT_HEADER: &str = "x-phantom-fault";

/// During a long delay the client is asked whether it hung up at least this often (and always
/// at the deadline): a client that leaves is noticed within this, and its connection freed.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long the end of a delay waits for the rest of a TLS record the client is sending.
const PULL_WAIT: Duration = Duration::from_millis(5);

/// A delay may end up to this fraction of itself late (never early), so that delays due within
/// that of each other share one timer wake-up: 1/32 is 31 µs of a 1 ms delay…
const DELAY_SLACK_DIVISOR: u32 = 32;
/// …and at most this much of any delay while the worker holds few sleeps…
const MIN_DELAY_SLACK_CAP: Duration = Duration::from_millis(1);
/// …a cap that grows by this much per pending sleep (1 ms at 125, 2 ms at 250)…
const DELAY_SLACK_PER_PENDING: Duration = Duration::from_micros(8);
/// …up to this, reached at 500 pending sleeps (a worker holds ~600 at 2 000 delays/s of 300 ms,
/// ~1 500 at 5 000/s). At 5 000/s an 8 ms cap cost little less CPU (1.24× against 1.25–1.27×)
/// and was not shown to keep the p99 lateness within 2 ms; 4 ms was (README, "Delay cost").
const MAX_DELAY_SLACK_CAP: Duration = Duration::from_millis(4);

/// How late a delay may end (never early) when the worker's timer holds `pending` sleeps: a
/// 32nd of it, capped at 1 ms, the cap rising with `pending` to 4 ms. A worker holding hundreds
/// of delays wakes often anyway (each new delay ends the due ones), so a due delay mostly ends
/// in a wake-up it would have had anyway instead of one of its own, which would also have sent
/// its forward alone (README, "Delay cost": at 5 000 delays/s of 100–500 ms, a 1 ms cap costs
/// 1.43× an undelayed request, a 4 ms cap 1.25–1.27×).
fn delay_slack(delay: Duration, pending: usize) -> Duration {
    let pending = u32::try_from(pending).unwrap_or(u32::MAX);
    let cap = DELAY_SLACK_PER_PENDING
        .saturating_mul(pending)
        .clamp(MIN_DELAY_SLACK_CAP, MAX_DELAY_SLACK_CAP);
    (delay / DELAY_SLACK_DIVISOR).min(cap)
}

/// One compiled fault snapshot: the table, each rule's canonical text and its prebuilt
/// synthetic answers, stamped with a generation. Immutable; shared across workers in an `Arc`.
pub(crate) struct Faults {
    table: FaultTable,
    /// Canonical spec text per rule (for traces).
    pub(super) specs: Vec<String>,
    /// Per rule, the synthetic answers of an error rule.
    pub(super) synthetic: Synthetic,
    /// Which rule set this is; a replacement gets a different one.
    pub(crate) generation: u64,
    /// Each rule's stable id (the `rule` label in `/metrics`), same order as the table.
    pub(crate) ids: Vec<Arc<str>>,
    /// Every id of the rule set this snapshot belongs to, rules scheduled off included: a
    /// worker keeps the counters of these ids and folds those of others (`RuleTally`).
    pub(crate) kept_ids: Vec<Arc<str>>,
}

impl Faults {
    /// Compiles the rules and prebuilds each error rule's answers, with each rule's own id
    /// (`id=NAME`) or its position's default (`r1` first).
    ///
    /// # Errors
    /// [`SpecError`] for a table that does not compile (a duplicate rule id, an unreadable
    /// `body=@PATH` file).
    pub(crate) fn compile(rules: &[FaultRule], generation: u64) -> Result<Faults, SpecError> {
        let table = FaultTable::compile(rules)?.with_generation(generation);
        let ids = (0..table.len())
            .map(|i| Arc::from(table.rule_id(i)))
            .collect();
        let specs = rules.iter().map(ToString::to_string).collect();
        Ok(Faults::from_table(table, ids, specs, generation))
    }

    /// [`Faults::compile`] for the control plane: the rules in force with its ids
    /// (`c.ids.len() == c.rules.len()`, winning over a spec's own `id=`), and the ids of its
    /// whole live set (scheduled-off rules too), whose counters the workers keep.
    ///
    /// # Errors
    /// A [`RuleError`] naming the rule by id when the table does not compile (a `body=@PATH`
    /// file that cannot be read): the control plane then keeps the rules it had.
    pub(crate) fn compile_with_ids(c: Compiled<'_>) -> Result<Faults, RuleError> {
        let specs: Vec<String> = c.rules.iter().map(ToString::to_string).collect();
        let mut rules = c.rules.to_vec();
        for (rule, id) in rules.iter_mut().zip(c.ids) {
            rule.id = Some(id.to_string());
        }
        let table = FaultTable::compile(&rules).map_err(|err| {
            // The error quotes the rule as compiled (with its id): find which one it was.
            let at = rules.iter().position(|r| r.to_string() == err.spec());
            RuleError {
                rule: at.map_or_else(|| "rules".to_owned(), |i| c.ids[i].to_string()),
                spec: at.map_or_else(|| err.spec().to_owned(), |i| specs[i].clone()),
                reason: err.reason().to_owned(),
            }
        })?;
        let mut faults = Faults::from_table(
            table.with_generation(c.generation),
            c.ids.to_vec(),
            specs,
            c.generation,
        );
        faults.kept_ids = c.live_ids.to_vec();
        Ok(faults)
    }

    fn from_table(
        table: FaultTable,
        ids: Vec<Arc<str>>,
        specs: Vec<String>,
        generation: u64,
    ) -> Faults {
        let synthetic = Synthetic::compile(&table);
        Faults {
            specs,
            table,
            synthetic,
            generation,
            kept_ids: ids.clone(),
            ids,
        }
    }

    /// The compiled table.
    pub(crate) fn table(&self) -> &FaultTable {
        &self.table
    }
}

/// Decides one request against the pinned snapshot: the table's rules, then (with
/// `--allow-header-faults`) each `x-phantom-fault` line, then the `--max-active-faults` cap. Says
/// whether the exchange took an active-fault slot ([`Session::release_fault_slot`] gives it back).
/// Allocates nothing.
pub(super) fn decide_request(
    w: &Worker,
    faults: &Pinned,
    view: &RequestView<'_>,
) -> (FaultPlan, bool) {
    let mut stats = w.stats.borrow_mut();
    let mut rng = w.rng.borrow_mut();
    let mut plan = faults.table().decide(view, &mut rng, &mut stats.rules);
    if w.config.allow_header_faults {
        for value in view.headers_named(FAULT_HEADER) {
            // A malformed header fault is ignored, as a header the proxy does not know.
            if let Ok(fault) = HeaderFault::parse(value) {
                plan.apply_header(fault, &mut rng);
            }
        }
    }
    if !plan.holds() {
        return (plan, false);
    }
    if let Some(max) = w.config.max_active_faults
        && w.fault_holds.get() >= max
    {
        stats.fault_overflow += 1;
        return (FaultPlan::NONE, false);
    }
    crate::worker::count_delays(&mut stats.delay_ns, &plan);
    w.fault_holds.set(w.fault_holds.get() + 1);
    (plan, true)
}

impl Session<'_> {
    /// Gives back the exchange's active-fault slot, if it took one.
    pub(super) fn release_fault_slot(&mut self) {
        if std::mem::take(&mut self.ex.holding) {
            self.w
                .fault_holds
                .set(self.w.fault_holds.get().saturating_sub(1));
        }
    }

    /// Sleeps for an injected delay while watching the client: `false` when it hung up (its
    /// request is then never forwarded). The client is asked at the deadline and at least every
    /// [`WATCH_EVERY`] before it ([`Conn::peer`]: one `poll(2)`, nothing in the ring), so a
    /// delay costs its timer wake-ups and no read that must be cancelled. Bytes the client sent
    /// meanwhile (a body, a pipelined request) are read as the delay ends and kept.
    ///
    /// [`Conn::peer`]: crate::net::Conn::peer
    pub(super) async fn delay(&mut self, delay: Duration) -> bool {
        let start = Instant::now();
        let deadline = start + delay;
        let mut wake = start;
        // The last wake-up may come up to `slack` late (never early) so that it can share the
        // worker's wake-up with the delays due about then; the ones before it only watch.
        let slack = delay_slack(delay, self.w.timer.pending());
        let mut now = start;
        loop {
            wake = deadline.min(wake + WATCH_EVERY);
            let within = if wake == deadline {
                slack
            } else {
                WATCH_EVERY / 8
            };
            self.w.timer.sleep_within(now, wake, within).await;
            now = Instant::now();
            let peer = self.client.peer();
            if wake == deadline && peer != Peer::HungUp {
                self.w
                    .stats
                    .borrow_mut()
                    .delay_lateness
                    .record(now.saturating_duration_since(deadline));
            }
            match peer {
                Peer::HungUp => return false,
                Peer::Quiet if wake == deadline => return true,
                Peer::Quiet => {}
                // What the client sent meanwhile is read now, as the delay ends: a pipelined
                // request is then in hand and gets its answer even if shutdown comes first.
                Peer::Sent if wake == deadline => return self.take_sent().await,
                Peer::Sent => {}
            }
        }
    }

    /// Reads what the client sent during a delay (it is waiting in the socket), up to one read
    /// buffer: `false` when that read finds it gone. A TLS record still arriving is waited for
    /// [`PULL_WAIT`] at most, then left to the exchange.
    async fn take_sent(&mut self) -> bool {
        if self.client.buffered().len() >= READ_BUF_BYTES {
            return true;
        }
        let deadline = Instant::now() + PULL_WAIT;
        match self.client.fill(READ_BUF_BYTES, deadline).await {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => is_timeout(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_slack_is_a_32nd_capped_by_how_many_sleeps_are_pending() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // (delay, pending sleeps, slack)
        let cases = [
            // A short delay keeps its 32nd whatever the load: 31 µs of 1 ms.
            (ms(1), 0, us(31) + Duration::from_nanos(250)),
            (ms(1), 5_000, us(31) + Duration::from_nanos(250)),
            // A long one on a quiet worker: capped at 1 ms.
            (ms(300), 0, ms(1)),
            (ms(300), 125, ms(1)),
            // The cap rises 8 µs per pending sleep…
            (ms(300), 250, ms(2)),
            (ms(300), 300, us(2_400)),
            // …to 4 ms at 500…
            (ms(300), 500, ms(4)),
            (ms(500), 1_500, ms(4)),
            (ms(300), usize::MAX, ms(4)),
            // …and never past the 32nd: 100 ms gets at most 3.125 ms.
            (ms(100), 1_500, us(3_125)),
            (Duration::ZERO, 1_500, Duration::ZERO),
        ];
        for (delay, pending, slack) in cases {
            assert_eq!(
                delay_slack(delay, pending),
                slack,
                "{delay:?} with {pending} pending"
            );
        }
    }
}

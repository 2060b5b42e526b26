//! The decide phase: pinning the worker's current fault snapshot for the exchange, consulting
//! its table once, and sleeping for an injected delay while watching the client.
//!
//! It answers nothing: `answer` sends the synthetic response a decision asks for.

use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    fault::{Decision, FaultRule, FaultTable},
    net::{READ_BUF_BYTES, is_timeout},
};

use super::{Session, answer::Synthetic};

/// How far past a delay's deadline the wheel-based read deadline sits (it only guards
/// against a timer that never fires).
const BACKSTOP_SLACK: Duration = Duration::from_secs(1);

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
}

impl Faults {
    /// Compiles the rules and prebuilds each error rule's answers.
    pub(crate) fn compile(rules: &[FaultRule], generation: u64) -> Faults {
        let ids: Vec<Arc<str>> = (0..rules.len())
            .map(|i| Arc::from(crate::control::rules::default_id(i)))
            .collect();
        Faults::compile_with_ids(rules, &ids, generation)
    }

    /// [`Faults::compile`] with the control plane's rule ids (`ids.len() == rules.len()`).
    pub(crate) fn compile_with_ids(
        rules: &[FaultRule],
        ids: &[Arc<str>],
        generation: u64,
    ) -> Faults {
        Faults {
            table: FaultTable::compile(rules),
            specs: rules.iter().map(ToString::to_string).collect(),
            synthetic: Synthetic::compile(rules),
            generation,
            ids: ids.to_vec(),
        }
    }

    /// The compiled table.
    pub(crate) fn table(&self) -> &FaultTable {
        &self.table
    }
}

impl Session<'_> {
    /// Pins the worker's current snapshot for this exchange and decides with it.
    pub(super) fn decide(&mut self) -> Decision {
        self.faults = self.w.table.pin();
        let mut stats = self.w.stats.borrow_mut();
        let mut rng = self.w.rng.borrow_mut();
        let decision = self
            .faults
            .table()
            .decide(&self.url, &mut rng, &mut stats.rules);
        self.ex.decision = decision;
        decision
    }

    /// Sleeps for an injected delay while watching the client: `false` when it hung up.
    /// Bytes it sends meanwhile (a body, a pipelined request) are kept.
    pub(super) async fn delay(&mut self, delay: Duration) -> bool {
        // Counted as "inside a fault" (`phantom_active_faults`) for the whole wait.
        let _active = self.w.active_faults.enter();
        let deadline = Instant::now() + delay;
        let mut elapsed = pin!(self.w.timer.sleep_until(deadline));
        // The wheel deadline only backs up the precise one; it never ends the delay early.
        let backstop = deadline + BACKSTOP_SLACK;
        loop {
            // Bytes that arrive meanwhile are kept, up to one read buffer; past that the client
            // waits on TCP backpressure like any other.
            let room = READ_BUF_BYTES;
            if self.client.buffered().len() >= room {
                elapsed.await;
                return true;
            }
            match self.client.fill_or(room, backstop, &mut elapsed).await {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
                Err(e) if is_timeout(&e) => {
                    elapsed.await;
                    return true;
                }
                Err(_) => return false,
            }
        }
    }
}

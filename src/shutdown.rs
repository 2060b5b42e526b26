//! One worker's shutdown signal: fired once by the server, seen by the connections of that
//! worker (idle ones are woken, their read cancelled and awaited; in-flight ones finish).
//!
//! `!Send`, no atomics: the process-wide stop flag is the server's; this is per core.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

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

    /// A slot for one connection's idle wait (reused after [`Shutdown::release`]).
    pub(crate) fn register(&self) -> usize {
        if let Some(slot) = self.free.borrow_mut().pop() {
            return slot;
        }
        let mut wakers = self.wakers.borrow_mut();
        wakers.push(None);
        wakers.len() - 1
    }

    /// Frees a connection's slot.
    pub(crate) fn release(&self, slot: usize) {
        self.wakers.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
    }

    /// A future for `slot` that completes when shutdown begins.
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

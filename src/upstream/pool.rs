//! The per-core pool of upstream connections: capped per destination, idle ones kept LIFO, and
//! a wait queue for exchanges when every allowed connection is busy.
//!
//! It speaks no HTTP: the exchange decides whether a connection may go back.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use crate::net::{BufPool, Conn};

use super::Dest;

/// Idle connections kept per destination; monoio-transports keeps 1024, nginx `keepalive 32..`.
pub(crate) const MAX_IDLE_PER_DEST: usize = 256;

/// One destination's share of the pool: its idle connections (most recently used last: LIFO
/// keeps them warm), how many connections to it exist (idle and in use), and the exchanges
/// waiting for one.
#[derive(Default)]
struct Slots {
    idle: Vec<Conn>,
    open: usize,
    waiters: VecDeque<Waker>,
}

/// Per-core upstream connections, capped per destination. The cap matters when thousands of
/// delayed requests come due at once: without it they would open thousands of connections
/// (and overflow the upstream's listen queue into 1 s SYN retries) instead of queueing for a
/// few hundred warm ones.
pub(crate) struct Pool {
    dests: HashMap<Dest, Slots>,
    max_per_dest: usize,
}

/// What [`acquire`] hands out.
pub(crate) enum Lease {
    /// A clean idle connection.
    Idle(Conn),
    /// A reserved slot: the caller connects, and reports the connection's end to
    /// [`Pool::closed`] (or [`Pool::checkin`]).
    Connect,
}

impl Pool {
    /// An empty pool allowing `max_per_dest` connections to each destination.
    pub(crate) fn new(max_per_dest: usize) -> Pool {
        Pool {
            dests: HashMap::new(),
            max_per_dest: max_per_dest.max(1),
        }
    }

    /// A lease if one is free now. Idle connections the upstream closed or wrote to meanwhile
    /// are dropped (their buffers to `bufs`, their slots freed) on the way.
    fn try_acquire(&mut self, dest: &Dest, bufs: &mut BufPool) -> Option<Lease> {
        if !self.dests.contains_key(dest) {
            self.dests.insert(dest.clone(), Slots::default());
        }
        let dest = self.dests.get_mut(dest)?;
        while let Some(mut conn) = dest.idle.pop() {
            if conn.is_idle_clean() {
                return Some(Lease::Idle(conn));
            }
            bufs.put(conn.into_buf());
            dest.open -= 1;
        }
        if dest.open < self.max_per_dest {
            dest.open += 1;
            return Some(Lease::Connect);
        }
        None
    }

    /// Connections now carrying an exchange and connections idle in the pool, over every
    /// destination (for `/metrics`).
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.dests.values().fold((0, 0), |(busy, idle), slots| {
            (
                busy + slots.open - slots.idle.len(),
                idle + slots.idle.len(),
            )
        })
    }

    /// Keeps a reusable connection for the next exchange (or closes it when enough are idle).
    /// An idle connection holds no read buffer ([`Conn::park`]).
    pub(crate) fn checkin(&mut self, dest: Dest, mut conn: Conn, bufs: &mut BufPool) {
        let dest = self.dests.entry(dest).or_default();
        if dest.idle.len() < MAX_IDLE_PER_DEST {
            conn.park_into(bufs);
            dest.idle.push(conn);
        } else {
            bufs.put(conn.into_buf());
            dest.open = dest.open.saturating_sub(1);
        }
        wake_one(dest);
    }

    /// A connection to `dest` (leased or reserved) is gone: its slot is free.
    pub(crate) fn closed(&mut self, dest: Dest) {
        if let Some(dest) = self.dests.get_mut(&dest) {
            dest.open = dest.open.saturating_sub(1);
            wake_one(dest);
        }
    }

    /// Empties the pool (shutdown), handing back every idle connection.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Conn> + '_ {
        self.dests.drain().flat_map(|(_, dest)| dest.idle)
    }
}

fn wake_one(dest: &mut Slots) {
    if let Some(waker) = dest.waiters.pop_front() {
        waker.wake();
    }
}

/// Waits for a lease on a connection to `dest` until `deadline`; `None` when none came free.
pub(crate) async fn acquire(
    pool: &RefCell<Pool>,
    bufs: &RefCell<BufPool>,
    dest: Dest,
    deadline: Instant,
) -> Option<Lease> {
    if let Some(lease) = pool.borrow_mut().try_acquire(&dest, &mut bufs.borrow_mut()) {
        return Some(lease);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let wait = Acquire {
        pool,
        bufs,
        dest,
        queued: false,
    };
    monoio::time::timeout(left, wait).await.ok()
}

/// A queued wait for a lease. Dropping it (timeout, client gone) passes any wake-up it may have
/// consumed on to the next waiter, so a freed slot is never left unclaimed.
struct Acquire<'a> {
    pool: &'a RefCell<Pool>,
    bufs: &'a RefCell<BufPool>,
    dest: Dest,
    queued: bool,
}

impl Future for Acquire<'_> {
    type Output = Lease;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Lease> {
        let mut pool = self.pool.borrow_mut();
        if let Some(lease) = pool.try_acquire(&self.dest, &mut self.bufs.borrow_mut()) {
            drop(pool);
            self.queued = false;
            return Poll::Ready(lease);
        }
        if let Some(dest) = pool.dests.get_mut(&self.dest) {
            dest.waiters.push_back(cx.waker().clone());
        }
        drop(pool);
        self.queued = true;
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if self.queued
            && let Ok(mut pool) = self.pool.try_borrow_mut()
        {
            let max = pool.max_per_dest;
            if let Some(dest) = pool.dests.get_mut(&self.dest)
                && (dest.open < max || !dest.idle.is_empty())
            {
                wake_one(dest);
            }
        }
    }
}

//! The per-core pool of upstream connections (capped per destination, with a wait queue),
//! connecting with a deadline, and name
//! resolution for forward mode (cached per core; misses resolved off the worker thread).
//!
//! It speaks no HTTP: `proxy` decides whether a connection may go back to the pool.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    future::Future,
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use monoio::net::TcpStream;

use crate::connection::{BufPool, Conn};

/// Idle connections kept per destination; monoio-transports keeps 1024, nginx `keepalive 32..`.
pub(crate) const MAX_IDLE_PER_DEST: usize = 256;

/// How long a resolved name is trusted (no TTL comes back from `getaddrinfo`).
const DNS_TTL: Duration = Duration::from_secs(60);

/// Names cached per core before the cache is emptied (bounds memory under hostile input).
const MAX_DNS_ENTRIES: usize = 4096;

/// One destination: its idle connections (most recently used last: LIFO keeps them warm), how
/// many connections to it exist (idle and in use), and the exchanges waiting for one.
#[derive(Default)]
struct Dest {
    idle: Vec<Conn>,
    open: usize,
    waiters: VecDeque<Waker>,
}

/// Per-core upstream connections, capped per destination. The cap matters when thousands of
/// delayed requests come due at once: without it they would open thousands of connections
/// (and overflow the upstream's listen queue into 1 s SYN retries) instead of queueing for a
/// few hundred warm ones.
pub(crate) struct Pool {
    dests: HashMap<SocketAddr, Dest>,
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
    fn try_acquire(&mut self, addr: SocketAddr, bufs: &mut BufPool) -> Option<Lease> {
        let dest = self.dests.entry(addr).or_default();
        while let Some(conn) = dest.idle.pop() {
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

    /// Keeps a reusable connection for the next exchange (or closes it when enough are idle).
    pub(crate) fn checkin(&mut self, addr: SocketAddr, conn: Conn, bufs: &mut BufPool) {
        let dest = self.dests.entry(addr).or_default();
        if dest.idle.len() < MAX_IDLE_PER_DEST {
            dest.idle.push(conn);
        } else {
            bufs.put(conn.into_buf());
            dest.open = dest.open.saturating_sub(1);
        }
        wake_one(dest);
    }

    /// A connection to `addr` (leased or reserved) is gone: its slot is free.
    pub(crate) fn closed(&mut self, addr: SocketAddr) {
        if let Some(dest) = self.dests.get_mut(&addr) {
            dest.open = dest.open.saturating_sub(1);
            wake_one(dest);
        }
    }

    /// Empties the pool (shutdown), handing back every idle connection.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Conn> + '_ {
        self.dests.drain().flat_map(|(_, dest)| dest.idle)
    }
}

fn wake_one(dest: &mut Dest) {
    if let Some(waker) = dest.waiters.pop_front() {
        waker.wake();
    }
}

/// Waits for a lease on a connection to `addr` until `deadline`; `None` when none came free.
pub(crate) async fn acquire(
    pool: &RefCell<Pool>,
    bufs: &RefCell<BufPool>,
    addr: SocketAddr,
    deadline: Instant,
) -> Option<Lease> {
    if let Some(lease) = pool.borrow_mut().try_acquire(addr, &mut bufs.borrow_mut()) {
        return Some(lease);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let wait = Acquire {
        pool,
        bufs,
        addr,
        queued: false,
    };
    monoio::time::timeout(left, wait).await.ok()
}

/// A queued wait for a lease. Dropping it (timeout, client gone) passes any wake-up it may have
/// consumed on to the next waiter, so a freed slot is never left unclaimed.
struct Acquire<'a> {
    pool: &'a RefCell<Pool>,
    bufs: &'a RefCell<BufPool>,
    addr: SocketAddr,
    queued: bool,
}

impl Future for Acquire<'_> {
    type Output = Lease;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Lease> {
        let mut pool = self.pool.borrow_mut();
        if let Some(lease) = pool.try_acquire(self.addr, &mut self.bufs.borrow_mut()) {
            drop(pool);
            self.queued = false;
            return Poll::Ready(lease);
        }
        if let Some(dest) = pool.dests.get_mut(&self.addr) {
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
            if let Some(dest) = pool.dests.get_mut(&self.addr)
                && (dest.open < max || !dest.idle.is_empty())
            {
                wake_one(dest);
            }
        }
    }
}

/// Connects to `addr` before `deadline`, with Nagle off (heads and small bodies go out at once).
///
/// # Errors
/// `TimedOut` past the deadline, otherwise the connect error (refused, unreachable).
pub(crate) async fn connect(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A connect has nothing to lose when dropped (no bytes move), so a plain timeout is enough.
    match monoio::time::timeout(left, TcpStream::connect_addr(addr)).await {
        Ok(stream) => {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Forward-mode name cache of one core.
#[derive(Default)]
pub(crate) struct Resolver {
    cache: HashMap<String, (SocketAddr, Instant)>,
}

/// Resolves `authority` (`host`, `host:port`, `[v6]:port`; port 80 by default).
///
/// IP literals and cached names cost no allocation; a miss runs `getaddrinfo` on the blocking
/// pool so the worker keeps serving.
///
/// # Errors
/// `InvalidInput` for a malformed authority, `NotFound` when the name has no address.
pub(crate) async fn resolve(
    resolver: &RefCell<Resolver>,
    authority: &str,
) -> io::Result<SocketAddr> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = split_authority(authority)?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(&(addr, at)) = resolver.borrow().cache.get(authority)
        && at.elapsed() < DNS_TTL
    {
        return Ok(addr);
    }
    let name = host.to_owned();
    let looked_up = monoio::spawn_blocking(move || (name.as_str(), port).to_socket_addrs())
        .await
        .map_err(|_| io::Error::other("resolver thread gone"))??
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let mut resolver = resolver.borrow_mut();
    if resolver.cache.len() >= MAX_DNS_ENTRIES {
        resolver.cache.clear();
    }
    resolver
        .cache
        .insert(authority.to_owned(), (looked_up, Instant::now()));
    Ok(looked_up)
}

/// `host:port` → (host, port); a missing port is 80 (RFC 9110 §4.2.1).
fn split_authority(authority: &str) -> io::Result<(&str, u16)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "invalid authority");
    if authority.is_empty() {
        return Err(invalid());
    }
    let port_sep = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    match port_sep {
        Some(i) => {
            let port = authority[i + 1..].parse().map_err(|_| invalid())?;
            Ok((&authority[..i], port))
        }
        None => Ok((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (&'static str, &'static str, Option<(&'static str, u16)>);

    #[test]
    fn split_authority_rows() {
        let rows: &[Row] = &[
            (
                "host_and_port",
                "example.com:8080",
                Some(("example.com", 8080)),
            ),
            ("default_port", "example.com", Some(("example.com", 80))),
            ("v6_with_port", "[::1]:81", Some(("[::1]", 81))),
            ("v6_default_port", "[::1]", Some(("[::1]", 80))),
            ("bad_port_rejected", "example.com:http", None),
            ("port_overflow_rejected", "example.com:70000", None),
            ("empty_rejected", "", None),
        ];
        for (name, input, want) in rows {
            assert_eq!(split_authority(input).ok(), *want, "{name}");
        }
    }
}

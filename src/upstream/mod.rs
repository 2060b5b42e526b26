//! Upstreams of one core: the connection pool keyed by destination identity, connecting with a
//! deadline, and forward-mode name resolution.
//!
//! It speaks no HTTP: the exchange decides where to go and whether a connection may go back.
//!
//! # Layout
//! - `pool`: capped per-destination pool with a wait queue ([`Dest`] is its key).
//! - `connect`: a connect with a deadline, Nagle off.
//! - `resolve`: the per-core name cache.

mod connect;
mod pool;
mod resolve;

use std::net::SocketAddr;

pub(crate) use connect::connect;
pub(crate) use pool::{Lease, Pool, acquire};
pub(crate) use resolve::{Resolver, resolve};

/// Who a pooled connection talks to: connections are only reused for the same identity. The
/// address today; with TLS, the address plus the server name the session was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Dest {
    /// The upstream's socket address.
    pub(crate) addr: SocketAddr,
}

impl Dest {
    /// A cleartext destination.
    pub(crate) fn plain(addr: SocketAddr) -> Dest {
        Dest { addr }
    }
}

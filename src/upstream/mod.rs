//! Upstreams of one core: the connection pool keyed by destination identity, connecting with a
//! deadline, and forward-mode name resolution.
//!
//! It speaks no HTTP: the exchange decides where to go and whether a connection may go back.
//!
//! # Layout
//! - `pool`: capped per-destination pool with a wait queue ([`Dest`] is its key).
//! - `connect`: a connect with a deadline, Nagle off.
//! - `resolve`: the per-core name cache: every address of a name, re-resolved after a TTL, picked
//!   in turn.

mod connect;
mod pool;
mod resolve;

use std::{net::SocketAddr, rc::Rc};

pub(crate) use connect::{connect, connect_dest};
pub(crate) use pool::{Lease, Pool, acquire};
pub(crate) use resolve::{Pick, Resolver, resolve};

/// Who a pooled connection talks to: connections are only reused for the same identity, the
/// address plus, for TLS, the server name the session was made (and verified) for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Dest {
    /// The upstream's socket address.
    pub(crate) addr: SocketAddr,
    /// `Some(server name)`: TLS with this SNI, verified for this name. An `Rc` the worker (or
    /// the tunnel) already holds, so keying the pool allocates nothing.
    pub(crate) tls: Option<Rc<str>>,
}

impl Dest {
    /// A cleartext destination.
    pub(crate) fn plain(addr: SocketAddr) -> Dest {
        Dest { addr, tls: None }
    }

    /// A TLS destination: `addr`, SNI and certificate name `server_name`.
    pub(crate) fn tls(addr: SocketAddr, server_name: Rc<str>) -> Dest {
        Dest {
            addr,
            tls: Some(server_name),
        }
    }
}

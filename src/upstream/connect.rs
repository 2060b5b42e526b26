//! Connecting to an upstream with a deadline.
//!
//! It neither pools nor resolves: `pool` and `resolve` beside it do.

use std::{io, net::SocketAddr, time::Instant};

use monoio::net::TcpStream;

use crate::net::Transport;

/// Connects to `addr` before `deadline`, with Nagle off (heads and small bodies go out at once).
///
/// # Errors
/// `TimedOut` past the deadline, otherwise the connect error (refused, unreachable).
pub(crate) async fn connect(addr: SocketAddr, deadline: Instant) -> io::Result<Transport> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A connect has nothing to lose when dropped (no bytes move), so a plain timeout is enough.
    match monoio::time::timeout(left, TcpStream::connect_addr(addr)).await {
        Ok(stream) => {
            let transport = Transport::Plain(stream?);
            transport.set_nodelay()?;
            Ok(transport)
        }
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

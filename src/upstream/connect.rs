//! Connecting to an upstream with a deadline, and the TLS handshake for TLS destinations.
//!
//! It neither pools nor resolves: `pool` and `resolve` beside it do.

use std::{io, net::SocketAddr, time::Instant};

use monoio::net::TcpStream;

use crate::{
    config::TlsSettings,
    net::{Transport, tls::TlsStream},
};

use super::Dest;

/// Connects to `dest` before `deadline`: TCP, then for a TLS destination the handshake (SNI and
/// verification for its server name, resumption from the shared session cache).
///
/// # Errors
/// `TimedOut` past the deadline (the connect or the handshake); the connect error; a failed
/// handshake as `InvalidData` wrapping the rustls error (`net::tls::failure_reason` names it), or
/// `UnexpectedEof` when the upstream closed during it; `Unsupported` when no TLS client
/// configuration was loaded (cannot happen: the CLI loads one whenever TLS upstreams are possible).
pub(crate) async fn connect_dest(
    dest: &Dest,
    tls: &TlsSettings,
    deadline: Instant,
) -> io::Result<Transport> {
    let transport = connect(dest.addr, deadline).await?;
    let Some(name) = dest.tls.as_deref() else {
        return Ok(transport);
    };
    let (Transport::Plain(tcp), Some(config)) = (transport, tls.client.as_ref()) else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let config = std::sync::Arc::clone(config);
    let mut stream = TlsStream::client(tcp, config, name, tls.insecure, Vec::new(), Vec::new())?;
    stream.handshake(deadline).await?;
    Ok(Transport::Tls(Box::new(stream)))
}

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

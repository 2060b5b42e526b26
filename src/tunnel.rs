//! `CONNECT` tunnels: bytes both ways between a client and an upstream until both sides close
//! (or neither speaks for `--idle-timeout`).
//!
//! It knows no HTTP: `proxy` answers the `CONNECT` and hands over two connected streams.

use std::{
    cell::Cell,
    future::pending,
    time::{Duration, Instant},
};

use monoio::{
    io::{AsyncWriteRent, CancelableAsyncReadRent, CancelableAsyncWriteRent, Splitable},
    net::TcpStream,
};

use crate::connection::{self, Cancel, is_timeout};

/// Bytes moved each way, and the two buffers back for the pool.
pub(crate) struct Spliced {
    /// Client → upstream.
    pub(crate) sent: u64,
    /// Upstream → client.
    pub(crate) received: u64,
    /// The buffers lent to the two directions.
    pub(crate) bufs: [Vec<u8>; 2],
}

/// Copies both directions concurrently. When one side ends its stream, the other side's write
/// half is shut down (a TCP half-close), and the tunnel ends once both directions are done.
pub(crate) async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    bufs: [Vec<u8>; 2],
    idle: Duration,
) -> Spliced {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let last_activity = Cell::new(Instant::now());
    let [up_buf, down_buf] = bufs;
    let ((sent, up_buf), (received, down_buf)) = monoio::join!(
        pump(client_read, upstream_write, up_buf, idle, &last_activity),
        pump(upstream_read, client_write, down_buf, idle, &last_activity),
    );
    Spliced {
        sent,
        received,
        bufs: [up_buf, down_buf],
    }
}

/// One direction: read, write, repeat; a read times out only when the whole tunnel was idle.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut buf: Vec<u8>,
    idle: Duration,
    last_activity: &Cell<Instant>,
) -> (u64, Vec<u8>)
where
    R: CancelableAsyncReadRent,
    W: CancelableAsyncWriteRent + AsyncWriteRent,
{
    let mut read_canceller = Cancel::default();
    let mut write_canceller = Cancel::default();
    let mut total = 0u64;
    loop {
        buf.clear();
        let deadline = last_activity.get() + idle;
        let read = from.cancelable_read(buf, read_canceller.handle());
        let (res, filled) = connection::until(read, &mut read_canceller, deadline, pending()).await;
        buf = filled;
        match res {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            // The other direction may have been busy meanwhile: only a silent tunnel times out.
            Err(e) if is_timeout(&e) && last_activity.get() + idle > Instant::now() => continue,
            Err(_) => break,
        }
        let now = Instant::now();
        last_activity.set(now);
        let (res, written) =
            connection::write_all(&mut to, &mut write_canceller, buf, now + idle).await;
        buf = written;
        if res.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    (total, buf)
}

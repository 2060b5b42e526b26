//! Connections under monoio: the transport, the buffered connection with deadlines, body relay,
//! the buffer pool and the precise delay timer. No HTTP beyond following a body's framing.
//!
//! # Layout
//! - `transport`: plain TCP or TLS with cancelable reads and writes and the idle check.
//! - [`tls`]: rustls driven sans-IO over the connection's own buffers; TLS material at startup.
//! - `conn`: one read buffer threaded through rent I/O, deadlines on every op.
//! - `relay`: a body from one connection to another.
//! - `bufpool`: the per-core buffer pool.
//! - `timer`: precise deadlines for injected delays (a timerfd per worker).
//! - `watch`: whether an idle client hung up, without an op in flight.

pub(crate) mod bufpool;
pub(crate) mod conn;
pub(crate) mod relay;
pub(crate) mod timer;
pub mod tls;
pub(crate) mod transport;
mod watch;

pub(crate) use bufpool::{BufPool, FramePool};
pub(crate) use conn::{Conn, READ_BUF_BYTES};
pub(crate) use relay::{RelayError, RelayTimeouts, relay};
pub(crate) use transport::{Transport, is_timeout};

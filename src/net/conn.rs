//! A buffered connection with deadlines: one owned read buffer threaded through rent I/O over a
//! [`Transport`], reads and writes that are cancelled and awaited when their deadline passes.
//!
//! Used for clients and upstreams alike. It parses no heads: callers look at [`Conn::buffered`],
//! run a pure parser over it and [`Conn::consume`] what it used.

use std::{future::Future, io, time::Instant};

use monoio::buf::{IoBuf, IoBufMut};

use super::transport::{Cancel, Transport};

/// Initial capacity of a connection's read buffer: most heads and small bodies fit in one read.
/// hyper starts at 8 KiB, pingora at 4 KiB for heads and 64 KiB for bodies.
pub(crate) const READ_BUF_BYTES: usize = 16 * 1024;

/// A transport plus its read buffer; bytes `buf[pos..]` are read but not yet consumed.
pub(crate) struct Conn {
    /// `None` once a tunnel took the transport over.
    transport: Option<Transport>,
    /// Read buffer; `len()` is the end of the read bytes, `capacity()` the room to read into.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    pos: usize,
    /// Cancels this connection's in-flight op when a deadline passes. One per connection and
    /// reused, so arming a deadline allocates nothing; only a cancellation (rare) allocates.
    canceller: Cancel,
}

impl Conn {
    /// Wraps a transport with a (pooled, empty) read buffer.
    pub(crate) fn new(transport: Transport, mut buf: Vec<u8>) -> Conn {
        buf.clear();
        buf.reserve(READ_BUF_BYTES);
        Conn {
            transport: Some(transport),
            buf,
            pos: 0,
            canceller: Cancel::default(),
        }
    }

    /// Gives the buffer back (to the pool), closing the transport.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// Hands the transport over (to a tunnel); the connection is unusable afterwards.
    pub(crate) fn take_transport(&mut self) -> Option<Transport> {
        self.transport.take()
    }

    /// Makes the coming close a reset ([`Transport::reset_on_close`]).
    pub(crate) fn reset_on_close(&self) {
        if let Some(transport) = &self.transport {
            transport.reset_on_close();
        }
    }

    /// Whether an idle connection can carry a new request: still open, nothing unread, and
    /// nothing waiting in the transport ([`Transport::is_idle_clean`]).
    pub(crate) fn is_idle_clean(&mut self) -> bool {
        self.buffered().is_empty()
            && self
                .transport
                .as_mut()
                .is_some_and(Transport::is_idle_clean)
    }

    /// The transport (for its TLS facts), unless a tunnel took it.
    pub(crate) fn transport(&self) -> Option<&Transport> {
        self.transport.as_ref()
    }

    /// The transport, to drive it directly (a tunnel over TLS), `None` once handed over.
    pub(crate) fn transport_mut(&mut self) -> Option<&mut Transport> {
        self.transport.as_mut()
    }

    /// Ends the transport politely (a TLS `close_notify`) before `deadline`; the connection
    /// stays usable only for [`Conn::into_buf`].
    pub(crate) async fn close(&mut self, deadline: Instant) {
        if let Some(transport) = self.transport.as_mut() {
            transport.close(deadline).await;
        }
    }

    /// Bytes read and not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks the first `n` buffered bytes as used.
    ///
    /// # Panics
    /// When `n` exceeds the buffered bytes: a caller bug.
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.pos,
            "consumed more than buffered"
        );
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes after the buffered ones, letting the buffer grow to hold `max_buffered`
    /// unconsumed bytes. Returns how many arrived: `Ok(0)` at end of stream or when the buffer
    /// already holds `max_buffered` bytes (the caller's limit check runs first).
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes first; any socket error.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future mid-read loses the buffer (it stays with the driver
    /// until the kernel finishes). Callers bound it with `deadline` instead of dropping it.
    pub(crate) async fn fill(
        &mut self,
        max_buffered: usize,
        deadline: Instant,
    ) -> io::Result<usize> {
        self.fill_or(max_buffered, deadline, std::future::pending())
            .await
    }

    /// [`Conn::fill`] that also ends (with `Interrupted`, the read cancelled and awaited) when
    /// `stop` completes first: idle connections leave at shutdown without losing bytes.
    ///
    /// # Errors
    /// As [`Conn::fill`], plus `Interrupted`.
    ///
    /// # Cancel safety
    /// As [`Conn::fill`].
    pub(crate) async fn fill_or(
        &mut self,
        max_buffered: usize,
        deadline: Instant,
        stop: impl Future<Output = ()>,
    ) -> io::Result<usize> {
        let Some(transport) = self.transport.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let buffered = self.buf.len() - self.pos;
        if buffered >= max_buffered.max(1) {
            return Ok(0);
        }
        if self.buf.len() == self.buf.capacity() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos.., 0);
                self.buf.truncate(buffered);
                self.pos = 0;
            } else {
                let room = READ_BUF_BYTES.min(max_buffered - buffered);
                self.buf.reserve(room);
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = transport
            .read(buf.slice_mut(len..), &mut self.canceller, deadline, stop)
            .await;
        self.buf = slice.into_inner();
        res
    }

    /// Writes all of `data`, giving it back when done.
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes (a peer that stops reading), `WriteZero`, socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe; bounded by `deadline`.
    pub(crate) async fn write_all<T: IoBuf>(
        &mut self,
        data: T,
        deadline: Instant,
    ) -> (io::Result<()>, T) {
        match self.transport.as_mut() {
            Some(transport) => {
                transport
                    .write_all(data, &mut self.canceller, deadline)
                    .await
            }
            None => (Err(io::ErrorKind::NotConnected.into()), data),
        }
    }

    /// Writes `self.buffered()[..n]` to `dst` and consumes it: relaying without a copy.
    ///
    /// # Errors
    /// As [`Conn::write_all`] on `dst`.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped mid-write, this connection's buffer is lost with the op.
    pub(crate) async fn relay_to(
        &mut self,
        dst: &mut Conn,
        n: usize,
        deadline: Instant,
    ) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let view = buf.slice(self.pos..self.pos + n);
        let (res, view) = dst.write_all(view, deadline).await;
        self.buf = view.into_inner();
        if res.is_ok() {
            self.consume(n);
        }
        res
    }
}

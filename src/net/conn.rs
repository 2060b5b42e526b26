//! A buffered connection with deadlines: one owned read buffer threaded through rent I/O over a
//! [`Transport`], reads and writes that are cancelled and awaited when their deadline passes.
//!
//! Used for clients and upstreams alike. It parses no heads: callers look at [`Conn::buffered`],
//! run a pure parser over it and [`Conn::consume`] what it used.
//!
//! The buffer is sized by what the connection is doing, from the worker's pool: none while it
//! sits idle ([`Conn::park`]), [`WAIT_BUF_BYTES`] for a read that waits (the next head of a
//! keep-alive client, a client watched during a delay: [`Conn::fill_or`]), [`READ_BUF_BYTES`]
//! for reads that move data ([`Conn::fill`]) or a head that did not fit. Ten thousand waiting
//! connections so hold 10 000 small buffers, not 10 000 full ones.

use std::{cell::RefCell, future::Future, io, os::fd::AsRawFd, rc::Rc, time::Instant};

use monoio::buf::{IoBuf, IoBufMut};

use monoio::io::CancelableAsyncReadRent;

use super::{
    BufPool, FramePool,
    transport::{Cancel, Transport, until},
};

/// A connection's read buffer while data moves: most heads and small bodies fit in one read.
/// hyper starts at 8 KiB, pingora at 4 KiB for heads and 64 KiB for bodies.
pub(crate) const READ_BUF_BYTES: usize = 16 * 1024;

/// What a waiting read reads into: a whole head of most clients (curl sends ~80 bytes, browsers
/// 0.4–1.5 KiB); one that does not fit moves to a [`READ_BUF_BYTES`] buffer. HAProxy and nginx
/// likewise hold no full buffer for an idle connection (nginx reads an idle one into 1 KiB,
/// `client_header_buffer_size`).
pub(crate) const WAIT_BUF_BYTES: usize = 1024;

/// Most bytes a lingering close reads and drops before it gives up on a peer that keeps
/// sending (nginx reads for up to `lingering_time`, 30 s; we bound the bytes and the caller the
/// time).
const LINGER_BYTES: usize = 64 * 1024;

/// A transport plus its read buffer; bytes `buf[pos..]` are read but not yet consumed.
pub(crate) struct Conn {
    /// `None` once a tunnel took the transport over.
    transport: Option<Transport>,
    /// Read buffer; `len()` is the end of the read bytes, `capacity()` the room to read into.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    pos: usize,
    /// Where buffers come from and go back to as the connection's needs change.
    pool: Rc<RefCell<BufPool>>,
    /// Where a TLS read's state lives while it runs (see [`Conn::read_more`]).
    frames: Rc<FramePool>,
    /// Cancels this connection's in-flight op when a deadline passes. One per connection and
    /// reused, so arming a deadline allocates nothing; only a cancellation (rare) allocates.
    canceller: Cancel,
}

impl Conn {
    /// Wraps a transport; its read buffer comes from `pool` with the first read.
    pub(crate) fn new(
        transport: Transport,
        pool: &Rc<RefCell<BufPool>>,
        frames: &Rc<FramePool>,
    ) -> Conn {
        Conn {
            transport: Some(transport),
            buf: Vec::new(),
            pos: 0,
            pool: Rc::clone(pool),
            frames: Rc::clone(frames),
            canceller: Cancel::default(),
        }
    }

    /// Gives the buffer back (to the pool), closing the transport.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// Gives the read buffer back to the pool while the connection waits with nothing to read
    /// (an idle pooled upstream connection, a client between requests), or moves the unconsumed
    /// bytes into the smallest buffer that holds them. The next read takes a buffer again.
    pub(crate) fn park(&mut self) {
        let pool = Rc::clone(&self.pool);
        self.park_into(&mut pool.borrow_mut());
    }

    /// [`Conn::park`] for a caller that holds the pool borrowed.
    pub(crate) fn park_into(&mut self, pool: &mut BufPool) {
        if self.pos > 0 {
            self.compact();
        }
        self.buf = pool.shrink(std::mem::take(&mut self.buf));
    }

    /// Moves the unconsumed bytes to the front of the buffer.
    fn compact(&mut self) {
        let buffered = self.buf.len() - self.pos;
        self.buf.copy_within(self.pos.., 0);
        self.buf.truncate(buffered);
        self.pos = 0;
    }

    /// Makes room to read into: a buffer of at least `want` bytes (from the pool, the unconsumed
    /// bytes moved over), or, when the bytes fill it, a full-size one, and past that one grown
    /// (a large head) as far as `max_buffered` unconsumed bytes.
    fn make_room(&mut self, want: usize, max_buffered: usize) {
        if self.pos > 0 && self.buf.len() == self.buf.capacity() {
            self.compact();
        }
        let capacity = self.buf.capacity();
        let want = if capacity == 0 || self.buf.len() < capacity {
            want
        } else if capacity < READ_BUF_BYTES {
            // A full small buffer: a head or body larger than a waiting read expects.
            READ_BUF_BYTES
        } else {
            // Full, compacted, and already full-size: grow (rare, allocates; `pos` is 0 here).
            let room = READ_BUF_BYTES.min(max_buffered - self.buf.len());
            self.buf.reserve(room);
            return;
        };
        if capacity < want {
            if self.pos > 0 {
                self.compact();
            }
            let buf = std::mem::take(&mut self.buf);
            self.buf = self.pool.borrow_mut().regrow(buf, want);
        }
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
    ///
    /// When the peer sent bytes that will not be read (requests pipelined behind a
    /// `connection: close` answer), the close lingers: this side is shut for writing and what
    /// the peer still sends is read and dropped until it closes, up to [`LINGER_BYTES`] or
    /// `deadline`. Closing with unread bytes would make the kernel answer them with a reset,
    /// and a reset destroys the last answer still in the peer's receive queue (nginx's
    /// `lingering_close`, RFC 9112 §9.6).
    pub(crate) async fn close(&mut self, deadline: Instant) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        transport.close(deadline).await;
        if self.buffered().is_empty() && !self.peer_sent_more() {
            return;
        }
        // TLS already said its close_notify; plain TCP half-closes (a FIN, reading goes on).
        if let Some(transport @ Transport::Plain(_)) = self.transport.as_mut() {
            transport.shutdown_write(deadline).await;
        }
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            let n = self.buffered().len();
            self.consume(n);
            dropped += n;
            match self
                .read_more(WAIT_BUF_BYTES, usize::MAX, deadline, std::future::pending())
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Whether bytes wait unread in the socket (a zero-timeout `poll(2)` for `POLLIN`): a
    /// request the peer sent that no read has taken yet (a waiting read holds only
    /// [`WAIT_BUF_BYTES`], and a delay watches without reading).
    pub(crate) fn peer_sent_more(&self) -> bool {
        let fd = match self.transport.as_ref() {
            Some(Transport::Plain(stream)) => stream.as_raw_fd(),
            Some(Transport::Tls(tls)) => tls.raw_fd(),
            None => return false,
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, writable pollfd for the call; a zero timeout never blocks.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        ready > 0 && pfd.revents & libc::POLLIN != 0
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

    /// Reads more bytes after the buffered ones into a full-size buffer ([`READ_BUF_BYTES`]),
    /// letting it grow to hold `max_buffered` unconsumed bytes: reads that move data (bodies,
    /// response heads). Returns how many arrived: `Ok(0)` at end of stream or when the buffer
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
        self.read_more(
            READ_BUF_BYTES,
            max_buffered,
            deadline,
            std::future::pending(),
        )
        .await
    }

    /// A read that waits (for a keep-alive client's next head, for a client watched during a
    /// delay): into a small buffer ([`WAIT_BUF_BYTES`]), moved to a full one only when the bytes
    /// fill it; it also ends (with `Interrupted`, the read cancelled and awaited) when `stop`
    /// completes first, so idle connections leave at shutdown without losing bytes. Otherwise
    /// as [`Conn::fill`].
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
        self.read_more(WAIT_BUF_BYTES, max_buffered, deadline, stop)
            .await
    }

    /// The read behind [`Conn::fill`] and [`Conn::fill_or`]. A plain socket's read runs inline
    /// ([`Transport::read`]'s plain arm, spelled out); a TLS read's larger state runs in a
    /// pooled block. Inline, the TLS arm would size the future of every waiting connection,
    /// plain ones included, for its whole life.
    async fn read_more(
        &mut self,
        want: usize,
        max_buffered: usize,
        deadline: Instant,
        stop: impl Future<Output = ()>,
    ) -> io::Result<usize> {
        if self.transport.is_none() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let buffered = self.buf.len() - self.pos;
        if buffered >= max_buffered.max(1) {
            return Ok(0);
        }
        self.make_room(want, max_buffered);
        let Some(transport) = self.transport.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let into = buf.slice_mut(len..);
        let (res, slice) = match transport {
            Transport::Plain(stream) => {
                let read = stream.cancelable_read(into, self.canceller.handle());
                until(read, &mut self.canceller, deadline, stop).await
            }
            tls @ Transport::Tls(_) => {
                let frames = Rc::clone(&self.frames);
                let read = tls.read(into, &mut self.canceller, deadline, stop);
                frames.boxed(read).await
            }
        };
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

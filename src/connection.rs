//! A buffered monoio TCP connection with deadlines: one owned read buffer threaded through rent
//! I/O, reads and writes that are cancelled and awaited when their deadline passes.
//!
//! Used for clients and upstreams alike. It parses no heads: callers look at [`Conn::buffered`],
//! run a pure parser over it and [`Conn::consume`] what it used. Bodies stream through
//! [`relay`], framed by a [`BodyReader`] (`http`'s framing rules, no copies).

use std::{
    future::Future,
    io,
    os::fd::AsRawFd,
    pin::pin,
    time::{Duration, Instant},
};

use crate::http::{self, BodyKind, ChunkedDecoder};
use monoio::{
    buf::{IoBuf, IoBufMut, Slice},
    io::{CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent, Canceller},
    net::TcpStream,
};

/// Initial capacity of a connection's read buffer: most heads and small bodies fit in one read.
/// hyper starts at 8 KiB, pingora at 4 KiB for heads and 64 KiB for bodies.
pub(crate) const READ_BUF_BYTES: usize = 16 * 1024;

/// `ECANCELED`: what a cancelled io_uring (or legacy) op completes with.
const ECANCELED: i32 = 125;

/// A TCP stream plus its read buffer; bytes `buf[pos..]` are read but not yet consumed.
pub(crate) struct Conn {
    /// `None` once a tunnel took the stream over.
    stream: Option<TcpStream>,
    /// Read buffer; `len()` is the end of the read bytes, `capacity()` the room to read into.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    pos: usize,
    /// Cancels this connection's in-flight op when a deadline passes. One per connection and
    /// reused, so arming a deadline allocates nothing; only a cancellation (rare) allocates.
    canceller: Cancel,
}

/// A reusable [`Canceller`]: arming it for an op allocates nothing; cancelling swaps in the
/// fresh one monoio hands back, without building a placeholder first.
#[derive(Default)]
pub(crate) struct Cancel(Option<Canceller>);

impl Cancel {
    /// A handle for the next op.
    pub(crate) fn handle(&mut self) -> CancelHandle {
        self.0.get_or_insert_with(Canceller::new).handle()
    }

    /// Cancels every op armed with a handle from this canceller.
    fn cancel(&mut self) {
        if let Some(canceller) = self.0.take() {
            self.0 = Some(canceller.cancel());
        }
    }
}

impl Conn {
    /// Wraps a stream with a (pooled, empty) read buffer.
    pub(crate) fn new(stream: TcpStream, mut buf: Vec<u8>) -> Conn {
        buf.clear();
        buf.reserve(READ_BUF_BYTES);
        Conn {
            stream: Some(stream),
            buf,
            pos: 0,
            canceller: Cancel::default(),
        }
    }

    /// Gives the buffer back (to the pool), closing the stream.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// Hands the stream over (to a tunnel); the connection is unusable afterwards.
    pub(crate) fn take_stream(&mut self) -> Option<TcpStream> {
        self.stream.take()
    }

    /// Whether an idle connection can carry a new request: still open, nothing unread, and no
    /// unsolicited bytes waiting in the socket (an upstream that wrote past its response would
    /// otherwise have those bytes taken as the next response). One non-blocking `MSG_PEEK`.
    pub(crate) fn is_idle_clean(&self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        if !self.buffered().is_empty() {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: `byte` is a valid 1-byte buffer for the call; the fd is owned by `stream`,
        // alive for the call; MSG_PEEK | MSG_DONTWAIT neither consumes data nor blocks.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
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
        let Some(stream) = self.stream.as_mut() else {
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
        let read = stream.cancelable_read(buf.slice_mut(len..), self.canceller.handle());
        let (res, slice) = until(read, &mut self.canceller, deadline, stop).await;
        self.buf = slice.into_inner();
        res
    }

    /// Writes all of `data`, giving it back when done.
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes (a client that stops reading), `WriteZero`, socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe; bounded by `deadline`.
    pub(crate) async fn write_all<T: IoBuf>(
        &mut self,
        data: T,
        deadline: Instant,
    ) -> (io::Result<()>, T) {
        match self.stream.as_mut() {
            Some(stream) => write_all(stream, &mut self.canceller, data, deadline).await,
            None => (Err(io::ErrorKind::NotConnected.into()), data),
        }
    }

    /// Writes `self.buffered()[..n]` to `dst` and consumes it: relaying without a copy.
    ///
    /// # Errors
    /// As [`Conn::write_all`] on `dst`.
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

/// Writes all of `data` to `stream` before `deadline`.
pub(crate) async fn write_all<T: IoBuf, S: CancelableAsyncWriteRent>(
    stream: &mut S,
    canceller: &mut Cancel,
    data: T,
    deadline: Instant,
) -> (io::Result<()>, T) {
    let total = data.bytes_init();
    let mut written = 0;
    let mut data = data;
    while written < total {
        let write = stream.cancelable_write(data.slice(written..), canceller.handle());
        let (res, slice): (io::Result<usize>, Slice<T>) =
            until(write, canceller, deadline, std::future::pending()).await;
        data = slice.into_inner();
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), data),
            Ok(n) => written += n,
            Err(e) => return (Err(e), data),
        }
    }
    (Ok(()), data)
}

/// Runs a cancelable op until `deadline` or until `stop` completes; then cancels the op and
/// awaits it (io_uring may still complete it: its result wins). See monoio `docs/en/io-cancel.md`.
pub(crate) async fn until<T, F>(
    op: F,
    canceller: &mut Cancel,
    deadline: Instant,
    stop: impl Future<Output = ()>,
) -> (io::Result<usize>, T)
where
    F: Future<Output = (io::Result<usize>, T)>,
{
    let mut op = pin!(op);
    let sleep = pin!(monoio::time::sleep_until(deadline.into()));
    let stop = pin!(stop);
    let why = monoio::select! {
        done = &mut op => return done,
        _ = sleep => io::ErrorKind::TimedOut,
        _ = stop => io::ErrorKind::Interrupted,
    };
    canceller.cancel();
    match op.await {
        (Err(e), buf) if e.raw_os_error() == Some(ECANCELED) => (Err(why.into()), buf),
        done => done,
    }
}

/// Whether an I/O error is a passed deadline.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

/// Where one body stands while it streams.
pub(crate) struct BodyReader {
    pub(crate) kind: BodyKind,
    /// Bytes left of a `Length` body.
    remaining: u64,
    chunked: ChunkedDecoder,
    /// Payload bytes seen (de-chunked).
    pub(crate) data_len: u64,
    pub(crate) done: bool,
}

impl BodyReader {
    pub(crate) fn new(kind: BodyKind) -> BodyReader {
        let (remaining, done) = match kind {
            BodyKind::Length(n) => (n, n == 0),
            BodyKind::Empty => (0, true),
            BodyKind::Chunked | BodyKind::CloseDelimited => (0, false),
        };
        BodyReader {
            kind,
            remaining,
            chunked: ChunkedDecoder::new(),
            data_len: 0,
            done,
        }
    }

    /// How many leading bytes of `buf` belong to this body (framing included), handing each
    /// run of payload to `data`.
    pub(crate) fn scan(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, http::body::BodyError> {
        if self.done {
            return Ok(0);
        }
        match self.kind {
            BodyKind::Empty => Ok(0),
            BodyKind::Length(_) => {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                data(&buf[..n]);
                self.remaining -= n as u64;
                self.data_len += n as u64;
                self.done = self.remaining == 0;
                Ok(n)
            }
            BodyKind::CloseDelimited => {
                data(buf);
                self.data_len += buf.len() as u64;
                Ok(buf.len())
            }
            BodyKind::Chunked => {
                let mut at = 0;
                while at < buf.len() && !self.chunked.is_done() {
                    let step = self.chunked.decode(&buf[at..])?;
                    let payload = &buf[at + step.data.start..at + step.data.end];
                    if !payload.is_empty() {
                        data(payload);
                        self.data_len += payload.len() as u64;
                    }
                    at += step.consumed;
                    if step.consumed == 0 {
                        break;
                    }
                }
                self.done = self.chunked.is_done();
                Ok(at)
            }
        }
    }
}

/// Why a body stopped short.
pub(crate) enum RelayError {
    /// The sending side closed early, failed or timed out (`true`: timed out).
    Source(bool),
    /// The body broke its chunked framing.
    Framing,
    /// The receiving side failed.
    Destination,
}

/// How long one read from the sender, and one write to the receiver, may take while a body
/// streams: a silent sender and a receiver that stopped reading are different failures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayTimeouts {
    /// Each read from `src`.
    pub(crate) read: Duration,
    /// Each write to `dst`.
    pub(crate) write: Duration,
}

/// Streams the rest of a body from `src` to `dst` until `body` is done. With `dechunk`, only
/// the payload is written (staged through the given buffer); otherwise framing passes through.
pub(crate) async fn relay(
    src: &mut Conn,
    dst: &mut Conn,
    body: &mut BodyReader,
    timeouts: RelayTimeouts,
    mut capture: impl FnMut(&[u8]),
    mut dechunk: Option<&mut Vec<u8>>,
) -> Result<(), RelayError> {
    loop {
        let n = match dechunk.as_deref_mut() {
            Some(staged) => {
                staged.clear();
                let n = body
                    .scan(src.buffered(), |d| {
                        capture(d);
                        staged.extend_from_slice(d);
                    })
                    .map_err(|_| RelayError::Framing)?;
                if !staged.is_empty() {
                    let data = std::mem::take(staged);
                    let (res, data) = dst.write_all(data, Instant::now() + timeouts.write).await;
                    *staged = data;
                    res.map_err(|_| RelayError::Destination)?;
                }
                src.consume(n);
                n
            }
            None => {
                let n = body
                    .scan(src.buffered(), &mut capture)
                    .map_err(|_| RelayError::Source(false))?;
                if n > 0 {
                    src.relay_to(dst, n, Instant::now() + timeouts.write)
                        .await
                        .map_err(|_| RelayError::Destination)?;
                }
                n
            }
        };
        let _ = n;
        if body.done {
            return Ok(());
        }
        match src
            .fill(READ_BUF_BYTES, Instant::now() + timeouts.read)
            .await
        {
            Ok(0) if body.kind == BodyKind::CloseDelimited => {
                body.done = true;
                return Ok(());
            }
            Ok(0) => return Err(RelayError::Source(false)),
            Ok(_) => {}
            Err(e) => return Err(RelayError::Source(is_timeout(&e))),
        }
    }
}

/// A per-core pool of byte buffers in power-of-two size classes, so connections that come and
/// go reuse their memory and a 64-byte scratch never ties up a 16 KiB read buffer.
#[derive(Default)]
pub(crate) struct BufPool {
    /// `classes[i]` holds buffers whose capacity is at least `MIN_CLASS_BYTES << i`.
    classes: [Vec<Vec<u8>>; CLASSES],
}

/// The smallest class; smaller requests are rounded up to it.
const MIN_CLASS_BYTES: usize = 64;

/// Classes from 64 B to 64 KiB; buffers grown past that (a huge head) are freed, not pooled.
const CLASSES: usize = 11;

/// Bytes of idle buffers kept per class and core (a count per class follows from it: 128 Ki
/// 64-byte buffers, 512 read buffers, 128 64 KiB ones); beyond it returned buffers are freed.
/// What sets it: connection churn, where each closing connection returns its buffers.
const MAX_POOLED_BYTES_PER_CLASS: usize = 8 << 20;

impl BufPool {
    /// An empty buffer of at least `min_capacity` (none allocated for 0).
    pub(crate) fn get(&mut self, min_capacity: usize) -> Vec<u8> {
        if min_capacity == 0 {
            return Vec::new();
        }
        let class = Self::class_for(min_capacity);
        match self.classes.get_mut(class).and_then(Vec::pop) {
            Some(buf) => buf,
            None => {
                Vec::with_capacity((MIN_CLASS_BYTES << class.min(CLASSES - 1)).max(min_capacity))
            }
        }
    }

    /// Returns a buffer for reuse (emptied).
    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity < MIN_CLASS_BYTES {
            return;
        }
        // The largest class whose minimum this buffer meets.
        let class = (capacity / MIN_CLASS_BYTES).ilog2() as usize;
        let max_buffers = MAX_POOLED_BYTES_PER_CLASS / (MIN_CLASS_BYTES << class.min(CLASSES));
        if let Some(free) = self.classes.get_mut(class)
            && free.len() < max_buffers
        {
            buf.clear();
            free.push(buf);
        }
    }

    /// The class whose buffers all hold `n` bytes.
    fn class_for(n: usize) -> usize {
        n.div_ceil(MIN_CLASS_BYTES).next_power_of_two().ilog2() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_pool_classes_never_hand_out_too_small_a_buffer() {
        let mut pool = BufPool::default();
        for cap in [64, 100, 4096, 5000, READ_BUF_BYTES, 40_000] {
            pool.put(Vec::with_capacity(cap));
        }
        for want in [1, 64, 65, 4096, 4097, READ_BUF_BYTES, 60_000, 70_000] {
            let buf = pool.get(want);
            assert!(
                buf.capacity() >= want,
                "asked {want}, got {}",
                buf.capacity()
            );
            assert!(buf.is_empty());
        }
        assert_eq!(pool.get(0).capacity(), 0, "zero asks for nothing");
    }

    #[test]
    fn buf_pool_class_is_bounded_in_bytes() {
        let mut pool = BufPool::default();
        for _ in 0..1000 {
            pool.put(Vec::with_capacity(64 * 1024));
        }
        let kept: usize = pool.classes.iter().flatten().map(Vec::capacity).sum();
        assert!(kept <= MAX_POOLED_BYTES_PER_CLASS, "{kept} bytes pooled");
    }

    #[test]
    fn buf_pool_small_request_does_not_take_a_read_buffer() {
        let mut pool = BufPool::default();
        pool.put(Vec::with_capacity(READ_BUF_BYTES));
        assert!(pool.get(64).capacity() < READ_BUF_BYTES);
        assert_eq!(
            pool.get(READ_BUF_BYTES).capacity(),
            READ_BUF_BYTES,
            "the pooled one"
        );
    }
}

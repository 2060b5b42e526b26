//! The byte stream under a connection: plain TCP or TLS ([`TlsStream`]), with reads and writes
//! that end at a deadline by cancelling the op and awaiting it, and the idle-connection check.
//!
//! It knows no HTTP and keeps no plaintext buffer of its own: `conn` owns the read buffer (a
//! TLS stream keeps its ciphertext buffers).

use std::{future::Future, io, os::fd::AsRawFd, pin::pin, time::Instant};

use super::tls::TlsStream;
use monoio::{
    buf::{IoBuf, IoBufMut, Slice},
    io::{CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent, Canceller},
    net::TcpStream,
};

/// `ECANCELED`: what a cancelled io_uring (or legacy) op completes with.
pub(crate) const ECANCELED: i32 = libc::ECANCELED;

/// One connection's byte stream.
pub(crate) enum Transport {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: a session is a few KiB, a plain stream a few bytes).
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Reads into `buf` until `deadline`, or until `stop` completes (the read is then cancelled
    /// and awaited; its result wins if the kernel finished it first).
    ///
    /// # Errors
    /// `TimedOut` past `deadline`, `Interrupted` when `stop` came first, socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future mid-read loses `buf` to the driver. Bound it with
    /// `deadline` and `stop` instead.
    pub(crate) async fn read<T: IoBufMut>(
        &mut self,
        buf: T,
        canceller: &mut Cancel,
        deadline: Instant,
        stop: impl Future<Output = ()>,
    ) -> (io::Result<usize>, T) {
        match self {
            Transport::Plain(stream) => {
                let read = stream.cancelable_read(buf, canceller.handle());
                until(read, canceller, deadline, stop).await
            }
            // The TLS stream cancels (and awaits) its own socket reads.
            Transport::Tls(tls) => tls.read_buf(buf, deadline, stop).await,
        }
    }

    /// Writes all of `data` before `deadline`, giving it back.
    ///
    /// # Errors
    /// `TimedOut` past `deadline` (a peer that stopped reading), `WriteZero`, socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe; bounded by `deadline`.
    pub(crate) async fn write_all<T: IoBuf>(
        &mut self,
        data: T,
        canceller: &mut Cancel,
        deadline: Instant,
    ) -> (io::Result<()>, T) {
        match self {
            Transport::Plain(stream) => write_all(stream, canceller, data, deadline).await,
            Transport::Tls(tls) => {
                // SAFETY: IoBuf's contract: `read_ptr` is valid for `bytes_init` bytes, and
                // `data` is neither moved nor mutated while the slice lives (until the await
                // below completes; `data` is returned after it).
                let bytes =
                    unsafe { std::slice::from_raw_parts(data.read_ptr(), data.bytes_init()) };
                let res = tls.write_all(bytes, deadline).await;
                (res, data)
            }
        }
    }

    /// The TLS session, if this is one (for the trace's TLS facts).
    pub(crate) fn tls(&self) -> Option<&TlsStream> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => Some(tls),
        }
    }

    /// Ends the stream politely: a TLS `close_notify` (best effort, before `deadline`); nothing
    /// for plain TCP (dropping it closes it).
    pub(crate) async fn close(&mut self, deadline: Instant) {
        if let Transport::Tls(tls) = self {
            let _ = tls.close(deadline).await;
        }
    }

    /// Ends this side's sending, keeping its receiving open (a tunnel whose other side finished):
    /// a TCP half-close (`shutdown(SHUT_WR)`) for plain TCP, a `close_notify` for TLS (best
    /// effort, before `deadline`; rustls goes on decrypting what the peer still sends).
    pub(crate) async fn shutdown_write(&mut self, deadline: Instant) {
        match self {
            Transport::Plain(stream) => {
                let _ = monoio::io::AsyncWriteRent::shutdown(stream).await;
            }
            Transport::Tls(tls) => {
                let _ = tls.close(deadline).await;
            }
        }
    }

    /// Whether an idle connection can carry a new request: still open and no unsolicited bytes
    /// waiting (an upstream that wrote past its response would otherwise have those bytes taken
    /// as the next response). Plain: one non-blocking `MSG_PEEK`. TLS: waiting records are read
    /// without blocking and absorbed when they are only session tickets
    /// ([`TlsStream::is_idle_clean`]); a `close_notify` says no.
    pub(crate) fn is_idle_clean(&mut self) -> bool {
        match self {
            Transport::Plain(stream) => socket_is_quiet(stream),
            Transport::Tls(tls) => tls.is_idle_clean(),
        }
    }

    /// Makes closing this connection send RST instead of FIN (`SO_LINGER` on with a zero
    /// timeout): the `reset` fault. Best effort; a failed `setsockopt` leaves a normal close.
    pub(crate) fn reset_on_close(&self) {
        let fd = match self {
            Transport::Plain(stream) => stream.as_raw_fd(),
            Transport::Tls(tls) => tls.raw_fd(),
        };
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the fd is owned by this transport and alive for the call; `linger` is a valid
        // `struct linger` of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// Turns Nagle off, so heads and small bodies go out at once.
    ///
    /// # Errors
    /// As `setsockopt`.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.set_nodelay(true),
            Transport::Tls(tls) => tls.set_nodelay(),
        }
    }
}

/// `true` when the socket is open and has nothing to read right now.
fn socket_is_quiet(stream: &TcpStream) -> bool {
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

/// Writes all of `data` to `stream` before `deadline` (any cancelable writer: a whole stream or
/// a tunnel's write half).
///
/// # Errors
/// As [`Transport::write_all`].
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

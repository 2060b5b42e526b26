//! Watching an idle client without an op in flight: whether it hung up, asked of its socket with
//! one zero-timeout `poll(2)`.
//!
//! An injected delay used to watch the client with a read that had to be cancelled and awaited
//! when the delay ended: a read SQE, a cancel SQE, two CQEs, one more `io_uring_enter` round trip
//! and a fresh `Canceller` (`Rc`) per delayed request. Asking the socket at the delay's timer
//! wake-ups costs one syscall and nothing in the ring. It reads nothing: bytes the client sends
//! meanwhile (a body, a pipelined request) stay in the socket for the exchange to read.

use std::os::fd::AsRawFd;

use super::{Conn, Transport};

impl Conn {
    /// Whether the peer is gone: it shut down its sending side (`POLLRDHUP`, the FIN a hang-up
    /// sends, data still unread or not), or the connection broke (`POLLHUP`, `POLLERR`: a reset).
    /// A connection whose transport a tunnel took counts as gone. Never blocks.
    pub(crate) fn peer_hung_up(&self) -> bool {
        let Some(transport) = self.transport() else {
            return true;
        };
        let fd = match transport {
            Transport::Plain(stream) => stream.as_raw_fd(),
            Transport::Tls(tls) => tls.raw_fd(),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid `pollfd` for the call; the fd is owned by the transport,
        // alive for the call; a zero timeout never blocks.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        n > 0
            && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

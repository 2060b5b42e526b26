//! Watching an idle client without an op in flight: whether it hung up, asked of its socket with
//! one zero-timeout `poll(2)`.
//!
//! An injected delay used to watch the client with a read that had to be cancelled and awaited
//! when the delay ended: a read SQE, a cancel SQE, two CQEs, one more `io_uring_enter` round trip
//! and a fresh `Canceller` (`Rc`) per delayed request. Asking the socket at the delay's timer
//! wake-ups costs one syscall and nothing in the ring. It reads nothing itself: it says whether
//! bytes are waiting, and the caller reads them.

use std::os::fd::AsRawFd;

use super::{Conn, Transport};

/// What a client did while it was not being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Still connected, nothing sent.
    Quiet,
    /// Still connected, bytes waiting in the socket (a body, a pipelined request).
    Sent,
    /// Gone: it shut down its sending side (`POLLRDHUP`, the FIN a hang-up sends, data still
    /// unread or not), or the connection broke (`POLLHUP`, `POLLERR`: a reset).
    HungUp,
}

impl Conn {
    /// Asks the socket what the peer did ([`Peer`]); a connection whose transport a tunnel took
    /// counts as gone. Never blocks.
    pub(crate) fn peer(&self) -> Peer {
        let Some(transport) = self.transport() else {
            return Peer::HungUp;
        };
        let fd = match transport {
            Transport::Plain(stream) => stream.as_raw_fd(),
            Transport::Tls(tls) => tls.raw_fd(),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid `pollfd` for the call; the fd is owned by the transport,
        // alive for the call; a zero timeout never blocks.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if n <= 0 {
            Peer::Quiet
        } else if pfd.revents & gone != 0 {
            Peer::HungUp
        } else if pfd.revents & libc::POLLIN != 0 {
            Peer::Sent
        } else {
            Peer::Quiet
        }
    }
}

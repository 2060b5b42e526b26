//! Streaming one body from one connection to another, framed by an [`http::body::BodyReader`]:
//! framing passes through untouched (or, for an HTTP/1.0 client, only the payload).
//!
//! It decides nothing about the exchange: the caller maps a [`RelayError`] to an answer.

use std::time::{Duration, Instant};

use crate::http::body::BodyReader;

use super::{
    conn::{Conn, READ_BUF_BYTES},
    transport::is_timeout,
};

/// Why a body stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayError {
    /// The sending side closed early, failed or went silent.
    Source {
        /// It went silent for the read timeout (rather than closing or failing).
        timed_out: bool,
    },
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
///
/// # Errors
/// [`RelayError::Framing`] for a body whose chunked framing is broken (in any read, not only
/// the first), the other variants for the side that failed.
///
/// # Cancel safety
/// Not cancel safe (it holds both connections' buffers in turn); bounded by `timeouts`.
pub(crate) async fn relay(
    src: &mut Conn,
    dst: &mut Conn,
    body: &mut BodyReader,
    timeouts: RelayTimeouts,
    mut capture: impl FnMut(&[u8]),
    mut dechunk: Option<&mut Vec<u8>>,
) -> Result<(), RelayError> {
    loop {
        match dechunk.as_deref_mut() {
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
            }
            None => {
                let n = body
                    .scan(src.buffered(), &mut capture)
                    .map_err(|_| RelayError::Framing)?;
                if n > 0 {
                    src.relay_to(dst, n, Instant::now() + timeouts.write)
                        .await
                        .map_err(|_| RelayError::Destination)?;
                }
            }
        }
        if body.done {
            return Ok(());
        }
        match src
            .fill(READ_BUF_BYTES, Instant::now() + timeouts.read)
            .await
        {
            Ok(0) if body.end_at_close() => return Ok(()),
            Ok(0) => return Err(RelayError::Source { timed_out: false }),
            Ok(_) => {}
            Err(e) => {
                return Err(RelayError::Source {
                    timed_out: is_timeout(&e),
                });
            }
        }
    }
}

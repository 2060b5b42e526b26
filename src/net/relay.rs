//! Streaming one body from one connection to another, framed by an [`http::body::BodyReader`]:
//! framing passes through untouched (or, for an HTTP/1.0 client, only the payload).
//!
//! It decides nothing about the exchange: the caller maps a [`RelayError`] to an answer.

use std::{
    num::NonZeroU64,
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{fault::Pace, http::body::BodyReader};

use super::{
    conn::{Conn, READ_BUF_BYTES},
    timer::DelayTimer,
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

/// How a fault plan shapes one relayed body (the pure [`crate::fault::FaultPlan`] resolved
/// against the body's declared length).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Pacing of the bytes.
    pub(crate) pace: Pace,
    /// Wait before each piece the sender delivers after the first.
    pub(crate) chunk_delay: Duration,
    /// Bytes let through before the body is cut (wire bytes, framing included).
    pub(crate) cut_at: Option<u64>,
    /// The declared length, when there is one (dribble piece size).
    pub(crate) len: Option<u64>,
}

impl Shape {
    /// No shaping: every byte at once, no cut.
    pub(crate) const FULL: Shape = Shape {
        pace: Pace::Full,
        chunk_delay: Duration::ZERO,
        cut_at: None,
        len: None,
    };
}

/// How a shaped relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shaped {
    /// The whole body went through.
    Done,
    /// It was cut at [`Shape::cut_at`]: the caller closes (or resets) the receiver.
    Cut {
        /// Body bytes (wire bytes, framing included) written to the receiver before the cut.
        delivered: u64,
    },
}

/// Dribble pieces when the length is unknown.
const UNKNOWN_LEN_PIECE_BYTES: u64 = 16 * 1024;

/// Bandwidth pacing step: bytes per second divided by this (a write every 50 ms)...
const PACE_STEPS_PER_SEC: u64 = 20;

/// ...but never less than one TCP segment's payload (1500-byte MTU, IPv4, timestamps), as a slow
/// link delivers whole segments: below 28 KiB/s the writes come less often instead (1 KiB/s: one
/// segment every 1.4 s), so a throttled connection costs a wake-up per segment, not per tick...
const MIN_PACE_STEP_BYTES: u64 = 1448;

/// ...unless a segment takes longer than this at the rate: then this long's worth.
const MAX_PACE_INTERVAL_SECS: u64 = 2;

/// Longest a paced write may come after its due time, so that the writes of many throttled
/// connections due about then share one timer wake-up. The slack is also at most a 32nd of the
/// piece's own time at the rate, so it only reaches this at slow rates (1 KiB/s: 44 ms per
/// segment), and lateness never accumulates: every due time counts from the body's start, so
/// a late write makes the next one due sooner. Measured for 10 000 connections at 1 KiB/s,
/// 1 ms -> 50 ms: context switches 837/s -> 61/s, proxy CPU 11.3% -> 9.3% of a core.
const MAX_PACE_SLACK: Duration = Duration::from_millis(50);

/// One paced write: how many bytes, whether the cut comes with them, and when they may go.
#[derive(Debug, Clone, Copy)]
struct Piece {
    len: u64,
    cut: bool,
    due: Option<Instant>,
    slack: Duration,
}

/// The schedule of one shaped body (bandwidth pacing or dribbling by the worker's timer, and a
/// cut after some bytes), whether its bytes come from a connection or from memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    shape: Shape,
    start: Instant,
    /// Body bytes written so far.
    sent: u64,
    /// Writes so far.
    pieces: u64,
}

impl Pacer {
    /// The schedule of a body starting now.
    pub(crate) fn new(shape: Shape) -> Pacer {
        Pacer {
            shape,
            start: Instant::now(),
            sent: 0,
            pieces: 0,
        }
    }

    /// The next write of at most `pending` bytes.
    fn next(&self, pending: u64) -> Piece {
        let shape = &self.shape;
        let mut len = match shape.pace {
            Pace::Full => pending,
            Pace::Bandwidth {
                bytes_per_sec,
                burst,
            } => piece_bytes(bytes_per_sec, burst),
            Pace::Dribble { pieces: p, .. } => shape.len.map_or(UNKNOWN_LEN_PIECE_BYTES, |len| {
                len.div_ceil(u64::from(p)).max(1)
            }),
        }
        .min(pending);
        let cut = shape.cut_at.is_some_and(|at| self.sent + len >= at);
        if let Some(at) = shape.cut_at {
            len = len.min(at - self.sent);
        }
        // When this piece may go: bandwidth sends it once its bytes are "due"; a dribble spreads
        // its pieces evenly over the total time.
        let (due, slack) = match shape.pace {
            Pace::Full => (None, Duration::ZERO),
            Pace::Bandwidth { bytes_per_sec, .. } => (
                Some(
                    self.start
                        + Duration::from_nanos(mul_div(
                            self.sent + len,
                            1_000_000_000,
                            bytes_per_sec,
                        )),
                ),
                (Duration::from_nanos(mul_div(len, 1_000_000_000, bytes_per_sec)) / 32)
                    .min(MAX_PACE_SLACK),
            ),
            Pace::Dribble {
                pieces: p,
                total_ns,
            } => {
                let gaps = u64::from(p).saturating_sub(1).max(1);
                let at = mul_div(self.pieces.min(gaps), total_ns, gaps);
                (Some(self.start + Duration::from_nanos(at)), Duration::ZERO)
            }
        };
        Piece {
            len,
            cut,
            due,
            slack,
        }
    }

    /// Sleeps until `piece` may go.
    async fn wait(piece: &Piece, timer: &Rc<DelayTimer>) {
        let now = Instant::now();
        if let Some(due) = piece.due
            && due > now
        {
            timer.sleep_within(now, due, piece.slack).await;
        }
    }

    /// Counts a written piece.
    fn wrote(&mut self, len: u64) {
        self.sent += len;
        self.pieces += 1;
    }

    /// Body bytes written so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes all of `data` to `dst` on the schedule, or as much as the cut allows; gives the
    /// buffer back, and `Ok(true)` when the body was cut.
    ///
    /// # Cancel safety
    /// Not cancel safe; bounded by `write` per write and by the schedule.
    pub(crate) async fn write_from(
        &mut self,
        dst: &mut Conn,
        mut data: Vec<u8>,
        write: Duration,
        timer: &Rc<DelayTimer>,
    ) -> (Result<bool, RelayError>, Vec<u8>) {
        use monoio::buf::IoBuf;
        let mut from = 0usize;
        while from < data.len() {
            let piece = self.next((data.len() - from) as u64);
            Pacer::wait(&piece, timer).await;
            let to = from + piece.len as usize;
            if to > from {
                let (res, slice) = dst
                    .write_all(data.slice(from..to), Instant::now() + write)
                    .await;
                data = slice.into_inner();
                if res.is_err() {
                    return (Err(RelayError::Destination), data);
                }
            }
            self.wrote(piece.len);
            from = to;
            if piece.cut {
                return (Ok(true), data);
            }
        }
        (Ok(false), data)
    }
}

/// [`relay`] with a fault's shaping ([`Pacer`]: no busy waiting, between writes the task sleeps)
/// and a delay between the sender's pieces. Framing passes through, or with `dechunk` only the
/// payload is written (staged through the given buffer); cuts and pacing count the bytes written.
///
/// # Errors
/// As [`relay`].
///
/// # Cancel safety
/// Not cancel safe; bounded by `timeouts` and the shaping's own schedule.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay_shaped(
    src: &mut Conn,
    dst: &mut Conn,
    body: &mut BodyReader,
    timeouts: RelayTimeouts,
    mut capture: impl FnMut(&[u8]),
    timer: &Rc<DelayTimer>,
    shape: Shape,
    mut dechunk: Option<&mut Vec<u8>>,
) -> Result<Shaped, RelayError> {
    let mut pacer = Pacer::new(shape);
    let mut first_read = true;
    loop {
        let n = match dechunk.as_deref_mut() {
            Some(staged) => {
                staged.clear();
                body.scan(src.buffered(), |d| {
                    capture(d);
                    staged.extend_from_slice(d);
                })
            }
            None => body.scan(src.buffered(), &mut capture),
        }
        .map_err(|_| RelayError::Framing)?;
        if n > 0 && !first_read && !shape.chunk_delay.is_zero() {
            timer.sleep_until(Instant::now() + shape.chunk_delay).await;
        }
        first_read = false;
        match dechunk.as_deref_mut() {
            Some(staged) => {
                let data = std::mem::take(staged);
                let (res, data) = pacer.write_from(dst, data, timeouts.write, timer).await;
                *staged = data;
                if res? {
                    return Ok(Shaped::Cut {
                        delivered: pacer.sent(),
                    });
                }
                src.consume(n);
            }
            None => {
                let mut pending = n as u64;
                while pending > 0 {
                    let piece = pacer.next(pending);
                    Pacer::wait(&piece, timer).await;
                    if piece.len > 0 {
                        src.relay_to(dst, piece.len as usize, Instant::now() + timeouts.write)
                            .await
                            .map_err(|_| RelayError::Destination)?;
                    }
                    pacer.wrote(piece.len);
                    pending -= piece.len;
                    if piece.cut {
                        return Ok(Shaped::Cut {
                            delivered: pacer.sent(),
                        });
                    }
                }
            }
        }
        if body.done {
            return Ok(Shaped::Done);
        }
        match src
            .fill(READ_BUF_BYTES, Instant::now() + timeouts.read)
            .await
        {
            Ok(0) if body.end_at_close() => return Ok(Shaped::Done),
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

/// Bytes per paced write of a bandwidth fault: its `burst=` when given (fewer, larger writes for
/// the same average rate: each piece still goes when its last byte is due), else [`pace_step`].
/// A piece relayed from a connection is also at most what one read buffered
/// ([`READ_BUF_BYTES`]), as a default step above that is.
fn piece_bytes(bytes_per_sec: u64, burst: Option<NonZeroU64>) -> u64 {
    burst.map_or_else(|| pace_step(bytes_per_sec), NonZeroU64::get)
}

/// Bytes per paced write at `bytes_per_sec`: a twentieth of a second's worth, at least one
/// segment (or [`MAX_PACE_INTERVAL_SECS`]' worth, when that is less).
fn pace_step(bytes_per_sec: u64) -> u64 {
    (bytes_per_sec / PACE_STEPS_PER_SEC)
        .max(MIN_PACE_STEP_BYTES.min(bytes_per_sec.saturating_mul(MAX_PACE_INTERVAL_SECS)))
        .max(1)
}

/// `a * b / c` without overflow (saturating), `c > 0`.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    u64::try_from(u128::from(a) * u128::from(b) / u128::from(c.max(1))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_step_is_a_tick_or_a_segment() {
        let rows: &[(&str, u64, u64)] = &[
            ("one_byte_per_sec", 1, 2),
            ("below_a_segment_in_two_seconds", 500, 1000),
            ("one_kib_per_sec_one_segment", 1024, 1448),
            ("segment_floor_up_to_28k", 28_000, 1448),
            ("a_twentieth_above", 64 * 1024, 3276),
            ("fast", 10 << 20, (10 << 20) / 20),
        ];
        for (name, rate, want) in rows {
            assert_eq!(pace_step(*rate), *want, "{name}");
        }
    }

    /// One paced bandwidth write: the pacer's state, what it may send, and what it schedules.
    struct PieceRow {
        name: &'static str,
        rate: u64,
        /// 0: no `burst=`.
        burst: u64,
        sent: u64,
        pending: u64,
        len: u64,
        /// After the body's start, in ms.
        due_ms: f64,
        slack_ms: f64,
    }

    #[test]
    fn bandwidth_piece_is_the_burst_due_at_the_rate() {
        let rows = [
            PieceRow {
                name: "default_one_segment",
                rate: 1024,
                burst: 0,
                sent: 0,
                pending: 1 << 16,
                len: 1448,
                due_ms: 1414.0625,
                slack_ms: 44.189453,
            },
            PieceRow {
                name: "burst_4k_at_1k_slack_capped",
                rate: 1024,
                burst: 4096,
                sent: 0,
                pending: 1 << 16,
                len: 4096,
                due_ms: 4000.0,
                slack_ms: 50.0,
            },
            PieceRow {
                name: "burst_due_counts_from_start",
                rate: 32 << 10,
                burst: 32 << 10,
                sent: 32 << 10,
                pending: 1 << 16,
                len: 32 << 10,
                due_ms: 2000.0,
                slack_ms: 31.25,
            },
            PieceRow {
                name: "burst_beyond_pending",
                rate: 32 << 10,
                burst: 32 << 10,
                sent: 0,
                pending: 16 << 10,
                len: 16 << 10,
                due_ms: 500.0,
                slack_ms: 15.625,
            },
            PieceRow {
                name: "burst_below_a_segment",
                rate: 1000,
                burst: 100,
                sent: 0,
                pending: 1 << 16,
                len: 100,
                due_ms: 100.0,
                slack_ms: 3.125,
            },
        ];
        let ns = |ms: f64| Duration::from_nanos((ms * 1e6) as u64);
        for r in rows {
            let mut pacer = Pacer::new(Shape {
                pace: Pace::Bandwidth {
                    bytes_per_sec: r.rate,
                    burst: NonZeroU64::new(r.burst),
                },
                ..Shape::FULL
            });
            pacer.sent = r.sent;
            let piece = pacer.next(r.pending);
            let name = r.name;
            assert_eq!(piece.len, r.len, "{name}");
            assert_eq!(piece.due, Some(pacer.start + ns(r.due_ms)), "{name}");
            assert_eq!(piece.slack, ns(r.slack_ms), "{name}");
            assert!(!piece.cut, "{name}");
        }
    }
}

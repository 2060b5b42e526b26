//! The latency ledger: a record's duration split into what the faults injected, what the
//! upstream took (connect, time to first byte, body) and what the proxy itself added, in whole
//! microseconds such that `duration = injected + upstream + overhead` holds exactly.
//!
//! It reads records; it does not measure anything (the exchange fills the record's fields).

use super::{ArchivedTraceEvent, TraceEvent};

/// One exchange's time, split. Every field is whole µs (each ns field truncated once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// From the first request byte to the last response byte sent.
    pub duration_us: u64,
    /// Every delay the faults added.
    pub injected_us: u64,
    /// Connecting to the upstream (0 on a pooled connection).
    pub upstream_connect_us: u64,
    /// Request sent upstream → first response byte (0 when the upstream was not contacted).
    pub upstream_ttfb_us: u64,
    /// First response byte → last body byte from the upstream.
    pub upstream_body_us: u64,
    /// `upstream_connect_us + upstream_ttfb_us + upstream_body_us`.
    pub upstream_us: u64,
    /// What the proxy added: `duration_us - injected_us - upstream_us` (0 if the parts, measured
    /// on different clocks, add up to more than the whole).
    pub overhead_us: u64,
}

impl Ledger {
    /// The ledger of a record about to be written.
    pub fn of(ev: &TraceEvent<'_>) -> Ledger {
        Ledger::from_ns(
            ev.duration_ns,
            ev.injected_delay_ns,
            ev.upstream_connect_ns,
            ev.upstream_ttfb_ns.unwrap_or(0),
            ev.upstream_body_ns,
        )
    }

    /// The ledger of a record read back from a ring.
    pub fn of_archived(rec: &ArchivedTraceEvent<'_>) -> Ledger {
        Ledger::from_ns(
            rec.duration_ns.to_native(),
            rec.injected_delay_ns.to_native(),
            rec.upstream_connect_ns.to_native(),
            rec.upstream_ttfb_ns.as_ref().map_or(0, |v| v.to_native()),
            rec.upstream_body_ns.to_native(),
        )
    }

    fn from_ns(duration: u64, injected: u64, connect: u64, ttfb: u64, body: u64) -> Ledger {
        let us = |ns: u64| ns / 1_000;
        let (connect, ttfb, body) = (us(connect), us(ttfb), us(body));
        let upstream = connect.saturating_add(ttfb).saturating_add(body);
        let (duration, injected) = (us(duration), us(injected));
        Ledger {
            duration_us: duration,
            injected_us: injected,
            upstream_connect_us: connect,
            upstream_ttfb_us: ttfb,
            upstream_body_us: body,
            upstream_us: upstream,
            overhead_us: duration.saturating_sub(injected.saturating_add(upstream)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::full_event;

    #[test]
    fn ledger_rows_add_up() {
        // (name, duration, injected, connect, ttfb, body, want overhead), all ns.
        type Row = (&'static str, u64, u64, u64, Option<u64>, u64, u64);
        let rows: &[Row] = &[
            (
                "unfaulted",
                1_500_000,
                0,
                100_000,
                Some(900_000),
                200_000,
                300,
            ),
            (
                "delayed",
                101_000_999,
                100_000_000,
                0,
                Some(500_999),
                0,
                500,
            ),
            (
                "synthetic_no_upstream",
                250_120_000,
                250_000_000,
                0,
                None,
                0,
                120,
            ),
            (
                "parts_exceed_whole_clamped",
                1_000_000,
                900_000,
                0,
                Some(200_000),
                0,
                0,
            ),
        ];
        for &(name, duration_ns, injected, connect, ttfb, body, want) in rows {
            let ev = TraceEvent {
                duration_ns,
                injected_delay_ns: injected,
                upstream_connect_ns: connect,
                upstream_ttfb_ns: ttfb,
                upstream_body_ns: body,
                ..full_event()
            };
            let l = Ledger::of(&ev);
            assert_eq!(l.overhead_us, want, "row {name}");
            assert_eq!(
                l.upstream_us,
                l.upstream_connect_us + l.upstream_ttfb_us + l.upstream_body_us,
                "row {name}"
            );
            if want > 0 {
                assert_eq!(
                    l.duration_us,
                    l.injected_us + l.upstream_us + l.overhead_us,
                    "row {name}"
                );
            }
        }
    }
}

//! The validated, immutable configuration every worker shares behind an `Arc`.
//!
//! Built once by `cli` on the main thread, where blocking work (DNS) is allowed; it does no I/O
//! afterwards and knows nothing of monoio.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{fault::FaultRule, http::Limits};

/// Which I/O driver each worker's runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel allows it, epoll otherwise (announced once).
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `--upstream`: origin-form requests are forwarded to one fixed upstream.
    Reverse(Upstream),
    /// No `--upstream`: an HTTP proxy for absolute-form requests and `CONNECT` tunnels.
    Forward,
}

/// The reverse-mode upstream, resolved at startup.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `HOST:PORT` as given; used for URLs and traces.
    pub authority: String,
    /// The addresses it resolved to; connections go to the first that answers.
    pub addrs: Vec<SocketAddr>,
    /// `--upstream-host`: the Host header sent instead of the client's.
    pub host_override: Option<String>,
}

/// Trace settings; absent with `--no-traces`.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// Directory holding `core-<worker>.ring`.
    pub dir: PathBuf,
    /// Size of each ring file in bytes.
    pub capacity_bytes: u64,
    /// Start rings afresh instead of appending after the last record.
    pub reset: bool,
    /// How many bytes of each body are kept in a record.
    pub body_bytes: usize,
}

/// Everything a worker needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address; port 0 picks one port that all workers share.
    pub listen: SocketAddr,
    /// Reverse or forward proxy.
    pub mode: Mode,
    /// Number of worker threads (one runtime and listener each).
    pub workers: usize,
    /// I/O driver choice.
    pub driver: Driver,
    /// Fault rules in the order given.
    pub faults: Vec<FaultRule>,
    /// Seed for the fault RNG (`--seed`), for reproducible runs.
    pub seed: Option<u64>,
    /// `--allow-header-faults`: apply `x-phantom-fault` request headers (always stripped).
    pub allow_header_faults: bool,
    /// `--max-active-faults`: requests per worker inside a holding fault at once.
    pub max_active_faults: Option<usize>,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub grace: Duration,
    /// A client must send a complete head within this time of its first byte.
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this long.
    pub idle_timeout: Duration,
    /// Connecting to, or waiting for a response head from, the upstream.
    pub upstream_timeout: Duration,
    /// Head size and count limits.
    pub limits: Limits,
    /// Connections served at once per worker; beyond it, accepting pauses.
    pub max_connections: usize,
    /// Connections per upstream destination per worker (idle and busy); beyond it, requests
    /// queue for one to come free (until `upstream_timeout`).
    pub max_upstream_connections: usize,
    /// Tracing, unless `--no-traces`.
    pub trace: Option<TraceSettings>,
}

/// Parses `250ms`, `3s`, `2m` or `1h` (a bare number is rejected: units are not guessed).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!("invalid duration {s:?}: expected a number with ms, s, m or h (e.g. 250ms, 3s, 2m)")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| expected())?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(expected()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_rows() {
        let rows: &[(&str, &str, Option<Duration>)] = &[
            ("millis", "250ms", Some(Duration::from_millis(250))),
            ("seconds", "3s", Some(Duration::from_secs(3))),
            ("minutes", "2m", Some(Duration::from_secs(120))),
            ("hours", "1h", Some(Duration::from_secs(3600))),
            ("zero", "0s", Some(Duration::ZERO)),
            ("bare_number_rejected", "250", None),
            ("empty_rejected", "", None),
            ("unknown_unit_rejected", "3d", None),
            ("negative_rejected", "-1s", None),
            ("fraction_rejected", "1.5s", None),
            ("overflow_rejected", "99999999999999999999h", None),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_duration(input).ok(), *want, "{name}");
        }
    }
}

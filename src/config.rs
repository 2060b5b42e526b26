//! The validated, immutable configuration every worker shares behind an `Arc`.
//!
//! Built once by `cli` on the main thread, where blocking work (DNS) is allowed; it does no I/O
//! afterwards and knows nothing of monoio.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rustls::{ClientConfig, ServerConfig};

use crate::{
    ca::Ca, export::ExportSettings, fault::FaultRule, http::Limits, net::tls::RootsSource,
};

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
    /// The addresses it resolved to at startup. Each worker re-resolves the name after a TTL,
    /// spreads new requests over its addresses and tries the next when a connect fails.
    pub addrs: Vec<SocketAddr>,
    /// `--upstream-host`: the Host header sent instead of the client's.
    pub host_override: Option<String>,
    /// `https://`: how to speak TLS to it; `None` for plain HTTP.
    pub tls: Option<UpstreamTls>,
}

/// TLS towards the reverse-mode upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The SNI name and the name its certificate must carry: the `--upstream` host.
    pub server_name: String,
}

/// TLS material, loaded at startup (the main thread) and shared by every worker.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// `--tls-cert`/`--tls-key`: clients speak https to the listener.
    pub listener: Option<Arc<ServerConfig>>,
    /// For TLS towards upstreams (an https upstream, MITM, absolute `https://` requests); `None`
    /// when nothing needs it (a plain reverse upstream).
    pub client: Option<Arc<ClientConfig>>,
    /// What `client` verifies against.
    pub roots: Option<RootsSource>,
    /// `--insecure`: upstream certificates are not verified.
    pub insecure: bool,
    /// `--mitm`: the CA that signs leaves for intercepted CONNECT tunnels.
    pub mitm: Option<Arc<Ca>>,
}

impl TlsSettings {
    /// Banner lines about TLS: the listener, upstream verification (plainly, when off) and how
    /// CONNECT is handled (and how to switch).
    pub fn banner_lines(&self, forward: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if self.listener.is_some() {
            lines.push("https listener (ALPN http/1.1)".to_owned());
        }
        match self.roots {
            Some(RootsSource::Insecure) => lines.push(
                "--insecure: upstream TLS certificates are NOT verified; anyone on the path can \
                 impersonate the upstream"
                    .to_owned(),
            ),
            Some(RootsSource::File) => {
                lines.push("upstream TLS verified against --upstream-ca".to_owned())
            }
            Some(RootsSource::System) => {
                lines.push("upstream TLS verified against the system roots".to_owned())
            }
            Some(RootsSource::Bundled) => lines.push(
                "upstream TLS verified against the bundled Mozilla roots (the system has none)"
                    .to_owned(),
            ),
            None => {}
        }
        if forward {
            match &self.mitm {
                Some(ca) => lines.push(format!(
                    "CONNECT: MITM on, leaves signed by {} (`phantom-fast ca` shows how to trust it)",
                    ca.cert_path().display()
                )),
                None => lines.push(
                    "CONNECT: opaque tunnels (add --mitm to fault and trace HTTPS requests inside them)"
                        .to_owned(),
                ),
            }
        }
        lines
    }
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

/// The control plane's settings (`--admin`, `--admin-token`, `--faults-file`); all off by default.
#[derive(Debug, Clone, Default)]
pub struct ControlSettings {
    /// Where the admin endpoint listens (port 0 picks one; the banner prints it).
    pub admin: Option<SocketAddr>,
    /// Bearer token every mutation must carry (`--admin-token` or `PHANTOM_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// The rules file, reloaded when it changes and on SIGHUP.
    pub faults_file: Option<PathBuf>,
}

/// Everything a worker needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address; port 0 picks one port that all workers share.
    pub listen: SocketAddr,
    /// Reverse or forward proxy.
    pub mode: Mode,
    /// Names whose addresses are known before any lookup (`HOST:PORT` → addresses), seeded
    /// into every worker's name cache and trusted for its TTL as a lookup would be; the
    /// command line sets none (the reverse-mode upstream is seeded from [`Mode::Reverse`]).
    /// Embedders and tests script names no resolver knows with it.
    pub hosts: Vec<(String, Vec<SocketAddr>)>,
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
    /// The admin endpoint and the rules file.
    pub control: ControlSettings,
    /// TLS material: listener, upstream verification, the MITM CA.
    pub tls: TlsSettings,
    /// OTLP export on its own thread (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_*ENDPOINT`).
    pub export: Option<ExportSettings>,
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

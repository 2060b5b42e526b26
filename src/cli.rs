//! The command line: clap definitions (their `///` docs are the `--help` text) turned into a `Config`.
//!
//! Validation that needs no I/O happens in clap's value parsers; resolving the upstream is the only
//! blocking step, done here on the main thread before any worker starts.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, Config, Driver, Mode, TraceSettings, Upstream},
    error::Error,
    fault::FaultRule,
    http::{self, Limits, MAX_HEADERS_CAP},
    trace::{self, Filter, Format, StatusFilter},
};

const AFTER_HELP: &str = "\
Examples:
  phantom-fast --upstream 127.0.0.1:3000 --fault delay:100ms-500ms --fault error:503:0.1:/api
  phantom-fast                      # forward proxy on 127.0.0.1:8080 (HTTP_PROXY=http://127.0.0.1:8080)
  phantom-fast traces --status 5xx --since 10m
  phantom-fast stats";

/// A high-throughput HTTP/1.1 proxy for fault injection under load.
#[derive(Debug, Parser)]
#[command(name = "phantom-fast", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Read traces instead of running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Proxy options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands reading the trace rings.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print trace records of all rings, oldest first (JSON Lines by default).
    Traces(TracesArgs),
    /// Print one JSON object of statistics over the trace records.
    Stats(QueryArgs),
}

/// Options of the proxy itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on (port 0 picks a free port shared by all workers).
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Reverse-proxy to this upstream; without it phantom-fast is a forward proxy (HTTP_PROXY).
    #[arg(short, long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// Host header sent upstream in reverse mode (default: the client's Host).
    #[arg(long, value_name = "HOST", requires = "upstream")]
    pub upstream_host: Option<String>,
    /// Worker threads, one runtime and listener each [default: available cores].
    #[arg(short, long, value_name = "N")]
    pub workers: Option<usize>,
    /// I/O driver: io_uring with epoll fallback, or one forced.
    #[arg(long, value_enum, default_value_t = DriverArg::Auto)]
    pub driver: DriverArg,
    /// Inject a fault; repeatable, evaluated in order once per request.
    ///
    ///   delay:100ms          fixed latency before forwarding
    ///   delay:100ms-500ms    uniform random latency, both ends inclusive
    ///   delay:200ms:/api     only for URLs containing /api
    ///   error:503            answer a synthetic 503 instead of forwarding
    ///   error:503:0.5        the same with probability 0.5
    ///   error:500:0.1:/api   10% 500s on URLs containing /api
    ///
    ///   delay:lognormal(20ms,400ms):0.25:at=head:method=GET
    ///                        25% of GETs: a slow first byte, p50 20 ms, p99 400 ms
    ///   error:429:1in10:set.retry-after=2:header.x-tenant=acme
    ///   bandwidth:64KiB/s  dribble:10,2s  truncate:50%  reset:after=1KiB
    ///   reset  close  hang  garbage  slow-head:2s
    ///
    /// SPEC = KIND[:ARGS][:RATE][:OPTION...][:/FILTER]; the README's "Fault grammar"
    /// has all of it. Durations are ms, s or a bare number of milliseconds. The URL
    /// filter is a substring of the full http://host:port/path?query. Every matching
    /// delay adds up; the first answer that fires (error, reset, close, hang,
    /// garbage) answers the request and no later rule runs.
    #[arg(short, long = "fault", value_name = "SPEC", verbatim_doc_comment)]
    pub faults: Vec<String>,
    /// Seed the fault RNG for reproducible runs (each worker derives its own stream).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Apply the fault spec of each `x-phantom-fault` request header to its own request
    /// (same grammar as --fault). The header is never forwarded; without this flag it is
    /// stripped and ignored.
    #[arg(long)]
    pub allow_header_faults: bool,
    /// At most N requests per worker inside a holding fault at once (delays, hangs); beyond
    /// it a request goes through unfaulted and is counted as an overflow [default: no cap].
    #[arg(long, value_name = "N")]
    pub max_active_faults: Option<usize>,
    /// Time in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = config::parse_duration)]
    pub grace: Duration,
    /// A client must send its whole head within this time (else 408).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = config::parse_duration)]
    pub header_timeout: Duration,
    /// Idle keep-alive client connections are closed after this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = config::parse_duration)]
    pub idle_timeout: Duration,
    /// Connecting to the upstream, or waiting for its response head (else 504).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = config::parse_duration)]
    pub upstream_timeout: Duration,
    /// Largest request or response head (else 431 / 502).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = trace::parse_size)]
    pub max_header_bytes: u64,
    /// Most header fields in a head (else 431 / 502).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_headers: usize,
    /// Connections served at once per worker; beyond it, accepting pauses.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Connections to each upstream per worker (idle and busy); beyond it, requests queue.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_upstream_connections: usize,
    /// Where the per-core trace rings live [default: $XDG_DATA_HOME/phantom-fast/traces].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Do not record traces.
    #[arg(long)]
    pub no_traces: bool,
    /// Size of each per-core ring file.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = trace::parse_capacity)]
    pub trace_capacity: u64,
    /// Start the rings afresh instead of appending after the last record.
    #[arg(long)]
    pub trace_reset: bool,
    /// Bytes of each request and response body kept in its trace record (0: none).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub trace_body_bytes: usize,
}

/// `--driver` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DriverArg {
    /// io_uring, falling back to epoll when the kernel refuses it.
    Auto,
    /// io_uring only.
    Uring,
    /// epoll only.
    Epoll,
}

/// Filters shared by `traces` and `stats`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Directory of the rings [default: $XDG_DATA_HOME/phantom-fast/traces].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Only this status (503) or class (5xx).
    #[arg(long, value_name = "STATUS", value_parser = trace::parse_status_filter)]
    pub status: Option<StatusFilter>,
    /// Only URLs containing this substring.
    #[arg(long, value_name = "SUBSTR")]
    pub url: Option<String>,
    /// Only this method.
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Only requests a fault rule fired on.
    #[arg(long)]
    pub faulted: bool,
    /// Only records younger than this (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    pub since: Option<Duration>,
    /// At most this many records (the newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `traces` options.
#[derive(Debug, Args)]
pub struct TracesArgs {
    /// Filters.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
    pub format: FormatArg,
    /// Keep printing new records as they are written.
    #[arg(long)]
    pub follow: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// One JSON object per line.
    Jsonl,
    /// Aligned columns for people.
    Table,
}

impl FormatArg {
    /// The trace module's format.
    pub fn format(self) -> Format {
        match self {
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Table => Format::Table,
        }
    }
}

impl QueryArgs {
    /// The trace directory and the filter these options describe.
    pub fn into_filter(self) -> (PathBuf, Filter) {
        let dir = self.trace_dir.unwrap_or_else(trace::default_trace_dir);
        let filter = Filter {
            status: self.status,
            url: self.url,
            method: self.method,
            faulted: self.faulted,
            since: self.since,
            limit: self.limit,
        };
        (dir, filter)
    }
}

impl RunArgs {
    /// Validates the options, parses the fault specs and resolves the upstream.
    ///
    /// # Errors
    /// `Error::Fault` for a bad spec, `Error::Config` for unusable values, `Error::Resolve` for an
    /// upstream that does not resolve: all bad input (exit status 2).
    pub fn into_config(self) -> Result<Config, Error> {
        let faults = self
            .faults
            .iter()
            .map(|spec| spec.parse::<FaultRule>())
            .collect::<Result<Vec<_>, _>>()?;
        let workers = match self.workers {
            Some(0) => return Err(Error::Config("--workers must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CAP {
            return Err(Error::Config(format!(
                "--max-headers must be within 1..={MAX_HEADERS_CAP}"
            )));
        }
        let max_head_bytes = usize::try_from(self.max_header_bytes)
            .ok()
            .filter(|n| (1024..=16 << 20).contains(n))
            .ok_or_else(|| {
                Error::Config("--max-header-bytes must be within 1KiB..=16MiB".into())
            })?;
        if self.max_connections == 0 || self.max_upstream_connections == 0 {
            return Err(Error::Config(
                "--max-connections and --max-upstream-connections must be at least 1".into(),
            ));
        }
        let mode = match self.upstream {
            Some(authority) => {
                let addrs: Vec<SocketAddr> = authority
                    .to_socket_addrs()
                    .map_err(|source| Error::Resolve {
                        authority: authority.clone(),
                        source,
                    })?
                    .collect();
                if addrs.is_empty() {
                    let source = std::io::Error::other("no addresses");
                    return Err(Error::Resolve { authority, source });
                }
                Mode::Reverse(Upstream {
                    authority,
                    addrs,
                    host_override: self.upstream_host,
                })
            }
            None => Mode::Forward,
        };
        let trace = if self.no_traces {
            None
        } else {
            Some(TraceSettings {
                dir: self.trace_dir.unwrap_or_else(trace::default_trace_dir),
                capacity_bytes: self.trace_capacity,
                reset: self.trace_reset,
                body_bytes: self.trace_body_bytes,
            })
        };
        Ok(Config {
            listen: self.listen,
            mode,
            workers,
            driver: match self.driver {
                DriverArg::Auto => Driver::Auto,
                DriverArg::Uring => Driver::Uring,
                DriverArg::Epoll => Driver::Epoll,
            },
            faults,
            seed: self.seed,
            allow_header_faults: self.allow_header_faults,
            max_active_faults: self.max_active_faults,
            grace: self.grace,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            upstream_timeout: self.upstream_timeout,
            limits: Limits {
                max_head_bytes,
                max_headers: self.max_headers,
                max_uri_bytes: http::MAX_URI_BYTES.min(max_head_bytes),
            },
            max_connections: self.max_connections,
            max_upstream_connections: self.max_upstream_connections,
            trace,
        })
    }
}

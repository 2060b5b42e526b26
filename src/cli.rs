//! The command line: clap definitions (their `///` docs are the `--help` text) turned into a `Config`.
//!
//! Validation that needs no I/O happens in clap's value parsers; resolving the upstream is the only
//! blocking step, done here on the main thread before any worker starts.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    ca::{self, Ca},
    config::{
        self, Config, ControlSettings, Driver, Mode, TlsSettings, TraceSettings, Upstream,
        UpstreamTls,
    },
    control::client::{self, Call},
    error::Error,
    export::{self, ExportSettings, Start},
    fault::FaultRule,
    http::{self, Limits, MAX_HEADERS_CAP},
    net::tls,
    trace::{self, Filter, Format, MIN_RING_BYTES, RenderOptions, StatusFilter, TimeBound},
};

const AFTER_HELP: &str = "\
Examples:
  phantom-fast --upstream 127.0.0.1:3000 --fault delay:100ms-500ms --fault error:503:0.1:/api
  phantom-fast                      # forward proxy on 127.0.0.1:8080 (HTTP_PROXY=http://127.0.0.1:8080)
  phantom-fast --upstream https://api.internal:8443 --upstream-ca internal-ca.pem
  phantom-fast --mitm --fault error:503:/api   # HTTPS_PROXY=http://127.0.0.1:8080; see `phantom-fast ca`
  phantom-fast traces --status 5xx --since 10m
  phantom-fast traces get 00f067aa0ba902b7
  phantom-fast stats
  phantom-fast --upstream 127.0.0.1:3000 --otlp-endpoint http://127.0.0.1:4318
  phantom-fast --upstream 127.0.0.1:3000 --admin 127.0.0.1:9901   # then: phantom-fast faults list --admin 127.0.0.1:9901";

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
    /// Read or change the live faults of a running proxy through its --admin endpoint.
    Faults(FaultsArgs),
    /// Print the MITM CA certificate (creating it on first use) and how to trust it.
    Ca(CaArgs),
    /// Follow the trace rings and send one span per exchange to an OpenTelemetry collector
    /// (OTLP/HTTP, protobuf) until SIGINT/SIGTERM.
    Export(ExportArgs),
}

/// `ca` options.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory of ca.pem and ca-key.pem [default: $XDG_DATA_HOME/phantom-fast/ca].
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

impl CaArgs {
    /// Loads or creates the CA and describes it: path, PEM, one line per way of trusting it.
    ///
    /// # Errors
    /// `Error::Ca` when the CA cannot be read or created; `Error::Output` when writing fails.
    pub fn run(self, out: &mut impl std::io::Write) -> Result<(), Error> {
        let dir = self.ca_dir.unwrap_or_else(ca::default_ca_dir);
        let ca = Ca::load_or_create(&dir, tls::provider())?;
        out.write_all(ca::describe(&ca).as_bytes())
            .map_err(|source| Error::Output {
                what: "the CA",
                source,
            })
    }
}

/// Options of the proxy itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on (port 0 picks a free port shared by all workers).
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Reverse-proxy to this upstream; without it phantom-fast is a forward proxy (HTTP_PROXY).
    ///
    /// HOST:PORT or http://HOST[:PORT] is plain HTTP; https://HOST[:PORT] (port 443 by default)
    /// is TLS with SNI HOST, verified against the system roots or --upstream-ca.
    #[arg(short, long, value_name = "URL")]
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
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
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
    /// Size of each per-core ring file, reserved on disk at startup (workers × SIZE must fit).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_capacity)]
    pub trace_capacity: u64,
    /// Start the rings afresh instead of appending after the last record (a new file is
    /// renamed over each old one; readers following the rings reopen them).
    #[arg(long)]
    pub trace_reset: bool,
    /// Bytes of each request and response body kept in its trace record (0: none).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub trace_body_bytes: usize,
    /// Serve the admin endpoint here: /metrics, /ready, /live and the /faults API (port 0
    /// picks a free port; the banner prints it). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Every admin request that changes faults must carry `Authorization: Bearer TOKEN`
    /// [default: $PHANTOM_ADMIN_TOKEN].
    #[arg(long, value_name = "TOKEN", requires = "admin")]
    pub admin_token: Option<String>,
    /// Fault rules, one per line (`#` comments; `id=ID SPEC ramp=.. schedule=..`), after any
    /// --fault; reloaded when the file changes and on SIGHUP. A bad edit keeps the live rules.
    #[arg(long, value_name = "FILE")]
    pub faults_file: Option<PathBuf>,
    /// Serve https: the certificate chain (PEM, leaf first; RSA or ECDSA). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify TLS upstreams against these CA certificates (PEM, one or more) instead of the
    /// system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub upstream_ca: Option<PathBuf>,
    /// Do not verify TLS upstreams' certificates (testing only: anyone can impersonate them).
    #[arg(long)]
    pub insecure: bool,
    /// Forward mode: open CONNECT tunnels that start TLS, with a certificate from phantom-fast's
    /// CA, so faults and traces reach each HTTPS request (`phantom-fast ca` shows how to trust
    /// the CA). Without it, CONNECT is an opaque tunnel.
    #[arg(long, conflicts_with = "upstream")]
    pub mitm: bool,
    /// Directory of the MITM CA (ca.pem, ca-key.pem) [default: $XDG_DATA_HOME/phantom-fast/ca].
    #[arg(long, value_name = "DIR", requires = "mitm")]
    pub ca_dir: Option<PathBuf>,
    /// OTLP export from the proxy's own thread.
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// OTLP export options, shared by the proxy and `export`.
#[derive(Debug, Args)]
pub struct OtlpArgs {
    /// Send a span per exchange to this OpenTelemetry collector (OTLP/HTTP base URL;
    /// /v1/traces is appended) [default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else
    /// $OTEL_EXPORTER_OTLP_ENDPOINT]. OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT,
    /// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Spans per OTLP export request at most.
    #[arg(long, value_name = "N", default_value_t = export::DEFAULT_BATCH_SPANS)]
    pub otlp_batch_size: usize,
    /// A batch that is not full is sent after this long.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = config::parse_duration)]
    pub otlp_batch_delay: Duration,
}

impl OtlpArgs {
    /// The export settings from these flags and the `OTEL_*` variables; `None` when no
    /// endpoint is set.
    ///
    /// # Errors
    /// `Error::Config` naming the unusable flag or variable (exit status 2).
    pub fn settings(&self) -> Result<Option<ExportSettings>, Error> {
        ExportSettings::resolve(
            self.otlp_endpoint.as_deref(),
            self.otlp_batch_size,
            self.otlp_batch_delay,
            &|name| std::env::var(name).ok(),
        )
        .map_err(Error::Config)
    }
}

/// `export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Directory of the rings [default: $XDG_DATA_HOME/phantom-fast/traces].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Export only records written from now on, not what the rings already hold.
    #[arg(long)]
    pub skip_backlog: bool,
    /// Where and how.
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

impl ExportArgs {
    /// The settings (an endpoint is required), the trace directory and where to start.
    ///
    /// # Errors
    /// `Error::Config` when no endpoint is set or a setting is unusable.
    pub fn into_parts(self) -> Result<(ExportSettings, PathBuf, Start), Error> {
        let settings = self.otlp.settings()?.ok_or_else(|| {
            Error::Config(
                "export needs --otlp-endpoint URL (or OTEL_EXPORTER_OTLP_ENDPOINT)".into(),
            )
        })?;
        let dir = self.trace_dir.unwrap_or_else(trace::default_trace_dir);
        let start = if self.skip_backlog {
            Start::Newest
        } else {
            Start::Oldest
        };
        Ok((settings, dir, start))
    }
}

/// An `--upstream` value, split: whether it speaks TLS, the host and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https://`.
    pub tls: bool,
    /// The host as written (brackets removed from an IPv6 address).
    pub host: String,
    /// The port, 443 or 80 by default for https:// and http://.
    pub port: u16,
}

impl UpstreamUrl {
    /// `host:port` (IPv6 in brackets), as resolved and shown in URLs and traces.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `--upstream`: `HOST:PORT`, `http://HOST[:PORT]` or `https://HOST[:PORT]` (the scheme
/// case-insensitive, one trailing `/` allowed, no path, no userinfo).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_upstream(s: &str) -> Result<UpstreamUrl, String> {
    let bad = |why: &str| format!("invalid --upstream {s:?}: {why}");
    let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let (tls, rest, default_port) = if lower.starts_with("https://") {
        (true, &s[8..], Some(443))
    } else if lower.starts_with("http://") {
        (false, &s[7..], Some(80))
    } else if s.contains("://") {
        return Err(bad("only http:// and https:// are supported"));
    } else {
        (false, s, None)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?', '#']) {
        return Err(bad(
            "expected HOST:PORT or a scheme with HOST[:PORT], nothing after it",
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number within 0..=65535"))?,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(bad(
                "expected HOST:PORT (or http:// / https:// before the host)",
            ));
        }
    };
    Ok(UpstreamUrl {
        tls,
        host: host.to_owned(),
        port,
    })
}

/// `faults` options: which operation (each takes the endpoint options).
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// The operation.
    #[command(subcommand)]
    pub op: FaultsOp,
}

/// Where the admin endpoint of the running proxy is.
#[derive(Debug, Args)]
pub struct Endpoint {
    /// The proxy's --admin address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Bearer token for changes [default: $PHANTOM_ADMIN_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

/// `faults` operations; each prints what the server answered.
#[derive(Debug, Subcommand)]
pub enum FaultsOp {
    /// Print the live rules as JSON (generation, workers' applied generations, rules).
    List {
        /// Endpoint.
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Replace every rule: specs as arguments, or rules-file lines from --file (`-`: stdin).
    Set {
        /// Fault specs, one rule each.
        #[arg(value_name = "SPEC")]
        specs: Vec<String>,
        /// A rules file to send instead.
        #[arg(long, value_name = "FILE", conflicts_with = "specs")]
        file: Option<PathBuf>,
        /// Endpoint.
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Add one rule.
    Add {
        /// The fault spec, e.g. error:503:0.1:/api.
        #[arg(value_name = "SPEC")]
        spec: String,
        /// Its id (default: the first free one of r1, r2, …).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Probability ramp FROM..TO/DURATION, e.g. 0..0.5/60s.
        #[arg(long, value_name = "RAMP")]
        ramp: Option<String>,
        /// Active windows `START+LENGTH[,START+LENGTH...][/PERIOD]`, e.g. 0s+10s/1m.
        #[arg(long, value_name = "SCHEDULE")]
        schedule: Option<String>,
        /// Endpoint.
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Remove one rule by id, or every rule with --all.
    Rm {
        /// The rule's id.
        #[arg(value_name = "ID", required_unless_present = "all")]
        id: Option<String>,
        /// Remove every rule.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Endpoint.
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Go back to the rules the proxy started with.
    Reset {
        /// Endpoint.
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

impl FaultsArgs {
    /// Sends the operation to the admin endpoint and prints the answer's body on stdout.
    ///
    /// # Errors
    /// `Config` (exit 2) when the server refused the request (4xx) or --file cannot be read,
    /// `Admin` when the endpoint cannot be reached or failed.
    pub fn run(self, out: &mut impl std::io::Write) -> Result<(), Error> {
        let (call, endpoint) = match self.op {
            FaultsOp::List { endpoint } => (Call::list(), endpoint),
            FaultsOp::Set {
                specs,
                file: None,
                endpoint,
            } => (Call::set(&lines(&specs)), endpoint),
            FaultsOp::Set {
                file: Some(path),
                endpoint,
                ..
            } => {
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&path)
                }
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                (Call::set(&text), endpoint)
            }
            FaultsOp::Add {
                spec,
                id,
                ramp,
                schedule,
                endpoint,
            } => {
                let mut line = id
                    .as_ref()
                    .map(|id| format!("id={id} "))
                    .unwrap_or_default();
                line.push_str(&spec);
                for (key, value) in [("ramp", ramp), ("schedule", schedule)] {
                    if let Some(value) = value {
                        line.push_str(&format!(" {key}={value}"));
                    }
                }
                (Call::add(&line), endpoint)
            }
            FaultsOp::Rm { id, endpoint, .. } => (Call::rm(id.as_deref()), endpoint),
            FaultsOp::Reset { endpoint } => (Call::reset(), endpoint),
        };
        let token = endpoint
            .admin_token
            .or_else(|| std::env::var("PHANTOM_ADMIN_TOKEN").ok());
        let (status, body) =
            client::send(&endpoint.admin, token.as_deref(), &call).map_err(|e| {
                Error::Admin(format!(
                    "cannot reach the admin endpoint {}: {e}",
                    endpoint.admin
                ))
            })?;
        out.write_all(&body).map_err(|source| Error::Output {
            what: "the admin answer",
            source,
        })?;
        match status {
            200..=299 => Ok(()),
            400..=499 => Err(Error::Config(format!(
                "the admin endpoint refused the request ({status})"
            ))),
            _ => Err(Error::Admin(format!(
                "the admin endpoint answered {status}"
            ))),
        }
    }
}

/// One rules-file line per spec.
fn lines(specs: &[String]) -> String {
    specs.iter().map(|spec| format!("{spec}\n")).collect()
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
    /// Only this status (503), class (5xx) or range (400-499).
    #[arg(long, value_name = "STATUS", value_parser = parse_status_filter)]
    pub status: Option<StatusFilter>,
    /// Only URLs containing this substring.
    #[arg(long, value_name = "SUBSTR")]
    pub url: Option<String>,
    /// Only this method; repeat for any of several (--method GET --method HEAD).
    #[arg(long = "method", value_name = "METHOD", value_parser = parse_method)]
    pub methods: Vec<String>,
    /// Only requests a fault was applied to.
    #[arg(long)]
    pub faulted: bool,
    /// Only this W3C trace (32 hex digits, as in traceparent).
    #[arg(long, value_name = "HEX32", value_parser = parse_trace_id)]
    pub trace_id: Option<u128>,
    /// Only records that started at or after this: a time ago (10m) or RFC 3339
    /// (2026-01-01T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub since: Option<TimeBound>,
    /// Only records that started at or before this: a time ago (5m) or RFC 3339.
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub until: Option<TimeBound>,
    /// At most this many records (the newest, after --offset).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip the newest N matching records first (with --limit: the next page back in time).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
    /// Newest first.
    #[arg(long)]
    pub reverse: bool,
}

/// How records are shown (`traces` and `traces get`).
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
    pub format: FormatArg,
    /// Leave the bodies out (their lengths stay).
    #[arg(long)]
    pub headers_only: bool,
    /// Show at most N bytes of each body.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub max_body: Option<u64>,
    /// Redact this header's values in the output; repeatable. authorization, cookie, set-cookie
    /// and proxy-authorization are redacted unless --no-redact.
    #[arg(long = "redact-header", value_name = "NAME", value_parser = parse_header_name)]
    pub redact_headers: Vec<String>,
    /// Do not redact the default headers (names given with --redact-header still are).
    #[arg(long)]
    pub no_redact: bool,
}

impl RenderArgs {
    /// The trace module's render options.
    pub fn options(&self) -> RenderOptions {
        let mut redact: Vec<String> = if self.no_redact {
            Vec::new()
        } else {
            RenderOptions::default().redact
        };
        redact.extend(self.redact_headers.iter().cloned());
        RenderOptions {
            headers_only: self.headers_only,
            max_body: self
                .max_body
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            redact,
        }
    }
}

/// `traces` options.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TracesArgs {
    /// Look one record up, or clear the rings.
    #[command(subcommand)]
    pub action: Option<TracesAction>,
    /// Filters.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Rendering.
    #[command(flatten)]
    pub render: RenderArgs,
    /// Keep printing new records as they are written (and reopen rings that are replaced).
    #[arg(long)]
    pub follow: bool,
}

/// `traces get` and `traces clear`.
#[derive(Debug, Subcommand)]
pub enum TracesAction {
    /// Print the record of one span (exit 1 when no ring holds it).
    Get(GetArgs),
    /// Delete every ring of the trace directory (refused while a proxy writes them).
    Clear(ClearArgs),
}

/// `traces get` options.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The span id: 16 hex digits, as `span_id` shows it.
    #[arg(value_name = "SPAN_ID", value_parser = parse_span_id)]
    pub span_id: u64,
    /// Directory of the rings [default: $XDG_DATA_HOME/phantom-fast/traces].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Rendering.
    #[command(flatten)]
    pub render: RenderArgs,
}

/// `traces clear` options.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Directory of the rings [default: $XDG_DATA_HOME/phantom-fast/traces].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Really delete them.
    #[arg(long)]
    pub yes: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// One JSON object per line.
    Jsonl,
    /// One JSON array (not with --follow).
    Json,
    /// Aligned columns for people.
    Table,
}

impl FormatArg {
    /// The trace module's format.
    pub fn format(self) -> Format {
        match self {
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Json => Format::Json,
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
            methods: self.methods,
            faulted: self.faulted,
            trace_id: self.trace_id,
            span_id: None,
            since: self.since,
            until: self.until,
            limit: self.limit,
            offset: self.offset,
            reverse: self.reverse,
        };
        (dir, filter)
    }

    /// `stats`: prints the statistics of the matching records to `out`.
    ///
    /// # Errors
    /// `Error::Trace` when the rings cannot be read or `out` fails.
    pub fn run_stats(self, out: &mut dyn std::io::Write) -> Result<(), Error> {
        let (dir, filter) = self.into_filter();
        trace::write_stats(&dir, &filter, out).map_err(Error::from)
    }
}

impl TracesArgs {
    /// `traces`, `traces get`, `traces clear`: prints to `out` (the count of cleared rings to
    /// stderr).
    ///
    /// # Errors
    /// `Error::Config` for `--format json --follow` (exit 2); `Error::Trace` when the rings
    /// cannot be read, a span is not found, clearing is refused, or `out` fails.
    pub fn run(self, out: &mut dyn std::io::Write) -> Result<(), Error> {
        match self.action {
            Some(TracesAction::Get(get)) => {
                let dir = get.trace_dir.unwrap_or_else(trace::default_trace_dir);
                let (opts, format) = (get.render.options(), get.render.format.format());
                trace::write_record(&dir, get.span_id, &opts, format, out).map_err(Error::from)
            }
            Some(TracesAction::Clear(clear)) => {
                let dir = clear.trace_dir.unwrap_or_else(trace::default_trace_dir);
                let n = trace::clear_traces(&dir, clear.yes)?;
                eprintln!(
                    "phantom-fast: cleared {n} ring file(s) in {}",
                    dir.display()
                );
                Ok(())
            }
            None => {
                if self.follow && self.render.format == FormatArg::Json {
                    return Err(Error::Config(
                        "--format json prints one array and cannot --follow; use --format jsonl"
                            .into(),
                    ));
                }
                let (opts, format) = (self.render.options(), self.render.format.format());
                let (dir, filter) = self.query.into_filter();
                trace::write_traces_with(&dir, &filter, &opts, format, self.follow, out)
                    .map_err(Error::from)
            }
        }
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
        let provider = tls::provider();
        let listener = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load_server_config(cert, key, provider.clone())?),
            _ => None,
        };
        let upstream = self
            .upstream
            .as_deref()
            .map(parse_upstream)
            .transpose()
            .map_err(Error::Config)?;
        let wants_client_tls = upstream.as_ref().is_none_or(|up| up.tls);
        if !wants_client_tls && (self.insecure || self.upstream_ca.is_some()) {
            return Err(Error::Config(
                "--insecure and --upstream-ca apply to TLS upstreams: use --upstream https://..."
                    .into(),
            ));
        }
        let (client, roots) = if wants_client_tls {
            let (client, roots) = tls::load_client_config(
                self.upstream_ca.as_deref(),
                self.insecure,
                provider.clone(),
            )?;
            (Some(client), Some(roots))
        } else {
            (None, None)
        };
        let mitm = if self.mitm {
            let dir = self.ca_dir.unwrap_or_else(ca::default_ca_dir);
            Some(Arc::new(Ca::load_or_create(&dir, provider)?))
        } else {
            None
        };
        let mode = match upstream {
            Some(url) => {
                let authority = url.authority();
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
                    tls: url.tls.then(|| UpstreamTls {
                        server_name: url.host.clone(),
                    }),
                })
            }
            None => Mode::Forward,
        };
        let export = self.otlp.settings()?;
        if export.is_some() && self.no_traces {
            return Err(Error::Config(
                "OTLP export reads the trace rings: drop --no-traces (or the OTLP endpoint)".into(),
            ));
        }
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
            hosts: Vec::new(),
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
            control: ControlSettings {
                admin: self.admin,
                admin_token: self
                    .admin_token
                    .or_else(|| std::env::var("PHANTOM_ADMIN_TOKEN").ok())
                    .filter(|token| !token.is_empty()),
                faults_file: self.faults_file,
            },
            tls: TlsSettings {
                listener,
                client,
                roots,
                insecure: self.insecure,
                mitm,
            },
            export,
        })
    }
}

/// Parses a byte size: a plain number of bytes (`65536`), or a number with a binary unit
/// (`4KiB`, `64MiB`, `1GiB`, `1TiB`; `K`/`M`/`G`/`T` mean the same) or a decimal unit (`KB`,
/// `MB`, `GB`, `TB`), case-insensitive, optional space before the unit.
///
/// # Errors
/// A message naming the input when it is empty, not a number, has an unknown unit, or
/// overflows `u64`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number like 65536 or 64MiB"
        ));
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use KiB, MiB, GiB)"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// [`parse_size`] for `--trace-capacity`: also enforces [`MIN_RING_BYTES`].
///
/// # Errors
/// As [`parse_size`], and when the size is below 64 KiB.
pub fn parse_capacity(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_RING_BYTES {
        return Err(format!(
            "trace capacity {s:?} is below the minimum of 64KiB"
        ));
    }
    Ok(bytes)
}

/// Parses `--status`: a code `100`–`599`, a class `1xx`–`5xx` (`X` accepted) or an inclusive
/// range of codes `400-499`.
///
/// # Errors
/// A message naming the input when it is none of these (or a range runs backwards).
pub fn parse_status_filter(s: &str) -> Result<StatusFilter, String> {
    let err = || {
        format!(
            "invalid status filter {s:?}: expected a code like 503, a class like 5xx or a range like 400-499"
        )
    };
    let code = |t: &str| -> Option<u16> {
        let b = t.trim().as_bytes();
        (b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b.iter().all(u8::is_ascii_digit))
            .then(|| b.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
    };
    if let Some((low, high)) = s.split_once('-') {
        let (low, high) = (code(low).ok_or_else(err)?, code(high).ok_or_else(err)?);
        if low > high {
            return Err(err());
        }
        return Ok(StatusFilter::Range { low, high });
    }
    if let Some(c) = code(s) {
        return Ok(StatusFilter::Exact(c));
    }
    let b = s.trim().as_bytes();
    if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
        return Ok(StatusFilter::Class(b[0] - b'0'));
    }
    Err(err())
}

/// Parses `--since`/`--until`: a duration ago (`10m`, as `--grace` takes) or an RFC 3339 time
/// (`2026-01-01T12:00:00Z`, `2026-01-01T12:00:00.5+02:00`; `t`, `z` and a space as the
/// separator accepted, RFC 3339 §5.6).
///
/// # Errors
/// A message naming the input when it is neither.
pub fn parse_time_bound(s: &str) -> Result<TimeBound, String> {
    if let Ok(ago) = config::parse_duration(s) {
        return Ok(TimeBound::Ago(ago));
    }
    parse_rfc3339(s.trim()).map(TimeBound::At).ok_or_else(|| {
        format!(
            "invalid time {s:?}: expected a duration ago like 10m or an RFC 3339 time like 2026-01-01T12:00:00Z"
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → ns since the Unix epoch (times before 1970 and
/// leap seconds refused).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| {
            digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day == 0
        || day > month_days[usize::try_from(month - 1).ok()?]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut frac_ns = 0u64;
    if sep(at, b".") {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        for i in 0..9 {
            frac_ns = frac_ns * 10 + if i < digits { num(at + 1 + i, 1)? } else { 0 };
        }
        at += 1 + digits;
    }
    let offset_secs: i64 = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::try_from(h * 3600 + m * 60).ok()?;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = i64::try_from(era * 146_097 + doe).ok()? - 719_468;
    let secs =
        days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()? - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac_ns)
}

/// Hex digits of exactly `len` characters as a number (either case).
fn parse_hex_id(s: &str, len: usize) -> Option<u128> {
    let t = s.trim();
    (t.len() == len && t.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(t, 16).ok())
        .flatten()
}

/// Parses `--trace-id`: 32 hex digits.
///
/// # Errors
/// A message naming the input otherwise.
pub fn parse_trace_id(s: &str) -> Result<u128, String> {
    parse_hex_id(s, 32).ok_or_else(|| {
        format!(
            "invalid trace id {s:?}: expected 32 hex digits like 4bf92f3577b34da6a3ce929d0e0e4736"
        )
    })
}

/// Parses a span id: 16 hex digits.
///
/// # Errors
/// A message naming the input otherwise.
pub fn parse_span_id(s: &str) -> Result<u64, String> {
    parse_hex_id(s, 16)
        .and_then(|id| u64::try_from(id).ok())
        .ok_or_else(|| {
            format!("invalid span id {s:?}: expected 16 hex digits like 00f067aa0ba902b7")
        })
}

/// RFC 9110 §5.6.2 `tchar`: the bytes of a token (method, header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Parses `--method`: an HTTP method token (RFC 9110 §9.1), kept as given.
///
/// # Errors
/// A message naming the input when it is not a token.
pub fn parse_method(s: &str) -> Result<String, String> {
    if is_token(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid method {s:?}: expected a method token like GET or POST"
        ))
    }
}

/// Parses `--redact-header`: a header field name (RFC 9110 §5.1), lower-cased.
///
/// # Errors
/// A message naming the input when it is not a token.
pub fn parse_header_name(s: &str) -> Result<String, String> {
    if is_token(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid header name {s:?}: expected a field name like authorization"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_rows() {
        let ok = |tls, host: &str, port| {
            Ok(UpstreamUrl {
                tls,
                host: host.into(),
                port,
            })
        };
        let rows: &[(&str, &str, Result<UpstreamUrl, ()>)] = &[
            (
                "bare_host_port_is_plain",
                "127.0.0.1:3000",
                ok(false, "127.0.0.1", 3000),
            ),
            (
                "http_with_port",
                "http://origin:8080",
                ok(false, "origin", 8080),
            ),
            (
                "http_default_port",
                "http://origin",
                ok(false, "origin", 80),
            ),
            (
                "https_default_port",
                "https://api.example.com",
                ok(true, "api.example.com", 443),
            ),
            (
                "https_with_port",
                "https://api.example.com:8443",
                ok(true, "api.example.com", 8443),
            ),
            (
                "https_trailing_slash",
                "https://api.example.com/",
                ok(true, "api.example.com", 443),
            ),
            ("scheme_case_insensitive", "HTTPS://h:1", ok(true, "h", 1)),
            ("ipv6_https", "https://[::1]:8443", ok(true, "::1", 8443)),
            ("ipv6_default_port", "https://[::1]", ok(true, "::1", 443)),
            ("bare_host_needs_port", "origin", Err(())),
            ("path_rejected", "https://h/api", Err(())),
            ("userinfo_rejected", "https://u@h", Err(())),
            ("other_scheme_rejected", "ftp://h:21", Err(())),
            ("bad_port_rejected", "https://h:99999", Err(())),
            ("empty_host_rejected", "https://:443", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_upstream(input).map_err(|_| ()), *want, "{name}");
        }
        assert_eq!(
            parse_upstream("https://[::1]").unwrap().authority(),
            "[::1]:443"
        );
    }
    use crate::trace::DEFAULT_CAPACITY_BYTES;

    #[test]
    fn parse_size_rows() {
        let rows: &[(&str, &str, Result<u64, ()>)] = &[
            ("plain_bytes", "65536", Ok(65536)),
            ("kib", "4KiB", Ok(4096)),
            ("mib", "64MiB", Ok(64 << 20)),
            ("mib_512", "512MiB", Ok(512 << 20)),
            ("gib", "1GiB", Ok(1 << 30)),
            ("short_unit", "64M", Ok(64 << 20)),
            ("lower_case", "64mib", Ok(64 << 20)),
            ("space_before_unit", "64 MiB", Ok(64 << 20)),
            ("decimal_unit", "1MB", Ok(1_000_000)),
            ("bytes_unit", "100B", Ok(100)),
            ("empty", "", Err(())),
            ("no_number", "MiB", Err(())),
            ("negative", "-1", Err(())),
            ("fraction", "1.5GiB", Err(())),
            ("unknown_unit", "64XB", Err(())),
            ("overflow", "99999999999TiB", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_size(input).map_err(|_| ()), *want, "row {name}");
        }
    }

    #[test]
    fn parse_capacity_rows() {
        let rows: &[(&str, &str, Result<u64, ()>)] = &[
            ("minimum", "64KiB", Ok(65536)),
            ("default", "64MiB", Ok(DEFAULT_CAPACITY_BYTES)),
            ("below_minimum", "4KiB", Err(())),
            ("not_a_size", "lots", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_capacity(input).map_err(|_| ()), *want, "row {name}");
        }
    }

    #[test]
    fn parse_status_filter_rows() {
        let rows: &[(&str, &str, Result<StatusFilter, ()>)] = &[
            ("exact", "503", Ok(StatusFilter::Exact(503))),
            ("class", "5xx", Ok(StatusFilter::Class(5))),
            ("class_upper", "4XX", Ok(StatusFilter::Class(4))),
            ("lowest", "100", Ok(StatusFilter::Exact(100))),
            ("too_high", "600", Err(())),
            ("six_class", "6xx", Err(())),
            ("two_digits", "50", Err(())),
            ("mixed", "5x3", Err(())),
            ("word", "error", Err(())),
            ("empty", "", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(
                parse_status_filter(input).map_err(|_| ()),
                *want,
                "row {name}"
            );
        }
    }

    #[test]
    fn parse_status_range_rows() {
        let rows: &[(&str, &str, Result<StatusFilter, ()>)] = &[
            (
                "range",
                "400-499",
                Ok(StatusFilter::Range {
                    low: 400,
                    high: 499,
                }),
            ),
            (
                "one_code_range",
                "503-503",
                Ok(StatusFilter::Range {
                    low: 503,
                    high: 503,
                }),
            ),
            ("backwards", "499-400", Err(())),
            ("open_end", "400-", Err(())),
            ("class_in_range", "4xx-5xx", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(
                parse_status_filter(input).map_err(|_| ()),
                *want,
                "row {name}"
            );
        }
    }

    #[test]
    fn parse_time_bound_rows() {
        const S: u64 = 1_000_000_000;
        let rows: &[(&str, &str, Result<TimeBound, ()>)] = &[
            ("ago", "10m", Ok(TimeBound::Ago(Duration::from_secs(600)))),
            ("epoch", "1970-01-01T00:00:00Z", Ok(TimeBound::At(0))),
            (
                "utc",
                "2026-01-01T00:00:00Z",
                Ok(TimeBound::At(1_767_225_600 * S)),
            ),
            (
                "fraction",
                "2026-01-01T00:00:00.123456789Z",
                Ok(TimeBound::At(1_767_225_600 * S + 123_456_789)),
            ),
            (
                "short_fraction",
                "2026-01-01T00:00:00.5Z",
                Ok(TimeBound::At(1_767_225_600 * S + 500_000_000)),
            ),
            (
                "offset",
                "2026-01-01T02:00:00+02:00",
                Ok(TimeBound::At(1_767_225_600 * S)),
            ),
            (
                "negative_offset",
                "2025-12-31T23:00:00-01:00",
                Ok(TimeBound::At(1_767_225_600 * S)),
            ),
            (
                "lower_case_space",
                "2026-01-01 00:00:00z",
                Ok(TimeBound::At(1_767_225_600 * S)),
            ),
            (
                "leap_day",
                "2000-02-29T00:00:00Z",
                Ok(TimeBound::At(951_782_400 * S)),
            ),
            ("not_leap", "1900-02-29T00:00:00Z", Err(())),
            ("no_zone", "2026-01-01T00:00:00", Err(())),
            ("bad_month", "2026-13-01T00:00:00Z", Err(())),
            ("before_epoch", "1969-12-31T23:59:59Z", Err(())),
            ("bare_number", "10", Err(())),
            ("word", "yesterday", Err(())),
        ];
        for (name, input, want) in rows {
            assert_eq!(parse_time_bound(input).map_err(|_| ()), *want, "row {name}");
        }
    }

    #[test]
    fn parse_ids_and_tokens_rows() {
        assert_eq!(
            parse_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"),
            Ok(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        assert!(parse_trace_id("4bf92f3577b34da6").is_err());
        assert!(parse_trace_id("zz").is_err());
        assert_eq!(parse_span_id("00F067AA0BA902B7"), Ok(0x00f0_67aa_0ba9_02b7));
        assert!(parse_span_id("00f067aa0ba902b").is_err());
        assert!(parse_span_id("+0f067aa0ba902b7").is_err());
        assert_eq!(parse_method("get"), Ok("get".to_owned()));
        assert!(parse_method("G T").is_err());
        assert_eq!(parse_header_name("X-Api-Key"), Ok("x-api-key".to_owned()));
        assert!(parse_header_name("a:b").is_err());
    }
}

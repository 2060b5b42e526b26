//! OTLP export: follows the trace rings and sends one SERVER span per exchange to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf), on its own thread inside the proxy
//! (`--otlp-endpoint`) or as the `export` subcommand.
//!
//! It never touches a worker: it reads the rings the workers write, so a collector that is down
//! or slow costs the proxy nothing. Memory is bounded by one batch: while the collector cannot
//! take a batch the exporter holds it and stops reading, the rings are the buffer, and records a
//! ring overwrites before they were read are counted ([`ExportStats`]) and reported on stderr.
//!
//! # Files
//! - `source.rs`: the rings of a directory, followed as they grow.
//! - `span.rs`: one record → one span (semantic conventions, faults, status).
//! - `client.rs`: endpoint resolution (`OTEL_EXPORTER_OTLP_*`), one POST, retry rules.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{InstrumentationScope, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;

use crate::error::Error;

mod client;
mod source;
mod span;

pub use client::{Client, DEFAULT_TIMEOUT, Endpoint, MAX_RETRY_AFTER, Sent};
pub use source::{RingSource, Start};
pub use span::{FAULT_EVENT, span_of};

/// Default `--otlp-batch-size`: spans per export request (the OpenTelemetry SDKs' 512).
pub const DEFAULT_BATCH_SPANS: usize = 512;
/// Default `--otlp-batch-delay`: a batch that is not full is sent after this long.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);
/// A batch is also sent when its encoded spans reach this size (collectors commonly refuse
/// requests above 4 MiB).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// How often the rings are looked at when there is nothing to send.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often the trace directory is listed for new rings.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// First wait before retrying a batch; doubles on each failure…
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// …up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After the stop signal: how long the exporter keeps sending what is left before giving up.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Lost-record reports on stderr are at most this frequent.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Semantic-conventions version the attribute names follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.27.0";

/// Everything the exporter needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSettings {
    /// Where spans go.
    pub endpoint: Endpoint,
    /// Resource attributes: `service.name` (`OTEL_SERVICE_NAME`, default `phantom-fast`),
    /// `service.version`, `host.name`, and `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    /// Spans per export request at most.
    pub batch_spans: usize,
    /// A batch that is not full is sent after this long.
    pub batch_delay: Duration,
}

impl ExportSettings {
    /// Resolves the endpoint (see [`Endpoint::resolve`]) and the resource; `None` when no
    /// endpoint is set. `env` looks a variable up.
    ///
    /// # Errors
    /// A message naming the flag or variable that is unusable.
    pub fn resolve(
        flag: Option<&str>,
        batch_spans: usize,
        batch_delay: Duration,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportSettings>, String> {
        let Some(endpoint) = Endpoint::resolve(flag, env)? else {
            return Ok(None);
        };
        if batch_spans == 0 {
            return Err("--otlp-batch-size must be at least 1".into());
        }
        if batch_delay.is_zero() {
            return Err("--otlp-batch-delay must be above 0".into());
        }
        Ok(Some(ExportSettings {
            endpoint,
            resource: resource_attributes(env)?,
            batch_spans,
            batch_delay,
        }))
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-decoded), then `service.name` from
/// `OTEL_SERVICE_NAME` (which wins), `service.version` and `host.name` unless given.
fn resource_attributes(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let set = |attrs: &mut Vec<(String, String)>, key: &str, value: String| {
        attrs.retain(|(k, _)| k != key);
        attrs.push((key.to_owned(), value));
    };
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {item:?}: expected key=value"))?;
            let value = percent_decoded(value.trim())
                .ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {item:?}: bad % escape"))?;
            set(&mut attrs, key.trim(), value);
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.trim().is_empty()) {
        set(&mut attrs, "service.name", name.trim().to_owned());
    }
    let mut default = |key: &str, value: Option<String>| {
        if let Some(value) = value
            && attrs.iter().all(|(k, _)| k != key)
        {
            attrs.push((key.to_owned(), value));
        }
    };
    default("service.name", Some("phantom-fast".to_owned()));
    default(
        "service.version",
        Some(env!("CARGO_PKG_VERSION").to_owned()),
    );
    default(
        "host.name",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
    );
    Ok(attrs)
}

fn percent_decoded(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The exporter's counters, shared with whoever reports them (stderr at exit, `/metrics`).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans the collector refused (a non-retryable answer, or an OTLP partial success).
    pub spans_rejected: AtomicU64,
    /// Trace records the rings overwrote (or tore) before the exporter could read them.
    pub records_lost: AtomicU64,
    /// Spans still held or unread when the exporter had to stop.
    pub spans_unsent: AtomicU64,
    /// Export requests the collector accepted.
    pub requests_sent: AtomicU64,
    /// Export requests retried (429/502/503/504 or no answer).
    pub retries: AtomicU64,
}

impl ExportStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Appends the exporter's metrics in the Prometheus text format 0.0.4:
    /// `phantom_export_spans_total{result}` (exported, rejected, unsent),
    /// `phantom_export_records_lost_total`, `phantom_export_requests_total` and
    /// `phantom_export_retries_total`.
    pub fn encode_metrics(&self, out: &mut String) {
        let get = Self::get;
        let _ = write!(
            out,
            "# HELP phantom_export_spans_total Spans handed to the OTLP collector, by result.\n\
             # TYPE phantom_export_spans_total counter\n\
             phantom_export_spans_total{{result=\"exported\"}} {}\n\
             phantom_export_spans_total{{result=\"rejected\"}} {}\n\
             phantom_export_spans_total{{result=\"unsent\"}} {}\n\
             # HELP phantom_export_records_lost_total Trace records overwritten in a ring before they were exported.\n\
             # TYPE phantom_export_records_lost_total counter\n\
             phantom_export_records_lost_total {}\n\
             # HELP phantom_export_requests_total OTLP export requests the collector accepted.\n\
             # TYPE phantom_export_requests_total counter\n\
             phantom_export_requests_total {}\n\
             # HELP phantom_export_retries_total OTLP export requests retried (429, 502, 503, 504, no answer).\n\
             # TYPE phantom_export_retries_total counter\n\
             phantom_export_retries_total {}\n",
            get(&self.spans_exported),
            get(&self.spans_rejected),
            get(&self.spans_unsent),
            get(&self.records_lost),
            get(&self.requests_sent),
            get(&self.retries),
        );
    }

    /// One line for stderr at exit.
    pub fn summary(&self) -> String {
        let get = Self::get;
        format!(
            "export: {} spans exported in {} requests ({} retries), {} rejected by the collector, {} records lost in the rings, {} unsent at exit",
            get(&self.spans_exported),
            get(&self.requests_sent),
            get(&self.retries),
            get(&self.spans_rejected),
            get(&self.records_lost),
            get(&self.spans_unsent),
        )
    }
}

/// What happened to the batch in hand.
enum Flushed {
    /// Sent (accepted or refused for good): the batch is empty again.
    Done,
    /// Still held: the stop deadline came first.
    GaveUp,
}

/// The export loop: reads records, batches spans, sends, retries.
pub struct Exporter {
    client: Client,
    source: RingSource,
    settings: ExportSettings,
    stats: Arc<ExportStats>,
    resource: Resource,
    batch: Vec<Span>,
    batch_bytes: usize,
    batch_since: Option<Instant>,
    /// The encoded request, reused.
    body: Vec<u8>,
    /// When the stop flag was first seen.
    stopping_since: Option<Instant>,
    /// Lost records not yet reported on stderr, and when the last report was printed.
    unreported_lost: u64,
    last_report: Option<Instant>,
    rng: fastrand::Rng,
}

impl Exporter {
    /// An exporter reading `source` and sending per `settings`.
    pub fn new(settings: ExportSettings, source: RingSource, stats: Arc<ExportStats>) -> Exporter {
        let resource = Resource {
            attributes: settings
                .resource
                .iter()
                .map(|(k, v)| span::key_value(k, Value::StringValue(v.clone())))
                .collect(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        Exporter {
            client: Client::new(settings.endpoint.clone()),
            source,
            batch: Vec::with_capacity(settings.batch_spans),
            settings,
            stats,
            resource,
            batch_bytes: 0,
            batch_since: None,
            body: Vec::new(),
            stopping_since: None,
            unreported_lost: 0,
            last_report: None,
            rng: fastrand::Rng::new(),
        }
    }

    /// Runs until `stop` is set, then sends what is left within [`FINISH_TIMEOUT`] and returns.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut last_refresh = Instant::now();
        loop {
            if self.stopping_since.is_none() && stop.load(Ordering::Relaxed) {
                self.stopping_since = Some(Instant::now());
                // Rings a worker created since the last listing still count.
                let _ = self.source.refresh();
            }
            if last_refresh.elapsed() >= REFRESH_INTERVAL {
                if let Err(e) = self.source.refresh() {
                    eprintln!("phantom-fast: export: {e}");
                }
                last_refresh = Instant::now();
            }
            let drained = self.fill();
            self.report_lost(false);
            let due = self.batch.len() >= self.settings.batch_spans
                || self.batch_bytes >= MAX_BATCH_BYTES
                || self
                    .batch_since
                    .is_some_and(|t| t.elapsed() >= self.settings.batch_delay)
                || (self.stopping_since.is_some() && !self.batch.is_empty());
            if due {
                match self.flush(stop) {
                    Flushed::GaveUp => break,
                    // Sending took time: look at the rings again before deciding anything.
                    Flushed::Done => continue,
                }
            }
            if self.stopping_since.is_some() && drained && self.batch.is_empty() {
                break;
            }
            if drained && !due {
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        self.give_up();
    }

    /// Moves records into the batch until it is full; returns whether the rings are drained.
    fn fill(&mut self) -> bool {
        while self.batch.len() < self.settings.batch_spans && self.batch_bytes < MAX_BATCH_BYTES {
            let Some(record) = self.source.next_record() else {
                self.count_lost();
                return true;
            };
            let span = span_of(record);
            self.batch_bytes += span.encoded_len();
            self.batch.push(span);
            self.batch_since.get_or_insert_with(Instant::now);
        }
        self.count_lost();
        false
    }

    fn count_lost(&mut self) {
        let lost = self.source.take_lost();
        ExportStats::add(&self.stats.records_lost, lost);
        self.unreported_lost += lost;
    }

    /// Reports newly lost records on stderr, at most every [`REPORT_INTERVAL`] unless `now`.
    fn report_lost(&mut self, now: bool) {
        if self.unreported_lost == 0 {
            return;
        }
        if !now
            && self
                .last_report
                .is_some_and(|t| t.elapsed() < REPORT_INTERVAL)
        {
            return;
        }
        eprintln!(
            "phantom-fast: export: {} trace records were overwritten in the rings before they could be exported ({} in all): the collector was down or slower than the proxy",
            self.unreported_lost,
            ExportStats::get(&self.stats.records_lost)
        );
        self.unreported_lost = 0;
        self.last_report = Some(Instant::now());
    }

    /// Sends the batch, retrying per the OTLP rules; gives up only past the stop deadline.
    fn flush(&mut self, stop: &AtomicBool) -> Flushed {
        let spans = self.batch.len() as u64;
        self.encode();
        let mut backoff = BACKOFF_MIN;
        let mut outage: Option<Instant> = None;
        loop {
            let timeout = match self.deadline() {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => self.settings.endpoint.timeout,
            };
            if timeout.is_zero() {
                return Flushed::GaveUp;
            }
            match self.client.send(&self.body, timeout) {
                Sent::Accepted { rejected } => {
                    let rejected = rejected.min(spans);
                    ExportStats::add(&self.stats.spans_exported, spans - rejected);
                    ExportStats::add(&self.stats.spans_rejected, rejected);
                    ExportStats::add(&self.stats.requests_sent, 1);
                    if rejected > 0 {
                        eprintln!(
                            "phantom-fast: export: the collector rejected {rejected} of {spans} spans"
                        );
                    }
                    if let Some(since) = outage {
                        eprintln!(
                            "phantom-fast: export: collector back after {:.1}s",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    break;
                }
                Sent::Refused { why } => {
                    ExportStats::add(&self.stats.spans_rejected, spans);
                    eprintln!(
                        "phantom-fast: export: {} refused {spans} spans ({why}); dropped, not retried",
                        self.client.url()
                    );
                    break;
                }
                Sent::Retry { after, why } => {
                    ExportStats::add(&self.stats.retries, 1);
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        eprintln!(
                            "phantom-fast: export: collector {} unavailable ({why}); holding {spans} spans and retrying",
                            self.client.url()
                        );
                    }
                    // ±25% jitter so that a fleet does not retry in step.
                    let jittered = backoff.mul_f64(0.75 + self.rng.f64() / 2.0);
                    let wait = after.map_or(jittered, |a| a.max(jittered));
                    if !self.sleep(wait, stop) {
                        return Flushed::GaveUp;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.batch.clear();
        self.batch_bytes = 0;
        self.batch_since = None;
        Flushed::Done
    }

    /// The batch as one `ExportTraceServiceRequest` in `self.body`.
    fn encode(&mut self) {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "phantom-fast".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans: std::mem::take(&mut self.batch),
                    schema_url: SCHEMA_URL.to_owned(),
                }],
                schema_url: String::new(),
            }],
        };
        self.body.clear();
        request
            .encode(&mut self.body)
            .expect("a Vec grows to fit any message");
        // Keep the spans: on give-up they are counted as unsent.
        let mut request = request;
        self.batch = std::mem::take(&mut request.resource_spans[0].scope_spans[0].spans);
    }

    /// After the stop signal, the instant the exporter gives up.
    fn deadline(&self) -> Option<Instant> {
        self.stopping_since.map(|t| t + FINISH_TIMEOUT)
    }

    /// Sleeps `wait` in short steps; `false` when the stop deadline comes first.
    fn sleep(&mut self, wait: Duration, stop: &AtomicBool) -> bool {
        let until = Instant::now() + wait;
        loop {
            if self.stopping_since.is_none() && stop.load(Ordering::Relaxed) {
                self.stopping_since = Some(Instant::now());
            }
            let now = Instant::now();
            if self.deadline().is_some_and(|d| until > d) {
                return false;
            }
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(POLL_INTERVAL));
        }
    }

    /// Counts what is still held or unread as unsent and reports the losses.
    fn give_up(&mut self) {
        let mut unsent = self.batch.len() as u64;
        while self.source.next_record().is_some() {
            unsent += 1;
        }
        self.count_lost();
        self.batch.clear();
        ExportStats::add(&self.stats.spans_unsent, unsent);
        self.report_lost(true);
        if unsent > 0 {
            eprintln!(
                "phantom-fast: export: stopped with {unsent} spans not exported (collector {} unavailable)",
                self.client.url()
            );
        }
    }
}

/// The exporter running on its own thread (`pf-export`) inside the proxy.
pub struct ExportThread {
    stop: Arc<AtomicBool>,
    stats: Arc<ExportStats>,
    handle: JoinHandle<()>,
}

impl ExportThread {
    /// Opens the rings of `dir` on the calling thread (so that `start` is exact) and starts the
    /// exporter thread.
    ///
    /// # Errors
    /// [`Error::Trace`] when a ring cannot be opened; [`Error::Config`] when the thread cannot
    /// be started.
    pub fn spawn(
        settings: ExportSettings,
        dir: &Path,
        start: Start,
    ) -> Result<ExportThread, Error> {
        let source = RingSource::open(dir, start)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ExportStats::default());
        let mut exporter = Exporter::new(settings, source, Arc::clone(&stats));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("pf-export".into())
            .spawn(move || exporter.run(&flag))
            .map_err(|e| Error::Config(format!("cannot start the exporter thread: {e}")))?;
        Ok(ExportThread {
            stop,
            stats,
            handle,
        })
    }

    /// The counters, for `/metrics`.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Asks the exporter to send what is left (within [`FINISH_TIMEOUT`]), waits for it and
    /// returns the counters. Call after the workers flushed their rings.
    pub fn finish(self) -> Arc<ExportStats> {
        self.stop.store(true, Ordering::Relaxed);
        if self.handle.join().is_err() {
            eprintln!("phantom-fast: export: the exporter thread panicked");
        }
        self.stats
    }
}

/// The `export` subcommand: follows the rings of `dir` and exports until SIGINT/SIGTERM, then
/// sends what is left and prints the summary on stderr.
///
/// # Errors
/// As [`ExportThread::spawn`]; [`Error::Config`] when the signal handler cannot be installed.
pub fn run_until_signal(settings: ExportSettings, dir: &Path, start: Start) -> Result<(), Error> {
    let url = settings.endpoint.url.clone();
    let source = RingSource::open(dir, start)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| Error::Config(format!("cannot install the signal handler: {e}")))?;
    eprintln!(
        "phantom-fast export: {} → {url} ({} rings now)",
        dir.display(),
        source.rings()
    );
    let stats = Arc::new(ExportStats::default());
    Exporter::new(settings, source, Arc::clone(&stats)).run(&stop);
    eprintln!("phantom-fast {}", stats.summary());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_rows() {
        type Vars = &'static [(&'static str, &'static str)];
        let rows: &[(&str, Vars, &str)] = &[
            ("default_name", &[], "phantom-fast"),
            (
                "service_name",
                &[("OTEL_SERVICE_NAME", "edge-proxy")],
                "edge-proxy",
            ),
            (
                "resource_attributes_name",
                &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=a%2Cb,team=x")],
                "a,b",
            ),
            (
                "service_name_wins",
                &[
                    ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a"),
                    ("OTEL_SERVICE_NAME", "b"),
                ],
                "b",
            ),
        ];
        for (name, vars, want) in rows {
            let env = |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            };
            let attrs = resource_attributes(&env).expect(name);
            let service: Vec<_> = attrs.iter().filter(|(k, _)| k == "service.name").collect();
            assert_eq!(service.len(), 1, "row {name}");
            assert_eq!(service[0].1, *want, "row {name}");
            assert!(
                attrs.iter().any(|(k, _)| k == "service.version"),
                "row {name}"
            );
        }
        let env = |k: &str| (k == "OTEL_RESOURCE_ATTRIBUTES").then(|| "novalue".to_owned());
        assert!(resource_attributes(&env).is_err());
    }

    #[test]
    fn metrics_text_has_each_family_once() {
        let stats = ExportStats::default();
        ExportStats::add(&stats.spans_exported, 7);
        ExportStats::add(&stats.records_lost, 2);
        let mut text = String::new();
        stats.encode_metrics(&mut text);
        for family in [
            "phantom_export_spans_total",
            "phantom_export_records_lost_total",
            "phantom_export_requests_total",
            "phantom_export_retries_total",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} counter\n")).count(),
                1,
                "{family}"
            );
        }
        assert!(text.contains("phantom_export_spans_total{result=\"exported\"} 7\n"));
        assert!(text.contains("phantom_export_records_lost_total 2\n"));
        assert!(text.ends_with('\n'));
    }
}

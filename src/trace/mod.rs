//! Request tracing: every answered request becomes one rkyv record appended by the worker that
//! served it to its own memory-mapped ring file `<dir>/core-<worker>.ring`; the `traces` and
//! `stats` commands, and exporters, read all rings of a directory back.
//!
//! It does no network I/O, parses no command line and uses no async runtime: the exchange calls
//! [`TraceWriter::write`] after a response is sent, the CLI calls [`write_traces`] /
//! [`write_stats`], exporters follow the rings with [`Tail`].
//!
//! # Files
//! - `record.rs`: the record ([`TraceEvent`], borrowed when written, [`ArchivedTraceEvent`] when
//!   read, stamped with [`RECORD_SCHEMA`]) and W3C `traceparent` parsing/encoding.
//! - `ring.rs`: the ring file: framing, wrap-around, crash recovery, concurrent readers, space
//!   reserved up front, replacement by rename.
//! - `tail.rs`: following the rings of a directory as they grow, are added and are replaced.
//! - `query.rs`: all rings merged, filters, `traces get`, `traces clear`, stats.
//! - `render.rs`: JSON Lines, JSON and table output; header redaction.
//! - `ledger.rs`: a record's duration split into injected, upstream and proxy overhead.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rkyv::rancor::Failure;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

pub mod ledger;
mod query;
mod record;
mod render;
mod ring;
pub mod tail;

pub use ledger::{Ledger, LedgerSummary};
pub use query::{
    Filter, StatusFilter, TimeBound, clear_traces, write_record, write_stats, write_traces,
    write_traces_with,
};
pub use record::{
    AppliedFault, ArchivedAppliedFault, ArchivedFaultKind, ArchivedOutcome, ArchivedTlsSession,
    ArchivedTlsVerification, ArchivedTraceEvent, FaultKind, Outcome, RECORD_SCHEMA, TlsSession,
    TlsVerification, TraceEvent, encode_traceparent, parse_traceparent, random_span_id,
    random_trace_id,
};
pub use render::{DEFAULT_REDACTED_HEADERS, Format, RenderOptions};
pub use ring::{AppendError, Cursor, MIN_RING_BYTES, RingLock, RingReader, RingUsage, RingWriter};
pub use tail::{Start, Tail, TailRecord};

/// Default `--trace-capacity`: bytes per ring file (one per worker).
pub const DEFAULT_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// Default `--trace-body-bytes`: how much of each body a record keeps.
pub const DEFAULT_BODY_BYTES: usize = 4096;
/// Initial size of a writer's serialisation buffer: a typical record (1–2 KiB of heads, two
/// body prefixes) fits without growing; larger ones grow it once and it stays grown.
const SCRATCH_BYTES: usize = 16 * 1024;

/// Where and how big the ring files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Directory holding `core-<worker>.ring` (created if missing).
    pub dir: PathBuf,
    /// Size of each ring file in bytes (at least [`MIN_RING_BYTES`]).
    pub capacity_bytes: u64,
    /// Replace existing rings with fresh ones instead of appending to them (`--trace-reset`).
    pub reset: bool,
}

/// An error opening or reading trace rings. Every variant except `Output` names the file or
/// directory.
#[derive(Debug)]
pub enum TraceError {
    /// The file or directory could not be created, opened, sized, mapped or listed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a ring of this format, is damaged beyond skipping records, or another
    /// process writes it.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The filesystem cannot hold the rings (bad input: exit status 2).
    NoSpace {
        /// The trace directory.
        dir: PathBuf,
        /// How many rings were to be reserved (the workers).
        rings: usize,
        /// Bytes of each ring file.
        ring_bytes: u64,
        /// Bytes free for us on the filesystem.
        free: u64,
    },
    /// `traces get`: no record has this span id.
    NotFound {
        /// The trace directory.
        dir: PathBuf,
        /// The span id asked for.
        span_id: u64,
    },
    /// An operation refused as asked (e.g. `traces clear` without `--yes`).
    Refused(String),
    /// Writing the rendered output failed (e.g. a closed pipe).
    Output(io::Error),
}

impl TraceError {
    /// Whether this is the user's input or setup to change (exit status 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, TraceError::NoSpace { .. })
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TraceError::Format { path, what } => write!(f, "{}: {what}", path.display()),
            TraceError::NoSpace {
                dir,
                rings,
                ring_bytes,
                free,
            } => write!(
                f,
                "{}: no room for the trace rings: {rings} × {} = {} needed, {} free \
                 (lower --trace-capacity or --workers, free space, or --no-traces)",
                dir.display(),
                Bytes(*ring_bytes),
                Bytes(ring_bytes.saturating_mul(*rings as u64)),
                Bytes(*free),
            ),
            TraceError::NotFound { dir, span_id } => {
                write!(
                    f,
                    "no record with span id {span_id:016x} in {}",
                    dir.display()
                )
            }
            TraceError::Refused(why) => f.write_str(why),
            TraceError::Output(source) => write!(f, "writing trace output: {source}"),
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TraceError::Io { source, .. } | TraceError::Output(source) => Some(source),
            _ => None,
        }
    }
}

/// A byte count for people: `16 MiB`, `1.5 GiB`, `900 bytes`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if self.0.is_multiple_of(size) {
                    write!(f, "{} {unit}", self.0 / size)
                } else {
                    write!(f, "{value:.1} {unit}")
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// The ring file of `worker` in `dir`: `core-<worker>.ring`.
pub fn ring_path(dir: &Path, worker: usize) -> PathBuf {
    dir.join(format!("core-{worker}.ring"))
}

/// Appends trace records to one worker's ring. Created on the main thread (blocking file work),
/// then moved to its worker: `Send`, not `Sync`. Writing allocates nothing in steady state.
pub struct TraceWriter {
    ring: RingWriter,
    /// Reused serialisation buffer, 16-aligned like ring payloads.
    scratch: AlignedVec,
    /// Reused rkyv scratch allocator.
    arena: Arena,
    /// Overwritten/dropped counts when the writer was opened, for [`TraceWriter::usage`].
    opened: RingUsage,
}

impl TraceWriter {
    /// Creates or reopens `<cfg.dir>/core-<worker>.ring` (creating `cfg.dir` if missing).
    /// A reopened ring is validated and appended to after its last valid record, continuing
    /// its sequence numbers; `cfg.reset` replaces it with a fresh one instead.
    ///
    /// # Errors
    /// [`TraceError::NoSpace`] when the filesystem cannot hold the ring; [`TraceError::Io`]
    /// naming the directory or file when it cannot be created, opened or mapped;
    /// [`TraceError::Format`] naming the file when it is not a ring of this format (foreign,
    /// truncated, damaged header, another release), when its capacity differs from
    /// `cfg.capacity_bytes`, when that is below [`MIN_RING_BYTES`], or when another process
    /// writes it.
    pub fn open(cfg: &TraceConfig, worker: usize) -> Result<TraceWriter, TraceError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| TraceError::Io {
            path: cfg.dir.clone(),
            source,
        })?;
        let ring = RingWriter::open(&ring_path(&cfg.dir, worker), cfg.capacity_bytes, cfg.reset)?;
        Ok(TraceWriter {
            opened: ring.usage(),
            ring,
            scratch: AlignedVec::with_capacity(SCRATCH_BYTES),
            arena: Arena::new(),
        })
    }

    /// Opens the rings of `workers` workers ([`TraceWriter::open`] each), after checking that
    /// the filesystem can hold them all: a ring that cannot fit fails here, at startup, never
    /// on a write.
    ///
    /// # Errors
    /// [`TraceError::NoSpace`] naming the directory, the space needed (workers × capacity) and
    /// the space free; otherwise as [`TraceWriter::open`].
    pub fn open_all(cfg: &TraceConfig, workers: usize) -> Result<Vec<TraceWriter>, TraceError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| TraceError::Io {
            path: cfg.dir.clone(),
            source,
        })?;
        ring::remove_stale_temp_rings(&cfg.dir);
        let no_space = |free| TraceError::NoSpace {
            dir: cfg.dir.clone(),
            rings: workers,
            ring_bytes: cfg.capacity_bytes,
            free,
        };
        if let Some(free) = ring::free_bytes_at(&cfg.dir) {
            // A ring kept (no reset) already holds its blocks; a replaced one is built beside
            // the old, which is freed only when no reader maps it any more.
            let need: u64 = (0..workers)
                .map(|i| {
                    let held = if cfg.reset {
                        0
                    } else {
                        ring::allocated_bytes(&ring_path(&cfg.dir, i))
                    };
                    cfg.capacity_bytes.saturating_sub(held)
                })
                .sum();
            if need > free {
                return Err(no_space(free));
            }
        }
        (0..workers)
            .map(|i| {
                TraceWriter::open(cfg, i).map_err(|e| match e {
                    TraceError::NoSpace { free, .. } => no_space(free),
                    other => other,
                })
            })
            .collect()
    }

    /// Serialises `ev` into the reused buffer and appends it to the ring. Never panics and never
    /// fails the request: a record that cannot be stored (larger than the whole ring, or failing
    /// to serialise) is dropped, counted in the ring header ([`TraceWriter::usage`]) and, the
    /// first time, announced on stderr.
    pub fn write(&mut self, ev: &TraceEvent<'_>) {
        self.scratch.clear();
        let stored = record::Stored {
            schema: RECORD_SCHEMA,
            event: ev,
        };
        let serialized = rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
            &stored,
            &mut self.scratch,
            self.arena.acquire(),
        );
        let why = match serialized {
            Err(_) => "it could not be serialised",
            Ok(_) => match self.ring.append(&self.scratch) {
                Ok(_) => return,
                Err(AppendError::TooLarge) => "it is larger than the ring",
            },
        };
        self.ring.note_dropped();
        if self.ring.usage().dropped == self.opened.dropped + 1 {
            eprintln!(
                "phantom-fast: a trace record was dropped ({why}: {} bytes) in {}; proxying \
                 goes on, further drops are counted in the summary",
                self.scratch.len(),
                self.ring.path().display()
            );
        }
    }

    /// Faults the whole ring in, writable, so appending takes no page faults on its first lap
    /// ([`RingWriter::prefault`]). Call on the worker's thread before serving.
    pub fn prefault(&mut self) {
        self.ring.prefault();
    }

    /// Writes the ring's dirty pages to disk (msync). Call at shutdown only: appended records are
    /// visible to readers, and survive a crash of the process, without it.
    ///
    /// # Errors
    /// The `msync` failure.
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.flush()
    }

    /// The ring file's path.
    pub fn path(&self) -> &Path {
        self.ring.path()
    }

    /// Records not stored since this writer was opened.
    pub fn dropped(&self) -> u64 {
        self.usage().dropped
    }

    /// Records written, overwritten by wrapping and dropped since this writer was opened (the
    /// ring's lifetime totals are in its header: [`RingReader::usage`]).
    pub fn usage(&self) -> RingUsage {
        self.ring.usage().since(self.opened)
    }

    /// Sequence number the next record will get (records written since the ring was created,
    /// plus one).
    pub fn next_seq(&self) -> u64 {
        self.ring.next_seq()
    }
}

/// What the rings of `dir` have seen since they were created (their headers summed); rings that
/// cannot be read are skipped.
pub fn ring_usage(dir: &Path, workers: usize) -> RingUsage {
    (0..workers)
        .filter_map(|i| RingReader::open(&ring_path(dir, i)).ok())
        .fold(RingUsage::default(), |sum, r| sum.plus(r.usage()))
}

impl RingUsage {
    /// The shutdown summary's trace line: records written, and when any were lost, how many
    /// and what to do about it.
    pub fn summary_line(&self) -> String {
        let mut line = format!("  traces: {} records", self.written);
        if self.overwritten > 0 {
            line.push_str(&format!(
                ", {} overwritten by newer ones (the ring wrapped; raise --trace-capacity to keep them)",
                self.overwritten
            ));
        }
        if self.dropped > 0 {
            line.push_str(&format!(", {} dropped (not stored)", self.dropped));
        }
        line
    }
}

/// Validates a ring payload as a record of [`RECORD_SCHEMA`] and returns a zero-copy view of it,
/// or `None` if it is not one (checked by bytecheck: bounds, enum tags, UTF-8 of `str` fields;
/// then the schema number). `bytes` must start at a 16-byte aligned address (as
/// [`rkyv::util::AlignedVec`] does).
pub fn access_record(bytes: &[u8]) -> Option<&ArchivedTraceEvent<'static>> {
    let stored =
        rkyv::api::low::access::<record::ArchivedStored<'static, 'static>, Failure>(bytes).ok()?;
    (stored.schema == RECORD_SCHEMA).then_some(&stored.event)
}

/// The default trace directory: `$XDG_DATA_HOME/phantom-fast/traces`, else
/// `$HOME/.local/share/phantom-fast/traces`, else `./phantom-fast-traces`.
pub fn default_trace_dir() -> PathBuf {
    trace_dir_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

fn trace_dir_from(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    // XDG Base Directory spec: a relative $XDG_DATA_HOME is invalid and must be ignored.
    if let Some(xdg) = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return xdg.join("phantom-fast").join("traces");
    }
    if let Some(home) = home.filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(".local/share/phantom-fast/traces");
    }
    PathBuf::from("phantom-fast-traces")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("pf-trace-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const SYNTHETIC_503_HEAD: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-fault-injected: phantom\r\ncontent-length: 20\r\n\r\n";

    /// Two applied faults, as a record of a delayed-then-refused request holds them.
    pub(crate) const FULL_FAULTS: &[AppliedFault<'static>] = &[
        AppliedFault {
            kind: FaultKind::Delay,
            rule: 1,
            rule_id: "r1",
            spec: "delay:250ms",
            value: 250_000_000,
        },
        AppliedFault {
            kind: FaultKind::Error,
            rule: 2,
            rule_id: "refuse-items",
            spec: "error:503:0.5",
            value: 503,
        },
    ];

    /// `ev` serialised as the writer stores it (schema-stamped), for tests that read records.
    pub(crate) fn stored_bytes(ev: &TraceEvent<'_>) -> AlignedVec<16> {
        rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
            &record::Stored {
                schema: RECORD_SCHEMA,
                event: ev,
            },
            AlignedVec::<16>::new(),
            Arena::new().acquire(),
        )
        .expect("serialise")
    }

    /// A record with every field set to a distinct, non-default value.
    pub(crate) fn full_event() -> TraceEvent<'static> {
        TraceEvent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x1122_3344_5566_7788,
            parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
            start_unix_ns: 1_767_225_600_123_456_789,
            duration_ns: 261_234_567,
            upstream_connect_ns: 123_456,
            upstream_ttfb_ns: Some(456_789),
            upstream_body_ns: 78_901,
            injected_delay_ns: 250_000_000,
            generation: 7,
            faults: FULL_FAULTS,
            client_tls: Some(TlsSession {
                version: "TLSv1_3",
                cipher_suite: "TLS13_AES_128_GCM_SHA256",
                version_code: 0x0304,
                cipher_suite_code: 0x1301,
                server_name: "api.test",
                verification: TlsVerification::NotApplicable,
                resumed: true,
                failure: "",
            }),
            upstream_tls: Some(TlsSession {
                version: "",
                cipher_suite: "",
                version_code: 0,
                cipher_suite_code: 0,
                server_name: "origin.test",
                verification: TlsVerification::Verified,
                resumed: false,
                failure: "unknown issuer",
            }),
            method: b"POST",
            url: b"http://127.0.0.1:3000/api/items?id=7",
            version: "HTTP/1.1",
            status: 503,
            request_head: b"POST /api/items?id=7 HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nAccept: a\r\naccept: b\r\nContent-Length: 11\r\n\r\n",
            response_head: SYNTHETIC_503_HEAD,
            request_body: b"hello world",
            request_body_len: 11,
            response_body: b"{\"fault\":\"injected\"}",
            response_body_len: 20,
            client_addr: "127.0.0.1:54321".parse::<SocketAddr>().expect("addr"),
            upstream_addr: Some("[::1]:3000".parse::<SocketAddr>().expect("addr")),
            outcome: Outcome::Fault,
        }
    }

    /// Reads every record of a ring as owned, validated payloads.
    pub(crate) fn read_payloads(path: &Path) -> Vec<AlignedVec> {
        let reader = RingReader::open(path).expect("open reader");
        let mut cur = reader.oldest();
        let mut out = Vec::new();
        let mut got = Vec::new();
        while reader.next(&mut cur, &mut out).is_some() {
            let mut aligned = AlignedVec::new();
            aligned.extend_from_slice(&out);
            got.push(aligned);
        }
        got
    }

    fn cfg(dir: &Path) -> TraceConfig {
        TraceConfig {
            dir: dir.join("traces"),
            capacity_bytes: MIN_RING_BYTES,
            reset: false,
        }
    }

    #[test]
    fn write_then_read_round_trips_every_field() {
        let dir = TempDir::new("mod-roundtrip");
        let mut w = TraceWriter::open(&cfg(dir.path()), 3).expect("open");
        assert!(w.path().ends_with("traces/core-3.ring"));
        let ev = full_event();
        let bare = TraceEvent {
            parent_span_id: None,
            upstream_ttfb_ns: None,
            faults: &[],
            client_tls: None,
            upstream_tls: None,
            upstream_addr: None,
            request_body: b"",
            response_body: b"",
            outcome: Outcome::ClientClosed,
            ..ev
        };
        w.write(&ev);
        w.write(&bare);
        w.flush().expect("flush");
        let payloads = read_payloads(w.path());
        assert_eq!(payloads.len(), 2);
        for (bytes, want) in payloads.iter().zip([ev, bare]) {
            let a = access_record(bytes).expect("valid record");
            assert_eq!(a.trace_id, want.trace_id);
            assert_eq!(a.span_id, want.span_id);
            assert_eq!(
                a.parent_span_id.as_ref().map(|v| v.to_native()),
                want.parent_span_id
            );
            assert_eq!(a.start_unix_ns, want.start_unix_ns);
            assert_eq!(a.duration_ns, want.duration_ns);
            assert_eq!(
                a.upstream_ttfb_ns.as_ref().map(|v| v.to_native()),
                want.upstream_ttfb_ns
            );
            assert_eq!(a.injected_delay_ns, want.injected_delay_ns);
            assert_eq!(a.upstream_connect_ns, want.upstream_connect_ns);
            assert_eq!(a.upstream_body_ns, want.upstream_body_ns);
            assert_eq!(a.generation, want.generation);
            let faults: Vec<_> = a
                .faults
                .iter()
                .map(|f| AppliedFault {
                    kind: f.kind.get(),
                    rule: f.rule.to_native(),
                    rule_id: f.rule_id.get(),
                    spec: f.spec.get(),
                    value: f.value.to_native(),
                })
                .collect();
            assert_eq!(faults, want.faults);
            fn session<'r>(t: &'r ArchivedTlsSession<'static>) -> TlsSession<'r> {
                TlsSession {
                    version: t.version.get(),
                    cipher_suite: t.cipher_suite.get(),
                    version_code: t.version_code.to_native(),
                    cipher_suite_code: t.cipher_suite_code.to_native(),
                    server_name: t.server_name.get(),
                    verification: t.verification.get(),
                    resumed: t.resumed,
                    failure: t.failure.get(),
                }
            }
            assert_eq!(a.client_tls.as_ref().map(session), want.client_tls);
            assert_eq!(a.upstream_tls.as_ref().map(session), want.upstream_tls);
            assert_eq!(a.method.get(), want.method);
            assert_eq!(a.url.get(), want.url);
            assert_eq!(a.version.get(), want.version);
            assert_eq!(a.status, want.status);
            assert_eq!(a.request_head.get(), want.request_head);
            assert_eq!(a.response_head.get(), want.response_head);
            assert_eq!(a.request_body.get(), want.request_body);
            assert_eq!(a.request_body_len, want.request_body_len);
            assert_eq!(a.response_body.get(), want.response_body);
            assert_eq!(a.response_body_len, want.response_body_len);
            assert_eq!(a.client_addr.as_socket_addr(), want.client_addr);
            assert_eq!(
                a.upstream_addr.as_ref().map(|s| s.as_socket_addr()),
                want.upstream_addr
            );
            assert_eq!(a.outcome.get(), want.outcome);
        }
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn write_larger_than_ring_is_counted_not_raised() {
        let dir = TempDir::new("mod-dropped");
        let mut w = TraceWriter::open(&cfg(dir.path()), 0).expect("open");
        let big = vec![b'x'; MIN_RING_BYTES as usize];
        w.write(&TraceEvent {
            response_body: &big,
            ..full_event()
        });
        w.write(&full_event());
        assert_eq!(w.dropped(), 1);
        assert_eq!(read_payloads(w.path()).len(), 1);
    }

    #[test]
    fn writer_reopen_continues_and_reset_starts_afresh() {
        let dir = TempDir::new("mod-reopen");
        let mut c = cfg(dir.path());
        let mut w = TraceWriter::open(&c, 0).expect("open");
        (0..5).for_each(|_| w.write(&full_event()));
        drop(w);
        let w = TraceWriter::open(&c, 0).expect("reopen");
        assert_eq!(w.next_seq(), 6);
        drop(w);
        c.capacity_bytes *= 2;
        let err = TraceWriter::open(&c, 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("core-0.ring") && err.contains("--trace-reset"),
            "{err}"
        );
        c.reset = true;
        let w = TraceWriter::open(&c, 0).expect("reset");
        assert_eq!(w.next_seq(), 1);
    }

    #[test]
    fn access_record_rejects_another_schema() {
        let ev = full_event();
        let serialise = |schema| {
            rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
                &record::Stored { schema, event: &ev },
                AlignedVec::<16>::new(),
                Arena::new().acquire(),
            )
            .expect("serialise")
        };
        assert!(access_record(&serialise(RECORD_SCHEMA)).is_some());
        assert!(access_record(&serialise(RECORD_SCHEMA + 1)).is_none());
    }

    #[test]
    fn write_drops_are_counted_in_the_ring_header() {
        let dir = TempDir::new("mod-drop-header");
        let mut w = TraceWriter::open(&cfg(dir.path()), 0).expect("open");
        let big = vec![b'x'; MIN_RING_BYTES as usize];
        for _ in 0..3 {
            w.write(&TraceEvent {
                response_body: &big,
                ..full_event()
            });
        }
        w.write(&full_event());
        let reader = RingReader::open(w.path()).expect("reader");
        let want = RingUsage {
            written: 1,
            overwritten: 0,
            dropped: 3,
        };
        assert_eq!(reader.usage(), want);
        assert_eq!(w.usage(), want);
        let summary = want.summary_line();
        assert!(summary.contains("3 dropped"), "{summary}");
        drop(w);
        // Reopened, the writer's own counts start at zero; the header keeps the lifetime total.
        let w = TraceWriter::open(&cfg(dir.path()), 0).expect("reopen");
        assert_eq!(w.dropped(), 0);
        assert_eq!(
            RingReader::open(w.path()).expect("reader").usage().dropped,
            3
        );
    }

    #[test]
    fn wrapping_is_counted_and_the_summary_says_what_to_do() {
        let dir = TempDir::new("mod-wrap-count");
        let mut w = TraceWriter::open(&cfg(dir.path()), 0).expect("open");
        for _ in 0..500 {
            w.write(&full_event());
        }
        let usage = w.usage();
        let kept = read_payloads(w.path()).len() as u64;
        assert_eq!(usage.written, 500);
        assert_eq!(usage.overwritten, 500 - kept, "{usage:?}");
        assert!(usage.summary_line().contains("raise --trace-capacity"));
        assert!(
            !RingUsage {
                written: 5,
                ..RingUsage::default()
            }
            .summary_line()
            .contains("raise")
        );
    }

    #[test]
    fn access_record_rejects_garbage() {
        let rows: &[(&str, Vec<u8>)] = &[
            ("empty", vec![]),
            ("short", vec![1, 2, 3]),
            ("zeros", vec![0; 256]),
            ("ones", vec![0xff; 256]),
        ];
        for (name, bytes) in rows {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(bytes);
            assert!(access_record(&aligned).is_none(), "row {name}");
        }
    }

    #[test]
    fn trace_dir_from_rows() {
        let rows: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            (
                "xdg_wins",
                Some("/data"),
                Some("/home/u"),
                "/data/phantom-fast/traces",
            ),
            (
                "relative_xdg_ignored",
                Some("data"),
                Some("/home/u"),
                "/home/u/.local/share/phantom-fast/traces",
            ),
            (
                "empty_xdg_ignored",
                Some(""),
                Some("/home/u"),
                "/home/u/.local/share/phantom-fast/traces",
            ),
            (
                "home_fallback",
                None,
                Some("/home/u"),
                "/home/u/.local/share/phantom-fast/traces",
            ),
            ("nothing_set", None, None, "phantom-fast-traces"),
        ];
        for (name, xdg, home, want) in rows {
            let got = trace_dir_from(xdg.map(Into::into), home.map(Into::into));
            assert_eq!(got, PathBuf::from(want), "row {name}");
        }
    }

    /// Env var that turns the SIGKILL test into its own child: the ring directory to write to.
    const KILL_CHILD_ENV: &str = "PF_TRACE_SIGKILL_CHILD_DIR";

    #[test]
    fn sigkill_keeps_every_record_written_before_the_kill() {
        use std::io::{BufRead, Write};
        let cfg_in = |dir: PathBuf| TraceConfig {
            dir,
            capacity_bytes: 1 << 20,
            reset: false,
        };
        if let Some(dir) = std::env::var_os(KILL_CHILD_ENV) {
            // Child: append forever, reporting each sequence number once `write` returned.
            let mut w = TraceWriter::open(&cfg_in(dir.into()), 0).expect("child open");
            let mut stdout = std::io::stdout().lock();
            loop {
                w.write(&full_event());
                writeln!(stdout, "{}", w.next_seq() - 1).expect("report");
                stdout.flush().expect("flush");
            }
        }
        let dir = TempDir::new("mod-sigkill");
        let mut child = std::process::Command::new(std::env::current_exe().expect("test exe"))
            .args([
                "--exact",
                "trace::tests::sigkill_keeps_every_record_written_before_the_kill",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(KILL_CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut reported = 0u64;
        // Far enough to wrap the 1 MiB ring a few times.
        while reported < 5000 {
            let line = lines
                .next()
                .expect("child exited early")
                .expect("read line");
            reported = line.trim().parse().unwrap_or(reported);
        }
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        // Numbers still in the pipe were reported before the kill too.
        for line in lines.map_while(Result::ok) {
            reported = line.trim().parse().unwrap_or(reported);
        }
        let path = ring_path(dir.path(), 0);
        let reader = RingReader::open(&path).expect("open killed ring");
        let mut cur = reader.oldest();
        let mut frame = Vec::new();
        let mut seqs = Vec::new();
        while let Some(seq) = reader.next(&mut cur, &mut frame) {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&frame);
            assert!(access_record(&aligned).is_some(), "record {seq} invalid");
            seqs.push(seq);
        }
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        assert!(
            last >= reported,
            "reported {reported} written, ring ends at {last}"
        );
        assert_eq!(
            seqs,
            (first..=last).collect::<Vec<_>>(),
            "a record between is missing"
        );
        assert!(
            seqs.len() > 1000,
            "the ring kept only {} records",
            seqs.len()
        );
        let w = TraceWriter::open(&cfg_in(dir.path().to_path_buf()), 0).expect("reopen");
        assert_eq!(w.next_seq(), last + 1);
    }

    #[test]
    fn trace_writer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<TraceWriter>();
    }
}

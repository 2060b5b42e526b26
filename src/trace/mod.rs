//! Request tracing: every answered request becomes one rkyv record appended by the worker that
//! served it to its own memory-mapped ring file `<dir>/core-<worker>.ring`; the `traces` and
//! `stats` commands read all rings of a directory back.
//!
//! It does no network I/O and uses no async runtime: the proxy calls [`TraceWriter::write`]
//! after a response is sent, and the CLI calls [`write_traces`] / [`write_stats`].
//!
//! # Files
//! - `record.rs`: the record ([`TraceEvent`], borrowed when written, [`ArchivedTraceEvent`] when
//!   read) and W3C `traceparent` parsing/encoding.
//! - `ring.rs`: the ring file: framing, wrap-around, crash recovery, concurrent readers.
//! - `query.rs`: merging the rings of a directory, filters, JSON Lines / table / stats output.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rkyv::rancor::Failure;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

mod query;
mod record;
mod ring;

pub use query::{Filter, Format, StatusFilter, parse_status_filter, write_stats, write_traces};
pub use record::{
    ArchivedFaultHit, ArchivedFaultKind, ArchivedOutcome, ArchivedTraceEvent, FaultHit, FaultKind,
    Outcome, TraceEvent, encode_traceparent, parse_traceparent, random_span_id, random_trace_id,
};
pub use ring::{AppendError, Cursor, MIN_RING_BYTES, RingReader, RingWriter};

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
    /// Discard existing rings instead of appending to them (`--trace-reset`).
    pub reset: bool,
}

/// An error opening or reading trace rings. Every variant except `Output` names the file.
#[derive(Debug)]
pub enum TraceError {
    /// The file or directory could not be created, opened, sized, mapped or listed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a ring of this format, or is damaged beyond skipping records.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Writing the rendered output failed (e.g. a closed pipe).
    Output(io::Error),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TraceError::Format { path, what } => write!(f, "{}: {what}", path.display()),
            TraceError::Output(source) => write!(f, "writing trace output: {source}"),
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TraceError::Io { source, .. } | TraceError::Output(source) => Some(source),
            TraceError::Format { .. } => None,
        }
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
    /// Records that could not be written (larger than the ring).
    dropped: u64,
}

impl TraceWriter {
    /// Creates or reopens `<cfg.dir>/core-<worker>.ring` (creating `cfg.dir` if missing).
    /// A reopened ring is validated and appended to after its last valid record, continuing
    /// its sequence numbers; `cfg.reset` discards it instead.
    ///
    /// # Errors
    /// [`TraceError::Io`] naming the directory or file when it cannot be created, opened or
    /// mapped; [`TraceError::Format`] naming the file when it is not a ring of this format
    /// (foreign, truncated, damaged header), when its capacity differs from
    /// `cfg.capacity_bytes`, or when that is below [`MIN_RING_BYTES`].
    pub fn open(cfg: &TraceConfig, worker: usize) -> Result<TraceWriter, TraceError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| TraceError::Io {
            path: cfg.dir.clone(),
            source,
        })?;
        let ring = RingWriter::open(&ring_path(&cfg.dir, worker), cfg.capacity_bytes, cfg.reset)?;
        Ok(TraceWriter {
            ring,
            scratch: AlignedVec::with_capacity(SCRATCH_BYTES),
            arena: Arena::new(),
            dropped: 0,
        })
    }

    /// Serialises `ev` into the reused buffer and appends it to the ring. Never panics and never
    /// fails the request: a record that cannot be stored (larger than the whole ring) is counted
    /// in [`TraceWriter::dropped`].
    pub fn write(&mut self, ev: &TraceEvent<'_>) {
        self.scratch.clear();
        let serialized = rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
            ev,
            &mut self.scratch,
            self.arena.acquire(),
        );
        if serialized.is_err() || self.ring.append(&self.scratch).is_err() {
            self.dropped += 1;
        }
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

    /// Records not written because they were larger than the ring.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sequence number the next record will get (records written since the ring was created,
    /// plus one).
    pub fn next_seq(&self) -> u64 {
        self.ring.next_seq()
    }
}

/// Validates a ring payload as a record and returns a zero-copy view of it, or `None` if it is
/// not a valid record (checked by bytecheck: bounds, enum tags, UTF-8 of `str` fields).
/// `bytes` must start at a 16-byte aligned address (as [`rkyv::util::AlignedVec`] does).
pub fn access_record(bytes: &[u8]) -> Option<&ArchivedTraceEvent<'static>> {
    rkyv::api::low::access::<ArchivedTraceEvent<'static>, Failure>(bytes).ok()
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

    /// A record with every field set to a distinct, non-default value.
    pub(crate) fn full_event() -> TraceEvent<'static> {
        TraceEvent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x1122_3344_5566_7788,
            parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
            start_unix_ns: 1_767_225_600_123_456_789,
            duration_ns: 1_234_567,
            upstream_ttfb_ns: Some(456_789),
            injected_delay_ns: 250_000_000,
            fault: Some(FaultHit { rule: 2, kind: FaultKind::Error, spec: "error:503:0.5" }),
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
            fault: None,
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
            let fault = a
                .fault
                .as_ref()
                .map(|f| (f.rule.to_native(), f.kind.get(), f.spec.get()));
            assert_eq!(fault, want.fault.map(|f| (f.rule, f.kind, f.spec)));
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

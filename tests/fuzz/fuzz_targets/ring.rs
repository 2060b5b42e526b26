//! Fuzz target `ring`: arbitrary contents of a `core-0.ring` file through the reading side of
//! tracing (`RingReader`, `write_traces`, `write_stats`), as after a crash, a disk fault or a
//! foreign file in the trace directory. It never runs a writer concurrently with the reader.
//!
//! Input: one mode byte, then bytes.
//! - Even mode: the bytes are the whole file, verbatim (header checks, truncation, foreign files).
//! - Odd mode: a valid empty ring of [`MIN_RING_BYTES`] is created, then the bytes overwrite it
//!   from [`OVERLAY_OFFSET`] on (the header's positions and sequence numbers, then the frames),
//!   so the fuzzer reaches frame recovery without having to find the magic and a 64 KiB length.
//!
//! Oracles: opening is `Ok` or an error, never a panic; a reader returns at most one record per
//! 16-byte frame slot and then stops (no unbounded loop); `traces` (JSON Lines and table) and
//! `stats` over the directory return `Ok` or an error, never a panic.
#![no_main]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use phantom_fast::trace::{
    Filter, Format, MIN_RING_BYTES, RingReader, RingWriter, write_stats, write_traces,
};

/// First byte of the ring header that is not static (magic, version, header size, capacity are
/// bytes 0..24; generation, positions and sequence numbers follow).
const OVERLAY_OFFSET: u64 = 24;

/// Smallest frame (sequence, length, crc): a file cannot hold more records than this divides it.
const FRAME_HEADER_BYTES: u64 = 16;

/// Calls of `RingReader::next` allowed per frame slot before the reader counts as looping.
const CALLS_PER_SLOT: u64 = 4;

/// A directory of this process (fork/jobs modes run several) under `$TMPDIR`.
fn ring_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pf-fuzz-ring-{}", std::process::id()));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let dir = ring_dir();
    let path = dir.join("core-0.ring");
    if let Err(e) = write_ring(&path, mode & 1 == 1, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }

    if let Ok(reader) = RingReader::open(&path) {
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        let max_records = len / FRAME_HEADER_BYTES + 1;
        // `next` may give up after some resynchronisations and go on at the next call, so "done"
        // is a `None` that left the cursor where it was; each other call must make progress.
        let max_calls = max_records * CALLS_PER_SLOT;
        let mut cur = reader.oldest();
        let mut out = Vec::new();
        let mut records = 0u64;
        let mut last_seq = 0u64;
        let mut calls = 0u64;
        loop {
            calls += 1;
            assert!(
                calls <= max_calls,
                "reader still busy after {max_calls} calls on a {len}-byte file"
            );
            let before = cur;
            match reader.next(&mut cur, &mut out) {
                Some(seq) => {
                    assert!(seq > last_seq, "sequence went back: {seq} after {last_seq}");
                    last_seq = seq;
                    records += 1;
                    assert!(
                        records <= max_records,
                        "reader returned more than {max_records} records from a {len}-byte file"
                    );
                }
                None if cur == before => break,
                None => {}
            }
        }
    }

    let filter = Filter::default();
    let _ = write_traces(dir, &filter, Format::Jsonl, false, &mut io::sink());
    let _ = write_traces(dir, &filter, Format::Table, false, &mut io::sink());
    let _ = write_stats(dir, &filter, &mut io::sink());
});

/// Replaces the ring file at `path`: `bytes` verbatim, or a fresh minimal ring overlaid with them.
fn write_ring(path: &std::path::Path, overlay: bool, bytes: &[u8]) -> io::Result<()> {
    if !overlay {
        let mut file = File::create(path)?;
        return file.write_all(bytes);
    }
    let writer = RingWriter::open(path, MIN_RING_BYTES, true)
        .map_err(|e| io::Error::other(e.to_string()))?;
    drop(writer);
    let room = usize::try_from(MIN_RING_BYTES - OVERLAY_OFFSET).unwrap_or(usize::MAX);
    let file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&bytes[..bytes.len().min(room)], OVERLAY_OFFSET)
}

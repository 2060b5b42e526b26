//! Where the exporter's records come from: every `core-<n>.ring` of a trace directory, followed
//! as it grows, with the records the writer overwrote before they were read counted.
//!
//! An adapter over `trace::RingReader`, like `trace::Tail` but pulled one record at a time:
//! `Tail::poll` hands every pending record in one call, and the exporter must be able to stop at
//! a full batch (its memory is one batch, whatever the rings hold). It does not filter or render.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use crate::trace::{ArchivedTraceEvent, Cursor, RingReader, TraceError, access_record};

/// Where following starts in the rings present when the source is opened (rings that appear
/// later are always read from their oldest record: everything in them is new).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every record the rings still hold.
    Oldest,
    /// Only records written after opening (the proxy's own exporter: earlier runs' records are
    /// not exported again).
    Newest,
}

/// One ring being followed.
struct Ring {
    path: PathBuf,
    reader: RingReader,
    cursor: Cursor,
    /// `cursor.skipped` when last looked at.
    counted: u64,
}

/// All rings of a directory, each with its read position.
pub struct RingSource {
    dir: PathBuf,
    rings: Vec<Ring>,
    /// The ring to read first on the next call, so that a busy ring does not starve the others.
    next_ring: usize,
    frame: Vec<u8>,
    record: AlignedVec,
    /// Records lost before they could be read: overwritten by the writer (or torn), since the
    /// last [`RingSource::take_lost`].
    lost: u64,
    /// Frames with a valid checksum that were not valid records (another format version).
    invalid: u64,
}

impl RingSource {
    /// Opens the rings of `dir` (none yet is fine: a directory that does not exist yet, or has
    /// no rings, is followed until they appear).
    ///
    /// # Errors
    /// [`TraceError::Io`] when `dir` exists but cannot be listed, [`TraceError::Format`] for a
    /// ring that is not a trace ring.
    pub fn open(dir: &Path, start: Start) -> Result<RingSource, TraceError> {
        let mut source = RingSource {
            dir: dir.to_path_buf(),
            rings: Vec::new(),
            next_ring: 0,
            frame: Vec::new(),
            record: AlignedVec::new(),
            lost: 0,
            invalid: 0,
        };
        source.refresh()?;
        if start == Start::Newest {
            for ring in &mut source.rings {
                while ring
                    .reader
                    .next(&mut ring.cursor, &mut source.frame)
                    .is_some()
                {}
                ring.counted = ring.cursor.skipped;
            }
        }
        Ok(source)
    }

    /// Opens rings that appeared since the last call, and reopens (from their oldest record)
    /// rings whose file was replaced (`--trace-reset` renames a fresh file over the old one).
    ///
    /// # Errors
    /// As [`RingSource::open`].
    pub fn refresh(&mut self) -> Result<(), TraceError> {
        // A replaced file's records not yet read are let go with it, and counted as lost.
        let (lost, frame) = (&mut self.lost, &mut self.frame);
        self.rings
            .retain_mut(|ring| match std::fs::metadata(&ring.path) {
                Ok(meta) if ring.reader.is_file(&meta) => true,
                _ => {
                    while ring.reader.next(&mut ring.cursor, frame).is_some() {
                        *lost += 1;
                    }
                    *lost += ring.cursor.skipped - ring.counted;
                    false
                }
            });
        for path in ring_paths(&self.dir)? {
            if self.rings.iter().all(|r| r.path != path) {
                let reader = RingReader::open(&path)?;
                let cursor = reader.oldest();
                self.rings.push(Ring {
                    path,
                    reader,
                    cursor,
                    counted: 0,
                });
            }
        }
        Ok(())
    }

    /// The next valid record of any ring, or `None` when every ring is caught up.
    pub fn next_record(&mut self) -> Option<&ArchivedTraceEvent<'static>> {
        let count = self.rings.len();
        for step in 0..count {
            let index = (self.next_ring + step) % count;
            let ring = &mut self.rings[index];
            while ring
                .reader
                .next(&mut ring.cursor, &mut self.frame)
                .is_some()
            {
                self.lost += ring.cursor.skipped - ring.counted;
                ring.counted = ring.cursor.skipped;
                self.record.clear();
                self.record.extend_from_slice(&self.frame);
                if access_record(&self.record).is_none() {
                    self.invalid += 1;
                    continue;
                }
                self.next_ring = (index + 1) % count;
                return access_record(&self.record);
            }
            self.lost += ring.cursor.skipped - ring.counted;
            ring.counted = ring.cursor.skipped;
        }
        None
    }

    /// Records lost in the rings (overwritten before they were read, or torn) since the last
    /// call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Frames skipped because they were not valid records.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// How many rings are being followed.
    pub fn rings(&self) -> usize {
        self.rings.len()
    }
}

/// `core-<n>.ring` files of `dir`, by worker number; none when `dir` does not exist.
fn ring_paths(dir: &Path) -> Result<Vec<PathBuf>, TraceError> {
    let io = |source| TraceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let worker = name
            .to_str()
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.strip_suffix(".ring"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(worker) = worker {
            found.push((worker, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::{TempDir, full_event};
    use crate::trace::{MIN_RING_BYTES, TraceConfig, TraceEvent, TraceWriter};

    fn writer(dir: &Path, worker: usize) -> TraceWriter {
        let cfg = TraceConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: MIN_RING_BYTES,
            reset: false,
        };
        TraceWriter::open(&cfg, worker).expect("open writer")
    }

    fn drain(source: &mut RingSource) -> Vec<u64> {
        std::iter::from_fn(|| source.next_record().map(|r| r.span_id.to_native())).collect()
    }

    fn event(span_id: u64) -> TraceEvent<'static> {
        TraceEvent {
            span_id,
            ..full_event()
        }
    }

    #[test]
    fn follows_every_ring_and_rings_that_appear_later() {
        let dir = TempDir::new("export-source");
        let traces = dir.path().join("traces");
        let mut source = RingSource::open(&traces, Start::Oldest).expect("open missing dir");
        assert_eq!(source.rings(), 0);
        let mut w0 = writer(&traces, 0);
        w0.write(&event(1));
        source.refresh().expect("refresh");
        assert_eq!(drain(&mut source), [1]);
        let mut w1 = writer(&traces, 1);
        w0.write(&event(2));
        w1.write(&event(3));
        source.refresh().expect("refresh");
        let mut got = drain(&mut source);
        got.sort();
        assert_eq!(got, [2, 3]);
        assert_eq!(source.take_lost(), 0);
    }

    #[test]
    fn newest_skips_what_was_there_before() {
        let dir = TempDir::new("export-newest");
        let mut w = writer(dir.path(), 0);
        (1..=5).for_each(|i| w.write(&event(i)));
        let mut source = RingSource::open(dir.path(), Start::Newest).expect("open");
        assert_eq!(drain(&mut source), Vec::<u64>::new());
        w.write(&event(6));
        assert_eq!(drain(&mut source), [6]);
    }

    #[test]
    fn a_replaced_ring_is_reopened_from_its_oldest() {
        let dir = TempDir::new("export-replaced");
        let mut w = writer(dir.path(), 0);
        w.write(&event(1));
        let mut source = RingSource::open(dir.path(), Start::Oldest).expect("open");
        assert_eq!(drain(&mut source), [1]);
        w.write(&event(2));
        drop(w);
        let cfg = TraceConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: MIN_RING_BYTES,
            reset: true,
        };
        let mut w = TraceWriter::open(&cfg, 0).expect("reset writer");
        w.write(&event(3));
        source.refresh().expect("refresh");
        assert_eq!(drain(&mut source), [3]);
        assert_eq!(source.take_lost(), 1, "record 2 went with the old file");
    }

    #[test]
    fn overwritten_records_are_counted() {
        let dir = TempDir::new("export-lost");
        let mut w = writer(dir.path(), 0);
        let mut source = RingSource::open(dir.path(), Start::Oldest).expect("open");
        // Far more than a 64 KiB ring holds: the reader is lapped.
        let total = 2000u64;
        (1..=total).for_each(|i| w.write(&event(i)));
        let got = drain(&mut source);
        let lost = source.take_lost();
        assert!(lost > 0, "nothing counted as lost");
        assert_eq!(
            got.len() as u64 + lost,
            total,
            "every record read or counted"
        );
        assert_eq!(got.last(), Some(&total));
        assert_eq!(source.take_lost(), 0, "taken once");
    }
}

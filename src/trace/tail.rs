//! Following the rings of a directory as they grow: new records of every ring, rings that
//! appear (a proxy started with more workers) and rings that are replaced (`--trace-reset`
//! renames a fresh file over the old one; the old mapping stays valid, and the new file is
//! opened from its oldest record). `traces --follow` and the exporters read through it.
//!
//! It does not sort, filter or render: records come ring by ring, in each ring's order, and the
//! caller decides (see `query.rs`).
//!
//! ```no_run
//! # use phantom_fast::trace::{Start, Tail};
//! let mut tail = Tail::open("traces".as_ref(), Start::Newest)?;
//! loop {
//!     tail.poll(&mut |rec| println!("{} {:016x}", rec.worker, rec.event.span_id))?;
//!     std::thread::sleep(std::time::Duration::from_millis(100));
//! }
//! # Ok::<(), phantom_fast::trace::TraceError>(())
//! ```

use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::ring::{Cursor, RingReader, RingUsage};
use super::{ArchivedTraceEvent, TraceError, access_record};

/// Where [`Tail::open`] starts in the rings that exist when it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At the oldest record still in each ring (the backlog first).
    Oldest,
    /// After the newest: only records written from now on. Rings that appear or are replaced
    /// later are always read from their oldest record.
    Newest,
}

/// One record handed to the [`Tail::poll`] callback, borrowed from the tail's reused buffer.
#[derive(Clone, Copy)]
pub struct TailRecord<'r> {
    /// The worker whose ring it is in (`core-<worker>.ring`).
    pub worker: usize,
    /// Its sequence number in that ring.
    pub seq: u64,
    /// The validated payload bytes (16-aligned); copy them to keep the record.
    pub bytes: &'r [u8],
    /// The record, read in place.
    pub event: &'r ArchivedTraceEvent<'static>,
}

/// One ring being followed.
struct Followed {
    worker: usize,
    path: PathBuf,
    reader: RingReader,
    cursor: Cursor,
}

/// The rings of one directory, each with its read position.
pub struct Tail {
    dir: PathBuf,
    /// A missing directory is "no rings yet", not an error ([`Tail::open_or_wait`]).
    missing_ok: bool,
    rings: Vec<Followed>,
    /// Reused copy of the current frame, as it comes out of the ring.
    frame: Vec<u8>,
    /// Reused 16-aligned copy for validation.
    aligned: AlignedVec,
    /// Records lost to readers' lapping or corruption in rings no longer followed.
    skipped_closed: u64,
    /// Frames with a valid checksum that were not records of this schema.
    invalid: u64,
    /// Rings reopened because their file was replaced.
    reopened: u64,
}

impl Tail {
    /// Opens every `core-<n>.ring` in `dir`, positioned as `start` says.
    ///
    /// # Errors
    /// [`TraceError::Io`] when `dir` cannot be listed or a ring opened; [`TraceError::Format`]
    /// naming a file that is not a ring of this format.
    pub fn open(dir: &Path, start: Start) -> Result<Tail, TraceError> {
        Tail::open_with(dir, start, false)
    }

    /// Like [`Tail::open`], but a directory that does not exist yet (or holds no rings) is
    /// followed until rings appear: for exporters started beside, or before, the proxy.
    ///
    /// # Errors
    /// As [`Tail::open`], except for a missing directory.
    pub fn open_or_wait(dir: &Path, start: Start) -> Result<Tail, TraceError> {
        Tail::open_with(dir, start, true)
    }

    fn open_with(dir: &Path, start: Start, missing_ok: bool) -> Result<Tail, TraceError> {
        let mut tail = Tail {
            dir: dir.to_path_buf(),
            missing_ok,
            rings: Vec::new(),
            frame: Vec::new(),
            aligned: AlignedVec::new(),
            skipped_closed: 0,
            invalid: 0,
            reopened: 0,
        };
        tail.rescan(start)?;
        Ok(tail)
    }

    /// Hands every record written since the last call to `each`, ring by ring; then looks for
    /// rings that appeared or were replaced and hands their records too. Returns how many. One
    /// call reads each ring only up to where its writer was when the call began, so a busy ring
    /// cannot keep the others waiting.
    ///
    /// # Errors
    /// As [`Tail::open`], for a ring that appeared or was replaced.
    pub fn poll(&mut self, each: &mut dyn FnMut(TailRecord<'_>)) -> Result<usize, TraceError> {
        let mut n = self.drain(each);
        // Drained first: a replaced ring's old file holds nothing more for us afterwards (its
        // writer is gone: replacing takes the writer's lock).
        if self.rescan(Start::Oldest)? {
            n += self.drain(each);
        }
        Ok(n)
    }

    /// Records the readers could not return: overwritten before they were read, corrupt, or
    /// not of this schema.
    pub fn skipped(&self) -> u64 {
        self.skipped_closed
            + self.invalid
            + self.rings.iter().map(|r| r.cursor.skipped).sum::<u64>()
    }

    /// How often a ring's file was replaced and reopened.
    pub fn reopened(&self) -> u64 {
        self.reopened
    }

    /// The rings followed, as (worker, path).
    pub fn rings(&self) -> impl Iterator<Item = (usize, &Path)> {
        self.rings.iter().map(|r| (r.worker, r.path.as_path()))
    }

    /// The followed rings' header counters, summed (written, overwritten, dropped since each
    /// ring was created).
    pub fn usage(&self) -> RingUsage {
        self.rings
            .iter()
            .fold(RingUsage::default(), |sum, r| sum.plus(r.reader.usage()))
    }

    fn drain(&mut self, each: &mut dyn FnMut(TailRecord<'_>)) -> usize {
        let mut n = 0;
        for ring in &mut self.rings {
            let until = ring.reader.usage().written;
            while ring.cursor.next_seq() <= until
                && let Some(seq) = ring.reader.next(&mut ring.cursor, &mut self.frame)
            {
                self.aligned.clear();
                self.aligned.extend_from_slice(&self.frame);
                // A frame with a valid crc that is not a valid record (another schema, a bug)
                // is skipped like a torn frame.
                let Some(event) = access_record(&self.aligned) else {
                    self.invalid += 1;
                    continue;
                };
                n += 1;
                each(TailRecord {
                    worker: ring.worker,
                    seq,
                    bytes: &self.aligned,
                    event,
                });
            }
        }
        n
    }

    /// Opens rings that appeared and reopens rings whose file was replaced; forgets rings
    /// whose file is gone. Returns whether anything was opened.
    fn rescan(&mut self, start: Start) -> Result<bool, TraceError> {
        let listed = match ring_paths(&self.dir) {
            Err(TraceError::Io { source, .. })
                if self.missing_ok && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            other => other?,
        };
        let mut kept = Vec::with_capacity(listed.len());
        let mut replaced = Vec::new();
        for ring in self.rings.drain(..) {
            match std::fs::metadata(&ring.path) {
                Ok(meta) if ring.reader.is_file(&meta) => kept.push(ring),
                _ => {
                    self.skipped_closed += ring.cursor.skipped;
                    replaced.push(ring.path);
                }
            }
        }
        let mut opened = false;
        for (worker, path) in listed {
            if kept.iter().any(|r| r.path == path) {
                continue;
            }
            let reader = RingReader::open(&path)?;
            let cursor = match start {
                Start::Oldest => reader.oldest(),
                Start::Newest => reader.newest(),
            };
            if replaced.contains(&path) {
                self.reopened += 1;
            }
            opened = true;
            kept.push(Followed {
                worker,
                path,
                reader,
                cursor,
            });
        }
        kept.sort_by_key(|r| r.worker);
        self.rings = kept;
        Ok(opened)
    }
}

/// `core-<n>.ring` files of `dir`, by worker number.
pub(super) fn ring_paths(dir: &Path) -> Result<Vec<(usize, PathBuf)>, TraceError> {
    let io = |source| TraceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let worker = name
            .to_str()
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.strip_suffix(".ring"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(worker) = worker {
            found.push((worker, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::{TempDir, full_event};
    use crate::trace::{MIN_RING_BYTES, TraceConfig, TraceEvent, TraceWriter};

    fn cfg(dir: &Path, reset: bool) -> TraceConfig {
        TraceConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: MIN_RING_BYTES,
            reset,
        }
    }

    fn urls(tail: &mut Tail) -> Vec<String> {
        let mut got = Vec::new();
        tail.poll(&mut |rec| got.push(String::from_utf8_lossy(rec.event.url.get()).into_owned()))
            .expect("poll");
        got
    }

    #[test]
    fn tail_follows_growth_new_rings_and_replaced_rings() {
        let dir = TempDir::new("tail-follow");
        let mut w0 = TraceWriter::open(&cfg(dir.path(), false), 0).expect("ring 0");
        w0.write(&TraceEvent {
            url: b"backlog",
            ..full_event()
        });
        let mut newest = Tail::open(dir.path(), Start::Newest).expect("tail");
        let mut oldest = Tail::open(dir.path(), Start::Oldest).expect("tail");
        assert_eq!(urls(&mut oldest), ["backlog"]);
        assert!(urls(&mut newest).is_empty());
        w0.write(&TraceEvent {
            url: b"grown",
            ..full_event()
        });
        assert_eq!(urls(&mut newest), ["grown"]);
        // A ring that appears is read from its oldest record.
        let mut w1 = TraceWriter::open(&cfg(dir.path(), false), 1).expect("ring 1");
        w1.write(&TraceEvent {
            url: b"new-ring",
            ..full_event()
        });
        assert_eq!(urls(&mut newest), ["new-ring"]);
        // A ring replaced by --trace-reset is reopened from its oldest record.
        drop(w0);
        let mut w0 = TraceWriter::open(&cfg(dir.path(), true), 0).expect("reset ring 0");
        w0.write(&TraceEvent {
            url: b"after-reset",
            ..full_event()
        });
        assert_eq!(urls(&mut newest), ["after-reset"]);
        assert_eq!(newest.reopened(), 1);
        assert_eq!(newest.rings().count(), 2);
        assert_eq!(newest.usage().written, 2);
    }

    #[test]
    fn tail_open_or_wait_follows_a_directory_that_appears_later() {
        let root = TempDir::new("tail-wait");
        let dir = root.path().join("later");
        assert!(Tail::open(&dir, Start::Newest).is_err());
        let mut tail = Tail::open_or_wait(&dir, Start::Newest).expect("missing dir is fine");
        assert!(urls(&mut tail).is_empty());
        let mut w = TraceWriter::open(&cfg(&dir, false), 0).expect("ring 0");
        w.write(&TraceEvent {
            url: b"first",
            ..full_event()
        });
        assert_eq!(urls(&mut tail), ["first"]);
    }

    #[test]
    fn tail_poll_reads_only_what_was_written_when_it_began() {
        let dir = TempDir::new("tail-bounded");
        let mut w = TraceWriter::open(&cfg(dir.path(), false), 0).expect("ring 0");
        w.write(&TraceEvent {
            url: b"one",
            ..full_event()
        });
        w.write(&TraceEvent {
            url: b"two",
            ..full_event()
        });
        let mut tail = Tail::open(dir.path(), Start::Oldest).expect("tail");
        let mut got = Vec::new();
        // A writer that keeps up with the reader: each record read makes another appear.
        tail.poll(&mut |rec| {
            got.push(String::from_utf8_lossy(rec.event.url.get()).into_owned());
            w.write(&TraceEvent {
                url: b"more",
                ..full_event()
            });
        })
        .expect("poll");
        assert_eq!(got, ["one", "two"]);
        assert_eq!(urls(&mut tail), ["more", "more"]);
    }
}

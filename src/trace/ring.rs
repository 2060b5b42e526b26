//! The memory-mapped ring file of one core: a fixed-size file of self-validating frames that wraps
//! around and overwrites the oldest, survives SIGKILL, and can be read while it is written.
//!
//! Bytes in, bytes out: it knows nothing of rkyv or of what a record holds.
//!
//! # File layout (all integers little-endian)
//! ```text
//! 0   magic "PFTRACE\0"        8   format version u32   12  header bytes u32 (128)
//! 16  data capacity u64        24  header generation u64 (odd while the writer updates it)
//! 32  write position u64       40  next sequence u64
//! 48  tail position u64        56  tail sequence u64 (== next sequence when empty)
//! 64  records dropped u64 (not stored: too large, or the write failed)
//! 72  reserved, zero
//! 128 data: frames, each starting at a 16-byte aligned offset
//! ```
//! A frame is `seq u64 | len u32 | crc32 u32 | payload | zero pad to 16`, where the crc covers
//! seq, len and payload. Sequence numbers start at 1 and are consecutive; 0 marks a free or
//! evicted frame. A frame whose `len` is [`WRAP_MARKER_LEN`] is a wrap marker: the frame with
//! its `seq` is at data offset 0. The static header fields (magic .. capacity) are checked
//! against the file; the dynamic ones are hints that recovery verifies frame by frame.
//!
//! # Concurrency and crashes
//! One writer per file (the core that owns it), any number of readers in any process. A frame is
//! published seqlock-style: the writer first zeroes the `seq` of every frame it is about to
//! overwrite (Release fence), then writes `len`, `crc` and payload, and stores `seq` last with
//! Release. A reader loads `seq` (Acquire), copies the frame out, fences (Acquire), reloads `seq`
//! and checks the crc on its copy: a torn or concurrently overwritten frame fails one of the two
//! checks and is never returned. The mapping is `MAP_SHARED`, so after SIGKILL the page cache
//! holds every published frame; a torn last frame fails its crc and recovery appends after the
//! last valid one.
//!
//! # Space and replacement
//! A ring's whole file is reserved when it is created (`fallocate`, or writing every block where
//! the filesystem has none), so no page of the mapping can ever fault for want of disk: a ring
//! that does not fit fails at startup instead. A new ring (first start, or `--trace-reset`) is
//! built under a temporary name and renamed into place, so a reader never sees a half-made file
//! and a reader's old mapping is never truncated under it; readers notice the new inode and
//! reopen (`tail.rs`). Records evicted by wrapping are `tail sequence - 1`; records dropped by
//! the writer are counted in the header too, so any process can read both.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use memmap2::{Advice, Mmap, MmapMut};

use super::TraceError;

/// File magic: identifies a phantom-fast ring (the version is a separate field).
const RING_MAGIC: [u8; 8] = *b"PFTRACE\0";
/// Ring format version; bump on any change to the header, framing or record schema.
/// Version 2: the 128-byte header with the dropped-record counter, and record schema 2.
/// Version 3: record schema 3 ([`super::RECORD_SCHEMA`]; the same header and framing).
const FORMAT_VERSION: u32 = 3;
/// Bytes before the first frame.
const HEADER_BYTES: u64 = 128;
/// Bytes of a frame's own header (seq, len, crc) before its payload.
const FRAME_HEADER_BYTES: u64 = 16;
/// Frames start at multiples of this, so a payload in the (page-aligned) mapping is aligned for
/// rkyv archives (whose strictest member, `u128`, needs 16).
const FRAME_ALIGN_BYTES: u64 = 16;
/// Smallest accepted ring file: below this a ring holds too few typical (1–2 KiB) records.
pub const MIN_RING_BYTES: u64 = 64 * 1024;
/// `len` value of a wrap marker frame.
const WRAP_MARKER_LEN: u32 = u32::MAX;

const CORRUPT_POSITIONS: &str = "corrupt ring header (positions); use --trace-reset to recreate it";

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HEADER_BYTES: usize = 12;
const OFF_CAPACITY: usize = 16;
const OFF_GENERATION: usize = 24;
const OFF_WRITE_POS: usize = 32;
const OFF_NEXT_SEQ: usize = 40;
const OFF_TAIL_POS: usize = 48;
const OFF_TAIL_SEQ: usize = 56;
const OFF_DROPPED: usize = 64;

/// Chunk size of the fallback that reserves space by rewriting every block.
const RESERVE_CHUNK_BYTES: usize = 1 << 20;
/// The writer makes the pages of the next chunk of this many file bytes writable (one
/// `MADV_POPULATE_WRITE`) as its frames enter a chunk, so a page written back since the last lap
/// costs a batched fault instead of a page fault on the request path. A multiple of any page size.
const PREFAULT_CHUNK_BYTES: u64 = 256 * 1024;
/// Most of a ring [`RingWriter::prefault`] populates at startup (~25 ms per 64 MiB): a larger ring
/// would hold up the start, and dirty that much page cache at once, for pages the chunk-ahead
/// population reaches anyway.
const PREFAULT_AT_START_BYTES: usize = 256 * 1024 * 1024;

/// How often a reader re-reads a header whose generation is odd before taking it as is (a
/// writer killed mid-update leaves it odd forever; the fields are hints, so that is safe).
const HEADER_READ_ATTEMPTS: u32 = 1000;
/// How often a reader re-synchronises (lapped by the writer, or skipping a corrupt frame) in one
/// call before giving up until the next call.
const MAX_RESYNCS_PER_READ: u32 = 64;
/// Largest sequence number a header may claim: far beyond any real ring (2^62 records), small
/// enough that `seq + 1` never overflows.
const MAX_SEQ: u64 = 1 << 62;

/// Why a payload was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendError {
    /// The framed payload is larger than the whole ring (or than `u32::MAX - 1`).
    TooLarge,
}

/// What a ring has seen since it was created, from its header: any process can read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingUsage {
    /// Records stored (sequence numbers handed out).
    pub written: u64,
    /// Records overwritten by newer ones when the ring wrapped (the oldest go first).
    pub overwritten: u64,
    /// Records the writer could not store (larger than the ring, or the write failed).
    pub dropped: u64,
}

impl RingUsage {
    /// Field-wise sum (several rings).
    pub fn plus(self, other: RingUsage) -> RingUsage {
        RingUsage {
            written: self.written + other.written,
            overwritten: self.overwritten + other.overwritten,
            dropped: self.dropped + other.dropped,
        }
    }

    /// What happened between `earlier` and `self` (the same rings, read twice).
    pub fn since(self, earlier: RingUsage) -> RingUsage {
        RingUsage {
            written: self.written.saturating_sub(earlier.written),
            overwritten: self.overwritten.saturating_sub(earlier.overwritten),
            dropped: self.dropped.saturating_sub(earlier.dropped),
        }
    }

    fn of(snap: HeaderSnapshot, dropped: u64) -> RingUsage {
        RingUsage {
            written: snap.next_seq.saturating_sub(1),
            overwritten: snap.tail_seq.min(snap.next_seq).saturating_sub(1),
            dropped,
        }
    }
}

/// The dynamic header fields, read as one consistent snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderSnapshot {
    write_pos: u64,
    next_seq: u64,
    tail_pos: u64,
    tail_seq: u64,
}

/// What sits at a data offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// A valid record frame; its payload was copied out. `next` is the offset after it.
    Record { seq: u64, next: u64 },
    /// A valid wrap marker: the frame with `seq` is at offset 0.
    Wrap { seq: u64 },
    /// Free, evicted, torn, corrupt or being overwritten.
    Invalid,
}

/// Bytes a frame with a payload of `len` bytes occupies.
fn frame_bytes(len: u64) -> u64 {
    FRAME_HEADER_BYTES + len.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

/// CRC-32 of `seq`, `len` (little-endian) and `payload`, one after the other. The 12 header bytes
/// are joined with the payload's first bytes, and the rest is either empty or at least 16 bytes,
/// so crc32fast folds every piece with its carry-less multiply kernel: its table-driven path for
/// pieces under 16 bytes looks up 16 KiB of tables that are cold when a record is written (it
/// cost ~0.25 µs per record).
fn frame_crc(seq: u64, len: u32, payload: &[u8]) -> u32 {
    const HEAD: usize = 12;
    const JOINED: usize = 52;
    let mut first = [0u8; HEAD + JOINED + 15];
    first[..8].copy_from_slice(&seq.to_le_bytes());
    first[8..HEAD].copy_from_slice(&len.to_le_bytes());
    let joined = if payload.len() < JOINED + 16 {
        payload.len()
    } else {
        JOINED
    };
    first[HEAD..HEAD + joined].copy_from_slice(&payload[..joined]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&first[..HEAD + joined]);
    hasher.update(&payload[joined..]);
    hasher.finalize()
}

/// Checks the static header of a mapped ring against the file length; returns the data capacity.
fn check_header(map: &[u8]) -> Result<u64, &'static str> {
    if (map.len() as u64) < HEADER_BYTES {
        return Err("file is shorter than a ring header (truncated, or not a trace ring)");
    }
    if map[OFF_MAGIC..OFF_MAGIC + 8] != RING_MAGIC {
        return Err("not a phantom-fast trace ring (bad magic)");
    }
    let u32_at = |off: usize| {
        let mut le = [0u8; 4];
        le.copy_from_slice(&map[off..off + 4]);
        u32::from_le_bytes(le)
    };
    if u32_at(OFF_VERSION) != FORMAT_VERSION {
        return Err(
            "ring of another format version (another phantom-fast release); use --trace-reset to recreate it",
        );
    }
    if u64::from(u32_at(OFF_HEADER_BYTES)) != HEADER_BYTES {
        return Err("corrupt ring header (header size)");
    }
    let mut le = [0u8; 8];
    le.copy_from_slice(&map[OFF_CAPACITY..OFF_CAPACITY + 8]);
    let capacity = u64::from_le_bytes(le);
    if capacity % FRAME_ALIGN_BYTES != 0 || capacity < MIN_RING_BYTES - HEADER_BYTES {
        return Err("corrupt ring header (capacity)");
    }
    if HEADER_BYTES.checked_add(capacity) != Some(map.len() as u64) {
        return Err("file length does not match the ring header (truncated or extended)");
    }
    Ok(capacity)
}

/// Raw access to a mapped ring: `base` points at the start of a mapping of at least
/// `HEADER_BYTES + cap` bytes that outlives the view. All shared-memory access goes through
/// here, by raw pointer, because another process may write the mapping at any time.
#[derive(Clone, Copy)]
struct View {
    base: *mut u8,
    cap: u64,
}

impl View {
    fn atomic(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off as u64 + 8 <= HEADER_BYTES + self.cap);
        // SAFETY: `off` is 8-aligned (header offsets are multiples of 8, frame offsets multiples
        // of 16 after a 64-byte header) inside a page-aligned mapping that lives as long as the
        // view (struct invariant); every access to these words, from any process, is atomic.
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast::<u64>()) }
    }

    fn load(&self, off: usize, order: Ordering) -> u64 {
        u64::from_le(self.atomic(off).load(order))
    }

    fn store(&self, off: usize, value: u64, order: Ordering) {
        self.atomic(off).store(value.to_le(), order);
    }

    /// Data offset → mapping offset.
    fn data(pos: u64) -> usize {
        (HEADER_BYTES + pos) as usize
    }

    fn read_u32(&self, off: usize) -> u32 {
        debug_assert!(off as u64 + 4 <= HEADER_BYTES + self.cap);
        // SAFETY: in bounds of the mapping (callers check against `cap`), 4-aligned; volatile
        // because another process may change it: the seqlock re-check decides what is kept.
        u32::from_le(unsafe { ptr::read_volatile(self.base.add(off).cast::<u32>()) })
    }

    fn write_u32(&self, off: usize, value: u32) {
        // SAFETY: in bounds and 4-aligned as in `read_u32`; only the ring's single writer writes.
        unsafe { ptr::write_volatile(self.base.add(off).cast::<u32>(), value.to_le()) }
    }

    fn copy_out(&self, off: usize, len: usize, out: &mut Vec<u8>) {
        debug_assert!((off + len) as u64 <= HEADER_BYTES + self.cap);
        out.clear();
        out.reserve(len);
        // SAFETY: source in bounds of the mapping (callers check against `cap`); destination has
        // `len` reserved bytes; the regions cannot overlap (heap vs mapping). Torn source bytes
        // are caught by the seqlock re-check and crc.
        unsafe {
            ptr::copy_nonoverlapping(self.base.add(off), out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }

    fn copy_in(&self, off: usize, bytes: &[u8]) {
        debug_assert!((off + bytes.len()) as u64 <= HEADER_BYTES + self.cap);
        // SAFETY: destination in bounds (the writer places frames inside `cap`), the source is a
        // caller slice that cannot overlap the mapping; only the single writer writes.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) }
    }

    fn snapshot(&self) -> HeaderSnapshot {
        let mut attempts = 0;
        loop {
            let before = self.load(OFF_GENERATION, Ordering::Acquire);
            let snap = HeaderSnapshot {
                write_pos: self.load(OFF_WRITE_POS, Ordering::Relaxed),
                next_seq: self.load(OFF_NEXT_SEQ, Ordering::Relaxed),
                tail_pos: self.load(OFF_TAIL_POS, Ordering::Relaxed),
                tail_seq: self.load(OFF_TAIL_SEQ, Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            let after = self.load(OFF_GENERATION, Ordering::Relaxed);
            attempts += 1;
            if (before == after && before.is_multiple_of(2)) || attempts >= HEADER_READ_ATTEMPTS {
                return snap;
            }
            std::hint::spin_loop();
        }
    }

    fn publish_header(&self, snap: HeaderSnapshot) {
        let generation = self.load(OFF_GENERATION, Ordering::Relaxed);
        let odd = generation | 1;
        self.store(OFF_GENERATION, odd, Ordering::Relaxed);
        fence(Ordering::Release);
        self.store(OFF_WRITE_POS, snap.write_pos, Ordering::Relaxed);
        self.store(OFF_NEXT_SEQ, snap.next_seq, Ordering::Relaxed);
        self.store(OFF_TAIL_POS, snap.tail_pos, Ordering::Relaxed);
        self.store(OFF_TAIL_SEQ, snap.tail_seq, Ordering::Relaxed);
        self.store(OFF_GENERATION, odd.wrapping_add(1), Ordering::Release);
    }

    /// Reads the frame at data offset `pos`, copying a record's payload into `out`.
    fn probe(&self, pos: u64, out: &mut Vec<u8>) -> Probe {
        if !pos.is_multiple_of(FRAME_ALIGN_BYTES) || pos + FRAME_HEADER_BYTES > self.cap {
            return Probe::Invalid;
        }
        let off = Self::data(pos);
        let seq = self.load(off, Ordering::Acquire);
        if seq == 0 {
            return Probe::Invalid;
        }
        let len = self.read_u32(off + 8);
        let crc = self.read_u32(off + 12);
        let room = self.cap - pos - FRAME_HEADER_BYTES;
        if len == WRAP_MARKER_LEN {
            fence(Ordering::Acquire);
            let ok = self.load(off, Ordering::Relaxed) == seq && crc == frame_crc(seq, len, &[]);
            return if ok && pos > 0 {
                Probe::Wrap { seq }
            } else {
                Probe::Invalid
            };
        }
        if u64::from(len) > room {
            return Probe::Invalid;
        }
        self.copy_out(off + FRAME_HEADER_BYTES as usize, len as usize, out);
        fence(Ordering::Acquire);
        if self.load(off, Ordering::Relaxed) != seq || crc != frame_crc(seq, len, out) {
            return Probe::Invalid;
        }
        let next = pos + frame_bytes(u64::from(len));
        Probe::Record {
            seq,
            next: if next == self.cap { 0 } else { next },
        }
    }

    /// Like `probe` but trusts the frame header (no copy, no crc): the writer's view of its own
    /// frames when evicting. Returns the frame's seq, the offset after it, and whether it is a
    /// wrap marker.
    fn probe_own(&self, pos: u64, seqs: std::ops::Range<u64>) -> Option<(u64, u64, bool)> {
        if pos + FRAME_HEADER_BYTES > self.cap {
            return None;
        }
        let off = Self::data(pos);
        let seq = self.load(off, Ordering::Relaxed);
        if !seqs.contains(&seq) {
            return None;
        }
        let len = self.read_u32(off + 8);
        if len == WRAP_MARKER_LEN {
            return Some((seq, 0, true));
        }
        let room = self.cap - pos - FRAME_HEADER_BYTES;
        if u64::from(len) > room {
            return None;
        }
        let next = pos + frame_bytes(u64::from(len));
        Some((seq, if next == self.cap { 0 } else { next }, false))
    }
}

/// Whether the dynamic header fields can describe a ring of `cap` data bytes. Values left by a
/// writer killed mid-update (a mix of old and new fields) pass; random bytes do not.
fn plausible(snap: HeaderSnapshot, cap: u64) -> bool {
    let pos_ok = |pos: u64| pos < cap && pos.is_multiple_of(FRAME_ALIGN_BYTES);
    pos_ok(snap.write_pos)
        && pos_ok(snap.tail_pos)
        && snap.tail_seq >= 1
        && snap.next_seq <= MAX_SEQ
        && snap.tail_seq <= snap.next_seq + 1
        && snap.next_seq - snap.tail_seq.min(snap.next_seq) <= cap / FRAME_HEADER_BYTES
}

/// Where a reader is: the offset where it expects the frame with sequence `want`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pos: u64,
    want: u64,
    /// The header's next sequence number when last looked at: a header that goes backwards is
    /// a ring recreated under us (`--trace-reset`), the one case where `want` may go back.
    header_seq: u64,
    /// Records the reader could not return because they were overwritten or corrupt.
    pub skipped: u64,
}

impl Cursor {
    /// Sequence number of the record this cursor reads next.
    pub fn next_seq(&self) -> u64 {
        self.want
    }
}

/// Follows the frame chain from `cur`; on a gap, consults the header to tell "caught up" from
/// "lapped" from "corrupt" and re-synchronises. Shared by readers and writer recovery.
fn read_next(view: View, cur: &mut Cursor, out: &mut Vec<u8>) -> Option<u64> {
    // Bounds the work of one call: wraps followed plus resynchronisations.
    let mut steps = 0;
    loop {
        steps += 1;
        if steps > MAX_RESYNCS_PER_READ {
            return None;
        }
        match view.probe(cur.pos, out) {
            Probe::Record { seq, next } if seq == cur.want => {
                cur.pos = next;
                cur.want = seq + 1;
                return Some(seq);
            }
            Probe::Wrap { seq } if seq == cur.want => {
                cur.pos = 0;
                continue;
            }
            _ => {}
        }
        let snap = view.snapshot();
        if snap.next_seq < cur.header_seq {
            // The header went backwards: the ring was recreated under us (`--trace-reset`);
            // start over at its oldest. Judging by the header alone keeps a static file, however
            // corrupt, from sending the reader round in circles: its `want` only grows.
            cur.pos = snap.tail_pos;
            cur.want = snap.tail_seq;
            cur.header_seq = snap.next_seq;
            continue;
        }
        cur.header_seq = snap.next_seq;
        if cur.want >= snap.next_seq {
            return None; // caught up with the writer (or a torn tail after a crash)
        }
        if cur.want < snap.tail_seq {
            // Lapped: the writer overwrote what we wanted; continue at its oldest record.
            cur.skipped += snap.tail_seq - cur.want;
            cur.pos = snap.tail_pos;
            cur.want = snap.tail_seq;
            continue;
        }
        // A corrupt frame inside the live range: find the next valid one, in ring order.
        match scan(view, cur.pos, cur.want..snap.next_seq, out) {
            Some((pos, seq)) => {
                cur.skipped += seq - cur.want;
                cur.pos = pos;
                cur.want = seq;
            }
            None => {
                cur.skipped += snap.next_seq - cur.want;
                cur.pos = snap.write_pos;
                cur.want = snap.next_seq;
                return None;
            }
        }
    }
}

/// Searches the ring, starting at `from` and wrapping once, for the first valid frame whose seq
/// is in `seqs`. Returns its offset and seq.
///
/// `from` itself is searched first: the caller probed it before reading the header, and a writer
/// may have completed the frame there in between. Starting one slot later skipped that record —
/// a reader that had caught up lost the next record now and then, and a reader waiting for the
/// writer's last record waited forever.
fn scan(
    view: View,
    from: u64,
    seqs: std::ops::Range<u64>,
    out: &mut Vec<u8>,
) -> Option<(u64, u64)> {
    let slots = view.cap / FRAME_ALIGN_BYTES;
    let start = from - from % FRAME_ALIGN_BYTES;
    for i in 0..slots {
        let pos = (start + i * FRAME_ALIGN_BYTES) % view.cap;
        // Cheap pre-check before the crc: the seq must be in range.
        let seq = view.load(View::data(pos), Ordering::Acquire);
        if !seqs.contains(&seq) {
            continue;
        }
        match view.probe(pos, out) {
            Probe::Record { seq, .. } | Probe::Wrap { seq } if seqs.contains(&seq) => {
                return Some((pos, seq));
            }
            _ => {}
        }
    }
    None
}

/// The writing end of one ring file. One per worker; `Send`, not `Sync`.
pub struct RingWriter {
    path: PathBuf,
    map: MmapMut,
    cap: u64,
    /// Where the next frame goes.
    head: u64,
    /// Seq of the next record.
    next_seq: u64,
    /// Where the oldest live frame starts (meaningless when empty).
    tail: u64,
    /// Seq of the oldest live frame; `== next_seq` iff the ring is empty.
    tail_seq: u64,
    /// Frames whose seq was zeroed since the last header publish (scratch for `append`).
    evicted: bool,
    /// Records not stored (counted by the caller), mirrored in the header.
    dropped: u64,
    /// The file chunk ([`PREFAULT_CHUNK_BYTES`]) the last frame ended in; the one after it has
    /// been made writable. `None` once the kernel refused (before Linux 5.14): faults then come
    /// one page at a time, as without it.
    prefaulted: Option<u64>,
    /// Kept open (and locked) for the life of the mapping.
    _file: File,
}

impl RingWriter {
    /// Creates `path` (size `capacity_bytes`, rounded down to whole frames) or reopens it.
    /// Reopening validates the header and resumes after the last valid frame with the next
    /// sequence number; `reset` replaces the file with a fresh ring instead (built beside it and
    /// renamed into place: a reader's mapping of the old file stays valid). The whole file is
    /// reserved on disk either way, so appending can never fault on a page the disk cannot back.
    ///
    /// # Errors
    /// [`TraceError::NoSpace`] when the filesystem cannot hold the file;
    /// [`TraceError::Io`] when the file cannot be opened, sized or mapped;
    /// [`TraceError::Format`] when `capacity_bytes` is below [`MIN_RING_BYTES`], the file is not
    /// a ring of this format, its capacity differs from `capacity_bytes`, or another process is
    /// writing it.
    pub fn open(path: &Path, capacity_bytes: u64, reset: bool) -> Result<RingWriter, TraceError> {
        let format = |what| TraceError::Format {
            path: path.to_path_buf(),
            what,
        };
        let io = |source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        };
        if capacity_bytes < MIN_RING_BYTES {
            return Err(format("ring capacity is below the 64 KiB minimum"));
        }
        let cap = (capacity_bytes - HEADER_BYTES) / FRAME_ALIGN_BYTES * FRAME_ALIGN_BYTES;
        let file_len = HEADER_BYTES + cap;
        // One writer per ring: a second proxy on the same directory would interleave frames.
        // The lock lives as long as the file handle; the old file's lock is held until a
        // replacement has been renamed over it.
        let existing = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                lock_writer(&file).map_err(|e| e.for_path(path))?;
                Some(file)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let reuse = match &existing {
            Some(file) => !reset && file.metadata().map_err(io)?.len() != 0,
            None => false,
        };
        let (file, fresh) = match existing {
            Some(file) if reuse => (file, None),
            _ => {
                let tmp = temp_path(path);
                (create_reserved(path, &tmp, file_len)?, Some(tmp))
            }
        };
        let fail = |e: TraceError, fresh: &Option<PathBuf>| {
            if let Some(tmp) = fresh {
                let _ = std::fs::remove_file(tmp);
            }
            e
        };
        // SAFETY: the mapping is only accessed through `View` (raw pointers, atomics for the
        // words readers race on); the file is never truncated or shrunk while mapped (a reset
        // renames a new file over it). Other processes changing it concurrently is the
        // documented contract of the ring format.
        let mut map = match unsafe { MmapMut::map_mut(&file) } {
            Ok(map) => map,
            Err(e) => return Err(fail(io(e), &fresh)),
        };
        if fresh.is_some() {
            map[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&RING_MAGIC);
            map[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            map[OFF_HEADER_BYTES..OFF_HEADER_BYTES + 4]
                .copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
            map[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&cap.to_le_bytes());
        }
        let found = check_header(&map).map_err(format)?;
        if found != cap {
            return Err(format(
                "ring capacity differs from the configured capacity (use --trace-reset to recreate it)",
            ));
        }
        if fresh.is_none() {
            // A ring of an older release may be sparse: back every page now, not on a write.
            reserve(&file, file_len).map_err(|e| e.for_path(path))?;
        }
        let mut writer = RingWriter {
            path: path.to_path_buf(),
            map,
            cap,
            head: 0,
            next_seq: 1,
            tail: 0,
            tail_seq: 1,
            evicted: false,
            dropped: 0,
            prefaulted: Some(0),
            _file: file,
        };
        match &fresh {
            Some(tmp) => {
                writer.publish();
                if let Err(e) = std::fs::rename(tmp, path) {
                    return Err(fail(io(e), &fresh));
                }
            }
            None => {
                writer.dropped = writer.view().load(OFF_DROPPED, Ordering::Relaxed);
                writer.recover().map_err(format)?;
            }
        }
        Ok(writer)
    }

    /// Makes the pages of the mapping present and writable now (`MADV_POPULATE_WRITE`; the first
    /// 256 MiB of a larger ring), so the first lap of appends takes no page faults: faulting a
    /// page of a freshly reserved file on a write costs several µs (page-cache allocation, the
    /// file system's `page_mkwrite`), about 1.8 µs per typical record, against ~25 ms once per
    /// 64 MiB here. Call on the worker's thread before it serves. Best effort: on failure the
    /// pages fault in as they are written.
    pub fn prefault(&mut self) {
        let len = self.map.len().min(PREFAULT_AT_START_BYTES);
        if self
            .map
            .advise_range(Advice::PopulateWrite, 0, len)
            .is_err()
        {
            self.prefaulted = None;
        }
    }

    /// Once a frame ending at data offset `end` enters a new chunk, makes the chunk after it
    /// writable (the first, past the last). After writeback has write-protected a lap's pages, that
    /// is one call for 64 pages, ~40% cheaper than their faults; when they are still writable it
    /// only walks their page tables.
    fn prefault_ahead(&mut self, end: u64) {
        let Some(done) = self.prefaulted else {
            return;
        };
        let file_len = HEADER_BYTES + self.cap;
        let chunk = (HEADER_BYTES + end) / PREFAULT_CHUNK_BYTES;
        if chunk == done {
            return;
        }
        self.prefaulted = Some(chunk);
        let next = (chunk + 1) * PREFAULT_CHUNK_BYTES;
        let start = if next >= file_len { 0 } else { next };
        let len = PREFAULT_CHUNK_BYTES.min(file_len - start);
        // Both are below the mapping's length, which is a usize.
        if let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len))
            && self
                .map
                .advise_range(Advice::PopulateWrite, start, len)
                .is_err()
        {
            self.prefaulted = None;
        }
    }

    /// Counts one record the caller could not store, in the header where readers see it.
    pub fn note_dropped(&mut self) {
        self.dropped += 1;
        let dropped = self.dropped;
        self.view().store(OFF_DROPPED, dropped, Ordering::Relaxed);
    }

    /// Records written, overwritten by wrapping and dropped since the ring was created.
    pub fn usage(&self) -> RingUsage {
        RingUsage::of(self.snapshot(), self.dropped)
    }

    fn view(&mut self) -> View {
        View {
            base: self.map.as_mut_ptr(),
            cap: self.cap,
        }
    }

    /// Rebuilds the in-memory state from a reopened file: walk the chain from the header's tail
    /// to the last valid frame; append after it.
    fn recover(&mut self) -> Result<(), &'static str> {
        let view = self.view();
        let snap = view.snapshot();
        if !plausible(snap, self.cap) {
            return Err(CORRUPT_POSITIONS);
        }
        let (tail, tail_seq) = (snap.tail_pos, snap.tail_seq.min(snap.next_seq));
        let mut cur = Cursor {
            pos: tail,
            want: tail_seq,
            header_seq: snap.next_seq,
            skipped: 0,
        };
        let mut scratch = Vec::new();
        while read_next(view, &mut cur, &mut scratch).is_some() {}
        self.head = cur.pos;
        self.next_seq = cur.want;
        self.tail = tail;
        self.tail_seq = tail_seq.min(cur.want);
        if self.tail_seq == self.next_seq {
            self.tail = self.head;
        }
        self.publish();
        Ok(())
    }

    fn snapshot(&self) -> HeaderSnapshot {
        HeaderSnapshot {
            write_pos: self.head,
            next_seq: self.next_seq,
            tail_pos: self.tail,
            tail_seq: self.tail_seq,
        }
    }

    fn publish(&mut self) {
        let snap = self.snapshot();
        self.view().publish_header(snap);
    }

    /// Appends one payload as the next frame, evicting the oldest frames to make room.
    /// Returns its sequence number.
    ///
    /// # Errors
    /// [`AppendError::TooLarge`] when the framed payload exceeds the ring; nothing is written.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, AppendError> {
        let len = u32::try_from(payload.len()).map_err(|_| AppendError::TooLarge)?;
        let need = frame_bytes(u64::from(len));
        if len == WRAP_MARKER_LEN || need > self.cap {
            return Err(AppendError::TooLarge);
        }
        let seq = self.next_seq;
        let mut pos = self.head;
        if pos + need > self.cap {
            // Does not fit before the end: free the tail end and the start, then mark the wrap
            // unless nothing older remains (then the record simply becomes the oldest, at 0).
            self.evict(pos, self.cap);
            self.evict(0, need);
            if self.tail_seq != self.next_seq {
                self.write_marker(pos, seq);
            }
            pos = 0;
        } else {
            self.evict(pos, pos + need);
        }
        if self.evicted {
            // Readers must learn the new tail before its frames' bytes change.
            self.publish();
            self.evicted = false;
        }
        let view = self.view();
        let off = View::data(pos);
        view.write_u32(off + 8, len);
        view.write_u32(off + 12, frame_crc(seq, len, payload));
        view.copy_in(off + FRAME_HEADER_BYTES as usize, payload);
        view.store(off, seq, Ordering::Release);
        if self.tail_seq == self.next_seq {
            self.tail = pos;
            self.tail_seq = seq;
        }
        let end = pos + need;
        self.head = if end == self.cap { 0 } else { end };
        self.next_seq = seq + 1;
        self.publish();
        self.prefault_ahead(end);
        Ok(seq)
    }

    fn write_marker(&mut self, pos: u64, seq: u64) {
        let view = self.view();
        let off = View::data(pos);
        view.write_u32(off + 8, WRAP_MARKER_LEN);
        view.write_u32(off + 12, frame_crc(seq, WRAP_MARKER_LEN, &[]));
        view.store(off, seq, Ordering::Release);
    }

    /// Evicts live frames starting in `[from, to)`, oldest first: their seq is zeroed (so a
    /// reader copying one sees the change) before any of their bytes are overwritten.
    fn evict(&mut self, from: u64, to: u64) {
        let view = self.view();
        // Every step moves the tail forward by at least one slot, so a full lap empties the
        // ring; the bound only matters for a ring whose frames were corrupted on disk.
        let mut budget = self.cap / FRAME_ALIGN_BYTES + 1;
        while self.tail_seq != self.next_seq && (from..to).contains(&self.tail) {
            budget -= 1;
            match view.probe_own(self.tail, self.tail_seq..self.next_seq) {
                Some((seq, next, is_marker)) if budget > 0 => {
                    view.store(View::data(self.tail), 0, Ordering::Relaxed);
                    self.tail = next;
                    self.tail_seq = if is_marker { seq } else { seq + 1 };
                }
                Some(_) => self.tail = self.head,
                None => {
                    // Not a frame we can trust (corruption found at reopen): step over it.
                    self.tail = if budget > 0 {
                        (self.tail + FRAME_ALIGN_BYTES) % self.cap
                    } else {
                        self.head
                    };
                }
            }
            self.evicted = true;
            if self.tail == self.head {
                self.tail_seq = self.next_seq;
            }
        }
        if self.evicted {
            fence(Ordering::Release);
        }
    }

    /// Writes dirty pages to the file (msync). For shutdown: the page cache already makes every
    /// appended frame visible to readers and survives a crash of this process.
    ///
    /// # Errors
    /// The `msync` failure.
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// The ring file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number the next appended frame will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Data capacity in bytes (file size minus the header).
    pub fn capacity(&self) -> u64 {
        self.cap
    }
}

/// A failure of one file step, before it is tied to the ring's path.
enum FileError {
    Io(io::Error),
    /// Another process holds the writer's lock.
    Busy,
    /// The filesystem cannot hold `need` bytes (`free` were available).
    NoSpace {
        need: u64,
        free: u64,
    },
}

impl FileError {
    fn for_path(self, path: &Path) -> TraceError {
        match self {
            FileError::Io(source) => TraceError::Io {
                path: path.to_path_buf(),
                source,
            },
            FileError::Busy => TraceError::Format {
                path: path.to_path_buf(),
                what: "another phantom-fast is writing this ring (use another --trace-dir)",
            },
            FileError::NoSpace { need, free } => TraceError::NoSpace {
                dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                rings: 1,
                ring_bytes: need,
                free,
            },
        }
    }
}

/// Takes the writer's exclusive lock on `file` without waiting.
fn lock_writer(file: &File) -> Result<(), FileError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(FileError::Busy),
        Err(std::fs::TryLockError::Error(e)) => Err(FileError::Io(e)),
    }
}

/// Where a new ring is built before it is renamed to `path` (a name readers never list).
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("ring");
    path.with_file_name(format!(".{name}.{}.new", std::process::id()))
}

/// Creates `tmp` (replacing a stale one), locked, with `len` bytes reserved on disk; errors name
/// `ring`, the file it will become.
fn create_reserved(ring: &Path, tmp: &Path, len: u64) -> Result<File, TraceError> {
    let _ = std::fs::remove_file(tmp);
    let made = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(FileError::Io)
        .and_then(|file| {
            lock_writer(&file)?;
            reserve(&file, len)?;
            Ok(file)
        });
    made.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        e.for_path(ring)
    })
}

/// Makes the first `len` bytes of `file` allocated on disk (extending it to `len`): `fallocate`,
/// or, where the filesystem has none, rewriting every block with its own bytes.
fn reserve(file: &File, len: u64) -> Result<(), FileError> {
    use std::os::fd::AsRawFd;
    let off_len =
        libc::off_t::try_from(len).map_err(|_| FileError::NoSpace { need: len, free: 0 })?;
    // SAFETY: plain syscall on a descriptor `file` keeps open for the call.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => reserve_by_writing(file, len),
        Some(libc::ENOSPC | libc::EDQUOT) => Err(FileError::NoSpace {
            need: len,
            free: free_bytes(file),
        }),
        _ => Err(FileError::Io(err)),
    }
}

/// The fallback of [`reserve`]: reads each chunk and writes it back (zeros past the end), which
/// allocates holes and changes no byte, so it is safe on a ring that holds records.
fn reserve_by_writing(file: &File, len: u64) -> Result<(), FileError> {
    use std::os::unix::fs::FileExt;
    let mut chunk = vec![0u8; RESERVE_CHUNK_BYTES];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(RESERVE_CHUNK_BYTES as u64)).unwrap_or(0);
        let buf = &mut chunk[..n];
        buf.fill(0);
        let mut got = 0;
        while got < n {
            match file.read_at(&mut buf[got..], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FileError::Io(e)),
            }
        }
        match file.write_all_at(buf, at) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                return Err(FileError::NoSpace {
                    need: len,
                    free: free_bytes(file),
                });
            }
            Err(e) => return Err(FileError::Io(e)),
        }
        at += n as u64;
    }
    file.sync_data().map_err(FileError::Io)
}

/// Bytes an unprivileged process may still allocate on `file`'s filesystem (0 if unknown).
fn free_bytes(file: &File) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: `statvfs` is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor for the call, `st` is a valid out-pointer.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail.saturating_mul(st.f_frsize)
}

/// Bytes an unprivileged process may still allocate on the filesystem holding `dir`; `None`
/// when `dir` cannot be opened.
pub(super) fn free_bytes_at(dir: &Path) -> Option<u64> {
    File::open(dir).ok().map(|f| free_bytes(&f))
}

/// Bytes of `path` allocated on disk (0 when it does not exist).
pub(super) fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

/// A ring held under the writer's lock by someone who is not its writer (`traces clear`), so no
/// proxy can start writing it meanwhile.
pub struct RingLock {
    path: PathBuf,
    _file: File,
}

impl RingLock {
    /// Takes the writer's lock on the ring at `path` without waiting.
    ///
    /// # Errors
    /// [`TraceError::Format`] naming the ring when a running phantom-fast writes it;
    /// [`TraceError::Io`] when it cannot be opened.
    pub fn acquire(path: &Path) -> Result<RingLock, TraceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| TraceError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        lock_writer(&file).map_err(|e| e.for_path(path))?;
        Ok(RingLock {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    /// Deletes the ring (the lock goes with the handle).
    ///
    /// # Errors
    /// [`TraceError::Io`] when it cannot be removed.
    pub fn remove(self) -> Result<(), TraceError> {
        std::fs::remove_file(&self.path).map_err(|source| TraceError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Removes temporary rings (`.core-<n>.ring.<pid>.new`) in `dir` left by a phantom-fast that died
/// while creating them (its pid is gone): they hold reserved space.
pub(super) fn remove_stale_temp_rings(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .filter(|n| n.starts_with(".core-"))
            .and_then(|n| n.strip_suffix(".new"))
            .and_then(|n| n.rsplit('.').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The reading end of one ring file: a read-only shared mapping, safe to use while the owning
/// proxy appends.
pub struct RingReader {
    path: PathBuf,
    map: Mmap,
    cap: u64,
    /// Device and inode of the mapped file: a different one at `path` is a replaced ring.
    file_id: (u64, u64),
}

impl RingReader {
    /// Opens and maps `path`, checking its header.
    ///
    /// # Errors
    /// [`TraceError::Io`] when it cannot be opened or mapped; [`TraceError::Format`] when it is
    /// not a ring of this format (foreign file, truncated, wrong version).
    pub fn open(path: &Path) -> Result<RingReader, TraceError> {
        let io = |source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let len = meta.len();
        if len < HEADER_BYTES {
            return Err(TraceError::Format {
                path: path.to_path_buf(),
                what: "file is shorter than a ring header (truncated, or not a trace ring)",
            });
        }
        // SAFETY: read-only shared mapping accessed through `View` (raw pointers and atomics,
        // the seqlock protocol above); phantom-fast never truncates a ring (`--trace-reset`
        // renames a new file over it), so the mapping stays backed for its whole life.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let format = |what| TraceError::Format {
            path: path.to_path_buf(),
            what,
        };
        let cap = check_header(&map).map_err(format)?;
        let reader = RingReader {
            path: path.to_path_buf(),
            map,
            cap,
            file_id: file_id(&meta),
        };
        if !plausible(reader.view().snapshot(), cap) {
            return Err(format(CORRUPT_POSITIONS));
        }
        Ok(reader)
    }

    fn view(&self) -> View {
        // Readers never write through the pointer: `View`'s writing methods are only called
        // by `RingWriter`.
        View {
            base: self.map.as_ptr().cast_mut(),
            cap: self.cap,
        }
    }

    /// A cursor at the oldest record currently in the ring.
    pub fn oldest(&self) -> Cursor {
        let snap = self.view().snapshot();
        Cursor {
            pos: snap.tail_pos,
            want: snap.tail_seq.min(snap.next_seq),
            header_seq: snap.next_seq,
            skipped: 0,
        }
    }

    /// A cursor after the newest record: [`RingReader::next`] returns only records written
    /// from now on.
    pub fn newest(&self) -> Cursor {
        let snap = self.view().snapshot();
        Cursor {
            pos: snap.write_pos,
            want: snap.next_seq,
            header_seq: snap.next_seq,
            skipped: 0,
        }
    }

    /// Copies the next record's payload into `out` and returns its sequence number, or `None`
    /// when the reader has caught up with the writer (call again later to follow it). Torn,
    /// corrupt and overwritten records are skipped and counted in [`Cursor::skipped`].
    pub fn next(&self, cur: &mut Cursor, out: &mut Vec<u8>) -> Option<u64> {
        read_next(self.view(), cur, out)
    }

    /// The ring file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records written, overwritten by wrapping and dropped since the ring was created.
    pub fn usage(&self) -> RingUsage {
        let view = self.view();
        RingUsage::of(view.snapshot(), view.load(OFF_DROPPED, Ordering::Relaxed))
    }

    /// Whether `meta` (of whatever is at [`RingReader::path`] now) is the file this reader maps.
    pub fn is_file(&self, meta: &std::fs::Metadata) -> bool {
        file_id(meta) == self.file_id
    }
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::TempDir;

    const CAP: u64 = MIN_RING_BYTES;

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
    }

    fn read_all(path: &Path) -> Vec<(u64, Vec<u8>)> {
        let reader = RingReader::open(path).expect("open reader");
        let mut cur = reader.oldest();
        let mut out = Vec::new();
        let mut got = Vec::new();
        while let Some(seq) = reader.next(&mut cur, &mut out) {
            got.push((seq, out.clone()));
        }
        got
    }

    #[test]
    fn frame_crc_is_the_crc_of_seq_len_and_payload_in_a_row() {
        for n in (0..200).chain([703, 704, 4096]) {
            let body = payload(n as u64, n);
            let seq = 0x0123_4567_89ab_cdef ^ n as u64;
            let whole = [&seq.to_le_bytes()[..], &(n as u32).to_le_bytes(), &body].concat();
            assert_eq!(
                frame_crc(seq, n as u32, &body),
                crc32fast::hash(&whole),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn append_then_read_returns_every_payload_in_order() {
        let dir = TempDir::new("ring-basic");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        let lens = [0usize, 1, 15, 16, 17, 100, 1000];
        for (i, len) in lens.iter().enumerate() {
            assert_eq!(w.append(&payload(i as u64 + 1, *len)), Ok(i as u64 + 1));
        }
        let got = read_all(&path);
        assert_eq!(got.len(), lens.len());
        for ((seq, bytes), len) in got.iter().zip(lens) {
            assert_eq!(*bytes, payload(*seq, len));
        }
    }

    // See: tests/fuzz/regressions/ring/header-behind-frames (found by the `ring` fuzz target).
    #[test]
    fn issue_6_header_behind_its_frames_reads_each_record_once_and_stops() {
        let dir = TempDir::new("ring-header-behind");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        for seq in 1..=3 {
            assert_eq!(w.append(&payload(seq, 40)), Ok(seq));
        }
        drop(w);
        // A header claiming only record 1 exists while frames 2 and 3 follow it: the reader used
        // to take this for a recreated ring, start over, and cycle 1, 2, 3, 1, 2, 3… forever.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[OFF_NEXT_SEQ..OFF_NEXT_SEQ + 8].copy_from_slice(&1u64.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        let reader = RingReader::open(&path).expect("open reader");
        let mut cur = reader.oldest();
        let mut out = Vec::new();
        let seqs: Vec<u64> = std::iter::from_fn(|| reader.next(&mut cur, &mut out))
            .take(10)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn reserve_by_writing_allocates_holes_and_keeps_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = TempDir::new("ring-reserve");
        let path = dir.path().join("sparse");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        let len = 3 * RESERVE_CHUNK_BYTES as u64 + 4096;
        file.set_len(len).expect("sparse");
        file.write_all_at(b"keep me", 2 * RESERVE_CHUNK_BYTES as u64 + 5)
            .expect("write");
        let before = allocated_bytes(&path);
        assert!(before < len / 2, "not sparse to begin with: {before}");
        assert!(reserve_by_writing(&file, len).is_ok());
        assert!(allocated_bytes(&path) >= len, "{}", allocated_bytes(&path));
        let mut got = [0u8; 7];
        file.read_exact_at(&mut got, 2 * RESERVE_CHUNK_BYTES as u64 + 5)
            .expect("read");
        assert_eq!(&got, b"keep me");
    }

    #[test]
    fn new_ring_is_reserved_and_reset_replaces_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = TempDir::new("ring-replace");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        assert!(allocated_bytes(&path) >= CAP, "ring not reserved");
        w.append(b"old").expect("append");
        let reader = RingReader::open(&path).expect("reader");
        let old_ino = std::fs::metadata(&path).expect("meta").ino();
        // A second writer is refused while the first holds the ring.
        let err = RingWriter::open(&path, CAP, true)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("another phantom-fast"));
        drop(w);
        let w = RingWriter::open(&path, CAP, true).expect("reset");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_ne!(
            meta.ino(),
            old_ino,
            "reset must replace the file, not truncate it"
        );
        assert!(!reader.is_file(&meta));
        // The old mapping still reads the old record: nothing was truncated under it.
        let mut cur = reader.oldest();
        let mut out = Vec::new();
        assert_eq!(reader.next(&mut cur, &mut out), Some(1));
        assert_eq!(out, b"old");
        assert_eq!(w.next_seq(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["core-0.ring"], "temporary files left behind");
    }

    #[test]
    fn ring_lock_refused_while_written_and_keeps_writers_out() {
        let dir = TempDir::new("ring-remove");
        let path = dir.path().join("core-0.ring");
        let w = RingWriter::open(&path, CAP, false).expect("open");
        let err = RingLock::acquire(&path).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("another phantom-fast"));
        drop(w);
        let lock = RingLock::acquire(&path).expect("lock");
        assert!(
            RingWriter::open(&path, CAP, false).is_err(),
            "a writer got in"
        );
        lock.remove().expect("remove");
        assert!(!path.exists());
    }

    #[test]
    fn stale_temp_rings_of_dead_processes_are_removed() {
        let dir = TempDir::new("ring-stale");
        let dead = dir.path().join(".core-0.ring.999999999.new");
        let mine = temp_path(&dir.path().join("core-1.ring"));
        let other = dir.path().join("notes.new");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").expect("write");
        }
        remove_stale_temp_rings(dir.path());
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
    }

    /// Which pages of `w`'s mapping this process has mapped (`/proc/self/pagemap`, bit 63): the
    /// writer only writes, so a mapped page was written or populated (the page cache itself may
    /// hold more, read ahead).
    fn mapped_pages(w: &RingWriter) -> Vec<bool> {
        use std::os::unix::fs::FileExt;
        let page = 4096;
        let pages = w.map.len().div_ceil(page);
        let mut entries = vec![0u8; pages * 8];
        let pagemap = File::open("/proc/self/pagemap").expect("pagemap");
        let first = w.map.as_ptr() as u64 / page as u64;
        pagemap
            .read_exact_at(&mut entries, first * 8)
            .expect("read pagemap");
        entries
            .chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().unwrap()) >> 63 == 1)
            .collect()
    }

    #[test]
    fn appends_make_the_next_chunk_writable_ahead_and_prefault_the_whole_ring() {
        const RING: u64 = 4 << 20;
        let chunk_pages = (PREFAULT_CHUNK_BYTES / 4096) as usize;
        let dir = TempDir::new("ring-prefault");
        let mut w = RingWriter::open(&dir.path().join("core-0.ring"), RING, false).unwrap();
        // Frames up to just past the start of chunk 2.
        let mut seq = 0;
        while w.head < 2 * PREFAULT_CHUNK_BYTES + 1000 {
            seq += 1;
            w.append(&payload(seq, 1000)).expect("fits");
        }
        let mapped = mapped_pages(&w);
        assert!(
            mapped[..4 * chunk_pages].iter().all(|&r| r),
            "chunks 0-2 written, chunk 3 populated ahead"
        );
        assert!(
            !mapped[4 * chunk_pages..].iter().any(|&r| r),
            "nothing past chunk 3 is touched yet"
        );
        let mut whole = RingWriter::open(&dir.path().join("core-1.ring"), RING, false).unwrap();
        whole.prefault();
        assert!(mapped_pages(&whole).iter().all(|&r| r));
        // Past the last chunk, the first is populated for the next lap.
        let mut lapped = RingWriter::open(&dir.path().join("core-2.ring"), 1 << 20, false).unwrap();
        seq = 0;
        while lapped.head < lapped.cap - 2000 {
            seq += 1;
            lapped.append(&payload(seq, 1000)).expect("fits");
        }
        assert!(mapped_pages(&lapped).iter().all(|&r| r));
    }

    #[test]
    fn empty_ring_reads_nothing() {
        let dir = TempDir::new("ring-empty");
        let path = dir.path().join("core-0.ring");
        drop(RingWriter::open(&path, CAP, false).expect("open"));
        assert!(read_all(&path).is_empty());
    }

    #[test]
    fn wrap_keeps_newest_and_drops_only_oldest() {
        // Rows: payload sizes chosen to hit marker / exact-fit / no-marker wraps.
        let rows: &[(&str, usize)] = &[
            ("small_records", 100),
            ("frame_of_exactly_1_kib", 1024 - 16),
            ("odd_sizes", 333),
            ("large_records", 20_000),
        ];
        for (name, len) in rows {
            let dir = TempDir::new("ring-wrap");
            let path = dir.path().join("core-0.ring");
            let mut w = RingWriter::open(&path, CAP, false).expect("open");
            let total = 5 * CAP as usize / len.max(&1) + 7;
            for seq in 1..=total as u64 {
                assert_eq!(w.append(&payload(seq, *len)), Ok(seq), "row {name}");
            }
            let got = read_all(&path);
            let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            // The newest record is there, the rest are consecutive back from it, and the ring
            // is well used: at most one frame's worth (plus a marker) is lost to the wrap.
            assert_eq!(seqs.last(), Some(&(total as u64)), "row {name}");
            let first = seqs[0];
            assert_eq!(
                seqs,
                (first..=total as u64).collect::<Vec<_>>(),
                "row {name}"
            );
            let fb = frame_bytes(*len as u64);
            let kept_bytes = seqs.len() as u64 * fb;
            assert!(
                kept_bytes + 2 * fb + FRAME_HEADER_BYTES > w.capacity(),
                "row {name}: kept {kept_bytes}"
            );
            for (seq, bytes) in &got {
                assert_eq!(*bytes, payload(*seq, *len), "row {name}");
            }
        }
    }

    #[test]
    fn mixed_sizes_wrap_many_times_stays_consistent() {
        let dir = TempDir::new("ring-mixed");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        let mut rng = fastrand::Rng::with_seed(42);
        for seq in 1..=5000u64 {
            let len = if rng.u8(..) < 8 {
                rng.usize(10_000..30_000)
            } else {
                rng.usize(0..2000)
            };
            assert_eq!(w.append(&payload(seq, len)), Ok(seq));
            if seq % 500 == 0 {
                let got = read_all(&path);
                assert_eq!(got.last().map(|g| g.0), Some(seq));
                for pair in got.windows(2) {
                    assert_eq!(pair[0].0 + 1, pair[1].0);
                }
            }
        }
    }

    #[test]
    fn append_larger_than_ring_is_refused() {
        let dir = TempDir::new("ring-large");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        let cap = w.capacity() as usize;
        assert_eq!(w.append(&vec![1; cap]), Err(AppendError::TooLarge));
        assert_eq!(w.append(&vec![1; cap - FRAME_HEADER_BYTES as usize]), Ok(1));
        assert_eq!(w.append(b"after"), Ok(2));
        assert_eq!(read_all(&path), vec![(2, b"after".to_vec())]);
    }

    #[test]
    fn reopen_continues_sequence_after_last_record() {
        let dir = TempDir::new("ring-reopen");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        for seq in 1..=200 {
            w.append(&payload(seq, 500)).expect("append");
        }
        drop(w);
        let mut w = RingWriter::open(&path, CAP, false).expect("reopen");
        assert_eq!(w.next_seq(), 201);
        assert_eq!(w.append(&payload(201, 500)), Ok(201));
        let got = read_all(&path);
        assert_eq!(got.last().map(|g| g.0), Some(201));
        for pair in got.windows(2) {
            assert_eq!(pair[0].0 + 1, pair[1].0);
        }
        drop(w);
        let w = RingWriter::open(&path, CAP, true).expect("reset");
        assert_eq!(w.next_seq(), 1);
        assert!(read_all(&path).is_empty());
    }

    #[test]
    fn reopen_after_unpublished_header_finds_frame() {
        // A writer killed after publishing a frame but before updating the header: the frame is
        // found by recovery and by readers.
        let dir = TempDir::new("ring-kill");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        for seq in 1..=3 {
            w.append(&payload(seq, 50)).expect("append");
        }
        let stale = w.snapshot();
        w.append(&payload(4, 50)).expect("append");
        w.view().publish_header(stale);
        drop(w);
        assert_eq!(read_all(&path).len(), 4);
        let w = RingWriter::open(&path, CAP, false).expect("reopen");
        assert_eq!(w.next_seq(), 5);
    }

    #[test]
    fn torn_tail_after_kill_is_skipped_and_overwritten() {
        // Killed mid-append: frame 4's payload is half written, its seq never published, and the
        // header still describes 3 records.
        let dir = TempDir::new("ring-torn");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        for seq in 1..=3 {
            w.append(&payload(seq, 50)).expect("append");
        }
        let stale = w.snapshot();
        let torn_at = View::data(w.head);
        w.append(&payload(4, 50)).expect("append");
        let view = w.view();
        view.store(torn_at, 0, Ordering::Relaxed);
        view.copy_in(torn_at + 40, &[0xAA; 20]);
        view.publish_header(stale);
        drop(w);
        let seqs: Vec<u64> = read_all(&path).iter().map(|g| g.0).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let mut w = RingWriter::open(&path, CAP, false).expect("reopen");
        assert_eq!(w.next_seq(), 4);
        w.append(&payload(4, 70)).expect("append");
        let got = read_all(&path);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(got[3].1, payload(4, 70));
    }

    fn corrupt(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).expect("read");
        f(&mut bytes);
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn damaged_frames_are_skipped_and_reopen_continues() {
        let first = HEADER_BYTES as usize; // frame 1
        let second = first + frame_bytes(100) as usize; // frame 2
        let last = first + 9 * frame_bytes(100) as usize; // frame 10
        type Damage = fn(&mut Vec<u8>, usize, usize, usize);
        let rows: &[(&str, Damage, Vec<u64>, u64)] = &[
            (
                "zeroed_frame_header_skipped",
                |b, _, s, _| b[s..s + 16].fill(0),
                [1, 3, 4, 5, 6, 7, 8, 9, 10].to_vec(),
                11,
            ),
            (
                "flipped_payload_byte_skipped",
                |b, _, s, _| b[s + 40] ^= 0xff,
                [1, 3, 4, 5, 6, 7, 8, 9, 10].to_vec(),
                11,
            ),
            (
                "damaged_last_frame_skipped",
                |b, _, _, l| b[l + 16..l + 116].fill(0),
                (1..=9).collect(),
                11,
            ),
            (
                "first_frame_zeroed_skipped",
                |b, f, _, _| b[f..f + 16].fill(0),
                (2..=10).collect(),
                11,
            ),
        ];
        for (name, damage, want, next) in rows {
            let dir = TempDir::new("ring-damage");
            let path = dir.path().join("core-0.ring");
            let mut w = RingWriter::open(&path, CAP, false).expect("open");
            for seq in 1..=10 {
                w.append(&payload(seq, 100)).expect("append");
            }
            drop(w);
            corrupt(&path, |b| damage(b, first, second, last));
            let got: Vec<u64> = read_all(&path).iter().map(|g| g.0).collect();
            assert_eq!(&got, want, "row {name}");
            let mut w = RingWriter::open(&path, CAP, false).expect("reopen");
            assert_eq!(w.next_seq(), *next, "row {name}");
            w.append(&payload(*next, 100)).expect("append");
            let got: Vec<u64> = read_all(&path).iter().map(|g| g.0).collect();
            assert_eq!(got.last(), Some(next), "row {name}");
        }
    }

    #[test]
    fn bad_files_give_format_errors_naming_the_path() {
        let good_len = CAP as usize;
        type Make = fn(usize) -> Vec<u8>;
        let rows: &[(&str, Make, &str)] = &[
            (
                "too_short",
                |_| b"PFTRACE".to_vec(),
                "shorter than a ring header",
            ),
            (
                "foreign_text",
                |_| b"hello, this is not a ring at all, just some text ........ padding".repeat(3),
                "bad magic",
            ),
            ("zero_header", |n| vec![0; n], "bad magic"),
            (
                "garbage",
                |n| {
                    let mut r = fastrand::Rng::with_seed(1);
                    (0..n).map(|_| r.u8(..)).collect()
                },
                "bad magic",
            ),
        ];
        for (name, make, want) in rows {
            let dir = TempDir::new("ring-bad");
            let path = dir.path().join("core-0.ring");
            std::fs::write(&path, make(good_len)).expect("write");
            for err in [
                RingReader::open(&path).err().map(|e| e.to_string()),
                RingWriter::open(&path, CAP, false)
                    .err()
                    .map(|e| e.to_string()),
            ] {
                let err = err.unwrap_or_else(|| panic!("row {name}: opened"));
                assert!(err.contains(want), "row {name}: {err}");
                assert!(
                    err.contains(&path.display().to_string()),
                    "row {name}: {err}"
                );
            }
        }
    }

    #[test]
    fn truncated_or_resized_ring_is_a_format_error() {
        let rows: &[(&str, u64, &str)] = &[
            ("truncated_mid_data", CAP / 2, "file length does not match"),
            ("truncated_mid_header", 40, "shorter than a ring header"),
            ("extended", CAP * 2, "file length does not match"),
        ];
        for (name, len, want) in rows {
            let dir = TempDir::new("ring-trunc");
            let path = dir.path().join("core-0.ring");
            let mut w = RingWriter::open(&path, CAP, false).expect("open");
            w.append(b"x").expect("append");
            drop(w);
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(*len))
                .expect("truncate");
            let err = RingReader::open(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "row {name}: {err}");
        }
    }

    #[test]
    fn random_garbage_in_data_never_panics() {
        let mut rng = fastrand::Rng::with_seed(9);
        for round in 0..24 {
            let dir = TempDir::new("ring-fuzz");
            let path = dir.path().join("core-0.ring");
            let mut w = RingWriter::open(&path, CAP, false).expect("open");
            for seq in 1..=rng.u64(1..400) {
                w.append(&payload(seq, rng.usize(0..3000))).expect("append");
            }
            drop(w);
            let scramble_header = round % 4 == 0;
            corrupt(&path, |b| {
                for _ in 0..rng.usize(1..50) {
                    let at = rng.usize(HEADER_BYTES as usize..b.len());
                    let n = rng.usize(1..200).min(b.len() - at);
                    b[at..at + n].iter_mut().for_each(|x| *x = rng.u8(..));
                }
                if scramble_header {
                    b[OFF_GENERATION..HEADER_BYTES as usize]
                        .iter_mut()
                        .for_each(|x| *x = rng.u8(..));
                }
            });
            // Garbage in the data is skipped; a scrambled header is a clear error.
            match RingReader::open(&path) {
                Ok(_) => {
                    for (seq, bytes) in read_all(&path) {
                        assert_eq!(bytes, payload(seq, bytes.len()), "round {round}");
                    }
                }
                Err(e) => assert!(
                    scramble_header && e.to_string().contains("corrupt ring header"),
                    "{e}"
                ),
            }
            let mut w = match RingWriter::open(&path, CAP, false) {
                Ok(w) => w,
                Err(e) => {
                    assert!(
                        scramble_header && e.to_string().contains("--trace-reset"),
                        "{e}"
                    );
                    continue;
                }
            };
            for _ in 0..300 {
                w.append(&payload(w.next_seq(), rng.usize(0..3000)))
                    .expect("append after garbage");
            }
            let got = read_all(&path);
            assert_eq!(
                got.last().map(|g| g.0),
                Some(w.next_seq() - 1),
                "round {round}"
            );
            // The newest 10 records are intact and consecutive.
            let tail = &got[got.len() - 10..];
            for pair in tail.windows(2) {
                assert_eq!(pair[0].0 + 1, pair[1].0, "round {round}");
            }
        }
    }

    #[test]
    fn scan_finds_the_frame_at_its_start() {
        // The frame the reader probed may have been completed by the time it scans.
        let dir = TempDir::new("ring-scan-start");
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        for seq in 1..=3 {
            w.append(&payload(seq, 40)).expect("append");
        }
        let reader = RingReader::open(&path).expect("reader");
        let (mut cur, mut out) = (reader.oldest(), Vec::new());
        assert_eq!(reader.next(&mut cur, &mut out), Some(1));
        assert_eq!(reader.next(&mut cur, &mut out), Some(2));
        let at = cur.pos;
        assert_eq!(scan(reader.view(), at, 3..4, &mut out), Some((at, 3)));
        assert_eq!(scan(reader.view(), at, 2..4, &mut out), Some((at, 3)));
        assert_eq!(scan(reader.view(), at, 4..9, &mut out), None);
    }

    /// Reads the ring at `path` from its oldest record until the cursor is past `last`, checking
    /// every record returned; publishes the last seq seen in `progress`. Returns the first seq
    /// wanted, how many records came back, and how many the cursor skipped. Panics (instead of
    /// hanging the test run) when no record arrives for 60 s.
    fn read_concurrently(path: &Path, last: u64, progress: &AtomicU64) -> (u64, u64, u64) {
        let reader = RingReader::open(path).expect("reader");
        let mut cur = reader.oldest();
        let first_wanted = cur.want;
        let mut out = Vec::new();
        let (mut seen, mut prev) = (0u64, 0u64);
        let mut idle_since = std::time::Instant::now();
        while cur.want <= last {
            match reader.next(&mut cur, &mut out) {
                Some(seq) => {
                    assert!(seq > prev, "sequence went backwards");
                    assert_eq!(out.len(), len_of(seq), "record {seq} has a wrong length");
                    assert!(out == payload(seq, out.len()), "record {seq} torn");
                    seen += 1;
                    prev = seq;
                    progress.store(seq, Ordering::Release);
                    idle_since = std::time::Instant::now();
                }
                None => {
                    let idle = idle_since.elapsed();
                    assert!(
                        idle.as_secs() < 60,
                        "no record for {idle:?}; cursor {cur:?}"
                    );
                    std::thread::yield_now();
                }
            }
        }
        (first_wanted, seen, cur.skipped)
    }

    fn len_of(seq: u64) -> usize {
        (seq as usize * 7) % 3000
    }

    /// Appends `records` records to a new ring while another thread reads them with
    /// [`read_concurrently`]; with `max_lead`, the writer stays at most that many records ahead
    /// of the reader. Returns what the reader returns.
    fn write_while_reading(name: &str, records: u64, max_lead: Option<u64>) -> (u64, u64, u64) {
        let dir = TempDir::new(name);
        let path = dir.path().join("core-0.ring");
        let mut w = RingWriter::open(&path, CAP, false).expect("open");
        let progress = std::sync::Arc::new(AtomicU64::new(0));
        let (reader_path, reader_progress) = (path.clone(), progress.clone());
        let reader =
            std::thread::spawn(move || read_concurrently(&reader_path, records, &reader_progress));
        for seq in 1..=records {
            let waiting = std::time::Instant::now();
            while max_lead.is_some_and(|lead| progress.load(Ordering::Acquire) + lead < seq) {
                assert!(!reader.is_finished(), "reader stopped before record {seq}");
                assert!(
                    waiting.elapsed().as_secs() < 60,
                    "reader stuck before {seq}"
                );
                std::thread::yield_now();
            }
            w.append(&payload(seq, len_of(seq))).expect("append");
        }
        reader.join().expect("reader thread")
    }

    #[test]
    fn concurrent_reader_never_sees_partial_record() {
        const RECORDS: u64 = 40_000;
        let (first_wanted, seen, skipped) = write_while_reading("ring-concurrent", RECORDS, None);
        // Every record from where the reader started was either returned whole or counted as
        // overwritten before it could be read.
        assert!(seen > 0);
        assert_eq!(seen + skipped, RECORDS - first_wanted + 1);
    }

    #[test]
    fn concurrent_reader_that_is_never_lapped_skips_nothing() {
        // The writer stays at most 8 records (< 25 KiB of the 64 KiB ring) ahead of the reader,
        // so nothing is overwritten before it is read and every record must come back. A reader
        // that caught up used to lose the record the writer finished between its probe and its
        // look at the header (its scan began one slot past it).
        const RECORDS: u64 = 20_000;
        let read = write_while_reading("ring-concurrent-unlapped", RECORDS, Some(8));
        assert_eq!(read, (1, RECORDS, 0));
    }
}

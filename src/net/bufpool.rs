//! The per-core buffer pool: power-of-two size classes, bounded in bytes per class.
//!
//! It does no I/O; connections take their buffers from here and give them back when they close.

/// A per-core pool of byte buffers in power-of-two size classes, so connections that come and
/// go reuse their memory and a 64-byte scratch never ties up a 16 KiB read buffer.
#[derive(Default)]
pub(crate) struct BufPool {
    /// `classes[i]` holds buffers whose capacity is at least `MIN_CLASS_BYTES << i`.
    classes: [Vec<Vec<u8>>; CLASSES],
}

/// The smallest class; smaller requests are rounded up to it.
const MIN_CLASS_BYTES: usize = 64;

/// Classes from 64 B to 64 KiB; buffers grown past that (a huge head) are freed, not pooled.
const CLASSES: usize = 11;

/// Bytes of idle buffers kept per class and core (a count per class follows from it: 128 Ki
/// 64-byte buffers, 512 read buffers, 128 64 KiB ones); beyond it returned buffers are freed.
/// What sets it: connection churn, where each closing connection returns its buffers.
const MAX_POOLED_BYTES_PER_CLASS: usize = 8 << 20;

impl BufPool {
    /// An empty buffer of at least `min_capacity` (none allocated for 0).
    pub(crate) fn get(&mut self, min_capacity: usize) -> Vec<u8> {
        if min_capacity == 0 {
            return Vec::new();
        }
        let class = Self::class_for(min_capacity);
        match self.classes.get_mut(class).and_then(Vec::pop) {
            Some(buf) => buf,
            None => {
                Vec::with_capacity((MIN_CLASS_BYTES << class.min(CLASSES - 1)).max(min_capacity))
            }
        }
    }

    /// Returns a buffer for reuse (emptied).
    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity < MIN_CLASS_BYTES {
            return;
        }
        // The largest class whose minimum this buffer meets.
        let class = (capacity / MIN_CLASS_BYTES).ilog2() as usize;
        let max_buffers = MAX_POOLED_BYTES_PER_CLASS / (MIN_CLASS_BYTES << class.min(CLASSES));
        if let Some(free) = self.classes.get_mut(class)
            && free.len() < max_buffers
        {
            buf.clear();
            free.push(buf);
        }
    }

    /// The class whose buffers all hold `n` bytes.
    fn class_for(n: usize) -> usize {
        n.div_ceil(MIN_CLASS_BYTES).next_power_of_two().ilog2() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conn::READ_BUF_BYTES;

    #[test]
    fn buf_pool_classes_never_hand_out_too_small_a_buffer() {
        let mut pool = BufPool::default();
        for cap in [64, 100, 4096, 5000, READ_BUF_BYTES, 40_000] {
            pool.put(Vec::with_capacity(cap));
        }
        for want in [1, 64, 65, 4096, 4097, READ_BUF_BYTES, 60_000, 70_000] {
            let buf = pool.get(want);
            assert!(
                buf.capacity() >= want,
                "asked {want}, got {}",
                buf.capacity()
            );
            assert!(buf.is_empty());
        }
        assert_eq!(pool.get(0).capacity(), 0, "zero asks for nothing");
    }

    #[test]
    fn buf_pool_class_is_bounded_in_bytes() {
        let mut pool = BufPool::default();
        for _ in 0..1000 {
            pool.put(Vec::with_capacity(64 * 1024));
        }
        let kept: usize = pool.classes.iter().flatten().map(Vec::capacity).sum();
        assert!(kept <= MAX_POOLED_BYTES_PER_CLASS, "{kept} bytes pooled");
    }

    #[test]
    fn buf_pool_small_request_does_not_take_a_read_buffer() {
        let mut pool = BufPool::default();
        pool.put(Vec::with_capacity(READ_BUF_BYTES));
        assert!(pool.get(64).capacity() < READ_BUF_BYTES);
        assert_eq!(
            pool.get(READ_BUF_BYTES).capacity(),
            READ_BUF_BYTES,
            "the pooled one"
        );
    }
}

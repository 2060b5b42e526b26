//! The per-core pools: byte buffers in power-of-two size classes, bounded in bytes per class
//! ([`BufPool`]), and heap blocks for the state of a running exchange ([`FramePool`]).
//!
//! It does no I/O; connections take their buffers from here and give them back when they close.

use std::{
    alloc::{self, Layout},
    cell::RefCell,
    future::Future,
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

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

    /// `buf`'s bytes moved into a pooled buffer of at least `min_capacity` (and at least their
    /// length); the old buffer goes back to the pool. No copy when `buf` already has the room.
    pub(crate) fn regrow(&mut self, buf: Vec<u8>, min_capacity: usize) -> Vec<u8> {
        let want = min_capacity.max(buf.len());
        if buf.capacity() >= want {
            return buf;
        }
        self.swap(buf, want)
    }

    /// `buf`'s bytes moved into the smallest pooled buffer that holds them (none at all when
    /// `buf` is empty), when that is smaller than `buf`; the old one goes back to the pool. What
    /// a connection keeps while it waits: the bytes it must, not the room it read them with.
    pub(crate) fn shrink(&mut self, buf: Vec<u8>) -> Vec<u8> {
        if buf.is_empty() {
            self.put(buf);
            return Vec::new();
        }
        let fit = MIN_CLASS_BYTES << Self::class_for(buf.len());
        if fit >= buf.capacity() {
            return buf;
        }
        self.swap(buf, fit)
    }

    fn swap(&mut self, old: Vec<u8>, capacity: usize) -> Vec<u8> {
        let mut fresh = self.get(capacity);
        fresh.extend_from_slice(&old);
        self.put(old);
        fresh
    }

    /// The class whose buffers all hold `n` bytes.
    fn class_for(n: usize) -> usize {
        n.div_ceil(MIN_CLASS_BYTES).next_power_of_two().ilog2() as usize
    }
}

/// Per-core blocks that hold the state of one phase of an exchange (forwarding, a tunnel)
/// while it runs, reused by the next exchange of any connection: a connection's own future
/// then holds only what waiting needs, and 10 000 idle or delayed connections do not each pin
/// the few KiB a forward's state machine takes. Blocks are kept per layout, bounded in bytes.
#[derive(Default)]
pub(crate) struct FramePool {
    /// Free blocks by layout; the few phases boxed here make it a short list.
    free: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

/// Bytes of free blocks kept per layout and core; beyond it returned blocks are freed. As for
/// buffers, what sets it is churn: each exchange that ends returns its block.
const MAX_POOLED_FRAME_BYTES: usize = 8 << 20;

impl FramePool {
    /// `future` moved into a block of this pool (allocated only when none of its layout is free).
    pub(crate) fn boxed<F: Future>(&self, future: F) -> Pooled<'_, F> {
        self.boxed_with(|| future)
    }

    /// The future `make` builds, built straight into a block of this pool.
    #[inline(always)]
    pub(crate) fn boxed_with<F: Future>(&self, make: impl FnOnce() -> F) -> Pooled<'_, F> {
        let layout = Layout::new::<F>();
        let ptr = match self.take(layout) {
            Some(ptr) => ptr.cast::<F>(),
            None if layout.size() == 0 => NonNull::dangling(),
            None => {
                // SAFETY: `layout` has a non-zero size (checked just above).
                let raw = unsafe { alloc::alloc(layout) };
                match NonNull::new(raw) {
                    Some(ptr) => ptr.cast::<F>(),
                    None => alloc::handle_alloc_error(layout),
                }
            }
        };
        // SAFETY: `ptr` is valid for writes of an `F` and aligned for it: a fresh or returned
        // block of exactly `Layout::new::<F>()` (or dangling for a zero-sized `F`).
        unsafe { ptr.as_ptr().write(make()) };
        Pooled { pool: self, ptr }
    }

    fn take(&self, layout: Layout) -> Option<NonNull<u8>> {
        let mut free = self.free.borrow_mut();
        free.iter_mut().find(|(l, _)| *l == layout)?.1.pop()
    }

    fn give_back(&self, layout: Layout, block: NonNull<u8>) {
        let mut free = self.free.borrow_mut();
        let at = match free.iter().position(|(l, _)| *l == layout) {
            Some(at) => at,
            None => {
                free.push((layout, Vec::new()));
                free.len() - 1
            }
        };
        let blocks = &mut free[at].1;
        if blocks.len() < MAX_POOLED_FRAME_BYTES / layout.size() {
            blocks.push(block);
        } else {
            // SAFETY: `block` came from `alloc::alloc(layout)` and is no longer used.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        for (layout, blocks) in self.free.get_mut().drain(..) {
            for block in blocks {
                // SAFETY: every pooled block came from `alloc::alloc(layout)` and is unused.
                unsafe { alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

/// A future in a [`FramePool`] block, like a `Pin<Box<F>>` whose memory goes back to the pool
/// when it is dropped.
pub(crate) struct Pooled<'p, F: Future> {
    pool: &'p FramePool,
    /// Owns the `F` it points to; it never moves while this lives.
    ptr: NonNull<F>,
}

impl<F: Future> Future for Pooled<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `ptr` points to the live `F` this value owns; the block never moves nor is
        // reused while `self` lives, so pinning it is sound, as for a `Pin<Box<F>>`.
        let future = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        future.poll(cx)
    }
}

impl<F: Future> Drop for Pooled<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the `F` is live and owned here; it is dropped once, in place (pinned data is
        // dropped where it lies), and the pointer is not used again.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        let layout = Layout::new::<F>();
        if layout.size() > 0 {
            self.pool.give_back(layout, self.ptr.cast());
        }
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
    fn buf_pool_shrink_keeps_the_bytes_in_the_smallest_class() {
        let mut pool = BufPool::default();
        let mut buf = pool.get(READ_BUF_BYTES);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let small = pool.shrink(buf);
        assert_eq!(small, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(small.capacity(), 64, "the smallest class holding 18 bytes");
        assert_eq!(
            pool.get(READ_BUF_BYTES).capacity(),
            READ_BUF_BYTES,
            "given back"
        );
        assert_eq!(
            pool.shrink(Vec::with_capacity(4096)).capacity(),
            0,
            "empty: nothing kept"
        );
        assert_eq!(pool.get(4096).capacity(), 4096, "given back");
        let full = vec![7u8; 100];
        let cap = full.capacity();
        assert_eq!(pool.shrink(full).capacity(), cap, "already small: kept");
    }

    #[test]
    fn buf_pool_regrow_keeps_the_bytes_and_gives_the_small_one_back() {
        let mut pool = BufPool::default();
        let mut small = pool.get(1024);
        small.extend_from_slice(b"abc");
        let big = pool.regrow(small, READ_BUF_BYTES);
        assert_eq!(big, b"abc");
        assert!(big.capacity() >= READ_BUF_BYTES);
        assert_eq!(pool.get(1024).capacity(), 1024, "the small one, pooled");
        let same = pool.regrow(big, 10);
        assert!(same.capacity() >= READ_BUF_BYTES, "room enough: unchanged");
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

    #[test]
    fn frame_pool_reuses_the_block_and_drops_the_future_in_place() {
        use std::{rc::Rc, task::Waker};
        let pool = FramePool::default();
        let dropped = Rc::new(std::cell::Cell::new(0));
        struct Guard(Rc<std::cell::Cell<u32>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let make = |n: u64| {
            let guard = Guard(Rc::clone(&dropped));
            async move {
                let _guard = guard;
                [n; 64].iter().sum::<u64>()
            }
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pool.boxed(make(1));
        let at = first.ptr.cast::<u8>();
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Ready(64));
        drop(first);
        assert_eq!(dropped.get(), 1, "dropped once, with its block");
        let mut second = pool.boxed(make(2));
        assert_eq!(second.ptr.cast::<u8>(), at, "the same block again");
        assert_eq!(Pin::new(&mut second).poll(&mut cx), Poll::Ready(128));
        let unpolled = pool.boxed(make(3));
        drop(unpolled);
        drop(second);
        assert_eq!(dropped.get(), 3, "an unpolled future is dropped too");
    }
}

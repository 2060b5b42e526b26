//! Precise deadlines for injected delays: one `timerfd` per worker, armed with an absolute
//! `CLOCK_MONOTONIC` deadline and read through io_uring, so a delay ends within microseconds of
//! its deadline and never before it.
//!
//! monoio's own timer wheel ticks in whole milliseconds and rounds deadlines up, and the worker
//! parks for whole milliseconds, so `sleep(100ms)` lands anywhere in [100, 102) ms. Under the
//! epoll driver a timerfd read would block the thread (monoio reads files synchronously there),
//! so that driver falls back to the wheel. It does not decide how long to wait: `exchange` does.
//!
//! # Coalescing
//! A sleeper may give a slack ([`DelayTimer::sleep_within`]): it ends at its deadline or up to
//! that much after it, never before. The timerfd is armed for the earliest deadline-plus-slack of
//! the pending sleeps, and each wake-up ends every sleep already due, so deadlines that fall
//! within a slack of each other share one wake-up (5 000 delays a second need not be 5 000
//! wake-ups). A new sleep also ends the ones already due: the worker is awake for it anyway.
//! Sleeps of different slacks share the timer (a throttled body's steps may take 50 ms, a delay
//! 1 ms), so the earliest deadline is not always the first that must end: a second heap keeps
//! them by deadline plus slack.

use std::{
    cell::{Cell, RefCell},
    cmp::Reverse,
    collections::BinaryHeap,
    future::Future,
    io,
    os::fd::{FromRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// One pending deadline.
struct Slot {
    /// Bumped each time the slot is reused, so stale heap entries are recognised.
    generation: u64,
    fired: bool,
    waker: Option<Waker>,
}

/// The per-worker set of precise deadlines.
pub(crate) struct DelayTimer {
    /// `None` under the epoll driver: the wheel is used instead.
    fd: Option<RawFd>,
    /// Earliest deadline first: (deadline, slot, generation).
    heap: RefCell<BinaryHeap<Reverse<(Instant, usize, u64)>>>,
    /// The same sleeps, earliest deadline plus slack first: when the timerfd must fire next.
    by_latest: RefCell<BinaryHeap<Reverse<(Instant, usize, u64)>>>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// The instant the timerfd is armed for (a deadline plus its slack).
    armed: Cell<Option<Instant>>,
    /// The reader task, when it waits for work.
    idle_reader: RefCell<Option<Waker>>,
    /// The instant `Instant`s are measured from, as a `CLOCK_MONOTONIC` reading.
    epoch: (Instant, libc::timespec),
}

impl DelayTimer {
    /// A timer for this worker; `precise` only under io_uring. Spawns its reader task.
    ///
    /// # Errors
    /// When the kernel refuses a timerfd.
    pub(crate) fn start(precise: bool) -> io::Result<Rc<DelayTimer>> {
        let fd = if precise {
            // SAFETY: plain syscall with constant flags; the result is checked below.
            let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Some(fd)
        } else {
            None
        };
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid out-pointer for the duration of the call.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let timer = Rc::new(DelayTimer {
            fd,
            heap: RefCell::default(),
            by_latest: RefCell::default(),
            slots: RefCell::default(),
            free: RefCell::default(),
            armed: Cell::new(None),
            idle_reader: RefCell::new(None),
            epoch: (Instant::now(), now),
        });
        if let Some(fd) = fd {
            // SAFETY: `fd` is a fresh timerfd we own; the File takes over closing it.
            let file = unsafe { std::fs::File::from_raw_fd(fd) };
            let file = monoio::fs::File::from_std(file)?;
            monoio::spawn(read_expirations(Rc::clone(&timer), file));
        }
        Ok(timer)
    }

    /// A future that completes at `deadline` (not before), as close to it as the kernel wakes.
    pub(crate) fn sleep_until(self: &Rc<Self>, deadline: Instant) -> DelaySleep {
        self.sleep_within(Instant::now(), deadline, Duration::ZERO)
    }

    /// A future that completes at `deadline` or up to `slack` after it (never before), sharing
    /// its wake-up with the other sleeps due by then. `now` is the caller's clock reading; sleeps
    /// already due at `now` end here, without a wake-up of their own.
    pub(crate) fn sleep_within(
        self: &Rc<Self>,
        now: Instant,
        deadline: Instant,
        slack: Duration,
    ) -> DelaySleep {
        if self.fd.is_none() {
            return DelaySleep::Coarse(Box::pin(monoio::time::sleep_until(deadline.into())));
        }
        self.fire_due_at(now, false);
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot {
                    generation: 0,
                    fired: false,
                    waker: None,
                });
                slots.len() - 1
            }
        };
        let generation = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot];
            s.generation += 1;
            s.fired = false;
            s.waker = None;
            s.generation
        };
        self.heap
            .borrow_mut()
            .push(Reverse((deadline, slot, generation)));
        let latest = deadline + slack;
        self.by_latest
            .borrow_mut()
            .push(Reverse((latest, slot, generation)));
        if self.armed.get().is_none_or(|armed| latest < armed) {
            self.arm(latest);
        }
        if let Some(reader) = self.idle_reader.borrow_mut().take() {
            reader.wake();
        }
        DelaySleep::Precise {
            timer: Rc::clone(self),
            slot,
            generation,
        }
    }

    /// How many sleeps are pending (started, not yet ended or dropped).
    pub(crate) fn pending(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// Points the timerfd at `deadline` (absolute, so time spent before the syscall counts).
    fn arm(&self, deadline: Instant) {
        let Some(fd) = self.fd else { return };
        let (epoch, base) = self.epoch;
        let offset = deadline.saturating_duration_since(epoch);
        let nanos = base.tv_nsec as u64 + u64::from(offset.subsec_nanos());
        let value = libc::timespec {
            tv_sec: base.tv_sec
                + offset.as_secs() as libc::time_t
                + (nanos / 1_000_000_000) as libc::time_t,
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        };
        // A zero value would disarm: a deadline at the epoch itself is 1 ns later.
        let value = if value.tv_sec == 0 && value.tv_nsec == 0 {
            libc::timespec {
                tv_sec: 0,
                tv_nsec: 1,
            }
        } else {
            value
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is valid for the call; a null old-value pointer is allowed.
        unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        self.armed.set(Some(deadline));
    }

    /// Wakes every sleeper whose deadline passed (the timerfd fired) and re-arms for the next.
    fn fire_due(&self) {
        self.fire_due_at(Instant::now(), true);
    }

    /// The earliest deadline plus slack of the sleeps still pending (dropping stale entries).
    fn next_latest(&self, slots: &[Slot]) -> Option<Instant> {
        let mut by_latest = self.by_latest.borrow_mut();
        while let Some(&Reverse((latest, slot, generation))) = by_latest.peek() {
            let s = &slots[slot];
            if s.generation == generation && !s.fired {
                return Some(latest);
            }
            by_latest.pop();
        }
        None
    }

    /// Wakes every sleeper whose deadline is at or before `now`. `expired`: the timerfd fired, so
    /// it is re-armed for the next deadline plus slack, or left idle when none is left.
    /// Otherwise (a new sleep came) it is re-armed only when it would fire with nothing due, and
    /// left as it is when nothing was due.
    fn fire_due_at(&self, now: Instant, expired: bool) {
        let mut heap = self.heap.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut fired_any = false;
        let next = loop {
            let Some(&Reverse((deadline, slot, generation))) = heap.peek() else {
                break None;
            };
            let s = &mut slots[slot];
            if s.generation != generation {
                heap.pop();
                continue;
            }
            if deadline > now {
                break Some(deadline);
            }
            heap.pop();
            fired_any = true;
            s.fired = true;
            if let Some(waker) = s.waker.take() {
                waker.wake();
            }
        };
        drop(heap);
        if next.is_none() {
            // No sleep pending: every entry left is stale (and would pile up unread).
            self.by_latest.borrow_mut().clear();
        }
        if expired {
            self.armed.set(None);
            if next.is_some()
                && let Some(latest) = self.next_latest(&slots)
            {
                drop(slots);
                self.arm(latest);
            }
        } else if fired_any
            && let (Some(deadline), Some(armed)) = (next, self.armed.get())
            && armed < deadline
            && let Some(latest) = self.next_latest(&slots)
        {
            // Armed for sleeps that just ended: it would wake with nothing due.
            drop(slots);
            self.arm(latest);
        }
    }

    fn release(&self, slot: usize, generation: u64) {
        let mut slots = self.slots.borrow_mut();
        if slots[slot].generation == generation {
            // Invalidate any heap entry still pointing here.
            slots[slot].generation += 1;
            slots[slot].waker = None;
            self.free.borrow_mut().push(slot);
        }
    }
}

/// Reads the timerfd whenever deadlines are pending; each completed read fires the due ones.
async fn read_expirations(timer: Rc<DelayTimer>, file: monoio::fs::File) {
    let mut buf = vec![0u8; 8];
    loop {
        if timer.armed.get().is_none() {
            WaitForWork { timer: &timer }.await;
            continue;
        }
        let (res, back) = file.read_at(buf, 0).await;
        buf = back;
        if res.is_err() {
            // Not expected; give the sleepers the wheel's precision rather than none.
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        timer.fire_due();
    }
}

/// Parks the reader until a deadline is armed.
struct WaitForWork<'a> {
    timer: &'a DelayTimer,
}

impl Future for WaitForWork<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.armed.get().is_some() {
            return Poll::Ready(());
        }
        *self.timer.idle_reader.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Completes at its deadline. Dropping it early (the client left) frees its slot at once.
pub(crate) enum DelaySleep {
    /// Under io_uring: a timerfd deadline.
    Precise {
        timer: Rc<DelayTimer>,
        slot: usize,
        generation: u64,
    },
    /// Under epoll: monoio's millisecond wheel.
    Coarse(Pin<Box<monoio::time::Sleep>>),
}

impl Future for DelaySleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self {
            DelaySleep::Coarse(sleep) => sleep.as_mut().poll(cx),
            DelaySleep::Precise {
                timer,
                slot,
                generation,
            } => {
                let mut slots = timer.slots.borrow_mut();
                let s = &mut slots[*slot];
                if s.generation != *generation || s.fired {
                    return Poll::Ready(());
                }
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for DelaySleep {
    fn drop(&mut self) {
        if let DelaySleep::Precise {
            timer,
            slot,
            generation,
        } = self
        {
            timer.release(*slot, *generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `test` on an io_uring runtime with a precise (timerfd) timer.
    fn on_precise_timer<F: Future<Output = ()>>(test: impl FnOnce(Rc<DelayTimer>) -> F) {
        let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("an io_uring runtime");
        runtime.block_on(async { test(DelayTimer::start(true).expect("a timerfd")).await });
    }

    // A sleep with a long slack must not hold back a later one with none. After its first
    // wake-up the timer used to re-arm for the earliest deadline plus that deadline's own slack:
    // a throttled body's 50 ms pacing slack could make a 1 ms-slack delay 50 ms late.
    #[test]
    fn a_long_slack_does_not_hold_back_a_later_deadline_without_one() {
        on_precise_timer(|timer| async move {
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            let first = timer.sleep_within(t0, t0 + ms(5), Duration::ZERO);
            let lax = timer.sleep_within(t0, t0 + ms(10), Duration::from_secs(1));
            let strict = timer.sleep_within(t0, t0 + ms(20), Duration::ZERO);
            first.await;
            strict.await;
            let took = t0.elapsed();
            assert!(took >= ms(20), "{took:?}: ended before its deadline");
            assert!(
                took < ms(500),
                "{took:?}: held back to the lax sleep's slack"
            );
            drop(lax);
        });
    }

    // The delay's slack grows with this count, so a sleep that ended or was dropped (its
    // client hung up) must stop counting at once.
    #[test]
    fn pending_counts_the_sleeps_not_yet_ended_or_dropped() {
        on_precise_timer(|timer| async move {
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            assert_eq!(timer.pending(), 0);
            let a = timer.sleep_within(t0, t0 + ms(2), Duration::ZERO);
            let b = timer.sleep_within(t0, t0 + ms(3), Duration::ZERO);
            let c = timer.sleep_within(t0, t0 + ms(60_000), Duration::ZERO);
            assert_eq!(timer.pending(), 3);
            drop(c);
            assert_eq!(timer.pending(), 2);
            a.await;
            assert_eq!(timer.pending(), 1);
            b.await;
            assert_eq!(timer.pending(), 0);
            // A reused slot counts once.
            let d = timer.sleep_within(Instant::now(), Instant::now() + ms(1), Duration::ZERO);
            assert_eq!(timer.pending(), 1);
            d.await;
            assert_eq!(timer.pending(), 0);
        });
    }
}

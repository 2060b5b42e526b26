//! Proves the hot path allocates nothing: `FaultTable::decide` under a counting global allocator.
//! It does not test decision semantics; those are the unit tests in `src/fault/table.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use phantom_fast::fault::{FaultRule, FaultTable, RequestView, RuleStats};

/// Decisions measured; the issue asks for 100 000.
const CALLS: usize = 100_000;

thread_local! {
    /// Allocations made by this thread. Per thread, so the test harness's own threads cannot
    /// disturb the count; a const-initialised `Cell` needs no allocation or destructor itself.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts every allocation and reallocation of the current thread, then defers to `System`.
struct CountingAllocator;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is a thread-local counter that never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded verbatim; the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded verbatim; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded verbatim; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded verbatim; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn count() {
    // `try_with`: during thread teardown the slot may be gone; such allocations are not ours.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn decide_mixed_rules_allocates_nothing() {
    // Eight mixed rules: fixed and ranged delays, errors with and without probability and filter,
    // a filter containing ':' and one that never matches.
    let specs = [
        "delay:5ms",
        "delay:1ms-9ms:/api",
        "error:500:0.25:/api/orders",
        "delay:2s:/v1/items:batchGet",
        "error:502:0:/api",
        "error:503:0.5:/api/users",
        "delay:0ms-1ms:/never-matches",
        "error:504:0.1",
    ];
    let rules: Vec<FaultRule> = specs.iter().map(|spec| spec.parse().unwrap()).collect();
    let table = FaultTable::compile(&rules).unwrap();
    let mut stats = vec![RuleStats::default(); table.len()];
    let mut rng = fastrand::Rng::with_seed(7);
    let urls: [&[u8]; 5] = [
        b"http://127.0.0.1:8080/api/users?id=42",
        b"http://127.0.0.1:8080/api/orders/9",
        b"http://127.0.0.1:8080/v1/items:batchGet",
        b"http://127.0.0.1:8080/static/app.js",
        b"example.com:443",
    ];

    // The counter works: a Vec allocation is seen.
    let before = allocations();
    drop(std::hint::black_box(vec![0u8; 64]));
    assert!(allocations() > before, "counting allocator is not counting");

    let mut errors = 0usize;
    let before = allocations();
    for call in 0..CALLS {
        let url = std::hint::black_box(urls[call % urls.len()]);
        let plan = table.decide(&RequestView::from_url(url), &mut rng, &mut stats);
        errors += usize::from(plan.synthetic_status().is_some());
    }
    let allocated = allocations() - before;

    assert_eq!(
        allocated, 0,
        "decide allocated {allocated} times in {CALLS} calls"
    );
    // The loop did real work: every rule shape was exercised.
    assert!(errors > 0 && errors < CALLS, "errors: {errors}");
    assert!(
        stats.iter().filter(|s| s.matched > 0).count() >= 6,
        "{stats:?}"
    );
}

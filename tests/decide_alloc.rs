//! Proves the hot path allocates nothing: `FaultTable::decide` (every matcher, kind and
//! distribution) and the `x-phantom-fault` header parser under a counting global allocator.
//! It does not test decision semantics; those are the unit tests in `src/fault/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use phantom_fast::fault::{FaultRule, FaultTable, HeaderFault, RequestView, RuleStats};

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

#[test]
fn decide_new_matchers_kinds_and_header_faults_allocate_nothing() {
    let specs = [
        "delay:normal(5ms,1ms):method=POST",
        "delay:lognormal(20ms,400ms):0.5:max=1s:at=head:host$=.example.com",
        "delay:pareto(1ms,1.5):at=body:path^=/api/",
        "delay:exp(3ms):1in3:path=/api/orders/9",
        "bandwidth:64KiB/s:burst=16KiB:header.x-tenant=acme",
        "dribble:10,1s:side=request:header.accept*=json",
        "truncate:50%:query.id=42",
        "reset:0.1:after=1KiB:header.x-tenant=globex",
        "slow-head:100ms:header.x-present",
        "error:429:0.2:body=slow:set.retry-after=2:host*=example:path*=orders",
        "hang:0.05:header.x-tenant^=glob",
        "garbage:0.01:method=DELETE",
        "close:0.01:path$=.js",
        "error:503:0.1:/v1/items:batchGet",
    ];
    let rules: Vec<FaultRule> = specs.iter().map(|spec| spec.parse().unwrap()).collect();
    let table = FaultTable::compile(&rules).unwrap();
    let mut stats = vec![RuleStats::default(); table.len()];
    let mut rng = fastrand::Rng::with_seed(7);
    let tenant_acme = [
        httparse::Header {
            name: "Host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        },
        httparse::Header {
            name: "Accept",
            value: b"application/json",
        },
        httparse::Header {
            name: "x-present",
            value: b"",
        },
    ];
    let tenant_globex = [
        httparse::Header {
            name: "Host",
            value: b"shop.example.org",
        },
        httparse::Header {
            name: "x-tenant",
            value: b"globex",
        },
    ];
    let views = [
        RequestView::from_url(b"http://api.example.com/api/orders/9?id=42&debug")
            .with_method(b"POST")
            .with_headers(&tenant_acme),
        RequestView::from_url(b"http://shop.example.org/static/app.js")
            .with_method(b"GET")
            .with_headers(&tenant_globex),
        RequestView::from_url(b"http://h:1/v1/items:batchGet").with_method(b"DELETE"),
        RequestView::from_url(b"example.com:443").with_method(b"CONNECT"),
    ];
    let header_values: [&[u8]; 8] = [
        b"delay:lognormal(20ms,400ms):0.5:max=1s",
        b"error:503",
        b"reset:after=10",
        b"bandwidth:1KiB/s:burst=4KiB",
        b"bandwidth:64KiB/s:0.5:burst=16KiB:side=request",
        b"bandwidth:1KiB/s:burst=0",
        b"error:503:method=GET",
        b"delay:\xff",
    ];

    let mut faulted = 0usize;
    let mut header_errors = 0usize;
    let before = allocations();
    for call in 0..CALLS {
        let view = std::hint::black_box(&views[call % views.len()]);
        let mut plan = table.decide(view, &mut rng, &mut stats);
        match HeaderFault::parse(std::hint::black_box(
            header_values[call % header_values.len()],
        )) {
            Ok(fault) => {
                plan.apply_header(fault, &mut rng);
            }
            Err(_) => header_errors += 1,
        }
        faulted += usize::from(!plan.is_none());
    }
    let allocated = allocations() - before;

    assert_eq!(
        allocated, 0,
        "decide + header faults allocated {allocated} times in {CALLS} calls"
    );
    assert!(faulted > 0 && header_errors == 3 * CALLS / header_values.len());
    let fired = stats.iter().filter(|s| s.faulted > 0).count();
    assert_eq!(
        fired,
        specs.len(),
        "every rule fired at least once: {stats:?}"
    );
}

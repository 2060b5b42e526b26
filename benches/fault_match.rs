//! Criterion bench: nanoseconds per `FaultTable::decide` for 1, 8, 16 and 64 seed rules, with URLs
//! that match the first rule (early), only the last rule (late) and no rule (never); and for 1, 16
//! and 64 rules mixing header, method and path matchers (issue 12: under 150 ns for 64 when none
//! matches). It measures the decision only, not parsing or applying it.
//!
//! Instructions per decision, robust to other load on the machine (valgrind's callgrind counts
//! the calls into `decide` and everything under them; divide by the calls):
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*FaultTable*decide*' \
//!     target/release/deps/fault_match-HASH --bench --profile-time 1 '^fault_match_mixed/64_rules/never$'
//! callgrind_annotate --tree=caller callgrind.out.PID | grep 'Bencher<M>::iter ('
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::fault::{FaultRule, FaultTable, RequestView, RuleStats};

/// Table sizes measured.
const RULE_COUNTS: [usize; 4] = [1, 8, 16, 64];

/// Rule `i` filters on `/svc{i}/`. Rule 0 and the last rule always answer with an error, so an
/// early match stops at once and a late match scans the whole table; the rules in between mix
/// ranged delays that never match these URLs and probabilistic errors.
fn rules(count: usize) -> Vec<FaultRule> {
    (0..count)
        .map(|i| {
            let spec = if i == 0 || i + 1 == count {
                format!("error:503:/svc{i}/")
            } else if i % 2 == 0 {
                format!("delay:{i}ms-{}ms:/svc{i}/", i + 10)
            } else {
                format!("error:500:0.5:/svc{i}/")
            };
            spec.parse().expect("bench specs follow the grammar")
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault_match");
    group.throughput(Throughput::Elements(1));
    for count in RULE_COUNTS {
        let table = FaultTable::compile(&rules(count)).expect("bench rules have unique ids");
        let mut stats = vec![RuleStats::default(); table.len()];
        let mut rng = fastrand::Rng::with_seed(42);
        let urls = [
            ("early", "http://127.0.0.1:8080/svc0/items?id=42".to_owned()),
            (
                "late",
                format!("http://127.0.0.1:8080/svc{}/items?id=42", count - 1),
            ),
            (
                "never",
                "http://127.0.0.1:8080/static/app.js?v=3".to_owned(),
            ),
        ];
        for (position, url) in &urls {
            group.bench_with_input(
                BenchmarkId::new(format!("{count}_rules"), position),
                url.as_bytes(),
                |b, url| {
                    b.iter(|| {
                        let view = RequestView::from_url(black_box(url));
                        table.decide(&view, &mut rng, &mut stats)
                    })
                },
            );
        }
    }
    group.finish();
}

/// Mixed table sizes measured.
const MIXED_RULE_COUNTS: [usize; 3] = [1, 16, 64];

/// `count` rules of the new kinds: a third on a header, a third on the method, a third on the
/// path (prefix, contains), a few combining two; none matches the bench's request.
fn mixed_rules(count: usize) -> Vec<FaultRule> {
    (0..count)
        .map(|i| {
            let spec = match i % 6 {
                0 => format!("delay:lognormal(20ms,400ms):0.5:header.x-tenant=t{i}"),
                1 => format!("error:503:method=DELETE:path^=/svc{i}/"),
                2 => format!("bandwidth:64KiB/s:path^=/svc{i}/"),
                3 => format!("truncate:50%:header.x-canary-{i}"),
                4 => format!("reset:0.1:method=PATCH:header.x-tenant*=t{i}"),
                _ => format!("delay:100ms:at=head:path*=/never{i}/"),
            };
            spec.parse().expect("bench specs follow the grammar")
        })
        .collect()
}

fn bench_decide_mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault_match_mixed");
    group.throughput(Throughput::Elements(1));
    // A browser-like request with eight headers.
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "User-Agent",
            value: b"Mozilla/5.0 (X11; Linux x86_64)",
        },
        httparse::Header {
            name: "Accept",
            value: b"application/json",
        },
        httparse::Header {
            name: "Accept-Encoding",
            value: b"gzip, br",
        },
        httparse::Header {
            name: "Accept-Language",
            value: b"en-US,en;q=0.9",
        },
        httparse::Header {
            name: "X-Request-Id",
            value: b"7f3e2a90",
        },
        httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        },
        httparse::Header {
            name: "Connection",
            value: b"keep-alive",
        },
    ];
    let url = b"http://api.example.com/static/app.js?v=3";
    for count in MIXED_RULE_COUNTS {
        let table = FaultTable::compile(&mixed_rules(count)).expect("bench rules have unique ids");
        let mut stats = vec![RuleStats::default(); table.len()];
        let mut rng = fastrand::Rng::with_seed(42);
        group.bench_function(format!("{count}_rules/never"), |b| {
            b.iter(|| {
                let view = RequestView::from_url(black_box(url))
                    .with_method(b"GET")
                    .with_headers(black_box(&headers));
                table.decide(&view, &mut rng, &mut stats)
            })
        });
        assert!(stats.iter().all(|s| s.matched == 0), "a bench rule matched");
    }
    group.finish();
}

criterion_group!(benches, bench_decide, bench_decide_mixed);
criterion_main!(benches);

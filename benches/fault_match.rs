//! Criterion bench: nanoseconds per `FaultTable::decide` for 1, 8 and 64 rules, with URLs that
//! match the first rule (early), only the last rule (late) and no rule (never). It measures the
//! decision only, not parsing or applying it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::fault::{FaultRule, FaultTable, RequestView, RuleStats};

/// Table sizes measured.
const RULE_COUNTS: [usize; 3] = [1, 8, 64];

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

criterion_group!(benches, bench_decide);
criterion_main!(benches);

//! Request head parsing throughput for small, medium and large heads.
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::http::{Limits, MAX_HEADERS_CAP, header_slots, parse_request, request_body_kind};

fn head_with(extra_headers: usize) -> Vec<u8> {
    let mut head = b"GET /api/v1/items?id=42&sort=desc HTTP/1.1\r\nHost: example.com\r\n".to_vec();
    for i in 0..extra_headers {
        head.extend_from_slice(
            format!("X-Header-{i}: value-{i}-abcdefghijklmnopqrstuvwxyz0123456789\r\n").as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_request");
    let limits = Limits::default();
    for (name, n) in [
        ("small_2_headers", 1),
        ("medium_12_headers", 11),
        ("large_60_headers", 59),
    ] {
        let head = head_with(n);
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            let mut headers = header_slots::<MAX_HEADERS_CAP>();
            b.iter(|| {
                let parsed = parse_request(black_box(&head), &mut headers, &limits);
                match parsed {
                    Ok(Some(h)) => black_box((h.head_len, request_body_kind(&h).is_ok())),
                    _ => unreachable!("bench head is valid"),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);

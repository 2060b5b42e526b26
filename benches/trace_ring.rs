//! How fast the trace ring takes records, and how fast `traces` renders them as JSON Lines.
//!
//! It does not measure the proxy: see `scripts/` for end-to-end throughput with tracing on/off.

use std::net::SocketAddr;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::trace::{
    AppliedFault, FaultKind, Filter, Format, Outcome, RingReader, TraceConfig, TraceEvent,
    TraceWriter, write_traces,
};

/// Records in the ring the export bench renders.
const EXPORT_RECORDS: u64 = 10_000;
/// Per-core ring size used by the benches: the proxy's default.
const RING_BYTES: u64 = 64 * 1024 * 1024;

struct Fixture {
    request_head: Vec<u8>,
    response_head: Vec<u8>,
    body: Vec<u8>,
}

/// A typical record: 1 KiB of heads (768 B request, 256 B response), 256 B of bodies.
fn fixture() -> Fixture {
    let mut request_head =
        b"GET /api/v1/items/42?expand=owner HTTP/1.1\r\nhost: shop.example.test\r\nuser-agent: bench/1.0\r\n".to_vec();
    while request_head.len() < 768 - 4 {
        request_head.extend_from_slice(b"x-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    request_head.truncate(768 - 4);
    request_head.extend_from_slice(b"\r\n\r\n");
    let mut response_head =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 128\r\n".to_vec();
    response_head.resize(256 - 4, b'a');
    response_head.extend_from_slice(b"\r\n\r\n");
    Fixture {
        request_head,
        response_head,
        body: vec![b'{'; 128],
    }
}

/// One applied delay, on every tenth record.
const DELAYED: &[AppliedFault<'static>] = &[AppliedFault {
    kind: FaultKind::Delay,
    rule: 0,
    rule_id: "r0",
    spec: "delay:100ms:0.1",
    value: 100_000_000,
}];

fn event(f: &Fixture, i: u64) -> TraceEvent<'_> {
    TraceEvent {
        trace_id: u128::from(i) << 64 | 0xabcdef,
        span_id: i | 1,
        parent_span_id: None,
        start_unix_ns: 1_700_000_000_000_000_000 + i * 1000,
        duration_ns: 250_000 + i % 1000,
        upstream_connect_ns: 0,
        upstream_ttfb_ns: Some(200_000),
        upstream_body_ns: 10_000,
        injected_delay_ns: 0,
        generation: 1,
        faults: if i.is_multiple_of(10) { DELAYED } else { &[] },
        client_tls: None,
        upstream_tls: None,
        method: b"GET",
        url: b"http://shop.example.test/api/v1/items/42?expand=owner",
        version: "HTTP/1.1",
        status: 200,
        request_head: &f.request_head,
        response_head: &f.response_head,
        request_body: &f.body,
        request_body_len: 128,
        response_body: &f.body,
        response_body_len: 128,
        client_addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        upstream_addr: Some(SocketAddr::from(([127, 0, 0, 1], 3000))),
        outcome: Outcome::Ok,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pf-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Serialised size of the typical record (rkyv archive, before framing).
fn record_bytes(f: &Fixture) -> u64 {
    let dir = temp_dir("size");
    let cfg = TraceConfig {
        dir: dir.clone(),
        capacity_bytes: 1 << 20,
        reset: true,
    };
    let mut w = TraceWriter::open(&cfg, 0).expect("open ring");
    w.write(&event(f, 0));
    let reader = RingReader::open(w.path()).expect("open reader");
    let mut cur = reader.oldest();
    let mut payload = Vec::new();
    reader.next(&mut cur, &mut payload).expect("the record");
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    payload.len() as u64
}

fn bench_append(c: &mut Criterion) {
    let f = fixture();
    let dir = temp_dir("append");
    let cfg = TraceConfig {
        dir: dir.clone(),
        capacity_bytes: RING_BYTES,
        reset: true,
    };
    let mut w = TraceWriter::open(&cfg, 0).expect("open ring");
    let bytes = record_bytes(&f);
    let mut i = 0u64;
    // Warm the ring once around so page faults of the first lap do not count.
    while w.next_seq() < RING_BYTES / bytes + 10 {
        w.write(&event(&f, i));
        i += 1;
    }
    for (name, throughput) in [
        ("records", Throughput::Elements(1)),
        ("bytes", Throughput::Bytes(bytes)),
    ] {
        let mut group = c.benchmark_group(format!("trace_append_{name}"));
        group.throughput(throughput);
        group.bench_function("typical_record_1k_heads_256b_bodies", |b| {
            b.iter(|| {
                i += 1;
                w.write(std::hint::black_box(&event(&f, i)));
            })
        });
        group.finish();
    }
    assert_eq!(w.dropped(), 0);
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_export(c: &mut Criterion) {
    let f = fixture();
    let dir = temp_dir("export");
    let cfg = TraceConfig {
        dir: dir.clone(),
        capacity_bytes: RING_BYTES,
        reset: true,
    };
    let mut w = TraceWriter::open(&cfg, 0).expect("open ring");
    for i in 0..EXPORT_RECORDS {
        w.write(&event(&f, i));
    }
    drop(w);
    let mut group = c.benchmark_group("trace_export_jsonl");
    group.throughput(Throughput::Elements(EXPORT_RECORDS));
    group.sample_size(20);
    group.bench_function("read_validate_sort_render", |b| {
        // Rendered into a sink: the exporter's own 64 KiB chunk buffer is part of the cost,
        // growing a 20 MB output buffer would not be.
        b.iter(|| {
            write_traces(
                &dir,
                &Filter::default(),
                Format::Jsonl,
                false,
                &mut std::io::sink(),
            )
            .expect("export")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_append, bench_export);
criterion_main!(benches);

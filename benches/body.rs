//! Chunked body throughput (MB/s of payload: the 1 MiB of data the body carries, not the chunk
//! framing around it): scanning for pass-through and de-chunking into a buffer, fed in 16 KiB
//! reads as a socket would deliver them. With 64-byte chunks the framing is a fifth of the wire
//! bytes, so counting it would flatter small chunks.
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phantom_fast::http::ChunkedDecoder;

const BODY_BYTES: usize = 1024 * 1024;
const READ_BYTES: usize = 16 * 1024;

fn chunked_body(chunk: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_BYTES + BODY_BYTES / chunk * 16 + 64);
    let data = vec![b'x'; chunk];
    for _ in 0..BODY_BYTES / chunk {
        body.extend_from_slice(format!("{chunk:x};ext=1\r\n").as_bytes());
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
    body
}

/// Decodes `body` in `READ_BYTES` windows, handing each data range to `sink`.
fn decode_all(body: &[u8], mut sink: impl FnMut(&[u8])) {
    let mut dec = ChunkedDecoder::new();
    let mut offset = 0usize;
    while !dec.is_done() {
        let end = (offset + READ_BYTES).min(body.len());
        match dec.decode(&body[offset..end]) {
            Ok(d) => {
                sink(&body[offset..end][d.data]);
                offset += d.consumed;
            }
            Err(e) => unreachable!("bench body is valid: {e}"),
        }
    }
}

fn bench_chunked(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunked_decode");
    for (name, chunk) in [("64b", 64), ("4kib", 4096), ("64kib", 65536)] {
        let body = chunked_body(chunk);
        let mut payload = 0usize;
        decode_all(&body, |data| payload += data.len());
        assert_eq!(
            payload, BODY_BYTES,
            "the bench body carries BODY_BYTES of payload"
        );
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_function(format!("scan_chunks_{name}"), |b| {
            b.iter(|| {
                let mut data_bytes = 0usize;
                decode_all(black_box(&body), |data| data_bytes += data.len());
                black_box(data_bytes)
            })
        });
        let mut out = Vec::with_capacity(BODY_BYTES);
        group.bench_function(format!("dechunk_chunks_{name}"), |b| {
            b.iter(|| {
                out.clear();
                decode_all(black_box(&body), |data| out.extend_from_slice(data));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_chunked);
criterion_main!(benches);

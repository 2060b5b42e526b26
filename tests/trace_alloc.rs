//! Proves `TraceWriter::write` allocates nothing after warm-up, across ring wrap-arounds.
//!
//! Its own test binary because it installs a counting `#[global_allocator]`; it tests nothing else.

use std::net::SocketAddr;

use phantom_fast::trace::{
    AppliedFault, FaultKind, Outcome, TlsSession, TlsVerification, TraceConfig, TraceEvent,
    TraceWriter,
};

#[path = "counting/mod.rs"]
mod counting;

#[test]
fn trace_writer_write_allocates_nothing_after_warm_up() {
    let dir = std::env::temp_dir().join(format!("pf-trace-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TraceConfig {
        dir: dir.clone(),
        capacity_bytes: 256 * 1024,
        reset: true,
    };
    let mut writer = TraceWriter::open(&cfg, 0).expect("open ring");

    let request_head = [
        b"GET /items/42 HTTP/1.1\r\nhost: example.test\r\n".as_slice(),
        &[b'a'; 900],
        b"\r\n\r\n",
    ]
    .concat();
    let response_head = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 128\r\n".as_slice(),
        &[b'b'; 100],
        b"\r\n\r\n",
    ]
    .concat();
    let body = [b'c'; 128];
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let upstream: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    let faults = [
        AppliedFault {
            kind: FaultKind::Delay,
            rule: 1,
            rule_id: "r1",
            spec: "delay:100ms:0.1",
            value: 100_000_000,
        },
        AppliedFault {
            kind: FaultKind::Error,
            rule: 2,
            rule_id: "refuse",
            spec: "error:503",
            value: 503,
        },
    ];
    let session = TlsSession {
        version: "TLSv1_3",
        cipher_suite: "TLS13_AES_128_GCM_SHA256",
        version_code: 0x0304,
        cipher_suite_code: 0x1301,
        server_name: "example.test",
        verification: TlsVerification::Verified,
        resumed: false,
        failure: "",
    };
    let event = |i: u64| TraceEvent {
        trace_id: u128::from(i) << 64 | 1,
        span_id: i + 1,
        parent_span_id: i.is_multiple_of(2).then_some(i),
        start_unix_ns: 1_700_000_000_000_000_000 + i,
        duration_ns: 1000 + i,
        upstream_connect_ns: 300,
        upstream_ttfb_ns: Some(500),
        upstream_body_ns: 200,
        injected_delay_ns: 0,
        generation: 4,
        // None, one or several applied faults, as real traffic has.
        faults: &faults[..(i % 3) as usize],
        // TLS sessions on some records, as a TLS listener and https upstreams give.
        client_tls: i.is_multiple_of(2).then_some(session),
        upstream_tls: i.is_multiple_of(5).then_some(session),
        method: b"GET",
        url: b"http://example.test/items/42",
        version: "HTTP/1.1",
        status: 200,
        request_head: &request_head,
        response_head: &response_head,
        // Body prefixes of varying length, as real traffic has.
        request_body: &body[..(i % 129) as usize],
        request_body_len: 128,
        response_body: &body,
        response_body_len: 4096,
        client_addr: client,
        upstream_addr: Some(upstream),
        outcome: Outcome::Ok,
    };

    for i in 0..1000 {
        writer.write(&event(i));
    }
    let before = counting::allocations();
    assert!(before > 0, "the counting allocator is not installed");
    // 20_000 records of ~1.4 KiB through a 256 KiB ring: over 100 wrap-arounds.
    for i in 1000..21_000 {
        writer.write(&event(i));
    }
    let after = counting::allocations();
    assert_eq!(
        after - before,
        0,
        "TraceWriter::write allocated {} times",
        after - before
    );
    assert_eq!(writer.dropped(), 0);
    assert_eq!(writer.next_seq(), 21_001);
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
}

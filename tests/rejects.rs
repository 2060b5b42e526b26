//! Client input the proxy must refuse: each malformed or over-limit request gets its status, a
//! closed connection, no forwarding, and the same proxy then still serves a good request.
//! It does not cover failures on the upstream side (`upstream_errors`).

use std::time::{Duration, Instant};

use crate::support::{Origin, Proxy, assert_proxy_error, get, request};

/// Whether the rejected request may have reached the origin before the proxy saw the problem
/// (a bad chunk size is only found while streaming the body).
#[derive(Clone, Copy, PartialEq)]
enum OriginContact {
    Forbidden,
    Allowed,
}

/// Sends `bad` to a reverse proxy started with `args`, asserts the rejection, then a good request.
fn assert_rejected(args: &[&str], bad: &[u8], want_status: u16, contact: OriginContact) {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), args);
    let mut c = proxy.connect();

    c.send_lossy(bad);
    let resp = c.read_response().unwrap_or_else(|e| {
        panic!(
            "no {want_status} response: {e}; proxy stderr:\n{}",
            proxy.stderr()
        )
    });

    assert_proxy_error(&resp, want_status);
    assert!(
        resp.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "rejection without `connection: close`: {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(
        c.wait_closed(),
        Ok(()),
        "connection after the {want_status}"
    );
    if contact == OriginContact::Forbidden {
        assert!(
            origin.requests().is_empty(),
            "rejected request forwarded: {:?}",
            String::from_utf8_lossy(&origin.requests()[0].head)
        );
    }
    let good = proxy.connect().roundtrip(&get("/after"));
    assert_eq!(good.status, 200, "proxy not serving after a {want_status}");
    assert_eq!(good.text(), "GET /after");
}

#[test]
fn request_line_malformed_400() {
    assert_rejected(
        &[],
        b"GET /a b HTTP/1.1\r\nhost: t\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn request_line_bad_version_400() {
    assert_rejected(
        &[],
        b"GET / HTTQ/1.1\r\nhost: t\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn header_line_without_colon_400() {
    assert_rejected(
        &[],
        b"GET / HTTP/1.1\r\nhost: t\r\nthis is not a header\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn transfer_encoding_with_content_length_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn content_length_differing_duplicates_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn content_length_differing_list_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5, 6\r\n\r\nhello!",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn content_length_not_a_number_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: +5\r\n\r\nhello",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn transfer_encoding_final_not_chunked_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn chunk_size_invalid_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        OriginContact::Allowed,
    );
}

#[test]
fn host_missing_http11_400() {
    assert_rejected(
        &[],
        b"GET / HTTP/1.1\r\naccept: */*\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn request_target_70kib_414() {
    let target = format!("/{}", "a".repeat(70 * 1024));
    assert_rejected(&[], &get(&target), 414, OriginContact::Forbidden);
}

#[test]
fn header_block_over_max_header_bytes_431() {
    let big = "v".repeat(16 * 1024);
    assert_rejected(
        &["--max-header-bytes", "8KiB"],
        &request("GET", "/", "t", &[("x-big", &big)], b""),
        431,
        OriginContact::Forbidden,
    );
}

#[test]
fn header_count_over_max_headers_431() {
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    assert_rejected(
        &["--max-headers", "10"],
        &request("GET", "/", "t", &headers, b""),
        431,
        OriginContact::Forbidden,
    );
}

#[test]
fn head_slow_408_closed() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--header-timeout", "300ms"]);
    let mut c = proxy.connect();
    let started = Instant::now();

    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n");
    let resp = c.read_response().expect("a 408");
    let waited = started.elapsed();

    assert_proxy_error(&resp, 408);
    assert!(
        waited >= Duration::from_millis(300),
        "408 after only {waited:?}"
    );
    assert_eq!(c.wait_closed(), Ok(()));
    assert!(origin.requests().is_empty());
    assert_eq!(
        proxy.connect().roundtrip(&get("/after")).text(),
        "GET /after"
    );
}

#[test]
fn garbage_bytes_never_panic_proxy_keeps_serving() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let inputs: &[(&str, &[u8])] = &[
        ("nul_bytes", b"\x00\x00\x00\x00\r\n\r\n"),
        ("binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        ("bare_lf", b"GET / HTTP/1.1\nhost: t\n\n"),
        ("huge_chunk_size", b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"),
        ("negative_length", b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: -1\r\n\r\n"),
        ("obs_fold", b"GET / HTTP/1.1\r\nhost: t\r\nx-a: 1\r\n  folded\r\n\r\n"),
        ("space_before_colon", b"GET / HTTP/1.1\r\nhost : t\r\n\r\n"),
    ];

    for (name, bytes) in inputs {
        let mut c = proxy.connect();
        c.send_lossy(bytes);
        // Any answer or a close is acceptable here; the proxy must survive it.
        c.shutdown_write();
        let _ = c.read_until_close();
        let good = proxy.connect().roundtrip(&get("/after"));
        assert_eq!(good.text(), "GET /after", "after input {name}");
    }
}

#[test]
fn transfer_encoding_on_http10_400() {
    assert_rejected(
        &[],
        b"POST / HTTP/1.0\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        OriginContact::Forbidden,
    );
}

#[test]
fn header_count_at_max_headers_accepted() {
    // `--max-headers 10` with exactly 10 fields (host + 9): the limit itself is allowed.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--max-headers", "10"]);
    let names: Vec<String> = (0..9).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();

    let resp = proxy
        .connect()
        .roundtrip(&request("GET", "/", "t", &headers, b""));

    assert_eq!(
        resp.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
}

#[test]
fn request_target_8kib_accepted() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let target = format!("/{}", "a".repeat(8 * 1024));

    let resp = proxy.connect().roundtrip(&get(&target));

    assert_eq!(
        resp.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(origin.requests()[0].target, target);
}

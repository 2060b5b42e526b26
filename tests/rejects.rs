//! Client input the proxy must refuse: each malformed or over-limit request gets its status, a
//! closed connection, no forwarding, and the same proxy then still serves a good request.
//! It does not cover failures on the upstream side (`upstream_errors`).
//!
//! The rejections are one named table; rows that need no flags share one proxy and one origin
//! (each row is checked against what the origin received during that row only), rows with their
//! own limits get their own proxy.

use std::time::{Duration, Instant};

use crate::support::{Origin, Proxy, Req, assert_proxy_error, get, request};

/// Whether the rejected request may have reached the origin before the proxy saw the problem
/// (a bad chunk size is only found while streaming the body).
#[derive(Clone, Copy, PartialEq, Debug)]
enum OriginContact {
    Forbidden,
    Allowed,
}

/// One rejection: the row's name, the proxy flags it needs, the bytes, the status, and whether
/// the origin may have seen the request.
struct Reject {
    name: &'static str,
    args: &'static [&'static str],
    bad: Vec<u8>,
    status: u16,
    contact: OriginContact,
}

fn row(name: &'static str, bad: &[u8], status: u16, contact: OriginContact) -> Reject {
    Reject {
        name,
        args: &[],
        bad: bad.to_vec(),
        status,
        contact,
    }
}

/// Every rejection the proxy makes on a request head or body, one named row each.
fn rejections() -> Vec<Reject> {
    use OriginContact::{Allowed, Forbidden};
    let big = "v".repeat(16 * 1024);
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    vec![
        row(
            "request_line_malformed_400",
            b"GET /a b HTTP/1.1\r\nhost: t\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "request_line_bad_version_400",
            b"GET / HTTQ/1.1\r\nhost: t\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "header_line_without_colon_400",
            b"GET / HTTP/1.1\r\nhost: t\r\nthis is not a header\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "transfer_encoding_with_content_length_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "content_length_differing_duplicates_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            400,
            Forbidden,
        ),
        row(
            "content_length_differing_list_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5, 6\r\n\r\nhello!",
            400,
            Forbidden,
        ),
        row(
            "content_length_not_a_number_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: +5\r\n\r\nhello",
            400,
            Forbidden,
        ),
        row(
            "transfer_encoding_final_not_chunked_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "transfer_encoding_on_http10_400",
            b"POST / HTTP/1.0\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "chunk_size_invalid_400",
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            Allowed,
        ),
        row(
            "host_missing_http11_400",
            b"GET / HTTP/1.1\r\naccept: */*\r\n\r\n",
            400,
            Forbidden,
        ),
        row(
            "request_target_70kib_414",
            &get(&format!("/{}", "a".repeat(70 * 1024))),
            414,
            Forbidden,
        ),
        Reject {
            args: &["--max-header-bytes", "8KiB"],
            ..row(
                "header_block_over_max_header_bytes_431",
                &request("GET", "/", "t", &[("x-big", &big)], b""),
                431,
                Forbidden,
            )
        },
        Reject {
            args: &["--max-headers", "10"],
            ..row(
                "header_count_over_max_headers_431",
                &request("GET", "/", "t", &many, b""),
                431,
                Forbidden,
            )
        },
    ]
}

/// A proxy and its origin, shared by the rows with the same flags.
struct Bench {
    args: &'static [&'static str],
    origin: Origin,
    proxy: Proxy,
}

#[test]
fn rejections_answer_status_close_forward_nothing_then_serve() {
    let mut benches: Vec<Bench> = Vec::new();
    for r in rejections() {
        let at = match benches.iter().position(|b| b.args == r.args) {
            Some(at) => at,
            None => {
                let origin = Origin::echo();
                let proxy = Proxy::reverse(origin.addr(), r.args);
                benches.push(Bench {
                    args: r.args,
                    origin,
                    proxy,
                });
                benches.len() - 1
            }
        };
        assert_rejected(&benches[at], &r);
    }
}

/// Sends the row's bytes to the bench's proxy, asserts the rejection, then a good request.
fn assert_rejected(bench: &Bench, r: &Reject) {
    let Bench { origin, proxy, .. } = bench;
    let seen_before = origin.requests().len();
    let mut c = proxy.connect();

    c.send_lossy(&r.bad);
    let resp = c.read_response().unwrap_or_else(|e| {
        panic!(
            "{}: no {} response: {e}; proxy stderr:\n{}",
            r.name,
            r.status,
            proxy.stderr()
        )
    });

    assert_proxy_error(&resp, r.status);
    assert_eq!(
        c.wait_closed(),
        Ok(()),
        "{}: connection after the {}",
        r.name,
        r.status
    );
    if r.contact == OriginContact::Forbidden {
        let forwarded = &origin.requests()[seen_before..];
        assert!(
            forwarded.is_empty(),
            "{}: rejected request forwarded: {:?}",
            r.name,
            forwarded.iter().map(Req::request_line).collect::<Vec<_>>()
        );
    }
    let after = format!("/after-{}", r.name);
    let good = proxy.connect().roundtrip(&get(&after));
    assert_eq!(
        good.status, 200,
        "{}: proxy not serving after a {}",
        r.name, r.status
    );
    assert_eq!(good.text(), format!("GET {after}"), "{}", r.name);
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

/// What the proxy does with one garbage input: refuse it with a status (and forward nothing),
/// or accept it as a request (bare LF line ends, RFC 9112 §2.2) and forward it normalised.
#[derive(Clone, Copy, Debug)]
enum Garbage {
    Refused(u16),
    Forwarded(&'static str),
}

#[test]
fn garbage_bytes_answered_never_forwarded_proxy_keeps_serving() {
    use Garbage::{Forwarded, Refused};
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let inputs: &[(&str, &[u8], Garbage)] = &[
        ("nul_bytes", b"\x00\x00\x00\x00\r\n\r\n", Refused(400)),
        (
            "binary",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            Refused(400),
        ),
        (
            "bare_lf",
            b"GET /bare-lf HTTP/1.1\nhost: t\n\n",
            Forwarded("GET /bare-lf HTTP/1.1"),
        ),
        (
            "huge_chunk_size",
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
            Refused(400),
        ),
        (
            "negative_length",
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: -1\r\n\r\n",
            Refused(400),
        ),
        (
            "obs_fold",
            b"GET / HTTP/1.1\r\nhost: t\r\nx-a: 1\r\n  folded\r\n\r\n",
            Refused(400),
        ),
        (
            "space_before_colon",
            b"GET / HTTP/1.1\r\nhost : t\r\n\r\n",
            Refused(400),
        ),
    ];

    for &(name, bytes, want) in inputs {
        let seen_before = origin.requests().len();
        let mut c = proxy.connect();
        c.send_lossy(bytes);
        c.shutdown_write();
        let resp = c.read_response().unwrap_or_else(|e| {
            panic!("{name}: no answer: {e}; proxy stderr:\n{}", proxy.stderr())
        });
        let forwarded: Vec<String> = origin.requests()[seen_before..]
            .iter()
            .map(Req::request_line)
            .collect();
        match want {
            Refused(status) => {
                assert_proxy_error(&resp, status);
                assert!(forwarded.is_empty(), "{name}: forwarded {forwarded:?}");
            }
            Forwarded(line) => {
                assert_eq!(resp.status, 200, "{name}: {}", resp.status_line());
                assert_eq!(forwarded, [line], "{name}: what the origin received");
            }
        }
        let good = proxy.connect().roundtrip(&get("/after"));
        assert_eq!(good.text(), "GET /after", "after input {name}");
    }
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

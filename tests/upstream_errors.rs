//! Upstream failures turned into proxy answers: refused (502), garbled or conflicting framing
//! (502), closed without an answer (502), silent past `--upstream-timeout` (504); the proxy keeps
//! serving afterwards. It does not cover client-side rejections (`rejects`).

use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Origin, Proxy, RawOrigin, assert_proxy_error, closed_port, get, request, response,
};

/// An origin that misbehaves for targets starting with `/bad` (by `bad`) and answers the rest.
fn origin_bad_for(bad: &'static [u8]) -> RawOrigin {
    RawOrigin::start(move |mut conn, _| {
        while let Ok(Some(req)) = conn.read_request(false) {
            if req.target.starts_with("/bad") {
                let _ = conn.try_send(bad);
                return;
            }
            if conn
                .try_send(&response("200 OK", &[], req.target.as_bytes()))
                .is_err()
            {
                return;
            }
        }
    })
}

#[test]
fn upstream_port_closed_502_proxy_keeps_serving() {
    let dead = closed_port();
    let proxy = Proxy::reverse(dead, &[]);

    let first = proxy.connect().roundtrip(&get("/"));
    let second = proxy.connect().roundtrip(&get("/"));

    assert_proxy_error(&first, 502);
    assert_proxy_error(&second, 502);
}

#[test]
fn upstream_port_closed_forward_502_then_live_origin_200() {
    let dead = closed_port().to_string();
    let origin = Origin::echo();
    let live = origin.authority();
    let proxy = Proxy::start(&[]);

    let failed =
        proxy
            .connect()
            .roundtrip(&request("GET", &format!("http://{dead}/"), &dead, &[], b""));
    let ok = proxy.connect().roundtrip(&request(
        "GET",
        &format!("http://{live}/ok"),
        &live,
        &[],
        b"",
    ));

    assert_proxy_error(&failed, 502);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "GET /ok");
}

#[test]
fn upstream_garbled_response_502_then_good_request_200() {
    let origin = origin_bad_for(b"SPDY/9 what is this\r\n\r\n");
    let proxy = Proxy::reverse(origin.addr(), &[]);

    let bad = proxy.connect().roundtrip(&get("/bad"));
    let good = proxy.connect().roundtrip(&get("/good"));

    assert_proxy_error(&bad, 502);
    assert_eq!(good.text(), "/good");
}

#[test]
fn upstream_conflicting_framing_502() {
    let origin = origin_bad_for(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let proxy = Proxy::reverse(origin.addr(), &[]);

    let bad = proxy.connect().roundtrip(&get("/bad"));
    let good = proxy.connect().roundtrip(&get("/good"));

    assert_proxy_error(&bad, 502);
    assert_eq!(good.text(), "/good");
}

#[test]
fn upstream_closes_without_response_post_502() {
    let origin = origin_bad_for(b"");
    let proxy = Proxy::reverse(origin.addr(), &[]);

    let bad = proxy
        .connect()
        .roundtrip(&request("POST", "/bad", "t", &[], b"x"));
    let good = proxy.connect().roundtrip(&get("/good"));

    assert_proxy_error(&bad, 502);
    assert_eq!(good.text(), "/good");
}

#[test]
fn upstream_silent_504_after_timeout_then_good_request_200() {
    let origin = RawOrigin::start(|mut conn, _| {
        while let Ok(Some(req)) = conn.read_request(false) {
            if req.target == "/sleep" {
                thread::sleep(Duration::from_secs(3));
                return;
            }
            if conn
                .try_send(&response("200 OK", &[], req.target.as_bytes()))
                .is_err()
            {
                return;
            }
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "300ms"]);
    let started = Instant::now();

    let timed_out = proxy.connect().roundtrip(&get("/sleep"));
    let waited = started.elapsed();
    let good = proxy.connect().roundtrip(&get("/good"));

    assert_proxy_error(&timed_out, 504);
    assert!(
        waited >= Duration::from_millis(300),
        "504 after only {waited:?}"
    );
    assert_eq!(good.text(), "/good");
}

#[test]
fn upstream_response_head_never_completes_504() {
    // Bytes arrive but the head never ends: the head timeout, not just the first byte, counts.
    let origin = RawOrigin::start(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let _ = conn.try_send(b"HTTP/1.1 200 OK\r\nx-partial: ");
            thread::sleep(Duration::from_secs(3));
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "300ms"]);

    let resp = proxy.connect().roundtrip(&get("/"));

    assert_proxy_error(&resp, 504);
}

#[test]
fn upstream_differing_content_lengths_502() {
    let origin =
        origin_bad_for(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd");
    let proxy = Proxy::reverse(origin.addr(), &[]);

    let bad = proxy.connect().roundtrip(&get("/bad"));
    let good = proxy.connect().roundtrip(&get("/good"));

    assert_proxy_error(&bad, 502);
    assert_eq!(good.text(), "/good");
}

#[test]
fn upstream_content_length_not_a_number_502() {
    let origin = origin_bad_for(b"HTTP/1.1 200 OK\r\ncontent-length: 3x\r\n\r\nabc");
    let proxy = Proxy::reverse(origin.addr(), &[]);

    let bad = proxy.connect().roundtrip(&get("/bad"));

    assert_proxy_error(&bad, 502);
}

#[test]
fn upstream_truncated_body_client_connection_closed() {
    // The head is already forwarded when the body falls short: the only honest signal left is
    // closing the client connection before the promised length.
    let origin = RawOrigin::start(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let _ = conn.try_send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly forty bytes of the hundred promised");
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.send(&get("/"));
    let result = c.read_response();

    let err = result
        .map(|r| r.text())
        .expect_err("a full response from a truncated body");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

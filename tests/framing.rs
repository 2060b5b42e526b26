//! Message framing through the proxy in reverse mode: methods, bodies (Content-Length, chunked,
//! close-delimited, 10 MB), bodiless responses, 1xx, `Expect: 100-continue`, hop-by-hop headers.
//! It does not cover rejections, connection reuse, forward mode or upstream failures.

use std::time::Duration;

use crate::support::{
    Conn, Origin, Proxy, RawOrigin, Req, checksum, contains, echo, get, pattern, request, response,
};

/// Size of the large-body tests (the "10 MB").
const LARGE_BODY_BYTES: usize = 10 * 1000 * 1000;

#[test]
fn reverse_get_origin_form_arrives_host_kept() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("GET", "/hello?x=1", "example.test", &[], b""));

    assert_eq!(
        resp.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(resp.text(), "GET /hello?x=1");
    let reqs = origin.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].request_line(), "GET /hello?x=1 HTTP/1.1");
    assert_eq!(reqs[0].header("host"), Some("example.test"));
}

#[test]
fn reverse_post_body_echoed() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request(
        "POST",
        "/submit",
        "example.test",
        &[("content-type", "application/octet-stream")],
        b"some \x00binary\xff payload",
    ));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"some \x00binary\xff payload");
    let reqs = origin.requests();
    assert_eq!(reqs[0].request_line(), "POST /submit HTTP/1.1");
    assert_eq!(reqs[0].body, b"some \x00binary\xff payload");
}

#[test]
fn reverse_upstream_host_flag_overrides_host() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-host", "backend.internal"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("GET", "/", "public.test", &[], b""));

    assert_eq!(resp.status, 200);
    assert_eq!(
        origin.requests()[0].header("host"),
        Some("backend.internal")
    );
}

/// `hello world` in two chunks, the first with an extension, then a trailer field.
const CHUNKED_HELLO: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n";

fn post_chunked_hello() -> Vec<u8> {
    let mut bytes =
        b"POST /chunked HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    bytes.extend_from_slice(CHUNKED_HELLO);
    bytes
}

#[test]
fn request_chunked_body_decoded_at_origin() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&post_chunked_hello());

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello world");
    assert_eq!(origin.requests()[0].body, b"hello world");
}

#[test]
fn request_chunked_extensions_and_trailers_passed_through() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.roundtrip(&post_chunked_hello());

    let req = &origin.requests()[0];
    let raw = String::from_utf8_lossy(&req.raw_body);
    assert!(
        req.header("transfer-encoding").is_some(),
        "origin head {:?}",
        String::from_utf8_lossy(&req.head)
    );
    assert!(raw.contains(";ext=1"), "chunk extension lost: {raw:?}");
    assert!(raw.contains("x-trailer: yes\r\n"), "trailer lost: {raw:?}");
}

#[test]
fn response_chunked_extensions_and_trailers_passed_through() {
    let origin = Origin::start(|_| {
        let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        r.extend_from_slice(CHUNKED_HELLO);
        r
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello world");
    let raw = String::from_utf8_lossy(&resp.raw_body);
    assert!(raw.contains(";ext=1"), "chunk extension lost: {raw:?}");
    assert!(raw.contains("x-trailer: yes\r\n"), "trailer lost: {raw:?}");
    // The connection stays usable after a chunked body.
    assert_eq!(c.roundtrip(&get("/again")).text(), "hello world");
}

#[test]
fn response_close_delimited_body_delivered_whole() {
    let body = pattern(300_000);
    let sent = body.clone();
    let origin = RawOrigin::start(move |mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let mut r =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n".to_vec();
            r.extend_from_slice(&sent);
            let _ = conn.try_send(&r);
        }
        // Dropping the stream closes it: that close is the end of the body.
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/stream"));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert_eq!(checksum(&resp.body), checksum(&body));
}

/// Sends a request whose response has no body, then a GET on the same connection: the second
/// response must parse cleanly right after the first head (no stray bytes, no hang).
fn assert_bodiless_then_keepalive(method: &str, origin_answer: &'static [u8], want_status: u16) {
    let origin = Origin::start(move |req: &Req| {
        if req.target == "/next" {
            echo(req)
        } else {
            origin_answer.to_vec()
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip_to(method, &request(method, "/bodiless", "t", &[], b""));
    let second = c.roundtrip(&get("/next"));

    assert_eq!(
        first.status,
        want_status,
        "head {:?}",
        String::from_utf8_lossy(&first.head)
    );
    assert_eq!(
        second.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&second.head)
    );
    assert_eq!(second.text(), "GET /next");
}

#[test]
fn response_to_head_has_no_body_keepalive_continues() {
    assert_bodiless_then_keepalive(
        "HEAD",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\n",
        200,
    );
}

#[test]
fn response_204_has_no_body_keepalive_continues() {
    assert_bodiless_then_keepalive("GET", b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n", 204);
}

#[test]
fn response_304_with_content_length_has_no_body_keepalive_continues() {
    // RFC 9110 §8.6: a 304 may carry the content-length of the representation it stands for.
    assert_bodiless_then_keepalive(
        "GET",
        b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 100\r\n\r\n",
        304,
    );
}

#[test]
fn response_1xx_interim_then_final_delivered() {
    let origin = RawOrigin::start(|mut conn, _| {
        while let Ok(Some(_)) = conn.read_request(false) {
            let r = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                      HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal";
            if conn.try_send(r).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/hints"));
    let again = c.roundtrip(&get("/hints"));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "final");
    assert_eq!(again.text(), "final");
}

#[test]
fn response_103_forwarded_to_client() {
    // RFC 9110 §15.2: a proxy MUST forward 1xx responses it did not ask for.
    let origin = RawOrigin::start(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let _ = conn.try_send(
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            );
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/hints"));

    assert_eq!(
        resp.interim.len(),
        1,
        "interim responses {:?}",
        resp.interim
    );
    let hint = String::from_utf8_lossy(&resp.interim[0]);
    assert!(hint.starts_with("HTTP/1.1 103 "), "interim {hint:?}");
    assert!(
        hint.contains("link: </style.css>; rel=preload\r\n"),
        "interim {hint:?}"
    );
}

#[test]
fn expect_100_continue_client_gets_100_then_final() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.send(
        b"POST /upload HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    let interim = c
        .read_head()
        .expect("a 100 Continue before the body is sent")
        .expect("a 100 Continue, not a close");
    c.send(b"hello");
    let resp = c.read_response().expect("the final response");

    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "want 100 Continue, got {:?}",
        String::from_utf8_lossy(&interim)
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert_eq!(origin.requests()[0].body, b"hello");
}

#[test]
fn body_10mb_request_checksum_matches() {
    let origin = Origin::start(|req: &Req| {
        let sum = checksum(&req.body).to_string();
        response("200 OK", &[], sum.as_bytes())
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let body = pattern(LARGE_BODY_BYTES);

    let resp = c.roundtrip(&request("POST", "/big", "t", &[], &body));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), checksum(&body).to_string());
}

#[test]
fn body_10mb_response_checksum_matches() {
    let body = pattern(LARGE_BODY_BYTES);
    let want = checksum(&body);
    let answer = response(
        "200 OK",
        &[("content-type", "application/octet-stream")],
        &body,
    );
    let origin = Origin::start(move |_| answer.clone());
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/big"));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), LARGE_BODY_BYTES);
    assert_eq!(checksum(&resp.body), want);
}

#[test]
fn body_10mb_chunked_request_checksum_matches() {
    let origin = Origin::start(|req: &Req| {
        let sum = checksum(&req.body).to_string();
        response("200 OK", &[], sum.as_bytes())
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let body = pattern(LARGE_BODY_BYTES);
    let mut bytes = b"POST /big HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(100_000) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");

    let resp = c.roundtrip(&bytes);

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), checksum(&body).to_string());
}

#[test]
fn hop_by_hop_request_headers_not_forwarded() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request(
        "GET",
        "/",
        "t",
        &[
            ("connection", "keep-alive, x-hop-one"),
            ("connection", "X-Hop-Two"),
            ("x-hop-one", "1"),
            ("x-hop-two", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("te", "trailers"),
            ("x-end-to-end", "kept"),
        ],
        b"",
    ));

    assert_eq!(resp.status, 200);
    let req = &origin.requests()[0];
    let head = String::from_utf8_lossy(&req.head).to_ascii_lowercase();
    for hop in [
        "x-hop-one:",
        "x-hop-two:",
        "timeout=5",
        "proxy-connection:",
        "proxy-authorization:",
        "\r\nte:",
    ] {
        assert!(
            !head.contains(hop),
            "{hop:?} forwarded; origin head {head:?}"
        );
    }
    assert_eq!(
        req.header("x-end-to-end"),
        Some("kept"),
        "origin head {head:?}"
    );
}

#[test]
fn hop_by_hop_response_headers_not_forwarded() {
    let origin = Origin::start(|_| {
        response(
            "200 OK",
            &[
                ("connection", "x-resp-hop"),
                ("x-resp-hop", "1"),
                ("keep-alive", "timeout=5, max=100"),
                ("x-end-to-end", "kept"),
            ],
            b"ok",
        )
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    let head = String::from_utf8_lossy(&resp.head).to_ascii_lowercase();
    assert_eq!(resp.status, 200);
    assert!(
        !head.contains("x-resp-hop:"),
        "connection-listed header forwarded: {head:?}"
    );
    assert!(
        !head.contains("max=100"),
        "keep-alive header forwarded: {head:?}"
    );
    assert_eq!(resp.header("x-end-to-end"), Some("kept"));
    assert_eq!(resp.text(), "ok");
}

#[test]
fn via_added_to_response() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    assert!(
        contains(&resp.head, b"\r\nvia: 1.1 phantom-fast\r\n"),
        "no `via: 1.1 phantom-fast` in {:?}",
        String::from_utf8_lossy(&resp.head)
    );
}

#[test]
fn via_added_to_forwarded_request() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.roundtrip(&get("/"));

    let req = &origin.requests()[0];
    assert!(
        req.header("via")
            .is_some_and(|v| v.contains("phantom-fast")),
        "no via naming phantom-fast in the forwarded head {:?}",
        String::from_utf8_lossy(&req.head)
    );
}

#[test]
fn request_without_body_framing_has_empty_body_keepalive_continues() {
    // RFC 9112 §6.3 (7): a request with neither Content-Length nor Transfer-Encoding has no body.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c: Conn = proxy.connect();

    let first = c.roundtrip(b"DELETE /item/7 HTTP/1.1\r\nhost: t\r\n\r\n");
    let second = c.roundtrip(&get("/after"));

    assert_eq!(first.text(), "DELETE /item/7");
    assert_eq!(second.text(), "GET /after");
}

#[test]
fn request_body_sent_in_slow_pieces_arrives_whole() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.send(b"POST /slow-body HTTP/1.1\r\nhost: t\r\ncontent-length: 15\r\n\r\n");
    for piece in [&b"first"[..], b"-then", b"-last"] {
        std::thread::sleep(Duration::from_millis(50));
        c.send(piece);
    }
    let resp = c
        .read_response()
        .expect("a response once the body is complete");

    assert_eq!(resp.text(), "first-then-last");
}

#[test]
fn response_chunk_sizes_uppercase_and_leading_zeros_decoded() {
    let origin = Origin::start(|_| {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          00A\r\n0123456789\r\n0001\r\n!\r\n000\r\n\r\n"
            .to_vec()
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));
    let again = c.roundtrip(&get("/"));

    assert_eq!(resp.text(), "0123456789!");
    assert_eq!(again.text(), "0123456789!");
}

#[test]
fn response_repeated_headers_kept_in_order() {
    let origin = Origin::start(|_| {
        response(
            "200 OK",
            &[
                ("set-cookie", "a=1; Path=/"),
                ("x-between", "yes"),
                ("set-cookie", "b=2, c=3"),
            ],
            b"ok",
        )
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    let cookies: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2, c=3"]);
}

#[test]
fn response_16kib_header_passed_through() {
    let origin = Origin::start(|_| {
        let big = "c".repeat(16 * 1024);
        response("200 OK", &[("x-big", &big)], b"ok")
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    assert_eq!(resp.status, 200, "head {:?}", first_bytes(&resp.head));
    assert_eq!(resp.header("x-big").map(str::len), Some(16 * 1024));
    assert_eq!(resp.text(), "ok");
}

#[test]
fn response_unusual_status_passed_through() {
    let origin = Origin::start(|_| response("299 Whatever Works", &[], b"odd"));
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/"));

    assert_eq!(resp.status_line(), "HTTP/1.1 299 Whatever Works");
    assert_eq!(resp.text(), "odd");
}

#[test]
fn request_header_obs_text_value_passed_through() {
    // RFC 9110 §5.5: field values may carry obs-text (0x80–0xFF); a proxy forwards them as is.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(b"GET / HTTP/1.1\r\nhost: t\r\nx-latin: caf\xe9\r\n\r\n");

    assert_eq!(resp.status, 200);
    let head = &origin.requests()[0].head;
    assert!(
        contains(head, b"caf\xe9\r\n"),
        "origin head {:?}",
        first_bytes(head)
    );
}

fn first_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

/// Writes `bytes` one at a time with a pause every `pause_every` bytes, so every parser state
/// boundary falls between two reads.
fn send_trickle(c: &mut Conn, bytes: &[u8], pause_every: usize) {
    for (i, b) in bytes.iter().enumerate() {
        if c.try_send(std::slice::from_ref(b)).is_err() {
            return;
        }
        if i % pause_every == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn request_head_and_chunked_body_byte_by_byte_parsed() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    send_trickle(&mut c, &post_chunked_hello(), 4);
    let resp = c
        .read_response()
        .expect("a response to the trickled request");

    assert_eq!(resp.text(), "hello world");
    assert_eq!(
        origin.requests()[0].request_line(),
        "POST /chunked HTTP/1.1"
    );
}

#[test]
fn response_head_and_chunked_body_byte_by_byte_parsed() {
    let origin = RawOrigin::start(|mut conn, _| {
        while let Ok(Some(_)) = conn.read_request(false) {
            let mut r = b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(CHUNKED_HELLO);
            send_trickle(&mut conn, &r, 4);
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/"));
    let second = c.roundtrip(&get("/"));

    assert_eq!(first.text(), "hello world");
    assert_eq!(first.header("x-a"), Some("1"));
    assert_eq!(second.text(), "hello world");
}

#[test]
fn response_content_length_body_byte_by_byte_delivered() {
    let origin = RawOrigin::start(|mut conn, _| {
        while let Ok(Some(_)) = conn.read_request(false) {
            send_trickle(&mut conn, &response("200 OK", &[], b"0123456789abcdef"), 3);
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/"));
    let second = c.roundtrip(&get("/"));

    assert_eq!(first.text(), "0123456789abcdef");
    assert_eq!(second.text(), "0123456789abcdef");
}

#[test]
fn http10_client_chunked_response_dechunked_close_delimited() {
    // README: HTTP/1.0 clients get chunked responses de-chunked and close-delimited (RFC 9112
    // §7.1: a 1.0 recipient cannot parse chunked).
    let origin = RawOrigin::start(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let _ = conn.try_send(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            );
            let _ = conn.read_until_close();
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(b"GET /chunked HTTP/1.0\r\nhost: t\r\n\r\n");

    assert_eq!(resp.status, 200, "{}", resp.status_line());
    assert_eq!(
        resp.header("transfer-encoding"),
        None,
        "chunked sent to an HTTP/1.0 client: {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(
        resp.header("content-length"),
        None,
        "a close-delimited body"
    );
    // Close-delimited: the client read until the close, so the raw bytes are the payload.
    assert_eq!(
        resp.raw_body, b"hello world",
        "the body as it came on the wire"
    );
    assert_eq!(c.wait_closed(), Ok(()), "the close ends the body");
}

/// How long the proxy waits for an upstream's verdict on `Expect: 100-continue` before it
/// sends `100 Continue` itself (README: "within 1 s").
const EXPECT_CONTINUE_WAIT: Duration = Duration::from_secs(1);
/// How long the client waits for the proxy's own `100 Continue`: the point is that it comes by
/// itself instead of the client waiting for ever (no tighter bound from above: a loaded machine
/// may be slow, never early).
const EXPECT_CONTINUE_LATEST: Duration = crate::support::WAIT_TIMEOUT;

#[test]
fn expect_100_continue_upstream_silent_proxy_sends_100_after_1s() {
    // The origin never says 100 (read_request without answering it): it waits for the body.
    let origin = RawOrigin::start(|mut conn, _| {
        while let Ok(Some(req)) = conn.read_request(false) {
            if conn.try_send(&echo(&req)).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    c.set_timeout(EXPECT_CONTINUE_LATEST);
    let started = std::time::Instant::now();

    c.send(
        b"POST /upload HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    let interim = c
        .read_head()
        .expect("a 100 Continue from the proxy while the upstream is silent")
        .expect("a 100 Continue, not a close");
    let waited = started.elapsed();
    c.send(b"hello");
    let resp = c.read_response().expect("the final response");

    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "want 100 Continue, got {:?}",
        String::from_utf8_lossy(&interim)
    );
    assert!(
        waited >= EXPECT_CONTINUE_WAIT,
        "100 Continue after only {waited:?}: the proxy did not wait for the upstream"
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
}

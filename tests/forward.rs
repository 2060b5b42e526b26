//! Forward proxy mode (no `--upstream`): absolute-form requests rewritten to origin-form,
//! origin-form rejected, several destinations on one client connection, CONNECT tunnels.
//! It does not cover faults in forward mode (`faults`) or upstream failures (`upstream_errors`).

use crate::support::{
    Origin, Proxy, RawOrigin, assert_proxy_error, closed_port, pattern, request, response,
};

#[test]
fn forward_get_absolute_form_rewritten_to_origin_form_host_kept() {
    let origin = Origin::echo();
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();
    let authority = origin.authority();

    let resp = c.roundtrip(&request(
        "GET",
        &format!("http://{authority}/path/x?q=1"),
        &authority,
        &[],
        b"",
    ));

    assert_eq!(
        resp.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(resp.text(), "GET /path/x?q=1");
    let req = &origin.requests()[0];
    assert_eq!(req.request_line(), "GET /path/x?q=1 HTTP/1.1");
    assert_eq!(req.header("host"), Some(authority.as_str()));
}

#[test]
fn forward_post_absolute_form_body_echoed() {
    let origin = Origin::echo();
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();
    let authority = origin.authority();

    let resp = c.roundtrip(&request(
        "POST",
        &format!("http://{authority}/form"),
        &authority,
        &[],
        b"a=1&b=2",
    ));

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "a=1&b=2");
    assert_eq!(origin.requests()[0].request_line(), "POST /form HTTP/1.1");
}

#[test]
fn forward_two_destinations_on_one_client_connection() {
    let first = Origin::start(|_| response("200 OK", &[], b"first"));
    let second = Origin::start(|_| response("200 OK", &[], b"second"));
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();

    let mut bodies = Vec::new();
    for origin_authority in [first.authority(), second.authority(), first.authority()] {
        let url = format!("http://{origin_authority}/");
        bodies.push(
            c.roundtrip(&request("GET", &url, &origin_authority, &[], b""))
                .text(),
        );
    }

    assert_eq!(bodies, ["first", "second", "first"]);
    assert_eq!(first.requests().len(), 2);
    assert_eq!(second.requests().len(), 1);
}

#[test]
fn forward_origin_form_request_rejected_400_closed() {
    let origin = Origin::echo();
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request("GET", "/relative", &origin.authority(), &[], b""));

    assert_proxy_error(&resp, 400);
    assert_eq!(c.wait_closed(), Ok(()));
    assert_eq!(origin.connections(), 0);
}

fn connect_request(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").into_bytes()
}

/// The exact bytes of the tunnel's established answer (CLI contract).
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

#[test]
fn connect_tunnel_bytes_echo_both_ways() {
    let origin = RawOrigin::tcp_echo();
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();

    c.send(&connect_request(&origin.authority()));
    let established = c
        .read_exact_bytes(ESTABLISHED.len())
        .expect("the CONNECT answer");
    assert_eq!(
        String::from_utf8_lossy(&established),
        String::from_utf8_lossy(ESTABLISHED)
    );
    // Not HTTP any more: a line that would be a malformed request goes through untouched.
    let small_sent: &[u8] = b"ping \x00\xff not http\r\n\r\n";
    c.send(small_sent);
    let small = c.read_exact_bytes(small_sent.len()).expect("small echo");
    let big = pattern(256 * 1024);
    c.send(&big);
    let big_back = c.read_exact_bytes(big.len()).expect("big echo");
    c.shutdown_write();
    let rest = c.read_until_close().expect("tunnel close");

    assert_eq!(small, small_sent);
    assert!(big_back == big, "256 KiB echo differs");
    assert!(rest.is_empty(), "{} bytes after close", rest.len());
}

#[test]
fn connect_tunnel_origin_close_reaches_client() {
    let origin = RawOrigin::start(|mut conn, _| {
        let _ = conn.try_send(b"hello from origin");
    });
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();

    c.send(&connect_request(&origin.authority()));
    let established = c
        .read_exact_bytes(ESTABLISHED.len())
        .expect("the CONNECT answer");
    let rest = c.read_until_close().expect("origin bytes then close");

    assert_eq!(established, ESTABLISHED);
    assert_eq!(rest, b"hello from origin");
}

#[test]
fn connect_closed_port_502() {
    let proxy = Proxy::start(&[]);
    let mut c = proxy.connect();
    let dead = closed_port();

    let resp = c.roundtrip_to("CONNECT", &connect_request(&dead.to_string()));

    assert_proxy_error(&resp, 502);
    // Still serving.
    let origin = Origin::echo();
    let url = format!("http://{}/after", origin.authority());
    let ok = proxy
        .connect()
        .roundtrip(&request("GET", &url, &origin.authority(), &[], b""));
    assert_eq!(ok.text(), "GET /after");
}

#[test]
fn forward_absolute_form_host_replaced_by_url_authority() {
    // RFC 9112 §3.2.2: with an absolute-form target the received Host is ignored and the
    // forwarded Host is the target's authority.
    let origin = Origin::echo();
    let proxy = Proxy::start(&[]);
    let authority = origin.authority();

    let resp = proxy.connect().roundtrip(&request(
        "GET",
        &format!("http://{authority}/h"),
        "liar.example",
        &[],
        b"",
    ));

    assert_eq!(resp.text(), "GET /h");
    assert_eq!(
        origin.requests()[0].header("host"),
        Some(authority.as_str())
    );
}

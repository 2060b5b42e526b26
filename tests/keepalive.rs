//! Connection lifetime through the proxy: pipelining, keep-alive on both sides, the upstream
//! pool, many concurrent clients, closing rules, idle timeout, and SIGTERM shutdown.
//! It does not cover framing details (`framing`) or failures of the upstream (`upstream_errors`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Conn, Origin, Proxy, RawOrigin, Req, assert_proxy_error, echo, get, request, response,
};

#[test]
fn pipelined_three_requests_answered_in_order() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let mut burst = get("/one");
    burst.extend_from_slice(&request("POST", "/two", "t", &[], b"second body"));
    burst.extend_from_slice(&get("/three"));

    c.send(&burst);
    let bodies: Vec<String> = (0..3)
        .map(|i| {
            c.read_response()
                .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"))
                .text()
        })
        .collect();

    assert_eq!(bodies, ["GET /one", "second body", "GET /three"]);
}

#[test]
fn upstream_keepalive_100_sequential_requests_one_origin_connection() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    for i in 0..100 {
        let resp = c.roundtrip(&get(&format!("/seq/{i}")));
        assert_eq!(resp.text(), format!("GET /seq/{i}"));
    }

    assert_eq!(origin.requests().len(), 100);
    assert_eq!(
        origin.connections(),
        1,
        "origin connections for 100 keep-alive requests"
    );
}

#[test]
fn upstream_pool_sequential_clients_reuse_connection() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);

    for i in 0..20 {
        let mut c = proxy.connect();
        let resp = c.roundtrip(&get(&format!("/client/{i}")));
        assert_eq!(resp.text(), format!("GET /client/{i}"));
    }

    // The pooled connection is checked in right after the response is written; allow one
    // extra connect for that race, far below one connection per client.
    assert!(
        origin.connections() <= 2,
        "origin saw {} connections for 20 sequential clients",
        origin.connections()
    );
}

#[test]
fn concurrent_200_clients_20_requests_ids_not_mixed() {
    const CLIENTS: usize = 200;
    const REQUESTS_PER_CLIENT: usize = 20;
    let origin = Origin::start(|req: &Req| {
        let id = req.header("x-id").unwrap_or("none").to_owned();
        response("200 OK", &[("x-echo-id", &id)], req.target.as_bytes())
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let addr = proxy.addr();

    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || -> Result<(), String> {
                let mut c = Conn::connect(addr);
                for n in 0..REQUESTS_PER_CLIENT {
                    let id = format!("{client}-{n}");
                    let target = format!("/id/{id}");
                    c.send(&request("GET", &target, "t", &[("x-id", &id)], b""));
                    let resp = c.read_response().map_err(|e| format!("{id}: {e}"))?;
                    if resp.header("x-echo-id") != Some(id.as_str()) || resp.text() != target {
                        return Err(format!(
                            "{id}: got x-echo-id {:?} body {:?}",
                            resp.header("x-echo-id"),
                            resp.text()
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .filter_map(|w| {
            w.join()
                .unwrap_or_else(|_| Err("client thread panicked".into()))
                .err()
        })
        .collect();

    assert!(
        failures.is_empty(),
        "{} clients failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(origin.requests().len(), CLIENTS * REQUESTS_PER_CLIENT);
}

#[test]
fn client_connection_close_closed_after_response() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&request(
        "GET",
        "/bye",
        "t",
        &[("connection", "close")],
        b"",
    ));

    assert_eq!(resp.text(), "GET /bye");
    assert_eq!(c.wait_closed(), Ok(()));
}

#[test]
fn http10_client_without_keepalive_closed_after_response() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(b"GET /old HTTP/1.0\r\nhost: t\r\n\r\n");

    assert_eq!(resp.text(), "GET /old");
    assert_eq!(c.wait_closed(), Ok(()));
}

#[test]
fn idle_timeout_closes_idle_client_silently() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--idle-timeout", "300ms"]);
    let mut c = proxy.connect();

    c.roundtrip(&get("/"));
    let idle_since = Instant::now();
    let closed = c.wait_closed();
    let idle = idle_since.elapsed();

    assert_eq!(closed, Ok(()));
    assert!(
        idle >= Duration::from_millis(300),
        "closed after only {idle:?} idle"
    );
}

#[test]
fn upstream_connection_close_not_reused_client_kept() {
    let origin = Origin::start(|req: &Req| {
        response("200 OK", &[("connection", "close")], req.target.as_bytes())
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/a"));
    let second = c.roundtrip(&get("/b"));

    assert_eq!(first.text(), "/a");
    assert_eq!(second.text(), "/b");
    assert_eq!(origin.connections(), 2);
}

/// An origin whose first connection answers one request, stays open (so the pool's idle check
/// passes), then closes on receipt of the next request without answering it: that request finds
/// the pooled connection stale only after it was sent. Later connections serve normally.
fn origin_stale_after_first_answer() -> RawOrigin {
    RawOrigin::start(|mut conn, index| {
        if index > 0 {
            while let Ok(Some(req)) = conn.read_request(false) {
                let body = format!("{} {} fresh", req.method, req.target);
                if conn
                    .try_send(&response("200 OK", &[], body.as_bytes()))
                    .is_err()
                {
                    return;
                }
            }
            return;
        }
        if let Ok(Some(req)) = conn.read_request(false) {
            let _ = conn.try_send(&response("200 OK", &[], req.target.as_bytes()));
        }
        // The next request arrives whole, then the connection dies unanswered.
        let _ = conn.read_request(false);
    })
}

#[test]
fn upstream_stale_pooled_connection_get_retried_once_on_fresh_connection() {
    let origin = origin_stale_after_first_answer();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/a"));
    let second = c.roundtrip(&get("/b"));

    assert_eq!(first.text(), "/a");
    assert_eq!(
        second.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&second.head)
    );
    assert_eq!(
        second.text(),
        "GET /b fresh",
        "retried on a fresh connection"
    );
    assert_eq!(
        origin.connections(),
        2,
        "the pooled connection, then one retry"
    );
}

#[test]
fn upstream_stale_pooled_connection_post_not_retried_502() {
    let origin = origin_stale_after_first_answer();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/a"));
    let second = c.roundtrip(&request("POST", "/b", "t", &[], b"not idempotent"));

    assert_eq!(first.text(), "/a");
    assert_proxy_error(&second, 502);
    assert_eq!(
        origin.connections(),
        1,
        "a POST sent on a stale connection must not be sent again"
    );
}

#[test]
fn shutdown_sigterm_exits_zero() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    proxy.connect().roundtrip(&get("/"));

    let (status, stderr) = proxy.stop();

    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

#[test]
fn shutdown_sigterm_in_flight_request_completes() {
    let arrived = Arc::new(AtomicBool::new(false));
    let origin = {
        let arrived = Arc::clone(&arrived);
        Origin::start(move |req: &Req| {
            arrived.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(700));
            echo(req)
        })
    };
    let proxy = Proxy::reverse(origin.addr(), &["--grace", "5s"]);
    let mut c = proxy.connect();
    c.send(&get("/slow"));
    let started = Instant::now();
    while !arrived.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "request never reached the origin"
        );
        thread::sleep(Duration::from_millis(10));
    }

    let stopper = thread::spawn(move || proxy.stop());
    let resp = c.read_response();
    let (status, stderr) = stopper.join().expect("stop thread");

    let resp = resp
        .unwrap_or_else(|e| panic!("in-flight response lost on SIGTERM: {e}; stderr:\n{stderr}"));
    assert_eq!(resp.text(), "GET /slow");
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

#[test]
fn http10_client_with_keepalive_kept_open() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(b"GET /a HTTP/1.0\r\nhost: t\r\nconnection: keep-alive\r\n\r\n");
    let second = c.roundtrip(b"GET /b HTTP/1.0\r\nhost: t\r\nconnection: keep-alive\r\n\r\n");

    assert_eq!(first.text(), "GET /a");
    assert_eq!(second.text(), "GET /b");
}

#[test]
fn client_half_close_after_request_still_answered() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    c.send(&get("/half"));
    c.shutdown_write();
    let resp = c
        .read_response()
        .expect("a response after the client's FIN");

    assert_eq!(resp.text(), "GET /half");
    assert_eq!(c.wait_closed(), Ok(()));
}

#[test]
fn pipelined_200_requests_one_write_answered_in_order() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let mut burst = Vec::new();
    for i in 0..200 {
        if i % 3 == 0 {
            burst.extend_from_slice(&request(
                "POST",
                "/p",
                "t",
                &[],
                format!("body {i}").as_bytes(),
            ));
        } else {
            burst.extend_from_slice(&get(&format!("/p/{i}")));
        }
    }

    c.send(&burst);
    let bodies: Vec<String> = (0..200)
        .map(|i| {
            c.read_response()
                .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"))
                .text()
        })
        .collect();

    for (i, body) in bodies.iter().enumerate() {
        let want = if i % 3 == 0 {
            format!("body {i}")
        } else {
            format!("GET /p/{i}")
        };
        assert_eq!(body, &want, "response {i} out of order");
    }
}

/// An origin that answers the first request on each connection with `answer`, then keeps the
/// socket open and silent: a proxy that wrongly reuses the connection waits for nothing.
fn origin_answer_once_then_linger(answer: &'static [u8]) -> RawOrigin {
    RawOrigin::start(move |mut conn, _| {
        if let Ok(Some(_)) = conn.read_request(false) {
            let _ = conn.try_send(answer);
            thread::sleep(Duration::from_secs(3));
        }
    })
}

#[test]
fn upstream_http10_response_connection_not_reused() {
    // RFC 9112 §9.3: an HTTP/1.0 response without keep-alive ends the connection's reuse.
    let origin = origin_answer_once_then_linger(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok");
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "1s"]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/a"));
    let second = c.roundtrip(&request("POST", "/b", "t", &[], b"x"));

    assert_eq!(first.text(), "ok");
    assert_eq!(
        second.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&second.head)
    );
    assert_eq!(origin.connections(), 2);
}

#[test]
fn upstream_connection_close_response_not_reused_even_if_socket_lingers() {
    let origin = origin_answer_once_then_linger(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    );
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "1s"]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/a"));
    let second = c.roundtrip(&request("POST", "/b", "t", &[], b"x"));

    assert_eq!(first.text(), "ok");
    assert_eq!(
        second.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&second.head)
    );
    assert_eq!(origin.connections(), 2);
}

#[test]
fn upstream_connection_abandoned_mid_body_not_reused() {
    let big = crate::support::pattern(4 * 1024 * 1024);
    let big_answer = response("200 OK", &[], &big);
    let origin = Origin::start(move |req: &Req| {
        if req.target == "/big" {
            big_answer.clone()
        } else {
            echo(req)
        }
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);

    {
        let mut c = proxy.connect();
        c.send(&get("/big"));
        let _ = c.read_exact_bytes(64 * 1024);
        // Dropped here with most of the 4 MiB body unread.
    }
    thread::sleep(Duration::from_millis(200));
    let after = proxy.connect().roundtrip(&get("/small"));

    assert_eq!(
        after.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&after.head)
    );
    assert_eq!(after.text(), "GET /small");
}

#[test]
fn upstream_connections_capped_requests_queue_all_answered() {
    // 12 clients at once against an origin that takes 100 ms per request, with at most 2
    // upstream connections: the rest queue for a free one instead of opening their own.
    let origin = Origin::start(|req: &Req| {
        thread::sleep(Duration::from_millis(100));
        response("200 OK", &[], req.target.as_bytes())
    });
    let proxy = Proxy::reverse(origin.addr(), &["--max-upstream-connections", "2"]);
    let addr = proxy.addr();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Conn::connect(addr);
                c.roundtrip(&get(&format!("/queued/{i}"))).text()
            })
        })
        .collect();
    let mut bodies: Vec<String> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    bodies.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("/queued/{i}")).collect();
    want.sort();

    assert_eq!(bodies, want);
    assert!(
        origin.connections() <= 2,
        "origin saw {} connections",
        origin.connections()
    );
}

//! Hostile clients, hostile upstreams and resource limits (issue 6): each hostile peer is held
//! off while a normal client is still served by the same proxy, within a bounded memory.
//! It does not cover single malformed requests (`rejects`) or plain upstream failures
//! (`upstream_errors`); fuzzing and soak runs live in `scripts/`.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Conn, Origin, Proxy, RawOrigin, Req, WAIT_TIMEOUT, assert_proxy_error, contains, echo, get,
    join_within, request, reset, response, wait_until,
};

/// The proxy's resident memory must stay under this whatever hostile peers do (generous: a
/// debug build idles at a few MiB; the point is "bounded", not "small").
const MAX_RSS_KIB: u64 = 200 * 1024;

/// How much a stalled 50 MB download may grow the proxy's anonymous RSS (heap, not code pages
/// or the ring; transparent huge pages off, or one 2 MiB page is the whole reading): it holds one
/// 16 KiB buffer per direction (measured: 16–28 KiB of growth on a debug build), so a few
/// hundred KiB leaves room for allocator noise while a relay that buffers what the client does
/// not read (even one 1 MiB read) fails it.
const MAX_STALL_RSS_GROWTH_KIB: u64 = 256;

/// How long a hostile-peer test waits for something the proxy must do by itself (close a
/// stalled connection, drop an upstream) before calling it stuck. Not a performance bound.
const PROXY_ACTION_DEADLINE: Duration = WAIT_TIMEOUT;

/// How long a response that must NOT come yet is waited for.
const NO_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Sends one request on a fresh connection and asserts the echo answer and bounded RSS: the
/// "a normal client is still served" check every hostile test makes.
fn assert_serving(proxy: &Proxy, tag: &str) {
    let target = format!("/normal-{tag}");
    let mut c = proxy.connect();
    c.send(&get(&target));
    let resp = c.read_response().unwrap_or_else(|e| {
        panic!(
            "normal client ({tag}) not served: {e}; proxy stderr:\n{}",
            proxy.stderr()
        )
    });
    assert_eq!(
        resp.status,
        200,
        "normal client ({tag}): {}",
        resp.status_line()
    );
    assert_eq!(
        resp.text(),
        format!("GET {target}"),
        "normal client ({tag})"
    );
    let rss = proxy.rss_kib();
    assert!(
        rss < MAX_RSS_KIB,
        "proxy RSS {rss} KiB over {MAX_RSS_KIB} KiB ({tag})"
    );
}

/// Whether an I/O error is a read deadline passing (the peer neither answered nor closed).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------------------------
// Hostile clients
// ---------------------------------------------------------------------------------------------

/// Slowloris connections opened at once.
const SLOWLORIS_CLIENTS: usize = 10;
/// A slowloris client's pace: one byte per this.
const SLOWLORIS_BYTE_INTERVAL: Duration = Duration::from_millis(100);

#[test]
fn slowloris_one_byte_per_100ms_408_closed_others_served() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--header-timeout", "1s"]);
    // 200+ bytes at 10 bytes/s: the head could not complete for 20 s; the deadline is 1 s.
    let head = request("GET", "/slow", "t", &[("x-pad", &"a".repeat(200))], b"");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..SLOWLORIS_CLIENTS {
        let c = proxy.connect();
        let mut w = c.writer();
        let head = head.clone();
        let stop = Arc::clone(&stop);
        let trickler = thread::spawn(move || {
            for byte in head.chunks(1) {
                if stop.load(Ordering::SeqCst) || w.write_all(byte).is_err() {
                    return;
                }
                thread::sleep(SLOWLORIS_BYTE_INTERVAL);
            }
        });
        clients.push((c, trickler));
    }

    thread::sleep(Duration::from_millis(300));
    assert_serving(&proxy, "during-slowloris");

    for (i, (c, _)) in clients.iter_mut().enumerate() {
        let resp = c
            .read_response()
            .unwrap_or_else(|e| panic!("slowloris client {i}: no 408: {e}"));
        assert_proxy_error(&resp, 408);
        assert_eq!(
            c.wait_closed(),
            Ok(()),
            "slowloris client {i} after its 408"
        );
    }
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for (_, trickler) in clients {
        let _ = trickler.join();
    }
    assert!(
        waited >= Duration::from_secs(1),
        "408s after only {waited:?}"
    );
    assert!(
        !origin.requests().iter().any(|r| r.target == "/slow"),
        "a slowloris head was forwarded"
    );
    assert_serving(&proxy, "after-slowloris");
}

/// Silent connections opened at once.
const SILENT_CLIENTS: usize = 50;

#[test]
fn silent_clients_50_closed_after_header_timeout_others_served() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--header-timeout", "500ms"]);
    let started = Instant::now();
    let mut silent: Vec<Conn> = (0..SILENT_CLIENTS).map(|_| proxy.connect()).collect();

    assert_serving(&proxy, "among-silent");

    for (i, c) in silent.iter_mut().enumerate() {
        // The first-byte deadline closes silently (no 408 for a client that said nothing).
        assert_eq!(c.wait_closed(), Ok(()), "silent client {i}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "silent clients closed after only {waited:?}"
    );
    assert_serving(&proxy, "after-silent");
}

/// The download a stalled client never reads.
const STALL_BODY_BYTES: usize = 50 * 1024 * 1024;
/// The origin writes the big body in pieces of this size, counting what the kernel took.
const STALL_WRITE_BYTES: usize = 64 * 1024;

/// What the big-body origin saw: bytes written, and whether a write failed (the proxy gave up).
#[derive(Default)]
struct StallOrigin {
    written: AtomicUsize,
    write_failed: AtomicBool,
}

#[test]
fn client_stops_reading_50mb_backpressure_rss_bounded_closed_after_idle_timeout() {
    // Contract: body writes to the client are bounded by --idle-timeout per write, so a client
    // that stops reading costs one 16 KiB buffer per direction for about a second, then both
    // connections close.
    let seen = Arc::new(StallOrigin::default());
    let origin = {
        let seen = Arc::clone(&seen);
        RawOrigin::start(move |mut conn, _| {
            while let Ok(Some(req)) = conn.read_request(false) {
                if req.target != "/big" {
                    if conn.try_send(&echo(&req)).is_err() {
                        return;
                    }
                    continue;
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {STALL_BODY_BYTES}\r\n\r\n");
                if conn.try_send(head.as_bytes()).is_err() {
                    seen.write_failed.store(true, Ordering::SeqCst);
                    return;
                }
                let piece = vec![b'x'; STALL_WRITE_BYTES];
                let mut left = STALL_BODY_BYTES;
                while left > 0 {
                    let n = left.min(STALL_WRITE_BYTES);
                    if conn.try_send(&piece[..n]).is_err() {
                        seen.write_failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    seen.written.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            }
        })
    };
    let proxy = Proxy::reverse_without_thp(origin.addr(), &["--idle-timeout", "1s"]);
    assert_serving(&proxy, "warm-up");
    let baseline_kib = proxy.rss_anon_kib();

    let mut stalled = proxy.connect();
    stalled.send(&get("/big"));
    // Let the pipe fill: once every buffer on the path is full the origin's writes block.
    let mut last = 0;
    let filled = wait_until(Duration::from_secs(5), || {
        thread::sleep(Duration::from_millis(100));
        let now = seen.written.load(Ordering::SeqCst);
        let still = now == last && now > 0;
        last = now;
        still
    });
    let in_flight = seen.written.load(Ordering::SeqCst);
    let stalled_kib = proxy.rss_anon_kib();
    eprintln!(
        "stalled download: {in_flight} bytes in flight, anon RSS {baseline_kib} → {stalled_kib} KiB"
    );
    assert_serving(&proxy, "beside-stalled-download");

    assert!(filled, "origin never stalled: wrote {in_flight} bytes");
    assert!(
        in_flight < STALL_BODY_BYTES,
        "origin wrote the whole {STALL_BODY_BYTES}-byte body to a client that reads nothing"
    );
    assert!(
        stalled_kib.saturating_sub(baseline_kib) < MAX_STALL_RSS_GROWTH_KIB,
        "proxy anon RSS grew {baseline_kib} → {stalled_kib} KiB with {in_flight} bytes in flight"
    );
    assert!(
        wait_until(PROXY_ACTION_DEADLINE, || seen
            .write_failed
            .load(Ordering::SeqCst)),
        "upstream of the stalled download still open {PROXY_ACTION_DEADLINE:?} after the stall \
         (--idle-timeout 1s); origin wrote {} bytes",
        seen.written.load(Ordering::SeqCst)
    );
    let got = stalled
        .read_until_close()
        .unwrap_or_else(|e| panic!("stalled client connection not closed by the proxy: {e}"));
    assert!(
        got.len() < STALL_BODY_BYTES,
        "a stalled client got {} bytes: the whole body, not a cut-off connection",
        got.len()
    );
    assert_serving(&proxy, "after-stalled-download");
}

/// What a client that resets mid-upload declares, and how much of it it sends first.
const RESET_DECLARED_BYTES: usize = 1024 * 1024;
const RESET_SENT_BYTES: usize = 100 * 1024;
/// Uploads reset one after another.
const RESET_CLIENTS: usize = 3;

/// What the upload origin saw: uploads begun, uploads whose connection the proxy closed before
/// the body was whole, and uploads that completed (none may: every client resets).
#[derive(Default)]
struct Uploads {
    started: AtomicUsize,
    closed_unfinished: AtomicUsize,
    completed: AtomicUsize,
}

#[test]
fn client_resets_mid_upload_origin_connection_closed_not_reused_others_served() {
    // The origin serves GETs (echo) and, for the upload, reads its declared body: the proxy must
    // close that connection (EOF or reset) when its client resets. Reusing it instead would feed
    // later requests in as body bytes; leaking it would leave the origin waiting for ever.
    let uploads = Arc::new(Uploads::default());
    let origin = {
        let uploads = Arc::clone(&uploads);
        RawOrigin::start(move |mut conn, _| {
            conn.set_timeout(Duration::from_secs(60));
            loop {
                let Ok(Some(head)) = conn.read_head() else {
                    return;
                };
                if contains(&head, b"POST /upload ") {
                    uploads.started.fetch_add(1, Ordering::SeqCst);
                    match conn.read_exact_bytes(RESET_DECLARED_BYTES) {
                        Ok(_) => uploads.completed.fetch_add(1, Ordering::SeqCst),
                        Err(e) if is_timeout(&e) => return,
                        Err(_) => uploads.closed_unfinished.fetch_add(1, Ordering::SeqCst),
                    };
                    return;
                }
                let target = String::from_utf8_lossy(&head)
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let body = format!("GET {target}");
                if conn
                    .try_send(&response("200 OK", &[], body.as_bytes()))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: {RESET_DECLARED_BYTES}\r\n\r\n"
    );
    let part = vec![b'u'; RESET_SENT_BYTES];

    for i in 0..RESET_CLIENTS {
        let mut c = proxy.connect();
        c.send(head.as_bytes());
        c.send(&part);
        // Let the proxy open the upstream exchange and stream part of the body into it.
        assert!(
            wait_until(PROXY_ACTION_DEADLINE, || uploads
                .started
                .load(Ordering::SeqCst)
                > i),
            "upload {i} never reached the origin"
        );
        assert_serving(&proxy, &format!("during-upload-{i}"));
        c.reset();
        assert!(
            wait_until(PROXY_ACTION_DEADLINE, || uploads
                .closed_unfinished
                .load(Ordering::SeqCst)
                > i),
            "the origin connection of upload {i} still open {PROXY_ACTION_DEADLINE:?} after its \
             client reset"
        );
        // A fresh client right after the reset is served on a sound connection.
        let after = format!("/after-{i}");
        let resp = proxy.connect().roundtrip(&get(&after));
        assert_eq!(
            resp.text(),
            format!("GET {after}"),
            "request after reset {i}"
        );
    }

    assert_eq!(
        uploads.completed.load(Ordering::SeqCst),
        0,
        "the origin got a whole upload body although every client reset"
    );
    assert_eq!(uploads.started.load(Ordering::SeqCst), RESET_CLIENTS);
    assert_serving(&proxy, "after-resets");
}

/// Connection attempts in the burst, and the threads making them.
const BURST_CONNECTIONS: usize = 50_000;
const BURST_THREADS: usize = 4;
/// A connect that takes this long counts as failed. The burst clients close at once, so while
/// the proxy gets no CPU (a loaded 2-core machine) its accept queue fills with closed connections
/// and the kernel drops SYNs; Linux resends a SYN after 1, 3 and 7 s. 10 s rides out a few
/// seconds of starvation, while a proxy that stops accepting (or accepts slowly) still fails
/// every connect past its 4096-deep backlog, far over the 1% allowed.
const BURST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connects that may fail (1%).
const BURST_MAX_FAILED: usize = BURST_CONNECTIONS / 100;
/// A connect slower than this needed a SYN resend: counted and printed, not failed.
const BURST_CONNECT_SLOW: Duration = Duration::from_secs(1);
/// The proxy may keep this many more descriptors after the burst than before it (pooled
/// upstream connections, lazily opened files).
const FD_SLACK: usize = 8;

#[test]
fn connect_burst_50000_then_normal_request_served_fds_return() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    assert_serving(&proxy, "before-burst");
    let fds_before = proxy.open_fds();
    let addr = proxy.addr();
    let started = Instant::now();
    let failed = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));

    let threads: Vec<_> = (0..BURST_THREADS)
        .map(|t| {
            let failed = Arc::clone(&failed);
            let slow = Arc::clone(&slow);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                for i in 0..BURST_CONNECTIONS / BURST_THREADS {
                    // Past the failures allowed the test fails anyway: stop instead of waiting
                    // out a connect timeout for each of the rest.
                    if failed.load(Ordering::SeqCst) >= BURST_MAX_FAILED {
                        break;
                    }
                    let connecting = Instant::now();
                    let connected = TcpStream::connect_timeout(&addr, BURST_CONNECT_TIMEOUT);
                    if connecting.elapsed() > BURST_CONNECT_SLOW {
                        slow.fetch_add(1, Ordering::SeqCst);
                    }
                    match connected {
                        // Half close with a FIN, half with a reset: both must be shrugged off.
                        Ok(s) if (i + t) % 2 == 0 => reset(s),
                        Ok(s) => drop(s),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let mut served_meanwhile = 0;
    while done.load(Ordering::SeqCst) < BURST_THREADS {
        assert_serving(&proxy, &format!("during-burst-{served_meanwhile}"));
        served_meanwhile += 1;
        thread::sleep(Duration::from_millis(200));
    }
    for t in threads {
        join_within(t, WAIT_TIMEOUT, "a burst thread").expect("a burst thread panicked");
    }
    let burst = started.elapsed();
    let failed = failed.load(Ordering::SeqCst);
    let slow = slow.load(Ordering::SeqCst);
    eprintln!(
        "burst: {BURST_CONNECTIONS} connects in {burst:?}, {failed} failed, {slow} over \
         {BURST_CONNECT_SLOW:?}, {served_meanwhile} normal requests served meanwhile"
    );

    assert!(
        failed < BURST_MAX_FAILED,
        "{failed} of {BURST_CONNECTIONS} connects failed (the burst stops at {BURST_MAX_FAILED})"
    );
    assert_serving(&proxy, "after-burst");
    let mut fds_after = proxy.open_fds();
    let settled = wait_until(PROXY_ACTION_DEADLINE, || {
        fds_after = proxy.open_fds();
        fds_after <= fds_before + FD_SLACK
    });
    assert!(
        settled,
        "proxy holds {fds_after} fds after the burst, {fds_before} before"
    );
}

/// Tiny header fields in one request: far over the default `--max-headers 100`, under the
/// default 64 KiB `--max-header-bytes` (so the count limit is the one that trips).
const TINY_HEADERS: usize = 10_000;

#[test]
fn tiny_headers_10000_431_closed_others_served() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut head = b"GET /many HTTP/1.1\r\nhost: t\r\n".to_vec();
    for _ in 0..TINY_HEADERS {
        head.extend_from_slice(b"a: b\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut c = proxy.connect();

    c.send_lossy(&head);
    assert_serving(&proxy, "beside-many-headers");
    let resp = c
        .read_response()
        .unwrap_or_else(|e| panic!("no 431 for {TINY_HEADERS} headers: {e}"));

    assert_proxy_error(&resp, 431);
    assert_eq!(c.wait_closed(), Ok(()), "connection after the 431");
    assert!(
        !origin.requests().iter().any(|r| r.target == "/many"),
        "a 10 000-header head was forwarded"
    );
    assert_serving(&proxy, "after-many-headers");
}

/// Requests pipelined in one write.
const PIPELINED_REQUESTS: usize = 1_000;

#[test]
fn pipeline_1000_requests_one_write_1000_responses_in_order() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut all = Vec::new();
    for i in 0..PIPELINED_REQUESTS {
        all.extend_from_slice(&get(&format!("/p{i}")));
    }
    let mut c = proxy.connect();

    // One write: the requests and whatever the proxy answers fit the loopback socket buffers,
    // and a writer thread keeps us honest should they not.
    let mut w = c.writer();
    let writer = thread::spawn(move || w.write_all(&all));
    thread::sleep(Duration::from_millis(50));
    assert_serving(&proxy, "beside-pipeline");
    for i in 0..PIPELINED_REQUESTS {
        let resp = c
            .read_response()
            .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"));
        assert_eq!(resp.status, 200, "pipelined response {i}");
        assert_eq!(
            resp.text(),
            format!("GET /p{i}"),
            "pipelined response {i} out of order"
        );
    }
    writer
        .join()
        .expect("the writer panicked")
        .expect("writing the pipeline");

    assert_eq!(origin.requests().len(), PIPELINED_REQUESTS + 1);
    assert_serving(&proxy, "after-pipeline");
}

// ---------------------------------------------------------------------------------------------
// Hostile upstreams
// ---------------------------------------------------------------------------------------------

/// A raw origin that answers `/bad…` with `misbehave` (which says whether to go on serving the
/// connection) and every other request with the echo answer.
fn origin_misbehaving(
    misbehave: impl Fn(&mut Conn, &Req) -> bool + Send + Sync + 'static,
) -> RawOrigin {
    RawOrigin::start(move |mut conn, _| {
        while let Ok(Some(req)) = conn.read_request(false) {
            let go_on = if req.target.starts_with("/bad") {
                misbehave(&mut conn, &req)
            } else {
                conn.try_send(&echo(&req)).is_ok()
            };
            if !go_on {
                return;
            }
        }
    })
}

/// A complete response hidden after a 5-byte body: if a proxy ever reads it as an answer, the
/// upstream's extra bytes reached a client (response smuggling).
const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";

/// The origin answers `/bad` with a 5-byte body, then [`SMUGGLED`] after `delay` (zero: in the
/// same write); the extra bytes must reach no client, on this or a fresh connection.
fn assert_extra_upstream_bytes_never_relayed(delay: Duration) {
    let origin = origin_misbehaving(move |conn, _| {
        let mut first = response("200 OK", &[], b"hello");
        if delay.is_zero() {
            first.extend_from_slice(SMUGGLED);
            return conn.try_send(&first).is_ok();
        }
        if conn.try_send(&first).is_err() {
            return false;
        }
        thread::sleep(delay);
        conn.try_send(SMUGGLED).is_ok()
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();

    let first = c.roundtrip(&get("/bad"));
    // Past the delay: the extra bytes sit on the (idle, maybe pooled) upstream connection.
    thread::sleep(delay * 3);
    let same_conn = c.roundtrip(&get("/same"));
    let fresh = proxy.connect().roundtrip(&get("/fresh"));

    assert_eq!(first.text(), "hello", "the declared body");
    assert_eq!(same_conn.text(), "GET /same", "next request, same client");
    assert_eq!(fresh.text(), "GET /fresh", "next request, fresh client");
    assert_serving(&proxy, &format!("after-extra-bytes-{delay:?}"));
}

#[test]
fn upstream_extra_bytes_in_same_write_never_relayed() {
    assert_extra_upstream_bytes_never_relayed(Duration::ZERO);
}

#[test]
fn upstream_extra_bytes_on_idle_pooled_connection_never_relayed() {
    // Bytes an upstream sends while its connection idles in the pool answer no request
    // (RFC 9112 §9.3: responses match requests in order); a proxy that reads them as the next
    // answer is open to response-queue poisoning.
    assert_extra_upstream_bytes_never_relayed(Duration::from_millis(100));
}

/// Whether the never-finishing origin saw the proxy close its connection.
#[derive(Default)]
struct Hang {
    closed_by_proxy: AtomicBool,
}

#[test]
fn upstream_chunked_never_finishes_client_closed_after_upstream_timeout_no_last_chunk() {
    let hang = Arc::new(Hang::default());
    let origin = {
        let hang = Arc::clone(&hang);
        origin_misbehaving(move |conn, _| {
            let _ = conn
                .try_send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
            // Never the last chunk; wait for the proxy to give up on us.
            conn.set_timeout(Duration::from_secs(30));
            if conn.read_until_close().is_ok() {
                hang.closed_by_proxy.store(true, Ordering::SeqCst);
            }
            false
        })
    };
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "500ms"]);
    let mut c = proxy.connect();
    let started = Instant::now();

    c.send(&get("/bad"));
    let head = c
        .read_head()
        .expect("reading the relayed head")
        .expect("a head before the close");
    let raw = c
        .read_until_close()
        .unwrap_or_else(|e| panic!("client left hanging on an unfinished chunked body: {e}"));
    let waited = started.elapsed();

    assert!(
        contains(&head, b"200 OK"),
        "head {:?}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        contains(&raw, b"hello"),
        "partial body lost: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        !contains(&raw, b"0\r\n\r\n"),
        "the proxy invented a last chunk: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        waited >= Duration::from_millis(500),
        "closed after only {waited:?}"
    );
    assert!(
        wait_until(PROXY_ACTION_DEADLINE, || hang
            .closed_by_proxy
            .load(Ordering::SeqCst)),
        "the hung upstream connection was never closed"
    );
    assert_serving(&proxy, "after-unfinished-chunked");
}

/// The trickled body: one byte per `TRICKLE_INTERVAL`, 1 s in all, twice `--upstream-timeout`.
const TRICKLE_BODY: &[u8] = b"0123456789abcdefghij";
const TRICKLE_INTERVAL: Duration = Duration::from_millis(50);

#[test]
fn upstream_trickles_body_1_byte_per_50ms_delivered_whole_keep_alive() {
    let origin = origin_misbehaving(|conn, _| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            TRICKLE_BODY.len()
        );
        if conn.try_send(head.as_bytes()).is_err() {
            return false;
        }
        for byte in TRICKLE_BODY.chunks(1) {
            thread::sleep(TRICKLE_INTERVAL);
            if conn.try_send(byte).is_err() {
                return false;
            }
        }
        true
    });
    let proxy = Proxy::reverse(origin.addr(), &["--upstream-timeout", "500ms"]);
    let mut c = proxy.connect();

    let resp = c.roundtrip(&get("/bad-trickle"));
    let next = c.roundtrip(&get("/next"));

    assert_eq!(
        resp.status,
        200,
        "head {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(resp.body, TRICKLE_BODY);
    assert_eq!(
        next.text(),
        "GET /next",
        "keep-alive after the trickled body"
    );
    assert_serving(&proxy, "after-trickle");
}

#[test]
fn upstream_closes_mid_body_client_connection_closed_never_complete() {
    let rows: &[(&str, &[u8])] = &[
        (
            "content_length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nten bytes.",
        ),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nten bytes.\r\n",
        ),
    ];
    for &(name, bytes) in rows {
        let origin = origin_misbehaving(move |conn, _| {
            let _ = conn.try_send(bytes);
            false
        });
        let proxy = Proxy::reverse(origin.addr(), &[]);
        let mut c = proxy.connect();

        c.send(&get("/bad"));
        let result = c.read_response();

        let err = result
            .map(|r| r.text())
            .expect_err(&format!("{name}: a complete response from a cut-off body"));
        assert!(
            !is_timeout(&err),
            "{name}: client left hanging instead of closed: {err}"
        );
        assert_serving(&proxy, &format!("after-cut-{name}"));
    }
}

/// The upload an origin refuses after its head.
const EARLY_UPLOAD_BYTES: usize = 5 * 1024 * 1024;

#[test]
fn upstream_answers_413_before_upload_sent_client_sees_413_then_close() {
    let origin = RawOrigin::start(|mut conn, _| {
        let Ok(Some(head)) = conn.read_head() else {
            return;
        };
        if contains(&head, b"POST /upload ") {
            // Answer at once and hang up with the body unread (as many servers do).
            let _ = conn.try_send(b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big\n");
            return;
        }
        let target = String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let _ = conn.try_send(&response("200 OK", &[], format!("GET {target}").as_bytes()));
    });
    let proxy = Proxy::reverse(origin.addr(), &[]);
    let mut c = proxy.connect();
    let upload = request("POST", "/upload", "t", &[], &vec![b'u'; EARLY_UPLOAD_BYTES]);
    let mut w = c.writer();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&upload);
    });

    // The early answer must reach the client: a reset or a bare close instead is the bug.
    let resp = c.read_response_to("POST").unwrap_or_else(|e| {
        panic!(
            "early 413 not relayed (client saw {e}); proxy stderr:\n{}",
            proxy.stderr()
        )
    });
    assert_eq!(
        resp.status,
        413,
        "early answer not relayed: {:?}",
        String::from_utf8_lossy(&resp.head)
    );
    assert_eq!(resp.text(), "too big\n", "the early answer's body");
    assert_eq!(
        c.wait_closed(),
        Ok(()),
        "client connection after the early 413"
    );
    writer.join().expect("the upload writer panicked");
    assert_serving(&proxy, "after-early-413");
}

// ---------------------------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------------------------

#[test]
fn max_connections_2_third_waits_in_backlog_until_one_closes() {
    // At the limit the proxy PAUSES accepting: a third client's connect succeeds (the kernel
    // backlog takes it) but nobody reads its request until one of the first two closes.
    let origin = Origin::echo();
    let proxy = Proxy::reverse(origin.addr(), &["--max-connections", "2"]);
    let mut first = proxy.connect();
    let mut second = proxy.connect();
    assert_eq!(first.roundtrip(&get("/1")).text(), "GET /1");
    assert_eq!(second.roundtrip(&get("/2")).text(), "GET /2");

    let mut third = proxy.connect();
    third.send(&get("/3"));
    third.set_timeout(NO_ANSWER_WAIT);
    let early = third.read_response();
    assert!(
        early.as_ref().is_err_and(is_timeout),
        "third connection answered while two were open: {:?}",
        early.map(|r| r.text())
    );

    drop(first);
    third.set_timeout(crate::support::IO_TIMEOUT);
    let late = third
        .read_response()
        .unwrap_or_else(|e| panic!("third connection not served after a slot freed: {e}"));
    assert_eq!(late.text(), "GET /3");
    assert_eq!(second.roundtrip(&get("/2b")).text(), "GET /2b");
    // Two of two slots are still taken (second, third): free one for the normal client.
    drop(third);
    assert_serving(&proxy, "after-max-connections");
}

/// The proxy's open-file limit in the exhaustion test, and the clients that overrun it.
const FD_LIMIT: u32 = 64;
const FD_HOGS: usize = 80;
/// Over this window at EMFILE, the proxy may burn at most `MAX_EMFILE_CPU` (backing off, it
/// burns next to nothing; a spinning accept loop burns the whole window).
const EMFILE_WINDOW: Duration = Duration::from_secs(2);
const MAX_EMFILE_CPU: Duration = Duration::from_millis(500);

#[test]
fn fd_exhaustion_ulimit_64_accept_backs_off_no_spin_then_serves() {
    let origin = Origin::echo();
    let proxy = Proxy::reverse_with_fd_limit(origin.addr(), FD_LIMIT, &[]);
    assert_serving(&proxy, "before-exhaustion");

    let hogs: Vec<TcpStream> = (0..FD_HOGS)
        .map(|i| {
            TcpStream::connect(proxy.addr()).unwrap_or_else(|e| panic!("hog {i}: connect: {e}"))
        })
        .collect();
    let hit_limit = proxy.wait_for_stderr("accept failed", PROXY_ACTION_DEADLINE);
    let cpu_before = proxy.cpu_time();
    thread::sleep(EMFILE_WINDOW);
    let burned = proxy.cpu_time().saturating_sub(cpu_before);
    let fds = proxy.open_fds();
    eprintln!("at EMFILE: {fds} fds open, {burned:?} CPU burned in {EMFILE_WINDOW:?}");

    assert!(
        hit_limit,
        "no accept failure with {FD_HOGS} connections under `ulimit -n {FD_LIMIT}` ({fds} fds \
         open); stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        burned < MAX_EMFILE_CPU,
        "proxy burned {burned:?} CPU in {EMFILE_WINDOW:?} at EMFILE: the accept loop spins"
    );
    drop(hogs);
    assert_serving(&proxy, "after-exhaustion");
}

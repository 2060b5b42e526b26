//! Tunnels: `CONNECT` (the proxy connects and answers 200) and WebSocket after the upstream's
//! `101`; then bytes go both ways between the client and the upstream until both sides close
//! (or neither speaks for `--idle-timeout`). With `--mitm`, a `CONNECT` whose client starts TLS
//! is intercepted instead: the client's TLS is terminated with a leaf for its SNI name (signed by
//! our CA), and the connection goes on as HTTP/1.1 exchanges, each one forwarded over verified
//! TLS to the real host.
//!
//! An opaque tunnel knows no HTTP after the 200 or 101: it carries whatever the peers speak.

use std::{
    cell::Cell,
    future::{Future, pending},
    io,
    rc::Rc,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use monoio::{
    io::{AsyncWriteRent, CancelableAsyncReadRent, CancelableAsyncWriteRent, Splitable},
    net::TcpStream,
};

use crate::{
    ca::Ca,
    net::{
        Conn, READ_BUF_BYTES, Transport,
        tls::{self, LazyServer},
        transport::{Cancel, is_timeout, until, write_all},
    },
    trace::Outcome,
    upstream,
};

use super::{
    MitmDest, Next, Session,
    forward::{connect_failure, connect_share, host_of},
    request::{RequestFacts, Target},
    response::Relayed,
};

/// The port of a `CONNECT` target that names none (RFC 9112 §3.2.3 requires one; 80 as for
/// any authority).
const CONNECT_PORT: u16 = 80;

/// How long a TLS side of a finished tunnel may take to send its `close_notify`.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1): a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What became of a tunnel offered for interception.
enum Intercept {
    /// The client spoke TLS and now speaks HTTP inside it: serve its requests.
    Intercepted,
    /// Not TLS (or nothing said): keep the tunnel opaque.
    Opaque,
    /// The client left, or failed the TLS handshake (e.g. it does not trust our CA).
    Ended,
}

impl Session<'_> {
    /// `CONNECT`: connects, answers 200 and splices bytes both ways until either side closes.
    pub(super) async fn tunnel(&mut self, facts: RequestFacts) -> Next {
        let Target::Authority { from, to, .. } = facts.target else {
            return self.answer_error(400).await;
        };
        let w = self.w;
        let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
        let Ok(mut pick) = upstream::resolve(&w.resolver, authority, CONNECT_PORT).await else {
            self.ex.outcome = Outcome::UpstreamError;
            return self.answer_error(502).await;
        };
        let mitm_host = w
            .config
            .tls
            .mitm
            .is_some()
            .then(|| host_of(authority).to_owned());
        // As a forward: a refused or timed-out connect moves on to the name's next address,
        // every connect together within --upstream-timeout.
        let connecting = Instant::now();
        let connects_by = connecting + w.config.upstream_timeout;
        let addresses = w.resolver.borrow().addresses(authority, CONNECT_PORT);
        let mut tried = 1;
        let transport = loop {
            self.ex.upstream_addr = Some(pick.addr);
            let connect_by = connect_share(connects_by, addresses.saturating_sub(tried - 1));
            let e = match upstream::connect(pick.addr, connect_by).await {
                Ok(transport) => break transport,
                Err(e) => e,
            };
            let next = w
                .resolver
                .borrow()
                .next_after(authority, CONNECT_PORT, pick, tried);
            match next {
                Some(next) => {
                    pick = next;
                    tried += 1;
                }
                None => {
                    self.ex.upstream_connect = connecting.elapsed();
                    let (outcome, status) = connect_failure(&e);
                    self.ex.outcome = outcome;
                    return self.answer_error(status).await;
                }
            }
        };
        self.ex.upstream_connect = connecting.elapsed();
        let addr = pick.addr;
        self.out.clear();
        self.out
            .extend_from_slice(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        self.ex.status = 200;
        self.ex.response_head_len = self.out.len();
        self.ex.outcome = Outcome::Ok;
        if !self.write_out_to_client().await {
            self.ex.outcome = Outcome::ClientClosed;
            self.record();
            return Next::Close;
        }
        if let (Some(ca), Some(host)) = (w.config.tls.mitm.as_ref(), mitm_host) {
            match self.intercept(ca, addr, &host).await {
                Intercept::Intercepted => {
                    self.record();
                    return Next::KeepAlive;
                }
                Intercept::Ended => {
                    self.record();
                    return Next::Close;
                }
                Intercept::Opaque => {}
            }
        }
        let mut up = Conn::new(transport, &w.bufs, &w.frames);
        self.pump_tunnel(&mut up).await;
        self.release_conn(up);
        self.record();
        Next::Close
    }

    /// After a `101` to WebSocket (its head in `self.out`): sends it, then tunnels until
    /// either side closes. Neither connection carries HTTP again.
    pub(super) async fn upgraded(&mut self, up: &mut Conn) -> Relayed {
        if !self.write_out_to_client().await {
            self.ex.outcome = Outcome::ClientClosed;
            return Relayed::CLOSED;
        }
        self.pump_tunnel(up).await;
        Relayed::CLOSED
    }

    /// `--mitm`: waits (up to `--header-timeout`) for the client's first byte; a TLS handshake
    /// record is intercepted (leaf for the SNI name, else the CONNECT host), anything else or
    /// silence (a server-speaks-first protocol) stays an opaque tunnel.
    async fn intercept(&mut self, ca: &Ca, addr: std::net::SocketAddr, host: &str) -> Intercept {
        let w = self.w;
        let deadline = Instant::now() + w.config.header_timeout;
        if self.client.buffered().is_empty() {
            match self.client.fill(READ_BUF_BYTES, deadline).await {
                Ok(0) => return Intercept::Ended,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Intercept::Opaque,
                Err(_) => return Intercept::Ended,
            }
        }
        if self.client.buffered().first() != Some(&TLS_HANDSHAKE_RECORD) {
            return Intercept::Opaque;
        }
        let early = self.client.buffered().to_vec();
        self.client.consume(early.len());
        let Some(Transport::Plain(tcp)) = self.client.take_transport() else {
            return Intercept::Ended;
        };
        let hello = match LazyServer::read_hello(tcp, early, Vec::new(), deadline).await {
            Ok(hello) => hello,
            Err(e) => return self.client_tls_failed(tls::handshake_failure(&e)),
        };
        let name: Rc<str> = Rc::from(hello.server_name().unwrap_or(host));
        let Ok(leaf) = w.leaves.borrow_mut().get_or_sign(ca, &name) else {
            return self.client_tls_failed("no leaf certificate could be signed for the name");
        };
        let mut stream = match hello.into_stream(leaf) {
            Ok(stream) => stream,
            Err(e) => return self.client_tls_failed(tls::handshake_failure(&e)),
        };
        let failed = stream.handshake(deadline).await.err();
        let fresh = Conn::new(Transport::Tls(Box::new(stream)), &w.bufs, &w.frames);
        let plain = std::mem::replace(&mut self.client, fresh);
        self.release_conn(plain);
        if let Some(e) = failed {
            // Most often the client does not trust our CA (its alert says so). The failed
            // session stays as the client's transport so the record shows what was negotiated.
            return self.client_tls_failed(tls::handshake_failure(&e));
        }
        self.client_tls = true;
        self.mitm = Some(MitmDest { addr, name });
        Intercept::Intercepted
    }

    /// The client's TLS handshake with us failed: the CONNECT's record says why.
    fn client_tls_failed(&mut self, reason: &'static str) -> Intercept {
        self.ex.outcome = Outcome::ClientTlsFailed;
        self.ex.error_reason = Some(reason);
        Intercept::Ended
    }

    /// Moves the bytes: first those already read on either side (behind the client's head,
    /// behind the upstream's `101`), then both directions until the tunnel ends.
    async fn pump_tunnel(&mut self, up: &mut Conn) {
        // The ledger counts a tunnel's life as the upstream's body time.
        let started = Instant::now();
        self.pump_tunnel_bytes(up).await;
        self.ex.upstream_body += started.elapsed();
    }

    /// [`Session::pump_tunnel`] proper.
    async fn pump_tunnel_bytes(&mut self, up: &mut Conn) {
        let w = self.w;
        let idle = w.config.idle_timeout;
        let early = self.client.buffered().len();
        let early_back = up.buffered().len();
        if early > 0
            && self
                .client
                .relay_to(up, early, Instant::now() + idle)
                .await
                .is_err()
        {
            return;
        }
        if early_back > 0
            && up
                .relay_to(&mut self.client, early_back, Instant::now() + idle)
                .await
                .is_err()
        {
            return;
        }
        let plain = matches!(
            (self.client.transport(), up.transport()),
            (Some(Transport::Plain(_)), Some(Transport::Plain(_)))
        );
        let spliced = if plain {
            let (Some(Transport::Plain(client)), Some(Transport::Plain(upstream))) =
                (self.client.take_transport(), up.take_transport())
            else {
                return;
            };
            splice(client, upstream, tunnel_bufs(w), idle).await
        } else {
            // TLS on either side (an https listener, `--mitm`, an https upstream). The
            // transports stay in their connections, so the record reads their sessions' facts.
            let (Some(client), Some(upstream)) = (self.client.transport_mut(), up.transport_mut())
            else {
                return;
            };
            let spliced = pump_either(client, upstream, tunnel_bufs(w), idle).await;
            let deadline = Instant::now() + CLOSE_NOTIFY_WAIT;
            monoio::join!(client.close(deadline), upstream.close(deadline));
            spliced
        };
        self.ex.request_body_len = spliced.sent + early as u64;
        self.ex.response_body_len = spliced.received + early_back as u64;
        let mut pool = w.bufs.borrow_mut();
        spliced.bufs.into_iter().for_each(|b| pool.put(b));
    }
}

/// Two pooled buffers, one per direction of a tunnel.
fn tunnel_bufs(w: &crate::worker::Worker) -> [Vec<u8>; 2] {
    let mut pool = w.bufs.borrow_mut();
    [pool.get(READ_BUF_BYTES), pool.get(READ_BUF_BYTES)]
}

/// Bytes moved each way, and the two buffers back for the pool.
struct Spliced {
    /// Client → upstream.
    sent: u64,
    /// Upstream → client.
    received: u64,
    /// The buffers lent to the two directions.
    bufs: [Vec<u8>; 2],
}

/// Copies both directions concurrently. When one side ends its stream, the other side's write
/// half is shut down (a TCP half-close), and the tunnel ends once both directions are done.
async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    bufs: [Vec<u8>; 2],
    idle: Duration,
) -> Spliced {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let last_activity = Cell::new(Instant::now());
    let [up_buf, down_buf] = bufs;
    let ((sent, up_buf), (received, down_buf)) = monoio::join!(
        pump(client_read, upstream_write, up_buf, idle, &last_activity),
        pump(upstream_read, client_write, down_buf, idle, &last_activity),
    );
    Spliced {
        sent,
        received,
        bufs: [up_buf, down_buf],
    }
}

/// One direction: read, write, repeat; a read times out only when the whole tunnel was idle.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut buf: Vec<u8>,
    idle: Duration,
    last_activity: &Cell<Instant>,
) -> (u64, Vec<u8>)
where
    R: CancelableAsyncReadRent,
    W: CancelableAsyncWriteRent + AsyncWriteRent,
{
    let mut read_canceller = Cancel::default();
    let mut write_canceller = Cancel::default();
    let mut total = 0u64;
    loop {
        buf.clear();
        let deadline = last_activity.get() + idle;
        let read = from.cancelable_read(buf, read_canceller.handle());
        let (res, filled) = until(read, &mut read_canceller, deadline, pending()).await;
        buf = filled;
        match res {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            // The other direction may have been busy meanwhile: only a silent tunnel times out.
            Err(e) if is_timeout(&e) && last_activity.get() + idle > Instant::now() => continue,
            Err(_) => break,
        }
        let now = Instant::now();
        last_activity.set(now);
        let (res, written) = write_all(&mut to, &mut write_canceller, buf, now + idle).await;
        buf = written;
        if res.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    (total, buf)
}

/// A one-shot flag one future sets and another (in the same task) waits for: a tunnel's read on
/// one side tells the read on the other side to stop.
#[derive(Default)]
struct Signal {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Completes once [`Signal::fire`] was called (and again on every later poll).
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// One side of a tunnel as [`pump_either`] drives it.
struct Side<'t> {
    transport: &'t mut Transport,
    buf: Vec<u8>,
    canceller: Cancel,
    /// It has not ended its stream yet.
    open: bool,
}

impl Side<'_> {
    /// Reads into this side's buffer until `deadline` or `stop`; then fires `done`. `None`
    /// when this side already ended.
    async fn read(
        &mut self,
        deadline: Instant,
        stop: impl Future<Output = ()>,
        done: &Signal,
    ) -> Option<io::Result<usize>> {
        if !self.open {
            return None;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (res, buf) = self
            .transport
            .read(buf, &mut self.canceller, deadline, stop)
            .await;
        self.buf = buf;
        done.fire();
        Some(res)
    }
}

/// What one read means for the tunnel.
enum Step {
    /// Bytes to pass on (and how many).
    Data(usize),
    /// The side ended its stream: half-close the other.
    Ended,
    /// Nothing this round (stopped for the other side, or the deadline passed).
    Quiet,
    /// The side failed (a reset, a TLS error): the tunnel ends.
    Failed,
}

fn step(read: Option<io::Result<usize>>) -> Step {
    match read {
        Some(Ok(0)) => Step::Ended,
        Some(Ok(n)) => Step::Data(n),
        Some(Err(e)) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => Step::Quiet,
        Some(Err(_)) => Step::Failed,
        None => Step::Quiet,
    }
}

/// Acts on what one side's read gave: passes its bytes to the other side (counted in `total`),
/// or half-closes the other side when it ended. `Some(true)` when bytes moved, `None` when the
/// tunnel is over (a side failed, or the other side would not take the bytes).
async fn pass_on(
    step: Step,
    from: &mut Side<'_>,
    to: &mut Side<'_>,
    total: &mut u64,
    idle: Duration,
) -> Option<bool> {
    match step {
        Step::Data(n) => {
            let data = std::mem::take(&mut from.buf);
            let deadline = Instant::now() + idle;
            let (res, data) = to
                .transport
                .write_all(data, &mut to.canceller, deadline)
                .await;
            from.buf = data;
            res.ok()?;
            *total += n as u64;
            Some(true)
        }
        Step::Ended => {
            from.open = false;
            to.transport.shutdown_write(Instant::now() + idle).await;
            Some(false)
        }
        Step::Quiet => Some(false),
        Step::Failed => None,
    }
}

/// The tunnel over any two transports (TLS on either side): each round reads both sides at
/// once; the first read to finish stops the other (cancelled and awaited, so nothing read is
/// lost), then what came in is written out, so a TLS session never reads and writes at the
/// same time. A side that ends its stream half-closes the other (`close_notify` or FIN); the
/// tunnel ends when both did, when a side fails, or after `idle` with nothing said either way.
async fn pump_either(
    client: &mut Transport,
    upstream: &mut Transport,
    bufs: [Vec<u8>; 2],
    idle: Duration,
) -> Spliced {
    let [up_buf, down_buf] = bufs;
    let mut a = Side {
        transport: client,
        buf: up_buf,
        canceller: Cancel::default(),
        open: true,
    };
    let mut b = Side {
        transport: upstream,
        buf: down_buf,
        canceller: Cancel::default(),
        open: true,
    };
    let (mut sent, mut received) = (0u64, 0u64);
    let mut last_activity = Instant::now();
    while a.open || b.open {
        let deadline = last_activity + idle;
        let (a_done, b_done) = (Signal::default(), Signal::default());
        let (from_a, from_b) = monoio::join!(
            a.read(deadline, b_done.wait(), &a_done),
            b.read(deadline, a_done.wait(), &b_done),
        );
        let Some(moved_up) = pass_on(step(from_a), &mut a, &mut b, &mut sent, idle).await else {
            break;
        };
        let Some(moved_down) = pass_on(step(from_b), &mut b, &mut a, &mut received, idle).await
        else {
            break;
        };
        let moved = moved_up || moved_down;
        if moved {
            last_activity = Instant::now();
        } else if Instant::now() >= last_activity + idle {
            break;
        }
    }
    Spliced {
        sent,
        received,
        bufs: [a.buf, b.buf],
    }
}

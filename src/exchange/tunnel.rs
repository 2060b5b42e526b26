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
    future::pending,
    rc::Rc,
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
        let connects_by = Instant::now() + w.config.upstream_timeout;
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
                    let (outcome, status) = connect_failure(&e);
                    self.ex.outcome = outcome;
                    return self.answer_error(status).await;
                }
            }
        };
        let addr = pick.addr;
        self.ex.ttfb = Some(self.ex.started.elapsed());
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
        let mut up = Conn::new(transport, &w.bufs);
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
        let Ok(hello) = LazyServer::read_hello(tcp, early, Vec::new(), deadline).await else {
            return Intercept::Ended;
        };
        let name: Rc<str> = Rc::from(hello.server_name().unwrap_or(host));
        let Ok(leaf) = w.leaves.borrow_mut().get_or_sign(ca, &name) else {
            return Intercept::Ended;
        };
        let Ok(mut stream) = hello.into_stream(leaf) else {
            return Intercept::Ended;
        };
        if let Err(e) = stream.handshake(deadline).await {
            // Most often the client does not trust our CA (its alert says so).
            self.ex.error_reason = tls::failure_reason(&e);
            self.ex.outcome = Outcome::ClientClosed;
            return Intercept::Ended;
        }
        let fresh = Conn::new(Transport::Tls(Box::new(stream)), &w.bufs);
        let plain = std::mem::replace(&mut self.client, fresh);
        self.release_conn(plain);
        self.client_tls = true;
        self.mitm = Some(MitmDest { addr, name });
        Intercept::Intercepted
    }

    /// Moves the bytes: first those already read on either side (behind the client's head,
    /// behind the upstream's `101`), then both directions until the tunnel ends.
    async fn pump_tunnel(&mut self, up: &mut Conn) {
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
        let (Some(Transport::Plain(client)), Some(Transport::Plain(upstream))) =
            (self.client.take_transport(), up.take_transport())
        else {
            return;
        };
        let bufs = {
            let mut pool = w.bufs.borrow_mut();
            [pool.get(READ_BUF_BYTES), pool.get(READ_BUF_BYTES)]
        };
        let spliced = splice(client, upstream, bufs, idle).await;
        self.ex.request_body_len = spliced.sent + early as u64;
        self.ex.response_body_len = spliced.received + early_back as u64;
        let mut pool = w.bufs.borrow_mut();
        spliced.bufs.into_iter().for_each(|b| pool.put(b));
    }
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

//! One client connection's exchanges, in order: read a head → decide faults → delay → answer
//! synthetically or forward upstream and stream the response back → record the exchange.
//!
//! It reads the per-worker state (`worker`) but owns neither threads nor runtimes (that is
//! `server`) nor byte-level HTTP (that is `http`).
//!
//! # Layout
//! - this file: the serve loop, [`Session`] (one connection and its reused buffers), [`Next`].
//! - `request`: the head → [`request::RequestFacts`], the full URL and the head sent upstream.
//! - `decide`: pinning the fault snapshot, the decision, the injected delay.
//! - `answer`: synthetic fault answers and proxy errors.
//! - `forward`: sending upstream, 100-continue, the stale-connection retry.
//! - `response`: the response head, 1xx, de-chunking, relaying the body back.
//! - `tunnel`: `CONNECT`, and WebSocket after the upstream's `101`.
//! - `record`: the exchange → counters and its trace record.

mod answer;
mod decide;
mod forward;
mod record;
mod request;
mod response;
mod tunnel;

use std::{
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use monoio::net::TcpStream;

use crate::{
    fault::{Answer, FaultPlan},
    http::Version,
    net::{Conn, Transport, tls::TlsStream},
    trace::Outcome,
    worker::{Pinned, Worker},
};

pub(crate) use decide::Faults;
pub(crate) use record::{Stats, latency_histogram};

/// The `Via` we add to both directions (RFC 9110 §7.6.3).
const VIA: (&str, &[u8]) = ("via", b"1.1 phantom-fast");

/// Heads with at most this many headers parse with a small on-stack array (cheaper to clear).
const SMALL_HEADERS: usize = 128;

/// How long a closing TLS connection may take to send its `close_notify`.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// Serves one client connection until it closes, errs, times out or shutdown ends it. The
/// accept loop counted it in `worker.active`; this uncounts it. With `--tls-cert` the TLS
/// handshake comes first, bounded by `--header-timeout` (a client that never finishes it, or
/// speaks plain HTTP to the TLS port, gets an alert where one applies and a close).
pub(crate) async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let accepted = Instant::now();
    let transport = match &worker.config.tls.listener {
        None => Ok(Transport::Plain(stream)),
        Some(config) => {
            let deadline = accepted + worker.config.header_timeout;
            // In a pooled block: a handshake's state would otherwise size every connection's
            // future, plain ones included, for its whole life.
            let handshake = async move {
                let mut tls = TlsStream::server(stream, Arc::clone(config), Vec::new(), Vec::new());
                match tls.handshake(deadline).await {
                    Ok(()) => Ok(Transport::Tls(Box::new(tls))),
                    Err(e) => Err((Box::new(tls), e)),
                }
            };
            worker.frames.boxed(handshake).await
        }
    };
    match transport {
        Ok(transport) => {
            let _ = transport.set_nodelay();
            let mut session = Session::new(&worker, transport, peer);
            session.client_tls = worker.config.tls.listener.is_some();
            while session.exchange().await == Next::KeepAlive {}
            // Pooled: a lingering close reads, and inline its state would size the future.
            let closing = session.client.close(Instant::now() + CLOSE_NOTIFY_WAIT);
            worker.frames.boxed(closing).await;
            session.release();
        }
        // A failed handshake is an exchange of its own (unless nothing was ever said: a probe).
        Err((tls, e)) if tls.heard_from_peer() => {
            let mut session = Session::new(&worker, Transport::Tls(tls), peer);
            session.record_client_tls_failure(accepted, crate::net::tls::handshake_failure(&e));
            session.release();
        }
        Err(_) => {}
    }
    worker.active.set(worker.active.get() - 1);
}

/// Room for the heads an exchange encodes (and the first body bytes sent with them), taken from
/// the pool when a request head arrives; an idle connection holds none, a delayed one only the
/// bytes of the head it will send ([`Session::park_for_wait`]).
const OUT_BYTES: usize = 4096;

/// Most pieces a `slow-head` fault cuts a response head into.
const SLOW_HEAD_PIECES: usize = 16;

/// Whether a connection carries another exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    KeepAlive,
    Close,
}

/// Per-exchange facts gathered for the trace record and the stats.
struct Exchange {
    started: Instant,
    start_unix_ns: u64,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    trace_flags: u8,
    method_len: usize,
    version: Version,
    status: u16,
    outcome: Outcome,
    upstream_addr: Option<SocketAddr>,
    ttfb: Option<Duration>,
    /// Connecting to the upstream (TCP, and TLS when originated), every attempt summed.
    upstream_connect: Duration,
    /// Relaying the upstream's body after the head went out (unshaped), or a tunnel's life.
    upstream_body: Duration,
    /// Injected time beyond the forward delay, ns: a head delay, a slow head, a paced body.
    injected_ns: u64,
    decision: FaultPlan,
    /// The exchange holds an active-fault slot (`--max-active-faults`).
    holding: bool,
    request_body_len: u64,
    response_body_len: u64,
    /// `out[..response_head_len]` is the response head as sent (0: none).
    response_head_len: usize,
    /// Why the proxy answered an error itself, when it knows (a TLS handshake's reason).
    error_reason: Option<&'static str>,
    /// The server name, when the upstream was spoken to over TLS.
    upstream_sni: Option<Rc<str>>,
    /// The upstream session's facts, once it was up.
    upstream_tls: Option<crate::net::tls::TlsFacts<'static>>,
}

/// The real destination of an intercepted (`--mitm`) tunnel.
struct MitmDest {
    addr: SocketAddr,
    /// SNI and the name its certificate is verified for: the client's SNI, else the CONNECT host.
    name: Rc<str>,
}

/// One client connection and the buffers it reuses for every exchange.
pub(crate) struct Session<'w> {
    w: &'w Worker,
    client: Conn,
    peer: SocketAddr,
    /// The fault snapshot the current exchange pinned at its start; every rule index of its
    /// decision is read against this one, whatever the worker's slot holds by then.
    faults: Pinned,
    /// Encoded heads (plus the first body bytes) going out: request upstream, response to the client.
    out: Vec<u8>,
    /// The full URL of the current request (fault matching, traces).
    url: Vec<u8>,
    /// Scratch for the `traceparent` we forward, and de-chunked data for HTTP/1.0 clients.
    scratch: Vec<u8>,
    /// The request head as received (traces only).
    request_head: Vec<u8>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    /// Body bytes a trace keeps (0 when tracing is off).
    capture_limit: usize,
    shutdown_slot: usize,
    /// Exchanges answered on this connection.
    exchanges: u64,
    ex: Exchange,
    /// The client speaks TLS to us (the https listener, or inside an intercepted tunnel).
    client_tls: bool,
    /// Set once a CONNECT tunnel was intercepted: every later request goes there.
    mitm: Option<MitmDest>,
}

impl<'w> Session<'w> {
    fn new(w: &'w Worker, transport: Transport, peer: SocketAddr) -> Session<'w> {
        let mut bufs = w.bufs.borrow_mut();
        let capture_limit = w.config.trace.as_ref().map_or(0, |t| t.body_bytes);
        let session = Session {
            w,
            client: Conn::new(transport, &w.bufs, &w.frames),
            peer,
            faults: w.table.pin(),
            out: Vec::new(),
            url: bufs.get(256),
            scratch: bufs.get(64),
            // Trace captures grow on first use and keep their capacity for the connection.
            request_head: Vec::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            capture_limit,
            shutdown_slot: w.shutdown.register(),
            exchanges: 0,
            ex: Exchange::new(Instant::now()),
            client_tls: false,
            mitm: None,
        };
        drop(bufs);
        session
    }

    fn release(self) {
        self.w.shutdown.release(self.shutdown_slot);
        // Only what came from the pool goes back: the trace captures were grown here and are
        // freed with the connection, so churn cannot fill the pool with them.
        let buf = self.client.into_buf();
        let mut bufs = self.w.bufs.borrow_mut();
        for b in [buf, self.out, self.url, self.scratch] {
            bufs.put(b);
        }
    }

    /// Before a wait (between requests, during a delay): the client's read buffer and `out`
    /// go back to the pool, keeping only their bytes (a delayed request's encoded head) in the
    /// smallest buffer that holds them; the wait's read takes a small buffer. 10 000 delayed
    /// connections so hold 10 000 heads, not 10 000 × 20 KiB of room.
    fn park_for_wait(&mut self) {
        self.client.park();
        let out = std::mem::take(&mut self.out);
        self.out = self.w.bufs.borrow_mut().shrink(out);
    }

    /// After a wait, before anything more is encoded into `out`: its full room again (its
    /// bytes kept), from the pool. Forwarding does it only once it has an upstream connection.
    fn unpark_out(&mut self) {
        let out = std::mem::take(&mut self.out);
        self.out = self.w.bufs.borrow_mut().regrow(out, OUT_BYTES);
    }

    /// An error answer (after draining the request body when `drain` says so) in a pooled
    /// block: from the phases that run inline in the connection's future (forward before it
    /// has a connection), whose error answers would otherwise size every connection's future.
    async fn error_pooled(&mut self, drain: Option<request::RequestFacts>, status: u16) -> Next {
        let w = self.w;
        match drain {
            Some(facts) => w.frames.boxed(self.drain_then_error(facts, status)).await,
            None => w.frames.boxed(self.answer_error(status)).await,
        }
    }

    fn tracing(&self) -> bool {
        self.w.config.trace.is_some()
    }

    /// One request/response exchange; says whether the connection stays open.
    async fn exchange(&mut self) -> Next {
        let next = self.exchange_once().await;
        self.release_fault_slot();
        next
    }

    /// [`Session::exchange`] proper: head, decision, delay, then the answer the plan asks for.
    async fn exchange_once(&mut self) -> Next {
        let facts = match self.read_head().await {
            Ok(facts) => facts,
            Err(request::HeadEnd::Close) => return Next::Close,
            Err(request::HeadEnd::Reject { status }) => {
                self.ex.outcome = Outcome::BadRequest;
                return self.error_pooled(None, status).await;
            }
        };
        let decision = self.ex.decision;
        if decision.forward_delay_ns > 0 {
            self.park_for_wait();
            let watched = self.delay(decision.forward_delay()).await;
            if !matches!(decision.answer, Answer::Forward) || facts.is_connect {
                self.unpark_out();
            }
            if !watched {
                self.ex.outcome = Outcome::ClientClosed;
                self.ex.status = 0;
                self.record();
                return Next::Close;
            }
        }
        match decision.answer {
            Answer::Forward => {}
            Answer::Synthetic { rule, .. } => {
                let w = self.w;
                return w
                    .frames
                    .boxed(self.answer_fault(rule.map(usize::from), facts))
                    .await;
            }
            answer @ (Answer::Reset | Answer::Close | Answer::Hang | Answer::Garbage) => {
                let w = self.w;
                return w.frames.boxed(self.answer_connection_fault(answer)).await;
            }
        }
        // The running phases' state lives in pooled blocks (a tunnel's here, a forward's once
        // it has an upstream connection), not in the connection's future: a waiting
        // connection's future holds only what waiting needs.
        let w = self.w;
        if facts.is_connect {
            return w.frames.boxed(self.tunnel(facts)).await;
        }
        self.forward(facts).await
    }

    /// Writes `self.out` to the client with its first `head_len` bytes (the head) spread evenly
    /// over `over_ns` in up to [`SLOW_HEAD_PIECES`] pieces, each after a timer wait: a
    /// `slow-head` fault. At once when `over_ns` is 0. `false` if it could not be delivered.
    async fn write_out_paced(&mut self, head_len: usize, over_ns: u64) -> bool {
        use monoio::buf::IoBuf;
        if over_ns == 0 {
            return self.write_out_to_client().await;
        }
        let mut out = std::mem::take(&mut self.out);
        let (len, head_len) = (out.len(), head_len.min(out.len()));
        let pieces = head_len.clamp(1, SLOW_HEAD_PIECES);
        let start = Instant::now();
        let mut delivered = true;
        for i in 0..pieces {
            let from = head_len * i / pieces;
            let to = if i + 1 == pieces {
                len
            } else {
                head_len * (i + 1) / pieces
            };
            if i > 0 {
                let at = u128::from(over_ns) * i as u128 / (pieces - 1) as u128;
                let due = start + Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX));
                self.w.timer.sleep_until(due).await;
            }
            let deadline = Instant::now() + self.w.config.idle_timeout;
            let (res, slice) = self.client.write_all(out.slice(from..to), deadline).await;
            out = slice.into_inner();
            if res.is_err() {
                delivered = false;
                break;
            }
        }
        self.out = out;
        delivered
    }

    /// Writes `self.out` to the client; `false` if it could not be delivered.
    async fn write_out_to_client(&mut self) -> bool {
        let out = std::mem::take(&mut self.out);
        let deadline = Instant::now() + self.w.config.idle_timeout;
        let (res, out) = self.client.write_all(out, deadline).await;
        self.out = out;
        res.is_ok()
    }

    /// Closes a connection, keeping its buffer (pool slots are the caller's business).
    fn release_conn(&self, conn: Conn) {
        self.w.bufs.borrow_mut().put(conn.into_buf());
    }
}

impl Exchange {
    fn new(started: Instant) -> Exchange {
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, record::nanos);
        Exchange {
            started,
            start_unix_ns,
            trace_id: 0,
            span_id: 0,
            parent_span_id: None,
            trace_flags: 1,
            method_len: 0,
            version: Version::Http11,
            status: 0,
            outcome: Outcome::Ok,
            upstream_addr: None,
            ttfb: None,
            upstream_connect: Duration::ZERO,
            upstream_body: Duration::ZERO,
            injected_ns: 0,
            decision: FaultPlan::NONE,
            holding: false,
            request_body_len: 0,
            response_body_len: 0,
            response_head_len: 0,
            error_reason: None,
            upstream_sni: None,
            upstream_tls: None,
        }
    }
}

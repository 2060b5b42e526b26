//! One client connection's exchanges, in order: read a head → decide faults → delay → answer
//! synthetically or forward upstream and stream the response back → hand the exchange to the
//! trace writer.
//!
//! It reads the per-worker state (`worker`) but owns neither threads nor runtimes (that is
//! `server`) nor byte-level HTTP (that is `http`).

use std::{
    net::SocketAddr,
    pin::pin,
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use monoio::net::TcpStream;

use crate::{
    config::{Config, Mode},
    connection::{self, BodyReader, Conn, READ_BUF_BYTES, RelayError, RelayTimeouts, relay},
    fault::{FaultKind, FaultPlan, RequestView},
    http::{self, BodyKind, MAX_HEADERS_CAP, ParseError, RequestHead, ResponseHead, Version},
    trace::{self, FaultHit, Outcome, TraceEvent},
    tunnel,
    upstream::{self, Lease},
    worker::Worker,
};

/// The `Via` we add to both directions (RFC 9110 §7.6.3).
const VIA: (&str, &[u8]) = ("via", b"1.1 phantom-fast");

/// How long to wait for an upstream's `100 Continue` before sending the body anyway
/// (RFC 9110 §10.1.1: a client "MAY proceed to send the content" without it).
const EXPECT_CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// What we send a client for whom we answer `100 Continue` ourselves.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How far past a delay's deadline the wheel-based read deadline sits (it only guards
/// against a timer that never fires).
const BACKSTOP_SLACK: Duration = Duration::from_secs(1);

/// Heads with at most this many headers parse with a small on-stack array (cheaper to clear).
const SMALL_HEADERS: usize = 128;

/// Serves one client connection until it closes, errs, times out or shutdown ends it. The
/// accept loop counted it in `worker.active`; this uncounts it.
pub(crate) async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(&worker, stream, peer);
    while session.exchange().await == Next::KeepAlive {}
    session.release();
    worker.active.set(worker.active.get() - 1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The configured upstream (reverse mode).
    Upstream,
    /// `url[range]` is the authority to connect to (forward mode).
    Authority(usize, usize),
}

/// What the proxy needs to know of a parsed request once its head buffer is released.
#[derive(Debug, Clone, Copy)]
struct RequestFacts {
    head_len: usize,
    is_head: bool,
    is_connect: bool,
    /// Safe to send again on a fresh connection (RFC 9110 §9.2.2) and has no body.
    retryable: bool,
    version: Version,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    target: Target,
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
    decision: FaultPlan,
    request_body_len: u64,
    response_body_len: u64,
    /// `out[..response_head_len]` is the response head as sent (0: none).
    response_head_len: usize,
}

/// One client connection and the buffers it reuses for every exchange.
struct Session<'w> {
    w: &'w Worker,
    client: Conn,
    peer: SocketAddr,
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
}

/// Why a forward attempt ended without a response to relay.
enum UpstreamFailure {
    /// Refused, reset, garbled: 502.
    Error,
    /// No head within `--upstream-timeout`: 504.
    Timeout,
    /// A pooled connection had been closed by the upstream before we used it.
    Stale,
    /// The client's body broke its own framing (bad chunk size): 400.
    BadRequestBody,
    /// The client stopped sending its body: 408 if it is still there.
    ClientTimeout,
    /// The client hung up mid-body: nobody to answer.
    ClientGone,
}

impl<'w> Session<'w> {
    fn new(w: &'w Worker, stream: TcpStream, peer: SocketAddr) -> Session<'w> {
        let mut bufs = w.bufs.borrow_mut();
        let capture_limit = w.config.trace.as_ref().map_or(0, |t| t.body_bytes);
        let session = Session {
            w,
            client: Conn::new(stream, bufs.get(READ_BUF_BYTES)),
            peer,
            out: bufs.get(4096),
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

    fn tracing(&self) -> bool {
        self.w.config.trace.is_some()
    }

    /// One request/response exchange; says whether the connection stays open.
    async fn exchange(&mut self) -> Next {
        let facts = match self.read_head().await {
            Ok(facts) => facts,
            Err(None) => return Next::Close,
            Err(Some(status)) => {
                self.ex.outcome = Outcome::BadRequest;
                return self.answer_error(status).await;
            }
        };
        let decision = {
            let mut stats = self.w.stats.borrow_mut();
            let mut rng = self.w.rng.borrow_mut();
            self.w.faults.table().decide(
                &RequestView::from_url(&self.url),
                &mut rng,
                &mut stats.rules,
            )
        };
        self.ex.decision = decision;
        if decision.forward_delay_ns > 0 && !self.delay(decision.forward_delay()).await {
            self.ex.outcome = Outcome::ClientClosed;
            self.ex.status = 0;
            self.record();
            return Next::Close;
        }
        if let Some(rule) = decision
            .primary_rule()
            .filter(|_| decision.synthetic_status().is_some())
        {
            return self.answer_fault(rule, facts).await;
        }
        if facts.is_connect {
            return self.tunnel(facts).await;
        }
        self.forward(facts).await
    }

    /// Reads and parses the next request head. `Err(None)`: close silently (EOF, idle timeout,
    /// shutdown); `Err(Some(status))`: answer that error and close.
    async fn read_head(&mut self) -> Result<RequestFacts, Option<u16>> {
        let cfg = &*self.w.config;
        let mut head_deadline = None;
        loop {
            if !self.client.buffered().is_empty() {
                if head_deadline.is_none() {
                    let now = Instant::now();
                    self.ex = Exchange::new(now);
                    head_deadline = Some(now + cfg.header_timeout);
                }
                match self.parse_head() {
                    Ok(Some(facts)) => return Ok(facts),
                    Ok(None) => {}
                    Err(e) => return Err(Some(e.status())),
                }
            }
            let idle = head_deadline.is_none();
            if idle && self.w.shutdown.fired() {
                return Err(None);
            }
            // A fresh connection gets `--header-timeout` for its first byte (a client that opens
            // and never sends is dropped quickly); between requests, `--idle-timeout`.
            let wait = if self.exchanges == 0 {
                cfg.header_timeout
            } else {
                cfg.idle_timeout
            };
            let deadline = head_deadline.unwrap_or_else(|| Instant::now() + wait);
            let max = cfg.limits.max_head_bytes + 1;
            let read = if idle {
                self.client
                    .fill_or(max, deadline, self.w.shutdown.wait(self.shutdown_slot))
                    .await
            } else {
                self.client.fill(max, deadline).await
            };
            match read {
                Ok(0) => return Err(None),
                Ok(_) => {}
                Err(e) if connection::is_timeout(&e) && !idle => {
                    self.ex.status = 408;
                    return Err(Some(408));
                }
                Err(_) => return Err(None),
            }
        }
    }

    /// Parses the buffered head with an on-stack header array sized to the configured limit.
    fn parse_head(&mut self) -> Result<Option<RequestFacts>, ParseError> {
        if self.w.config.limits.max_headers <= SMALL_HEADERS {
            self.parse_head_with::<SMALL_HEADERS>()
        } else {
            self.parse_head_with::<MAX_HEADERS_CAP>()
        }
    }

    fn parse_head_with<const N: usize>(&mut self) -> Result<Option<RequestFacts>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; N];
        let cfg = &*self.w.config;
        let buf = self.client.buffered();
        let Some(head) = http::parse::parse_request(buf, &mut headers, &cfg.limits)? else {
            return Ok(None);
        };
        let body = http::body::request_body_kind(&head)?;
        let method = head.method;
        let is_connect = method == "CONNECT";
        let facts_target;
        // The full URL (RFC 9112 §3.3) and where the request goes.
        self.url.clear();
        let origin_target: &str;
        match (&cfg.mode, is_connect) {
            (Mode::Forward, true) => {
                // RFC 9112 §3.2.3: CONNECT carries an authority-form target.
                if head.target.starts_with('/') || head.target.contains('/') {
                    return Err(ParseError::Malformed);
                }
                self.url.extend_from_slice(head.target.as_bytes());
                facts_target = Target::Authority(0, self.url.len());
                origin_target = "";
            }
            (Mode::Reverse(_), true) => return Err(ParseError::Malformed),
            (mode, false) => {
                if let Some(rest) = head.target.strip_prefix("http://") {
                    // RFC 9112 §3.2.2: absolute-form; a proxy replaces Host with its authority.
                    let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
                    if path_at == 0 {
                        return Err(ParseError::Malformed);
                    }
                    self.url.extend_from_slice(head.target.as_bytes());
                    facts_target = match mode {
                        Mode::Forward => Target::Authority(7, 7 + path_at),
                        Mode::Reverse(_) => Target::Upstream,
                    };
                    origin_target = if path_at == rest.len() {
                        "/"
                    } else {
                        &rest[path_at..]
                    };
                } else if matches!(mode, Mode::Forward) {
                    // A forward proxy needs to know where to go.
                    return Err(ParseError::Malformed);
                } else if head.target.starts_with('/') || head.target == "*" {
                    let Mode::Reverse(up) = mode else {
                        unreachable!("matched above")
                    };
                    let host = http::headers::header(head.headers, "host")
                        .unwrap_or(up.authority.as_bytes());
                    self.url.extend_from_slice(b"http://");
                    self.url.extend_from_slice(host);
                    self.url.extend_from_slice(head.target.as_bytes());
                    facts_target = Target::Upstream;
                    origin_target = head.target;
                } else {
                    return Err(ParseError::Malformed);
                }
            }
        }
        // W3C trace context: continue the caller's trace, start ours otherwise.
        let (trace_id, parent) = match http::headers::header(head.headers, "traceparent")
            .and_then(trace::parse_traceparent)
        {
            Some((trace_id, parent, flags)) => {
                self.ex.trace_flags = flags;
                (trace_id, Some(parent))
            }
            None => {
                let mut rng = self.w.rng.borrow_mut();
                (
                    u128::from(rng.u64(1..)) << 64 | u128::from(rng.u64(..)),
                    None,
                )
            }
        };
        self.ex.trace_id = trace_id;
        self.ex.parent_span_id = parent;
        self.ex.span_id = trace::random_span_id(&mut self.w.id_rng.borrow_mut());
        self.ex.method_len = method.len();
        self.ex.version = head.version;
        if self.tracing() {
            self.request_head.clear();
            self.request_head.extend_from_slice(&buf[..head.head_len]);
        }
        let facts = RequestFacts {
            head_len: head.head_len,
            is_head: method == "HEAD",
            is_connect,
            retryable: matches!(body, BodyKind::Empty | BodyKind::Length(0))
                && matches!(
                    method,
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                ),
            version: head.version,
            body,
            keep_alive: http::headers::keep_alive(head.version, head.headers),
            expect_continue: head.version == Version::Http11
                && body != BodyKind::Empty
                && http::headers::expects_continue(head.headers),
            target: facts_target,
        };
        if !is_connect {
            encode_upstream_head(
                cfg,
                &self.url,
                &self.ex,
                &mut self.scratch,
                &mut self.out,
                &head,
                origin_target,
                facts,
            );
        }
        self.client.consume(facts.head_len);
        Ok(Some(facts))
    }

    /// Sleeps for an injected delay while watching the client: `false` when it hung up.
    /// Bytes it sends meanwhile (a body, a pipelined request) are kept.
    async fn delay(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut elapsed = pin!(self.w.timer.sleep_until(deadline));
        // The wheel deadline only backs up the precise one; it never ends the delay early.
        let backstop = deadline + BACKSTOP_SLACK;
        loop {
            // Bytes that arrive meanwhile are kept, up to one read buffer; past that the client
            // waits on TCP backpressure like any other.
            let room = READ_BUF_BYTES;
            if self.client.buffered().len() >= room {
                elapsed.await;
                return true;
            }
            match self.client.fill_or(room, backstop, &mut elapsed).await {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
                Err(e) if connection::is_timeout(&e) => {
                    elapsed.await;
                    return true;
                }
                Err(_) => return false,
            }
        }
    }

    /// Answers with the synthetic response of error rule `rule`.
    async fn answer_fault(&mut self, rule: usize, facts: RequestFacts) -> Next {
        let mut keep_alive = facts.keep_alive && facts.version == Version::Http11;
        // The request body is read and dropped, so the next request on the connection is found;
        // a client waiting for 100-continue is spared sending it and the connection closes.
        if facts.body != BodyKind::Empty {
            if facts.expect_continue {
                keep_alive = false;
            } else if !self.discard_request_body(facts.body).await {
                self.ex.outcome = Outcome::ClientClosed;
                self.record();
                return Next::Close;
            }
        }
        let w = self.w;
        let bytes = &w.faults.synthetic[rule][usize::from(!keep_alive)];
        let head_len = head_len(bytes);
        // RFC 9110 §9.3.2: the answer to HEAD is the head alone.
        let body = if facts.is_head {
            &[][..]
        } else {
            &bytes[head_len..]
        };
        self.out.clear();
        self.out.extend_from_slice(&bytes[..head_len]);
        self.out.extend_from_slice(body);
        self.response_body.clear();
        capture(&mut self.response_body, self.capture_limit, body);
        self.ex.response_body_len = body.len() as u64;
        self.ex.response_head_len = head_len;
        self.ex.status = self.ex.decision.synthetic_status().unwrap_or(0);
        self.ex.outcome = Outcome::Fault;
        let sent = self.write_out_to_client().await;
        self.record();
        if sent && keep_alive && !self.w.shutdown.fired() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Reads the request body to its end, keeping only the traced prefix. `false` on failure.
    async fn discard_request_body(&mut self, kind: BodyKind) -> bool {
        let mut reader = BodyReader::new(kind);
        let idle = self.w.config.idle_timeout;
        self.request_body.clear();
        loop {
            let limit = self.capture_limit;
            let n = match reader.scan(self.client.buffered(), |data| {
                capture(&mut self.request_body, limit, data);
            }) {
                Ok(n) => n,
                Err(_) => return false,
            };
            self.client.consume(n);
            if reader.done {
                self.ex.request_body_len = reader.data_len;
                return true;
            }
            match self
                .client
                .fill(READ_BUF_BYTES, Instant::now() + idle)
                .await
            {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
    }

    /// Sends a proxy-generated error and closes.
    async fn answer_error(&mut self, status: u16) -> Next {
        self.out.clear();
        http::encode::encode_error(status, &mut self.out);
        self.ex.status = status;
        self.ex.response_head_len = head_len(&self.out);
        self.response_body.clear();
        let body_at = self.ex.response_head_len;
        let (limit, body) = (self.capture_limit, &self.out[body_at..]);
        capture(&mut self.response_body, limit, body);
        self.ex.response_body_len = body.len() as u64;
        self.write_out_to_client().await;
        self.record();
        Next::Close
    }

    /// Writes `self.out` to the client; `false` if it could not be delivered.
    async fn write_out_to_client(&mut self) -> bool {
        let out = std::mem::take(&mut self.out);
        let deadline = Instant::now() + self.w.config.idle_timeout;
        let (res, out) = self.client.write_all(out, deadline).await;
        self.out = out;
        res.is_ok()
    }

    /// `CONNECT`: connects, answers 200 and splices bytes both ways until either side closes.
    async fn tunnel(&mut self, facts: RequestFacts) -> Next {
        let Target::Authority(from, to) = facts.target else {
            return self.answer_error(400).await;
        };
        let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
        let addr = match upstream::resolve(&self.w.resolver, authority).await {
            Ok(addr) => addr,
            Err(_) => {
                self.ex.outcome = Outcome::UpstreamError;
                return self.answer_error(502).await;
            }
        };
        self.ex.upstream_addr = Some(addr);
        let deadline = Instant::now() + self.w.config.upstream_timeout;
        let stream = match upstream::connect(addr, deadline).await {
            Ok(stream) => stream,
            Err(e) => {
                let (outcome, status) = connect_failure(&e);
                self.ex.outcome = outcome;
                return self.answer_error(status).await;
            }
        };
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
        // Bytes the client sent right behind its CONNECT head belong to the tunnel.
        let idle = self.w.config.idle_timeout;
        let mut up = Conn::new(stream, self.w.bufs.borrow_mut().get(READ_BUF_BYTES));
        let early = self.client.buffered().len();
        let relayed = early == 0
            || self
                .client
                .relay_to(&mut up, early, Instant::now() + idle)
                .await
                .is_ok();
        if let (true, Some(client), Some(upstream)) =
            (relayed, self.client.take_stream(), up.take_stream())
        {
            let bufs = {
                let mut pool = self.w.bufs.borrow_mut();
                [pool.get(READ_BUF_BYTES), pool.get(READ_BUF_BYTES)]
            };
            let spliced = tunnel::splice(client, upstream, bufs, idle).await;
            self.ex.request_body_len = spliced.sent + early as u64;
            self.ex.response_body_len = spliced.received;
            let mut pool = self.w.bufs.borrow_mut();
            spliced.bufs.into_iter().for_each(|b| pool.put(b));
        }
        self.release_conn(up);
        self.record();
        Next::Close
    }

    /// Forwards the request upstream and relays the response.
    async fn forward(&mut self, facts: RequestFacts) -> Next {
        let addr = match facts.target {
            Target::Upstream => match &self.w.config.mode {
                Mode::Reverse(up) => up.addrs[0],
                Mode::Forward => return self.answer_error(400).await,
            },
            Target::Authority(from, to) => {
                let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
                match upstream::resolve(&self.w.resolver, authority).await {
                    Ok(addr) => addr,
                    Err(_) => {
                        self.ex.outcome = Outcome::UpstreamError;
                        return self.drain_then_error(facts, 502).await;
                    }
                }
            }
        };
        self.ex.upstream_addr = Some(addr);
        let deadline = Instant::now() + self.w.config.upstream_timeout;
        let Some(lease) = upstream::acquire(&self.w.pool, &self.w.bufs, addr, deadline).await
        else {
            // Every allowed connection stayed busy for --upstream-timeout.
            self.ex.outcome = Outcome::UpstreamTimeout;
            return self.drain_then_error(facts, 504).await;
        };
        let (mut attempt, mut reused) = match lease {
            Lease::Idle(conn) => (Some(conn), true),
            Lease::Connect => (None, false),
        };
        loop {
            let mut up = match attempt.take() {
                Some(conn) => conn,
                None => match upstream::connect(addr, deadline).await {
                    Ok(stream) => Conn::new(stream, self.w.bufs.borrow_mut().get(READ_BUF_BYTES)),
                    Err(e) => {
                        self.w.pool.borrow_mut().closed(addr);
                        let (outcome, status) = connect_failure(&e);
                        self.ex.outcome = outcome;
                        return self.drain_then_error(facts, status).await;
                    }
                },
            };
            match self
                .exchange_upstream(&mut up, facts, deadline, reused)
                .await
            {
                Ok(next) => {
                    return self.finish_upstream(up, addr, next);
                }
                // The slot stays ours: the fresh connection takes the dead one's place.
                Err((UpstreamFailure::Stale, _)) if reused && facts.retryable => {
                    self.release_conn(up);
                    reused = false;
                }
                Err((failure, request_done)) => {
                    self.release_conn(up);
                    self.w.pool.borrow_mut().closed(addr);
                    let (outcome, status) = match failure {
                        UpstreamFailure::Timeout => (Outcome::UpstreamTimeout, 504),
                        UpstreamFailure::Error | UpstreamFailure::Stale => {
                            (Outcome::UpstreamError, 502)
                        }
                        UpstreamFailure::BadRequestBody => (Outcome::BadRequest, 400),
                        UpstreamFailure::ClientTimeout => (Outcome::BadRequest, 408),
                        UpstreamFailure::ClientGone => {
                            self.ex.outcome = Outcome::ClientClosed;
                            self.record();
                            return Next::Close;
                        }
                    };
                    self.ex.outcome = outcome;
                    // A body that broke off cannot be drained; a whole one was already read.
                    let drain = !request_done
                        && matches!(outcome, Outcome::UpstreamError | Outcome::UpstreamTimeout);
                    if drain {
                        return self.drain_then_error(facts, status).await;
                    }
                    return self.answer_error(status).await;
                }
            }
        }
    }

    /// Reads the rest of the request body (when it is still small work) and answers `status`.
    async fn drain_then_error(&mut self, facts: RequestFacts, status: u16) -> Next {
        if facts.body != BodyKind::Empty && !facts.expect_continue {
            let _ = self.discard_request_body(facts.body).await;
        }
        self.answer_error(status).await
    }

    /// Closes a connection, keeping its buffer (pool slots are the caller's business).
    fn release_conn(&self, conn: Conn) {
        self.w.bufs.borrow_mut().put(conn.into_buf());
    }

    /// Puts a reusable upstream connection back and records the exchange.
    fn finish_upstream(&mut self, up: Conn, addr: SocketAddr, done: Relayed) -> Next {
        if done.upstream_reusable && up.buffered().is_empty() {
            self.w
                .pool
                .borrow_mut()
                .checkin(addr, up, &mut self.w.bufs.borrow_mut());
        } else {
            self.release_conn(up);
            self.w.pool.borrow_mut().closed(addr);
        }
        self.record();
        if done.client_keep_alive && !self.w.shutdown.fired() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Sends the request on `up` and relays the response. On failure before any response byte
    /// reached the client, says why and whether the request body was fully read.
    async fn exchange_upstream(
        &mut self,
        up: &mut Conn,
        facts: RequestFacts,
        deadline: Instant,
        reused: bool,
    ) -> Result<Relayed, (UpstreamFailure, bool)> {
        let cfg = &*self.w.config;
        let io_deadline = || Instant::now() + cfg.idle_timeout;
        let mut request = BodyReader::new(facts.body);
        let request_head_len = self.out.len();
        // Head and whatever body bytes are already here go out in one write.
        if !facts.expect_continue {
            let limit = self.capture_limit;
            self.request_body.clear();
            let n = request
                .scan(self.client.buffered(), |d| {
                    capture(&mut self.request_body, limit, d)
                })
                .map_err(|_| (UpstreamFailure::BadRequestBody, false))?;
            self.out.extend_from_slice(&self.client.buffered()[..n]);
            self.client.consume(n);
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = up.write_all(out, io_deadline()).await;
        out.truncate(request_head_len);
        self.out = out;
        if res.is_err() {
            let failure = if reused {
                UpstreamFailure::Stale
            } else {
                UpstreamFailure::Error
            };
            return Err((failure, request.done));
        }
        let sent_at = Instant::now();
        let mut early_response = false;
        if facts.expect_continue {
            // RFC 9110 §10.1.1: wait (briefly) for the upstream's verdict before sending the body.
            let wait = (Instant::now() + EXPECT_CONTINUE_WAIT).min(deadline);
            match up.fill(cfg.limits.max_head_bytes + 1, wait).await {
                Ok(0) => return Err((UpstreamFailure::Error, false)),
                Ok(_) => {}
                Err(e) if connection::is_timeout(&e) => {}
                Err(_) => return Err((UpstreamFailure::Error, false)),
            }
            match self.interim_status(up) {
                // A final answer before the body: relay it; the body is never sent.
                Some(status) if status >= 200 => early_response = true,
                // 100 Continue, another 1xx (relayed below) or silence: tell the client to go on.
                status => {
                    if status == Some(100) {
                        up.consume(head_len(up.buffered()));
                    }
                    let (res, _) = self.client.write_all(CONTINUE, io_deadline()).await;
                    if res.is_err() {
                        return Err((UpstreamFailure::Error, false));
                    }
                }
            }
            self.request_body.clear();
        }
        if !early_response && !request.done {
            let limit = self.capture_limit;
            let body = &mut self.request_body;
            // The client has --idle-timeout per read; the upstream --upstream-timeout per write.
            let timeouts = RelayTimeouts {
                read: cfg.idle_timeout,
                write: cfg.upstream_timeout,
            };
            let relayed = relay(
                &mut self.client,
                up,
                &mut request,
                timeouts,
                |d| capture(body, limit, d),
                None,
            )
            .await;
            match relayed {
                Ok(()) => {}
                Err(RelayError::Framing) => return Err((UpstreamFailure::BadRequestBody, false)),
                Err(RelayError::Source(true)) => {
                    return Err((UpstreamFailure::ClientTimeout, false));
                }
                Err(RelayError::Source(false)) => return Err((UpstreamFailure::ClientGone, false)),
                // The upstream stopped taking the body: it may have answered early (413, 401…);
                // that answer is relayed if it comes, and the connections close after it.
                Err(RelayError::Destination) => early_response = true,
            }
        }
        self.ex.request_body_len = request.data_len;
        // The response head, after any interim 1xx responses.
        let mut first_byte = !up.buffered().is_empty();
        let facts_resp = loop {
            if !up.buffered().is_empty() {
                first_byte = true;
                self.ex.ttfb.get_or_insert_with(|| sent_at.elapsed());
            }
            match self.parse_response(up, facts) {
                Ok(Some(r)) if r.interim => {
                    // RFC 9110 §15.2: relay 1xx to HTTP/1.1 clients, drop them for 1.0.
                    up.consume(r.head_len);
                    if facts.version == Version::Http11
                        && r.status != 100
                        && !self.write_out_to_client().await
                    {
                        return Err((UpstreamFailure::Error, request.done));
                    }
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(()) => return Err((UpstreamFailure::Error, request.done)),
            }
            match up.fill(cfg.limits.max_head_bytes + 1, deadline).await {
                // Not one byte back on a pooled connection: it was dead before we used it.
                Ok(0) if !first_byte && reused => {
                    return Err((UpstreamFailure::Stale, request.done));
                }
                Ok(0) => return Err((UpstreamFailure::Error, request.done)),
                Ok(_) => {}
                Err(e) if connection::is_timeout(&e) => {
                    return Err((UpstreamFailure::Timeout, request.done));
                }
                Err(_) if !first_byte && reused => {
                    return Err((UpstreamFailure::Stale, request.done));
                }
                Err(_) => return Err((UpstreamFailure::Error, request.done)),
            }
        };
        if self.ex.ttfb.is_none() {
            self.ex.ttfb = Some(sent_at.elapsed());
        }
        up.consume(facts_resp.head_len);
        self.ex.status = facts_resp.status;
        self.ex.response_head_len = self.out.len();
        self.ex.outcome = Outcome::Ok;
        let client_keep_alive = facts_resp.client_keep_alive && !early_response && request.done;
        // Body bytes already here ride along with the head.
        let mut response = BodyReader::new(facts_resp.body);
        self.response_body.clear();
        let limit = self.capture_limit;
        let dechunk = facts_resp.dechunk;
        let n = {
            let (body, out, scratch) = (&mut self.response_body, &mut self.out, &mut self.scratch);
            scratch.clear();
            let n = response
                .scan(up.buffered(), |d| {
                    capture(body, limit, d);
                    if dechunk {
                        scratch.extend_from_slice(d);
                    }
                })
                .map_err(|_| (UpstreamFailure::Error, request.done))?;
            if dechunk {
                out.extend_from_slice(scratch);
            } else {
                out.extend_from_slice(&up.buffered()[..n]);
            }
            n
        };
        up.consume(n);
        if !self.write_out_to_client().await {
            self.ex.outcome = Outcome::ClientClosed;
            return Ok(Relayed {
                client_keep_alive: false,
                upstream_reusable: false,
            });
        }
        let mut upstream_reusable =
            facts_resp.upstream_keep_alive && !early_response && request.done;
        if !response.done {
            let body = &mut self.response_body;
            let scratch = if dechunk {
                Some(&mut self.scratch)
            } else {
                None
            };
            // The upstream has --upstream-timeout per read; a client that stops reading,
            // --idle-timeout per write.
            let timeouts = RelayTimeouts {
                read: cfg.upstream_timeout,
                write: cfg.idle_timeout,
            };
            match relay(
                up,
                &mut self.client,
                &mut response,
                timeouts,
                |d| capture(body, limit, d),
                scratch,
            )
            .await
            {
                Ok(()) => {}
                Err(RelayError::Destination) => {
                    self.ex.outcome = Outcome::ClientClosed;
                    upstream_reusable = false;
                    self.ex.response_body_len = response.data_len;
                    return Ok(Relayed {
                        client_keep_alive: false,
                        upstream_reusable,
                    });
                }
                Err(RelayError::Framing) => {
                    self.ex.outcome = Outcome::UpstreamError;
                    self.ex.response_body_len = response.data_len;
                    return Ok(Relayed {
                        client_keep_alive: false,
                        upstream_reusable: false,
                    });
                }
                Err(RelayError::Source(timeout)) => {
                    // The upstream broke off mid-body: the client must not mistake what it got
                    // for a whole response, so its connection closes too.
                    self.ex.outcome = if timeout {
                        Outcome::UpstreamTimeout
                    } else {
                        Outcome::UpstreamError
                    };
                    self.ex.response_body_len = response.data_len;
                    return Ok(Relayed {
                        client_keep_alive: false,
                        upstream_reusable: false,
                    });
                }
            }
        }
        if facts_resp.body == BodyKind::CloseDelimited {
            upstream_reusable = false;
        }
        self.ex.response_body_len = response.data_len;
        Ok(Relayed {
            client_keep_alive,
            upstream_reusable,
        })
    }

    /// The status of a complete response head at the front of `up`'s buffer, if one is there.
    fn interim_status(&self, up: &Conn) -> Option<u16> {
        let mut headers = [httparse::EMPTY_HEADER; SMALL_HEADERS];
        let head = http::parse::parse_response(up.buffered(), &mut headers, &self.w.config.limits);
        head.ok().flatten().map(|head| head.status)
    }

    /// Parses the upstream's response head; on success the head to send the client is in
    /// `self.out`. `Err(())`: garbled or conflicting framing (502).
    fn parse_response(
        &mut self,
        up: &Conn,
        facts: RequestFacts,
    ) -> Result<Option<ResponseFacts>, ()> {
        if self.w.config.limits.max_headers <= SMALL_HEADERS {
            self.parse_response_with::<SMALL_HEADERS>(up, facts)
        } else {
            self.parse_response_with::<MAX_HEADERS_CAP>(up, facts)
        }
    }

    fn parse_response_with<const N: usize>(
        &mut self,
        up: &Conn,
        facts: RequestFacts,
    ) -> Result<Option<ResponseFacts>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; N];
        let Some(head) =
            http::parse::parse_response(up.buffered(), &mut headers, &self.w.config.limits)
                .map_err(|_| ())?
        else {
            return Ok(None);
        };
        if (100..200).contains(&head.status) {
            // 101 would mean an upgrade we never asked for (Upgrade is hop-by-hop, not forwarded).
            if head.status == 101 {
                return Err(());
            }
            self.out.clear();
            http::encode::encode_response_head(
                &head,
                BodyKind::Empty,
                true,
                facts.version,
                &[VIA],
                &mut self.out,
            );
            return Ok(Some(ResponseFacts::interim(&head)));
        }
        let body = http::body::response_body_kind(&head, facts.is_head).map_err(|_| ())?;
        let upstream_keep_alive = http::headers::keep_alive(head.version, head.headers);
        // HTTP/1.0 clients cannot read chunked: de-chunk and delimit by close (RFC 9112 §7.1).
        let dechunk = body == BodyKind::Chunked && facts.version == Version::Http10;
        let (client_body, close_delimited) = match body {
            BodyKind::Chunked if dechunk => (BodyKind::CloseDelimited, true),
            BodyKind::CloseDelimited => (BodyKind::CloseDelimited, true),
            other => (other, false),
        };
        let client_keep_alive = facts.keep_alive && !close_delimited && !self.w.shutdown.fired();
        self.out.clear();
        http::encode::encode_response_head(
            &head,
            client_body,
            client_keep_alive,
            facts.version,
            &[VIA],
            &mut self.out,
        );
        Ok(Some(ResponseFacts {
            head_len: head.head_len,
            status: head.status,
            interim: false,
            body,
            dechunk,
            client_keep_alive,
            upstream_keep_alive,
        }))
    }

    /// Counts the exchange and appends its trace record (after the response went out).
    fn record(&mut self) {
        self.exchanges += 1;
        let duration = self.ex.started.elapsed();
        let decision = self.ex.decision;
        {
            let mut stats = self.w.stats.borrow_mut();
            stats.requests += 1;
            let slot = Outcome::ALL
                .iter()
                .position(|o| *o == self.ex.outcome)
                .unwrap_or(0);
            stats.outcomes[slot] += 1;
            let micros = u64::try_from(duration.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            stats.latency_us.saturating_record(micros);
        }
        let mut trace = self.w.trace.borrow_mut();
        let Some(writer) = trace.as_mut() else {
            return;
        };
        let fault = decision.primary_rule().map(|rule| FaultHit {
            rule: rule as u32,
            kind: match self.w.faults.table().rules()[rule].kind() {
                FaultKind::Error => trace::FaultKind::Error,
                _ => trace::FaultKind::Delay,
            },
            spec: &self.w.faults.specs[rule],
        });
        let method = self.request_head.get(..self.ex.method_len).unwrap_or(b"");
        let event = TraceEvent {
            trace_id: self.ex.trace_id,
            span_id: self.ex.span_id,
            parent_span_id: self.ex.parent_span_id,
            start_unix_ns: self.ex.start_unix_ns,
            duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            upstream_ttfb_ns: self
                .ex
                .ttfb
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            injected_delay_ns: decision.forward_delay_ns,
            fault,
            method,
            url: &self.url,
            version: self.ex.version.as_str(),
            status: self.ex.status,
            request_head: &self.request_head,
            response_head: &self.out[..self.ex.response_head_len.min(self.out.len())],
            request_body: &self.request_body,
            request_body_len: self.ex.request_body_len,
            response_body: &self.response_body,
            response_body_len: self.ex.response_body_len,
            client_addr: self.peer,
            upstream_addr: self.ex.upstream_addr,
            outcome: self.ex.outcome,
        };
        writer.write(&event);
        drop(trace);
        self.request_head.clear();
        self.url.clear();
    }
}

/// The request head going upstream, in `out`.
#[allow(clippy::too_many_arguments)]
fn encode_upstream_head(
    cfg: &Config,
    url: &[u8],
    ex: &Exchange,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head: &RequestHead<'_, '_>,
    target: &str,
    facts: RequestFacts,
) {
    let host: Option<&[u8]> = match (&cfg.mode, facts.target) {
        (_, Target::Authority(from, to)) => Some(&url[from..to]),
        (Mode::Reverse(up), _) => match &up.host_override {
            Some(h) => Some(h.as_bytes()),
            None if http::headers::header(head.headers, "host").is_none() => {
                Some(up.authority.as_bytes())
            }
            None => None,
        },
        (Mode::Forward, Target::Upstream) => None,
    };
    scratch.clear();
    trace::encode_traceparent(ex.trace_id, ex.span_id, ex.trace_flags, scratch);
    out.clear();
    http::encode::encode_request_head(
        head,
        target,
        host,
        facts.body,
        &[VIA, ("traceparent", scratch)],
        out,
    );
}

/// What relaying a response left behind.
struct Relayed {
    client_keep_alive: bool,
    upstream_reusable: bool,
}

/// A parsed response head, reduced to what the relay needs.
#[derive(Debug, Clone, Copy)]
struct ResponseFacts {
    head_len: usize,
    status: u16,
    /// A 1xx interim response: another head follows.
    interim: bool,
    body: BodyKind,
    /// Chunked from the upstream, de-chunked for an HTTP/1.0 client.
    dechunk: bool,
    client_keep_alive: bool,
    upstream_keep_alive: bool,
}

impl ResponseFacts {
    fn interim(head: &ResponseHead<'_, '_>) -> ResponseFacts {
        ResponseFacts {
            head_len: head.head_len,
            status: head.status,
            interim: true,
            body: BodyKind::Empty,
            dechunk: false,
            client_keep_alive: true,
            upstream_keep_alive: true,
        }
    }
}

/// A failed connect: timed out is 504, anything else (refused, unreachable) 502.
fn connect_failure(e: &std::io::Error) -> (Outcome, u16) {
    if connection::is_timeout(e) {
        (Outcome::UpstreamTimeout, 504)
    } else {
        (Outcome::UpstreamError, 502)
    }
}

/// Appends to a trace capture up to `limit` bytes.
fn capture(into: &mut Vec<u8>, limit: usize, data: &[u8]) {
    let room = limit.saturating_sub(into.len());
    into.extend_from_slice(&data[..room.min(data.len())]);
}

/// Length of the head at the front of a response we built (through the blank line).
fn head_len(bytes: &[u8]) -> usize {
    memchr::memmem::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |i| i + 4)
}

impl Exchange {
    fn new(started: Instant) -> Exchange {
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
            decision: FaultPlan::NONE,
            request_body_len: 0,
            response_body_len: 0,
            response_head_len: 0,
        }
    }
}

//! The forward phase: choosing the destination, leasing or opening an upstream connection,
//! sending the head and the request body (with `100-continue`), and the one retry a stale pooled
//! connection earns. Failures become answers (502, 504, 400, 408), never connection errors.
//!
//! The response side is `response`'s.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{
    config::Mode,
    fault::Pace,
    http::{BodyKind, body::BodyReader},
    net::{
        Conn, READ_BUF_BYTES, RelayError, RelayTimeouts, is_timeout, relay,
        relay::{Shape, Shaped, relay_shaped},
        tls,
    },
    trace::Outcome,
    upstream::{self, Dest, Lease},
};

use super::{
    Next, Session,
    answer::head_len,
    record::capture,
    request::{RequestFacts, Target},
    response::{Relayed, Sent},
};

/// How long to wait for an upstream's `100 Continue` before sending the body anyway
/// (RFC 9110 §10.1.1: a client "MAY proceed to send the content" without it).
const EXPECT_CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// What we send a client for whom we answer `100 Continue` ourselves.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a forward attempt ended without a response to relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamFailure {
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

/// A forward attempt that failed before any response byte reached the client.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failed {
    pub(super) why: UpstreamFailure,
    /// The request body had been read to its end (so the client connection is in step).
    pub(super) request_done: bool,
}

impl Failed {
    pub(super) fn new(why: UpstreamFailure, request_done: bool) -> Failed {
        Failed { why, request_done }
    }
}

/// A failed connect: timed out is 504, anything else (refused, unreachable, a failed TLS
/// handshake) 502.
pub(super) fn connect_failure(e: &std::io::Error) -> (Outcome, u16) {
    if is_timeout(e) {
        (Outcome::UpstreamTimeout, 504)
    } else {
        (Outcome::UpstreamError, 502)
    }
}

/// Why a TLS connect failed, for the answer and the trace: the handshake's reason, or the
/// upstream closing during it. `None` for plain TCP failures and timeouts.
pub(super) fn tls_failure(dest: &Dest, e: &std::io::Error) -> Option<&'static str> {
    dest.tls.as_ref()?;
    tls::failure_reason(e).or(match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Some("upstream closed during the TLS handshake"),
        _ => None,
    })
}

/// The host of `host[:port]` or `[v6][:port]`, for SNI and certificate names.
pub(super) fn host_of(authority: &str) -> &str {
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Session<'_> {
    /// Forwards the request upstream and relays the response.
    pub(super) async fn forward(&mut self, facts: RequestFacts) -> Next {
        let dest = match self.destination(facts).await {
            Ok(dest) => dest,
            Err(next) => return next,
        };
        self.ex.upstream_addr = Some(dest.addr);
        let w = self.w;
        let deadline = Instant::now() + w.config.upstream_timeout;
        let Some(lease) = upstream::acquire(&w.pool, &w.bufs, dest.clone(), deadline).await else {
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
                None => match upstream::connect_dest(&dest, &w.config.tls, deadline).await {
                    Ok(transport) => Conn::new(transport, w.bufs.borrow_mut().get(READ_BUF_BYTES)),
                    Err(e) => return self.connect_failed(facts, dest, &e).await,
                },
            };
            match self
                .exchange_upstream(&mut up, facts, deadline, reused)
                .await
            {
                Ok(relayed) => return self.finish_upstream(up, dest, relayed),
                // The slot stays ours: the fresh connection takes the dead one's place.
                Err(failed)
                    if failed.why == UpstreamFailure::Stale && reused && facts.retryable =>
                {
                    self.release_conn(up);
                    reused = false;
                }
                Err(failed) => {
                    self.release_conn(up);
                    w.pool.borrow_mut().closed(dest);
                    return self.answer_failure(facts, failed).await;
                }
            }
        }
    }

    /// A connect failed: its slot is free again, and the client gets 502 or 504.
    async fn connect_failed(
        &mut self,
        facts: RequestFacts,
        dest: Dest,
        e: &std::io::Error,
    ) -> Next {
        self.ex.error_reason = tls_failure(&dest, e);
        self.w.pool.borrow_mut().closed(dest);
        let (outcome, status) = connect_failure(e);
        self.ex.outcome = outcome;
        self.drain_then_error(facts, status).await
    }

    /// Where the request goes (address, and TLS server name); `Err` with the exchange already
    /// answered.
    async fn destination(&mut self, facts: RequestFacts) -> Result<Dest, Next> {
        match (facts.target, &self.w.config.mode) {
            (Target::Upstream, Mode::Reverse(up)) => Ok(match &self.w.upstream_name {
                Some(name) => Dest::tls(up.addrs[0], Rc::clone(name)),
                None => Dest::plain(up.addrs[0]),
            }),
            (Target::Upstream, Mode::Forward) => Err(self.answer_error(400).await),
            (Target::Mitm, _) => match &self.mitm {
                Some(mitm) => Ok(Dest::tls(mitm.addr, Rc::clone(&mitm.name))),
                None => Err(self.answer_error(400).await),
            },
            (Target::Authority { from, to, tls }, _) => {
                let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
                let resolved = if tls && host_of(authority).len() == authority.len() {
                    // `https://host/…`: the default port is 443 (RFC 9110 §4.2.2).
                    let with_port = format!("{authority}:443");
                    upstream::resolve(&self.w.resolver, &with_port).await
                } else {
                    upstream::resolve(&self.w.resolver, authority).await
                };
                match resolved {
                    Ok(addr) if tls => Ok(Dest::tls(addr, Rc::from(host_of(authority)))),
                    Ok(addr) => Ok(Dest::plain(addr)),
                    Err(_) => {
                        self.ex.outcome = Outcome::UpstreamError;
                        Err(self.drain_then_error(facts, 502).await)
                    }
                }
            }
        }
    }

    /// Answers a failed attempt: 502/504 for the upstream's failures, 400/408 for the client's.
    async fn answer_failure(&mut self, facts: RequestFacts, failed: Failed) -> Next {
        let (outcome, status) = match failed.why {
            UpstreamFailure::Timeout => (Outcome::UpstreamTimeout, 504),
            UpstreamFailure::Error | UpstreamFailure::Stale => (Outcome::UpstreamError, 502),
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
        let drain = !failed.request_done
            && matches!(outcome, Outcome::UpstreamError | Outcome::UpstreamTimeout);
        if drain {
            return self.drain_then_error(facts, status).await;
        }
        self.answer_error(status).await
    }

    /// Puts a reusable upstream connection back and records the exchange.
    fn finish_upstream(&mut self, up: Conn, dest: Dest, done: Relayed) -> Next {
        if done.upstream_reusable && up.buffered().is_empty() {
            self.w
                .pool
                .borrow_mut()
                .checkin(dest, up, &mut self.w.bufs.borrow_mut());
        } else {
            self.release_conn(up);
            self.w.pool.borrow_mut().closed(dest);
        }
        self.record();
        if done.client_keep_alive && !self.w.shutdown.fired() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Sends the request on `up` and relays the response.
    ///
    /// # Errors
    /// A [`Failed`] when no response byte reached the client: why, and whether the request
    /// body was read to its end.
    async fn exchange_upstream(
        &mut self,
        up: &mut Conn,
        facts: RequestFacts,
        deadline: Instant,
        reused: bool,
    ) -> Result<Relayed, Failed> {
        let mut request = BodyReader::new(facts.body);
        self.send_head(up, facts, &mut request, reused).await?;
        let at = Instant::now();
        let mut early_response = false;
        if facts.expect_continue {
            early_response = self.await_continue(up, deadline).await?;
        }
        if !early_response && !request.done {
            early_response = match self.request_shape(facts) {
                Some(shape) => {
                    self.relay_shaped_request_body(up, &mut request, shape)
                        .await?
                }
                None => self.relay_request_body(up, &mut request).await?,
            };
        }
        self.ex.request_body_len = request.data_len;
        let sent = Sent {
            at,
            deadline,
            reused,
            early_response,
            request_done: request.done,
        };
        self.relay_response(up, facts, sent).await
    }

    /// Writes the request head upstream, with the body bytes already buffered in the same write
    /// (unless the client waits for `100 Continue`).
    async fn send_head(
        &mut self,
        up: &mut Conn,
        facts: RequestFacts,
        request: &mut BodyReader,
        reused: bool,
    ) -> Result<(), Failed> {
        let request_head_len = self.out.len();
        // A shaped request body goes through the shaping relay only, none of it with the head.
        if !facts.expect_continue && self.request_shape(facts).is_none() {
            let limit = self.capture_limit;
            self.request_body.clear();
            let n = request
                .scan(self.client.buffered(), |d| {
                    capture(&mut self.request_body, limit, d)
                })
                .map_err(|_| Failed::new(UpstreamFailure::BadRequestBody, false))?;
            self.out.extend_from_slice(&self.client.buffered()[..n]);
            self.client.consume(n);
        }
        let out = std::mem::take(&mut self.out);
        let io_deadline = Instant::now() + self.w.config.idle_timeout;
        let (res, mut out) = up.write_all(out, io_deadline).await;
        out.truncate(request_head_len);
        self.out = out;
        match res {
            Ok(()) => Ok(()),
            Err(_) if reused => Err(Failed::new(UpstreamFailure::Stale, request.done)),
            Err(_) => Err(Failed::new(UpstreamFailure::Error, request.done)),
        }
    }

    /// RFC 9110 §10.1.1: waits (briefly) for the upstream's verdict before the body goes.
    /// `true` when the upstream answered finally before the body (it is then never sent).
    async fn await_continue(&mut self, up: &mut Conn, deadline: Instant) -> Result<bool, Failed> {
        let failed = || Failed::new(UpstreamFailure::Error, false);
        let w = self.w;
        let wait = (Instant::now() + EXPECT_CONTINUE_WAIT).min(deadline);
        match up.fill(w.config.limits.max_head_bytes + 1, wait).await {
            Ok(0) => return Err(failed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Err(failed()),
        }
        let early_response = match self.interim_status(up) {
            // A final answer before the body: relay it; the body is never sent.
            Some(status) if status >= 200 => true,
            // 100 Continue, another 1xx (relayed later) or silence: tell the client to go on.
            status => {
                if status == Some(100) {
                    up.consume(head_len(up.buffered()));
                }
                let io_deadline = Instant::now() + w.config.idle_timeout;
                let (res, _) = self.client.write_all(CONTINUE, io_deadline).await;
                res.map_err(|_| failed())?;
                false
            }
        };
        self.request_body.clear();
        Ok(early_response)
    }

    /// Streams the rest of the request body upstream. `true` when the upstream stopped taking
    /// it (it may have answered early: 413, 401…; that answer is relayed if it comes, and the
    /// connections close after it).
    async fn relay_request_body(
        &mut self,
        up: &mut Conn,
        request: &mut BodyReader,
    ) -> Result<bool, Failed> {
        let w = self.w;
        let limit = self.capture_limit;
        let body = &mut self.request_body;
        // The client has --idle-timeout per read; the upstream --upstream-timeout per write.
        let timeouts = RelayTimeouts {
            read: w.config.idle_timeout,
            write: w.config.upstream_timeout,
        };
        let relayed = relay(
            &mut self.client,
            up,
            request,
            timeouts,
            |d| capture(body, limit, d),
            None,
        )
        .await;
        let why = match relayed {
            Ok(()) => return Ok(false),
            Err(RelayError::Destination) => return Ok(true),
            Err(RelayError::Framing) => UpstreamFailure::BadRequestBody,
            Err(RelayError::Source { timed_out: true }) => UpstreamFailure::ClientTimeout,
            Err(RelayError::Source { timed_out: false }) => UpstreamFailure::ClientGone,
        };
        Err(Failed::new(why, false))
    }

    /// The plan's shaping of this request body (`side=request`), if any.
    fn request_shape(&self, facts: RequestFacts) -> Option<Shape> {
        let plan = &self.ex.decision;
        let len = match facts.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        };
        let cut_at = plan.request_cut.and_then(|limit| limit.resolve(len));
        (plan.request_pace != Pace::Full || cut_at.is_some()).then_some(Shape {
            pace: plan.request_pace,
            chunk_delay: Duration::ZERO,
            cut_at,
            len,
        })
    }

    /// Streams the request body upstream through the fault's shaping. A cut body is never
    /// completed: the upstream connection is dropped and the client answered 502.
    async fn relay_shaped_request_body(
        &mut self,
        up: &mut Conn,
        request: &mut BodyReader,
        shape: Shape,
    ) -> Result<bool, Failed> {
        let w = self.w;
        let limit = self.capture_limit;
        let body = &mut self.request_body;
        body.clear();
        let timeouts = RelayTimeouts {
            read: w.config.idle_timeout,
            write: w.config.upstream_timeout,
        };
        let relayed = relay_shaped(
            &mut self.client,
            up,
            request,
            timeouts,
            |d| capture(body, limit, d),
            &w.timer,
            shape,
        )
        .await;
        let why = match relayed {
            Ok(Shaped::Done) => return Ok(false),
            // Nothing to drain: the 502 closes the client connection with the rest unread.
            Ok(Shaped::Cut) => return Err(Failed::new(UpstreamFailure::Error, true)),
            Err(RelayError::Destination) => return Ok(true),
            Err(RelayError::Framing) => UpstreamFailure::BadRequestBody,
            Err(RelayError::Source { timed_out: true }) => UpstreamFailure::ClientTimeout,
            Err(RelayError::Source { timed_out: false }) => UpstreamFailure::ClientGone,
        };
        Err(Failed::new(why, false))
    }
}

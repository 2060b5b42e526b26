//! The forward phase: choosing the destination, leasing or opening an upstream connection,
//! sending the head and the request body (with `100-continue`), and the one retry a stale pooled
//! connection earns. Failures become answers (502, 504, 400, 408), never connection errors.
//!
//! The response side is `response`'s.

use std::{
    io,
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{
    config::Mode,
    fault::{FaultKind, Pace, Side},
    http::{BodyKind, body::BodyReader},
    net::{
        Conn, RelayError, RelayTimeouts, Transport, is_timeout, relay,
        relay::{Shape, Shaped, relay_shaped},
        tls,
    },
    trace::Outcome,
    upstream::{self, Dest, Lease, Pick},
};

use super::{
    Next, Session,
    answer::head_len,
    record::{capture, nanos},
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

/// The port of a target that names none: 443 for an absolute `https://` URL (RFC 9110
/// §4.2.2), else 80 (§4.2.1; the reverse-mode upstream always names its port).
pub(super) fn default_port(target: Target) -> u16 {
    match target {
        Target::Authority { tls: true, .. } => 443,
        _ => 80,
    }
}

/// The deadline of the next connect when `untried` addresses are left to try before
/// `connects_by`: an equal share of the time left, so the total stays within `connects_by`.
pub(super) fn connect_share(connects_by: Instant, untried: usize) -> Instant {
    let now = Instant::now();
    let left = connects_by.saturating_duration_since(now);
    now + left / u32::try_from(untried.max(1)).unwrap_or(u32::MAX)
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
    /// Forwards the request upstream and relays the response. A connect that fails moves on
    /// to the name's next address; only when each was tried is it a 502 (or 504).
    ///
    /// Every connect together takes at most `--upstream-timeout`: each address gets an equal
    /// share of what is left, so one that never answers leaves time for the next.
    pub(super) async fn forward(&mut self, facts: RequestFacts) -> Next {
        let (mut pick, tls_name) = match self.destination(facts).await {
            Ok(route) => route,
            Err(next) => return next,
        };
        let port = default_port(facts.target);
        let connects_by = Instant::now() + self.w.config.upstream_timeout;
        let mut tried = 1;
        loop {
            let dest = match &tls_name {
                Some(name) => Dest::tls(pick.addr, Rc::clone(name)),
                None => Dest::plain(pick.addr),
            };
            let untried = self
                .w
                .resolver
                .borrow()
                .addresses(self.authority(facts.target), port)
                .saturating_sub(tried - 1);
            let connect_by = connect_share(connects_by, untried);
            let refused = match self.forward_to(facts, dest.clone(), connect_by).await {
                Ok(next) => return next,
                Err(e) => e,
            };
            let authority = self.authority(facts.target);
            let next = self
                .w
                .resolver
                .borrow()
                .next_after(authority, port, pick, tried);
            let Some(next) = next else {
                self.ex.error_reason = tls_failure(&dest, &refused);
                let (outcome, status) = connect_failure(&refused);
                self.ex.outcome = outcome;
                return self.error_pooled(Some(facts), status).await;
            };
            pick = next;
            tried += 1;
        }
    }

    /// Forwards to one destination. `Err` with the connect error when no connection could be
    /// opened (its pool slot is free again); every other ending is answered here.
    /// `connect_by` bounds a connect this takes (the exchange itself has `--upstream-timeout`).
    async fn forward_to(
        &mut self,
        facts: RequestFacts,
        dest: Dest,
        connect_by: Instant,
    ) -> io::Result<Next> {
        self.ex.upstream_addr = Some(dest.addr);
        self.ex.upstream_sni = dest.tls.clone();
        let w = self.w;
        let deadline = Instant::now() + w.config.upstream_timeout;
        let Some(lease) = upstream::acquire(&w.pool, &w.bufs, dest.clone(), deadline).await else {
            // Every allowed connection stayed busy for --upstream-timeout.
            self.ex.outcome = Outcome::UpstreamTimeout;
            return Ok(self.error_pooled(Some(facts), 504).await);
        };
        // The exchange proper runs in a pooled block, built only now that it has a connection
        // (or a slot to open one): requests queued for the pool hold their heads, not its state.
        w.frames
            .boxed_with(|| self.forward_leased(facts, dest, lease, deadline, connect_by))
            .await
    }

    /// [`Session::forward_to`] once `lease` is in hand.
    async fn forward_leased(
        &mut self,
        facts: RequestFacts,
        dest: Dest,
        lease: Lease,
        deadline: Instant,
        connect_by: Instant,
    ) -> io::Result<Next> {
        let w = self.w;
        let (mut attempt, mut reused) = match lease {
            Lease::Idle(conn) => (Some(conn), true),
            Lease::Connect => (None, false),
        };
        loop {
            let mut up = match attempt.take() {
                Some(conn) => conn,
                None => match self.connect_timed(&dest, connect_by).await {
                    Ok(transport) => Conn::new(transport, &w.bufs, &w.frames),
                    Err(e) => {
                        w.pool.borrow_mut().closed(dest);
                        return Err(e);
                    }
                },
            };
            match self
                .exchange_upstream(&mut up, facts, deadline, reused)
                .await
            {
                Ok(relayed) => return Ok(self.finish_upstream(up, dest, relayed)),
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
                    return Ok(self.answer_failure(facts, failed).await);
                }
            }
        }
    }

    /// Opens a connection to `dest` (TCP, then TLS when it is https), its time going to the
    /// ledger's upstream connect (failed attempts too: that was the upstream's time).
    async fn connect_timed(&mut self, dest: &Dest, deadline: Instant) -> io::Result<Transport> {
        let started = Instant::now();
        let connected = upstream::connect_dest(dest, &self.w.config.tls, deadline).await;
        self.ex.upstream_connect += started.elapsed();
        connected
    }

    /// The name this request's destination resolves from (the failover looks up its other
    /// addresses under it): the reverse-mode upstream, or the authority of the URL.
    pub(super) fn authority(&self, target: Target) -> &str {
        match (target, &self.w.config.mode) {
            (Target::Authority { from, to, .. }, _) => {
                std::str::from_utf8(&self.url[from..to]).unwrap_or("")
            }
            (Target::Upstream, Mode::Reverse(up)) => &up.authority,
            (Target::Upstream, Mode::Forward) | (Target::Mitm, _) => "",
        }
    }

    /// The address the request goes to first, and the TLS server name when it goes over TLS;
    /// `Err` with the exchange already answered.
    async fn destination(&mut self, facts: RequestFacts) -> Result<(Pick, Option<Rc<str>>), Next> {
        let w = self.w;
        let (resolved, tls_name) = match (facts.target, &w.config.mode) {
            (Target::Upstream, Mode::Forward) => return Err(self.error_pooled(None, 400).await),
            (Target::Mitm, _) => match &self.mitm {
                Some(mitm) => return Ok((Pick::literal(mitm.addr), Some(Rc::clone(&mitm.name)))),
                None => return Err(self.error_pooled(None, 400).await),
            },
            (Target::Upstream, Mode::Reverse(up)) => (
                upstream::resolve(&w.resolver, &up.authority, default_port(facts.target)).await,
                w.upstream_name.clone(),
            ),
            (Target::Authority { from, to, tls }, _) => {
                let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
                let port = default_port(facts.target);
                let resolved = upstream::resolve(&w.resolver, authority, port).await;
                (resolved, tls.then(|| Rc::from(host_of(authority))))
            }
        };
        match resolved {
            Ok(pick) => Ok((pick, tls_name)),
            Err(_) => {
                self.ex.outcome = Outcome::UpstreamError;
                Err(self.error_pooled(Some(facts), 502).await)
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
        if let Some(tls) = up.transport().and_then(|t| t.tls()) {
            let facts = tls.facts();
            self.ex.upstream_tls = Some(tls::TlsFacts {
                server_name: None,
                ..facts
            });
        }
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
        let mut at = Instant::now();
        let mut early_response = false;
        if facts.expect_continue {
            early_response = self.await_continue(up, deadline).await?;
        }
        if !early_response && !request.done {
            early_response = match self.request_shape(facts) {
                Some(shape) => {
                    let relayed = self
                        .relay_shaped_request_body(up, &mut request, shape)
                        .await;
                    if shape.pace != Pace::Full {
                        // Paced going up: injected time, and the upstream's wait for its
                        // answer starts once the body is through.
                        let now = Instant::now();
                        let paced = nanos(now - at);
                        self.ex.injected_ns = self.ex.injected_ns.saturating_add(paced);
                        at = now;
                    }
                    relayed?
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
        // Its room back only now: an exchange queued for an upstream connection holds its head.
        self.unpark_out();
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

    /// A request body's relay bounds: the client has --idle-timeout per read, the upstream
    /// --upstream-timeout per write.
    fn upload_timeouts(&self) -> RelayTimeouts {
        RelayTimeouts {
            read: self.w.config.idle_timeout,
            write: self.w.config.upstream_timeout,
        }
    }

    /// Streams the rest of the request body upstream. `true` when the upstream stopped taking
    /// it (it may have answered early: 413, 401…; that answer is relayed if it comes, and the
    /// connections close after it).
    async fn relay_request_body(
        &mut self,
        up: &mut Conn,
        request: &mut BodyReader,
    ) -> Result<bool, Failed> {
        let limit = self.capture_limit;
        let timeouts = self.upload_timeouts();
        let body = &mut self.request_body;
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
        let timeouts = self.upload_timeouts();
        let body = &mut self.request_body;
        body.clear();
        let relayed = relay_shaped(
            &mut self.client,
            up,
            request,
            timeouts,
            |d| capture(body, limit, d),
            &w.timer,
            shape,
            None,
        )
        .await;
        let why = match relayed {
            Ok(Shaped::Done) => return Ok(false),
            // Nothing to drain: the 502 closes the client connection with the rest unread. The
            // record gets what went upstream, not what the rule asked for.
            Ok(Shaped::Cut { delivered }) => {
                self.ex.decision.applied.set_measured(
                    FaultKind::Truncate,
                    Side::Request,
                    delivered,
                );
                return Err(Failed::new(UpstreamFailure::Error, true));
            }
            Err(RelayError::Destination) => return Ok(true),
            Err(RelayError::Framing) => UpstreamFailure::BadRequestBody,
            Err(RelayError::Source { timed_out: true }) => UpstreamFailure::ClientTimeout,
            Err(RelayError::Source { timed_out: false }) => UpstreamFailure::ClientGone,
        };
        Err(Failed::new(why, false))
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_rows() {
        let rows: &[(&str, &str, &str)] = &[
            ("name_and_port", "api.example.test:8443", "api.example.test"),
            ("name_alone", "api.example.test", "api.example.test"),
            ("ipv4_and_port", "127.0.0.1:443", "127.0.0.1"),
            ("ipv6_and_port", "[::1]:443", "::1"),
            ("ipv6_alone", "[::1]", "::1"),
        ];
        for (name, authority, want) in rows {
            assert_eq!(host_of(authority), *want, "{name}");
        }
    }
}

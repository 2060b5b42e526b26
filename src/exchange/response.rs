//! The response phase: the upstream's head (after any 1xx), re-encoded for the client, then
//! its body relayed back (de-chunked for an HTTP/1.0 client), and whether either connection
//! survives it.
//!
//! It sends nothing upstream: `forward` does.

use std::{io, time::Instant};

use crate::{
    fault::{Cut, Pace},
    http::{
        self, BodyError, BodyKind, MAX_HEADERS_CAP, ResponseHead, Version, body::BodyReader,
        header_slots,
    },
    net::{
        Conn, RelayError, RelayTimeouts, is_timeout, relay,
        relay::{Shape, Shaped, relay_shaped},
    },
    trace::Outcome,
};

use super::{
    SMALL_HEADERS, Session, VIA,
    forward::{Failed, UpstreamFailure},
    record::capture,
    request::RequestFacts,
};

/// How the request went out, as the response phase needs it.
pub(super) struct Sent {
    /// When the head (and any body) had been written.
    pub(super) at: Instant,
    /// `--upstream-timeout` for the response head.
    pub(super) deadline: Instant,
    /// The connection came from the pool.
    pub(super) reused: bool,
    /// The upstream answered (or stopped reading) before the whole body went.
    pub(super) early_response: bool,
    /// The request body was read to its end.
    pub(super) request_done: bool,
}

/// What relaying a response left behind.
pub(super) struct Relayed {
    pub(super) client_keep_alive: bool,
    pub(super) upstream_reusable: bool,
}

impl Relayed {
    /// Both connections close.
    pub(super) const CLOSED: Relayed = Relayed {
        client_keep_alive: false,
        upstream_reusable: false,
    };
}

/// A parsed response head, reduced to what the relay needs.
#[derive(Debug, Clone, Copy)]
struct ResponseFacts {
    head_len: usize,
    status: u16,
    /// A 1xx interim response: another head follows.
    interim: bool,
    /// A `101` to WebSocket: after it, the connection is a tunnel.
    upgraded: bool,
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
            upgraded: false,
            body: BodyKind::Empty,
            dechunk: false,
            client_keep_alive: true,
            upstream_keep_alive: true,
        }
    }
}

/// Why a read of the response head ended the attempt, if it did. `stale`: nothing came back
/// yet on a pooled connection, so it was dead before we used it.
fn read_failure(res: &io::Result<usize>, stale: bool) -> Option<UpstreamFailure> {
    match res {
        Ok(0) if stale => Some(UpstreamFailure::Stale),
        Ok(0) => Some(UpstreamFailure::Error),
        Ok(_) => None,
        Err(e) if is_timeout(e) => Some(UpstreamFailure::Timeout),
        Err(_) if stale => Some(UpstreamFailure::Stale),
        Err(_) => Some(UpstreamFailure::Error),
    }
}

impl Session<'_> {
    /// Reads the response head and relays the response to the client.
    ///
    /// # Errors
    /// A [`Failed`] while no response byte reached the client.
    pub(super) async fn relay_response(
        &mut self,
        up: &mut Conn,
        facts: RequestFacts,
        sent: Sent,
    ) -> Result<Relayed, Failed> {
        let resp = self.read_response_head(up, facts, &sent).await?;
        if self.ex.ttfb.is_none() {
            self.ex.ttfb = Some(sent.at.elapsed());
        }
        up.consume(resp.head_len);
        self.ex.status = resp.status;
        self.ex.response_head_len = self.out.len();
        self.ex.outcome = Outcome::Ok;
        if resp.upgraded {
            return Ok(self.upgraded(up).await);
        }
        let whole_exchange = !sent.early_response && sent.request_done;
        let mut body = BodyReader::new(resp.body);
        let shape = self.response_shape(&resp);
        if shape.is_some() {
            // A shaped body goes through the shaping relay only, none of it with the head.
            self.response_body.clear();
        } else {
            // Body bytes already here ride along with the head.
            self.stage_buffered_body(up, &mut body, resp.dechunk)
                .map_err(|_| Failed::new(UpstreamFailure::Error, sent.request_done))?;
        }
        // A `delay:…:at=head` fault: slow time to first byte, with the upstream's real answer.
        let head_delay = self.ex.decision.head_delay_ns;
        if head_delay > 0
            && !self
                .delay(std::time::Duration::from_nanos(head_delay))
                .await
        {
            self.ex.outcome = Outcome::ClientClosed;
            return Ok(Relayed::CLOSED);
        }
        self.ex.injected_ns += head_delay;
        let slow_head = self.ex.decision.slow_head_ns;
        if !self
            .write_out_paced(self.ex.response_head_len, slow_head)
            .await
        {
            self.ex.outcome = Outcome::ClientClosed;
            return Ok(Relayed::CLOSED);
        }
        self.ex.injected_ns += slow_head;
        // The ledger: from here on the body's time is the upstream's, or injected when paced.
        let body_from = Instant::now();
        if let Some((shape, reset)) = shape
            && !body.done
        {
            let relayed = self
                .relay_shaped_body(up, &mut body, shape, resp.dechunk)
                .await;
            let paced = shape.pace != Pace::Full || !shape.chunk_delay.is_zero();
            self.body_relayed(body_from, paced);
            match relayed {
                Ok(Shaped::Done) => {}
                Ok(Shaped::Cut { delivered }) => {
                    // Short of its framing: the client can tell it is not the whole body.
                    self.response_cut(reset, delivered);
                    self.ex.outcome = Outcome::Fault;
                    self.ex.response_body_len = body.data_len;
                    return Ok(Relayed::CLOSED);
                }
                Err(outcome) => {
                    self.ex.outcome = outcome;
                    self.ex.response_body_len = body.data_len;
                    return Ok(Relayed::CLOSED);
                }
            }
        } else if !body.done {
            let relayed = self.relay_response_body(up, &mut body, resp.dechunk).await;
            self.body_relayed(body_from, false);
            if let Err(outcome) = relayed {
                self.ex.outcome = outcome;
                self.ex.response_body_len = body.data_len;
                return Ok(Relayed::CLOSED);
            }
        }
        self.ex.response_body_len = body.data_len;
        Ok(Relayed {
            client_keep_alive: resp.client_keep_alive && whole_exchange,
            upstream_reusable: resp.upstream_keep_alive
                && whole_exchange
                && resp.body != BodyKind::CloseDelimited,
        })
    }

    /// The final response head, after relaying interim 1xx ones to HTTP/1.1 clients
    /// (RFC 9110 §15.2; HTTP/1.0 clients get none). On return its encoding is in `self.out`.
    async fn read_response_head(
        &mut self,
        up: &mut Conn,
        facts: RequestFacts,
        sent: &Sent,
    ) -> Result<ResponseFacts, Failed> {
        let fail = |why| Failed::new(why, sent.request_done);
        let max = self.w.config.limits.max_head_bytes + 1;
        let mut first_byte = !up.buffered().is_empty();
        loop {
            if !up.buffered().is_empty() {
                first_byte = true;
                self.ex.ttfb.get_or_insert_with(|| sent.at.elapsed());
            }
            match self.parse_response(up, facts) {
                Ok(Some(r)) if r.interim => {
                    up.consume(r.head_len);
                    let relay = facts.version == Version::Http11 && r.status != 100;
                    if relay && !self.write_out_to_client().await {
                        return Err(fail(UpstreamFailure::Error));
                    }
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(()) => return Err(fail(UpstreamFailure::Error)),
            }
            let res = up.fill(max, sent.deadline).await;
            if let Some(why) = read_failure(&res, !first_byte && sent.reused) {
                return Err(fail(why));
            }
        }
    }

    /// Appends the body bytes already buffered behind the head to `self.out` (only their
    /// payload when de-chunking), capturing the traced prefix.
    fn stage_buffered_body(
        &mut self,
        up: &mut Conn,
        body: &mut BodyReader,
        dechunk: bool,
    ) -> Result<(), BodyError> {
        self.response_body.clear();
        let limit = self.capture_limit;
        let (captured, out, scratch) = (&mut self.response_body, &mut self.out, &mut self.scratch);
        scratch.clear();
        let n = body.scan(up.buffered(), |d| {
            capture(captured, limit, d);
            if dechunk {
                scratch.extend_from_slice(d);
            }
        })?;
        if dechunk {
            out.extend_from_slice(scratch);
        } else {
            out.extend_from_slice(&up.buffered()[..n]);
        }
        up.consume(n);
        Ok(())
    }

    /// The plan's shaping of this response body, if any, and whether its cut is a reset. A
    /// de-chunked body (an HTTP/1.0 client) is shaped as the payload bytes it is written as.
    fn response_shape(&self, resp: &ResponseFacts) -> Option<(Shape, bool)> {
        let len = match resp.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        };
        self.body_shape(len)
    }

    /// The plan's shaping of a response body of length `len` (`None`: unknown), forwarded or
    /// synthetic, if any, and whether its cut is a reset.
    pub(super) fn body_shape(&self, len: Option<u64>) -> Option<(Shape, bool)> {
        let plan = &self.ex.decision;
        let (cut_at, reset) = match plan.response_cut {
            Cut::None => (None, false),
            Cut::Truncate(limit) => (limit.resolve(len), false),
            Cut::Reset(after) => (Some(after), true),
        };
        let shaped =
            plan.response_pace != Pace::Full || plan.chunk_delay_ns > 0 || cut_at.is_some();
        shaped.then_some((
            Shape {
                pace: plan.response_pace,
                chunk_delay: std::time::Duration::from_nanos(plan.chunk_delay_ns),
                cut_at,
                len,
            },
            reset,
        ))
    }

    /// Streams the response body through the fault's shaping; `Err` with the outcome when the
    /// upstream or the client broke off.
    async fn relay_shaped_body(
        &mut self,
        up: &mut Conn,
        body: &mut BodyReader,
        shape: Shape,
        dechunk: bool,
    ) -> Result<Shaped, Outcome> {
        let w = self.w;
        let limit = self.capture_limit;
        let captured = &mut self.response_body;
        let staged = dechunk.then_some(&mut self.scratch);
        let timeouts = RelayTimeouts {
            read: w.config.upstream_timeout,
            write: w.config.idle_timeout,
        };
        let relayed = relay_shaped(
            up,
            &mut self.client,
            body,
            timeouts,
            |d| capture(captured, limit, d),
            &w.timer,
            shape,
            staged,
        )
        .await;
        relayed.map_err(|e| match e {
            RelayError::Destination => Outcome::ClientClosed,
            RelayError::Framing => Outcome::UpstreamError,
            RelayError::Source { timed_out: true } => Outcome::UpstreamTimeout,
            RelayError::Source { timed_out: false } => Outcome::UpstreamError,
        })
    }

    /// Streams the rest of the response body; `Err` with the outcome when it broke off.
    async fn relay_response_body(
        &mut self,
        up: &mut Conn,
        body: &mut BodyReader,
        dechunk: bool,
    ) -> Result<(), Outcome> {
        let w = self.w;
        let limit = self.capture_limit;
        let captured = &mut self.response_body;
        let scratch = if dechunk {
            Some(&mut self.scratch)
        } else {
            None
        };
        // The upstream has --upstream-timeout per read; a client that stops reading,
        // --idle-timeout per write.
        let timeouts = RelayTimeouts {
            read: w.config.upstream_timeout,
            write: w.config.idle_timeout,
        };
        let relayed = relay(
            up,
            &mut self.client,
            body,
            timeouts,
            |d| capture(captured, limit, d),
            scratch,
        )
        .await;
        // An upstream that broke off mid-body closes the client too: it must not mistake what
        // it got for a whole response.
        match relayed {
            Ok(()) => Ok(()),
            Err(RelayError::Destination) => Err(Outcome::ClientClosed),
            Err(RelayError::Framing) => Err(Outcome::UpstreamError),
            Err(RelayError::Source { timed_out: true }) => Err(Outcome::UpstreamTimeout),
            Err(RelayError::Source { timed_out: false }) => Err(Outcome::UpstreamError),
        }
    }

    /// A `101 Switching Protocols`: relayed (its head into `self.out`) only as the answer to a
    /// WebSocket upgrade we forwarded; any other would be an upgrade we never asked for (502).
    fn switching_protocols(
        &mut self,
        head: &ResponseHead<'_, '_>,
        facts: RequestFacts,
    ) -> Result<ResponseFacts, ()> {
        if !facts.upgrade || !http::headers::upgrades_to_websocket(head.headers) {
            return Err(());
        }
        self.out.clear();
        let extra = [
            VIA,
            ("connection", &b"upgrade"[..]),
            ("upgrade", b"websocket"),
        ];
        http::encode::encode_response_head(
            head,
            BodyKind::Empty,
            false,
            facts.version,
            &extra,
            &mut self.out,
        );
        Ok(ResponseFacts {
            head_len: head.head_len,
            status: head.status,
            interim: false,
            upgraded: true,
            body: BodyKind::Empty,
            dechunk: false,
            client_keep_alive: false,
            upstream_keep_alive: false,
        })
    }

    /// The status of a complete response head at the front of `up`'s buffer, if one is there.
    pub(super) fn interim_status(&self, up: &Conn) -> Option<u16> {
        let mut headers = header_slots::<SMALL_HEADERS>();
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
        let mut headers = header_slots::<N>();
        let Some(head) =
            http::parse::parse_response(up.buffered(), &mut headers, &self.w.config.limits)
                .map_err(|_| ())?
        else {
            return Ok(None);
        };
        if head.status == 101 {
            return self.switching_protocols(&head, facts).map(Some);
        }
        if (100..200).contains(&head.status) {
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
            upgraded: false,
            body,
            dechunk,
            client_keep_alive,
            upstream_keep_alive,
        }))
    }
}

//! The answer phase: synthetic fault responses (prebuilt per snapshot) and proxy-generated
//! errors, each after the request body was read or given up on.
//!
//! It decides nothing: `decide` chose the fault, `forward` the error status.

use std::time::Instant;

use crate::{
    fault::{Answer, DEFAULT_BODY, FaultKind, FaultTable, GARBAGE, Side},
    http::{self, BodyKind, Version, body::BodyReader},
    net::{
        READ_BUF_BYTES,
        relay::{Pacer, Shape},
    },
    trace::Outcome,
};

use super::{
    Next, Session,
    record::{capture, nanos},
    request::RequestFacts,
};

/// Names why the proxy answered an error itself, when it knows (a TLS handshake's reason).
pub(super) const ERROR_REASON_HEADER: &str = "x-phantom-fast-error";

/// Each error rule's synthetic responses, encoded once per snapshot so answering allocates
/// nothing: per rule, the one for a keep-alive client and the one for a closing client (both
/// empty for a delay rule).
pub(crate) struct Synthetic(Vec<[Vec<u8>; 2]>);

impl Synthetic {
    /// Encodes the answers of every error rule of `table`.
    pub(super) fn compile(table: &FaultTable) -> Synthetic {
        let answers = (0..table.len())
            .map(|index| match table.synthetic(index) {
                Some(answer) => [true, false].map(|keep_alive| {
                    let headers: Vec<(&str, &[u8])> = answer
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_slice()))
                        .collect();
                    let mut out = Vec::new();
                    http::encode::encode_simple_response(
                        answer.status,
                        &answer.content_type,
                        &headers,
                        &answer.body,
                        keep_alive,
                        &mut out,
                    );
                    out
                }),
                None => [Vec::new(), Vec::new()],
            })
            .collect();
        Synthetic(answers)
    }

    /// Rule `rule`'s answer, for a client whose connection stays open or closes.
    fn get(&self, rule: usize, keep_alive: bool) -> &[u8] {
        &self.0[rule][usize::from(!keep_alive)]
    }
}

/// How reading a request body to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Discarded {
    /// All of it was read: the connection is in step for the next request.
    Whole,
    /// Its chunked framing broke.
    BadFraming,
    /// The client closed, failed or went silent for `--idle-timeout`.
    Gone,
}

/// Length of the head at the front of a response we built (through the blank line).
pub(super) fn head_len(bytes: &[u8]) -> usize {
    memchr::memmem::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |i| i + 4)
}

impl Session<'_> {
    /// Answers with the synthetic response of error rule `rule` of the pinned snapshot.
    /// `rule: None` (a header fault) sends the default body with the plan's status.
    pub(super) async fn answer_fault(&mut self, rule: Option<usize>, facts: RequestFacts) -> Next {
        let mut keep_alive = facts.keep_alive && facts.version == Version::Http11;
        // The request body is read and dropped, so the next request on the connection is found;
        // a client waiting for 100-continue is spared sending it and the connection closes.
        if facts.body != BodyKind::Empty {
            if facts.expect_continue {
                keep_alive = false;
            } else {
                match self.discard_request_body(facts.body).await {
                    Discarded::Whole => {}
                    // RFC 9112 §7.1: a body whose framing broke is answered 400, as when it is
                    // forwarded.
                    Discarded::BadFraming => {
                        self.ex.outcome = Outcome::BadRequest;
                        return self.answer_error(400).await;
                    }
                    Discarded::Gone => {
                        self.ex.outcome = Outcome::ClientClosed;
                        self.record();
                        return Next::Close;
                    }
                }
            }
        }
        let status = self.ex.decision.synthetic_status().unwrap_or(500);
        self.out.clear();
        match rule {
            Some(rule) => {
                let bytes = self.faults.synthetic.get(rule, keep_alive);
                self.out.extend_from_slice(bytes);
            }
            // Into the reused buffer: no allocation once it has grown.
            None => http::encode::encode_simple_response(
                status,
                "application/json",
                &[("x-fault-injected", b"phantom")],
                DEFAULT_BODY,
                keep_alive,
                &mut self.out,
            ),
        }
        let head_len = head_len(&self.out);
        // RFC 9110 §9.3.2: the answer to HEAD is the head alone.
        if facts.is_head {
            self.out.truncate(head_len);
        }
        self.response_body.clear();
        capture(
            &mut self.response_body,
            self.capture_limit,
            &self.out[head_len..],
        );
        self.ex.response_body_len = (self.out.len() - head_len) as u64;
        self.ex.response_head_len = head_len;
        self.ex.status = self.ex.decision.synthetic_status().unwrap_or(0);
        self.ex.outcome = Outcome::Fault;
        let body_len = self.ex.response_body_len;
        let shape = self.body_shape(Some(body_len));
        let (sent, cut) = if shape.is_none() && self.ex.decision.slow_head_ns == 0 {
            (self.write_out_to_client().await, false)
        } else {
            self.write_synthetic_shaped(head_len, shape).await
        };
        self.record();
        if sent && !cut && keep_alive && !self.w.shutdown.fired() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Writes the synthetic answer in `self.out` (head `head_len` bytes, then the body) through
    /// the plan's response shaping: the head paced by `slow-head`, the body by its pace and cut,
    /// as a forwarded body would be. Returns whether it was delivered and whether it was cut
    /// (the connection then closes; a `reset:after=` resets it).
    async fn write_synthetic_shaped(
        &mut self,
        head_len: usize,
        shape: Option<(Shape, bool)>,
    ) -> (bool, bool) {
        let started = Instant::now();
        // The body waits in the scratch buffer while the head goes; reused, so no allocation.
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.out[head_len..]);
        self.out.truncate(head_len);
        let slow_head = self.ex.decision.slow_head_ns;
        if !self.write_out_paced(head_len, slow_head).await {
            return (false, false);
        }
        let (shape, reset) = shape.unwrap_or((Shape::FULL, false));
        let mut pacer = Pacer::new(shape);
        let data = std::mem::take(&mut self.scratch);
        let idle = self.w.config.idle_timeout;
        let (res, data) = pacer
            .write_from(&mut self.client, data, idle, &self.w.timer)
            .await;
        self.scratch = data;
        // The paced time is injected, not the proxy's own.
        self.ex.injected_ns = self.ex.injected_ns.saturating_add(nanos(started.elapsed()));
        match res {
            Ok(false) => (true, false),
            Ok(true) => {
                self.response_cut(reset, pacer.sent());
                (true, true)
            }
            Err(_) => {
                self.ex.outcome = Outcome::ClientClosed;
                (false, false)
            }
        }
    }

    /// Carries out a connection fault instead of an answer: `reset` (RST via `SO_LINGER` 0),
    /// `close` (FIN), `garbage` (bytes that are not HTTP, then FIN) or `hang` (nothing until
    /// the client closes or `--idle-timeout` passes, then FIN). Always closes.
    pub(super) async fn answer_connection_fault(&mut self, answer: Answer) -> Next {
        self.ex.outcome = Outcome::Fault;
        self.ex.status = 0;
        match answer {
            Answer::Reset => self.client.reset_on_close(),
            Answer::Garbage => {
                self.out.clear();
                self.out.extend_from_slice(GARBAGE);
                self.ex.response_head_len = 0;
                self.write_out_to_client().await;
            }
            Answer::Hang => {
                let start = Instant::now();
                self.hang().await;
                // How long it actually held, for the record; the ledger counts it as injected.
                let held = nanos(start.elapsed());
                self.ex
                    .decision
                    .applied
                    .set_measured(FaultKind::Hang, Side::Response, held);
                self.ex.injected_ns = self.ex.injected_ns.saturating_add(held);
            }
            _ => {}
        }
        self.record();
        Next::Close
    }

    /// Waits, reading and dropping whatever the client sends, until it closes or
    /// `--idle-timeout` passes without a byte. Costs no CPU while it waits, and holds only a
    /// small wait buffer (10 000 hung connections do not pin 10 000 full read buffers).
    async fn hang(&mut self) {
        let idle = self.w.config.idle_timeout;
        self.park_for_wait();
        loop {
            let len = self.client.buffered().len();
            self.client.consume(len);
            let deadline = Instant::now() + idle;
            match self
                .client
                .fill_or(READ_BUF_BYTES, deadline, std::future::pending())
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads the request body to its end, keeping only the traced prefix.
    pub(super) async fn discard_request_body(&mut self, kind: BodyKind) -> Discarded {
        let mut reader = BodyReader::new(kind);
        let idle = self.w.config.idle_timeout;
        self.request_body.clear();
        loop {
            let limit = self.capture_limit;
            let scanned = reader.scan(self.client.buffered(), |data| {
                capture(&mut self.request_body, limit, data);
            });
            let Ok(n) = scanned else {
                return Discarded::BadFraming;
            };
            self.client.consume(n);
            if reader.done {
                self.ex.request_body_len = reader.data_len;
                return Discarded::Whole;
            }
            match self
                .client
                .fill(READ_BUF_BYTES, Instant::now() + idle)
                .await
            {
                Ok(n) if n > 0 => {}
                _ => return Discarded::Gone,
            }
        }
    }

    /// Reads the rest of the request body (when it is still small work) and answers `status`.
    pub(super) async fn drain_then_error(&mut self, facts: RequestFacts, status: u16) -> Next {
        if facts.body != BodyKind::Empty && !facts.expect_continue {
            let _ = self.discard_request_body(facts.body).await;
        }
        self.answer_error(status).await
    }

    /// Sends a proxy-generated error and closes.
    pub(super) async fn answer_error(&mut self, status: u16) -> Next {
        self.out.clear();
        self.unpark_out();
        match self.ex.error_reason {
            // The reason in a header and as the body, so the client and the trace both say why.
            Some(reason) => http::encode::encode_simple_response(
                status,
                "text/plain",
                &[(ERROR_REASON_HEADER, reason.as_bytes())],
                reason.as_bytes(),
                false,
                &mut self.out,
            ),
            None => http::encode::encode_error(status, &mut self.out),
        }
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
}

//! The request phase: reading the head within `--header-timeout`, where it goes ([`Target`]),
//! the full URL the fault table matches, the trace context, and the head sent upstream.
//!
//! It moves no body bytes: `forward` and `answer` do.

use std::time::Instant;

use crate::{
    config::{Config, Mode},
    http::{self, BodyKind, MAX_HEADERS_CAP, ParseError, RequestHead, Version, header_slots},
    net::is_timeout,
    trace,
};

use super::{
    Exchange, SMALL_HEADERS, Session, VIA,
    decide::{FAULT_HEADER, decide_request},
};
use crate::fault::RequestView;

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// The configured upstream (reverse mode).
    Upstream,
    /// The authority to connect to (forward mode): `url[from..to]`; over TLS for an
    /// absolute-form `https://` target.
    Authority { from: usize, to: usize, tls: bool },
    /// The real host of the intercepted (`--mitm`) tunnel this request came through, over TLS.
    Mitm,
}

/// What routing needs to know of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteCtx {
    /// Origin-form URLs get `https://`: the client spoke TLS to us, or the upstream is TLS.
    pub(super) https: bool,
    /// The request came through an intercepted CONNECT tunnel.
    pub(super) mitm: bool,
}

/// What the proxy needs to know of a parsed request once its head buffer is released.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestFacts {
    pub(super) head_len: usize,
    pub(super) is_head: bool,
    pub(super) is_connect: bool,
    /// Safe to send again on a fresh connection (RFC 9110 §9.2.2) and has no body.
    pub(super) retryable: bool,
    pub(super) version: Version,
    pub(super) body: BodyKind,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    /// A bodiless WebSocket upgrade (RFC 9110 §7.8): `Upgrade: websocket` goes upstream.
    pub(super) upgrade: bool,
    pub(super) target: Target,
}

/// Why no request head came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadEnd {
    /// Close silently: end of stream, idle timeout, shutdown, a socket error.
    Close,
    /// Answer this error status and close.
    Reject { status: u16 },
}

impl Session<'_> {
    /// Reads and parses the next request head.
    pub(super) async fn read_head(&mut self) -> Result<RequestFacts, HeadEnd> {
        let cfg = &*self.w.config;
        let mut head_deadline = None;
        loop {
            if !self.client.buffered().is_empty() {
                if head_deadline.is_none() {
                    let now = Instant::now();
                    self.ex = Exchange::new(now);
                    head_deadline = Some(now + cfg.header_timeout);
                    self.unpark_out();
                }
                match self.parse_head() {
                    Ok(Some(facts)) => return Ok(facts),
                    Ok(None) => {}
                    Err(e) => return Err(HeadEnd::Reject { status: e.status() }),
                }
            }
            let idle = head_deadline.is_none();
            // Draining: an idle connection closes, but a request the client already sent (one
            // pipelined behind the last, still in the socket) is in flight: it is served (its
            // answer says `connection: close`).
            let draining = self.w.shutdown.fired();
            if idle && draining && !self.client.peer_sent_more() {
                return Err(HeadEnd::Close);
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
            let read = if idle && !draining {
                // Nothing of the last exchange is needed any more: wait holding no full buffer.
                self.out.clear();
                self.park_for_wait();
                let stop = self.w.shutdown.wait(self.shutdown_slot);
                self.client.fill_or(max, deadline, stop).await
            } else {
                // The rest of a head: it stays in the small buffer unless it outgrows it.
                self.client
                    .fill_or(max, deadline, std::future::pending())
                    .await
            };
            match read {
                Ok(0) => return Err(HeadEnd::Close),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && !idle => {
                    self.ex.status = 408;
                    return Err(HeadEnd::Reject { status: 408 });
                }
                Err(_) => return Err(HeadEnd::Close),
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
        let mut headers = header_slots::<N>();
        let cfg = &*self.w.config;
        let buf = self.client.buffered();
        let Some(head) = http::parse::parse_request(buf, &mut headers, &cfg.limits)? else {
            return Ok(None);
        };
        let body = http::body::request_body_kind(&head)?;
        let method = head.method;
        let is_connect = method == "CONNECT";
        let ctx = RouteCtx {
            https: self.client_tls || self.w.upstream_name.is_some(),
            mitm: self.mitm.is_some(),
        };
        let (target, origin_target) = route(&cfg.mode, &head, is_connect, ctx, &mut self.url)?;
        self.ex
            .start_trace(head.headers, &mut self.w.id_rng.borrow_mut());
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
            upgrade: body == BodyKind::Empty
                && http::headers::is_websocket_upgrade(method, head.version, head.headers),
            target,
        };
        // Each exchange pins the snapshot it decides with, for its whole life.
        self.faults = self.w.table.pin();
        let view = RequestView::from_url(&self.url)
            .with_method(method.as_bytes())
            .with_headers(head.headers);
        (self.ex.decision, self.ex.holding) = decide_request(self.w, &self.faults, &view);
        if !is_connect {
            // The fault header is never forwarded, honoured or not.
            // Built (32 bytes a slot to clear) only when there is a fault header to strip.
            let mut kept;
            let stripped;
            let head = if head
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(FAULT_HEADER))
            {
                kept = [httparse::EMPTY_HEADER; N];
                let mut n = 0;
                for h in head.headers {
                    if !h.name.eq_ignore_ascii_case(FAULT_HEADER) {
                        kept[n] = *h;
                        n += 1;
                    }
                }
                stripped = RequestHead {
                    headers: &kept[..n],
                    ..head
                };
                &stripped
            } else {
                &head
            };
            let upstream = UpstreamHead {
                head,
                target: origin_target,
                facts,
            };
            upstream.encode(cfg, &self.url, &self.ex, &mut self.scratch, &mut self.out);
        }
        self.client.consume(facts.head_len);
        Ok(Some(facts))
    }
}

/// Where a request goes and the origin-form target to send upstream; writes the full URL
/// (RFC 9112 §3.3) into `url`.
///
/// # Errors
/// [`ParseError::Malformed`] for a target the mode cannot serve.
fn route<'b>(
    mode: &Mode,
    head: &RequestHead<'_, 'b>,
    is_connect: bool,
    ctx: RouteCtx,
    url: &mut Vec<u8>,
) -> Result<(Target, &'b str), ParseError> {
    url.clear();
    let target = head.target;
    if ctx.mitm {
        return route_mitm(head, is_connect, url);
    }
    match (mode, is_connect) {
        // RFC 9112 §3.2.3: CONNECT carries an authority-form target.
        (Mode::Forward, true) if target.contains('/') => Err(ParseError::Malformed),
        (Mode::Forward, true) => {
            url.extend_from_slice(target.as_bytes());
            Ok((
                Target::Authority {
                    from: 0,
                    to: url.len(),
                    tls: false,
                },
                "",
            ))
        }
        (Mode::Reverse(_), true) => Err(ParseError::Malformed),
        (mode, false) => match http::split_absolute_form(target) {
            // RFC 9112 §3.2.2: absolute-form; a proxy replaces Host with its authority.
            Some(abs)
                if abs.scheme.eq_ignore_ascii_case("http")
                    || abs.scheme.eq_ignore_ascii_case("https") =>
            {
                url.extend_from_slice(target.as_bytes());
                let from = abs.scheme.len() + "://".len();
                let to = from + abs.authority.len();
                let tls = abs.scheme.len() == "https".len();
                let routed = match mode {
                    Mode::Forward => Target::Authority { from, to, tls },
                    Mode::Reverse(_) => Target::Upstream,
                };
                Ok((routed, abs.path))
            }
            Some(_) => Err(ParseError::Malformed),
            // A forward proxy needs to know where to go.
            None if matches!(mode, Mode::Forward) => Err(ParseError::Malformed),
            None if target.starts_with('/') || target == "*" => {
                let authority = match mode {
                    Mode::Reverse(up) => up.authority.as_bytes(),
                    Mode::Forward => b"",
                };
                let host = http::headers::header(head.headers, "host").unwrap_or(authority);
                url.extend_from_slice(if ctx.https { b"https://" } else { b"http://" });
                url.extend_from_slice(host);
                url.extend_from_slice(target.as_bytes());
                Ok((Target::Upstream, target))
            }
            None => Err(ParseError::Malformed),
        },
    }
}

/// Inside an intercepted tunnel every request goes to the tunnel's host, over TLS; its URL is
/// `https://` + `Host` + the origin-form target (absolute-form is taken as it is).
fn route_mitm<'b>(
    head: &RequestHead<'_, 'b>,
    is_connect: bool,
    url: &mut Vec<u8>,
) -> Result<(Target, &'b str), ParseError> {
    let target = head.target;
    if is_connect {
        return Err(ParseError::Malformed);
    }
    if let Some(abs) = http::split_absolute_form(target) {
        url.extend_from_slice(target.as_bytes());
        return Ok((Target::Mitm, abs.path));
    }
    if !target.starts_with('/') {
        return Err(ParseError::Malformed);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has a Host; inside TLS it names the tunnel's host.
    let host = http::headers::header(head.headers, "host").ok_or(ParseError::Malformed)?;
    url.extend_from_slice(b"https://");
    url.extend_from_slice(host);
    url.extend_from_slice(target.as_bytes());
    Ok((Target::Mitm, target))
}

impl Exchange {
    /// W3C trace context: continue the caller's trace, start ours otherwise. Ids come from the
    /// worker's unseeded id RNG, never the fault RNG: `--seed` must not repeat trace ids, and
    /// whether a request carries `traceparent` must not shift the fault sequence.
    fn start_trace(&mut self, headers: &[httparse::Header<'_>], id_rng: &mut fastrand::Rng) {
        let incoming =
            http::headers::header(headers, "traceparent").and_then(trace::parse_traceparent);
        (self.trace_id, self.parent_span_id) = match incoming {
            Some((trace_id, parent, flags)) => {
                self.trace_flags = flags;
                (trace_id, Some(parent))
            }
            None => (trace::random_trace_id(id_rng), None),
        };
        self.span_id = trace::random_span_id(id_rng);
    }
}

/// The request head going upstream: the client's head, its origin-form target and the facts.
struct UpstreamHead<'a, 'h, 'b> {
    head: &'a RequestHead<'h, 'b>,
    target: &'a str,
    facts: RequestFacts,
}

impl UpstreamHead<'_, '_, '_> {
    /// Encodes the head into `out`, with `Host` for the destination, `Via` and our
    /// `traceparent` (staged in `scratch`).
    fn encode(
        &self,
        cfg: &Config,
        url: &[u8],
        ex: &Exchange,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        let headers = self.head.headers;
        let host: Option<&[u8]> = match (&cfg.mode, self.facts.target) {
            (_, Target::Authority { from, to, .. }) => Some(&url[from..to]),
            (_, Target::Mitm) => None,
            (Mode::Reverse(up), _) => match &up.host_override {
                Some(h) => Some(h.as_bytes()),
                None if http::headers::header(headers, "host").is_none() => {
                    Some(up.authority.as_bytes())
                }
                None => None,
            },
            (Mode::Forward, Target::Upstream) => None,
        };
        scratch.clear();
        trace::encode_traceparent(ex.trace_id, ex.span_id, ex.trace_flags, scratch);
        // Upgrade is hop-by-hop: only a WebSocket upgrade is asked for again, hop by hop.
        let extra = [
            VIA,
            ("traceparent", &scratch[..]),
            ("connection", b"upgrade"),
            ("upgrade", b"websocket"),
        ];
        let extra = if self.facts.upgrade {
            &extra[..]
        } else {
            &extra[..2]
        };
        out.clear();
        http::encode::encode_request_head(
            self.head,
            self.target,
            host,
            self.facts.body,
            extra,
            out,
        );
    }
}

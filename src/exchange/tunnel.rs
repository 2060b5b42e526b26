//! `CONNECT` tunnels: the proxy connects, answers 200, then bytes go both ways between the
//! client and the upstream until both sides close (or neither speaks for `--idle-timeout`).
//!
//! After the 200 it knows no HTTP: the tunnel carries whatever the client speaks.

use std::{
    cell::Cell,
    future::pending,
    time::{Duration, Instant},
};

use monoio::{
    io::{AsyncWriteRent, CancelableAsyncReadRent, CancelableAsyncWriteRent, Splitable},
    net::TcpStream,
};

use crate::{
    net::{
        Conn, READ_BUF_BYTES, Transport,
        transport::{Cancel, is_timeout, until, write_all},
    },
    trace::Outcome,
    upstream,
};

use super::{Next, Session, forward::connect_failure, request::RequestFacts, request::Target};

impl Session<'_> {
    /// `CONNECT`: connects, answers 200 and splices bytes both ways until either side closes.
    pub(super) async fn tunnel(&mut self, facts: RequestFacts) -> Next {
        let Target::Authority { from, to } = facts.target else {
            return self.answer_error(400).await;
        };
        let w = self.w;
        let authority = std::str::from_utf8(&self.url[from..to]).unwrap_or("");
        let Ok(addr) = upstream::resolve(&w.resolver, authority).await else {
            self.ex.outcome = Outcome::UpstreamError;
            return self.answer_error(502).await;
        };
        self.ex.upstream_addr = Some(addr);
        let deadline = Instant::now() + w.config.upstream_timeout;
        let transport = match upstream::connect(addr, deadline).await {
            Ok(transport) => transport,
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
        let mut up = Conn::new(transport, w.bufs.borrow_mut().get(READ_BUF_BYTES));
        self.pump_tunnel(&mut up).await;
        self.release_conn(up);
        self.record();
        Next::Close
    }

    /// Moves the bytes: first those the client sent right behind its `CONNECT` head (they
    /// belong to the tunnel), then both directions until the tunnel ends.
    async fn pump_tunnel(&mut self, up: &mut Conn) {
        let w = self.w;
        let idle = w.config.idle_timeout;
        let early = self.client.buffered().len();
        let relayed = early == 0
            || self
                .client
                .relay_to(up, early, Instant::now() + idle)
                .await
                .is_ok();
        if !relayed {
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
        self.ex.response_body_len = spliced.received;
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

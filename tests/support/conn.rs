//! A buffered raw TCP connection, the one both sides of a test use (client → proxy and
//! proxy → origin): reads never lose pipelined bytes or leftovers. HTTP framing on top of it is
//! in `client` (responses) and `origin` (requests); this file knows heads, chunks and closes only.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use super::IO_TIMEOUT;
use super::message::find;

/// How long a client's write may block (the proxy reading nothing) before the test fails. Only
/// the client side has one: an origin's blocked write is what some tests wait for the proxy to
/// end (its own timeout would end it first and let a stuck proxy pass).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `wait_closed` waits for the peer's FIN before calling the connection still open.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A head bigger than this is a framing bug in the peer, not something to keep buffering.
const MAX_TEST_HEAD_BYTES: usize = 1024 * 1024;

/// A TCP stream with a read buffer, so pipelined messages and leftovers are never lost.
pub struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
}

impl Conn {
    /// Wraps an accepted or connected stream; reads time out after `IO_TIMEOUT`.
    pub fn new(stream: TcpStream) -> Conn {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("setting a read timeout");
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to `addr` (the client side: writes, too, time out, after
    /// `CLIENT_WRITE_TIMEOUT`).
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))
            .expect("setting a write timeout");
        Conn::new(stream)
    }

    /// Changes the read timeout (e.g. to fail fast where an answer is due at once).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("setting a read timeout");
    }

    /// Writes all of `bytes` or panics.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| {
            panic!(
                "writing {} bytes (the peer read nothing for a write timeout, or went): {e}",
                bytes.len()
            )
        });
    }

    /// Writes `bytes`, ignoring errors: the peer may legitimately reject and close mid-write.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Fallible write, for origins whose peer may have gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes the write side (FIN), keeping reads open.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads once more into the buffer; returns the bytes read, 0 on EOF.
    pub(super) fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Reads through the first empty line. `Ok(None)`: clean EOF before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n\r\n") {
                return Ok(Some(self.take(searched + i + 4)));
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_TEST_HEAD_BYTES {
                return Err(invalid("head over 1 MiB without an empty line"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.take(n))
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(self.take(i + 2));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Reads a chunked body; returns (decoded, raw wire bytes including the trailer section).
    pub fn read_chunked(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut body = Vec::new();
        let mut raw = Vec::new();
        loop {
            let line = self.read_line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size_text = text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(&format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                loop {
                    let trailer = self.read_line()?;
                    raw.extend_from_slice(&trailer);
                    if trailer == b"\r\n" {
                        return Ok((body, raw));
                    }
                }
            }
            let data = self.read_exact_bytes(size + 2)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            body.extend_from_slice(&data[..size]);
            raw.extend_from_slice(&data);
        }
    }

    /// Reads everything until the peer closes (a reset after data counts as the end).
    pub fn read_until_close(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// `Ok(())` when the peer closes (EOF or reset) with no further bytes within a few seconds.
    pub fn wait_closed(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unread bytes before close: {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        self.set_timeout(CLOSE_TIMEOUT);
        match self.fill() {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!(
                "bytes instead of close: {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!("connection still open after {CLOSE_TIMEOUT:?}"))
            }
            Err(e) => Err(format!("read error instead of close: {e}")),
        }
    }
}

pub(super) fn invalid(msg: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.to_owned())
}

impl Conn {
    /// A second handle on the socket, for writing from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("cloning a socket handle")
    }

    /// Closes with `SO_LINGER` 0, so the peer sees a reset (RST) instead of a FIN.
    pub fn reset(self) {
        reset(self.stream);
    }
}

/// Closes `stream` with `SO_LINGER` 0: a reset (RST), no FIN and no TIME_WAIT on our side.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

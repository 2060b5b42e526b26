//! `phantom-fast faults list|set|add|rm|reset --admin ADDR`: the fault API from a shell, over a
//! blocking `std::net` connection, printing what the server answered (as toxiproxy-cli does).
//! It builds request text and reads one response; it keeps no state between calls.

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use crate::http::{self, Limits};

/// Connecting to the admin endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Waiting for the answer: a mutation answers after every worker applied it (at most 5 s), so
/// this leaves room for that.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// One call of the fault API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method.
    pub method: &'static str,
    /// The path, e.g. `/faults/r1`.
    pub path: String,
    /// A rules-file text body (sent as `text/plain`), if any.
    pub body: Option<String>,
}

impl Call {
    /// `faults list`: the live set as JSON.
    pub fn list() -> Call {
        Call {
            method: "GET",
            path: "/faults".into(),
            body: None,
        }
    }

    /// `faults set`: replaces the set with these rules-file lines.
    pub fn set(lines: &str) -> Call {
        Call {
            method: "PUT",
            path: "/faults".into(),
            body: Some(lines.to_owned()),
        }
    }

    /// `faults add`: adds one rule (a rules-file line: `[id=ID] SPEC [ramp=..] [schedule=..]`).
    pub fn add(line: &str) -> Call {
        Call {
            method: "POST",
            path: "/faults".into(),
            body: Some(line.to_owned()),
        }
    }

    /// `faults rm ID`, or every rule without one.
    pub fn rm(id: Option<&str>) -> Call {
        Call {
            method: "DELETE",
            path: id.map_or_else(|| "/faults".into(), |id| format!("/faults/{id}")),
            body: None,
        }
    }

    /// `faults reset`: back to the startup set.
    pub fn reset() -> Call {
        Call {
            method: "POST",
            path: "/faults/reset".into(),
            body: None,
        }
    }

    /// The request bytes, with `authorization` when a token is given.
    pub fn encode(&self, host: &str, token: Option<&str>) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\naccept: application/json\r\nconnection: close\r\n",
            self.method, self.path
        );
        if let Some(token) = token {
            out.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        let body = self.body.as_deref().unwrap_or_default();
        if self.body.is_some() {
            out.push_str("content-type: text/plain\r\n");
        }
        out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        out.into_bytes()
    }
}

/// Sends `call` to `admin` and returns the status and body.
///
/// # Errors
/// Connecting, writing or reading failed, or the answer was not HTTP.
pub fn send(admin: &str, token: Option<&str>, call: &Call) -> io::Result<(u16, Vec<u8>)> {
    let addr = admin
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{admin} resolves to no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    stream.write_all(&call.encode(admin, token))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    parse_answer(&answer)
}

/// Status and body of a `connection: close` answer (1xx interim heads skipped).
fn parse_answer(mut answer: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    loop {
        let mut headers = http::header_slots::<64>();
        let head = http::parse_response(answer, &mut headers, &Limits::default())
            .map_err(|e| io::Error::other(format!("the admin endpoint answered garbage: {e}")))?
            .ok_or_else(|| io::Error::other("the admin endpoint closed mid-answer"))?;
        let (status, len) = (head.status, head.head_len);
        answer = &answer[len..];
        if !(100..200).contains(&status) {
            return Ok((status, answer.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_encoded_as_the_api_expects() {
        let text =
            String::from_utf8(Call::add("error:503").encode("127.0.0.1:9", Some("t"))).unwrap();
        assert_eq!(
            text,
            "POST /faults HTTP/1.1\r\nhost: 127.0.0.1:9\r\naccept: application/json\r\n\
             connection: close\r\nauthorization: Bearer t\r\ncontent-type: text/plain\r\n\
             content-length: 9\r\n\r\nerror:503"
        );
        assert_eq!(Call::rm(Some("r1")).path, "/faults/r1");
        assert_eq!(Call::rm(None).path, "/faults");
    }

    #[test]
    fn answers_skip_interim_heads() {
        let answer =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(answer).unwrap(), (201, b"{}".to_vec()));
    }
}

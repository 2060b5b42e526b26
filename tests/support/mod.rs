//! The end-to-end harness: owns spawning the real `phantom-fast` binary, scripted origins on
//! loopback and a raw HTTP/1.1 client that frames responses the way the tests need them.
//! It does not validate HTTP (that is what the proxy is tested for) and uses no async runtime.
//!
//! Split by role, as DESIGN.md's "Tests and benches" asks:
//! - `proxy`: the process under test (start, stop, stderr, `/proc` probes);
//! - `client`: request builders, [`Response`], reading responses, [`assert_proxy_error`];
//! - `origin`: [`Req`], reading requests, response builders, [`Origin`] and [`RawOrigin`];
//! - `conn`: the buffered raw connection both roles read and write through;
//! - `message`: byte-level helpers (head search, payload patterns, checksums);
//! - `wait`: bounded waits (conditions, child processes, threads) and held loopback ports.
//!
//! TLS peers (a TLS client, a TLS origin) get their own file beside these. Every public name is
//! re-exported here, so tests import `crate::support::{…}` whatever file a helper lives in.

use std::sync::Mutex;
use std::time::Duration;

mod client;
mod conn;
mod message;
mod origin;
mod proxy;
mod wait;

pub use client::{Response, assert_proxy_error, get, request};
pub use conn::{Conn, reset};
pub use message::{checksum, contains, pattern};
pub use origin::{Origin, RawOrigin, Req, echo, response};
pub use proxy::{Proxy, trace_records};
pub use wait::{
    CMD_TIMEOUT, ReservedPort, WAIT_TIMEOUT, child_output_within, closed_port, find_line_within,
    join_within, output_within, wait_child, wait_until,
};

pub mod otlp;
pub mod seccomp;

/// How long a client or origin read may block before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting loop polls the child process or the stderr buffer.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread poisons nothing we cannot still read.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

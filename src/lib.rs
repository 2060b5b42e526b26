//! phantom-fast: a thread-per-core HTTP/1.1 proxy that injects latency and errors under load and
//! records every exchange in a memory-mapped ring file per core.
//!
//! # Layout
//! Data flows one way: transport → request head → fault decision → (delay | synthetic answer |
//! upstream exchange) → response → trace record. Each module knows nothing of those after it.
//! - [`cli`], [`config`], [`error`]: command line → validated [`config::Config`]; startup errors.
//! - [`ca`]: the MITM certificate authority: load or create, sign per-host leaves.
//! - [`http`]: pure HTTP/1.1: head parsing (httparse), request-target forms, body framing and
//!   the streaming `BodyReader`, hop-by-hop headers, encoding.
//! - [`fault`]: pure: the `--fault` grammar and the precompiled, allocation-free `FaultTable`.
//! - [`trace`]: rkyv records, the per-core ring file, and the `traces`/`stats` readers.
//! - [`net`]: monoio, no HTTP: the `Transport` (plain TCP or TLS, rustls driven sans-IO in
//!   [`net::tls`]) with cancelable reads and writes and the idle check, the buffered `Conn`
//!   with deadlines, body `relay`, the buffer pool and the precise delay `timer`.
//! - `upstream`: the per-core pool keyed by destination identity (`Dest`: address, TLS server
//!   name), connect, resolve (every address of a name, re-resolved after a TTL).
//! - `exchange`: one client connection's exchanges, a file per phase: `request` → `decide`
//!   (snapshot pinning, delay) → `answer` | `forward` → `response` → `record`; `tunnel` for
//!   `CONNECT` and WebSocket after a `101`.
//! - `worker`: per-core state: the fault-table slot, pools, RNGs, counters, ring, timer.
//! - `shutdown`: one worker's shutdown signal.
//! - [`control`]: the admin thread (`--admin`, `--faults-file`): probes, Prometheus metrics, the
//!   fault API, and the publisher workers take new fault snapshots from on their tick.
//! - [`server`]: threads, runtimes, listeners, the accept loop and the tick, shutdown.
//! - [`summary`]: the shutdown summary.
//! - [`export`]: OTLP export of the rings' records as spans, on its own thread or as `export`.
//!
//! # Threading model
//! The main thread parses the command line, compiles the fault table (with its synthetic
//! answers) into one `Arc` snapshot, opens the trace rings and resolves the upstream, then
//! starts one `pf-worker-{i}` thread per core. Each owns a monoio runtime (io_uring, or epoll
//! when io_uring is refused), its own `SO_REUSEPORT` listener, upstream pool, buffers and ring.
//! Only the `Config` and the fault snapshots cross threads (in `Arc`); inside a worker everything
//! is `!Send` in `Rc`/`RefCell`: no locks or atomics on the request path. The worker keeps its
//! current snapshot in an `Rc` slot that it swaps when the control plane wakes it with a new one;
//! every exchange pins the snapshot it started with, so one exchange never sees two tables. With
//! `--admin` or `--faults-file`, one `pf-admin` thread (blocking `std::net`, never a worker)
//! validates and compiles rule sets and publishes them; each worker acks the snapshot it swapped
//! in, and copies its counters into its own board slot when a scrape asks, which the scrape sums.
#![warn(missing_docs, unreachable_pub)]

pub mod ca;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
mod exchange;
pub mod export;
pub mod fault;
pub mod http;
pub mod net;
pub mod server;
mod shutdown;
pub mod summary;
pub mod trace;
mod upstream;
mod worker;

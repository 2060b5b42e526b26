//! phantom-fast: a thread-per-core HTTP/1.1 proxy that injects latency and errors under load and
//! records every exchange in a memory-mapped ring file per core.
//!
//! # Layout
//! Data flows one way: socket → request head → fault decision → (delay | synthetic answer |
//! upstream exchange) → response → trace record.
//! - [`cli`], [`config`], [`error`]: command line → validated [`config::Config`]; startup errors.
//! - [`http`]: pure HTTP/1.1: head parsing (httparse), body framing, hop-by-hop headers, encoding.
//! - [`fault`]: pure: the `--fault` grammar and the precompiled, allocation-free `FaultTable`.
//! - [`trace`]: rkyv records, the per-core ring file, and the `traces`/`stats` readers.
//! - `connection`: a buffered monoio TCP connection with deadlines, cancelled reads, and body
//!   streaming.
//! - `upstream`: the per-core pool of idle upstream connections and name resolution.
//! - `timer`: precise deadlines for injected delays (a timerfd per worker).
//! - `worker`: the per-core state exchanges share (pools, RNGs, counters, ring, shutdown).
//! - `proxy`: one client connection's exchanges: decide → delay → answer or forward → record.
//! - `tunnel`: `CONNECT` tunnels.
//! - [`export`]: OTLP export of the rings' records as spans, on its own thread or as `export`.
//! - [`server`]: threads, runtimes, listeners, the accept loop, shutdown and the summary.
//!
//! # Threading model
//! The main thread parses the command line, compiles the fault table, opens the trace rings and
//! resolves the upstream, then starts one `pf-worker-{i}` thread per core. Each owns a monoio
//! runtime (io_uring, or epoll when io_uring is refused), its own `SO_REUSEPORT` listener, upstream
//! pool, buffers and ring. Only the `Config` and what is compiled from it cross threads (in `Arc`);
//! inside a worker everything is `!Send` in `Rc`/`RefCell`: no locks or atomics on the request path.
#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod config;
mod connection;
pub mod error;
pub mod export;
pub mod fault;
pub mod http;
mod proxy;
pub mod server;
mod timer;
pub mod trace;
mod tunnel;
mod upstream;
mod worker;

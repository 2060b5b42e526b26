//! The one integration test binary: owns driving the real `phantom-fast` binary over loopback
//! against scripted origins, asserting raw bytes. It does not unit-test modules (see `src/`).
//!
//! Each area is a module; `support` holds the proxy process, origins and the raw client.

mod control;
mod deploy;
mod drivers;
mod export;
mod faults;
mod faults_model;
mod forward;
mod framing;
mod hostile;
mod keepalive;
mod regression;
mod rejects;
mod seccomp;
mod shutdown;
mod support;
mod tls;
mod trace;
mod trace_query;
mod trace_survival;
mod upstream_errors;
mod upstreams;
mod websocket;

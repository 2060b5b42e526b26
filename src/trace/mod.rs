//! TEMPORARY STUB (replaced by the trace helper's module before commit).
#![allow(missing_docs, dead_code, unused_variables)]
use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Delay,
    Error,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fault,
    BadRequest,
    UpstreamError,
    UpstreamTimeout,
    ClientClosed,
}
impl Outcome {
    pub fn as_str(self) -> &'static str {
        "ok"
    }
}
pub struct FaultHit<'a> {
    pub rule: u32,
    pub kind: FaultKind,
    pub spec: &'a str,
}
pub struct TraceEvent<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub upstream_ttfb_ns: Option<u64>,
    pub injected_delay_ns: u64,
    pub fault: Option<FaultHit<'a>>,
    pub method: &'a [u8],
    pub url: &'a [u8],
    pub version: &'a str,
    pub status: u16,
    pub request_head: &'a [u8],
    pub response_head: &'a [u8],
    pub request_body: &'a [u8],
    pub request_body_len: u64,
    pub response_body: &'a [u8],
    pub response_body_len: u64,
    pub client_addr: SocketAddr,
    pub upstream_addr: Option<SocketAddr>,
    pub outcome: Outcome,
}
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    None
}
pub fn encode_traceparent(trace_id: u128, span_id: u64, flags: u8, out: &mut Vec<u8>) {}
pub struct TraceConfig {
    pub dir: PathBuf,
    pub capacity_bytes: u64,
    pub reset: bool,
}
pub struct TraceWriter;
impl TraceWriter {
    pub fn open(cfg: &TraceConfig, worker: usize) -> Result<TraceWriter, TraceError> {
        Ok(TraceWriter)
    }
    pub fn write(&mut self, ev: &TraceEvent<'_>) {}
    pub fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
#[derive(Debug)]
pub struct TraceError;
impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("x")
    }
}
impl std::error::Error for TraceError {}
pub fn default_trace_dir() -> PathBuf {
    PathBuf::from("/tmp/pf")
}
#[derive(Debug, Clone)]
pub enum StatusFilter {
    Exact(u16),
    Class(u8),
}
pub fn parse_status_filter(s: &str) -> Result<StatusFilter, String> {
    Err(String::new())
}
pub struct Filter {
    pub status: Option<StatusFilter>,
    pub url: Option<String>,
    pub method: Option<String>,
    pub faulted: bool,
    pub since: Option<Duration>,
    pub limit: Option<usize>,
}
pub enum Format {
    Jsonl,
    Table,
}
pub fn write_traces(
    dir: &Path,
    filter: &Filter,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), TraceError> {
    Ok(())
}
pub fn write_stats(dir: &Path, filter: &Filter, out: &mut dyn Write) -> Result<(), TraceError> {
    Ok(())
}

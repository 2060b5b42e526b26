//! A scripted OTLP/HTTP collector for the export tests: owns accepting `POST /v1/traces`,
//! decoding each `ExportTraceServiceRequest` with prost and answering what the test scripts
//! (200, 503 with `Retry-After`, 400, or nothing at all).
//! It does not validate OTLP beyond decoding; the tests assert on the spans.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use std::process::{Child, Command, ExitStatus, Stdio};

use super::proxy::{BIN, EXIT_TIMEOUT, collect_stderr, signal, snapshot};
use super::wait::{ReservedPort, join_within, wait_child};
use super::{Conn, Req, response};

/// How often `wait_for_spans` looks again.
const POLL: Duration = Duration::from_millis(20);
/// How long a scripted silence (an empty answer) holds its connection open, answering nothing.
pub const SILENCE_HOLD: Duration = Duration::from_secs(60);

/// One export request as the collector received it.
#[derive(Clone, Debug)]
pub struct Export {
    /// When it arrived.
    pub at: Instant,
    /// The HTTP request.
    pub req: Req,
    /// Its body, decoded.
    pub body: ExportTraceServiceRequest,
}

type Answer = dyn Fn(usize) -> Vec<u8> + Send + Sync;

/// A collector on loopback; `answer(n)` gives the raw response to the n-th request (from 0).
pub struct Collector {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    /// A collector on a free port answering every request with `200` and an empty
    /// `ExportTraceServiceResponse`.
    pub fn start() -> Collector {
        Collector::scripted(|_| ok())
    }

    /// A collector on a free port answering with `answer`.
    pub fn scripted(answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a collector");
        Collector::serve(listener, Arc::new(answer))
    }

    /// A collector answering 200, on `port` (reserved by the test, the exporter already pointed
    /// at it while nothing listened there; held all along, so nothing else took it meanwhile).
    pub fn start_on(port: ReservedPort) -> Collector {
        Collector::serve(port.listen(), Arc::new(|_| ok()))
    }

    fn serve(listener: TcpListener, answer: Arc<Answer>) -> Collector {
        let addr = listener.local_addr().expect("collector local_addr");
        let exports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(Mutex::new(0usize));
        {
            let (exports, stop) = (Arc::clone(&exports), Arc::clone(&stop));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (exports, answer, count) = (
                        Arc::clone(&exports),
                        Arc::clone(&answer),
                        Arc::clone(&count),
                    );
                    thread::spawn(move || {
                        serve_conn(Conn::new(stream), &exports, &*answer, &count)
                    });
                }
            });
        }
        Collector {
            addr,
            exports,
            stop,
        }
    }

    /// The base URL to give `--otlp-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export request received so far.
    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().expect("collector lock").clone()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        spans_of(&self.exports())
    }

    /// Waits until at least `n` spans arrived; returns them (panics after `timeout`).
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<Span> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                started.elapsed() < timeout,
                "collector got {} of {n} spans within {timeout:?}",
                spans.len()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_conn(mut conn: Conn, exports: &Mutex<Vec<Export>>, answer: &Answer, count: &Mutex<usize>) {
    while let Ok(Some(req)) = conn.read_request(false) {
        let n = {
            let mut count = count.lock().expect("count lock");
            *count += 1;
            *count - 1
        };
        let reply = answer(n);
        let body = ExportTraceServiceRequest::decode(&req.body[..])
            .expect("the exporter sent a valid ExportTraceServiceRequest");
        exports.lock().expect("collector lock").push(Export {
            at: Instant::now(),
            req,
            body,
        });
        if reply.is_empty() {
            // Scripted silence: hold the connection open, answer nothing.
            thread::sleep(SILENCE_HOLD);
            return;
        }
        if conn.try_send(&reply).is_err() {
            return;
        }
    }
}

/// Spans of the requests the collector answered 2xx (what an exporter may count as sent)
/// and of the rest alike: every request carried its spans.
pub fn spans_of(exports: &[Export]) -> Vec<Span> {
    exports
        .iter()
        .flat_map(|e| &e.body.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

/// `200` with an empty `ExportTraceServiceResponse` (protobuf: zero bytes).
pub fn ok() -> Vec<u8> {
    response("200 OK", &[("content-type", "application/x-protobuf")], b"")
}

/// A span attribute's value.
pub fn attr<'s>(span: &'s Span, key: &str) -> Option<&'s Value> {
    find(&span.attributes, key)
}

/// An attribute's value in a list (a span's, an event's, a resource's).
pub fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// A string attribute.
pub fn text(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// An integer attribute.
pub fn int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// `phantom-fast export …` running in the background, its stderr collected.
pub struct ExportCmd {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl ExportCmd {
    /// Spawns `phantom-fast export ARGS`.
    pub fn start(args: &[&str]) -> ExportCmd {
        let mut child = Command::new(BIN)
            .arg("export")
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning phantom-fast export");
        let pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(pipe, &stderr, None))
        };
        ExportCmd {
            child: Some(child),
            stderr,
            reader: Some(reader),
        }
    }

    /// SIGTERM, then the exit status and the whole stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("present until stop or drop");
        signal(&child, "-TERM");
        let status = wait_child(&mut child, EXIT_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "export did not exit after SIGTERM; stderr:\n{}",
                snapshot(&self.stderr)
            )
        });
        if let Some(reader) = self.reader.take() {
            let _ = join_within(reader, EXIT_TIMEOUT, "export's stderr reader");
        }
        (status, snapshot(&self.stderr))
    }
}

impl Drop for ExportCmd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

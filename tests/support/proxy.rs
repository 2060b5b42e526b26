//! The proxy process: spawning the real `phantom-fast` binary on `127.0.0.1:0` with one worker
//! and a private trace dir, reading its stderr, stopping it, and `/proc` probes (RSS, CPU, fds).
//! It speaks no HTTP itself (see `client` and `origin`).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::wait::{join_within, wait_child};
use super::{POLL_INTERVAL, lock};

/// The binary under test, built by cargo for this test target.
pub(super) const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");
/// How long the proxy may take to print its `listening on` line (debug build, 2 busy cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the proxy may take to exit after SIGTERM or a bad flag; above the 5 s default grace.
pub(super) const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a run that must fail on its flags may take to exit (it should be instant).
const BAD_FLAGS_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `phantom-fast` on `127.0.0.1:<ephemeral>` with one worker and a private trace dir.
/// Dropping it SIGKILLs the process; `stop` is the graceful path.
pub struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    trace_dir: tempfile::TempDir,
}

impl Proxy {
    /// Spawns the binary with the harness flags plus `args` and waits for `listening on ADDR`.
    pub fn start(args: &[&str]) -> Proxy {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), args);
        cmd.stderr(Stdio::piped());
        Proxy::launch(cmd, trace_dir, &format!("{args:?}"))
    }

    /// Spawns `cmd` (stderr piped) and waits for its `listening on ADDR` line; `what` names the
    /// run in panic messages.
    pub(super) fn launch(mut cmd: Command, trace_dir: tempfile::TempDir, what: &str) -> Proxy {
        let mut child = cmd.spawn().expect("spawning the phantom-fast binary");
        let pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr_reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(pipe, &stderr, Some(tx)))
        };
        let started = Instant::now();
        loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(addr) => {
                    return Proxy {
                        child: Some(child),
                        addr,
                        stderr,
                        stderr_reader: Some(stderr_reader),
                        trace_dir,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().expect("polling the child") {
                        let _ = join_within(stderr_reader, EXIT_TIMEOUT, "the stderr reader");
                        panic!(
                            "phantom-fast {what} exited with {status} before listening; stderr:\n{}",
                            snapshot(&stderr)
                        );
                    }
                    if started.elapsed() > STARTUP_TIMEOUT {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "phantom-fast {what} printed no `listening on` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                            snapshot(&stderr)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed without the line: the process is exiting or exited.
                    let status = wait_child(&mut child, EXIT_TIMEOUT);
                    panic!(
                        "phantom-fast {what} closed stderr before listening (status {status:?}); stderr:\n{}",
                        snapshot(&stderr)
                    );
                }
            }
        }
    }

    /// `start` with extra environment variables for the process (e.g. `OTEL_EXPORTER_OTLP_*`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), args);
        cmd.envs(env.iter().copied()).stderr(Stdio::piped());
        Proxy::launch(cmd, trace_dir, &format!("{args:?} with {env:?}"))
    }

    /// Reverse mode in front of `upstream`, plus `args`.
    pub fn reverse(upstream: SocketAddr, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        Proxy::start(&all)
    }

    /// Runs the binary expecting it to exit by itself (bad flags); returns its status (`None`:
    /// still running after a few seconds, then killed) and its stderr.
    pub fn run_expect_exit(args: &[&str]) -> (Option<ExitStatus>, String) {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut child = command(trace_dir.path(), args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the phantom-fast binary");
        let pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(pipe, &stderr, None))
        };
        let status = wait_child(&mut child, BAD_FLAGS_EXIT_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = join_within(reader, EXIT_TIMEOUT, "the stderr reader");
        (status, snapshot(&stderr))
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's private trace directory (for `traces --trace-dir`).
    pub fn trace_dir(&self) -> &Path {
        self.trace_dir.path()
    }

    /// A fresh client connection to the proxy.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Everything the proxy printed on stderr so far.
    pub fn stderr(&self) -> String {
        snapshot(&self.stderr)
    }

    /// Waits until stderr contains `needle`; returns whether it did within `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if snapshot(&self.stderr).contains(needle) {
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGTERM, waits for the exit and returns the status and the whole stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self
            .child
            .take()
            .expect("the child is present until stop or drop");
        signal(&child, "-TERM");
        let status = wait_child(&mut child, EXIT_TIMEOUT);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "phantom-fast did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                snapshot(&self.stderr)
            );
        };
        // The pipe closes with the process, so the reader has the last lines once it ends.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = join_within(reader, EXIT_TIMEOUT, "the proxy's stderr reader");
        }
        (status, snapshot(&self.stderr))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) fn command(trace_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "1", "--trace-dir"])
        .arg(trace_dir)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("XDG_DATA_HOME", trace_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Appends every stderr line to `buf`; sends the first `listening on` address through `tx`.
pub(super) fn collect_stderr(
    pipe: impl Read,
    buf: &Mutex<String>,
    mut tx: Option<mpsc::Sender<SocketAddr>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        lock(buf).push_str(&text);
        if let Some(addr) = parse_listening(&text)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
        }
    }
}

/// `phantom-fast listening on 127.0.0.1:PORT (reverse → …)` → the address.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

pub(super) fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .expect("running kill(1)");
    assert!(
        status.success(),
        "kill {sig} {} failed: {status}",
        child.id()
    );
}

pub(super) fn snapshot(m: &Mutex<String>) -> String {
    lock(m).clone()
}

/// Clock ticks per second of `/proc/<pid>/stat` times when `getconf CLK_TCK` cannot be asked.
const DEFAULT_CLOCK_TICKS_PER_SEC: u64 = 100;

impl Proxy {
    /// The proxy's process id, for `/proc/<pid>/…` probes.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the child is present until stop or drop")
            .id()
    }

    /// The proxy's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The anonymous part of the resident set in KiB (`RssAnon`: heap and stacks, not the
    /// binary's code pages or the mmapped trace ring, which page in as new code paths run).
    pub fn rss_anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    /// A `kB` field of `/proc/<pid>/status`.
    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in {path}:\n{status}"))
    }

    /// User plus system CPU time the proxy has used so far (`/proc/<pid>/stat` utime + stime).
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        // There, field 3 (state) is index 0, so utime (14) and stime (15) are indices 11 and 12.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("no field {i} after the name in {path}: {stat:?}"))
        };
        let per_sec = clock_ticks_per_sec();
        let total = ticks(11) + ticks(12);
        Duration::from_millis(total * 1000 / per_sec)
    }

    /// How many file descriptors the proxy holds open (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("listing {path}: {e}"))
            .count()
    }

    /// `reverse`, with transparent huge pages disabled for the process (`PR_SET_THP_DISABLE`,
    /// kept across exec): mimalloc asks for THP, and one 2 MiB huge page faulting in at a random
    /// moment would swamp a memory bound of a few hundred KiB.
    pub fn reverse_without_thp(upstream: SocketAddr, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), &all);
        cmd.stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proxy::launch(cmd, trace_dir, &format!("without THP {all:?}"))
    }

    /// `reverse`, started with its CPU affinity narrowed to `cpu` alone (as `taskset -c CPU` or a
    /// container's cpuset would).
    pub fn reverse_on_cpu(upstream: SocketAddr, cpu: usize, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), &all);
        cmd.stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only fills a stack value
        // and calls sched_setaffinity(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proxy::launch(cmd, trace_dir, &format!("on CPU {cpu} {all:?}"))
    }

    /// `reverse`, with the open-file limit lowered to `max_fds` before the binary starts
    /// (`sh -c 'ulimit -n MAX_FDS; exec BIN ARGS…'`, so the pid is the proxy's own).
    pub fn reverse_with_fd_limit(upstream: SocketAddr, max_fds: u32, args: &[&str]) -> Proxy {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let plain = command(trace_dir.path(), &all);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(plain.get_args())
            .env("RUST_BACKTRACE", "1")
            .env("XDG_DATA_HOME", trace_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Proxy::launch(
            cmd,
            trace_dir,
            &format!("under `ulimit -n {max_fds}` {all:?}"),
        )
    }
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS_PER_SEC)
}

/// The trace records in `dir` (JSON Lines through `phantom-fast traces`), polled until there
/// are at least `want`; fails the test if they do not appear within `WAIT_TIMEOUT`.
pub fn trace_records(dir: &Path, want: usize) -> Vec<serde_json::Value> {
    use super::wait::{CMD_TIMEOUT, WAIT_TIMEOUT, output_within, wait_until};
    let mut got = Vec::new();
    let enough = wait_until(WAIT_TIMEOUT, || {
        let out = output_within(
            Command::new(BIN).arg("traces").arg("--trace-dir").arg(dir),
            CMD_TIMEOUT,
        );
        got = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        got.len() >= want
    });
    assert!(
        enough,
        "want {want} trace records within {WAIT_TIMEOUT:?}, have {}: {got:?}",
        got.len()
    );
    got
}

//! Threads, runtimes, listeners, the accept loop and shutdown.
//!
//! Everything blocking (binding, opening trace rings) happens in [`Server::bind`] on the calling
//! thread; workers only accept and hand connections to `exchange`. The summary they add up to at
//! shutdown is [`Summary`].

use std::{
    fmt,
    net::SocketAddr,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use monoio::{
    IoUringDriver, LegacyDriver, RuntimeBuilder, blocking::DefaultThreadPool, io::Canceller,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    config::{Config, Driver, Mode},
    control::{
        Admin, CompileFn, Publisher, WorkerLink,
        file::RulesFile,
        listener,
        rules::{LiveRule, default_id},
    },
    error::Error,
    exchange::{self, Faults, Stats},
    export::{ExportThread, Start},
    net::{timer::DelayTimer, transport::ECANCELED},
    summary::Summary,
    trace::{self, RingUsage, TraceConfig, TraceWriter},
    worker::Worker,
};

/// The generation of the fault table compiled from the command line (the control plane counts
/// its edits from here).
const STARTUP_GENERATION: u64 = 1;

/// Listen backlog per worker (monoio's default is 1024; bursts of new connections need more).
const LISTEN_BACKLOG: i32 = 4096;

/// How often a worker looks at the process-wide stop flag (not on the request path).
const STOP_POLL: Duration = Duration::from_millis(50);

/// While at `--max-connections`, how long accepting pauses before looking again.
const FULL_PAUSE: Duration = Duration::from_millis(5);

/// Accept errors (EMFILE, ENFILE, ENOBUFS) back off from this, doubling…
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// …up to this, so fd exhaustion never spins a core.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Threads resolving forward-mode names off the workers.
const RESOLVER_THREADS: usize = 2;

/// The I/O driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsedDriver {
    Uring,
    Epoll,
}

impl fmt::Display for UsedDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsedDriver::Uring => "io_uring",
            UsedDriver::Epoll => "epoll",
        })
    }
}

/// The admin thread's parts, built on the main thread by [`Server::bind`].
struct ControlPlane {
    admin: Admin<Faults>,
    publisher: Publisher<Faults>,
    /// `--admin`'s listener (absent with `--faults-file` alone).
    listener: Option<std::net::TcpListener>,
    file: Option<RulesFile>,
}

/// A bound, not yet running proxy.
pub struct Server {
    config: Arc<Config>,
    faults: Arc<Faults>,
    control: Option<ControlPlane>,
    admin_addr: Option<SocketAddr>,
    listeners: Vec<std::net::TcpListener>,
    traces: Vec<Option<TraceWriter>>,
    /// The rings' counters at startup: the summary reports what this run added.
    trace_start: RingUsage,
    local_addr: SocketAddr,
    driver: UsedDriver,
}

impl Server {
    /// Compiles the faults, opens the trace rings and binds one `SO_REUSEPORT` listener per
    /// worker (all on the same port, even when the configured port is 0).
    ///
    /// # Errors
    /// `Bind` when the address is taken or not ours, `Trace` when a ring cannot be opened,
    /// `Config` when io_uring was forced but is unavailable.
    pub fn bind(config: Config) -> Result<Server, Error> {
        let driver = match config.driver {
            Driver::Epoll => UsedDriver::Epoll,
            Driver::Uring if monoio::utils::detect_uring() => UsedDriver::Uring,
            Driver::Uring => {
                return Err(Error::Config(
                    "--driver uring: io_uring is not available here".into(),
                ));
            }
            Driver::Auto if monoio::utils::detect_uring() => UsedDriver::Uring,
            Driver::Auto => {
                eprintln!("phantom-fast: io_uring is not available here; using epoll");
                UsedDriver::Epoll
            }
        };
        let (faults, control) = match bind_control(&config)? {
            Some(control) => (control.publisher.latest().1, Some(control)),
            None => (
                Arc::new(Faults::compile(&config.faults, STARTUP_GENERATION)?),
                None,
            ),
        };
        let admin_addr = control
            .as_ref()
            .and_then(|c| c.listener.as_ref())
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|source| Error::Bind {
                addr: config.control.admin.unwrap_or(config.listen),
                source,
            })?;
        let traces = match &config.trace {
            Some(settings) => {
                let trace_config = TraceConfig {
                    dir: settings.dir.clone(),
                    capacity_bytes: settings.capacity_bytes,
                    reset: settings.reset,
                };
                TraceWriter::open_all(&trace_config, config.workers)?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            None => (0..config.workers).map(|_| None).collect(),
        };
        let mut addr = config.listen;
        let mut listeners = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let listener = bind_reuseport(addr).map_err(|source| Error::Bind { addr, source })?;
            addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { addr, source })?;
            listeners.push(listener);
        }
        let trace_start = config.trace.as_ref().map_or_else(RingUsage::default, |t| {
            trace::ring_usage(&t.dir, config.workers)
        });
        Ok(Server {
            config: Arc::new(config),
            faults,
            control,
            admin_addr,
            listeners,
            traces,
            trace_start,
            local_addr: addr,
            driver,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, with `--admin`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The startup banner: address, mode, workers, driver, then the compiled fault rules.
    pub fn banner(&self) -> String {
        let mode = match &self.config.mode {
            Mode::Reverse(up) => format!("reverse → {}", up.authority),
            Mode::Forward => "forward proxy".to_owned(),
        };
        let workers = self.config.workers;
        let plural = if workers == 1 { "" } else { "s" };
        let mut text = format!(
            "phantom-fast listening on {} ({mode}, {workers} worker{plural}, driver {})",
            self.local_addr, self.driver
        );
        for (i, rule) in self.faults.table().rules().iter().enumerate() {
            text.push_str(&format!("\n  fault[{i}] {rule}"));
        }
        match &self.config.trace {
            Some(t) => text.push_str(&format!("\n  traces → {}", t.dir.display())),
            None => text.push_str("\n  traces off"),
        }
        if let Some(addr) = self.admin_addr {
            text.push_str(&format!(
                "\n  admin on http://{addr} (/metrics /ready /live /faults)"
            ));
        }
        if let Some(path) = &self.config.control.faults_file {
            text.push_str(&format!(
                "\n  rules file {} (reloaded on change and SIGHUP)",
                path.display()
            ));
        }
        let forward = matches!(self.config.mode, Mode::Forward);
        for line in self.config.tls.banner_lines(forward) {
            text.push_str("\n  ");
            text.push_str(&line);
        }
        if let Some(export) = &self.config.export {
            text.push_str(&format!("\n  otlp → {}", export.endpoint.url));
        }
        text
    }

    /// Runs the workers until `stop` is set, then drains them within the grace period.
    ///
    /// # Errors
    /// `Runtime` when a worker's runtime cannot be built, `WorkerPanicked` for a bug.
    pub fn run(self, stop: Arc<AtomicBool>) -> Result<Summary, Error> {
        let Server {
            config,
            faults,
            control,
            listeners,
            traces,
            trace_start,
            driver,
            ..
        } = self;
        // The exporter reads the rings on its own thread, from what this run writes on.
        let exporter = match (&config.export, &config.trace) {
            (Some(export), Some(trace)) => Some(ExportThread::spawn(
                export.clone(),
                &trace.dir,
                Start::Newest,
            )?),
            _ => None,
        };
        let admin_exit = Arc::new(AtomicBool::new(false));
        let (links, admin_thread) = match control {
            Some(control) => {
                let links: Vec<_> = (0..config.workers)
                    .map(|i| Some(control.publisher.worker(i)))
                    .collect();
                let (stop, exit) = (Arc::clone(&stop), Arc::clone(&admin_exit));
                let ControlPlane {
                    mut admin,
                    listener,
                    file,
                    ..
                } = control;
                if file.is_some() {
                    // Installed here, after the SIGINT/SIGTERM handler (whose crate also takes
                    // SIGHUP as "terminate"): SIGHUP reloads the rules file instead.
                    RulesFile::install_sighup().map_err(|e| {
                        Error::Config(format!("cannot install the SIGHUP handler: {e}"))
                    })?;
                }
                if let Some(exporter) = &exporter {
                    admin.set_export_stats(Arc::clone(exporter.stats()));
                }
                let thread = std::thread::Builder::new()
                    .name("pf-admin".into())
                    .spawn(move || listener::serve(listener, admin, file, stop, exit))
                    .map_err(|source| Error::Runtime {
                        worker: config.workers,
                        source,
                    })?;
                (links, Some(thread))
            }
            None => ((0..config.workers).map(|_| None).collect(), None),
        };
        let resolver_pool = DefaultThreadPool::new(RESOLVER_THREADS);
        // Thread-per-core proper pins worker i to core i. With fewer workers than cores (e.g. one
        // worker beside a load generator) the scheduler places them better than a fixed pin.
        let cores = allowed_cpus();
        let pin = config.workers >= cores.len();
        let started = Instant::now();
        let handles: Vec<_> = listeners
            .into_iter()
            .zip(traces)
            .zip(links)
            .enumerate()
            .map(|(index, ((listener, trace), link))| {
                let (config, faults, stop) =
                    (Arc::clone(&config), Arc::clone(&faults), Arc::clone(&stop));
                let pool = resolver_pool.clone();
                let core = cores[index % cores.len()];
                std::thread::Builder::new()
                    .name(format!("pf-worker-{index}"))
                    .spawn(move || {
                        if pin && let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
                            eprintln!(
                                "phantom-fast: worker {index} not pinned to core {core}: {e}"
                            );
                        }
                        let io = WorkerIo {
                            listener,
                            trace,
                            link,
                        };
                        run_worker(index, driver, config, faults, io, stop, pool)
                    })
                    .map_err(|source| Error::Runtime {
                        worker: index,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut summary = Summary::new(faults.table().rules());
        let mut first_error = None;
        for (index, handle) in handles.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(stats)) => summary.add(&stats),
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(Error::WorkerPanicked(index));
                }
            }
        }
        summary.elapsed = started.elapsed();
        admin_exit.store(true, Ordering::Release);
        if let Some(thread) = admin_thread
            && thread.join().is_err()
        {
            eprintln!("phantom-fast: the admin thread panicked (a bug: please report it)");
        }
        summary.traces = config
            .trace
            .as_ref()
            .map(|t| trace::ring_usage(&t.dir, config.workers).since(trace_start));
        if let Some(exporter) = exporter {
            eprintln!("phantom-fast {}", exporter.finish().summary());
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// Binds, announces, serves until SIGINT/SIGTERM, then prints the summary on stderr.
///
/// # Errors
/// As [`Server::bind`] and [`Server::run`].
pub fn run_until_signal(config: Config) -> Result<(), Error> {
    let server = Server::bind(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| Error::Config(format!("cannot install the signal handler: {e}")))?;
    eprintln!("{}", server.banner());
    let summary = server.run(stop)?;
    eprint!("{summary}");
    Ok(())
}

/// A listening socket with `SO_REUSEPORT`, so each worker accepts on its own queue.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The control plane when `--admin` or `--faults-file` asks for it: the startup rules (the
/// `--fault` rules, then the file's), the admin state with its publisher, the listener.
///
/// # Errors
/// `Config` for a bad rules file (exit 2), `Bind` when the admin address is taken.
fn bind_control(config: &Config) -> Result<Option<ControlPlane>, Error> {
    let settings = &config.control;
    if settings.admin.is_none() && settings.faults_file.is_none() {
        return Ok(None);
    }
    let flags: Vec<LiveRule> = config
        .faults
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            // A flag's own `id=` names it, as in a rules file; else its position's default.
            let mut rule = rule.clone();
            LiveRule {
                id: rule.id.take().unwrap_or_else(|| default_id(index)),
                rule,
                ramp: None,
                schedule: None,
            }
        })
        .collect();
    let (file, startup) = match &settings.faults_file {
        Some(path) => {
            let (file, startup) = RulesFile::load(path, flags).map_err(Error::Config)?;
            (Some(file), startup)
        }
        None => (None, flags),
    };
    let compile: CompileFn<Faults> = Box::new(Faults::compile_with_ids);
    let (admin, publisher) = Admin::new(
        config.workers,
        startup,
        compile,
        settings.admin_token.clone(),
    )
    .map_err(Error::Config)?;
    let listener = settings
        .admin
        .map(|addr| listener::bind(addr).map_err(|source| Error::Bind { addr, source }))
        .transpose()?;
    Ok(Some(ControlPlane {
        admin,
        publisher,
        listener,
        file,
    }))
}

/// The CPUs this process may run on (its affinity mask: `taskset`, a container's cpuset), in
/// order; worker i is pinned to the i-th, never to a CPU outside the mask. `[0]` if unknown.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is valid for writes of `size` bytes for the call.
    let cpus: Vec<usize> = if unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0 {
        // SAFETY: CPU_ISSET reads the set filled above, for indices below its capacity.
        (0..size * 8)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// What one worker owns besides its share of the config: its listener, its ring, its link to
/// the control plane.
struct WorkerIo {
    listener: std::net::TcpListener,
    trace: Option<TraceWriter>,
    link: Option<WorkerLink<Faults>>,
}

fn run_worker(
    index: usize,
    driver: UsedDriver,
    config: Arc<Config>,
    faults: Arc<Faults>,
    io: WorkerIo,
    stop: Arc<AtomicBool>,
    pool: DefaultThreadPool,
) -> Result<Stats, Error> {
    let WorkerIo {
        listener,
        mut trace,
        link,
    } = io;
    // Here, not where the ring was opened: each worker faults its own ring in, in parallel.
    if let Some(trace) = trace.as_mut() {
        trace.prefault();
    }
    let runtime_error = |source| Error::Runtime {
        worker: index,
        source,
    };
    let serve = async move {
        let timer = DelayTimer::start(driver == UsedDriver::Uring)?;
        let worker = Rc::new(Worker::new(
            index,
            config,
            Arc::clone(&faults),
            trace,
            timer,
        ));
        let control = link.is_some();
        serve_worker(Rc::clone(&worker), listener, stop, link).await?;
        if let Some(trace) = worker.trace.borrow_mut().as_mut() {
            let _ = trace.flush();
        }
        let rules = worker.table.pin().table().len();
        // With a control plane the rule set may have changed: the summary counts by id, as
        // `/metrics` does.
        let by_id = if control {
            worker.rule_totals()
        } else {
            Vec::new()
        };
        let mut stats = std::mem::replace(&mut *worker.stats.borrow_mut(), Stats::new(rules));
        stats.by_id = by_id;
        Ok::<Stats, std::io::Error>(stats)
    };
    match driver {
        UsedDriver::Uring => uring_runtime(true, &pool)
            .or_else(|_| uring_runtime(false, &pool))
            .map_err(runtime_error)?
            .block_on(serve),
        UsedDriver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(pool.clone()))
            .build()
            .map_err(runtime_error)?
            .block_on(serve),
    }
    .map_err(runtime_error)
}

/// A worker's io_uring runtime. `tuned` asks the kernel for a ring only this thread touches:
/// completions run when the worker enters the kernel anyway instead of interrupting it
/// (`COOP_TASKRUN`, Linux 5.19) and submission skips cross-thread locking (`SINGLE_ISSUER`,
/// 6.0). Measured at saturation (wrk -c64, one worker): 15.3 → 11.2 µs of kernel time per
/// request, 50 k → 61 k req/s. Older kernels refuse the flags; the caller then builds a plain one.
fn uring_runtime(
    tuned: bool,
    pool: &DefaultThreadPool,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>> {
    let mut ring = io_uring::IoUring::builder();
    if tuned {
        ring.setup_coop_taskrun().setup_single_issuer();
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(ring)
        .enable_timer()
        .attach_thread_pool(Box::new(pool.clone()))
        .build()
}

/// Until the control plane has news for this worker or `wait` has passed.
async fn news_or_sleep(link: &mut WorkerLink<Faults>, wait: Duration) {
    let mut sleep = std::pin::pin!(monoio::time::sleep(wait));
    std::future::poll_fn(|cx| {
        if link.poll_news(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        sleep.as_mut().poll(cx)
    })
    .await;
}

/// Accepts until stopped, then lets in-flight connections finish within the grace period.
/// With a control plane, the worker wakes for its news (a new fault snapshot, a report asked
/// for); the first snapshot is applied before accepting (`/ready` waits for it).
async fn serve_worker(
    worker: Rc<Worker>,
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
    mut link: Option<WorkerLink<Faults>>,
) -> std::io::Result<()> {
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let canceller = Canceller::new();
    let accepting = monoio::spawn(accept_loop(
        Rc::clone(&worker),
        listener,
        canceller.handle(),
        Arc::clone(&stop),
    ));
    if let Some(link) = &mut link {
        worker.tick(link, true);
    }
    // The control plane wakes the worker when it has news (a snapshot, a report asked for), so
    // an idle worker wakes only to look at the stop flag: no tick of its own (a 5 ms one cost an
    // idle worker 9 ms of CPU a second in wake-ups).
    while !stop.load(Ordering::Relaxed) {
        match &mut link {
            Some(link) => {
                news_or_sleep(link, STOP_POLL).await;
                worker.tick(link, false);
            }
            None => monoio::time::sleep(STOP_POLL).await,
        }
    }
    canceller.cancel();
    accepting.await;
    worker.shutdown.fire();
    let deadline = Instant::now() + worker.config.grace;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
        if let Some(link) = &mut link {
            // While draining, edits still apply (a PUT answers) and `/metrics` stays fresh.
            worker.tick(link, true);
        }
    }
    if let Some(link) = &mut link {
        worker.tick(link, true);
    }
    // From here on this worker applies nothing: dropping its link tells the admin thread not
    // to wait for its ack of a later edit.
    drop(link);
    let idle: Vec<_> = worker.pool.borrow_mut().drain().collect();
    drop(idle);
    Ok(())
}

/// Accepts until `cancel` fires (the accept in flight is cancelled) or, while paused at
/// `--max-connections` with no accept in flight, until `stop` is set: the worker's drain waits
/// for this loop to end, so a pause must look at the stop itself (else a worker kept at its
/// limit by keep-alive clients never drains; SIGTERM under load was seen not to stop a proxy).
async fn accept_loop(
    worker: Rc<Worker>,
    listener: monoio::net::TcpListener,
    cancel: monoio::io::CancelHandle,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        if worker.active.get() >= worker.config.max_connections {
            monoio::time::sleep(FULL_PAUSE).await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            continue;
        }
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // Counted here, before the next accept is armed, so the limit is exact.
                worker.active.set(worker.active.get() + 1);
                monoio::spawn(exchange::serve(Rc::clone(&worker), stream, peer));
            }
            Err(e) if e.raw_os_error() == Some(ECANCELED) => return,
            Err(e) => {
                eprintln!("phantom-fast: accept failed ({e}); retrying in {backoff:?}");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

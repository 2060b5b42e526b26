//! Startup and fatal errors, each carrying the context a person needs to act on it.
//!
//! Request-path failures are not here: they are values (`proxy::Outcome`) that become responses
//! and trace records, never errors that tear a worker down.

use std::{fmt, io, net::SocketAddr, path::PathBuf};

use crate::{ca::CaError, fault::SpecError, net::tls::TlsFileError, trace::TraceError};

/// Everything that stops the process before or while it serves.
///
/// `main` prints the chain once and exits with status 2 for bad input, 1 otherwise.
#[derive(Debug)]
pub enum Error {
    /// A command-line value that parses but cannot be used (e.g. zero workers).
    Config(String),
    /// A `--fault` spec that does not follow the grammar.
    Fault(SpecError),
    /// A host name that did not resolve at startup.
    Resolve {
        /// The `HOST:PORT` as given.
        authority: String,
        /// Why resolution failed.
        source: io::Error,
    },
    /// The listener could not be bound.
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A worker's runtime could not be built.
    Runtime {
        /// Which worker.
        worker: usize,
        /// The OS error (io_uring setup, epoll, eventfd).
        source: io::Error,
    },
    /// A trace ring could not be created, opened or read.
    Trace(TraceError),
    /// Writing output (e.g. `traces` to a closed pipe).
    Output {
        /// What was being written.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The admin endpoint of a running proxy could not be reached or failed (`faults`).
    Admin(String),
    /// A worker thread panicked: always a bug.
    WorkerPanicked(usize),
    /// A `--tls-cert`, `--tls-key` or `--upstream-ca` file that cannot be used.
    TlsFile(TlsFileError),
    /// The MITM CA could not be loaded or created.
    Ca(CaError),
    /// The trace directory could not be created.
    TraceDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    /// Whether the error is the user's input (exit status 2) rather than the environment (1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::Fault(_)
            | Error::Resolve { .. }
            | Error::TlsFile(_)
            | Error::Ca(CaError::Invalid { .. }) => true,
            Error::Trace(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) | Error::Admin(msg) => f.write_str(msg),
            Error::Fault(e) => write!(f, "{e}"),
            Error::Resolve { authority, .. } => write!(f, "cannot resolve upstream {authority:?}"),
            Error::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
            Error::Runtime { worker, .. } => {
                write!(f, "cannot start the runtime of worker {worker}")
            }
            Error::Trace(e) => write!(f, "{e}"),
            Error::Output { what, .. } => write!(f, "cannot write {what}"),
            Error::WorkerPanicked(w) => write!(f, "worker {w} panicked (a bug: please report it)"),
            Error::TraceDir { path, .. } => {
                write!(f, "cannot create the trace directory {}", path.display())
            }
            Error::TlsFile(e) => write!(f, "{e}"),
            Error::Ca(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. }
            | Error::Bind { source, .. }
            | Error::Runtime { source, .. }
            | Error::Output { source, .. }
            | Error::TraceDir { source, .. } => Some(source),
            Error::Fault(e) => Some(e),
            Error::Trace(e) => Some(e),
            Error::TlsFile(e) => Some(e),
            Error::Ca(e) => Some(e),
            Error::Config(_) | Error::Admin(_) | Error::WorkerPanicked(_) => None,
        }
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Fault(e)
    }
}

impl From<TraceError> for Error {
    fn from(e: TraceError) -> Self {
        Error::Trace(e)
    }
}

impl From<TlsFileError> for Error {
    fn from(e: TlsFileError) -> Self {
        Error::TlsFile(e)
    }
}

impl From<CaError> for Error {
    fn from(e: CaError) -> Self {
        Error::Ca(e)
    }
}

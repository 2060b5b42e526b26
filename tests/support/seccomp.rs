//! Running the real binary the way a container runtime's default seccomp profile does (Docker's,
//! containerd 2's RuntimeDefault): `io_uring_setup`, `io_uring_enter` and `io_uring_register`
//! fail with EPERM. Owns building that filter and installing it between fork and exec.
//! It does not check what the proxy does under it (`tests/seccomp.rs` does).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::Proxy;
use super::proxy::command;

/// A filter allowing every syscall except the three io_uring ones, which fail with EPERM.
fn io_uring_denied() -> BpfProgram {
    let rules = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH).expect("a seccompiler architecture");
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .expect("compiling the io_uring filter")
}

/// `cmd` with the io_uring filter installed in the child before `exec`.
fn deny_io_uring(cmd: &mut Command) {
    let program = io_uring_denied();
    // SAFETY: the closure runs between fork and exec in the child; it only makes the prctl and
    // seccomp syscalls on a program compiled before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
}

impl Proxy {
    /// `start`, under the io_uring-denying filter.
    pub fn start_without_io_uring(args: &[&str]) -> Proxy {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), args);
        cmd.stderr(Stdio::piped());
        deny_io_uring(&mut cmd);
        Proxy::launch(cmd, trace_dir, &format!("without io_uring {args:?}"))
    }

    /// `run_expect_exit`'s one-shot run under the filter: the exit code and stderr.
    pub fn run_without_io_uring(args: &[&str]) -> (Option<i32>, String) {
        let trace_dir = tempfile::tempdir().expect("creating a temp trace dir");
        let mut cmd = command(trace_dir.path(), args);
        deny_io_uring(&mut cmd);
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .expect("running phantom-fast under the filter");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

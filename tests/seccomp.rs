//! io_uring under container seccomp: owns checking that the real binary, run with the io_uring
//! syscalls refused (EPERM, as Docker's default profile and containerd 2's RuntimeDefault do),
//! says it runs on epoll and serves requests all the same.
//! It does not test the epoll driver's behaviour in depth (every other test can run on it).

use crate::support::{Origin, Proxy, request};

#[test]
fn io_uring_refused_by_seccomp_falls_back_to_epoll_and_serves() {
    let origin = Origin::echo();
    let upstream = origin.addr().to_string();
    let proxy = Proxy::start_without_io_uring(&["--upstream", &upstream]);
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("io_uring is not available here; using epoll"),
        "{stderr}"
    );
    assert!(stderr.contains("driver epoll"), "banner: {stderr}");
    for i in 0..20 {
        let target = format!("/seccomp/{i}");
        let mut conn = proxy.connect();
        let resp = conn.roundtrip(&request("GET", &target, "test.local", &[], b""));
        assert!(
            resp.status_line().contains(" 200 "),
            "{}",
            resp.status_line()
        );
        assert_eq!(resp.text(), format!("GET {target}"));
    }
    let (status, stderr) = proxy.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn io_uring_forced_under_seccomp_is_refused_at_startup() {
    // Proves the filter bites: forcing io_uring under it is a startup error (exit 2), not a
    // proxy that silently runs on io_uring anyway.
    let (code, stderr) = Proxy::run_without_io_uring(&["--driver", "uring"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("io_uring is not available"), "{stderr}");
}

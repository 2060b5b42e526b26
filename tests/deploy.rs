//! What the Kubernetes manifests in scripts/deploy/k8s rely on, checked on the real binary: the
//! probes' paths answer on the admin port, and a rules file mounted from a ConfigMap reloads
//! when the kubelet swaps it (it replaces a `..data` symlink atomically; the file itself never
//! changes in place).
//! It does not test the control plane itself (`tests/control.rs` does) nor render manifests
//! (`scripts/k8s-validate.sh` does).

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Conn, Origin, Proxy, request};

/// The manifests' probes answer within this (kubelet's default probe timeout is 1 s; the proxy
/// is a debug build on busy cores here).
const WAIT: Duration = crate::support::WAIT_TIMEOUT;

/// The admin address the banner prints.
fn admin_addr(proxy: &Proxy) -> SocketAddr {
    assert!(
        proxy.wait_for_stderr("admin on http://", WAIT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    stderr
        .split("admin on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("admin address in {stderr}"))
}

/// A ConfigMap volume as the kubelet lays it out: `faults.txt -> ..data/faults.txt`,
/// `..data -> ..<version>`.
fn configmap_version(dir: &Path, version: &str, faults: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).expect("version dir");
    std::fs::write(versioned.join("faults.txt"), faults).expect("faults.txt");
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if !dir.join("faults.txt").exists() {
        symlink("..data/faults.txt", dir.join("faults.txt")).expect("faults.txt link");
    }
}

#[test]
fn probes_answer_and_a_configmap_swap_changes_the_faults() {
    let origin = Origin::echo();
    let cm = tempfile::tempdir().expect("configmap dir");
    configmap_version(cm.path(), "v1", "error:503:/api\n");
    let faults_file = cm.path().join("faults.txt");
    let upstream = origin.addr().to_string();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--admin",
        "127.0.0.1:0",
        "--faults-file",
        faults_file.to_str().expect("utf-8 path"),
    ]);
    let admin = admin_addr(&proxy);
    // As the kubelet does: probe until ready (every worker serving), then expect it to stay so.
    let started = Instant::now();
    for (path, body) in [("/ready", "ready"), ("/live", "live")] {
        loop {
            let resp = Conn::connect(admin).roundtrip(&request("GET", path, "admin", &[], b""));
            if resp.status_line().contains(" 200 ") {
                assert!(resp.text().starts_with(body), "{path}: {}", resp.text());
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{path}: {} after {WAIT:?}",
                resp.status_line()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    let status = |proxy: &Proxy| {
        let resp = proxy
            .connect()
            .roundtrip(&request("GET", "/api/x", "test.local", &[], b""));
        resp.status_line()
    };
    assert!(
        status(&proxy).contains(" 503 "),
        "the ConfigMap's first version applies"
    );
    // `kubectl apply` of a new ConfigMap: the kubelet writes ..v2 and swaps ..data.
    configmap_version(cm.path(), "v2", "error:500:/api\n");
    std::fs::remove_dir_all(cm.path().join("..v1")).expect("old version removed");
    let started = Instant::now();
    loop {
        let line = status(&proxy);
        if line.contains(" 500 ") {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "still {line} after the swap; stderr:\n{}",
            proxy.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (exit, stderr) = proxy.stop();
    assert!(exit.success(), "{stderr}");
}

//! TLS end to end: startup validation of the TLS flags, the MITM CA and `phantom-fast ca`, with
//! openssl as the independent judge of what we produce.
//!
//! Test certificates are made at test time with rcgen (a CA, leaves: good, wrong name, expired,
//! self-signed); nothing is checked in.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::support::{CMD_TIMEOUT, Proxy, WAIT_TIMEOUT, find_line_within, output_within};

const BIN: &str = env!("CARGO_BIN_EXE_phantom-fast");

/// A throwaway PKI in a temp dir: `ca.pem`, and per leaf `<name>.pem` + `<name>-key.pem`.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("a temp dir");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "phantom-fast test CA");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        TestPki { dir, issuer }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes leaf `file` for `names` (signed by the test CA, or self-signed), optionally
    /// expired; returns (cert path, key path).
    pub fn leaf(&self, file: &str, names: &[&str], how: Leaf) -> (PathBuf, PathBuf) {
        if how == Leaf::Rsa {
            return self.rsa_leaf(file, names);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if how == Leaf::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = match how {
            Leaf::SelfSigned => params.self_signed(&key).unwrap(),
            _ => params.signed_by(&key, &self.issuer).unwrap(),
        };
        let (cert_path, key_path) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

impl TestPki {
    /// An RSA leaf, self-signed by openssl (ring, behind rcgen, cannot generate RSA keys).
    fn rsa_leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}-key.pem")),
        );
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let out = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=rsa-test",
            "-addext",
            &format!("subjectAltName={san}"),
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    }
}

/// How a test leaf is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Good,
    /// RSA 2048, self-signed (openssl).
    Rsa,
    Expired,
    SelfSigned,
}

/// `openssl ARGS` to its exit (bounded; scripts/tls-deps.sh installs openssl).
fn openssl(args: &[&str]) -> Output {
    output_within(Command::new("openssl").args(args), CMD_TIMEOUT)
}

fn ca_subcommand(xdg: &Path, extra: &[&str]) -> Output {
    output_within(
        Command::new(BIN)
            .arg("ca")
            .args(extra)
            .env("XDG_DATA_HOME", xdg),
        CMD_TIMEOUT,
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_tls_files_exit_2_before_binding_naming_the_file() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("good", &["localhost"], Leaf::Good);
    let (_, other_key) = pki.leaf("other", &["localhost"], Leaf::Good);
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not pem at all\n").unwrap();
    let missing = pki.path("missing.pem");
    let rows: &[(&str, Vec<&str>, &Path, &str)] = &[
        (
            "missing_cert",
            vec!["--tls-cert", s(&missing), "--tls-key", s(&key)],
            &missing,
            "cannot read it",
        ),
        (
            "missing_key",
            vec!["--tls-cert", s(&cert), "--tls-key", s(&missing)],
            &missing,
            "cannot read it",
        ),
        (
            "cert_not_pem",
            vec!["--tls-cert", s(&garbage), "--tls-key", s(&key)],
            &garbage,
            "no PEM CERTIFICATE",
        ),
        (
            "key_not_pem",
            vec!["--tls-cert", s(&cert), "--tls-key", s(&garbage)],
            &garbage,
            "no PEM PRIVATE KEY",
        ),
        (
            "key_mismatch",
            vec!["--tls-cert", s(&cert), "--tls-key", s(&other_key)],
            &other_key,
            "does not match the certificate",
        ),
        (
            "upstream_ca_not_pem",
            vec![
                "--upstream",
                "https://localhost:1",
                "--upstream-ca",
                s(&garbage),
            ],
            &garbage,
            "no PEM CERTIFICATE",
        ),
    ];
    for (name, args, path, problem) in rows {
        let (status, stderr) = Proxy::run_expect_exit(args);
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(s(path)) && stderr.contains(problem),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("listening on"),
            "{name}: bound anyway: {stderr}"
        );
    }
}

#[test]
fn tls_flag_combinations_are_checked() {
    let rows: &[(&str, &[&str], &str)] = &[
        ("cert_without_key", &["--tls-cert", "x.pem"], "--tls-key"),
        (
            "insecure_with_plain_upstream",
            &["--upstream", "127.0.0.1:1", "--insecure"],
            "--insecure",
        ),
        (
            "mitm_with_upstream",
            &["--upstream", "127.0.0.1:1", "--mitm"],
            "--mitm",
        ),
        (
            "upstream_path",
            &["--upstream", "https://h/api"],
            "--upstream",
        ),
    ];
    for (name, args, needle) in rows {
        let (status, stderr) = Proxy::run_expect_exit(args);
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
}

#[test]
fn rsa_and_ecdsa_listener_certificates_load() {
    let pki = TestPki::new();
    for how in [Leaf::Good, Leaf::Rsa] {
        let (cert, key) = pki.leaf(&format!("{how:?}"), &["localhost"], how);
        let proxy = Proxy::start(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
        drop(proxy);
    }
}

#[test]
fn ca_subcommand_creates_once_and_explains_how_to_trust() {
    let xdg = tempfile::tempdir().unwrap();
    let first = ca_subcommand(xdg.path(), &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8(first.stdout).unwrap();
    let ca_dir = xdg.path().join("phantom-fast/ca");
    let ca_pem = ca_dir.join("ca.pem");
    assert!(
        text.contains(&format!("CA certificate: {}", ca_pem.display())),
        "{text}"
    );
    assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");
    for line in [
        "curl --cacert ",
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
    ] {
        assert!(
            text.contains(&format!("{line}{}", ca_pem.display())),
            "{line}: {text}"
        );
    }
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = ca_subcommand(xdg.path(), &[]);
    assert_eq!(
        String::from_utf8(second.stdout).unwrap(),
        text,
        "the same CA on a second run"
    );

    // openssl's reading: an ECDSA P-256 CA valid ten years.
    let dump = openssl(&["x509", "-in", s(&ca_pem), "-noout", "-text"]);
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("CA:TRUE"), "{dump}");
    assert!(
        dump.contains("prime256v1") || dump.contains("P-256"),
        "{dump}"
    );
    let years = openssl(&[
        "x509",
        "-in",
        s(&ca_pem),
        "-noout",
        "-checkend",
        &(9 * 365 * 86400).to_string(),
    ]);
    assert!(years.status.success(), "valid for at least nine more years");
}

#[test]
fn ca_dir_flag_and_a_broken_ca_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = ca_subcommand(dir.path(), &["--ca-dir", s(&dir.path().join("mine"))]);
    assert!(out.status.success());
    assert!(dir.path().join("mine/ca.pem").exists());
    std::fs::write(dir.path().join("mine/ca-key.pem"), "garbage\n").unwrap();
    let out = ca_subcommand(dir.path(), &["--ca-dir", s(&dir.path().join("mine"))]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca-key.pem"), "{stderr}");
}

#[test]
fn mitm_leaves_pass_openssl_verify_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = phantom_fast::ca::Ca::load_or_create(dir.path(), phantom_fast::net::tls::provider())
        .unwrap();
    for name in ["api.example.test", "127.0.0.1"] {
        let leaf = ca.sign_leaf(name).unwrap();
        let leaf_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&leaf_path, leaf.pem()).unwrap();
        let check = if name.parse::<std::net::IpAddr>().is_ok() {
            "-verify_ip"
        } else {
            "-verify_hostname"
        };
        let out = openssl(&[
            "verify",
            "-CAfile",
            s(ca.cert_path()),
            "-purpose",
            "sslserver",
            check,
            name,
            s(&leaf_path),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `openssl s_server` on 127.0.0.1:0 with `cert`/`key` and `extra` flags; killed on drop.
struct SServer {
    child: std::process::Child,
    port: u16,
}

impl SServer {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> SServer {
        let mut child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-www",
                "-cert",
                s(cert),
                "-key",
                s(key),
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl (scripts/tls-deps.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let port = find_line_within(stdout, CMD_TIMEOUT, |line| {
            let addr = line.trim().strip_prefix("ACCEPT ")?;
            addr.rsplit(':').next()?.parse::<u16>().ok()
        });
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "openssl s_server {extra:?} printed no ACCEPT line within {CMD_TIMEOUT:?} ({status:?})"
            );
        };
        SServer { child, port }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our TLS client (`net::tls`) against `openssl s_server`: versions, and each handshake failure
/// named as the trace record will name it.
#[test]
fn tls_client_against_openssl_server_rows() {
    use phantom_fast::net::tls::{self, TlsStream, failure_reason};
    use std::time::{Duration, Instant};

    let pki = TestPki::new();
    let good = pki.leaf("good", &["localhost"], Leaf::Good);
    let wrong = pki.leaf("wrong", &["other.test"], Leaf::Good);
    let expired = pki.leaf("expired", &["localhost"], Leaf::Expired);
    let selfsigned = pki.leaf("self", &["localhost"], Leaf::SelfSigned);
    let (config, _) =
        tls::load_client_config(Some(&pki.path("ca.pem")), false, tls::provider()).unwrap();
    type Row<'a> = (
        &'a str,
        &'a (PathBuf, PathBuf),
        &'a [&'a str],
        Result<&'a str, &'a str>,
    );
    let rows: &[Row] = &[
        ("tls13", &good, &["-tls1_3"], Ok("TLSv1_3")),
        ("tls12", &good, &["-tls1_2"], Ok("TLSv1_2")),
        (
            "wrong_name",
            &wrong,
            &[],
            Err("certificate not valid for name"),
        ),
        ("expired", &expired, &[], Err("certificate expired")),
        ("self_signed", &selfsigned, &[], Err("unknown issuer")),
        (
            "no_common_cipher",
            &good,
            &["-tls1_2", "-cipher", "AES128-SHA"],
            Err("peer alert: handshake failure"),
        ),
    ];
    for (name, (cert, key), flags, want) in rows {
        let server = SServer::start(cert, key, flags);
        let config = std::sync::Arc::clone(&config);
        let got = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let tcp = monoio::net::TcpStream::connect(("127.0.0.1", server.port))
                    .await
                    .unwrap();
                let mut tls =
                    TlsStream::client(tcp, config, "localhost", false, Vec::new(), Vec::new())
                        .unwrap();
                if let Err(e) = tls.handshake(deadline).await {
                    return Err(failure_reason(&e).unwrap_or("not a TLS failure").to_owned());
                }
                tls.write_all(b"GET / HTTP/1.0\r\n\r\n", deadline)
                    .await
                    .unwrap();
                let mut page = Vec::new();
                while !page.starts_with(b"HTTP/1.0 200") {
                    let n = tls
                        .read(&mut page, 4096, deadline, std::future::pending())
                        .await
                        .unwrap();
                    assert!(n > 0, "s_server closed before its page");
                }
                Ok(tls.facts().version.unwrap().to_owned())
            });
        assert_eq!(got.as_deref().map_err(String::as_str), *want, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Through the proxy: https upstreams, the https listener, MITM.
// ---------------------------------------------------------------------------------------------

use crate::support::{Conn, Origin, RawOrigin, get, response};
use std::time::{Duration, Instant};

/// The Python `ssl` keep-alive origin (`tests/tls_peers/origin.py`); stops when dropped.
struct PyOrigin {
    child: std::process::Child,
    port: u16,
}

impl PyOrigin {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> PyOrigin {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_peers/origin.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--cert", s(cert), "--key", s(key)])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/tls-deps.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let line = find_line_within(stdout, CMD_TIMEOUT, |line| Some(line.to_owned()));
        let port = line
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening "))
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait();
            panic!("origin.py said {line:?} within {CMD_TIMEOUT:?}, then {status:?}");
        };
        PyOrigin { child, port }
    }

    fn authority(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

impl Drop for PyOrigin {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The trace records of `proxy` (JSON Lines through `phantom-fast traces`), polled until there
/// are at least `want`; fails the test if they do not appear within `WAIT_TIMEOUT`.
fn records(proxy: &Proxy, want: usize) -> Vec<serde_json::Value> {
    assert!(
        proxy.wait_for_stderr("traces → ", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    let dir = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("traces → "))
        .expect("a traces line")
        .to_owned();
    crate::support::trace_records(Path::new(&dir), want)
}

fn https_upstream(authority: &str) -> String {
    format!("https://{authority}")
}

#[test]
fn https_upstream_verified_pooled_100_requests_one_connection() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let up = https_upstream(&origin.authority());
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-ca", s(&pki.path("ca.pem"))]);
    let mut client = proxy.connect();
    for i in 0..100 {
        let resp = client.roundtrip(&get(&format!("/n/{i}")));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.header("x-sni"), Some("localhost"));
        assert_eq!(
            resp.header("x-conn"),
            Some("1"),
            "request {i} on a new connection"
        );
    }
    let stats = client.roundtrip(&get("/stats"));
    assert_eq!(stats.text(), "connections=1 sni=localhost");
    let recs = records(&proxy, 101);
    let rec = recs
        .iter()
        .find(|r| r["url"] == "https://test.local/n/7")
        .unwrap_or_else(|| panic!("https URLs in the trace: {:?}", recs.first()));
    assert_eq!(rec["client_tls"], serde_json::Value::Null, "{rec}");
    assert_eq!(rec["upstream_tls"]["server_name"], "localhost", "{rec}");
    assert_eq!(rec["upstream_tls"]["version_code"], 0x0304, "{rec}");
    assert_eq!(rec["upstream_tls"]["verification"], "verified", "{rec}");
}

#[test]
fn https_upstream_tls12_and_insecure() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &["--max-version", "1.2"]);
    let up = https_upstream(&origin.authority());
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-ca", s(&pki.path("ca.pem"))]);
    let resp = proxy.connect().roundtrip(&get("/"));
    assert_eq!((resp.status, resp.header("x-tls")), (200, Some("TLSv1.2")));

    let (cert, key) = pki.leaf("selfsigned", &["localhost"], Leaf::SelfSigned);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let up = https_upstream(&origin.authority());
    let proxy = Proxy::start(&["--upstream", &up, "--insecure"]);
    assert!(
        proxy.wait_for_stderr("NOT verified", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    assert_eq!(proxy.connect().roundtrip(&get("/")).status, 200);
}

#[test]
fn https_upstream_handshake_failures_are_502_with_their_reason() {
    let pki = TestPki::new();
    let good = pki.leaf("good", &["localhost"], Leaf::Good);
    let wrong = pki.leaf("wrong", &["other.test"], Leaf::Good);
    let expired = pki.leaf("expired", &["localhost"], Leaf::Expired);
    let selfsigned = pki.leaf("self", &["localhost"], Leaf::SelfSigned);
    type Row<'a> = (&'a str, &'a (PathBuf, PathBuf), &'a [&'a str], &'a str);
    let rows: &[Row] = &[
        ("wrong_name", &wrong, &[], "certificate not valid for name"),
        ("expired", &expired, &[], "certificate expired"),
        ("self_signed", &selfsigned, &[], "unknown issuer"),
        (
            "no_common_cipher",
            &good,
            &["-tls1_2", "-cipher", "AES128-SHA"],
            "peer alert: handshake failure",
        ),
    ];
    for (name, (cert, key), flags, reason) in rows {
        let server = SServer::start(cert, key, flags);
        let up = format!("https://localhost:{}", server.port);
        let proxy = Proxy::start(&["--upstream", &up, "--upstream-ca", s(&pki.path("ca.pem"))]);
        let resp = proxy.connect().roundtrip(&get("/"));
        assert_eq!(resp.status, 502, "{name}");
        assert_eq!(resp.header("x-phantom-fast-error"), Some(*reason), "{name}");
        let recs = records(&proxy, 1);
        assert_eq!(recs[0]["outcome"], "upstream-error", "{name}");
        let head = serde_json::to_string(&recs[0]["response_headers"]).unwrap();
        assert!(
            head.contains(reason),
            "{name}: the trace names the reason: {head}"
        );
    }
    // Plain HTTP on the upstream's TLS port: it answers the ClientHello with a 400.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let answering = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = plain.accept().unwrap();
        conn.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
        let mut hello = [0u8; 64];
        let _ = conn.read(&mut hello);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let up = format!("https://localhost:{port}");
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-ca", s(&pki.path("ca.pem"))]);
    let resp = proxy.connect().roundtrip(&get("/"));
    assert_eq!(resp.status, 502);
    let why = resp
        .header("x-phantom-fast-error")
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("not TLS") || why.contains("closed"), "{why}");
    crate::support::join_within(answering, WAIT_TIMEOUT, "the plain-HTTP upstream").unwrap();
}

/// The proxy's `--upstream-timeout` when not given (its CLI default).
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn https_upstream_handshake_timeout_is_504() {
    // An upstream that accepts and then says nothing, until the test is done with it: only a
    // handshake timeout can end the exchange.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let held = silent.accept();
        let _ = released.recv_timeout(2 * WAIT_TIMEOUT);
        drop(held);
    });
    let up = format!("https://localhost:{port}");
    let proxy = Proxy::start(&[
        "--upstream",
        &up,
        "--insecure",
        "--upstream-timeout",
        "300ms",
    ]);
    let started = Instant::now();
    let mut client = proxy.connect();
    client.set_timeout(2 * DEFAULT_UPSTREAM_TIMEOUT);
    let resp = client.roundtrip(&get("/"));
    let took = started.elapsed();
    assert_eq!(resp.status, 504);
    assert!(
        took >= Duration::from_millis(300),
        "504 after only {took:?}"
    );
    // Bounded from above only to tell the flag from the default: a 504 long before the default
    // timeout is the 300 ms one (however loaded the machine).
    assert!(
        took < DEFAULT_UPSTREAM_TIMEOUT / 3,
        "504 after {took:?}: --upstream-timeout 300ms did not bound the handshake"
    );
    drop(release);
    drop(proxy);
    crate::support::join_within(holder, WAIT_TIMEOUT, "the silent upstream").unwrap();
}

/// `curl -sS ARGS` (scripts/tls-deps.sh installs it), each transfer capped by `--max-time`.
fn curl(args: &[&str]) -> Output {
    output_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(args),
        CMD_TIMEOUT,
    )
}

#[test]
fn https_listener_serves_curl_and_s_client_tls12_and_13() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("listener", &["localhost"], Leaf::Good);
    let origin = Origin::start(|_| response("200 OK", &[], b"through"));
    let proxy = Proxy::reverse(
        origin.addr(),
        &["--tls-cert", s(&cert), "--tls-key", s(&key)],
    );
    let url = format!("https://localhost:{}/x", proxy.addr().port());
    let ca = pki.path("ca.pem");
    let out = curl(&["--cacert", s(&ca), &url, &url]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "throughthrough",
        "{out:?}"
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", proxy.addr().port()),
            ])
            .args([
                "-servername",
                "localhost",
                "-CAfile",
                s(&ca),
                "-verify_return_error",
                "-quiet",
            ])
            .args(["-alpn", "http/1.1", version])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /y HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        // -quiet implies -ign_eof: s_client ends when the proxy closes (`connection: close`).
        let out = crate::support::child_output_within(child, CMD_TIMEOUT, "openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("through"),
            "{version}: {text}"
        );
    }
    let recs = records(&proxy, 4);
    assert!(
        recs.iter()
            .all(|r| r["url"].as_str().unwrap().starts_with("https://")),
        "{recs:?}"
    );
    // Our suite order, not the clients' (OpenSSL's puts AES-256-GCM first): AES-128-GCM with
    // SHA-256, the hash CPUs accelerate.
    let suites: Vec<&str> = recs
        .iter()
        .map(|r| r["client_tls"]["cipher_suite"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        suites.iter().all(|s| s.ends_with("AES_128_GCM_SHA256")),
        "{suites:?}"
    );
}

/// The proxy's `--header-timeout` when not given (its CLI default).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn hostile_tls_clients_never_stop_the_listener() {
    use std::io::{Read, Write};
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("listener", &["localhost"], Leaf::Good);
    let origin = Origin::start(|_| response("200 OK", &[], b"fine"));
    let proxy = Proxy::reverse(
        origin.addr(),
        &[
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
            "--header-timeout",
            "500ms",
        ],
    );
    let url = format!("https://localhost:{}/", proxy.addr().port());
    let ca = pki.path("ca.pem");
    // A stalled handshake: connect, say nothing; it is dropped after --header-timeout.
    let mut stalled = std::net::TcpStream::connect(proxy.addr()).unwrap();
    let stalled_at = Instant::now();
    stalled.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
    // A handshake record holding a one-byte "ClientHello", then plain HTTP.
    let mut garbage = std::net::TcpStream::connect(proxy.addr()).unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff])
        .unwrap();
    let mut plain = Conn::connect(proxy.addr());
    plain.send(&get("/"));
    // Others are served meanwhile.
    let out = curl(&["--cacert", s(&ca), &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine", "{out:?}");
    let mut first = [0u8; 1];
    let alert = plain.read_until_close().unwrap_or_default();
    assert_eq!(
        alert.first(),
        Some(&0x15),
        "plain HTTP gets a TLS alert, then a close: {alert:?}"
    );
    // A close (EOF or reset), not a read timeout, and before the default --header-timeout
    // would have closed it: the 500 ms flag applies to handshakes (bounded from above only
    // to tell the flag from the default).
    let closed = match stalled.read(&mut first) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} bytes")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let held = stalled_at.elapsed();
    assert_eq!(closed, Ok(()), "the stalled handshake is closed");
    assert!(
        held < DEFAULT_HEADER_TIMEOUT,
        "the stalled handshake was closed only after {held:?}"
    );
    let mut rest = Vec::new();
    garbage.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
    let _ = garbage.read_to_end(&mut rest);
    assert_eq!(rest.first(), Some(&0x15), "garbage gets an alert: {rest:?}");
    let out = curl(&["--cacert", s(&ca), &url]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fine",
        "still serving: {out:?}"
    );
}

#[test]
fn mitm_faults_https_requests_and_keeps_its_ca() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let ca_dir = tempfile::tempdir().unwrap();
    let test_ca = pki.path("ca.pem");
    let args = [
        "--mitm",
        "--ca-dir",
        s(ca_dir.path()),
        "--upstream-ca",
        s(&test_ca),
        "--fault",
        "error:503:/api",
    ];
    let proxy = Proxy::start(&args);
    assert!(
        proxy.wait_for_stderr("MITM on", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let our_ca = ca_dir.path().join("ca.pem");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr().port());
    let base = format!("https://{}", origin.authority());
    let out = curl(&[
        "-x",
        &proxy_url,
        "--cacert",
        s(&our_ca),
        "-w",
        " %{http_code}\n",
        &format!("{base}/api/x"),
        &format!("{base}/hello"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"{"fault":"injected"} 503"#),
        "{text} {out:?}"
    );
    assert!(text.contains("GET /hello HTTP/1.1\n 200"), "{text}");
    let recs = records(&proxy, 3);
    let urls: Vec<&str> = recs.iter().filter_map(|r| r["url"].as_str()).collect();
    let hello = format!("{base}/hello");
    let inner = recs
        .iter()
        .find(|r| r["url"] == hello.as_str())
        .expect("the forwarded request");
    // Intercepted: the client's session with our leaf, and ours with the real host.
    assert_eq!(inner["client_tls"]["server_name"], "localhost", "{inner}");
    assert_eq!(inner["upstream_tls"]["server_name"], "localhost", "{inner}");
    assert_eq!(inner["upstream_tls"]["verification"], "verified", "{inner}");
    assert!(urls.contains(&format!("{base}/api/x").as_str()), "{urls:?}");
    assert!(urls.contains(&format!("{base}/hello").as_str()), "{urls:?}");

    // The leaf the client saw passes `openssl verify` against our CA.
    let leaf = ca_dir.path().join("leaf.pem");
    let mut shown = Command::new("openssl");
    shown
        .args([
            "s_client",
            "-proxy",
            &format!("127.0.0.1:{}", proxy.addr().port()),
        ])
        .args([
            "-connect",
            &origin.authority(),
            "-servername",
            "localhost",
            "-showcerts",
        ]);
    let shown = output_within(&mut shown, CMD_TIMEOUT);
    let text = String::from_utf8_lossy(&shown.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate shown");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    std::fs::write(&leaf, format!("{}\n", &text[begin..end])).unwrap();
    let verify = openssl(&[
        "verify",
        "-CAfile",
        s(&our_ca),
        "-verify_hostname",
        "localhost",
        s(&leaf),
    ]);
    assert!(verify.status.success(), "{verify:?}");

    // A client that does not trust the CA fails its handshake; the CONNECT says so.
    let out = curl(&["-x", &proxy_url, &format!("{base}/untrusted")]);
    assert_eq!(out.status.code(), Some(60), "{out:?}");

    // Same CA after a restart.
    let before = std::fs::read(&our_ca).unwrap();
    drop(proxy);
    let proxy = Proxy::start(&args);
    assert_eq!(std::fs::read(&our_ca).unwrap(), before);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr().port());
    let out = curl(&[
        "-x",
        &proxy_url,
        "--cacert",
        s(&our_ca),
        &format!("{base}/again"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "GET /again HTTP/1.1\n",
        "{out:?}"
    );
}

#[test]
fn mitm_non_tls_after_connect_stays_an_opaque_tunnel() {
    use std::io::{Read, Write};
    let echo = RawOrigin::tcp_echo();
    let ca_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&["--mitm", "--ca-dir", s(ca_dir.path())]);
    let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let authority = echo.authority();
    write!(
        tcp,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 39];
    tcp.read_exact(&mut head).unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    tcp.write_all(b"not tls at all").unwrap();
    let mut back = [0u8; 14];
    tcp.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"not tls at all");
}

#[test]
fn https_upstream_reconnect_resumes_the_session() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let up = https_upstream(&origin.authority());
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-ca", s(&pki.path("ca.pem"))]);
    let mut client = proxy.connect();
    let first = client.roundtrip(&get("/close"));
    assert_eq!((first.status, first.header("x-resumed")), (200, Some("0")));
    let mut client = proxy.connect();
    let second = client.roundtrip(&get("/after"));
    assert_eq!(
        second.header("x-conn"),
        Some("2"),
        "a new upstream connection"
    );
    assert_eq!(
        second.header("x-resumed"),
        Some("1"),
        "its TLS session was resumed"
    );
}

#[test]
fn forward_absolute_https_request_goes_out_over_tls() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let proxy = Proxy::start(&["--upstream-ca", s(&pki.path("ca.pem"))]);
    let url = format!("https://{}/abs", origin.authority());
    let req = format!("GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.authority());
    let resp = proxy.connect().roundtrip(req.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-sni"), Some("localhost"));
    assert_eq!(resp.text(), "GET /abs HTTP/1.1\n");
    let recs = records(&proxy, 1);
    assert_eq!(recs[0]["url"], url.as_str());
}

/// The admin address the banner printed (`admin on http://ADDR`).
fn admin_addr(proxy: &Proxy) -> String {
    assert!(
        proxy.wait_for_stderr("admin on http://", WAIT_TIMEOUT),
        "{}",
        proxy.stderr()
    );
    let stderr = proxy.stderr();
    let (_, rest) = stderr.split_once("admin on http://").unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// `/metrics` (through curl) until `series` has `want`, or `WAIT_TIMEOUT` passes; returns the
/// last scrape.
fn scrape_until(admin: &str, series: &str, want: &str) -> String {
    let line = format!("{series} {want}\n");
    let mut scrape = String::new();
    crate::support::wait_until(WAIT_TIMEOUT, || {
        let out = curl(&[&format!("http://{admin}/metrics")]);
        scrape = String::from_utf8_lossy(&out.stdout).into_owned();
        scrape.contains(&line)
    });
    scrape
}

/// `phantom-fast traces --format table` and `phantom-fast stats` of the proxy's rings.
fn table_and_stats(proxy: &Proxy) -> (String, serde_json::Value) {
    let dir = proxy.trace_dir().to_str().unwrap().to_owned();
    let table = output_within(
        Command::new(BIN).args(["traces", "--trace-dir", &dir, "--format", "table"]),
        CMD_TIMEOUT,
    );
    let stats = output_within(
        Command::new(BIN).args(["stats", "--trace-dir", &dir]),
        CMD_TIMEOUT,
    );
    (
        String::from_utf8_lossy(&table.stdout).into_owned(),
        serde_json::from_slice(&stats.stdout).expect("stats prints JSON"),
    )
}

// See: issue 10 §3 ("a client that does not trust the CA fails its handshake, recorded as an
// outcome of its own").
#[test]
fn mitm_client_distrusting_the_ca_is_recorded_client_tls_failed() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let ca_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&[
        "--mitm",
        "--ca-dir",
        s(ca_dir.path()),
        "--upstream-ca",
        s(&pki.path("ca.pem")),
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&proxy);
    let series = r#"phantom_requests_total{outcome="client-tls-failed"}"#;
    // Listed from the start, at zero.
    let scrape = scrape_until(&admin, series, "0");
    assert!(scrape.contains(&format!("{series} 0\n")), "{scrape}");

    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr().port());
    let out = curl(&[
        "-x",
        &proxy_url,
        &format!("https://{}/untrusted", origin.authority()),
    ]);
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl distrusts our CA: {out:?}"
    );

    let recs = records(&proxy, 1);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let connect = &recs[0];
    assert_eq!(connect["method"], "CONNECT", "{connect}");
    assert_eq!(connect["status_code"], 200, "{connect}");
    assert_eq!(connect["outcome"], "client-tls-failed", "{connect}");
    let client_tls = &connect["client_tls"];
    assert_eq!(client_tls["failure"], "peer alert: unknown CA", "{connect}");
    assert_eq!(client_tls["server_name"], "localhost", "{connect}");
    assert_eq!(
        connect["upstream_tls"],
        serde_json::Value::Null,
        "{connect}"
    );

    let (table, stats) = table_and_stats(&proxy);
    assert!(
        table.contains("client-tls-failed")
            && table.contains(&format!(
                "{} [client tls: peer alert: unknown CA]",
                origin.authority()
            )),
        "{table}"
    );
    assert_eq!(stats["by_outcome"]["client-tls-failed"], 1, "{stats:#}");
    assert_eq!(
        stats["tls_failures"]["client"]["peer alert: unknown CA"], 1,
        "{stats:#}"
    );
    let scrape = scrape_until(&admin, series, "1");
    assert!(scrape.contains(&format!("{series} 1\n")), "{scrape}");
}

// See: issue 10 §2 ("a failed handshake is an outcome in the trace").
#[test]
fn https_listener_failed_handshakes_are_recorded_with_their_reason() {
    use std::io::{Read, Write};
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("listener", &["localhost"], Leaf::Good);
    let origin = Origin::start(|_| response("200 OK", &[], b"fine"));
    let proxy = Proxy::reverse(
        origin.addr(),
        &[
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
            "--header-timeout",
            "500ms",
        ],
    );
    let port = proxy.addr().port();
    // Connected and gone without a byte: a probe, not a handshake; no record.
    drop(std::net::TcpStream::connect(proxy.addr()).unwrap());
    // openssl s_client trusting only an unrelated certificate: it aborts with an alert.
    let (unrelated, _) = pki.leaf("unrelated", &["elsewhere"], Leaf::SelfSigned);
    let out = output_within(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "localhost", "-verify_return_error"])
            .args(["-CAfile", s(&unrelated)]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{out:?}");
    // A garbage ClientHello: our alert, then a close.
    let mut garbage = std::net::TcpStream::connect(proxy.addr()).unwrap();
    garbage.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff])
        .unwrap();
    let mut alert = Vec::new();
    let _ = garbage.read_to_end(&mut alert);
    assert_eq!(alert.first(), Some(&0x15), "{alert:?}");
    // A handshake that starts and stalls: dropped after --header-timeout.
    let mut stalled = std::net::TcpStream::connect(proxy.addr()).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    stalled.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
    let _ = stalled.read_to_end(&mut Vec::new());
    // And a client that trusts us is served.
    let ca = pki.path("ca.pem");
    let out = curl(&["--cacert", s(&ca), &format!("https://localhost:{port}/ok")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine", "{out:?}");

    let recs = records(&proxy, 4);
    let mut failures: Vec<&str> = recs
        .iter()
        .filter(|r| r["outcome"] == "client-tls-failed")
        .map(|r| r["client_tls"]["failure"].as_str().unwrap_or("?"))
        .collect();
    failures.sort_unstable();
    assert_eq!(
        failures,
        [
            "handshake timed out",
            "not TLS (or corrupt TLS)",
            "peer alert: unknown CA"
        ],
        "{recs:?}"
    );
    assert_eq!(recs.len(), 4, "the probe left no record: {recs:?}");
    let aborted = recs
        .iter()
        .find(|r| r["client_tls"]["failure"] == "peer alert: unknown CA")
        .unwrap();
    // The session got as far as our certificate: its SNI and version are known.
    assert_eq!(
        aborted["client_tls"]["server_name"], "localhost",
        "{aborted}"
    );
    assert_eq!(aborted["status_code"], 0, "{aborted}");
    assert!(
        aborted["trace_id"]
            .as_str()
            .is_some_and(|t| t != "0".repeat(32))
    );
    // The stalled handshake's record starts at its accept, --header-timeout before it ended
    // (and so before the curl request that came after it).
    let stalled = recs
        .iter()
        .find(|r| r["client_tls"]["failure"] == "handshake timed out")
        .unwrap();
    let served = recs.iter().find(|r| r["outcome"] == "ok").unwrap();
    let ms = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0);
    assert!(ms(stalled, "duration_ms") >= 450, "{stalled}");
    assert!(
        ms(served, "timestamp_ms") >= ms(stalled, "timestamp_ms") + 450,
        "{stalled} {served}"
    );
    let (_, stats) = table_and_stats(&proxy);
    assert_eq!(stats["by_outcome"]["client-tls-failed"], 3, "{stats:#}");
    assert_eq!(stats["by_outcome"]["ok"], 1, "{stats:#}");
}

// See: issue 16 ("the upstream's share (connect, time to first byte, body)").
#[test]
fn ledger_counts_tls_connect_and_a_slow_body_as_upstream_time() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("origin", &["localhost"], Leaf::Good);
    let origin = PyOrigin::start(&cert, &key, &[]);
    let upstream = https_upstream(&origin.authority());
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        s(&pki.path("ca.pem")),
        "--fault",
        "delay:100ms:at=head:/slow-body",
    ]);
    let base = format!("http://127.0.0.1:{}", proxy.addr().port());
    let out = curl(&[&format!("{base}/slow-body"), &format!("{base}/fast")]);
    assert!(out.status.success(), "{out:?}");
    let recs = records(&proxy, 2);
    let n = |rec: &serde_json::Value, k: &str| {
        rec[k].as_u64().unwrap_or_else(|| panic!("{k} in {rec:#}"))
    };
    for rec in &recs {
        assert_eq!(
            n(rec, "upstream_us"),
            n(rec, "upstream_connect_us") + n(rec, "upstream_ttfb_us") + n(rec, "upstream_body_us"),
            "{rec:#}"
        );
        assert_eq!(
            n(rec, "duration_us"),
            n(rec, "injected_delay_us") + n(rec, "upstream_us") + n(rec, "overhead_us"),
            "duration = injected + upstream + overhead: {rec:#}"
        );
    }
    let find = |path: &str| {
        recs.iter()
            .find(|r| r["url"].as_str().is_some_and(|u| u.ends_with(path)))
            .unwrap_or_else(|| panic!("no {path} in {recs:?}"))
    };
    let slow = find("/slow-body");
    // A new connection: TCP and the TLS handshake are the upstream's time.
    assert!(n(slow, "upstream_connect_us") > 0, "{slow:#}");
    assert_eq!(n(slow, "injected_delay_us"), 100_000, "{slow:#}");
    // The origin held the second half of the body back 300 ms after the request: upstream time,
    // not overhead. The head delay (100 ms) ran meanwhile, so the upstream's share from the
    // request to the last byte is at least 300 - 100 ms, its body part after the delay ended.
    let upstream_wait = n(slow, "upstream_ttfb_us") + n(slow, "upstream_body_us");
    assert!(upstream_wait >= 190_000, "{slow:#}");
    assert!(n(slow, "upstream_body_us") > 0, "{slow:#}");
    assert!(n(slow, "overhead_us") < 100_000, "{slow:#}");
    let fast = find("/fast");
    assert_eq!(n(fast, "upstream_connect_us"), 0, "pooled: {fast:#}");
    assert_eq!(
        n(fast, "upstream_body_us"),
        0,
        "body came with the head: {fast:#}"
    );
    assert_eq!(n(fast, "injected_delay_us"), 0, "{fast:#}");
}

/// A CONNECT to an https listener (curl's HTTPS proxy): the opaque tunnel runs inside the TLS
/// session with the client.
#[test]
fn https_listener_connect_tunnel_runs_inside_tls() {
    let pki = TestPki::new();
    let (cert, key) = pki.leaf("listener", &["localhost"], Leaf::Good);
    let origin = Origin::start(|_| response("200 OK", &[], b"tunnelled"));
    let proxy = Proxy::start(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let proxy_url = format!("https://localhost:{}", proxy.addr().port());
    let out = curl(&[
        "-p",
        "--proxy",
        &proxy_url,
        "--proxy-cacert",
        s(&pki.path("ca.pem")),
        &format!("http://{}/t", origin.addr()),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tunnelled", "{out:?}");
    let recs = records(&proxy, 1);
    let connect = recs
        .iter()
        .find(|r| r["method"] == "CONNECT")
        .expect("the CONNECT's record");
    assert_eq!(connect["outcome"], "ok", "{connect}");
    assert_eq!(
        connect["client_tls"]["server_name"], "localhost",
        "{connect}"
    );
    assert!(
        connect["request_body_bytes"].as_u64().unwrap_or(0) > 0,
        "{connect}"
    );
    assert!(
        connect["response_body_bytes"].as_u64().unwrap_or(0) > 0,
        "{connect}"
    );
}

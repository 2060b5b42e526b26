//! Loopback tests of the TLS driver: real sockets on 127.0.0.1, leaves from a throwaway CA.

use std::time::Duration;

use monoio::{
    io::{AsyncReadRentExt, AsyncWriteRentExt},
    net::TcpListener,
};

use super::*;
use crate::ca::{Ca, LeafCache};

const IO: Duration = Duration::from_secs(5);

fn soon() -> Instant {
    Instant::now() + IO
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = Ca::load_or_create(dir.path(), provider()).expect("a new CA");
    Fixture { _dir: dir, ca }
}

fn client_config(f: &Fixture) -> Arc<ClientConfig> {
    load_client_config(Some(f.ca.cert_path()), false, provider())
        .expect("the CA file loads as roots")
        .0
}

fn tls12_client_config(f: &Fixture) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(f.ca.cert_der().clone())
        .expect("the CA is a root");
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2 is supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A server answering each `ping` line with `pong` until the client closes; returns what it saw.
async fn serve_pong(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<usize> {
    let (tcp, _) = listener.accept().await?;
    let mut tls = TlsStream::server(tcp, config, Vec::new(), Vec::new());
    tls.handshake(soon()).await?;
    let mut seen = Vec::new();
    let mut pings = 0;
    loop {
        if tls
            .read(&mut seen, 4096, soon(), std::future::pending())
            .await?
            == 0
        {
            return Ok(pings);
        }
        while seen.starts_with(b"ping\n") {
            seen.drain(..5);
            pings += 1;
            tls.write_all(b"pong\n", soon()).await?;
        }
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsStream::client(tcp, config, name, false, Vec::new(), Vec::new())?;
    tls.handshake(soon()).await?;
    Ok(tls)
}

async fn ping(tls: &mut TlsStream) -> io::Result<()> {
    tls.write_all(b"ping\n", soon()).await?;
    let mut got = Vec::new();
    while got.len() < 5 {
        if tls
            .read(&mut got, 4096, soon(), std::future::pending())
            .await?
            == 0
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    assert_eq!(got, b"pong\n");
    Ok(())
}

#[monoio::test(timer_enabled = true)]
async fn tls13_round_trip_reports_facts_and_ends_with_close_notify() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = monoio::spawn(serve_pong(listener, f.ca.leaf_config("localhost").unwrap()));
    let mut tls = connect(addr, client_config(&f), "localhost").await.unwrap();
    for _ in 0..3 {
        ping(&mut tls).await.unwrap();
    }
    let facts = tls.facts();
    assert_eq!(facts.version, Some("TLSv1_3"));
    assert_eq!(facts.version_code, 0x0304);
    assert_ne!(facts.cipher_suite_code, 0);
    assert!(
        facts.cipher_suite.is_some_and(|s| s.starts_with("TLS13_")),
        "{facts:?}"
    );
    assert_eq!(facts.server_name, Some("localhost"));
    assert_eq!(facts.verification, Verification::Verified);
    assert_eq!(tls.alpn(), Some(ALPN_HTTP11));
    tls.close(soon()).await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        3,
        "the server saw close_notify as a clean end"
    );
}

#[monoio::test(timer_enabled = true)]
async fn tls12_round_trip_works() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = monoio::spawn(serve_pong(listener, f.ca.leaf_config("127.0.0.1").unwrap()));
    let mut tls = connect(addr, tls12_client_config(&f), "127.0.0.1")
        .await
        .unwrap();
    ping(&mut tls).await.unwrap();
    assert_eq!(tls.facts().version, Some("TLSv1_2"));
    tls.close(soon()).await.unwrap();
    assert_eq!(server.await.unwrap(), 1);
}

#[monoio::test(timer_enabled = true)]
async fn handshake_with_silent_peer_times_out_at_deadline() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        monoio::time::sleep(Duration::from_millis(500)).await;
        drop(tcp);
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsStream::client(
        tcp,
        client_config(&f),
        "localhost",
        false,
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let started = Instant::now();
    let err = tls
        .handshake(Instant::now() + Duration::from_millis(150))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failure_reason(&err), None);
    holder.await;
}

#[monoio::test(timer_enabled = true)]
async fn handshake_failures_name_their_reason() {
    let f = fixture();
    let rows: &[(&str, &str, bool, &str)] = &[
        (
            "wrong_name",
            "other.test",
            false,
            "certificate not valid for name",
        ),
        ("unknown_issuer", "localhost", true, "unknown issuer"),
    ];
    for (name, sni, system_roots, want) in rows {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = monoio::spawn(serve_pong(listener, f.ca.leaf_config("localhost").unwrap()));
        let config = if *system_roots {
            load_client_config(None, false, provider()).unwrap().0
        } else {
            client_config(&f)
        };
        let err = connect(addr, config, sni).await.unwrap_err();
        assert_eq!(failure_reason(&err), Some(*want), "{name}: {err}");
        let server_err = server.await.unwrap_err();
        assert!(
            failure_reason(&server_err).is_some(),
            "{name}: {server_err}"
        );
    }
}

#[monoio::test(timer_enabled = true)]
async fn insecure_client_accepts_any_certificate_and_says_so() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = monoio::spawn(serve_pong(listener, f.ca.leaf_config("localhost").unwrap()));
    let (config, source) = load_client_config(None, true, provider()).unwrap();
    assert_eq!(source, RootsSource::Insecure);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls =
        TlsStream::client(tcp, config, "other.test", true, Vec::new(), Vec::new()).unwrap();
    tls.handshake(soon()).await.unwrap();
    ping(&mut tls).await.unwrap();
    assert_eq!(tls.facts().verification, Verification::Skipped);
    tls.close(soon()).await.unwrap();
    server.await.unwrap();
}

#[monoio::test(timer_enabled = true)]
async fn plain_http_to_tls_server_gets_alert_and_error() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = monoio::spawn(serve_pong(listener, f.ca.leaf_config("localhost").unwrap()));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (res, _) = tcp
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
        .await;
    res.unwrap();
    let err = server.await.unwrap_err();
    assert_eq!(
        failure_reason(&err),
        Some("not TLS (or corrupt TLS)"),
        "{err}"
    );
    let (res, buf) = tcp.read_exact(vec![0u8; 1]).await;
    res.unwrap();
    assert_eq!(buf[0], 0x15, "a TLS alert record");
}

#[monoio::test(timer_enabled = true)]
async fn idle_check_absorbs_tickets_but_sees_unsolicited_data() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = f.ca.leaf_config("localhost").unwrap();
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsStream::server(tcp, config, Vec::new(), Vec::new());
        tls.handshake(soon()).await.unwrap();
        let mut seen = Vec::new();
        tls.read(&mut seen, 4096, soon(), std::future::pending())
            .await
            .unwrap();
        tls.write_all(b"pong\n", soon()).await.unwrap();
        // The client checks its idle connection, then asks for unsolicited bytes.
        tls.read(&mut seen, 4096, soon(), std::future::pending())
            .await
            .unwrap();
        tls.write_all(b"unsolicited", soon()).await.unwrap();
        tls.read(&mut seen, 4096, soon(), std::future::pending())
            .await
            .unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsStream::client(
        tcp,
        client_config(&f),
        "localhost",
        false,
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    tls.handshake(soon()).await.unwrap();
    tls.write_all(b"ping\n", soon()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let want = 5 - got.len();
        tls.read(&mut got, want, soon(), std::future::pending())
            .await
            .unwrap();
    }
    monoio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tls.is_idle_clean(),
        "session tickets are not unsolicited data"
    );
    assert!(tls.is_idle_clean(), "and checking twice changes nothing");
    tls.write_all(b"next\n", soon()).await.unwrap();
    monoio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !tls.is_idle_clean(),
        "application data waiting: the queue is poisoned"
    );
    drop(tls);
    server.await;
}

#[monoio::test(timer_enabled = true)]
async fn close_notify_on_idle_connection_is_not_clean() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = f.ca.leaf_config("localhost").unwrap();
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsStream::server(tcp, config, Vec::new(), Vec::new());
        tls.handshake(soon()).await.unwrap();
        tls.close(soon()).await.unwrap();
        monoio::time::sleep(Duration::from_millis(300)).await;
    });
    let mut tls = connect(addr, client_config(&f), "localhost").await.unwrap();
    monoio::time::sleep(Duration::from_millis(50)).await;
    assert!(!tls.is_idle_clean());
    assert!(tls.peer_closed());
    server.await;
}

#[monoio::test(timer_enabled = true)]
async fn second_connection_resumes_the_session() {
    let f = fixture();
    let config = client_config(&f);
    let leaf = f.ca.leaf_config("localhost").unwrap();
    for round in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = monoio::spawn(serve_pong(listener, Arc::clone(&leaf)));
        let mut tls = connect(addr, Arc::clone(&config), "localhost")
            .await
            .unwrap();
        ping(&mut tls).await.unwrap(); // reads the tickets too
        assert_eq!(tls.facts().resumed, round == 1, "round {round}");
        tls.close(soon()).await.unwrap();
        server.await.unwrap();
    }
}

#[monoio::test(timer_enabled = true)]
async fn lazy_server_picks_a_leaf_by_sni() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = Arc::new(f.ca);
    let server_ca = Arc::clone(&ca);
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let lazy = LazyServer::read_hello(tcp, Vec::new(), Vec::new(), soon())
            .await
            .unwrap();
        let name = lazy.server_name().unwrap().to_owned();
        let mut cache = LeafCache::new(4);
        let config = cache.get_or_sign(&server_ca, &name).unwrap();
        let mut tls = lazy.into_stream(config).unwrap();
        tls.handshake(soon()).await.unwrap();
        let sni = tls.facts().server_name.map(str::to_owned);
        tls.write_all(b"pong\n", soon()).await.unwrap();
        let mut sink = Vec::new();
        tls.read(&mut sink, 4096, soon(), std::future::pending())
            .await
            .unwrap();
        sni
    });
    let roots = {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        roots
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tls = connect(addr, Arc::new(config), "api.example.test")
        .await
        .unwrap();
    let mut got = Vec::new();
    tls.read(&mut got, 5, soon(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(got, b"pong\n");
    tls.close(soon()).await.unwrap();
    assert_eq!(server.await.as_deref(), Some("api.example.test"));
}

#[test]
fn server_config_rows() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let other_key = dir.path().join("other-key.pem");
    let empty = dir.path().join("empty.pem");
    let leaf = f.ca.sign_leaf("localhost").unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, f.ca.leaf_key_pem()).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&other_key, other.serialize_pem()).unwrap();
    std::fs::write(&empty, "nothing here\n").unwrap();
    let missing = dir.path().join("missing.pem");
    type Row<'a> = (&'a str, &'a Path, &'a Path, Option<(&'a Path, &'a str)>);
    let rows: &[Row] = &[
        ("good", &cert, &key, None),
        (
            "missing_cert",
            &missing,
            &key,
            Some((&missing, "cannot read it")),
        ),
        (
            "missing_key",
            &cert,
            &missing,
            Some((&missing, "cannot read it")),
        ),
        (
            "empty_cert",
            &empty,
            &key,
            Some((&empty, "holds no PEM CERTIFICATE")),
        ),
        (
            "no_key",
            &cert,
            &empty,
            Some((&empty, "holds no PEM PRIVATE KEY")),
        ),
        (
            "mismatched",
            &cert,
            &other_key,
            Some((&other_key, "does not match the certificate")),
        ),
    ];
    for (name, cert, key, want) in rows {
        let got = load_server_config(cert, key, provider());
        match (got, want) {
            (Ok(config), None) => assert_eq!(config.alpn_protocols, [ALPN_HTTP11], "{name}"),
            (Err(e), Some((path, problem))) => {
                assert_eq!(e.path, *path, "{name}");
                assert!(e.problem.contains(problem), "{name}: {e}");
            }
            (got, want) => panic!("{name}: got {:?}, want {want:?}", got.map(|_| ())),
        }
    }
}

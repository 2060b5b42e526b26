//! rustls driven sans-IO over a monoio `TcpStream`: ciphertext moves through the connection's
//! own two buffers with cancelable reads and writes, plaintext through the caller's buffer.
//!
//! It speaks no HTTP. Also here: loading the TLS material at startup (`--tls-cert`/`--tls-key`,
//! `--upstream-ca`, system roots, `--insecure`) into rustls configurations, on the main thread.
//!
//! Why not `monoio-rustls`: its stream has no cancelable reads, breaks when a timed-out read is
//! dropped, and hides the session (so no facts for the trace). Driving the session ourselves is
//! `read_tls` → `process_new_packets` → `reader` for input and `writer` → `write_tls` for output.

use std::{
    io::{self, BufRead, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use monoio::{buf::IoBufMut, io::CancelableAsyncReadRent, net::TcpStream};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::Acceptor,
};

use super::transport::{Cancel, until, write_all};

/// The only application protocol offered and accepted (ALPN): phantom-fast speaks HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Room for ciphertext read from the socket per read: one full TLS record (16 KiB payload plus
/// header and tag) fits, so a record never needs two reads to be decrypted.
pub const TLS_READ_BYTES: usize = 16 * 1024 + 512;

/// The crypto provider every configuration uses: rustls' `ring` backend, with the AES-128-GCM
/// suites (SHA-256) ahead of the others, in TLS 1.3 and 1.2 alike; with
/// [`ServerConfig::ignore_client_order`] our servers choose them too.
///
/// Why: a TLS 1.3 handshake hashes its transcript and derives every key with the suite's hash.
/// SHA-256 runs on the CPU's SHA extensions (x86 SHA-NI, ARMv8), SHA-384 on SHA-512, which ring
/// 0.17 computes in portable code on every x86 CPU but Intel's: on an AMD EPYC it was 11% of a
/// new https connection's CPU (`perf record`, a new connection per request). AES-128-GCM is the
/// suite every TLS 1.3 peer must implement (RFC 8446 §9.1) and costs fewer AES rounds per byte.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: each group keeps rustls' order.
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes128_sha256(suite.suite()));
    Arc::new(provider)
}

fn is_aes128_sha256(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

// ---------------------------------------------------------------------------------------------
// Startup: TLS material into configurations (main thread; files and the system store).
// ---------------------------------------------------------------------------------------------

/// A TLS file that cannot be used, and why: bad input, reported before binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, in words.
    pub problem: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for TlsFileError {}

fn file_error(path: &Path, problem: impl Into<String>) -> TlsFileError {
    TlsFileError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn pem_problem(path: &Path, what: &str, e: &rustls::pki_types::pem::Error) -> TlsFileError {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::Io(io) => file_error(path, format!("cannot read it: {io}")),
        Pem::NoItemsFound => file_error(path, format!("holds no PEM {what}")),
        other => file_error(path, format!("is not valid PEM: {other}")),
    }
}

/// Reads every `CERTIFICATE` block of a PEM file (a chain, or a bundle of roots).
///
/// # Errors
/// The file is unreadable, not PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_problem(path, "CERTIFICATE", &e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

/// `--tls-cert`/`--tls-key`: the https listener's configuration. RSA or ECDSA keys (PKCS#8,
/// PKCS#1 or SEC1), a chain allowed; ALPN `http/1.1` only; rustls' in-memory session cache.
///
/// # Errors
/// Either file missing, unreadable or not PEM; no key; a key rustls cannot use; a key that is
/// not the certificate's (the error names the key file and the certificate).
pub fn load_server_config(
    cert_path: &Path,
    key_path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let chain = load_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| pem_problem(key_path, "PRIVATE KEY", &e))?;
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(cert_path, e.to_string()))?
        .with_no_client_auth();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => file_error(
            key_path,
            format!("does not match the certificate in {}", cert_path.display()),
        ),
        other => file_error(key_path, format!("cannot be used: {other}")),
    })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    // Our suite order ([`provider`]), not the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Where an upstream's certificate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootsSource {
    /// `--upstream-ca FILE`.
    File,
    /// The operating system's store.
    System,
    /// The system store was empty: the bundled Mozilla roots (webpki-roots).
    Bundled,
    /// `--insecure`: nothing is checked.
    Insecure,
}

/// The configuration for TLS towards upstreams (https upstreams, MITM, absolute `https://`):
/// verification against `--upstream-ca` or the system roots (the bundled Mozilla roots when the
/// system has none), or none at all with `--insecure`; ALPN `http/1.1`; session resumption from
/// an in-memory cache (rustls' default, 256 sessions).
///
/// # Errors
/// `--upstream-ca` unreadable, not PEM, or holding no usable certificate.
pub fn load_client_config(
    upstream_ca: Option<&Path>,
    insecure: bool,
    provider: Arc<CryptoProvider>,
) -> Result<(Arc<ClientConfig>, RootsSource), TlsFileError> {
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(Path::new("-"), e.to_string()))?;
    let (mut config, source) = if insecure {
        let verifier = Arc::new(NoVerification(provider.signature_verification_algorithms));
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        (config, RootsSource::Insecure)
    } else {
        let (roots, source) = match upstream_ca {
            Some(path) => (roots_from_file(path)?, RootsSource::File),
            None => system_roots(),
        };
        (
            builder.with_root_certificates(roots).with_no_client_auth(),
            source,
        )
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok((Arc::new(config), source))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(path)?);
    if added == 0 {
        return Err(file_error(path, "holds no certificate usable as a root"));
    }
    Ok(roots)
}

fn system_roots() -> (RootCertStore, RootsSource) {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return (roots, RootsSource::Bundled);
    }
    (roots, RootsSource::System)
}

/// `--insecure`: accepts any certificate, but still checks the handshake signatures (so the
/// session keys are those of whoever holds the certificate's key, as curl `-k` does).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Facts for the trace record.
// ---------------------------------------------------------------------------------------------

/// How the peer's certificate was judged: the trace record's own type, so the facts go into a
/// record as they are.
pub use crate::trace::TlsVerification as Verification;

/// What a trace record says about one TLS session; borrows from the stream, allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts<'a> {
    /// `TLSv1_3`, `TLSv1_2` (IANA names, as rustls spells them); `None` before the handshake.
    pub version: Option<&'static str>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`; `None` before the handshake.
    pub cipher_suite: Option<&'static str>,
    /// The SNI name: sent (as a client) or received (as a server).
    pub server_name: Option<&'a str>,
    /// How the peer's certificate was judged.
    pub verification: Verification,
    /// Whether the session was resumed rather than fully negotiated.
    pub resumed: bool,
    /// The version as on the wire (`0x0304` for TLS 1.3); 0 before the handshake.
    pub version_code: u16,
    /// The cipher suite's IANA code point; 0 before the handshake.
    pub cipher_suite_code: u16,
}

/// Why a handshake failed, in the few words a trace record keeps; `None` when `err` is not a
/// TLS failure from this module (a socket error, a timeout).
pub fn failure_reason(err: &io::Error) -> Option<&'static str> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate not valid for name"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid"
            }
            CertificateError::Revoked => "certificate revoked",
            CertificateError::BadSignature => "bad certificate signature",
            _ => "invalid certificate",
        },
        rustls::Error::AlertReceived(alert) => alert_reason(*alert),
        rustls::Error::NoCertificatesPresented => "no certificate presented",
        rustls::Error::PeerIncompatible(_) => "no common parameters (version, cipher, group)",
        rustls::Error::InvalidMessage(_) => "not TLS (or corrupt TLS)",
        rustls::Error::PeerMisbehaved(_) => "peer misbehaved",
        rustls::Error::DecryptError => "decrypt error",
        _ => "TLS error",
    })
}

/// Why a handshake we served failed, for the record of a client whose handshake did: the TLS
/// reason ([`failure_reason`]), else what the socket said (a stall, a close mid-handshake).
pub fn handshake_failure(err: &io::Error) -> &'static str {
    failure_reason(err).unwrap_or(match err.kind() {
        io::ErrorKind::TimedOut => "handshake timed out",
        io::ErrorKind::UnexpectedEof => "peer closed during the handshake",
        _ => "socket error during the handshake",
    })
}

/// A fatal alert the peer sent, named as in the IANA registry (RFC 8446 §6.2).
fn alert_reason(alert: rustls::AlertDescription) -> &'static str {
    use rustls::AlertDescription as A;
    match alert {
        A::CloseNotify => "peer alert: close notify",
        A::UnexpectedMessage => "peer alert: unexpected message",
        A::BadRecordMac => "peer alert: bad record mac",
        A::RecordOverflow => "peer alert: record overflow",
        A::HandshakeFailure => "peer alert: handshake failure",
        A::BadCertificate => "peer alert: bad certificate",
        A::UnsupportedCertificate => "peer alert: unsupported certificate",
        A::CertificateRevoked => "peer alert: certificate revoked",
        A::CertificateExpired => "peer alert: certificate expired",
        A::CertificateUnknown => "peer alert: certificate unknown",
        A::IllegalParameter => "peer alert: illegal parameter",
        A::UnknownCA => "peer alert: unknown CA",
        A::AccessDenied => "peer alert: access denied",
        A::DecodeError => "peer alert: decode error",
        A::DecryptError => "peer alert: decrypt error",
        A::ProtocolVersion => "peer alert: protocol version",
        A::InsufficientSecurity => "peer alert: insufficient security",
        A::InternalError => "peer alert: internal error",
        A::InappropriateFallback => "peer alert: inappropriate fallback",
        A::UserCanceled => "peer alert: user canceled",
        A::MissingExtension => "peer alert: missing extension",
        A::UnsupportedExtension => "peer alert: unsupported extension",
        A::UnrecognisedName => "peer alert: unrecognized name",
        A::CertificateRequired => "peer alert: certificate required",
        A::NoApplicationProtocol => "peer alert: no application protocol",
        _ => "peer alert",
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

// ---------------------------------------------------------------------------------------------
// The stream.
// ---------------------------------------------------------------------------------------------

/// A TLS session over a TCP stream, driven sans-IO. Ciphertext lives in `rx`/`tx` (owned,
/// reused: hand in pooled buffers), plaintext is appended to the caller's buffer by
/// [`TlsStream::read`]. Every socket operation is cancelable and bounded by a deadline.
pub struct TlsStream {
    tcp: TcpStream,
    session: Connection,
    /// Ciphertext read from the socket; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext being written; empty between writes.
    tx: Vec<u8>,
    canceller: Cancel,
    /// The SNI name sent, as a client.
    server_name: Option<Box<str>>,
    verification: Verification,
    /// The TCP stream reached end of input.
    tcp_eof: bool,
    /// The peer sent `close_notify`.
    close_notify: bool,
    /// Some ciphertext ever arrived from the peer (a connection that closes or stalls before
    /// saying anything attempted no handshake).
    heard: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("facts", &self.facts())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// Starts a client session towards `server_name` (its SNI; an IP address sends none).
    /// `insecure` only labels the facts ([`Verification::Skipped`]); the config decides. `rx`
    /// and `tx` are reused buffers (their contents are discarded). Call [`TlsStream::handshake`]
    /// next.
    ///
    /// # Errors
    /// `InvalidInput` for a name that is neither a DNS name nor an IP address.
    pub fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
        insecure: bool,
        rx: Vec<u8>,
        tx: Vec<u8>,
    ) -> io::Result<TlsStream> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let session = ClientConnection::new(config, name).map_err(tls_error)?;
        let verification = if insecure {
            Verification::Skipped
        } else {
            Verification::Verified
        };
        Ok(TlsStream::new(
            tcp,
            session.into(),
            Some(server_name.into()),
            verification,
            rx,
            tx,
        ))
    }

    /// Starts a server session. `rx` may already hold ciphertext read from `tcp` (the start of a
    /// ClientHello that arrived with earlier bytes); `tx` is a reused buffer. Call
    /// [`TlsStream::handshake`] next.
    pub fn server(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        rx: Vec<u8>,
        tx: Vec<u8>,
    ) -> TlsStream {
        let session = ServerConnection::new(config).expect("a server config builds a session");
        TlsStream::new(
            tcp,
            session.into(),
            None,
            Verification::NotApplicable,
            rx,
            tx,
        )
    }

    fn new(
        tcp: TcpStream,
        session: Connection,
        server_name: Option<Box<str>>,
        verification: Verification,
        mut rx: Vec<u8>,
        mut tx: Vec<u8>,
    ) -> TlsStream {
        rx.reserve(TLS_READ_BYTES);
        tx.clear();
        let heard = !rx.is_empty();
        TlsStream {
            tcp,
            session,
            rx,
            rx_pos: 0,
            tx,
            canceller: Cancel::default(),
            server_name,
            verification,
            tcp_eof: false,
            close_notify: false,
            heard,
        }
    }

    /// Gives back the TCP stream and the two buffers (for the pool).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>, Vec<u8>) {
        (self.tcp, self.rx, self.tx)
    }

    /// The session's facts for the trace record.
    pub fn facts(&self) -> TlsFacts<'_> {
        let server_name = match &self.session {
            Connection::Client(_) => self.server_name.as_deref(),
            Connection::Server(s) => s.server_name(),
        };
        TlsFacts {
            version: self.session.protocol_version().and_then(|v| v.as_str()),
            cipher_suite: self
                .session
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str()),
            server_name,
            verification: self.verification,
            resumed: self.session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            version_code: self.session.protocol_version().map_or(0, u16::from),
            cipher_suite_code: self
                .session
                .negotiated_cipher_suite()
                .map_or(0, |s| u16::from(s.suite())),
        }
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.session.alpn_protocol()
    }

    /// Runs the handshake to completion before `deadline`, writing each flight as it is ready.
    /// On a TLS error, the alert rustls prepared is sent (best effort) before returning.
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes (the pending read cancelled and awaited); `InvalidData`
    /// wrapping the [`rustls::Error`] ([`failure_reason`] names it); `UnexpectedEof` when the peer
    /// closes first; socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: bounded by `deadline` instead.
    pub async fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        while self.session.is_handshaking() {
            if self.session.wants_write() {
                self.flush(deadline).await?;
                continue;
            }
            if self.rx_pos < self.rx.len() {
                self.feed(deadline).await?;
                continue;
            }
            if self.read_socket(deadline, std::future::pending()).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
        }
        // The last flight (a client's Finished, a server's session tickets).
        self.flush(deadline).await
    }

    /// Appends up to `max` plaintext bytes to `out`, reading and decrypting as needed. Returns
    /// how many: `Ok(0)` at end of stream (a `close_notify`, or a TCP close without one, which
    /// HTTP/1.1's own framing detects when it matters) or when `max` is 0.
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes, `Interrupted` when `stop` completes first (either way
    /// the socket read is cancelled and awaited; no ciphertext is lost); `InvalidData` for a TLS
    /// error (its alert sent); socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: bounded by `deadline` and `stop` instead.
    pub async fn read(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
        deadline: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        self.read_plain(deadline, stop, |plain| {
            let n = plain.len().min(max);
            out.extend_from_slice(&plain[..n]);
            n
        })
        .await
    }

    /// [`TlsStream::read`] into a rent buffer (the transport's form): plaintext is written from
    /// `buf.write_ptr()`, at most `buf.bytes_total()` bytes, and `buf`'s initialised length set.
    ///
    /// # Errors
    /// As [`TlsStream::read`].
    ///
    /// # Cancel safety
    /// As [`TlsStream::read`].
    pub async fn read_buf<T: IoBufMut>(
        &mut self,
        mut buf: T,
        deadline: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> (io::Result<usize>, T) {
        let room = buf.bytes_total();
        if room == 0 {
            return (Ok(0), buf);
        }
        let dst = buf.write_ptr();
        let res = self
            .read_plain(deadline, stop, |plain| {
                let n = plain.len().min(room);
                // SAFETY: `dst` is valid for `room` bytes of writes (IoBufMut's contract) and
                // `buf` is not touched while this closure runs; `n <= room`; rustls' buffer and
                // ours never overlap.
                unsafe { std::ptr::copy_nonoverlapping(plain.as_ptr(), dst, n) };
                n
            })
            .await;
        if let Ok(n) = res {
            // SAFETY: the first `n` bytes from `write_ptr` were just written.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }

    /// The read loop: plaintext first, then buffered ciphertext, then the socket. `take` copies
    /// from the plaintext it is shown and says how much it took (0 only for end of stream).
    async fn read_plain(
        &mut self,
        deadline: Instant,
        stop: impl std::future::Future<Output = ()>,
        mut take: impl FnMut(&[u8]) -> usize,
    ) -> io::Result<usize> {
        let mut stop = std::pin::pin!(stop);
        loop {
            let mut reader = self.session.reader();
            let taken = match reader.fill_buf() {
                Ok(plain) => Some(take(plain)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => return Err(e),
            };
            if let Some(n) = taken {
                reader.consume(n);
                return Ok(n);
            }
            if self.rx_pos < self.rx.len() {
                self.feed(deadline).await?;
                continue;
            }
            if self.session.wants_write() {
                // e.g. a KeyUpdate answer; never left waiting behind a read.
                self.flush(deadline).await?;
            }
            if self.tcp_eof {
                return Ok(0);
            }
            if self.read_socket(deadline, stop.as_mut()).await? == 0 {
                // Tell rustls: it then reports a clean or an unclean close.
                self.session.read_tls(&mut &[][..])?;
            }
        }
    }

    /// Turns Nagle off on the TCP stream.
    ///
    /// # Errors
    /// As `setsockopt`.
    pub fn set_nodelay(&self) -> io::Result<()> {
        self.tcp.set_nodelay(true)
    }

    /// The TCP socket's descriptor (for socket options such as `SO_LINGER`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }

    /// Encrypts and writes all of `data` before `deadline`.
    ///
    /// # Errors
    /// `TimedOut` when `deadline` passes (a peer that stops reading); socket errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: bounded by `deadline` instead.
    pub async fn write_all(&mut self, data: &[u8], deadline: Instant) -> io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            at += self.session.writer().write(&data[at..])?;
            self.flush(deadline).await?;
        }
        Ok(())
    }

    /// Sends `close_notify` (best effort, before `deadline`): the orderly end of a session.
    /// Nothing for a session whose handshake never finished (a failed one sent its alert).
    ///
    /// # Errors
    /// As [`TlsStream::write_all`].
    pub async fn close(&mut self, deadline: Instant) -> io::Result<()> {
        if self.session.is_handshaking() {
            return Ok(());
        }
        self.session.send_close_notify();
        self.flush(deadline).await
    }

    /// Whether any ciphertext ever arrived from the peer: a handshake that failed without it
    /// (a port probe, a client that connects and leaves or stays silent) was never attempted.
    pub fn heard_from_peer(&self) -> bool {
        self.heard
    }

    /// Whether the peer sent `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.tcp_eof || self.close_notify
    }

    /// Whether an idle (pooled) connection can carry a new request: open, nothing unread, and
    /// nothing but handshake traffic waiting in the socket. TLS 1.3 servers send session tickets
    /// after the handshake, often after the first response; those are read and absorbed here
    /// (non-blocking) and do not count as unsolicited bytes. Application data (the response
    /// queue poisoned), a `close_notify` (the peer is leaving), EOF or an error all say no.
    pub fn is_idle_clean(&mut self) -> bool {
        loop {
            if self.peer_closed()
                || self.session.is_handshaking()
                || self.session.process_new_packets().map_or(true, |io| {
                    io.plaintext_bytes_to_read() > 0 || io.peer_has_closed()
                })
            {
                return false;
            }
            if self.rx_pos < self.rx.len() {
                match self.feed_sync() {
                    Ok(()) => continue,
                    Err(_) => return false,
                }
            }
            if self.rx.capacity() == self.rx.len() {
                self.rx.reserve(TLS_READ_BYTES);
            }
            let spare = self.rx.spare_capacity_mut();
            // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `self.rx`; the
            // fd is owned by `self.tcp`, alive for the call, and no io_uring op is in flight on
            // it (the connection is idle); MSG_DONTWAIT makes the call non-blocking.
            let n = unsafe {
                libc::recv(
                    self.tcp.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return false,
                n if n > 0 => {
                    let len = self.rx.len() + n as usize;
                    // SAFETY: the kernel initialised `n` bytes after the old length, within
                    // capacity.
                    unsafe { self.rx.set_len(len) };
                }
                _ => return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock,
            }
        }
    }

    /// Hands buffered ciphertext to rustls and processes it; on a TLS error, sends the alert.
    async fn feed(&mut self, deadline: Instant) -> io::Result<()> {
        match self.feed_sync() {
            Ok(()) => Ok(()),
            Err(e) => {
                // The alert rustls queued; the error wins over a failure to send it.
                let _ = self.flush(deadline).await;
                Err(e)
            }
        }
    }

    fn feed_sync(&mut self) -> io::Result<()> {
        let n = self.session.read_tls(&mut &self.rx[self.rx_pos..])?;
        self.rx_pos += n;
        if self.rx_pos == self.rx.len() {
            self.rx.clear();
            self.rx_pos = 0;
        }
        let state = self.session.process_new_packets().map_err(tls_error)?;
        self.close_notify |= state.peer_has_closed();
        Ok(())
    }

    /// Reads ciphertext after what `rx` holds; `Ok(0)` at EOF.
    async fn read_socket(
        &mut self,
        deadline: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> io::Result<usize> {
        if self.rx_pos > 0 {
            self.rx.drain(..self.rx_pos);
            self.rx_pos = 0;
        }
        if self.rx.capacity() - self.rx.len() < TLS_READ_BYTES / 4 {
            self.rx.reserve(TLS_READ_BYTES);
        }
        let rx = std::mem::take(&mut self.rx);
        let len = rx.len();
        let read = self
            .tcp
            .cancelable_read(rx.slice_mut(len..), self.canceller.handle());
        let (res, slice) = until(read, &mut self.canceller, deadline, stop).await;
        self.rx = slice.into_inner();
        let n = res?;
        self.tcp_eof |= n == 0;
        self.heard |= n > 0;
        Ok(n)
    }

    /// Writes every TLS record rustls has ready.
    async fn flush(&mut self, deadline: Instant) -> io::Result<()> {
        while self.session.wants_write() {
            self.tx.clear();
            self.session.write_tls(&mut self.tx)?;
            let tx = std::mem::take(&mut self.tx);
            let (res, tx) = write_all(&mut self.tcp, &mut self.canceller, tx, deadline).await;
            self.tx = tx;
            res?;
        }
        self.tx.clear();
        Ok(())
    }
}

/// The first flight of a server session before a certificate is chosen: reads the ClientHello
/// (for MITM, whose leaf depends on the SNI name), then becomes a [`TlsStream`] with the
/// configuration picked for that name.
pub struct LazyServer {
    tcp: TcpStream,
    acceptor: Acceptor,
    accepted: Option<rustls::server::Accepted>,
    sni: Option<Box<str>>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    canceller: Cancel,
}

impl LazyServer {
    /// Reads until a whole ClientHello arrived. `rx` may already hold its first bytes.
    ///
    /// # Errors
    /// `TimedOut` past `deadline`; `InvalidData` wrapping the rustls error when the bytes are not
    /// a ClientHello (the alert sent); `UnexpectedEof` when the client closes first.
    ///
    /// # Cancel safety
    /// Not cancel safe: bounded by `deadline` instead.
    pub async fn read_hello(
        tcp: TcpStream,
        mut rx: Vec<u8>,
        tx: Vec<u8>,
        deadline: Instant,
    ) -> io::Result<LazyServer> {
        rx.reserve(TLS_READ_BYTES);
        let mut lazy = LazyServer {
            tcp,
            acceptor: Acceptor::default(),
            accepted: None,
            sni: None,
            rx,
            tx,
            canceller: Cancel::default(),
        };
        loop {
            if !lazy.rx.is_empty() {
                let mut input = &lazy.rx[..];
                let n = lazy.acceptor.read_tls(&mut input)?;
                lazy.rx.drain(..n);
                match lazy.acceptor.accept() {
                    Ok(Some(accepted)) => {
                        lazy.sni = accepted.client_hello().server_name().map(Into::into);
                        lazy.accepted = Some(accepted);
                        return Ok(lazy);
                    }
                    Ok(None) => {}
                    Err((e, mut alert)) => {
                        lazy.tx.clear();
                        let _ = alert.write(&mut lazy.tx);
                        let tx = std::mem::take(&mut lazy.tx);
                        let _ = write_all(&mut lazy.tcp, &mut lazy.canceller, tx, deadline).await;
                        return Err(tls_error(e));
                    }
                }
                if !lazy.rx.is_empty() {
                    continue;
                }
            }
            let rx = std::mem::take(&mut lazy.rx);
            let len = rx.len();
            let read = lazy
                .tcp
                .cancelable_read(rx.slice_mut(len..), lazy.canceller.handle());
            let (res, slice) =
                until(read, &mut lazy.canceller, deadline, std::future::pending()).await;
            lazy.rx = slice.into_inner();
            if res? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The SNI name the client asked for, if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Continues the session with `config` (e.g. a leaf for [`LazyServer::server_name`]); call
    /// [`TlsStream::handshake`] next.
    ///
    /// # Errors
    /// `InvalidData` when the ClientHello does not fit `config` (the alert is queued in the
    /// returned error's stead and sent best effort).
    pub fn into_stream(mut self, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let accepted = self
            .accepted
            .take()
            .expect("read_hello returned an accepted hello");
        match accepted.into_connection(config) {
            Ok(session) => Ok(TlsStream::new(
                self.tcp,
                session.into(),
                None,
                Verification::NotApplicable,
                self.rx,
                self.tx,
            )),
            Err((e, _alert)) => Err(tls_error(e)),
        }
    }
}

#[cfg(test)]
mod tests;

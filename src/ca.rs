//! The MITM certificate authority: load or create `ca.pem`/`ca-key.pem`, and sign per-host leaf
//! certificates (one key per process) that a worker caches in a bounded LRU.
//!
//! It does no network I/O and knows nothing of monoio. Files are only touched by
//! [`Ca::load_or_create`], which runs on the main thread (or in the `ca` subcommand); signing a
//! leaf is pure CPU work (one ECDSA P-256 signature), done on a worker only on a cache miss.

use std::{
    fs,
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    sign::{CertifiedKey, SigningKey, SingleCertAndKey},
};
use time::OffsetDateTime;

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Validity of a newly created CA: ten years.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a leaf: one year (browsers cap publicly trusted leaves at ~398 days).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far certificates are backdated, so a client whose clock runs a little behind accepts
/// them (mitmproxy backdates two days).
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// Leaves a worker keeps signed, per name. A MITM session towards more distinct hosts than this
/// re-signs the least recently used one.
pub const LEAF_CACHE_ENTRIES: usize = 256;
/// Common name and organisation of the CA certificate.
const CA_NAME: &str = "phantom-fast MITM CA";
const CA_ORG: &str = "phantom-fast";

/// Why the CA could not be loaded, created or used.
#[derive(Debug)]
pub enum CaError {
    /// A CA file or directory could not be read or written.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A CA file exists but is unusable (bad PEM, wrong key type, key and certificate differ, only
    /// one of the two files present).
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Generating or signing a certificate failed (a name rcgen refuses, a crypto failure).
    Sign(String),
}

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaError::Io { path, .. } => write!(f, "cannot use the CA file {}", path.display()),
            CaError::Invalid { path, problem } => {
                write!(f, "unusable CA file {}: {problem}", path.display())
            }
            CaError::Sign(msg) => write!(f, "cannot sign a certificate: {msg}"),
        }
    }
}

impl std::error::Error for CaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaError::Io { source, .. } => Some(source),
            CaError::Invalid { .. } | CaError::Sign(_) => None,
        }
    }
}

/// `$XDG_DATA_HOME/phantom-fast/ca`, else `~/.local/share/phantom-fast/ca`.
pub fn default_ca_dir() -> PathBuf {
    ca_dir_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

fn ca_dir_from(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    // XDG Base Directory spec: a relative $XDG_DATA_HOME is invalid and must be ignored.
    if let Some(xdg) = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return xdg.join("phantom-fast").join("ca");
    }
    if let Some(home) = home.filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(".local/share/phantom-fast/ca");
    }
    PathBuf::from("phantom-fast-ca")
}

/// The loaded CA plus this process's leaf key. `Send + Sync`: built on the main thread, shared by
/// every worker in an `Arc`.
pub struct Ca {
    cert_path: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf of this process: a leaf costs a signature, not a key generation.
    leaf_key: KeyPair,
    /// The same key as rustls signs handshakes with.
    leaf_signer: Arc<dyn SigningKey>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads `ca.pem` and `ca-key.pem` from `dir`, or creates both (ECDSA P-256, ten years; the
    /// key file mode 0600, the directory 0700) when neither exists. Generates this process's
    /// leaf key.
    ///
    /// # Errors
    /// [`CaError::Io`] when the directory or a file cannot be read or written;
    /// [`CaError::Invalid`] when only one file exists, or a file does not parse, or the key does
    /// not belong to the certificate.
    pub fn load_or_create(dir: &Path, provider: Arc<CryptoProvider>) -> Result<Ca, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (cert_pem, key_pem) = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => create(dir, &cert_path, &key_path)?,
            (Some(_), None) => return Err(only_one(&key_path, &cert_path)),
            (None, Some(_)) => return Err(only_one(&cert_path, &key_path)),
        };
        let invalid = |path: &Path, problem: String| CaError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let ca_signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )))
            .map_err(|e| invalid(&key_path, e.to_string()))?;
        CertifiedKey::new(vec![cert_der.clone()], ca_signer)
            .keys_match()
            .map_err(|_| {
                invalid(
                    &key_path,
                    format!("is not the key of {}", cert_path.display()),
                )
            })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let leaf_signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                leaf_key.serialize_der(),
            )))
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Ca {
            cert_path,
            cert_pem,
            cert_der,
            issuer,
            leaf_key,
            leaf_signer,
            provider,
        })
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate as PEM text.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER (for a test's root store).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs a leaf for `name` (a DNS name, or an IP address which gets an IP SAN): valid one
    /// year from a day ago, server-auth only, this process's leaf key.
    ///
    /// # Errors
    /// [`CaError::Sign`] when `name` is not a valid DNS name or signing fails.
    pub fn sign_leaf(&self, name: &str) -> Result<rcgen::Certificate, CaError> {
        let sign = |e: rcgen::Error| CaError::Sign(format!("{name:?}: {e}"));
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen accepts any IA5 string; a certificate is only useful for a real DNS name.
                rustls::pki_types::DnsName::try_from(name)
                    .map_err(|_| CaError::Sign(format!("{name:?} is not a DNS name")))?;
                SanType::DnsName(name.try_into().map_err(sign)?)
            }
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, CA_ORG);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        (params.not_before, params.not_after) = validity(LEAF_VALIDITY);
        params.signed_by(&self.leaf_key, &self.issuer).map_err(sign)
    }

    /// This process's leaf key as PEM (tests write it next to a leaf).
    #[cfg(test)]
    pub(crate) fn leaf_key_pem(&self) -> String {
        self.leaf_key.serialize_pem()
    }

    /// A server configuration presenting a fresh leaf for `name` (ALPN `http/1.1` only).
    ///
    /// # Errors
    /// As [`Ca::sign_leaf`]; [`CaError::Sign`] when rustls refuses the configuration.
    pub fn leaf_config(&self, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        let leaf = self.sign_leaf(name)?;
        let certified = CertifiedKey::new(vec![leaf.der().clone()], Arc::clone(&self.leaf_signer));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Sign(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The provider's suite order (AES-128-GCM first, see `net::tls::provider`).
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// A worker's leaf configurations by name, least recently used evicted first: a repeat host
/// costs no signature. `!Sync` by intent: one per worker, no locks.
#[derive(Debug)]
pub struct LeafCache {
    /// `(name, config, last use)`; small enough that a linear scan beats hashing.
    entries: Vec<(Box<str>, Arc<ServerConfig>, u64)>,
    capacity: usize,
    clock: u64,
    signed: u64,
}

impl LeafCache {
    /// An empty cache holding at most `capacity` (at least 1) leaves.
    pub fn new(capacity: usize) -> LeafCache {
        LeafCache {
            entries: Vec::new(),
            capacity: capacity.max(1),
            clock: 0,
            signed: 0,
        }
    }

    /// The configuration for `name`, signing a leaf only when `name` is not cached. Names are
    /// compared case-insensitively (DNS names are).
    ///
    /// # Errors
    /// As [`Ca::leaf_config`].
    pub fn get_or_sign(&mut self, ca: &Ca, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        self.clock += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        {
            entry.2 = self.clock;
            return Ok(Arc::clone(&entry.1));
        }
        let config = ca.leaf_config(&name.to_ascii_lowercase())?;
        self.signed += 1;
        let entry = (
            name.to_ascii_lowercase().into_boxed_str(),
            Arc::clone(&config),
            self.clock,
        );
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|(_, _, used)| *used) {
            *oldest = entry;
        }
        Ok(config)
    }

    /// Leaves held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no leaf is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Leaves signed by this cache so far (misses).
    pub fn signed(&self) -> u64 {
        self.signed
    }
}

/// `phantom-fast ca`: where the certificate is, the PEM, and how to trust it.
pub fn describe(ca: &Ca) -> String {
    let path = ca.cert_path().display();
    format!(
        "CA certificate: {path}\n{pem}\n\
         Trust it (one of):\n  \
         curl --cacert {path} -x http://127.0.0.1:8080 https://example.com/\n  \
         export SSL_CERT_FILE={path}        # OpenSSL-based tools, Ruby, Go on Linux\n  \
         export REQUESTS_CA_BUNDLE={path}   # Python requests\n  \
         export NODE_EXTRA_CA_CERTS={path}  # Node.js\n",
        pem = ca.cert_pem().trim_end(),
    )
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn only_one(missing: &Path, present: &Path) -> CaError {
    CaError::Invalid {
        path: missing.to_path_buf(),
        problem: format!(
            "is missing while {} exists (remove it to create a new CA)",
            present.display()
        ),
    }
}

/// Creates the directory and a new CA; returns `(cert PEM, key PEM)`. The key is written first,
/// with `create_new` and mode 0600, so it is never world-readable and a concurrent first run
/// cannot overwrite another's key.
fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(String, String), CaError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, CA_ORG);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    (params.not_before, params.not_after) = validity(CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(sign)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .map_err(io_err(key_path))?;
    file.write_all(key_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(key_path))?;
    // The certificate appears whole or not at all: written aside, then renamed.
    let tmp = cert_path.with_extension("pem.tmp");
    fs::write(&tmp, &cert_pem)
        .and_then(|()| fs::rename(&tmp, cert_path))
        .map_err(io_err(cert_path))?;
    Ok((cert_pem, key_pem))
}

/// `(now - BACKDATE, now + validity)`.
fn validity(valid_for: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::from(SystemTime::now());
    (now - BACKDATE, now + valid_for)
}

/// 16 random bytes with the top bit clear (RFC 5280 §4.1.2.2: a positive integer, at most 20
/// bytes). Uniqueness, not secrecy, is what matters, so the non-cryptographic RNG will do.
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn ca_created_then_reused_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let first = Ca::load_or_create(&ca_dir, provider()).unwrap();
        let mode = fs::metadata(ca_dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Ca::load_or_create(&ca_dir, provider()).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        assert_eq!(first.cert_der(), second.cert_der());
        assert!(describe(&second).contains("NODE_EXTRA_CA_CERTS="));
    }

    #[test]
    fn ca_with_one_file_missing_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), provider()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(dir.path(), provider()).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn ca_key_of_another_ca_is_invalid() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        Ca::load_or_create(a.path(), provider()).unwrap();
        Ca::load_or_create(b.path(), provider()).unwrap();
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(a.path(), provider()).unwrap_err();
        assert!(err.to_string().contains("is not the key of"), "{err}");
    }

    #[test]
    fn leaf_cache_signs_once_per_name_and_evicts_least_recent() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), provider()).unwrap();
        let mut cache = LeafCache::new(2);
        let a = cache.get_or_sign(&ca, "a.test").unwrap();
        let again = cache.get_or_sign(&ca, "A.TEST").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(cache.signed(), 1);
        cache.get_or_sign(&ca, "b.test").unwrap();
        cache.get_or_sign(&ca, "a.test").unwrap(); // a is now the most recent
        cache.get_or_sign(&ca, "127.0.0.1").unwrap(); // evicts b
        assert_eq!((cache.len(), cache.signed()), (2, 3));
        cache.get_or_sign(&ca, "a.test").unwrap();
        assert_eq!(cache.signed(), 3);
        cache.get_or_sign(&ca, "b.test").unwrap();
        assert_eq!(cache.signed(), 4);
    }

    #[test]
    fn leaf_rejects_invalid_dns_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), provider()).unwrap();
        assert!(ca.sign_leaf("bad name with spaces").is_err());
    }

    #[test]
    fn ca_dir_rows() {
        let rows: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            ("xdg", Some("/x"), Some("/h"), "/x/phantom-fast/ca"),
            (
                "relative_xdg_ignored",
                Some("x"),
                Some("/h"),
                "/h/.local/share/phantom-fast/ca",
            ),
            ("home", None, Some("/h"), "/h/.local/share/phantom-fast/ca"),
            ("nothing", None, None, "phantom-fast-ca"),
        ];
        for (name, xdg, home, want) in rows {
            let got = ca_dir_from(xdg.map(Into::into), home.map(Into::into));
            assert_eq!(got, PathBuf::from(want), "{name}");
        }
    }
}

//! fusebox's local certificate authority (docs/ARCHITECTURE.md §13): the CA that HTTPS
//! interception presents certificates from. `fusebox ca init` creates it, `fusebox ca
//! show` prints the certificate for apps to trust, and [`LocalCa::leaf`] mints the certificate
//! for one host on demand.
//!
//! The CA is an ECDSA P-256 key (`ca-key.pem`, mode 0600, never printed) and a self-signed
//! certificate (`ca.pem`) named "fusebox local CA", valid for five years and allowed to sign
//! server certificates only. Leaves are short-lived (24 h), carry the host as a DNS or IP
//! subject alternative name, and are cached per host (at most [`MAX_LEAVES`]) and reused until
//! an hour before they expire, so that a new connection to a known host costs no signature.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA certificate's file in a CA directory.
pub const CERT_FILE: &str = "ca.pem";
/// The CA key's file in a CA directory (mode 0600).
pub const KEY_FILE: &str = "ca-key.pem";
/// The CA certificate's common name.
pub const CA_NAME: &str = "fusebox local CA";
/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(86_400);
/// A cached leaf is minted again once it has less than this left.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(3_600);
/// Leaves kept; beyond this the one closest to expiry is dropped.
pub const MAX_LEAVES: usize = 1_024;

/// What went wrong with a CA directory or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already holds a CA: use --force to replace it (apps that trust the old one will stop trusting fusebox)", dir.display())]
    Exists { dir: PathBuf },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot make a certificate for {host:?}: {message}")]
    Leaf { host: String, message: String },
}

/// A loaded CA, ready to mint leaves.
pub struct LocalCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl LocalCa {
    /// Creates a new CA in `dir` (created if missing). An existing CA is kept unless `force`.
    pub fn init(dir: &Path, force: bool, now: SystemTime) -> Result<LocalCa, CaError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if !force && (cert_path.exists() || key_path.exists()) {
            return Err(CaError::Exists {
                dir: dir.to_path_buf(),
            });
        }
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let invalid = |message: String| CaError::Invalid {
            path: cert_path.clone(),
            message,
        };
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| invalid(e.to_string()))?;
        let cert = ca_params(now)
            .self_signed(&key)
            .map_err(|e| invalid(e.to_string()))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, cert.pem()).map_err(|source| io(&cert_path, source))?;
        LocalCa::load(dir)
    }

    /// Loads the CA of `dir`.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let cert_pem = fs::read_to_string(&cert_path).map_err(|source| io(&cert_path, source))?;
        let key_pem = fs::read_to_string(&key_path).map_err(|source| io(&key_path, source))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            message: format!("not a private key fusebox can use: {e}"),
        })?;
        let invalid_cert = |message: String| CaError::Invalid {
            path: cert_path.clone(),
            message,
        };
        let der = pem_certificate(&cert_pem).map_err(&invalid_cert)?;
        if !public_key_matches(&der, &key) {
            return Err(invalid_cert(format!(
                "the certificate does not belong to the key in {}",
                key_path.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| invalid_cert(format!("not a CA certificate: {e}")))?;
        Ok(LocalCa {
            cert_pem,
            cert_der: der,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM: what apps add to their trust store.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certified key to present for `host` (a DNS name, or an IP address): the cached one
    /// while it has more than [`LEAF_RENEW_BEFORE`] left, else a freshly minted one.
    pub fn leaf(&self, host: &str, now: SystemTime) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(cached) = self.cached(&host, now) {
            return Ok(cached);
        }
        let leaf = self.mint(&host, now)?;
        let mut leaves = self.lock();
        if leaves.len() >= MAX_LEAVES && !leaves.contains_key(&host) {
            let soonest = leaves
                .iter()
                .min_by_key(|(_, leaf)| leaf.not_after)
                .map(|(name, _)| name.clone());
            if let Some(name) = soonest {
                leaves.remove(&name);
            }
        }
        leaves.insert(host, leaf.clone());
        Ok(leaf.key)
    }

    /// How many leaves are cached.
    pub fn cached_leaves(&self) -> usize {
        self.lock().len()
    }

    fn cached(&self, host: &str, now: SystemTime) -> Option<Arc<CertifiedKey>> {
        let leaves = self.lock();
        let leaf = leaves.get(host)?;
        let left = leaf.not_after.duration_since(now).unwrap_or(Duration::ZERO);
        (left > LEAF_RENEW_BEFORE).then(|| Arc::clone(&leaf.key))
    }

    fn mint(&self, host: &str, now: SystemTime) -> Result<CachedLeaf, CaError> {
        let failed = |message: String| CaError::Leaf {
            host: host.to_owned(),
            message,
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| failed(format!("{e}")))?),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let not_before = now.checked_sub(Duration::from_secs(300)).unwrap_or(now);
        let not_after = now + LEAF_VALIDITY;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| failed(e.to_string()))?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&private)
            .map_err(|e| failed(e.to_string()))?;
        let chain = vec![cert.der().clone(), self.cert_der.clone()];
        Ok(CachedLeaf {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            not_after,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedLeaf>> {
        self.leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The CA certificate's parameters: a CA for server certificates only, five years from `now`.
fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fusebox");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_before = now.checked_sub(Duration::from_secs(3_600)).unwrap_or(now);
    params.not_before = not_before.into();
    params.not_after = (now + CA_VALIDITY).into();
    params
}

/// The first certificate of a PEM text.
fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no certificate in the file".to_owned())?
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

/// Whether the certificate's public key is `key`'s (the DER of the key's
/// SubjectPublicKeyInfo appears in the certificate).
fn public_key_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    let spki = rcgen::PublicKeyData::subject_public_key_info(key);
    cert.as_ref()
        .windows(spki.len())
        .any(|w| w == spki.as_slice())
}

/// Writes a private file: mode 0600 from the start, never world-readable in between.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| io(path, source))?;
    #[cfg(unix)]
    {
        // `mode` applies only to a new file: an existing one (--force) is narrowed too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|source| io(path, source))?;
    }
    file.write_all(bytes).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false, now()).unwrap();
        assert!(ca
            .certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = LocalCa::init(dir.path(), false, now()).unwrap_err();
        assert!(matches!(again, CaError::Exists { .. }), "{again}");
        let replaced = LocalCa::init(dir.path(), true, now()).unwrap();
        assert_ne!(replaced.certificate_pem(), ca.certificate_pem());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        LocalCa::init(a.path(), false, now()).unwrap();
        LocalCa::init(b.path(), false, now()).unwrap();
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let error = LocalCa::load(a.path()).unwrap_err().to_string();
        assert!(error.contains("does not belong to the key"), "{error}");
        fs::write(a.path().join(CERT_FILE), "garbage").unwrap();
        let error = LocalCa::load(a.path()).unwrap_err().to_string();
        assert!(error.contains("ca.pem"), "{error}");
    }

    #[test]
    fn leaves_are_cached_until_shortly_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false, now()).unwrap();
        let first = ca.leaf("API.example.com.", now()).unwrap();
        let again = ca
            .leaf("api.example.com", now() + Duration::from_secs(60))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one spelling, one leaf");
        assert_eq!(first.cert.len(), 2, "leaf and CA");
        let late = now() + LEAF_VALIDITY - LEAF_RENEW_BEFORE;
        let renewed = ca.leaf("api.example.com", late).unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed), "minted again near expiry");
        let ip = ca.leaf("10.0.0.7", now()).unwrap();
        assert!(!Arc::ptr_eq(&ip, &first));
        assert_eq!(ca.cached_leaves(), 2);
    }

    #[test]
    fn the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false, now()).unwrap();
        for i in 0..MAX_LEAVES + 3 {
            ca.leaf(
                &format!("h{i}.example"),
                now() + Duration::from_secs(i as u64),
            )
            .unwrap();
        }
        assert_eq!(ca.cached_leaves(), MAX_LEAVES);
    }

    #[test]
    fn a_leaf_verifies_against_the_ca_for_its_name_only() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::{ServerName, UnixTime};
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false, SystemTime::now()).unwrap();
        let leaf = ca.leaf("api.example.com", SystemTime::now()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_certificate(ca.certificate_pem()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let verify = |name: &str| {
            verifier.verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify("api.example.com").is_ok());
        assert!(verify("other.example.com").is_err());
    }
}

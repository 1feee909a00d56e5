//! A policy's client certificate for mutual TLS to its upstreams (`client_cert` and
//! `client_key`, docs/ARCHITECTURE.md §3): read and checked once at load, so that `fusebox
//! check` and a reload refuse a pair TLS origination could not use — unreadable, not PEM, no
//! key, a key of another certificate, expired — naming the file and why.
//!
//! The key's bytes are kept for the TLS configuration only: its `Debug` and `Serialize` show
//! the path, never the content.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

/// `client_cert`: the certificate chain (leaf first), as read, and when the leaf expires.
/// Equal only with the same content, so a reload sees a rotated certificate as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// `client_key`: the private key (PKCS#8, RSA or EC), as read.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Serialize for ClientCert {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(serializer)
    }
}

impl Serialize for ClientKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(serializer)
    }
}

/// Which of the two keys a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

/// Reads `cert` and `key` (paths relative to `dir`) and checks that they make a usable client
/// identity at `now`: at least one certificate, a key, the key of the leaf, not expired.
pub fn read(
    dir: &Path,
    cert: &str,
    key: &str,
    now: SystemTime,
) -> Result<(ClientCert, ClientKey), (Part, String)> {
    let cert_path = dir.join(cert);
    let key_path = dir.join(key);
    let cert_pem = read_file(&cert_path).map_err(|why| (Part::Cert, why))?;
    let key_pem = read_file(&key_path).map_err(|why| (Part::Key, why))?;
    let chain = chain(&cert_path, &cert_pem).map_err(|why| (Part::Cert, why))?;
    let not_after = not_after(&cert_path, &chain[0]).map_err(|why| (Part::Cert, why))?;
    if not_after <= now {
        return Err((
            Part::Cert,
            format!("\"{}\" expired on {}", cert_path.display(), date(not_after)),
        ));
    }
    let der = private_key(&key_path, &key_pem).map_err(|why| (Part::Key, why))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "\"{}\" does not match the certificate in \"{}\"",
                key_path.display(),
                cert_path.display()
            ),
            other => format!("\"{}\" is not a usable key: {other}", key_path.display()),
        };
        (Part::Key, why)
    })?;
    Ok((
        ClientCert {
            path: cert_path,
            pem: cert_pem.into(),
            not_after,
        },
        ClientKey {
            path: key_path,
            pem: key_pem.into(),
        },
    ))
}

/// The chain and key of a pair [`read`] accepted, for a TLS configuration.
pub fn identity(
    cert: &ClientCert,
    key: &ClientKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    Ok((
        chain(&cert.path, &cert.pem)?,
        private_key(&key.path, &key.pem)?,
    ))
}

/// Seconds since the Unix epoch of `time` (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-12-07`.
pub fn date(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.split('T').next().unwrap_or(&text).to_owned()
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(format!("\"{}\" is not a file", path.display())),
        _ => std::fs::read(path).map_err(|e| format!("cannot read \"{}\": {e}", path.display())),
    }
}

fn chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"{}\" is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        format!(
            "\"{}\" holds no private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC \
             PRIVATE KEY)",
            path.display()
        )
    })
}

fn not_after(path: &Path, leaf: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        format!(
            "\"{}\": the certificate does not parse: {e}",
            path.display()
        )
    })?;
    let seconds = cert.validity().not_after.timestamp();
    let seconds = u64::try_from(seconds).unwrap_or(0);
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const DAY: Duration = Duration::from_secs(86_400);

    /// A self-signed certificate valid until `not_after`, its key, written in `dir`.
    fn write_pair(dir: &Path, name: &str, not_after: SystemTime) -> KeyPair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        params.not_before = (SystemTime::now() - DAY).into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        key
    }

    #[test]
    fn a_matching_pair_loads_and_knows_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let expires = UNIX_EPOCH + Duration::from_secs(unix_seconds(SystemTime::now() + 30 * DAY));
        write_pair(dir.path(), "a", expires);
        let (cert, key) = read(dir.path(), "a.pem", "a-key.pem", SystemTime::now()).unwrap();
        assert_eq!(cert.not_after, expires);
        assert!(identity(&cert, &key).is_ok());
        let shown = format!("{key:?}");
        assert!(
            shown.contains("a-key.pem") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        assert_eq!(
            serde_json::to_value(&key).unwrap(),
            serde_json::json!(dir.path().join("a-key.pem"))
        );
    }

    #[test]
    fn every_problem_names_its_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        write_pair(dir.path(), "a", now + 30 * DAY);
        write_pair(dir.path(), "b", now + 30 * DAY);
        write_pair(dir.path(), "old", now - DAY);
        std::fs::write(dir.path().join("empty.pem"), "nothing\n").unwrap();
        let cases = [
            ("missing.pem", "a-key.pem", Part::Cert, "cannot read"),
            ("a.pem", "missing.pem", Part::Key, "cannot read"),
            (
                "empty.pem",
                "a-key.pem",
                Part::Cert,
                "holds no PEM certificate",
            ),
            ("a.pem", "empty.pem", Part::Key, "holds no private key"),
            (
                "a.pem",
                "b-key.pem",
                Part::Key,
                "does not match the certificate",
            ),
            ("old.pem", "old-key.pem", Part::Cert, "expired on"),
        ];
        for (cert, key, part, says) in cases {
            let (got, why) = read(dir.path(), cert, key, now).unwrap_err();
            assert_eq!(got, part, "{cert} {key}: {why}");
            assert!(why.contains(says), "{cert} {key}: {why}");
        }
    }
}

//! Mutual TLS for tests: a client CA, client certificates it issues (chosen validity and key
//! format), and the config of a fake upstream that requires one.
//!
//! Certificates are made with rcgen (ECDSA P-256 keys, PKCS#8). The other key formats a policy's
//! `client_key` accepts are written with the `openssl` command-line tool: an RSA key in PKCS#1
//! (`-----BEGIN RSA PRIVATE KEY-----`) and an EC key in SEC1 (`-----BEGIN EC PRIVATE KEY-----`).
//! A test that needs them fails with the command that installs openssl when it is missing.
//!
//! The upstream's config ([`mtls_server_config`]) makes the TLS [`FakeUpstream`] refuse a
//! handshake without a client certificate signed by one of the given CAs; it then records the
//! common name of the certificate each request's connection presented
//! (`RecordedRequest::client_cn`, and the `x-fake-upstream-client-cn` response header).
//!
//! [`FakeUpstream`]: super::FakeUpstream

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use super::tls::{provider, TestPki};

/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// How a client identity's private key is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// ECDSA P-256, PKCS#8 (`-----BEGIN PRIVATE KEY-----`), as rcgen writes it.
    Pkcs8,
    /// RSA 2048, PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`), via `openssl`.
    RsaPkcs1,
    /// ECDSA P-256, SEC1 (`-----BEGIN EC PRIVATE KEY-----`), via `openssl`.
    EcSec1,
}

impl KeyFormat {
    /// The PEM label the key file starts with.
    pub fn pem_label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs8 => "-----BEGIN PRIVATE KEY-----",
            KeyFormat::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
            KeyFormat::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
        }
    }
}

/// A certificate authority for client certificates (a root, or an intermediate of one).
pub struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
    /// The CA certificates a leaf of this CA sends after itself: none for a root, this
    /// intermediate (and its parents below the root) for an intermediate.
    chain_pem: String,
    /// The root's certificate: what upstreams trust.
    root: CertificateDer<'static>,
}

impl ClientCa {
    /// A self-signed root CA with this common name.
    pub fn new(cn: &str) -> ClientCa {
        let key = KeyPair::generate().expect("generate client CA key");
        let params = ca_params(cn);
        let cert = params.self_signed(&key).expect("self-sign client CA");
        ClientCa {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            pem: cert.pem(),
            chain_pem: String::new(),
            root: cert.der().clone(),
        }
    }

    /// An intermediate CA signed by this one: its leaves send it after themselves, and an
    /// upstream that trusts only the root accepts them.
    pub fn intermediate(&self, cn: &str) -> ClientCa {
        let key = KeyPair::generate().expect("generate intermediate key");
        let params = ca_params(cn);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        ClientCa {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            root: self.root.clone(),
        }
    }

    /// This CA's certificate, PEM-encoded.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// This CA's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A client certificate for `cn`, valid from a day ago for 30 days, PKCS#8 key.
    pub fn issue(&self, cn: &str) -> ClientIdentity {
        self.issue_with(cn, Validity::days(30), KeyFormat::Pkcs8)
    }

    /// A client certificate for `cn` with this validity and key format.
    pub fn issue_with(&self, cn: &str, validity: Validity, format: KeyFormat) -> ClientIdentity {
        let (key, key_pem) = match format {
            KeyFormat::Pkcs8 => {
                let key = KeyPair::generate().expect("generate client key");
                let pem = key.serialize_pem();
                (key, pem)
            }
            KeyFormat::EcSec1 => {
                let key = KeyPair::generate().expect("generate client key");
                let pem = openssl(&["pkey", "-traditional"], &key.serialize_pem());
                (key, pem)
            }
            KeyFormat::RsaPkcs1 => {
                let pkcs8 = openssl(
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                    ],
                    "",
                );
                let key = KeyPair::from_pem(&pkcs8).expect("rcgen reads the RSA key");
                let pem = openssl(&["pkey", "-traditional"], &pkcs8);
                (key, pem)
            }
        };
        assert!(
            key_pem.starts_with(format.pem_label()),
            "{format:?} key written as:\n{}",
            key_pem.lines().next().unwrap_or("")
        );

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign client certificate");
        ClientIdentity {
            cn: cn.to_owned(),
            leaf_pem: cert.pem(),
            chain_pem: self.chain_pem.clone(),
            key_pem,
            cert: cert.der().clone(),
            not_after: validity.not_after,
            format,
        }
    }

    /// The roots an upstream trusting this CA's hierarchy uses.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("add client CA root");
        roots
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// When a certificate is valid: whole seconds (X.509 times have no fractions), so that
/// `not_after` is exactly what the certificate says.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a day ago until `days` days from now.
    pub fn days(days: u64) -> Validity {
        Validity::until(SystemTime::now() + DAY * days as u32)
    }

    /// From a day before `not_after` (or earlier, for a long one) until `not_after`.
    pub fn until(not_after: SystemTime) -> Validity {
        let not_after = whole_seconds(not_after);
        let day_ago = whole_seconds(SystemTime::now() - DAY);
        let not_before = day_ago.min(not_after - DAY);
        Validity {
            not_before,
            not_after,
        }
    }

    /// Expired yesterday (valid for the ten days before).
    pub fn expired_yesterday() -> Validity {
        let not_after = whole_seconds(SystemTime::now() - DAY);
        Validity {
            not_before: not_after - DAY * 10,
            not_after,
        }
    }
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds(time))
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

/// `YYYY-MM-DD` of `time`, in UTC.
pub fn utc_date(time: SystemTime) -> String {
    let date = time::OffsetDateTime::from(time).date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// A client certificate (with its CA chain, if issued by an intermediate) and its private key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate's subject common name.
    pub cn: String,
    leaf_pem: String,
    chain_pem: String,
    key_pem: String,
    cert: CertificateDer<'static>,
    not_after: SystemTime,
    format: KeyFormat,
}

impl ClientIdentity {
    /// What a policy's `client_cert` file holds: the leaf, then any intermediates.
    pub fn cert_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.chain_pem)
    }

    /// What a policy's `client_key` file holds.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The leaf certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// Writes `dir/cert` and `dir/key` (mode 0600, as a key should be), overwriting existing
    /// files in place (same inodes, truncated and rewritten: what a secret rotation that edits
    /// files does). Returns both paths.
    pub fn write(&self, dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (cert_path, key_path) = (dir.join(cert), dir.join(key));
        write_in_place(&cert_path, self.cert_pem().as_bytes());
        write_in_place(&key_path, self.key_pem.as_bytes());
        set_mode(&key_path, 0o600);
        (cert_path, key_path)
    }

    /// The snippets of the key's content that must never be shown anywhere: its PEM body
    /// lines, its whole base64, its DER in hex (both cases), and the first 16 bytes of its DER
    /// in Rust's `Debug` and JSON renderings of a byte array.
    pub fn key_fingerprints(&self) -> Vec<String> {
        let body: Vec<&str> = self
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let mut out: Vec<String> = body
            .iter()
            .filter(|l| l.len() >= 32)
            .map(|l| (*l).to_owned())
            .collect();
        out.push(body.concat());
        let der = base64_decode(&body.concat());
        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        out.push(hex.to_uppercase());
        out.push(hex);
        // 16 bytes of the secret itself: the private scalar of a P-256 key (PKCS#8 as rcgen
        // writes it, or SEC1), the private exponent of a 2048-bit RSA key (PKCS#1).
        let secret = match self.format {
            KeyFormat::Pkcs8 => 36,
            KeyFormat::EcSec1 => 7,
            KeyFormat::RsaPkcs1 => 280,
        };
        let window: Vec<String> = der[secret..secret + 16].iter().map(u8::to_string).collect();
        out.push(window.join(", "));
        out.push(window.join(","));
        out
    }
}

/// Truncates and rewrites `path` (or creates it), keeping its inode.
pub fn write_in_place(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    file.sync_all().expect("sync");
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// An upstream config (the leaf of `server`, ALPN `http/1.1`) that requires a client
/// certificate issued under one of `client_cas` (their roots are trusted).
pub fn mtls_server_config(server: &TestPki, client_cas: &[&ClientCa]) -> Arc<ServerConfig> {
    server.server_config_with_client_auth(client_verifier(client_cas))
}

/// The same, ALPN `h2` and `http/1.1`: an upstream that chooses HTTP/2.
pub fn mtls_server_config_h2(server: &TestPki, client_cas: &[&ClientCa]) -> Arc<ServerConfig> {
    server.server_config_h2_with_client_auth(client_verifier(client_cas))
}

fn client_verifier(
    client_cas: &[&ClientCa],
) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca.root.clone()).expect("add client CA root");
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("client verifier")
}

/// The `openssl` command-line tool.
pub fn openssl_path() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("openssl"))
            .find(|p| p.is_file())
    });
    found.expect(
        "openssl is not on PATH: install Debian's openssl package (apt-get install -y openssl)",
    )
}

/// Runs `openssl ARGS` with `input` on stdin; its stdout.
fn openssl(args: &[&str], input: &str) -> String {
    let mut child = Command::new(openssl_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl writes PEM")
}

fn base64_decode(text: &str) -> Vec<u8> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

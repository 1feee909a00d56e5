//! `TestPki`: certificates made at test time with rcgen, and the rustls configs built on them.
//!
//! A CA signs a leaf for `localhost` and `127.0.0.1` (the good upstream); an unrelated
//! self-signed certificate for the same names plays an upstream nobody should trust. Every
//! config uses the ring provider explicitly, as fusebox does (there is no aws-lc here).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Installs ring as the process-wide rustls provider. reqwest is built with
/// `rustls-no-provider` and needs one before a client is built; calling this again is harmless.
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another installer (fusebox itself, in-process) may have won the race: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The ring provider, as fusebox uses it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key.
struct CertKey {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl CertKey {
    fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        self.server_config_with(alpn, None)
    }

    /// With `client_auth`, the server asks every client for a certificate and verifies it so.
    fn server_config_with(
        &self,
        alpn: &[&[u8]],
        client_auth: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("valid test certificate and key");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A test CA, a leaf it signed, and an unrelated self-signed ("wrong") certificate.
pub struct TestPki {
    ca_cert: CertificateDer<'static>,
    ca_pem: String,
    leaf: CertKey,
    /// The leaf and its key, PEM-encoded, for servers that are not rustls (grpcio).
    leaf_pem: (String, String),
    wrong: CertKey,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A leaf for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        Self::with_names(&["localhost", "127.0.0.1"])
    }

    /// A leaf (and wrong certificate) for these DNS names and IP addresses.
    pub fn with_names(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fusebox test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("generate leaf key");
        let mut leaf_params = CertificateParams::new(names.clone()).expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "fusebox test upstream");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign leaf");

        let wrong_key = KeyPair::generate().expect("generate wrong key");
        let mut wrong_params = CertificateParams::new(names).expect("wrong params");
        wrong_params
            .distinguished_name
            .push(DnType::CommonName, "untrusted impostor");
        let wrong = wrong_params
            .self_signed(&wrong_key)
            .expect("self-sign wrong");

        TestPki {
            leaf_pem: (leaf.pem(), leaf_key.serialize_pem()),
            ca_pem: ca.pem(),
            ca_cert: ca.der().clone(),
            leaf: CertKey {
                cert: leaf.der().clone(),
                key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            },
            wrong: CertKey {
                cert: wrong.der().clone(),
                key: PrivatePkcs8KeyDer::from(wrong_key.serialize_der()),
            },
        }
    }

    /// The good leaf, ALPN `http/1.1` only.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.leaf.server_config(&[b"http/1.1"])
    }

    /// The good leaf, ALPN `h2` and `http/1.1` (the fake upstream speaks h2 when chosen).
    pub fn server_config_h2(&self) -> Arc<ServerConfig> {
        self.leaf.server_config(&[b"h2", b"http/1.1"])
    }

    /// The good leaf, ALPN `http/1.1`, and client certificates checked by `verifier` (e.g. a
    /// `WebPkiClientVerifier` that requires one: mutual TLS, see `support::mtls`).
    pub fn server_config_with_client_auth(
        &self,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Arc<ServerConfig> {
        self.leaf.server_config_with(&[b"http/1.1"], Some(verifier))
    }

    /// The same, ALPN `h2` and `http/1.1` (the fake upstream speaks h2 when chosen).
    pub fn server_config_h2_with_client_auth(
        &self,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Arc<ServerConfig> {
        self.leaf
            .server_config_with(&[b"h2", b"http/1.1"], Some(verifier))
    }

    /// The untrusted self-signed certificate, ALPN `http/1.1`.
    pub fn wrong_server_config(&self) -> Arc<ServerConfig> {
        self.wrong.server_config(&[b"http/1.1"])
    }

    /// Writes the good leaf as `leaf.pem` and its key as `leaf-key.pem` in `dir`.
    pub fn write_leaf(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf-key.pem"));
        std::fs::write(&cert, &self.leaf_pem.0).expect("write leaf PEM");
        std::fs::write(&key, &self.leaf_pem.1).expect("write leaf key PEM");
        (cert, key)
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA as `dir/test-ca.pem` and returns that path (for a policy's `ca_file`).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA PEM");
        path
    }

    /// A client config that trusts only the test CA, without ALPN (HTTP/1.1).
    pub fn client_config(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone()).expect("add test CA");
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

//! TLS origination: the rustls client configuration for a policy.
//!
//! One crypto provider for the whole binary (ring). Roots are the platform's certificates
//! (webpki's bundled roots when the platform has none), plus a policy's `ca_file`.
//! Certificate verification is never skipped.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;

use crate::policy::ca::read_ca_file;

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The platform's roots, loaded once per process and shared by every policy without a
/// `ca_file` (a copy per policy cost about 88 KiB each: 96 MiB for 1,000 policies).
fn base_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Arc::new(roots)
    })
}

/// Builds the client configuration for a policy. ALPN is set by the connector.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let roots = match ca_file {
        None => Arc::clone(base_roots()),
        Some(path) => {
            let mut roots = RootCertStore::clone(base_roots());
            roots.roots.extend(read_ca_file(path)?.roots);
            Arc::new(roots)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

//! TLS origination: the rustls client configuration for a policy.
//!
//! One crypto provider for the whole binary (ring). Roots are the platform's certificates
//! (webpki's bundled roots when the platform has none), plus a policy's `ca_file`.
//! Certificate verification is never skipped. A policy with `client_cert` and `client_key`
//! presents that certificate to upstreams that ask (mutual TLS); its configuration, like one
//! with a `ca_file`, is its own, so a connection made with one identity never serves another
//! policy (pools are per policy, and a changed identity is a changed policy).

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::RootCertStore;

use crate::policy::ca::parse_ca_pem;
use crate::policy::client_cert;
use crate::policy::{CaFile, ClientCert, ClientKey};

/// A policy's client identity, for mutual TLS.
pub type Identity<'a> = Option<(&'a ClientCert, &'a ClientKey)>;

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

/// TLS sessions the shared configuration remembers for resumption (rustls keeps up to eight
/// per server, so about 256 servers); one cache for every policy without a `ca_file`.
const SHARED_SESSIONS: usize = 2048;

/// The client configuration for a policy; ALPN offers `h2` and `http/1.1`. Policies without a
/// `ca_file` share one configuration, and with it one TLS session cache, across reloads: a
/// configuration per policy cost about 14 KiB each, most of it an empty session cache.
pub fn client_config(
    ca_file: Option<&CaFile>,
    identity: Identity<'_>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    static SHARED: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    if ca_file.is_none() && identity.is_none() {
        return SHARED
            .get_or_init(|| {
                let mut config = config_with(Arc::clone(base_roots()), None)?;
                config.resumption = Resumption::in_memory_sessions(SHARED_SESSIONS);
                Ok(Arc::new(config))
            })
            .clone();
    }
    let roots = match ca_file {
        None => Arc::clone(base_roots()),
        Some(ca) => {
            let mut roots = RootCertStore::clone(base_roots());
            roots.roots.extend(parse_ca_pem(&ca.path, &ca.pem)?.roots);
            Arc::new(roots)
        }
    };
    config_with(roots, identity).map(Arc::new)
}

fn config_with(
    roots: Arc<RootCertStore>,
    identity: Identity<'_>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = client_cert::identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate cannot be used: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_without_a_ca_file_share_one_configuration() {
        let a = client_config(None, None).unwrap();
        let b = client_config(None, None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}

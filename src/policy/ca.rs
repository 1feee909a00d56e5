//! A policy's `ca_file`: PEM certificates that become extra trusted roots. Read and checked
//! here, once, so that `fusebox check` and a reload refuse a file that TLS origination could
//! not use, with the position of the `ca_file` key, instead of `fusebox run` failing later.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The trust anchors of the PEM file at `path`: at least one, each a usable CA certificate.
pub fn read_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    parse_ca_pem(path, &pem)
}

/// The trust anchors in `pem`, the content of the file at `path`: at least one, each a usable
/// CA certificate.
pub fn parse_ca_pem(path: &Path, pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("\"{}\" is not valid PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("\"{}\" holds a bad CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

//! Server TLS: rustls on aws-lc-rs, TLS 1.3 only unless 1.2 is opted into, client certificates
//! requested but optional at the TLS layer, and a client-CA trust store that can be replaced at
//! run time without a restart.
//!
//! Session resumption is switched off on purpose: a resumed TLS 1.3 session restores the client
//! chain without verifying it again, so a CA removed from trust would keep working for anyone
//! holding a ticket. Clients keep connections alive instead.

mod client_trust;
mod dn;
mod peer;

pub use client_trust::{ClientTrust, read_crls};
pub use dn::DistinguishedName;
pub use peer::{ClientCertificate, SubjectAltName, Thumbprint, TrustAnchor, on_connect};

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;

use crate::config::{TlsFiles, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("setting `{setting}`: cannot read {path}: {reason}")]
    Read {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server configuration from the configured files and the shared client trust.
pub fn server_config(
    files: &TlsFiles,
    min_version: TlsVersion,
    trust: Arc<ClientTrust>,
) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates("server.cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::Read {
        setting: "server.key",
        path: files.key.display().to_string(),
        reason: error.to_string(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)
        .map_err(|error| TlsError::Invalid {
            setting: "server.tls_min_version",
            reason: error.to_string(),
        })?
        .with_client_cert_verifier(trust)
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Invalid {
            setting: "server.key",
            reason: format!("does not match server.cert or is unusable: {error}"),
        })?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

pub fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |reason: String| TlsError::Read {
        setting,
        path: path.display().to_string(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| read_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(read_error("no PEM certificate found".to_owned()));
    }
    Ok(certificates)
}

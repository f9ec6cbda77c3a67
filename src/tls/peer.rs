//! The identity a client presented: its verified leaf certificate and the anchors it chains to.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::DistinguishedName;

/// The trust anchor under which a client certificate's chain verified. A certificate is an
/// identity only together with its anchor: a partner's CA vouches for that partner's clients
/// and nobody else's, and a pinned certificate for the one client that pinned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrustAnchor {
    /// The operator's client CA (`server.client_ca`).
    Server,
    /// The client CA in this partner's active trust profile.
    Partner(String),
    /// A registered self-signed certificate, accepted by thumbprint without a chain.
    Pinned,
    /// The operator's admin CA (`admin.client_ca`): the only anchor that identifies admins.
    Admin,
}

impl fmt::Display for TrustAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server => f.write_str("server"),
            Self::Partner(partner) => write!(f, "partner:{partner}"),
            Self::Pinned => f.write_str("pinned"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

/// SHA-256 of the certificate's DER, as RFC 8705 binds tokens to it (`x5t#S256`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Thumbprint(pub(super) [u8; 32]);

impl Thumbprint {
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    pub fn to_base64url(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.to_base64url())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum SubjectAltName {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

/// The anchors a chain verified under, and the trust generation they were computed in.
type VerifiedAnchors = (u64, Arc<[TrustAnchor]>);

/// The verified leaf certificate a client presented on this connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub der: CertificateDer<'static>,
    /// The rest of the presented chain, kept to re-verify the leaf against current trust.
    pub intermediates: Vec<CertificateDer<'static>>,
    pub thumbprint: Thumbprint,
    pub subject: DistinguishedName,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// The anchors the chain verified under and the trust generation they were computed in;
    /// shared by the connection's requests.
    pub(super) verified: Arc<std::sync::Mutex<Option<VerifiedAnchors>>>,
    /// The anchors that verify the chain for this request (empty until [`ClientTrust::verified`]
    /// has checked it, so an unchecked certificate matches no client).
    pub anchors: Arc<[TrustAnchor]>,
    pub subject_alt_names: Vec<SubjectAltName>,
}

impl ClientCertificate {
    pub fn anchored_by(&self, anchor: &TrustAnchor) -> bool {
        self.anchors.contains(anchor)
    }
}

impl ClientCertificate {
    pub fn parse(
        der: CertificateDer<'static>,
        intermediates: Vec<CertificateDer<'static>>,
    ) -> Result<Self, x509_parser::nom::Err<x509_parser::error::X509Error>> {
        let (_, certificate) = X509Certificate::from_der(der.as_ref())?;
        let subject = DistinguishedName::from_x509(certificate.subject());
        let subject_alt_names = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|extension| {
                extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(subject_alt_name)
                    .collect()
            })
            .unwrap_or_default();
        let not_after = certificate.validity().not_after.timestamp();
        Ok(Self {
            not_after,
            verified: Arc::default(),
            anchors: Arc::new([]),
            thumbprint: Thumbprint::of(der.as_ref()),
            der,
            intermediates,
            subject,
            subject_alt_names,
        })
    }
}

fn subject_alt_name(name: &GeneralName<'_>) -> Option<SubjectAltName> {
    match name {
        GeneralName::DNSName(dns) => Some(SubjectAltName::Dns((*dns).to_owned())),
        GeneralName::URI(uri) => Some(SubjectAltName::Uri((*uri).to_owned())),
        GeneralName::RFC822Name(email) => Some(SubjectAltName::Email((*email).to_owned())),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
            _ => None,
        }
        .map(SubjectAltName::Ip),
        _ => None,
    }
}

/// Runs once per accepted connection: records the verified leaf, if the client presented one,
/// so handlers can read it through [`crate::http::PeerCertificate`].
pub fn on_connect(connection: &dyn std::any::Any, extensions: &mut Extensions) {
    let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() else {
        return;
    };
    let Some((leaf, intermediates)) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.split_first())
    else {
        return;
    };
    let intermediates = intermediates
        .iter()
        .map(|cert| cert.clone().into_owned())
        .collect();
    match ClientCertificate::parse(leaf.clone().into_owned(), intermediates) {
        Ok(certificate) => {
            extensions.insert(certificate);
        }
        Err(error) => tracing::warn!(%error, "verified client certificate could not be parsed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_self_signed_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        let parsed = ClientCertificate::parse(der, Vec::new()).unwrap();
        assert_eq!(
            parsed.subject_alt_names,
            [SubjectAltName::Dns("client.test".into())]
        );
    }
}

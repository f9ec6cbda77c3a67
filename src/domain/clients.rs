//! Registered clients and the cache nodes read them through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::domain::audiences::AudienceId;
use crate::domain::grants::GrantType;
use crate::domain::ids::{ClientId, PartnerId};
use crate::domain::jwks::PublicKeys;
use crate::domain::scopes::ScopeSet;
use crate::tls::{ClientCertificate, DistinguishedName, SubjectAltName, TrustAnchor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
}

impl Status {
    pub fn parse(value: &str) -> Self {
        // Anything but an explicit "active" fails closed.
        if value == "active" {
            Self::Active
        } else {
            Self::Suspended
        }
    }
}

/// The one certificate identity a `tls_client_auth` client must present (RFC 8705 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateIdentity {
    SubjectDn(DistinguishedName),
    SanDns(String),
    SanUri(String),
    SanIp(IpAddr),
    SanEmail(String),
}

impl CertificateIdentity {
    /// Exact comparison: the whole DN structurally, or one SAN of the registered type equal
    /// to the registered value (DNS names compare case-insensitively, as DNS does).
    pub fn matches(&self, certificate: &ClientCertificate) -> bool {
        let sans = &certificate.subject_alt_names;
        match self {
            Self::SubjectDn(dn) => certificate.subject == *dn,
            Self::SanDns(name) => sans.iter().any(
                |san| matches!(san, SubjectAltName::Dns(value) if value.eq_ignore_ascii_case(name)),
            ),
            Self::SanUri(uri) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Uri(value) if value == uri)),
            Self::SanIp(ip) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Ip(value) if value == ip)),
            Self::SanEmail(email) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Email(value) if value == email)),
        }
    }
}

/// The anchor a `tls_client_auth` client's certificate must chain to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateAnchor {
    /// The operator's client CA.
    Server,
    /// The client CA of the client's own partner's active trust profile.
    Partner,
}

#[derive(Debug, Clone)]
pub enum Authentication {
    /// RFC 8705 §2.1: a certificate with the registered identity, chained to the registered
    /// anchor.
    TlsClientAuth(CertificateIdentity, CertificateAnchor),
    /// RFC 8705 §2.2: a self-signed certificate registered in the client's JWKS (`x5c`).
    SelfSignedTlsClientAuth(PublicKeys),
    /// RFC 7523: a JWT signed with a key in the client's JWKS.
    PrivateKeyJwt(PublicKeys),
}

impl Authentication {
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::TlsClientAuth(..) => "tls_client_auth",
            Self::SelfSignedTlsClientAuth(_) => "self_signed_tls_client_auth",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub partner: PartnerId,
    pub partner_region: String,
    pub name: String,
    pub authentication: Authentication,
    pub grant_types: Vec<GrantType>,
    pub max_lifetime: Duration,
    /// Allowed audiences, each with the scopes this client may have there.
    pub audiences: HashMap<AudienceId, ScopeSet>,
    pub resource_audience: Option<AudienceId>,
    pub is_admin: bool,
    /// Suspended when either the client or its partner is.
    pub status: Status,
}

impl Client {
    /// Whether the certificate is this client's: for `tls_client_auth`, the registered
    /// identity verified under the client's own anchor (never another partner's CA, never a
    /// pinned certificate); for `self_signed_tls_client_auth`, a pinned certificate that this
    /// client registered. The error is the audited reason.
    pub fn owns_certificate(&self, certificate: &ClientCertificate) -> Result<(), &'static str> {
        match &self.authentication {
            Authentication::TlsClientAuth(identity, anchor) => {
                let anchor = match anchor {
                    CertificateAnchor::Server => TrustAnchor::Server,
                    CertificateAnchor::Partner => TrustAnchor::Partner(self.partner.to_string()),
                };
                if !identity.matches(certificate) {
                    return Err("certificate does not match the registered identity");
                }
                if !certificate.anchored_by(&anchor) {
                    return Err("certificate is not verified by the client's trust anchor");
                }
                Ok(())
            }
            Authentication::SelfSignedTlsClientAuth(jwks) => {
                if !jwks.has_leaf_certificate(certificate.der.as_ref()) {
                    return Err("certificate does not match the registered identity");
                }
                if !certificate.anchored_by(&TrustAnchor::Pinned) {
                    return Err("certificate is not pinned");
                }
                Ok(())
            }
            Authentication::PrivateKeyJwt(_) => Err("client is registered for private_key_jwt"),
        }
    }

    pub fn allows_grant(&self, grant_type: GrantType) -> bool {
        self.grant_types.contains(&grant_type)
    }
}

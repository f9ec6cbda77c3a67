//! Server TLS: rustls on aws-lc-rs, TLS 1.3 only unless 1.2 is opted into, client certificates
//! requested but optional at the TLS layer, and a client-CA trust store that can be replaced at
//! run time without a restart.
//!
//! Session resumption is switched off on purpose: a resumed TLS 1.3 session restores the client
//! chain without verifying it again, so a CA removed from trust would keep working for anyone
//! holding a ticket. Clients keep connections alive instead.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

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

/// The verifiers of every anchor and what they were built from, replaced as a whole when
/// trust changes.
struct Anchors {
    server_roots: Vec<CertificateDer<'static>>,
    server: Arc<dyn ClientCertVerifier>,
    partner_roots: Vec<(String, Vec<CertificateDer<'static>>)>,
    partners: Vec<(String, Arc<dyn ClientCertVerifier>)>,
    admin_roots: Vec<CertificateDer<'static>>,
    admin: Option<Arc<dyn ClientCertVerifier>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Anchors {
    /// The operator's anchor must build; a partner whose CAs are unusable has no anchor (and is
    /// logged) rather than holding back every other partner.
    fn build(
        server_roots: Vec<CertificateDer<'static>>,
        partner_roots: Vec<(String, Vec<CertificateDer<'static>>)>,
        admin_roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        let server = verifier("server.client_ca", &server_roots, &crls)?;
        let admin = if admin_roots.is_empty() {
            None
        } else {
            Some(verifier("admin.client_ca", &admin_roots, &crls)?)
        };
        let partners = partner_roots
            .iter()
            .filter_map(|(partner, roots)| {
                match verifier("trust_profiles.client_ca_pem", roots, &crls) {
                    Ok(verifier) => Some((partner.clone(), verifier)),
                    Err(error) => {
                        tracing::error!(%partner, %error, "a partner's client CA is unusable");
                        None
                    }
                }
            })
            .collect();
        Ok(Self {
            server_roots,
            server,
            partner_roots,
            partners,
            admin_roots,
            admin,
            crls,
        })
    }
}

/// A verifier for one anchor. Revocation is checked against the configured CRLs; a chain whose
/// issuer no CRL covers is not refused for that, since partners' CAs need not publish one.
fn verifier(
    setting: &'static str,
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { setting, reason };
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|error| invalid(format!("unusable CA certificate: {error}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), crypto_provider())
        .with_crls(crls.iter().cloned())
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|error| invalid(error.to_string()))
}

/// Reads the CRL files (PEM, or DER when not PEM) named by `server.client_crls`.
pub fn read_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        let read_error = |reason: String| TlsError::Read {
            setting: "server.client_crls",
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|error| read_error(error.to_string()))?;
        let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        if pem.is_empty() {
            crls.push(CertificateRevocationListDer::from(bytes));
        } else {
            crls.extend(pem);
        }
    }
    Ok(crls)
}

/// The client-certificate verifier the server holds for its whole life; the anchors behind it
/// are replaced atomically, and the next handshake uses the new set.
pub struct ClientTrust {
    anchors: RwLock<Arc<Anchors>>,
    /// Thumbprints of registered self-signed client certificates (RFC 8705 §2.2), accepted
    /// without a CA; the application still matches them to their client.
    pinned: RwLock<Arc<HashSet<[u8; 32]>>>,
    /// Bumped whenever what is trusted changes; a connection re-verifies its certificate only
    /// when the generation it was verified under is no longer current.
    generation: AtomicU64,
}

impl ClientTrust {
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            anchors: RwLock::new(Arc::new(Anchors::build(
                roots.to_vec(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )?)),
            pinned: RwLock::default(),
            generation: AtomicU64::new(0),
        }))
    }

    /// Replaces the operator's client CAs.
    pub fn replace_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), TlsError> {
        self.update(|current| {
            Anchors::build(
                roots.to_vec(),
                current.partner_roots.clone(),
                current.admin_roots.clone(),
                current.crls.clone(),
            )
        })
    }

    /// Replaces the operator's admin CAs; with none, no certificate identifies an admin.
    pub fn replace_admin_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), TlsError> {
        self.update(|current| {
            Anchors::build(
                current.server_roots.clone(),
                current.partner_roots.clone(),
                roots.to_vec(),
                current.crls.clone(),
            )
        })
    }

    /// Replaces the partners' client CAs (from their active trust profiles); each partner's
    /// CAs form an anchor of their own.
    pub fn replace_partner_roots(&self, partners: &[(String, Vec<CertificateDer<'static>>)]) {
        let updated = self.update(|current| {
            Anchors::build(
                current.server_roots.clone(),
                partners.to_vec(),
                current.admin_roots.clone(),
                current.crls.clone(),
            )
        });
        if let Err(error) = updated {
            tracing::error!(%error, "client trust unchanged");
        }
    }

    /// Replaces the CRLs every anchor checks; a revoked certificate fails the next handshake,
    /// and kept-alive connections re-verify on their next request.
    pub fn replace_crls(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), TlsError> {
        if self.current().crls == crls {
            return Ok(());
        }
        self.update(|current| {
            Anchors::build(
                current.server_roots.clone(),
                current.partner_roots.clone(),
                current.admin_roots.clone(),
                crls,
            )
        })
    }

    /// Builds the next anchors from the current ones under the write lock, so that concurrent
    /// changes of different parts do not undo each other.
    fn update(
        &self,
        next: impl FnOnce(&Anchors) -> Result<Anchors, TlsError>,
    ) -> Result<(), TlsError> {
        let mut anchors = self
            .anchors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *anchors = Arc::new(next(&anchors)?);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn replace_pinned(&self, certificates: Vec<CertificateDer<'static>>) {
        // Pinning skips path validation, so the validity period is checked here instead; the
        // set is rebuilt every few seconds, which retires an expired certificate promptly.
        let pinned = certificates
            .iter()
            .filter(|certificate| {
                X509Certificate::from_der(certificate.as_ref())
                    .is_ok_and(|(_, parsed)| parsed.validity().is_valid())
            })
            .map(|certificate| Thumbprint::of(certificate.as_ref()).0)
            .collect::<HashSet<_>>();
        let mut current = self
            .pinned
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current != pinned {
            *current = Arc::new(pinned);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn is_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> bool {
        intermediates.is_empty()
            && self
                .pinned
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&Thumbprint::of(end_entity.as_ref()).0)
    }

    /// Every anchor under which the chain verifies now.
    fn anchors_of(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<TrustAnchor> {
        let anchors = self.current();
        let mut verified = Vec::new();
        if anchors
            .server
            .verify_client_cert(end_entity, intermediates, now)
            .is_ok()
        {
            verified.push(TrustAnchor::Server);
        }
        for (partner, verifier) in &anchors.partners {
            if verifier
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
            {
                verified.push(TrustAnchor::Partner(partner.clone()));
            }
        }
        if self.is_pinned(end_entity, intermediates) {
            verified.push(TrustAnchor::Pinned);
        }
        if anchors.admin.as_ref().is_some_and(|admin| {
            admin
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
        }) {
            verified.push(TrustAnchor::Admin);
        }
        verified
    }

    /// The certificate with the anchors that verify it under current trust, or `None` when it
    /// has expired or no anchor verifies it any more. Connections outlive trust changes
    /// (keep-alive), so each request re-checks what its handshake proved; the path validation
    /// reruns only after trust changed.
    pub fn verified(&self, certificate: &ClientCertificate) -> Option<ClientCertificate> {
        let now = UnixTime::now();
        let unexpired = i64::try_from(now.as_secs()).is_ok_and(|now| now < certificate.not_after);
        if !unexpired {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mut cached = certificate
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let anchors = match &*cached {
            Some((at, anchors)) if *at == generation => anchors.clone(),
            _ => {
                let anchors: Arc<[TrustAnchor]> = self
                    .anchors_of(&certificate.der, &certificate.intermediates, now)
                    .into();
                *cached = Some((generation, anchors.clone()));
                anchors
            }
        };
        drop(cached);
        (!anchors.is_empty()).then(|| ClientCertificate {
            anchors,
            ..certificate.clone()
        })
    }

    fn current(&self) -> Arc<Anchors> {
        self.anchors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTrust").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // Hints are optional (RFC 8446 §4.2.4); clients present their certificate without them,
    // and an empty list avoids borrowing through the lock.
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let anchors = self.current();
        let server = anchors
            .server
            .verify_client_cert(end_entity, intermediates, now);
        if server.is_ok() {
            return server;
        }
        let partner = anchors
            .partners
            .iter()
            .map(|(_, verifier)| verifier)
            .chain(&anchors.admin)
            .find_map(|verifier| {
                verifier
                    .verify_client_cert(end_entity, intermediates, now)
                    .ok()
            });
        match partner {
            Some(verified) => Ok(verified),
            None if self.is_pinned(end_entity, intermediates) => {
                Ok(ClientCertVerified::assertion())
            }
            None => server,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .server
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .server
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().server.supported_verify_schemes()
    }
}

/// SHA-256 of the certificate's DER, as RFC 8705 binds tokens to it (`x5t#S256`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Thumbprint([u8; 32]);

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
    verified: Arc<std::sync::Mutex<Option<VerifiedAnchors>>>,
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

/// A distinguished name in RFC 4514 order (the most significant RDN last), attribute types as
/// upper-case short names or dotted OIDs, values exact. Equality is structural, so two
/// spellings of one name compare equal and no substring can pass for a whole name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinguishedName(Vec<Vec<(String, String)>>);

impl DistinguishedName {
    fn from_x509(name: &x509_parser::x509::X509Name<'_>) -> Self {
        let registry = x509_parser::objects::oid_registry();
        let rdns = name
            .iter()
            .map(|rdn| {
                let mut attributes: Vec<(String, String)> = rdn
                    .iter()
                    .map(|attribute| {
                        let oid = attribute.attr_type();
                        let kind = x509_parser::objects::oid2abbrev(oid, registry)
                            .map(str::to_ascii_uppercase)
                            .unwrap_or_else(|_| oid.to_id_string());
                        let value = match attribute.as_str() {
                            Ok(text) => text.to_owned(),
                            Err(_) => format!("#{}", hex(attribute.attr_value().data)),
                        };
                        (kind, value)
                    })
                    .collect();
                attributes.sort();
                attributes
            })
            .collect::<Vec<_>>();
        Self(rdns.into_iter().rev().collect())
    }

    /// Parses the RFC 4514 string form; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut rdns = Vec::new();
        for rdn in split_unescaped(text, ',') {
            let mut attributes = Vec::new();
            for attribute in split_unescaped(rdn, '+') {
                let (kind, value) = attribute.split_once('=')?;
                let kind = kind.trim();
                if kind.is_empty() {
                    return None;
                }
                attributes.push((kind.to_ascii_uppercase(), unescape_rfc4514(value.trim())?));
            }
            attributes.sort();
            rdns.push(attributes);
        }
        (!rdns.is_empty()).then_some(Self(rdns))
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rdn) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            for (position, (kind, value)) in rdn.iter().enumerate() {
                if position > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{kind}={}", escape_rfc4514(value))?;
            }
        }
        Ok(())
    }
}

fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if character == '\\' {
            escaped = true;
        } else if character == separator {
            parts.push(&text[start..index]);
            start = index + character.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

fn escape_rfc4514(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, character) in value.chars().enumerate() {
        let special = matches!(character, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && matches!(character, ' ' | '#'))
            || (index == last && character == ' ');
        if special {
            escaped.push('\\');
        }
        if character == '\0' {
            escaped.push_str("\\00");
        } else {
            escaped.push(character);
        }
    }
    escaped
}

fn unescape_rfc4514(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'\\' {
            bytes.push(byte);
            rest = tail;
            continue;
        }
        match tail {
            [high, low, more @ ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                let hex = std::str::from_utf8(&[*high, *low]).ok()?.to_owned();
                bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                rest = more;
            }
            [special, more @ ..] => {
                bytes.push(*special);
                rest = more;
            }
            [] => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
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
    fn distinguished_names_compare_structurally() {
        let a = DistinguishedName::parse("CN=partner-a,O=Tessera Dev").unwrap();
        let b = DistinguishedName::parse("cn = partner-a , o=Tessera Dev").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "CN=partner-a,O=Tessera Dev");
        let escaped = DistinguishedName::parse(r"CN=a\,b,O=x").unwrap();
        assert_eq!(escaped.to_string(), r"CN=a\,b,O=x");
        assert_ne!(a, DistinguishedName::parse("CN=partner-a").unwrap());
        assert_ne!(
            a,
            DistinguishedName::parse("CN=partner-a,O=Tessera Dev,C=GB").unwrap()
        );
        assert_eq!(
            DistinguishedName::parse(r"CN=\41b").unwrap(),
            DistinguishedName::parse("CN=Ab").unwrap()
        );
        assert!(DistinguishedName::parse("garbage").is_none());
    }

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

    #[test]
    fn escapes_rfc4514_specials() {
        assert_eq!(escape_rfc4514("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc4514(" #x "), "\\ #x\\ ");
        assert_eq!(escape_rfc4514("#lead"), "\\#lead");
    }
}

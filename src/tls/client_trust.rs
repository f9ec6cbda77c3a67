//! Client-certificate trust: one verifier per anchor (the operator's CA, each partner's CA,
//! pinned self-signed certificates), CRLs, replaced at run time.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ClientCertificate, Thumbprint, TlsError, TrustAnchor, crypto_provider};

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

    /// Replaces the partners' client CAs (PEM, from their active trust profiles); each
    /// partner's CAs form an anchor of their own, and certificates that do not parse are
    /// skipped.
    pub fn replace_partner_roots(&self, partners: &[(String, String)]) {
        let partners = partners
            .iter()
            .map(|(partner, pem)| {
                let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect();
                (partner.clone(), roots)
            })
            .collect();
        let updated = self.update(|current| {
            Anchors::build(
                current.server_roots.clone(),
                partners,
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

    pub fn replace_pinned(&self, certificates: Vec<Vec<u8>>) {
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

//! The development PKI: one CA that partners' client certificates chain to, a server
//! certificate for `localhost`/`127.0.0.1`, client certificates for the demo partners, the
//! resource servers and two admins, and a second, untrusted CA whose client certificate copies partner A's subject so
//! tests can prove that a matching name alone is worth nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating the certificate for {name}: {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error("generating {name}: {reason}")]
    Unusable { name: String, reason: &'static str },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The client identities the dev PKI issues, by file stem: partners' systems, the settlement
/// service, the resource servers' own identity, and two admins (who are never OAuth clients).
pub const TRUSTED_CLIENTS: [&str; 6] = [
    "partner-a",
    "partner-b",
    "settlement",
    "resource-server",
    "admin",
    "admin-2",
];
pub const UNTRUSTED_CLIENT: &str = "untrusted-partner-a";

/// Paths of one generated (or reused) PKI directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn untrusted_ca_cert(&self) -> PathBuf {
        self.dir.join("untrusted-ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.ca_cert(),
            self.untrusted_ca_cert(),
            self.server_cert(),
            self.server_key(),
        ];
        for name in TRUSTED_CLIENTS.iter().chain([&UNTRUSTED_CLIENT]) {
            files.push(self.client_cert(name));
            files.push(self.client_key(name));
        }
        files.push(crate::dev::partner_idp::key_path(self));
        files.push(crate::dev::partner_idp::jwks_path(self));
        files
    }

    pub fn is_complete(&self) -> bool {
        self.files().iter().all(|path| path.is_file())
    }

    /// Reuses the PKI in `dir` when every file is there; otherwise generates a new one.
    /// Returns the PKI and whether it was generated now.
    pub fn ensure(dir: &Path) -> Result<(Self, bool), PkiError> {
        let pki = Self {
            dir: dir.to_owned(),
        };
        if pki.is_complete() {
            return Ok((pki, false));
        }
        pki.generate()?;
        Ok((pki, true))
    }

    /// Writes a fresh PKI into the directory, replacing whatever was there.
    pub fn generate(&self) -> Result<(), PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| PkiError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let ca = certificate_authority("Tessera Dev CA")?;
        self.write(&self.ca_cert(), &ca.pem())?;

        let server = leaf(
            "localhost",
            &[
                SanType::DnsName(ia5("localhost")?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        )?;
        self.write(&self.server_cert(), &server.0)?;
        self.write_key(&self.server_key(), &server.1)?;

        for name in TRUSTED_CLIENTS {
            let (cert, key) = client(name, &ca)?;
            self.write(&self.client_cert(name), &cert)?;
            self.write_key(&self.client_key(name), &key)?;
        }

        let untrusted_ca = certificate_authority("Untrusted CA")?;
        self.write(&self.untrusted_ca_cert(), &untrusted_ca.pem())?;
        let (cert, key) = client("partner-a", &untrusted_ca)?;
        self.write(&self.client_cert(UNTRUSTED_CLIENT), &cert)?;
        self.write_key(&self.client_key(UNTRUSTED_CLIENT), &key)?;
        crate::dev::partner_idp::generate(self)
    }

    pub(crate) fn write(&self, path: &Path, contents: &str) -> Result<(), PkiError> {
        std::fs::write(path, contents).map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
    }

    pub(crate) fn write_key(&self, path: &Path, key: &KeyPair) -> Result<(), PkiError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| file.write_all(key.serialize_pem().as_bytes()))
            .map_err(|source| PkiError::Write {
                path: path.to_owned(),
                source,
            })
    }
}

fn generation_error(name: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        name: name.to_owned(),
        source,
    }
}

fn ia5(value: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    value.try_into().map_err(generation_error(value))
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
}

fn certificate_authority(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, PkiError> {
    let on_error = generation_error(common_name);
    let mut params = CertificateParams::default();
    // Most significant first, so the RFC 4514 form reads `CN=...,O=Tessera Dev` (the default
    // params carry a CN, which would otherwise keep first place).
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tessera Dev");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let key = KeyPair::generate().map_err(generation_error(common_name))?;
    CertifiedIssuer::self_signed(params, key).map_err(on_error)
}

fn client(name: &str, ca: &Issuer<'_, KeyPair>) -> Result<(String, KeyPair), PkiError> {
    leaf(
        name,
        &[
            SanType::DnsName(ia5(&format!("{name}.tessera.test"))?),
            SanType::URI(ia5(&format!("spiffe://tessera.test/{name}"))?),
            SanType::Rfc822Name(ia5(&format!("{name}@tessera.test"))?),
        ],
        ExtendedKeyUsagePurpose::ClientAuth,
        ca,
    )
}

fn leaf(
    common_name: &str,
    sans: &[SanType],
    usage: ExtendedKeyUsagePurpose,
    ca: &Issuer<'_, KeyPair>,
) -> Result<(String, KeyPair), PkiError> {
    let mut params = CertificateParams::default();
    // Most significant first, so the RFC 4514 form reads `CN=...,O=Tessera Dev` (the default
    // params carry a CN, which would otherwise keep first place).
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tessera Dev");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans.to_vec();
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    let key = KeyPair::generate().map_err(generation_error(common_name))?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(generation_error(common_name))?;
    Ok((cert.pem(), key))
}

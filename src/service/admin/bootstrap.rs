//! Registering an admin from the command line (`tessera admin bootstrap`): whoever can write
//! to the database can do this anyway, so it needs no other admin, but it is audited like
//! every other change.

use sqlx::PgConnection;

use crate::audit::{Applied, AuditLog, Change, EventDetails, EventKind};
use crate::domain::admin::{Admin, Role, is_plain_id};
use crate::tls::{ClientCertificate, SubjectAltName};

use super::AdminError;

/// The identity a certificate file gives an admin: its subject and every SAN.
pub struct CertificateIdentity {
    pub subject_dn: String,
    pub san: Vec<String>,
    /// The subject's common name, when it is a plain id.
    pub suggested_id: Option<String>,
}

pub fn identity_of(certificate: &ClientCertificate) -> CertificateIdentity {
    let subject_dn = certificate.subject.to_string();
    let suggested_id = subject_dn
        .split(',')
        .find_map(|part| part.strip_prefix("CN="))
        .map(str::to_owned)
        .filter(|name| is_plain_id(name));
    let san = certificate
        .subject_alt_names
        .iter()
        .map(|name| match name {
            SubjectAltName::Dns(dns) => format!("dns:{}", dns.to_ascii_lowercase()),
            SubjectAltName::Uri(uri) => format!("uri:{uri}"),
            SubjectAltName::Email(email) => format!("email:{email}"),
            SubjectAltName::Ip(ip) => format!("ip:{ip}"),
        })
        .collect();
    CertificateIdentity {
        subject_dn,
        san,
        suggested_id,
    }
}

pub async fn register(
    audit: &AuditLog,
    id: &str,
    identity: CertificateIdentity,
    roles: Vec<Role>,
    registered_by: &str,
) -> Result<Admin, AdminError> {
    if !is_plain_id(id) {
        return Err(AdminError::Invalid(crate::domain::admin::FieldError::new(
            "id",
            "plain_id",
            "lowercase letters, digits, `.`, `_` or `-`, at most 64",
        )));
    }
    Ok(audit
        .commit_change(
            EventKind::AdminChange,
            Register {
                id: id.to_owned(),
                identity,
                roles,
                registered_by: registered_by.to_owned(),
            },
        )
        .await?)
}

struct Register {
    id: String,
    identity: CertificateIdentity,
    roles: Vec<Role>,
    registered_by: String,
}

impl Change for Register {
    type Output = Admin;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Admin, AdminError> {
        Box::pin(async move {
            let admin = crate::storage::admins::insert_admin(
                conn,
                &self.id,
                &self.identity.subject_dn,
                &self.identity.san,
                &self.roles,
                &self.registered_by,
            )
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(database) if database.is_unique_violation() => {
                    AdminError::Conflict(format!(
                        "`{}` or its certificate identity is already an admin or an OAuth client",
                        self.id
                    ))
                }
                _ => AdminError::from(error),
            })?;
            let details = EventDetails {
                reason: Some("admin_registered".to_owned()),
                subject: Some(self.registered_by.clone()),
                changes: Some(serde_json::json!({ "before": null, "after": admin })),
                ..EventDetails::default()
            };
            Ok((details, admin))
        })
    }
}

//! The admin API's use cases: who is calling, what they may do, and every change committed
//! with its audit record (see [`crate::audit::Change`]).

pub mod admins;
pub mod audit_query;
pub mod auth;
pub mod bootstrap;
pub mod consents;
pub mod operations;
pub mod partners;
pub mod propagation;
pub mod proposals;
pub mod registry;
pub mod trust_profiles;

use crate::audit::{AuditLog, ChangeFailed, EventDetails, EventKind, Outcome};
use crate::domain::admin::{Admin, FieldError, Role};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No admin identity: no certificate, a certificate from another anchor, an unknown one,
    /// or a token that is not an admin token for this certificate.
    #[error("not authenticated as an admin: {0}")]
    Unauthenticated(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{}: {}", .0.field, .0.detail)]
    Invalid(FieldError),
    #[error("If-Match is required for updates")]
    PreconditionRequired,
    #[error("the resource is at version {current}")]
    PreconditionFailed { current: i32 },
    #[error("{0}")]
    Conflict(String),
    #[error("the registry or the audit trail is unavailable")]
    Unavailable,
}

impl From<FieldError> for AdminError {
    fn from(error: FieldError) -> Self {
        Self::Invalid(error)
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "admin storage failed");
        Self::Unavailable
    }
}

impl From<ChangeFailed<AdminError>> for AdminError {
    fn from(failed: ChangeFailed<AdminError>) -> Self {
        match failed {
            ChangeFailed::Refused(error) => error,
            ChangeFailed::Audit(error) => {
                tracing::error!(%error, "admin change not committed");
                Self::Unavailable
            }
        }
    }
}

/// An authenticated admin and the request they made.
#[derive(Debug, Clone)]
pub struct Caller {
    pub admin: Admin,
    pub request_id: String,
}

impl Caller {
    /// The record of a change this caller made.
    pub fn details(&self, action: &str, partner: Option<&str>) -> EventDetails {
        EventDetails {
            reason: Some(action.to_owned()),
            request_id: Some(self.request_id.clone()),
            subject: Some(self.admin.id.clone()),
            partner: partner.map(str::to_owned),
            ..EventDetails::default()
        }
    }

    /// Refuses (and audits the refusal) unless the caller holds `role`.
    pub async fn require(&self, audit: &AuditLog, role: Role) -> Result<(), AdminError> {
        if self.admin.may(role) {
            return Ok(());
        }
        let reason = format!("the `{role}` role is required");
        denied(audit, &self.request_id, Some(&self.admin.id), &reason).await?;
        Err(AdminError::Forbidden(reason))
    }
}

/// Audits a refused admin request; the refusal stands even if it cannot be audited, but the
/// caller then hears that the service is unavailable.
pub async fn denied(
    audit: &AuditLog,
    request_id: &str,
    admin: Option<&str>,
    reason: &str,
) -> Result<(), AdminError> {
    audit
        .record(
            EventKind::AdminDenied,
            Outcome::Deny,
            EventDetails {
                reason: Some(reason.to_owned()),
                request_id: Some(request_id.to_owned()),
                subject: admin.map(str::to_owned),
                ..EventDetails::default()
            },
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "admin refusal not audited");
            AdminError::Unavailable
        })
}

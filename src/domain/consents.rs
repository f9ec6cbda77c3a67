//! Consent records: a partner (grantor) authorising another partner, or one of its clients,
//! to obtain tokens about the grantor's subjects for some audiences and scopes, for a time.
//! Versioned: every change is a new row; the highest version is the record's state.

use time::OffsetDateTime;

use crate::domain::audiences::AudienceId;
use crate::domain::scopes::ScopeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStatus {
    Active,
    Revoked,
}

#[derive(Debug, Clone)]
pub struct Consent {
    pub id: uuid::Uuid,
    pub version: i32,
    pub grantor: String,
    pub grantee_partner: String,
    pub grantee_client: Option<String>,
    pub scopes: ScopeSet,
    pub audiences: Vec<String>,
    pub effective_from: OffsetDateTime,
    pub effective_until: OffsetDateTime,
    pub legal_basis: String,
    pub status: ConsentStatus,
}

/// Why no consent covers a request (for the audit trail), in rising order of how near the
/// request came: of several consents, the nearest miss is the one to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Uncovered {
    Absent,
    Revoked,
    Expired,
    NotYetEffective,
    AudienceNotCovered,
}

impl Uncovered {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Absent => "no consent from the subject's partner",
            Self::Revoked => "the consent was revoked",
            Self::NotYetEffective => "the consent is not yet effective",
            Self::Expired => "the consent has expired",
            Self::AudienceNotCovered => "the consent does not cover this audience",
        }
    }
}

impl Consent {
    /// Active, in its window, and naming the audience.
    pub fn covers(&self, audience: &AudienceId, now: OffsetDateTime) -> Result<(), Uncovered> {
        if self.status == ConsentStatus::Revoked {
            return Err(Uncovered::Revoked);
        }
        if now < self.effective_from {
            return Err(Uncovered::NotYetEffective);
        }
        if now >= self.effective_until {
            return Err(Uncovered::Expired);
        }
        if !self
            .audiences
            .iter()
            .any(|covered| covered == audience.as_str())
        {
            return Err(Uncovered::AudienceNotCovered);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct NewConsent {
    pub grantor: String,
    pub grantee_partner: String,
    pub grantee_client: Option<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub effective_from: OffsetDateTime,
    pub effective_until: OffsetDateTime,
    pub legal_basis: String,
    pub constraints: serde_json::Value,
}

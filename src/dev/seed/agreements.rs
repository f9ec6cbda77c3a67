//! Trust profiles and consents in a seed file, until the admin API can drive them. They are
//! versioned and audited, so they go through the same functions an admin change would
//! (`trust::publish`, `consents::create`), and only when the registry lacks them: applying a
//! seed twice publishes no second profile version and records no second consent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{Seed, SeedError};
use crate::audit::AuditLog;
use crate::domain::scopes::ScopeSet;
use crate::domain::trust::{KeySource, NewProfile, TrustProfile};

/// A partner's trust profile: the issuers it vouches through and what their subjects reach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustProfileSeed {
    pub partner: String,
    pub issuers: Vec<String>,
    /// The issuers' key set (JWKS); a relative path is read from the directory the caller
    /// names (`dev`: its dev PKI, where the demo identity provider's key is generated).
    pub jwks_file: PathBuf,
    pub algorithms: Vec<String>,
    pub max_assertion_lifetime_s: i32,
    #[serde(default)]
    pub single_use: bool,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub region: String,
}

/// A consent a data owner gives another partner (or one of its clients).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentSeed {
    pub grantor: String,
    pub grantee_partner: String,
    pub grantee_client: Option<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub legal_basis: String,
    /// How long the consent is in force from when it is seeded.
    pub valid_days: u16,
}

/// Who the audit trail names as the author of seeded changes.
const SEEDED_BY: &str = "seed";

impl Seed {
    /// Publishes each trust profile whose partner's active profile differs from it, and
    /// records each consent that no current consent between the same parties matches; both
    /// audited through `audit`. Relative key-set paths are read from `keys_dir`.
    pub async fn apply_agreements(
        &self,
        pool: &PgPool,
        audit: &AuditLog,
        keys_dir: &Path,
    ) -> Result<(), SeedError> {
        for seeded in &self.trust_profiles {
            let profile = seeded.profile(keys_dir)?;
            let active = match seeded.issuers.first() {
                Some(issuer) => crate::storage::trust::profile_for_issuer(pool, issuer)
                    .await
                    .map_err(|error| agreement_error(&seeded.partner, error))?,
                None => None,
            };
            if active.is_some_and(|active| same_profile(&active, &seeded.partner, &profile)) {
                continue;
            }
            crate::storage::trust::publish(pool, audit, &seeded.partner, &profile, SEEDED_BY)
                .await
                .map_err(|error| agreement_error(&seeded.partner, error))?;
        }
        let now = time::OffsetDateTime::now_utc();
        for seeded in &self.consents {
            let grantee_client = seeded.grantee_client.as_deref().unwrap_or_default();
            let current = crate::storage::consents::between(
                pool,
                &seeded.grantor,
                &seeded.grantee_partner,
                grantee_client,
            )
            .await?;
            let scopes = ScopeSet::from_stored(&seeded.scopes);
            let matching = current.iter().any(|consent| {
                consent.status == crate::domain::consents::ConsentStatus::Active
                    && consent.grantee_client == seeded.grantee_client
                    && consent.scopes == scopes
                    && consent.audiences == seeded.audiences
                    && consent.effective_from <= now
                    && now < consent.effective_until
            });
            if matching {
                continue;
            }
            let consent = crate::domain::consents::NewConsent {
                grantor: seeded.grantor.clone(),
                grantee_partner: seeded.grantee_partner.clone(),
                grantee_client: seeded.grantee_client.clone(),
                scopes: seeded.scopes.clone(),
                audiences: seeded.audiences.clone(),
                // A second early: decisions compare whole seconds, and a consent seeded
                // within the second of a request must already be in force for it.
                effective_from: now - time::Duration::seconds(1),
                effective_until: now + time::Duration::days(i64::from(seeded.valid_days)),
                legal_basis: seeded.legal_basis.clone(),
                constraints: serde_json::json!({}),
            };
            crate::storage::consents::create(pool, audit, &consent, SEEDED_BY)
                .await
                .map_err(|error| agreement_error(&seeded.grantor, error))?;
        }
        Ok(())
    }
}

fn agreement_error(partner: &str, error: impl std::fmt::Display) -> SeedError {
    SeedError::File {
        path: format!("agreements of {partner}"),
        reason: error.to_string(),
    }
}

impl TrustProfileSeed {
    fn profile(&self, keys_dir: &Path) -> Result<NewProfile, SeedError> {
        let path = keys_dir.join(&self.jwks_file);
        let file_error = |reason: String| SeedError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|error| file_error(error.to_string()))?;
        let jwks: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| file_error(error.to_string()))?;
        Ok(NewProfile {
            issuers: self.issuers.clone(),
            jwks: Some(jwks),
            jwks_uri: None,
            algorithms: self.algorithms.clone(),
            max_assertion_lifetime_s: self.max_assertion_lifetime_s,
            required_claims: serde_json::json!({}),
            single_use: self.single_use,
            client_ca_pem: None,
            audiences: self.audiences.clone(),
            scopes: self.scopes.clone(),
            region: self.region.clone(),
            active: true,
            required_typ: None,
        })
    }
}

/// Whether the partner's active profile already says what the seed says.
fn same_profile(active: &TrustProfile, partner: &str, seeded: &NewProfile) -> bool {
    let keys = match &active.keys {
        KeySource::Inline(keys) => Some(keys.document()),
        KeySource::Uri(_) => None,
    };
    let algorithms = &active.algorithms;
    active.partner == partner
        && active.active
        && active.issuers == seeded.issuers
        && keys.is_some()
        // Both sides through the same parse and print, so spelling differences do not count.
        && keys
            == seeded
                .jwks
                .clone()
                .and_then(|jwks| serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(jwks).ok())
                .and_then(|jwks| serde_json::to_value(jwks).ok())
        && *algorithms == seeded.algorithms
        && active.max_assertion_lifetime == i64::from(seeded.max_assertion_lifetime_s)
        && active.single_use == seeded.single_use
        && active.required_claims.is_empty()
        && active.required_typ.is_none()
        && active.audiences == seeded.audiences
        && active.scopes == ScopeSet::from_stored(&seeded.scopes)
        && active.region == seeded.region
}

//! Partner trust profiles through the admin API: versions are immutable once stored; which
//! one is active is a pointer. Activating a version (a roll-back included) that widens reach
//! against the active one is a proposal; one that only narrows, and suspending, are
//! immediate.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sqlx::PgConnection;

use crate::audit::{Applied, Change, EventKind};
use crate::domain::admin::{
    FieldError, PartnerStatus, Proposal, ProposalStatus, ProposedChange, Role, TrustProfileDoc,
    TrustProfileVersion, diff,
};
use crate::service::Services;
use crate::storage;

use super::{AdminError, Caller};

/// The partner's versions, newest first, and its active version (0 when none).
pub async fn list(
    services: &Services,
    caller: &Caller,
    partner: &str,
) -> Result<(i32, Vec<TrustProfileVersion>), AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    if storage::partners::partner(&mut conn, partner, false)
        .await?
        .is_none()
    {
        return Err(AdminError::NotFound(format!("partner `{partner}`")));
    }
    let versions = storage::trust::profile_versions(&mut conn, partner).await?;
    let active = versions
        .iter()
        .find(|version| version.active)
        .map_or(0, |version| version.version);
    Ok((active, versions))
}

pub async fn get(
    services: &Services,
    caller: &Caller,
    partner: &str,
    version: i32,
) -> Result<TrustProfileVersion, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    find(&mut conn, partner, version).await
}

async fn find(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
) -> Result<TrustProfileVersion, AdminError> {
    storage::trust::profile_version(conn, partner, version)
        .await?
        .ok_or_else(|| {
            AdminError::NotFound(format!(
                "version {version} of partner `{partner}`'s profile"
            ))
        })
}

/// What changes from one version to another, and why the change would widen reach.
pub async fn compare(
    services: &Services,
    caller: &Caller,
    partner: &str,
    from: i32,
    to: i32,
) -> Result<serde_json::Value, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    let before = find(&mut conn, partner, from).await?;
    let after = find(&mut conn, partner, to).await?;
    Ok(serde_json::json!({
        "from": from,
        "to": to,
        "diff": diff(&json(&before.profile)?, &json(&after.profile)?),
        "widens": after.profile.widens(Some(&before.profile)),
    }))
}

fn json(profile: &TrustProfileDoc) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(profile).map_err(|_| AdminError::Unavailable)
}

/// Stores a new version, not yet active.
pub async fn create(
    services: &Services,
    caller: &Caller,
    partner: &str,
    body: &[u8],
) -> Result<TrustProfileVersion, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let profile = TrustProfileDoc::from_body(body)?;
    if let Some(jwks) = &profile.jwks {
        serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(jwks.clone()).map_err(|_| {
            FieldError::new("jwks", "jwk_set", "not a key set of supported public keys")
        })?;
    }
    if let Some(pem) = &profile.client_ca_pem {
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        if certificates.is_empty() {
            return Err(FieldError::new(
                "client_ca_pem",
                "pem_certificates",
                "one or more PEM CA certificates",
            )
            .into());
        }
    }
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Create {
                caller: caller.clone(),
                partner: partner.to_owned(),
                profile,
            },
        )
        .await?)
}

struct Create {
    caller: Caller,
    partner: String,
    profile: TrustProfileDoc,
}

impl Change for Create {
    type Output = TrustProfileVersion;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, AdminError> {
        Box::pin(async move {
            if storage::trust::lock_active_version(conn, &self.partner)
                .await?
                .is_none()
            {
                return Err(AdminError::NotFound(format!("partner `{}`", self.partner)));
            }
            let unknown = storage::trust::unknown_audiences(conn, &self.profile.audiences).await?;
            if !unknown.is_empty() {
                return Err(FieldError::new(
                    "audiences",
                    "registered_audience",
                    format!("not registered: {}", unknown.join(", ")),
                )
                .into());
            }
            let version = storage::trust::insert_profile_version(
                conn,
                &self.partner,
                &self.profile,
                &self.caller.admin.id,
            )
            .await?;
            let stored = find(conn, &self.partner, version).await?;
            let mut details = self
                .caller
                .details("trust_profile_version_created", Some(&self.partner));
            details.trust_profile_version = Some(i64::from(version));
            details.changes = Some(serde_json::json!({ "before": null, "after": stored }));
            Ok((details, stored))
        })
    }
}

/// What an activation did.
#[derive(Debug)]
pub enum Activated {
    Applied(Box<TrustProfileVersion>),
    Proposed(Box<Proposal>),
}

/// Activates `version` (an earlier one for a roll-back) against the active version named by
/// `If-Match`.
pub async fn activate(
    services: &Services,
    caller: &Caller,
    partner: &str,
    version: i32,
    if_match: Option<i32>,
) -> Result<Activated, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Activate {
                caller: caller.clone(),
                partner: partner.to_owned(),
                version,
                expected,
            },
        )
        .await?)
}

struct Activate {
    caller: Caller,
    partner: String,
    version: i32,
    expected: i32,
}

impl Change for Activate {
    type Output = Activated;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Activated, AdminError> {
        Box::pin(async move {
            let active = locked_active(conn, &self.partner, self.expected).await?;
            let target = find(conn, &self.partner, self.version).await?;
            if active == self.version {
                return Err(AdminError::Conflict(format!(
                    "version {} is already active",
                    self.version
                )));
            }
            let current = match active {
                0 => None,
                version => Some(find(conn, &self.partner, version).await?),
            };
            let before = current
                .as_ref()
                .map(|current| json(&current.profile))
                .transpose()?
                .unwrap_or(serde_json::Value::Null);
            let after = json(&target.profile)?;
            let changes = diff(&before, &after);
            let widens = target
                .profile
                .widens(current.as_ref().map(|current| &current.profile));
            if widens.is_empty() {
                switch(conn, &self.partner, &target).await?;
                let mut details = self
                    .caller
                    .details("trust_profile_activated", Some(&self.partner));
                details.trust_profile_version = Some(i64::from(self.version));
                details.changes = Some(serde_json::json!({
                    "before": before, "after": after, "diff": changes,
                    "from_version": active, "to_version": self.version,
                }));
                let activated = TrustProfileVersion {
                    active: true,
                    ..target
                };
                return Ok((details, Activated::Applied(Box::new(activated))));
            }
            let proposal = Proposal {
                id: uuid::Uuid::new_v4(),
                target: self.partner.clone(),
                change: ProposedChange::ActivateTrustProfile {
                    version: self.version,
                },
                base_version: Some(active),
                diff: serde_json::json!({ "changes": changes, "widens": widens }),
                author: self.caller.admin.id.clone(),
                status: ProposalStatus::Pending,
                decided_by: None,
                reason: None,
                version: 1,
            };
            storage::proposals::insert_proposal(conn, &proposal).await?;
            let mut details = self.caller.details("proposal_created", Some(&self.partner));
            details.trust_profile_version = Some(i64::from(self.version));
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(),
                "before": before, "after": after, "diff": changes, "widens": widens,
            }));
            Ok((details, Activated::Proposed(Box::new(proposal))))
        })
    }
}

/// The active version, locked; 412 when it is not the one the caller saw.
async fn locked_active(
    conn: &mut PgConnection,
    partner: &str,
    expected: i32,
) -> Result<i32, AdminError> {
    let active = storage::trust::lock_active_version(conn, partner)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("partner `{partner}`")))?;
    if active != expected {
        return Err(AdminError::PreconditionFailed { current: active });
    }
    Ok(active)
}

/// Points the partner at `target` and tells every node.
async fn switch(
    conn: &mut PgConnection,
    partner: &str,
    target: &TrustProfileVersion,
) -> Result<(), AdminError> {
    if let Some(other) =
        storage::trust::activate_profile(conn, partner, target.version, &target.profile.issuers)
            .await?
    {
        return Err(AdminError::Conflict(format!(
            "an issuer of version {} already vouches for partner `{other}`",
            target.version
        )));
    }
    storage::registry::notify_registry_changed(conn, "trust_profiles").await?;
    Ok(())
}

/// Applies an approved activation, if the active version is still the one it was proposed
/// against.
pub(super) async fn apply_approved(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
    base_version: Option<i32>,
) -> Result<serde_json::Value, AdminError> {
    let active = storage::trust::lock_active_version(conn, partner)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("partner `{partner}`")))?;
    if Some(active) != base_version {
        return Err(AdminError::Conflict(format!(
            "partner `{partner}`'s active profile changed since the proposal (now version \
             {active}); propose again"
        )));
    }
    let target = find(conn, partner, version).await?;
    switch(conn, partner, &target).await?;
    Ok(serde_json::json!({ "from_version": active, "to_version": version }))
}

/// Suspends the partner's trust at once: a copy of the active version with status
/// `suspended` becomes the active one.
pub async fn suspend(
    services: &Services,
    caller: &Caller,
    partner: &str,
    if_match: Option<i32>,
) -> Result<TrustProfileVersion, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Suspend {
                caller: caller.clone(),
                partner: partner.to_owned(),
                expected,
            },
        )
        .await?)
}

struct Suspend {
    caller: Caller,
    partner: String,
    expected: i32,
}

impl Change for Suspend {
    type Output = TrustProfileVersion;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, AdminError> {
        Box::pin(async move {
            let active = locked_active(conn, &self.partner, self.expected).await?;
            if active == 0 {
                return Err(AdminError::Conflict(format!(
                    "partner `{}` has no active trust profile",
                    self.partner
                )));
            }
            let current = find(conn, &self.partner, active).await?;
            if current.profile.status == PartnerStatus::Suspended {
                return Err(AdminError::Conflict(
                    "the profile is already suspended".into(),
                ));
            }
            let suspended = TrustProfileDoc {
                status: PartnerStatus::Suspended,
                ..current.profile.clone()
            };
            let version = storage::trust::insert_profile_version(
                conn,
                &self.partner,
                &suspended,
                &self.caller.admin.id,
            )
            .await?;
            let stored = find(conn, &self.partner, version).await?;
            switch(conn, &self.partner, &stored).await?;
            let mut details = self
                .caller
                .details("trust_profile_suspended", Some(&self.partner));
            details.trust_profile_version = Some(i64::from(version));
            details.changes = Some(serde_json::json!({
                "before": current.profile, "after": suspended,
                "from_version": active, "to_version": version,
            }));
            Ok((
                details,
                TrustProfileVersion {
                    active: true,
                    ..stored
                },
            ))
        })
    }
}

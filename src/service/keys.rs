//! Signing-key operations: the first keys, rotation (scheduled or by the operator) and
//! re-wrapping every sealed key under a new key-encryption key. Each opens its transaction and
//! takes the key-set lock, so exactly one node or command acts at a time.

use std::time::Duration;

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::config::KeySettings;
use crate::crypto::envelope::Envelope;
use crate::crypto::keys::{
    KeyError, KeyRing, KeyState, KeyTable, SigningKey, all_keks, generate_pkcs8, refuse_key,
};

/// Generates, seals and stores a key in `state`; returns its id.
async fn insert_key(
    conn: &mut PgConnection,
    settings: &KeySettings,
    state: KeyState,
) -> Result<String, KeyError> {
    let kid = uuid::Uuid::new_v4().simple().to_string();
    let pkcs8 = generate_pkcs8(settings.algorithm)?;
    let parsed = SigningKey::from_pkcs8(&kid, settings.algorithm, &pkcs8)?;
    let envelope = Envelope::seal(&settings.kek, &kid, &pkcs8)?;
    crate::storage::keys::insert(
        conn,
        &kid,
        settings.algorithm,
        &parsed.public_jwk(),
        &envelope,
        state,
    )
    .await?;
    Ok(kid)
}

/// Creates the first active key and its published successor when the store has none.
pub async fn ensure_keys(pool: &PgPool, settings: &KeySettings) -> Result<(), KeyError> {
    let mut tx = pool.begin().await?;
    crate::storage::keys::lock_key_set(&mut tx).await?;
    let states = crate::storage::keys::live_states(&mut tx).await?;
    if !states.contains(&KeyState::Active) {
        insert_key(&mut tx, settings, KeyState::Active).await?;
    }
    if !states.contains(&KeyState::Next) {
        insert_key(&mut tx, settings, KeyState::Next).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub retired: String,
    pub activated: String,
    pub next: String,
}

/// Promotes the published `next` key to `active`, retires the old one (published until every
/// token it may have signed has expired), and publishes a fresh `next`. With `only_if_due`,
/// rotates only when the active key is older than the rotation interval, so that every node
/// may call this on its schedule and exactly one rotation happens. A `next` key that does not
/// authenticate under the key-encryption keys is replaced instead of promoted, and the
/// rotation fails.
pub async fn rotate(
    pool: &PgPool,
    settings: &KeySettings,
    max_token_lifetime: Duration,
    only_if_due: bool,
) -> Result<Option<Rotation>, KeyError> {
    use crate::storage::keys;
    let mut tx = pool.begin().await?;
    keys::lock_key_set(&mut tx).await?;
    let due = keys::rotation_due(&mut tx, settings.rotation_interval).await?;
    if only_if_due && (settings.rotation_interval.is_zero() || due != Some(true)) {
        return Ok(None);
    }
    let Some(next) = keys::next(&mut tx).await? else {
        return Err(KeyError::NoActiveKey);
    };
    if let Err(error) = next.authenticate(&all_keks(settings)) {
        // Promoting it would leave no active key that loads. It is withdrawn instead (and
        // removed with expired keys) and a fresh successor published, for the next rotation.
        refuse_key(KeyTable::Signing.name(), &next.kid, &error);
        keys::withdraw(&mut tx, &next.kid).await?;
        insert_key(&mut tx, settings, KeyState::Next).await?;
        tx.commit().await?;
        return Err(error);
    }
    let next = next.kid;
    // Clock skew allowance on top of the longest lifetime any token can have.
    let publish_for = max_token_lifetime + Duration::from_secs(60);
    let retired = keys::retire_active(&mut tx, publish_for).await?;
    keys::activate(&mut tx, &next).await?;
    let new_next = insert_key(&mut tx, settings, KeyState::Next).await?;
    keys::delete_unpublished(&mut tx).await?;
    tx.commit().await?;
    Ok(Some(Rotation {
        retired: retired.unwrap_or_default(),
        activated: next,
        next: new_next,
    }))
}

impl Rotation {
    pub async fn audit(
        &self,
        audit: &crate::audit::AuditLog,
        by: &str,
    ) -> Result<(), crate::audit::AuditError> {
        audit
            .record(
                crate::audit::EventKind::KeyRotated,
                crate::audit::Outcome::Allow,
                crate::audit::EventDetails {
                    reason: Some(format!("rotation ({by})")),
                    changes: Some(json!({
                        "retired": self.retired,
                        "activated": self.activated,
                        "next": self.next,
                    })),
                    ..crate::audit::EventDetails::default()
                },
            )
            .await
    }
}

/// How many sealed keys `rewrap` moved to the current key-encryption key, and how many it
/// left alone because they do not authenticate (they are ignored wherever keys are loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrapped {
    pub signing_keys: usize,
    pub audit_keys: usize,
    pub refused: usize,
}

/// Re-wraps every sealed secret (token signing keys and audit keys) under the current
/// key-encryption key, in one transaction; the previous ones must still be configured to
/// unwrap.
pub async fn rewrap(pool: &PgPool, settings: &KeySettings) -> Result<Rewrapped, KeyError> {
    let keks = all_keks(settings);
    let mut tx = pool.begin().await?;
    crate::storage::keys::lock_key_set(&mut tx).await?;
    let mut rewrapped = Rewrapped::default();
    for table in [KeyTable::Signing, KeyTable::Audit] {
        let rows = match table {
            KeyTable::Signing => {
                crate::storage::keys::not_under_kek(&mut tx, &settings.kek.id).await?
            }
            KeyTable::Audit => {
                crate::storage::audit_keys::not_under_kek(&mut tx, &settings.kek.id).await?
            }
        };
        for row in &rows {
            if let Err(error) = row.authenticate(&keks) {
                refuse_key(table.name(), &row.kid, &error);
                rewrapped.refused += 1;
                continue;
            }
            let envelope = row.envelope().rewrapped(&keks, &settings.kek, &row.kid)?;
            match table {
                KeyTable::Signing => {
                    crate::storage::keys::rewrap(&mut tx, &row.kid, &envelope).await?;
                    rewrapped.signing_keys += 1;
                }
                KeyTable::Audit => {
                    crate::storage::audit_keys::rewrap(&mut tx, &row.kid, &envelope).await?;
                    rewrapped.audit_keys += 1;
                }
            }
        }
    }
    tx.commit().await?;
    Ok(rewrapped)
}

/// One round of key maintenance, run on the configured refresh interval: where rotation
/// is scheduled, rotates when due (the advisory lock lets exactly one node do it), then
/// refreshes the set. A failed rotation is logged and the refresh still happens.
pub async fn maintain(
    ring: &KeyRing,
    pool: &PgPool,
    max_token_lifetime: Duration,
    audit: &crate::audit::AuditLog,
) -> Result<(), KeyError> {
    if !ring.settings().rotation_interval.is_zero() {
        match rotate(pool, ring.settings(), max_token_lifetime, true).await {
            Ok(Some(rotation)) => {
                tracing::info!(activated = %rotation.activated, "signing key rotated on schedule");
                if let Err(error) = rotation.audit(audit, "scheduled").await {
                    tracing::error!(%error, "key rotation not audited");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "scheduled key rotation failed"),
        }
    }
    ring.refresh(pool).await
}

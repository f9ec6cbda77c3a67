//! Audit keys (`audit_keys`): the sealed Ed25519 keys that sign audit checkpoints and chain
//! registrations, and the advisory lock that serialises their creation across nodes.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::crypto::envelope::Envelope;
use crate::crypto::keys::StoredKey;
use crate::storage::keys::KeyRow;

/// Serialises creation of the audit key across nodes.
const AUDIT_KEY_LOCK: i64 = 0x7e55_e7a0_0000_0002;

/// Takes the audit-key lock until the transaction ends.
pub async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_KEY_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every audit key, newest first.
pub async fn newest_first(conn: &mut PgConnection) -> Result<Vec<StoredKey>, sqlx::Error> {
    // Audit keys are always Ed25519 and have no algorithm column.
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT kid, 'EdDSA' AS algorithm, public_jwk, sealed_private_key, wrapped_data_key,
                kek_id
           FROM audit_keys ORDER BY created_at DESC",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(StoredKey::from).collect())
}

/// Every audit key, oldest first.
pub async fn oldest_first(pool: &PgPool) -> Result<Vec<StoredKey>, sqlx::Error> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT kid, 'EdDSA' AS algorithm, public_jwk, sealed_private_key, wrapped_data_key,
                kek_id
           FROM audit_keys ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(StoredKey::from).collect())
}

pub async fn insert(
    conn: &mut PgConnection,
    kid: &str,
    public_jwk: &Value,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_keys (kid, public_jwk, sealed_private_key, wrapped_data_key, kek_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kid)
    .bind(public_jwk)
    .bind(&envelope.sealed_private_key)
    .bind(&envelope.wrapped_data_key)
    .bind(&envelope.kek_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The audit keys wrapped by another key-encryption key than `kek_id`, locked until the
/// transaction ends.
pub async fn not_under_kek(
    conn: &mut PgConnection,
    kek_id: &str,
) -> Result<Vec<StoredKey>, sqlx::Error> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT kid, 'EdDSA' AS algorithm, public_jwk, sealed_private_key, wrapped_data_key,
                kek_id
           FROM audit_keys WHERE kek_id <> $1 FOR UPDATE",
    )
    .bind(kek_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(StoredKey::from).collect())
}

/// Stores the key's data key as wrapped anew (the sealed private key is unchanged).
pub async fn rewrap(
    conn: &mut PgConnection,
    kid: &str,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit_keys SET wrapped_data_key = $1, kek_id = $2 WHERE kid = $3")
        .bind(&envelope.wrapped_data_key)
        .bind(&envelope.kek_id)
        .bind(kid)
        .execute(conn)
        .await?;
    Ok(())
}

//! Token signing keys (`signing_keys`): sealed rows in the states `next` → `active` →
//! `retired`, and the advisory lock that serialises changes to the key set across nodes.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::config::SigningAlgorithm;
use crate::crypto::envelope::Envelope;
use crate::crypto::keys::{KeyState, StoredKey};

/// Serialises key-set changes across nodes (`pg_advisory_xact_lock`).
const KEY_SET_LOCK: i64 = 0x7e55_e7a0_0000_0001;

/// A sealed key as stored, in `signing_keys` or `audit_keys`.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    algorithm: String,
    public_jwk: Value,
    sealed_private_key: Vec<u8>,
    wrapped_data_key: Vec<u8>,
    kek_id: String,
}

impl From<KeyRow> for StoredKey {
    fn from(row: KeyRow) -> Self {
        Self {
            kid: row.kid,
            algorithm: row.algorithm,
            public_jwk: row.public_jwk,
            sealed_private_key: row.sealed_private_key,
            wrapped_data_key: row.wrapped_data_key,
            kek_id: row.kek_id,
        }
    }
}

fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Next => "next",
        KeyState::Active => "active",
        KeyState::Retired => "retired",
    }
}

fn parse_state(value: &str) -> Option<KeyState> {
    match value {
        "next" => Some(KeyState::Next),
        "active" => Some(KeyState::Active),
        "retired" => Some(KeyState::Retired),
        _ => None,
    }
}

/// Takes the key-set lock until the transaction ends.
pub async fn lock_key_set(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEY_SET_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert(
    conn: &mut PgConnection,
    kid: &str,
    algorithm: SigningAlgorithm,
    public_jwk: &Value,
    envelope: &Envelope,
    state: KeyState,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys
            (kid, algorithm, public_jwk, sealed_private_key, wrapped_data_key, kek_id, state,
             activated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 = 'active' THEN now() END)",
    )
    .bind(kid)
    .bind(algorithm.as_str())
    .bind(public_jwk)
    .bind(&envelope.sealed_private_key)
    .bind(&envelope.wrapped_data_key)
    .bind(&envelope.kek_id)
    .bind(state_name(state))
    .execute(conn)
    .await?;
    Ok(())
}

/// The states present among `active` and `next`.
pub async fn live_states(conn: &mut PgConnection) -> Result<Vec<KeyState>, sqlx::Error> {
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM signing_keys WHERE state IN ('active', 'next')")
            .fetch_all(conn)
            .await?;
    Ok(states
        .iter()
        .filter_map(|state| parse_state(state))
        .collect())
}

/// Whether the active key is older than `interval`, on the database clock; `None` without
/// an active key.
pub async fn rotation_due(
    conn: &mut PgConnection,
    interval: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT activated_at <= now() - make_interval(secs => $1)
           FROM signing_keys WHERE state = 'active'",
    )
    .bind(interval.as_secs_f64())
    .fetch_optional(conn)
    .await
}

/// The published successor.
pub async fn next(conn: &mut PgConnection) -> Result<Option<StoredKey>, sqlx::Error> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT kid, algorithm, public_jwk, sealed_private_key, wrapped_data_key, kek_id
           FROM signing_keys WHERE state = 'next'",
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(StoredKey::from))
}

/// Retires a key and stops publishing it at once.
pub async fn withdraw(conn: &mut PgConnection, kid: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signing_keys SET state = 'retired', retired_at = now(), publish_until = now()
          WHERE kid = $1",
    )
    .bind(kid)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retires the active key, published for `publish_for` more; returns its id.
pub async fn retire_active(
    conn: &mut PgConnection,
    publish_for: Duration,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE signing_keys
            SET state = 'retired', retired_at = now(),
                publish_until = now() + make_interval(secs => $1)
          WHERE state = 'active' RETURNING kid",
    )
    .bind(publish_for.as_secs_f64())
    .fetch_optional(conn)
    .await
}

pub async fn activate(conn: &mut PgConnection, kid: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE signing_keys SET state = 'active', activated_at = now() WHERE kid = $1")
        .bind(kid)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes retired keys no longer published.
pub async fn delete_unpublished(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM signing_keys WHERE state = 'retired' AND publish_until < now()")
        .execute(conn)
        .await?;
    Ok(())
}

/// Every key in the JWKS (next, active and retired keys still published), newest first, with
/// its state.
pub async fn published(pool: &PgPool) -> Result<Vec<(StoredKey, Option<KeyState>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Published {
        #[sqlx(flatten)]
        key: KeyRow,
        state: String,
    }
    let rows: Vec<Published> = sqlx::query_as(
        "SELECT kid, algorithm, public_jwk, sealed_private_key, wrapped_data_key, kek_id, state
           FROM signing_keys
          WHERE state IN ('next', 'active') OR publish_until > now()
          ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (StoredKey::from(row.key), parse_state(&row.state)))
        .collect())
}

/// The keys wrapped by another key-encryption key than `kek_id`, locked until the transaction
/// ends.
pub async fn not_under_kek(
    conn: &mut PgConnection,
    kek_id: &str,
) -> Result<Vec<StoredKey>, sqlx::Error> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT kid, algorithm, public_jwk, sealed_private_key, wrapped_data_key, kek_id
           FROM signing_keys WHERE kek_id <> $1 FOR UPDATE",
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
    sqlx::query("UPDATE signing_keys SET wrapped_data_key = $1, kek_id = $2 WHERE kid = $3")
        .bind(&envelope.wrapped_data_key)
        .bind(&envelope.kek_id)
        .bind(kid)
        .execute(conn)
        .await?;
    Ok(())
}

/// A signing key as admins see it: never its private half.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub algorithm: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retired_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub publish_until: Option<time::OffsetDateTime>,
    pub age_s: i64,
}

pub async fn signing_keys(conn: &mut PgConnection) -> Result<Vec<SigningKeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kid, algorithm, state, created_at, activated_at, retired_at, publish_until,
                extract(epoch FROM now() - created_at)::bigint AS age_s
           FROM signing_keys
          ORDER BY created_at DESC",
    )
    .fetch_all(conn)
    .await
}

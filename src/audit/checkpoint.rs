//! Signed checkpoints: an Ed25519 audit key, sealed at rest like the token keys, signs the
//! head of a chain at a sequence number. Its public half is published (`/audit/jwks.json`,
//! `tessera audit jwks`) so exported segments verify offline.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::{KeySettings, SigningAlgorithm};
use crate::keys::{Envelope, KeyError, SigningKey, all_keks, generate_pkcs8};

/// Serialises creation of the audit key across nodes.
const AUDIT_KEY_LOCK: i64 = 0x7e55_e7a0_0000_0002;
pub const CHECKPOINT_TYP: &str = "tessera-audit-checkpoint+jwt";

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    pub chain_id: String,
    pub seq: i64,
    /// base64url of the chain's hash at `seq`.
    pub head: String,
    pub signed_at: i64,
}

#[derive(Clone)]
pub struct AuditSigner {
    key: Arc<SigningKey>,
}

impl AuditSigner {
    /// Loads the audit key, creating it on first use.
    pub async fn load(pool: &PgPool, settings: &KeySettings) -> Result<Self, KeyError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_KEY_LOCK)
            .execute(&mut *tx)
            .await?;
        let row: Option<(String, Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT kid, sealed_private_key, wrapped_data_key, kek_id
               FROM audit_keys ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let key = match row {
            Some((kid, sealed_private_key, wrapped_data_key, kek_id)) => {
                let envelope = Envelope {
                    sealed_private_key,
                    wrapped_data_key,
                    kek_id,
                };
                let pkcs8 = envelope.open(&all_keks(settings), &kid)?;
                SigningKey::from_pkcs8(&kid, SigningAlgorithm::EdDsa, &pkcs8)?
            }
            None => {
                let kid = format!("audit-{}", uuid::Uuid::new_v4().simple());
                let pkcs8 = generate_pkcs8(SigningAlgorithm::EdDsa)?;
                let key = SigningKey::from_pkcs8(&kid, SigningAlgorithm::EdDsa, &pkcs8)?;
                let envelope = Envelope::seal(&settings.kek, &kid, &pkcs8)?;
                sqlx::query(
                    "INSERT INTO audit_keys
                        (kid, public_jwk, sealed_private_key, wrapped_data_key, kek_id)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&kid)
                .bind(key.public_jwk())
                .bind(&envelope.sealed_private_key)
                .bind(&envelope.wrapped_data_key)
                .bind(&envelope.kek_id)
                .execute(&mut *tx)
                .await?;
                key
            }
        };
        tx.commit().await?;
        Ok(Self { key: Arc::new(key) })
    }

    /// Signs and stores the checkpoint at `seq`; an existing one there is kept.
    pub async fn checkpoint(
        &self,
        pool: &PgPool,
        chain_id: uuid::Uuid,
        seq: i64,
        head: &[u8; 32],
    ) -> Result<(), KeyError> {
        let claims = CheckpointClaims {
            chain_id: chain_id.to_string(),
            seq,
            head: URL_SAFE_NO_PAD.encode(head),
            signed_at: crate::keys::unix_now(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Crypto)?;
        let jws = self.key.sign_typed(CHECKPOINT_TYP, &payload)?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, kid, jws)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(chain_id)
        .bind(seq)
        .bind(head.as_slice())
        .bind(&self.key.kid)
        .bind(jws)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// The published audit keys (RFC 7517).
pub async fn audit_jwks(pool: &PgPool) -> Result<Value, sqlx::Error> {
    let keys: Vec<Value> =
        sqlx::query_scalar("SELECT public_jwk FROM audit_keys ORDER BY created_at")
            .fetch_all(pool)
            .await?;
    Ok(json!({ "keys": keys }))
}

/// Verifies a checkpoint's signature and type with the published keys.
pub fn verify_checkpoint(
    jws: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
) -> Result<CheckpointClaims, &'static str> {
    let header = jsonwebtoken::decode_header(jws).map_err(|_| "checkpoint is not a JWS")?;
    if header.typ.as_deref() != Some(CHECKPOINT_TYP) || header.alg != jsonwebtoken::Algorithm::EdDSA
    {
        return Err("checkpoint has the wrong type or algorithm");
    }
    let kid = header.kid.ok_or("checkpoint names no key")?;
    let jwk = keys
        .find(&kid)
        .ok_or("checkpoint signed by an unknown key")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| "unusable audit key")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<CheckpointClaims>(jws, &key, &validation)
        .map(|data| data.claims)
        .map_err(|_| "checkpoint signature invalid")
}

pub fn encode_hash(hash: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(hash)
}

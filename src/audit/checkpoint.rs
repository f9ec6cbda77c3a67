//! Signed checkpoints: an Ed25519 audit key, sealed at rest like the token keys, signs the
//! head of a chain at a sequence number, and each chain's registration. Its public half is
//! published (`/audit/jwks.json`, `tessera audit jwks`) so exported segments verify offline;
//! only keys that authenticate under the key-encryption key are used or published.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::{KeySettings, SigningAlgorithm};
use crate::crypto::envelope::Envelope;
use crate::crypto::keys::{KeyError, KeyTable, SigningKey, all_keks, generate_pkcs8, refuse_key};
pub const CHECKPOINT_TYP: &str = "tessera-audit-checkpoint+jwt";
pub const CHAIN_TYP: &str = "tessera-audit-chain+jwt";

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    pub chain_id: String,
    pub seq: i64,
    /// base64url of the chain's hash at `seq`.
    pub head: String,
    pub signed_at: i64,
}

/// What a chain registration signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainClaims {
    pub chain_id: String,
    pub node: String,
    pub opened_at: i64,
}

#[derive(Clone)]
pub struct AuditSigner {
    key: Arc<SigningKey>,
    /// What tells trusted audit keys from rows anyone could have written.
    settings: KeySettings,
}

impl AuditSigner {
    /// Loads the newest audit key that authenticates under the configured key-encryption
    /// keys, creating one when there is none: a row the database role wrote on its own is
    /// skipped, so it can neither sign checkpoints nor keep the node from starting.
    pub async fn load(pool: &PgPool, settings: &KeySettings) -> Result<Self, KeyError> {
        let mut tx = pool.begin().await?;
        crate::storage::audit_keys::lock(&mut tx).await?;
        let rows = crate::storage::audit_keys::newest_first(&mut tx).await?;
        let keks = all_keks(settings);
        let existing = rows.iter().find_map(|row| match row.authenticate(&keks) {
            Ok(key) => Some(key),
            Err(error) => {
                refuse_key(KeyTable::Audit.name(), &row.kid, &error);
                None
            }
        });
        let key = match existing {
            Some(key) => key,
            None => {
                let kid = format!("audit-{}", uuid::Uuid::new_v4().simple());
                let pkcs8 = generate_pkcs8(SigningAlgorithm::EdDsa)?;
                let key = SigningKey::from_pkcs8(&kid, SigningAlgorithm::EdDsa, &pkcs8)?;
                let envelope = Envelope::seal(&settings.kek, &kid, &pkcs8)?;
                crate::storage::audit_keys::insert(&mut tx, &kid, &key.public_jwk(), &envelope)
                    .await?;
                key
            }
        };
        tx.commit().await?;
        Ok(Self {
            key: Arc::new(key),
            settings: settings.clone(),
        })
    }

    /// Registers a chain this node is about to write, signed, so that verification knows
    /// the chain must exist and which node it belongs to.
    pub async fn open_chain(
        &self,
        pool: &PgPool,
        chain_id: uuid::Uuid,
        node: &str,
    ) -> Result<(), KeyError> {
        let claims = ChainClaims {
            chain_id: chain_id.to_string(),
            node: node.to_owned(),
            opened_at: crate::crypto::keys::unix_now(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Crypto)?;
        let jws = self.key.sign_typed(CHAIN_TYP, &payload)?;
        crate::storage::audit::insert_chain(pool, chain_id, node, self.key.kid.as_str(), &jws)
            .await?;
        Ok(())
    }

    /// Signs and stores the checkpoint at `seq`; an existing one there is kept.
    pub async fn checkpoint(
        &self,
        pool: &PgPool,
        chain_id: uuid::Uuid,
        seq: i64,
        head: &[u8; 32],
    ) -> Result<(), KeyError> {
        self.sign_checkpoint(pool, chain_id, seq, head).await?;
        Ok(())
    }

    /// Signs and stores the checkpoint at `seq` and returns what it signed, which vouches for
    /// the head even where the table already holds another row at `seq`.
    pub(crate) async fn sign_checkpoint(
        &self,
        pool: &PgPool,
        chain_id: uuid::Uuid,
        seq: i64,
        head: &[u8; 32],
    ) -> Result<String, KeyError> {
        let claims = CheckpointClaims {
            chain_id: chain_id.to_string(),
            seq,
            head: URL_SAFE_NO_PAD.encode(head),
            signed_at: crate::crypto::keys::unix_now(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Crypto)?;
        let jws = self.key.sign_typed(CHECKPOINT_TYP, &payload)?;
        crate::storage::audit::insert_checkpoint(
            pool,
            chain_id,
            seq,
            head,
            self.key.kid.as_str(),
            &jws,
        )
        .await?;
        Ok(jws)
    }

    /// The audit keys that authenticate under the same key-encryption keys as this signer's.
    pub(crate) async fn trusted_keys(
        &self,
        pool: &PgPool,
    ) -> Result<jsonwebtoken::jwk::JwkSet, KeyError> {
        trusted_keys(pool, &self.settings).await
    }
}

/// The trusted audit keys as a key set to verify signatures with; none if they cannot be
/// read as one, so that nothing verifies.
pub(crate) async fn trusted_keys(
    pool: &PgPool,
    settings: &KeySettings,
) -> Result<jsonwebtoken::jwk::JwkSet, KeyError> {
    Ok(serde_json::from_value(audit_jwks(pool, settings).await?)
        .unwrap_or(jsonwebtoken::jwk::JwkSet { keys: Vec::new() }))
}

/// Whether `jws` is a checkpoint a trusted key signed for exactly this chain position and head.
pub(crate) fn vouches(
    jws: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
    chain_id: uuid::Uuid,
    seq: i64,
    head: &[u8],
) -> bool {
    verify_checkpoint(jws, keys).is_ok_and(|claims| {
        claims.chain_id == chain_id.to_string()
            && claims.seq == seq
            && claims.head == encode_hash(head)
    })
}

/// The audit keys that authenticate under the configured key-encryption keys (RFC 7517);
/// only these verify checkpoints, whatever else the table holds.
pub async fn audit_jwks(pool: &PgPool, settings: &KeySettings) -> Result<Value, KeyError> {
    let rows = crate::storage::audit_keys::oldest_first(pool).await?;
    let keks = all_keks(settings);
    let keys: Vec<Value> = rows
        .iter()
        .filter_map(|row| match row.authenticate(&keks) {
            Ok(key) => Some(key.public_jwk()),
            Err(error) => {
                refuse_key(KeyTable::Audit.name(), &row.kid, &error);
                None
            }
        })
        .collect();
    Ok(json!({ "keys": keys }))
}

/// Verifies a checkpoint's signature and type with the trusted keys.
pub fn verify_checkpoint(
    jws: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
) -> Result<CheckpointClaims, String> {
    verify_signed(jws, CHECKPOINT_TYP, keys).map_err(|problem| format!("checkpoint {problem}"))
}

/// Verifies a chain registration's signature and type with the trusted keys.
pub fn verify_chain(jws: &str, keys: &jsonwebtoken::jwk::JwkSet) -> Result<ChainClaims, String> {
    verify_signed(jws, CHAIN_TYP, keys).map_err(|problem| format!("chain registration {problem}"))
}

fn verify_signed<T: serde::de::DeserializeOwned>(
    jws: &str,
    typ: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
) -> Result<T, &'static str> {
    let header = jsonwebtoken::decode_header(jws).map_err(|_| "is not a JWS")?;
    if header.typ.as_deref() != Some(typ) || header.alg != jsonwebtoken::Algorithm::EdDSA {
        return Err("has the wrong type or algorithm");
    }
    let kid = header.kid.ok_or("names no key")?;
    let jwk = keys
        .find(&kid)
        .ok_or("is signed by a key that is not a trusted audit key")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| "names an unusable key")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<T>(jws, &key, &validation)
        .map(|data| data.claims)
        .map_err(|_| "signature invalid")
}

pub fn encode_hash(hash: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(hash)
}

//! Token signing keys: generated here, stored in PostgreSQL with the private half sealed under
//! a per-key data key that the configured key-encryption key wraps, parsed once into memory,
//! rotated `next` → `active` → `retired`, and published in the JWKS until every token a retired
//! key signed has expired.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PSS_SHA256,
    RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::{Kek, KeySettings, SigningAlgorithm};
use crate::crypto::envelope::Envelope;
use crate::domain::ids::Kid;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error("key {kid} is wrapped by key-encryption key `{kek_id}`, which is not configured")]
    UnknownKek { kid: String, kek_id: String },
    #[error("key {kid} could not be unsealed (wrong key-encryption key or altered row)")]
    Unseal { kid: String },
    #[error("key {kid}: stored material is unusable")]
    Malformed { kid: String },
    #[error("cryptographic operation failed")]
    Crypto,
    #[error("key {kid}: the stored public key is not the one sealed under the key-encryption key")]
    PublicKeyMismatch { kid: String },
    #[error("no active signing key authenticated under the configured key-encryption keys")]
    NoActiveKey,
}

/// Key rows refused because their public half is not authenticated under a configured
/// key-encryption key. Process-wide because keys are checked before any server (and its
/// registry) exists, and by commands that have none.
pub fn unauthenticated_keys() -> Option<&'static prometheus::IntCounterVec> {
    static COUNTER: OnceLock<Option<prometheus::IntCounterVec>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "tessera_unauthenticated_keys_total",
                    "Stored keys ignored because the key-encryption key does not authenticate them",
                ),
                &["table"],
            )
            .ok()
            .inspect(|counter| {
                // Present at zero from the start, so that an alert can watch it change.
                for table in ["signing_keys", "audit_keys"] {
                    counter.with_label_values(&[table]);
                }
            })
        })
        .as_ref()
}

/// Ignores a key row that does not authenticate: logged and counted once per process and
/// row, since the same row is seen on every refresh and on requests for published keys.
pub(crate) fn refuse_key(table: &'static str, kid: &str, error: &KeyError) {
    static REFUSED: OnceLock<Mutex<HashSet<(&'static str, String)>>> = OnceLock::new();
    let first = REFUSED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((table, kid.to_owned()));
    if first {
        tracing::warn!(table, %error, "ignoring a stored key that is not authenticated");
        if let Some(counter) = unauthenticated_keys() {
            counter.with_label_values(&[table]).inc();
        }
    }
}

impl From<aws_lc_rs::error::Unspecified> for KeyError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}

enum KeyMaterial {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Ps256(RsaKeyPair),
}

/// A parsed private key, ready to sign without re-parsing.
pub struct SigningKey {
    pub kid: Kid,
    pub algorithm: SigningAlgorithm,
    material: KeyMaterial,
    /// The base64url JOSE header of access tokens signed with this key.
    access_token_header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {})", self.kid, self.algorithm.as_str())
    }
}

impl SigningKey {
    pub(crate) fn from_pkcs8(
        kid: &str,
        algorithm: SigningAlgorithm,
        pkcs8: &[u8],
    ) -> Result<Self, KeyError> {
        let malformed = |_| KeyError::Malformed {
            kid: kid.to_owned(),
        };
        let id = Kid::parse(kid).ok_or(KeyError::Malformed {
            kid: kid.to_owned(),
        })?;
        let material = match algorithm {
            SigningAlgorithm::Es256 => KeyMaterial::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(malformed)?,
            ),
            SigningAlgorithm::EdDsa => {
                KeyMaterial::EdDsa(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(malformed)?)
            }
            SigningAlgorithm::Ps256 => {
                KeyMaterial::Ps256(RsaKeyPair::from_pkcs8(pkcs8).map_err(malformed)?)
            }
        };
        let header = json!({ "alg": algorithm.as_str(), "typ": "at+jwt", "kid": kid });
        Ok(Self {
            kid: id,
            algorithm,
            material,
            access_token_header: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    /// A compact JWS of `payload` with the access-token header (`typ: at+jwt`).
    pub fn sign_access_token(&self, payload: &[u8]) -> Result<String, KeyError> {
        self.sign_compact(&self.access_token_header, payload)
    }

    /// A compact JWS with a header naming this key and `typ`.
    pub(crate) fn sign_typed(&self, typ: &str, payload: &[u8]) -> Result<String, KeyError> {
        let header = json!({ "alg": self.algorithm.as_str(), "typ": typ, "kid": self.kid });
        self.sign_compact(&URL_SAFE_NO_PAD.encode(header.to_string()), payload)
    }

    fn sign_compact(&self, header: &str, payload: &[u8]) -> Result<String, KeyError> {
        let mut jws = String::with_capacity(header.len() + payload.len() * 4 / 3 + 400);
        jws.push_str(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let signature = match &self.material {
            KeyMaterial::Es256(key) => key
                .sign(&SystemRandom::new(), jws.as_bytes())?
                .as_ref()
                .to_vec(),
            KeyMaterial::EdDsa(key) => key.sign(jws.as_bytes()).as_ref().to_vec(),
            KeyMaterial::Ps256(key) => {
                let mut signature = vec![0u8; key.public_modulus_len()];
                key.sign(
                    &RSA_PSS_SHA256,
                    &SystemRandom::new(),
                    jws.as_bytes(),
                    &mut signature,
                )?;
                signature
            }
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }

    pub(crate) fn public_jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.material {
            KeyMaterial::Es256(key) => {
                // Uncompressed point: 0x04 || x || y.
                let point = key.public_key().as_ref();
                let coordinate = |range| point.get(range).map(b64).unwrap_or_default();
                json!({ "kty": "EC", "crv": "P-256", "x": coordinate(1..33), "y": coordinate(33..65) })
            }
            KeyMaterial::EdDsa(key) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref()) })
            }
            KeyMaterial::Ps256(key) => {
                let public = key.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
        };
        if let Some(fields) = jwk.as_object_mut() {
            fields.insert("kid".into(), json!(self.kid));
            fields.insert("alg".into(), json!(self.algorithm.as_str()));
            fields.insert("use".into(), json!("sig"));
        }
        jwk
    }
}

pub(crate) fn generate_pkcs8(algorithm: SigningAlgorithm) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = match algorithm {
        SigningAlgorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?
                .as_ref()
                .to_vec()
        }
        SigningAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)?.as_ref().to_vec(),
        SigningAlgorithm::Ps256 => RsaKeyPair::generate(KeySize::Rsa2048)?
            .as_der()?
            .as_ref()
            .to_vec(),
    };
    Ok(Zeroizing::new(pkcs8))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Active,
    Retired,
}

/// The tables holding sealed keys.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyTable {
    Signing,
    Audit,
}

impl KeyTable {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Signing => "signing_keys",
            Self::Audit => "audit_keys",
        }
    }
}

/// A stored key as read, before it is authenticated.
pub struct StoredKey {
    pub(crate) kid: String,
    pub(crate) algorithm: String,
    pub(crate) public_jwk: Value,
    pub(crate) sealed_private_key: Vec<u8>,
    pub(crate) wrapped_data_key: Vec<u8>,
    pub(crate) kek_id: String,
}

impl StoredKey {
    pub(crate) fn envelope(&self) -> Envelope {
        Envelope {
            sealed_private_key: self.sealed_private_key.clone(),
            wrapped_data_key: self.wrapped_data_key.clone(),
            kek_id: self.kek_id.clone(),
        }
    }

    /// Opens the key and checks that the public half stored beside it is the one its sealed
    /// private half derives: a row passes only if whoever wrote it held the KEK.
    pub(crate) fn authenticate(&self, keks: &[&Kek]) -> Result<SigningKey, KeyError> {
        let algorithm =
            SigningAlgorithm::parse(&self.algorithm).ok_or_else(|| KeyError::Malformed {
                kid: self.kid.clone(),
            })?;
        let pkcs8 = self.envelope().open(keks, &self.kid)?;
        let key = SigningKey::from_pkcs8(&self.kid, algorithm, &pkcs8)?;
        if key.public_jwk() != self.public_jwk {
            return Err(KeyError::PublicKeyMismatch {
                kid: self.kid.clone(),
            });
        }
        Ok(key)
    }
}

pub(crate) fn all_keks(settings: &KeySettings) -> Vec<&Kek> {
    std::iter::once(&settings.kek)
        .chain(settings.previous_keks.iter())
        .collect()
}

/// What one node holds in memory: the key it signs with and what it publishes and accepts.
pub struct KeySet {
    pub active: Arc<SigningKey>,
    /// Serialized RFC 7517 key set: next, active and still-published retired keys.
    pub jwks: Arc<str>,
    verifiers: HashMap<Kid, (jsonwebtoken::Algorithm, Arc<jsonwebtoken::DecodingKey>)>,
}

impl KeySet {
    /// The algorithm and key for a `kid` this server published.
    pub fn verifier(
        &self,
        kid: &Kid,
    ) -> Option<(jsonwebtoken::Algorithm, Arc<jsonwebtoken::DecodingKey>)> {
        self.verifiers.get(kid).cloned()
    }
}

/// The node's current key set, refreshed from PostgreSQL on an interval so that every node
/// switches keys within seconds of a rotation.
pub struct KeyRing {
    current: RwLock<Arc<KeySet>>,
    /// Every published key that authenticated, opened: checking a row means opening its
    /// private half, which is then kept rather than opened again on every refresh.
    verified: RwLock<HashMap<String, Arc<SigningKey>>>,
    settings: KeySettings,
}

impl KeyRing {
    pub async fn load(pool: &PgPool, settings: KeySettings) -> Result<Arc<Self>, KeyError> {
        let mut verified = HashMap::new();
        let set = build_key_set(pool, &settings, &mut verified).await?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(set)),
            verified: RwLock::new(verified),
            settings,
        }))
    }

    /// The key settings this ring authenticates keys with.
    pub fn settings(&self) -> &KeySettings {
        &self.settings
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub async fn refresh(&self, pool: &PgPool) -> Result<(), KeyError> {
        let mut verified = self
            .verified
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let set = build_key_set(pool, &self.settings, &mut verified).await?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        *self
            .verified
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = verified;
        Ok(())
    }
}

/// Builds the published and accepted key set from the rows that authenticate; `verified`
/// keeps the keys already opened, so a refresh opens only new or changed rows.
async fn build_key_set(
    pool: &PgPool,
    settings: &KeySettings,
    verified: &mut HashMap<String, Arc<SigningKey>>,
) -> Result<KeySet, KeyError> {
    let rows = crate::storage::keys::published(pool).await?;
    let keks = all_keks(settings);
    let mut active = None;
    let mut published = Vec::with_capacity(rows.len());
    let mut verifiers = HashMap::with_capacity(rows.len());
    let mut seen = HashSet::with_capacity(rows.len());
    for (stored, state) in rows {
        let stored = &stored;
        let unchanged = verified.get(&stored.kid).filter(|key| {
            key.algorithm.as_str() == stored.algorithm && key.public_jwk() == stored.public_jwk
        });
        let key = match unchanged {
            Some(key) => key.clone(),
            None => match stored.authenticate(&keks) {
                Ok(key) => Arc::new(key),
                Err(error) => {
                    refuse_key(KeyTable::Signing.name(), &stored.kid, &error);
                    continue;
                }
            },
        };
        let public_jwk = key.public_jwk();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(public_jwk.clone()).map_err(|_| KeyError::Malformed {
                kid: key.kid.to_string(),
            })?;
        let decoding =
            jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| KeyError::Malformed {
                kid: key.kid.to_string(),
            })?;
        verifiers.insert(
            key.kid.clone(),
            (jose_algorithm(key.algorithm), Arc::new(decoding)),
        );
        if state == Some(KeyState::Active) {
            active = Some(key.clone());
        }
        published.push(public_jwk);
        seen.insert(key.kid.to_string());
        verified.insert(key.kid.to_string(), key);
    }
    let active = active.ok_or(KeyError::NoActiveKey)?;
    verified.retain(|kid, _| seen.contains(kid));
    Ok(KeySet {
        active,
        jwks: Arc::from(json!({ "keys": published }).to_string()),
        verifiers,
    })
}

pub fn jose_algorithm(algorithm: SigningAlgorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
        SigningAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        SigningAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        SigningAlgorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
    }
}

/// Seconds since the epoch, the unit of JWT numeric dates.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_signs_what_jsonwebtoken_verifies() {
        for algorithm in [
            SigningAlgorithm::Es256,
            SigningAlgorithm::EdDsa,
            SigningAlgorithm::Ps256,
        ] {
            let pkcs8 = generate_pkcs8(algorithm).unwrap();
            let key = SigningKey::from_pkcs8("k", algorithm, &pkcs8).unwrap();
            let token = key.sign_access_token(br#"{"sub":"s"}"#).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jose_algorithm(algorithm));
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_aud = false;
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
            assert_eq!(data.claims["sub"], "s");
            assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
        }
    }
}

//! Partners' key sets fetched from `jwks_uri`, bounded in size, time and frequency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cache::Cache;
use crate::domain::jwks::PublicKeys;
use crate::storage::trust::TrustError;

/// Key sets fetched from `jwks_uri`, shared by all requests of a node. A partner's endpoint
/// is never driven by the requests: one fetch at a time per endpoint, at most one fetch per
/// interval after a failure or for an unknown `kid`, and a known key set keeps serving for a
/// bounded time while its endpoint fails.
pub struct JwksCache {
    http: reqwest::Client,
    entries: Cache<String, Arc<tokio::sync::Mutex<CachedKeys>>>,
}

#[derive(Default)]
struct CachedKeys {
    /// The last key set fetched, and when.
    keys: Option<(PublicKeys, Instant)>,
    /// When an unknown `kid` last caused a fetch.
    refetched_for_unknown_kid: Option<Instant>,
    /// When the last fetch failed.
    failed: Option<Instant>,
}

/// Key set endpoints a node keeps state for; trust profiles name far fewer.
const KEY_SOURCES: usize = 1024;
/// A fetched key set is used this long before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers at most one refetch per issuer in this interval.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, none is tried again for this long (requests fail fast meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How long past its TTL a key set keeps serving while its endpoint fails.
const SERVE_STALE_FOR: Duration = Duration::from_secs(3600);
/// The longest key set accepted, and how long a fetch may take in all.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            entries: Cache::new(KEY_SOURCES, None),
        }
    }

    fn entry(&self, uri: &str) -> Arc<tokio::sync::Mutex<CachedKeys>> {
        self.entries
            .get_or_insert_with(&uri.to_owned(), Arc::default)
    }

    #[tracing::instrument(name = "partner_jwks_fetch", skip_all)]
    async fn fetch(&self, uri: &str) -> Result<PublicKeys, TrustError> {
        let unreachable = |reason: String| TrustError::KeysUnreachable(reason);
        let mut response = self
            .http
            .get(uri)
            .headers(crate::telemetry::outgoing_headers())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| unreachable(error.without_url().to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| unreachable(error.without_url().to_string()))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
                return Err(unreachable(format!(
                    "key set larger than {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|document| PublicKeys::from_document(&document))
            .ok_or_else(|| unreachable("not a JWK set".into()))
    }

    /// The key set for `uri`: fetched when absent or stale, and fetched again for an unknown
    /// `kid` (a partner rotating keys) at most once per refetch interval.
    pub async fn keys_for(&self, uri: &str, kid: Option<&str>) -> Result<PublicKeys, TrustError> {
        let entry = self.entry(uri);
        // Held across the fetch: concurrent requests for this endpoint wait for its result
        // instead of fetching again.
        let mut cached = entry.lock().await;
        let known = |keys: &PublicKeys| {
            kid.is_none_or(|kid| {
                keys.keys()
                    .iter()
                    .any(|key| key.get("kid").and_then(Value::as_str) == Some(kid))
            })
        };
        let may_fetch = cached
            .failed
            .is_none_or(|failed| failed.elapsed() >= RETRY_AFTER_FAILURE);
        let fetch = match &cached.keys {
            None => may_fetch,
            Some((_, fetched)) if fetched.elapsed() >= JWKS_TTL => may_fetch,
            Some((keys, _)) if known(keys) => false,
            Some(_) => {
                may_fetch
                    && cached
                        .refetched_for_unknown_kid
                        .is_none_or(|refetched| refetched.elapsed() >= REFETCH_INTERVAL)
            }
        };
        if fetch {
            if cached.keys.is_some() {
                cached.refetched_for_unknown_kid = Some(Instant::now());
            }
            match self.fetch(uri).await {
                Ok(keys) => {
                    cached.keys = Some((keys.clone(), Instant::now()));
                    cached.failed = None;
                    return Ok(keys);
                }
                Err(error) => {
                    tracing::warn!(%error, "a partner's key set could not be fetched");
                    cached.failed = Some(Instant::now());
                }
            }
        }
        match &cached.keys {
            Some((keys, fetched)) if fetched.elapsed() < JWKS_TTL + SERVE_STALE_FOR => {
                Ok(keys.clone())
            }
            _ => Err(TrustError::KeysUnreachable(
                "no usable key set (fetch failed recently)".into(),
            )),
        }
    }
}

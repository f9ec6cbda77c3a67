//! The upstream token broker: one bank token per bank-backed audience, fetched by exactly one
//! node at a time under a lease fenced by a generation number on the database clock, rotated
//! inside its refresh window, and never served once expired.

use std::time::Duration;
use tracing::Instrument;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::audit::{AuditLog, EventDetails, EventKind, Outcome};
use crate::config::{Kek, KeySettings};
use crate::crypto::envelope::Envelope;
use crate::domain::audiences::AudienceId;
use crate::domain::scopes::ScopeSet;
use crate::domain::upstream::{backoff, refresh_share, remaining_seconds, servable};
use crate::startup::scheduler::JobError;
use crate::storage::upstream::{self as store, Claim, Credential, Lease};
use crate::telemetry::metrics::Metrics;
use crate::upstream::client::{BankClient, BankError, BankSettings};

/// How long a claim holds the lease; the bank call is bounded to a third of it.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long a caller waits for another node's fetch when there is no token to serve.
const CALLER_WAIT: Duration = Duration::from_secs(5);
const CALLER_POLL: Duration = Duration::from_millis(50);
/// How long before the next try when the connection's per-minute budget is spent.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The authenticated data a token is sealed under: its audience and generation, so a
/// ciphertext copied to another audience or generation does not open.
pub fn token_aad(audience: &AudienceId, generation: i64, kind: &str) -> String {
    format!("upstream-{kind}\u{0}{audience}\u{0}{generation}")
}

/// A bank token ready to use.
pub struct Served {
    pub token: SecretString,
    pub generation: i64,
    pub expires_in: u64,
    pub bank_scopes: ScopeSet,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("token", &"[redacted]")
            .field("generation", &self.generation)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No unexpired token exists and none could be fetched now.
    #[error("no servable bank token for {audience} (retry in {retry_after} s)")]
    NoToken { audience: String, retry_after: u64 },
    #[error("upstream broker storage: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("the stored bank token for {0} does not open (wrong key or moved ciphertext)")]
    Unseal(String),
}

/// What one node needs to fetch, seal, fence and audit bank tokens.
#[derive(Clone)]
pub struct Broker {
    pool: PgPool,
    keys: KeySettings,
    audit: AuditLog,
    metrics: Metrics,
    holder: String,
}

impl Broker {
    /// `holder` names this node in leases; it must differ between nodes (and between servers
    /// in one process).
    pub fn new(
        pool: PgPool,
        keys: KeySettings,
        audit: AuditLog,
        metrics: Metrics,
        holder: String,
    ) -> Self {
        Self {
            pool,
            keys,
            audit,
            metrics,
            holder,
        }
    }

    fn keks(&self) -> Vec<&Kek> {
        std::iter::once(&self.keys.kek)
            .chain(self.keys.previous_keks.iter())
            .collect()
    }

    /// The audience's credential, `None` when it is not bank-backed.
    pub async fn credential(
        &self,
        audience: &AudienceId,
    ) -> Result<Option<Credential>, sqlx::Error> {
        store::credential(&self.pool, audience).await
    }

    /// The current bank token of a bank-backed audience. A token inside its refresh window
    /// triggers a (fenced) fetch first; while another node fetches, a still-valid token is
    /// served, and without one the caller waits a bounded time. An expired token is never
    /// served.
    pub async fn current(&self, credential: Credential) -> Result<Served, BrokerError> {
        let audience = credential.audience.clone();
        let deadline = tokio::time::Instant::now() + CALLER_WAIT;
        let mut credential = credential;
        loop {
            let fresh = credential
                .token
                .as_ref()
                .is_some_and(|token| credential.now < token.refresh_at);
            if !fresh {
                // On its own task: a caller that hangs up must not abandon a claimed lease
                // (and with it every other caller) until the lease runs out.
                let (broker, due) = (self.clone(), audience.clone());
                tokio::spawn(async move { broker.rotate(&due).await }.in_current_span())
                    .await
                    .map_err(|_| self.no_token(&audience, None))??;
                credential = store::credential(&self.pool, &audience)
                    .await?
                    .ok_or_else(|| self.no_token(&audience, None))?;
            }
            if let Some(served) = self.open(&credential)? {
                return Ok(served);
            }
            let lease_live = credential
                .lease_expires_at
                .is_some_and(|until| until > credential.now);
            if !lease_live || tokio::time::Instant::now() >= deadline {
                return Err(self.no_token(&audience, Some(&credential)));
            }
            tokio::time::sleep(CALLER_POLL).await;
            credential = store::credential(&self.pool, &audience)
                .await?
                .ok_or_else(|| self.no_token(&audience, None))?;
        }
    }

    fn no_token(&self, audience: &AudienceId, credential: Option<&Credential>) -> BrokerError {
        let retry_after = credential
            .map(|credential| {
                let until = [Some(credential.next_try), credential.retry_after]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(credential.now);
                remaining_seconds(until, credential.now).saturating_add(1)
            })
            .unwrap_or(1);
        BrokerError::NoToken {
            audience: audience.to_string(),
            retry_after,
        }
    }

    /// The stored token, opened, if it has not expired.
    fn open(&self, credential: &Credential) -> Result<Option<Served>, BrokerError> {
        let Some(sealed) = &credential.token else {
            return Ok(None);
        };
        if !servable(sealed.expires_at, credential.now) {
            return Ok(None);
        }
        let aad = token_aad(&credential.audience, sealed.generation, "token");
        let plain = sealed
            .token
            .open(&self.keks(), &aad)
            .map_err(|_| BrokerError::Unseal(credential.audience.to_string()))?;
        let token = String::from_utf8(plain.to_vec())
            .map_err(|_| BrokerError::Unseal(credential.audience.to_string()))?;
        Ok(Some(Served {
            token: SecretString::from(token),
            generation: sealed.generation,
            expires_in: remaining_seconds(sealed.expires_at, credential.now),
            bank_scopes: credential.bank_scopes.clone(),
        }))
    }

    /// Fetches every token due on this node's schedule; one audience's failure stops none of
    /// the others.
    pub async fn rotate_due(&self) -> Result<(), JobError> {
        let due = store::due(&self.pool)
            .await
            .map_err(|error| JobError::new("due upstream tokens not read", error))?;
        let mut failures = Vec::new();
        for audience in due {
            if let Err(error) = self.rotate(&audience).await {
                failures.push(JobError::new(&format!("{audience} not rotated"), error));
            }
        }
        JobError::all(failures)
    }

    /// Claims the audience's lease and, if won, fetches, seals and commits the next token.
    /// Returns whether this node did a fetch. Bank failures are stored in the row (backoff,
    /// `Retry-After`) and audited, not returned: the current token stays in service.
    pub async fn rotate(&self, audience: &AudienceId) -> Result<bool, BrokerError> {
        let Some(claim) = store::claim(&self.pool, audience, &self.holder, LEASE).await? else {
            return Ok(false);
        };
        let lease = Lease {
            audience,
            generation: claim.generation,
            holder: &self.holder,
        };
        let Some(credential) = store::credential(&self.pool, audience).await? else {
            return Ok(false);
        };
        match self.fetch(&credential, &claim).await {
            Ok(fetched) => self.commit(&credential, &lease, fetched).await?,
            Err(error) => self.failed(&credential, &lease, claim, error).await?,
        }
        Ok(true)
    }

    async fn fetch(&self, credential: &Credential, claim: &Claim) -> Result<Fetched, BankError> {
        let connection = &credential.connection;
        if !store::spend_budget(&self.pool, &connection.id)
            .await
            .map_err(|error| BankError::Unreachable(format!("request budget: {error}")))?
        {
            return Err(BankError::BudgetSpent);
        }
        let key = connection
            .client_key
            .open(&self.keks(), &store::client_key_aad(&connection.id))
            .map_err(|error| BankError::Settings(error.to_string()))?;
        // The whole call ends well inside the lease, so a slow bank cannot outlive it.
        let timeout = connection.request_timeout.min(LEASE / 3);
        let client = BankClient::new(&BankSettings {
            token_endpoint: &connection.token_endpoint,
            client_id: &connection.client_id,
            client_certificate_pem: &connection.client_certificate_pem,
            client_key_pkcs8: &key,
            server_ca_pem: &connection.server_ca_pem,
            connect_timeout: connection.connect_timeout.min(timeout),
            timeout,
        })?;
        let token = tokio::time::timeout(timeout, client.fetch_token(&credential.bank_scopes))
            .await
            .map_err(|_| BankError::Unreachable("timed out".into()))??;
        let kek = &self.keys.kek;
        let seal = |kind: &str, secret: &SecretString| {
            Envelope::seal(
                kek,
                &token_aad(&credential.audience, claim.generation, kind),
                secret.expose_secret().as_bytes(),
            )
            .map_err(|error| BankError::Settings(format!("sealing the token: {error}")))
        };
        Ok(Fetched {
            sealed: seal("token", &token.access_token)?,
            refresh_token: token
                .refresh_token
                .as_ref()
                .map(|refresh| seal("refresh-token", refresh))
                .transpose()?,
            lifetime: token.lifetime,
            plain: token.access_token,
            client,
        })
    }

    async fn commit(
        &self,
        credential: &Credential,
        lease: &Lease<'_>,
        fetched: Fetched,
    ) -> Result<(), BrokerError> {
        let share = refresh_share(
            credential.connection.rotation_threshold_percent,
            credential.audience.as_str(),
        );
        let committed = store::commit(
            &self.pool,
            lease,
            fetched.lifetime,
            share,
            &fetched.sealed,
            fetched.refresh_token.as_ref(),
        )
        .await?;
        let (outcome, reason) = if committed {
            self.metrics
                .upstream_generation
                .with_label_values(&[credential.audience.as_str()])
                .set(lease.generation);
            (Outcome::Allow, None)
        } else {
            // Another node's claim superseded ours: its token is the one that counts. Ours is
            // never stored or served, and the bank is asked to forget it.
            let revoked = self.revoke_discarded(credential, &fetched).await;
            (
                Outcome::Deny,
                Some(format!(
                    "lease lost before commit; the fetched token was discarded ({revoked})"
                )),
            )
        };
        self.audited(credential, lease.generation, outcome, reason)
            .await;
        Ok(())
    }

    /// Revokes a token this node fetched but may not use; says what became of it.
    async fn revoke_discarded(&self, credential: &Credential, fetched: &Fetched) -> String {
        let Some(endpoint) = &credential.connection.revocation_endpoint else {
            return "the bank offers no revocation".to_owned();
        };
        match store::spend_budget(&self.pool, &credential.connection.id).await {
            Ok(true) => {}
            Ok(false) => return "not revoked: the request budget is spent".to_owned(),
            Err(error) => return format!("not revoked: {error}"),
        }
        match fetched.client.revoke(endpoint, &fetched.plain).await {
            Ok(()) => "revoked at the bank".to_owned(),
            Err(error) => format!("not revoked: {error}"),
        }
    }

    async fn failed(
        &self,
        credential: &Credential,
        lease: &Lease<'_>,
        claim: Claim,
        error: BankError,
    ) -> Result<(), BrokerError> {
        tracing::warn!(audience = %credential.audience, generation = lease.generation, %error, "bank token not fetched");
        let retry_after = match &error {
            BankError::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or(BUDGET_WAIT);
                store::rate_limited(&self.pool, &credential.connection.id, wait).await?;
                Some(wait)
            }
            BankError::BudgetSpent => Some(BUDGET_WAIT),
            _ => None,
        };
        let attempts = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
        let delay = backoff(attempts, unit_random(), retry_after);
        store::fail(&self.pool, lease, delay, &error.to_string()).await?;
        self.audited(
            credential,
            lease.generation,
            Outcome::Deny,
            Some(error.to_string()),
        )
        .await;
        Ok(())
    }

    async fn audited(
        &self,
        credential: &Credential,
        generation: i64,
        outcome: Outcome,
        reason: Option<String>,
    ) {
        let counted = match (outcome, &reason) {
            (Outcome::Allow, _) => "rotated",
            (Outcome::Deny, Some(reason)) if reason.starts_with("lease lost") => "lease_lost",
            (Outcome::Deny, _) => "failed",
        };
        self.metrics
            .upstream_rotations
            .with_label_values(&[credential.audience.as_str(), counted])
            .inc();
        let details = EventDetails {
            reason,
            audience: Some(credential.audience.to_string()),
            scopes: credential.bank_scopes.to_vec(),
            upstream_generation: Some(generation),
            changes: Some(serde_json::json!({
                "connection": credential.connection.id.as_str(),
                "bank": credential.connection.bank_name,
            })),
            ..EventDetails::default()
        };
        if let Err(error) = self
            .audit
            .record(EventKind::UpstreamTokenRotated, outcome, details)
            .await
        {
            tracing::error!(audience = %credential.audience, generation, %error, "upstream rotation not audited");
        }
    }
}

/// A token fetched and sealed, not yet committed; the plain token is kept only to revoke it
/// if the commit is refused.
struct Fetched {
    sealed: Envelope,
    plain: SecretString,
    client: BankClient,
    refresh_token: Option<Envelope>,
    lifetime: Duration,
}

/// A uniform number in [0, 1) for backoff jitter; without randomness, the full delay.
fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

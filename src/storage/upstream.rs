//! Upstream connections, bank-backed audiences and their fenced credentials. Every time that
//! decides a lease, a refresh or an expiry is the database's `now()`, never a node's clock.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::config::Kek;
use crate::crypto::envelope::Envelope;
use crate::crypto::keys::KeyError;
use crate::domain::audiences::AudienceId;
use crate::domain::ids::UpstreamConnectionId;
use crate::domain::scopes::ScopeSet;
use crate::domain::upstream::{CredentialState, Delivery};

/// The authenticated data a connection's private key is sealed under.
pub fn client_key_aad(connection: &UpstreamConnectionId) -> String {
    format!("upstream-connection\u{0}{connection}")
}

/// A connection as an operator (or the dev seed) declares it; the private key is sealed here.
pub struct NewConnection<'a> {
    pub id: &'a UpstreamConnectionId,
    pub bank_name: &'a str,
    pub token_endpoint: &'a str,
    pub api_base_url: &'a str,
    pub revocation_endpoint: Option<&'a str>,
    pub introspection_endpoint: Option<&'a str>,
    pub probe_url: Option<&'a str>,
    pub client_id: &'a str,
    pub client_certificate_pem: &'a str,
    /// PKCS#8 DER of Tessera's key for this bank.
    pub client_key_pkcs8: &'a [u8],
    pub server_ca_pem: &'a str,
    pub single_live_token: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub rotation_threshold_percent: u8,
    pub delivery: Delivery,
    pub requests_per_minute: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamStorageError {
    #[error("upstream storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error("upstream key material: {0}")]
    Keys(#[from] KeyError),
    #[error("upstream connection: {0} is out of range")]
    OutOfRange(&'static str),
}

fn millis(what: &'static str, duration: Duration) -> Result<i32, UpstreamStorageError> {
    i32::try_from(duration.as_millis()).map_err(|_| UpstreamStorageError::OutOfRange(what))
}

/// Stores a connection, its client key sealed under `kek`.
pub async fn create_connection(
    pool: &PgPool,
    kek: &Kek,
    new: &NewConnection<'_>,
) -> Result<(), UpstreamStorageError> {
    let sealed = Envelope::seal(kek, &client_key_aad(new.id), new.client_key_pkcs8)?;
    let per_minute = i32::try_from(new.requests_per_minute)
        .map_err(|_| UpstreamStorageError::OutOfRange("requests_per_minute"))?;
    sqlx::query(
        "INSERT INTO upstream_connections (id, bank_name, token_endpoint, api_base_url,
                revocation_endpoint, introspection_endpoint, probe_url, client_id, auth_method,
                client_certificate_pem, sealed_client_key, client_key_data_key, client_key_kek_id,
                server_ca_pem, single_live_token, connect_timeout_ms, request_timeout_ms,
                rotation_threshold_pct, delivery, requests_per_minute)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'tls_client_auth', $9, $10, $11, $12, $13, $14,
                 $15, $16, $17, $18, $19)",
    )
    .bind(new.id.as_str())
    .bind(new.bank_name)
    .bind(new.token_endpoint)
    .bind(new.api_base_url)
    .bind(new.revocation_endpoint)
    .bind(new.introspection_endpoint)
    .bind(new.probe_url)
    .bind(new.client_id)
    .bind(new.client_certificate_pem)
    .bind(&sealed.sealed_private_key)
    .bind(&sealed.wrapped_data_key)
    .bind(&sealed.kek_id)
    .bind(new.server_ca_pem)
    .bind(new.single_live_token)
    .bind(millis("connect_timeout", new.connect_timeout)?)
    .bind(millis("request_timeout", new.request_timeout)?)
    .bind(i16::from(new.rotation_threshold_percent))
    .bind(new.delivery.as_str())
    .bind(per_minute)
    .execute(pool)
    .await?;
    Ok(())
}

/// Makes `audience` bank-backed through `connection`, with a credential not yet fetched.
pub async fn back_audience(
    pool: &PgPool,
    audience: &AudienceId,
    connection: &UpstreamConnectionId,
    bank_scopes: &ScopeSet,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO upstream_audiences (audience_id, connection_id, bank_scopes)
         VALUES ($1, $2, $3)",
    )
    .bind(audience.as_str())
    .bind(connection.as_str())
    .bind(bank_scopes.to_vec())
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO upstream_credentials (audience_id) VALUES ($1)")
        .bind(audience.as_str())
        .execute(&mut *tx)
        .await?;
    // Nodes cache whether an audience is bank-backed with the audience itself.
    crate::storage::registry::notify_registry_changed(&mut tx, "upstream_audiences").await?;
    tx.commit().await
}

/// A connection as the bank client needs it; the client key is still sealed.
pub struct Connection {
    pub id: UpstreamConnectionId,
    pub bank_name: String,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub client_id: String,
    pub client_certificate_pem: String,
    pub client_key: Envelope,
    pub server_ca_pem: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub rotation_threshold_percent: u8,
    pub delivery: Delivery,
    pub active: bool,
}

/// A token as stored: sealed, with the generation it was fetched under.
pub struct SealedToken {
    pub generation: i64,
    pub issued_at: OffsetDateTime,
    pub refresh_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub token: Envelope,
    pub refresh_token: Option<Envelope>,
}

/// One audience's credential, read together with the database's clock.
pub struct Credential {
    pub audience: AudienceId,
    pub connection: Connection,
    pub bank_scopes: ScopeSet,
    pub generation: i64,
    pub state: CredentialState,
    pub token: Option<SealedToken>,
    pub next_try: OffsetDateTime,
    pub retry_after: Option<OffsetDateTime>,
    pub lease_expires_at: Option<OffsetDateTime>,
    /// The database's `now()` when the row was read.
    pub now: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    audience_id: String,
    bank_scopes: Vec<String>,
    generation: i64,
    state: String,
    token_generation: Option<i64>,
    issued_at: Option<OffsetDateTime>,
    refresh_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    sealed_token: Option<Vec<u8>>,
    token_data_key: Option<Vec<u8>>,
    sealed_refresh_token: Option<Vec<u8>>,
    refresh_data_key: Option<Vec<u8>>,
    kek_id: Option<String>,
    next_try: OffsetDateTime,
    retry_after: Option<OffsetDateTime>,
    lease_expires_at: Option<OffsetDateTime>,
    db_now: OffsetDateTime,
    connection_id: String,
    bank_name: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    client_id: String,
    client_certificate_pem: String,
    sealed_client_key: Vec<u8>,
    client_key_data_key: Vec<u8>,
    client_key_kek_id: String,
    server_ca_pem: String,
    connect_timeout_ms: i32,
    request_timeout_ms: i32,
    rotation_threshold_pct: i16,
    delivery: String,
    status: String,
}

fn duration_ms(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

impl CredentialRow {
    fn into_credential(self) -> Option<Credential> {
        let token = match (
            self.token_generation,
            self.issued_at,
            self.refresh_at,
            self.expires_at,
            self.sealed_token,
            self.token_data_key,
            self.kek_id,
        ) {
            (
                Some(generation),
                Some(issued_at),
                Some(refresh_at),
                Some(expires_at),
                Some(sealed),
                Some(data_key),
                Some(kek_id),
            ) => Some(SealedToken {
                generation,
                issued_at,
                refresh_at,
                expires_at,
                refresh_token: match (self.sealed_refresh_token, self.refresh_data_key) {
                    (Some(sealed), Some(data_key)) => Some(Envelope {
                        sealed_private_key: sealed,
                        wrapped_data_key: data_key,
                        kek_id: kek_id.clone(),
                    }),
                    _ => None,
                },
                token: Envelope {
                    sealed_private_key: sealed,
                    wrapped_data_key: data_key,
                    kek_id,
                },
            }),
            _ => None,
        };
        Some(Credential {
            audience: AudienceId::parse(&self.audience_id)?,
            bank_scopes: ScopeSet::from_stored(&self.bank_scopes),
            generation: self.generation,
            state: CredentialState::parse(&self.state)?,
            token,
            next_try: self.next_try,
            retry_after: self.retry_after,
            lease_expires_at: self.lease_expires_at,
            now: self.db_now,
            connection: Connection {
                id: UpstreamConnectionId::parse(&self.connection_id)?,
                bank_name: self.bank_name,
                token_endpoint: self.token_endpoint,
                revocation_endpoint: self.revocation_endpoint,
                client_id: self.client_id,
                client_certificate_pem: self.client_certificate_pem,
                client_key: Envelope {
                    sealed_private_key: self.sealed_client_key,
                    wrapped_data_key: self.client_key_data_key,
                    kek_id: self.client_key_kek_id,
                },
                server_ca_pem: self.server_ca_pem,
                connect_timeout: duration_ms(self.connect_timeout_ms),
                request_timeout: duration_ms(self.request_timeout_ms),
                rotation_threshold_percent: u8::try_from(self.rotation_threshold_pct).ok()?,
                delivery: Delivery::parse(&self.delivery)?,
                active: self.status == "active",
            },
        })
    }
}

/// The credential of a bank-backed audience, or `None` when the audience is not bank-backed.
pub async fn credential(
    pool: &PgPool,
    audience: &AudienceId,
) -> Result<Option<Credential>, sqlx::Error> {
    let row: Option<CredentialRow> = sqlx::query_as(
        "SELECT c.audience_id, a.bank_scopes, c.generation, c.state, c.token_generation,
                c.issued_at, c.refresh_at, c.expires_at, c.sealed_token, c.token_data_key,
                c.sealed_refresh_token, c.refresh_data_key, c.kek_id, c.next_try, c.retry_after,
                c.lease_expires_at, now() AS db_now, k.id AS connection_id, k.bank_name,
                k.token_endpoint, k.revocation_endpoint, k.client_id, k.client_certificate_pem,
                k.sealed_client_key, k.client_key_data_key, k.client_key_kek_id, k.server_ca_pem,
                k.connect_timeout_ms, k.request_timeout_ms, k.rotation_threshold_pct,
                k.delivery, k.status
           FROM upstream_credentials c
           JOIN upstream_audiences a ON a.audience_id = c.audience_id
           JOIN upstream_connections k ON k.id = a.connection_id
          WHERE c.audience_id = $1",
    )
    .bind(audience.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(CredentialRow::into_credential))
}

/// A lease won: the generation a token fetched under it must be committed with, and how many
/// attempts failed in a row before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub generation: i64,
    pub attempts: i32,
}

/// Claims the right to fetch the next token, in one statement: the generation goes up and the
/// lease is `holder`'s, only when no live lease exists, the token is inside its refresh window
/// (or there is none), the backoff and any bank `Retry-After` have passed, and the connection
/// is active. `None` when another node holds the lease or nothing is due.
pub async fn claim(
    pool: &PgPool,
    audience: &AudienceId,
    holder: &str,
    lease: Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let row: Option<(i64, i32)> = sqlx::query_as(
        "UPDATE upstream_credentials c
            SET generation = c.generation + 1, state = $4, lease_holder = $2,
                claimed_at = now(),
                lease_expires_at = now() + $3 * interval '1 millisecond'
           FROM upstream_audiences a
           JOIN upstream_connections k ON k.id = a.connection_id
          WHERE c.audience_id = $1 AND a.audience_id = c.audience_id AND k.status = 'active'
            AND c.state IN ('initialized', 'active', 'expiring', 'rotating')
            AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
            AND (c.refresh_at IS NULL OR c.refresh_at <= now())
            AND c.next_try <= now()
            AND (c.retry_after IS NULL OR c.retry_after <= now())
         RETURNING c.generation, c.attempts",
    )
    .bind(audience.as_str())
    .bind(holder)
    .bind(lease_ms)
    .bind(CredentialState::Rotating.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(generation, attempts)| Claim {
        generation,
        attempts,
    }))
}

/// Whose lease, of which generation, on which audience: what a commit or a failure is fenced by.
pub struct Lease<'a> {
    pub audience: &'a AudienceId,
    pub generation: i64,
    pub holder: &'a str,
}

/// Stores the token fetched under the lease's generation, only while its holder still holds
/// it. Its life counts from the claim, so it never looks younger than it is. `false` means the
/// lease was lost: the token must be discarded.
pub async fn commit(
    pool: &PgPool,
    lease: &Lease<'_>,
    lifetime: Duration,
    refresh_share: f64,
    token: &Envelope,
    refresh_token: Option<&Envelope>,
) -> Result<bool, sqlx::Error> {
    let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE upstream_credentials
            SET state = $11, token_generation = generation, issued_at = claimed_at,
                expires_at = claimed_at + $4 * interval '1 millisecond',
                refresh_at = claimed_at + $4 * $5 * interval '1 millisecond',
                sealed_token = $6, token_data_key = $7, sealed_refresh_token = $8,
                refresh_data_key = $9, kek_id = $10, lease_holder = NULL,
                lease_expires_at = NULL, attempts = 0, next_try = 'epoch',
                last_error = NULL, rotated_at = now()
          WHERE audience_id = $1 AND generation = $2 AND lease_holder = $3",
    )
    .bind(lease.audience.as_str())
    .bind(lease.generation)
    .bind(lease.holder)
    .bind(lifetime_ms)
    .bind(refresh_share)
    .bind(&token.sealed_private_key)
    .bind(&token.wrapped_data_key)
    .bind(refresh_token.map(|sealed| &sealed.sealed_private_key))
    .bind(refresh_token.map(|sealed| &sealed.wrapped_data_key))
    .bind(&token.kek_id)
    .bind(CredentialState::Active.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up the lease after a failed fetch: the current token (if any) stays, and the next
/// attempt waits `delay`. `false` if the lease was already lost.
pub async fn fail(
    pool: &PgPool,
    lease: &Lease<'_>,
    delay: Duration,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE upstream_credentials
            SET state = CASE WHEN sealed_token IS NULL THEN 'initialized' ELSE 'expiring' END,
                lease_holder = NULL, lease_expires_at = NULL, claimed_at = NULL,
                attempts = attempts + 1,
                next_try = now() + $4 * interval '1 millisecond', last_error = $5
          WHERE audience_id = $1 AND generation = $2 AND lease_holder = $3",
    )
    .bind(lease.audience.as_str())
    .bind(lease.generation)
    .bind(lease.holder)
    .bind(delay_ms)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A bank answered `429`: no node calls it for any audience of this connection before `wait`
/// has passed.
pub async fn rate_limited(
    pool: &PgPool,
    connection: &UpstreamConnectionId,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE upstream_credentials
            SET retry_after = GREATEST(retry_after, now() + $2 * interval '1 millisecond')
          WHERE audience_id IN
                (SELECT audience_id FROM upstream_audiences WHERE connection_id = $1)",
    )
    .bind(connection.as_str())
    .bind(wait_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Spends one call of the connection's per-minute budget, shared by every node; `false` when
/// the minute's budget is gone.
pub async fn spend_budget(
    pool: &PgPool,
    connection: &UpstreamConnectionId,
) -> Result<bool, sqlx::Error> {
    let spent = sqlx::query(
        "UPDATE upstream_connections
            SET budget_window_start = CASE WHEN budget_window_start <= now() - interval '1 minute'
                                           THEN now() ELSE budget_window_start END,
                budget_used = CASE WHEN budget_window_start <= now() - interval '1 minute'
                                   THEN 1 ELSE budget_used + 1 END
          WHERE id = $1
            AND (budget_window_start <= now() - interval '1 minute'
                 OR budget_used < requests_per_minute)",
    )
    .bind(connection.as_str())
    .execute(pool)
    .await?;
    Ok(spent.rows_affected() == 1)
}

/// Audiences whose token is due for a fetch that a node could claim now.
pub async fn due(pool: &PgPool) -> Result<Vec<AudienceId>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT c.audience_id
           FROM upstream_credentials c
           JOIN upstream_audiences a ON a.audience_id = c.audience_id
           JOIN upstream_connections k ON k.id = a.connection_id
          WHERE k.status = 'active' AND c.state <> 'revoked'
            AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
            AND (c.refresh_at IS NULL OR c.refresh_at <= now())
            AND c.next_try <= now()
            AND (c.retry_after IS NULL OR c.retry_after <= now())
          ORDER BY c.refresh_at NULLS FIRST",
    )
    .fetch_all(pool)
    .await?;
    Ok(ids.iter().filter_map(|id| AudienceId::parse(id)).collect())
}

//! The audit trail: every decision, allow and deny, appended to this node's hash chain.
//!
//! Requests hand their event to one writer task per node and wait; the writer gathers what
//! has arrived meanwhile into one transaction (group commit), so a request is answered only
//! after its record is durable, without every request paying for its own commit. At
//! intervals the writer signs its chain's head (a checkpoint), so that exported segments can
//! be verified by someone who only has the published audit key.

mod checkpoint;
mod export;
mod verify;

pub use checkpoint::{AuditSigner, audit_jwks};
pub use export::{ExportFilter, ExportSummary, export, verify_export};
pub use verify::{Broken, ChainReport, VerifySummary, verify_all, verify_pinned};

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::KeySettings;
use crate::keys::KeyError;
use crate::metrics::Metrics;
use futures_util::TryStreamExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// Hash of the (absent) predecessor of a chain's first record.
pub const GENESIS: [u8; 32] = [0; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TokenIssued,
    TokenExchanged,
    TokenDenied,
    TokenIntrospected,
    TokenRevoked,
    ClientAuthenticationFailed,
    KeyRotated,
    PolicyReloaded,
    ConsentChanged,
    TrustProfileChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
}

/// What a caller reports; the writer adds identity, time and chain position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetails {
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub client_id: Option<String>,
    pub partner: Option<String>,
    pub subject: Option<String>,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub consent_id: Option<String>,
    pub txn: Option<String>,
    pub jti: Option<String>,
    pub trust_profile_version: Option<i64>,
    pub policy_set_hash: Option<String>,
    pub actor_chain: Option<serde_json::Value>,
    pub changes: Option<serde_json::Value>,
    /// The policies that determined a policy decision.
    #[serde(default)]
    pub policies: Vec<String>,
    pub parent_jti: Option<String>,
    /// The actor token an exchanged token was issued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_jti: Option<String>,
    /// The issued token's `exp`.
    pub expires_at: Option<i64>,
}

/// One record. Its canonical form is `serde_json`'s compact serialization in field order; the
/// text is stored and exported as is, so nobody has to reproduce it to check a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub event_id: String,
    pub chain_id: String,
    pub seq: i64,
    pub recorded_at_us: i64,
    pub node: String,
    pub kind: EventKind,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub details: EventDetails,
}

impl AuditRecord {
    pub fn canonical(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// SHA-256(prev_hash || canonical record text).
pub fn chained_hash(prev_hash: &[u8], record: &str) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(prev_hash);
    context.update(record.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail could not be written")]
    Unavailable,
}

struct Pending {
    kind: EventKind,
    outcome: Outcome,
    details: EventDetails,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// Removes, chain by chain, the records up to the newest checkpoint older than `retention`,
/// or than the database owner's retention (`audit_retention`) where that is longer: the
/// database function refuses anything younger. Only a checkpoint that a trusted audit key
/// signed for that very head is a place to prune to. Returns how many records went.
pub async fn prune(
    pool: &PgPool,
    retention: Duration,
    keys: &KeySettings,
) -> Result<i64, KeyError> {
    let trusted = checkpoint::trusted_keys(pool, keys).await?;
    let mut candidates = sqlx::query_as::<_, (uuid::Uuid, i64, Vec<u8>, String)>(
        "SELECT c.chain_id, c.seq, c.head_hash, c.jws FROM audit_checkpoints c
           JOIN audit_events e ON e.chain_id = c.chain_id AND e.seq = c.seq
                              AND e.hash = c.head_hash
          WHERE c.signed_at < now() - GREATEST(make_interval(secs => $1),
                                               (SELECT minimum FROM audit_retention))
          ORDER BY c.chain_id, c.seq DESC",
    )
    .bind(retention.as_secs_f64())
    .fetch(pool);
    let mut boundaries: Vec<(uuid::Uuid, i64)> = Vec::new();
    while let Some((chain_id, seq, head, jws)) = candidates.try_next().await? {
        if boundaries
            .last()
            .is_some_and(|(chain, _)| *chain == chain_id)
        {
            continue;
        }
        if checkpoint::vouches(&jws, &trusted, chain_id, seq, &head) {
            boundaries.push((chain_id, seq));
        } else {
            tracing::warn!(%chain_id, seq, "not pruning to a checkpoint no trusted audit key signed");
        }
    }
    drop(candidates);
    let mut removed: i64 = 0;
    for (chain_id, seq) in boundaries {
        let count: i64 = sqlx::query_scalar("SELECT audit_prune($1, $2)")
            .bind(chain_id)
            .bind(seq)
            .fetch_one(pool)
            .await?;
        removed = removed.saturating_add(count);
    }
    Ok(removed)
}

/// When the writer signs its chain head: after this many records, or this long after the
/// last checkpoint if anything was written since, and when it stops.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_records: i64,
    pub every: Duration,
}

/// The handle requests record through. Cloning is cheap; all clones feed one writer.
#[derive(Clone)]
pub struct AuditLog {
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Chain(mpsc::Sender<Pending>),
    /// No records, only the lineage of exchanged tokens (benchmark mode).
    LineageOnly(PgPool),
}

impl AuditLog {
    /// Starts this node's writer with a new chain.
    pub fn start(
        pool: PgPool,
        node: String,
        batch_max: usize,
        signer: AuditSigner,
        policy: CheckpointPolicy,
        metrics: Option<Metrics>,
    ) -> (Self, WriterHandle) {
        let (sender, receiver) = mpsc::channel(batch_max * 4);
        let (stop, stopped) = oneshot::channel();
        let writer = Writer {
            pool,
            node,
            chain_id: uuid::Uuid::new_v4(),
            next_seq: 1,
            head: GENESIS,
            batch_max,
            signer,
            policy,
            checkpointed_seq: 0,
            checkpointed_at: Instant::now(),
            metrics,
        };
        let task = tokio::spawn(writer.run(receiver, stopped));
        (
            Self {
                sink: Sink::Chain(sender),
            },
            WriterHandle { stop, task },
        )
    }

    /// Records nothing but the lineage of exchanged tokens, which revocation depends on; only
    /// for measuring what the trail costs (`audit.enabled = false`).
    pub fn disabled(pool: PgPool) -> Self {
        Self {
            sink: Sink::LineageOnly(pool),
        }
    }

    /// Returns once the event is committed; an error means it was not, and the caller must
    /// not let whatever it was about to release leave the server.
    pub async fn record(
        &self,
        kind: EventKind,
        outcome: Outcome,
        details: EventDetails,
    ) -> Result<(), AuditError> {
        let sender = match &self.sink {
            Sink::Chain(sender) => sender,
            Sink::LineageOnly(pool) => {
                let entry = lineage_of(outcome, &details).map_err(|_| AuditError::Unavailable)?;
                if let Some(entry) = entry {
                    insert_lineage(pool, &[entry])
                        .await
                        .map_err(|_| AuditError::Unavailable)?;
                }
                return Ok(());
            }
        };
        let (done, committed) = oneshot::channel();
        sender
            .send(Pending {
                kind,
                outcome,
                details,
                done,
            })
            .await
            .map_err(|_| AuditError::Unavailable)?;
        committed.await.map_err(|_| AuditError::Unavailable)?
    }
}

/// Stops the writer: events already queued are committed, later ones are refused, and the
/// chain head gets a final signed checkpoint.
pub struct WriterHandle {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterHandle {
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "audit writer failed");
        }
    }
}

struct Writer {
    pool: PgPool,
    node: String,
    chain_id: uuid::Uuid,
    next_seq: i64,
    head: [u8; 32],
    batch_max: usize,
    signer: AuditSigner,
    policy: CheckpointPolicy,
    checkpointed_seq: i64,
    checkpointed_at: Instant,
    metrics: Option<Metrics>,
}

/// One row as inserted.
/// One row as inserted: the event, its canonical text and its place in the chain.
struct Row {
    event: AuditRecord,
    record: String,
    prev_hash: [u8; 32],
    hash: [u8; 32],
    recorded_at: OffsetDateTime,
}

impl Writer {
    async fn run(
        mut self,
        mut receiver: mpsc::Receiver<Pending>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        if let Err(error) = self
            .signer
            .open_chain(&self.pool, self.chain_id, &self.node)
            .await
        {
            tracing::error!(%error, chain_id = %self.chain_id, "audit chain not registered");
        }
        let mut batch = Vec::with_capacity(self.batch_max);
        let mut ticker = tokio::time::interval(self.policy.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Without a handle to stop it, the writer runs until every `AuditLog` is dropped.
        let mut stoppable = true;
        loop {
            tokio::select! {
                stop = &mut stopped, if stoppable => {
                    if stop.is_err() {
                        stoppable = false;
                        continue;
                    }
                    receiver.close();
                    while receiver.recv_many(&mut batch, self.batch_max).await > 0 {
                        self.commit_batch(&mut batch).await;
                    }
                    break;
                }
                received = receiver.recv_many(&mut batch, self.batch_max) => {
                    if received == 0 {
                        break;
                    }
                    self.commit_batch(&mut batch).await;
                    if self.next_seq - 1 - self.checkpointed_seq >= self.policy.every_records {
                        self.checkpoint().await;
                    }
                }
                _ = ticker.tick() => {
                    if self.checkpointed_at.elapsed() >= self.policy.every {
                        self.checkpoint().await;
                    }
                }
            }
        }
        self.checkpoint().await;
    }

    async fn commit_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let result = self.commit(batch).await;
        if let Some(metrics) = &self.metrics {
            metrics
                .audit_write_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.audit_batch_size.observe(batch.len() as f64);
        }
        if let Err(error) = &result {
            tracing::error!(%error, events = batch.len(), "audit batch not committed");
        }
        for pending in batch.drain(..) {
            let _ = pending.done.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|_| AuditError::Unavailable),
            );
        }
    }

    /// Writes the batch in one transaction; the chain head advances only if it commits, so
    /// a failed batch leaves no gap in the chain.
    async fn commit(&mut self, batch: &[Pending]) -> Result<(), BatchError> {
        let mut head = self.head;
        let mut seq = self.next_seq;
        let mut rows = Vec::with_capacity(batch.len());
        for pending in batch {
            let recorded_at = OffsetDateTime::now_utc();
            let event = AuditRecord {
                event_id: uuid::Uuid::new_v4().to_string(),
                chain_id: self.chain_id.to_string(),
                seq,
                recorded_at_us: micros(recorded_at),
                node: self.node.clone(),
                kind: pending.kind,
                outcome: pending.outcome,
                details: pending.details.clone(),
            };
            let record = event.canonical()?;
            let hash = chained_hash(&head, &record);
            rows.push(Row {
                event,
                record,
                prev_hash: head,
                hash,
                recorded_at,
            });
            head = hash;
            seq += 1;
        }
        insert(&self.pool, self.chain_id, self.next_seq, &rows).await?;
        self.head = head;
        self.next_seq = seq;
        Ok(())
    }

    async fn checkpoint(&mut self) {
        let last = self.next_seq - 1;
        if last <= self.checkpointed_seq {
            self.checkpointed_at = Instant::now();
            return;
        }
        match self
            .signer
            .checkpoint(&self.pool, self.chain_id, last, &self.head)
            .await
        {
            Ok(()) => {
                self.checkpointed_seq = last;
                self.checkpointed_at = Instant::now();
            }
            Err(error) => tracing::error!(%error, "audit checkpoint not written"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("audit storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("an exchanged token's lineage is incomplete (jti, parent or expiry)")]
    Lineage,
}

fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One transaction for the batch: the records and, for exchanged tokens, their lineage, which
/// must be as durable as the record before the token leaves.
async fn insert(
    pool: &PgPool,
    chain_id: uuid::Uuid,
    first_seq: i64,
    rows: &[Row],
) -> Result<(), BatchError> {
    let mut tx = pool.begin().await?;
    let column = |pick: fn(&Row) -> Option<String>| rows.iter().map(pick).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO audit_events
            (chain_id, seq, record, prev_hash, hash, recorded_at, kind, outcome,
             client_id, partner, audience, consent_id, txn, jti)
         SELECT $1, $2 + ordinality - 1, record, prev_hash, hash, recorded_at, kind, outcome,
                client_id, partner, audience, consent_id, txn, jti
           FROM UNNEST($3::text[], $4::bytea[], $5::bytea[], $6::timestamptz[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                       $13::text[], $14::text[])
                WITH ORDINALITY AS batch (record, prev_hash, hash, recorded_at, kind, outcome,
                                          client_id, partner, audience, consent_id, txn, jti,
                                          ordinality)",
    )
    .bind(chain_id)
    .bind(first_seq)
    .bind(
        rows.iter()
            .map(|row| row.record.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|row| row.prev_hash.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.hash.to_vec()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.recorded_at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| label(&row.event.kind))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|row| label(&row.event.outcome))
            .collect::<Vec<_>>(),
    )
    .bind(column(|row| row.event.details.client_id.clone()))
    .bind(column(|row| row.event.details.partner.clone()))
    .bind(column(|row| row.event.details.audience.clone()))
    .bind(column(|row| row.event.details.consent_id.clone()))
    .bind(column(|row| row.event.details.txn.clone()))
    .bind(column(|row| row.event.details.jti.clone()))
    .execute(&mut *tx)
    .await?;
    let mut lineage = Vec::new();
    for row in rows {
        lineage.extend(lineage_of(row.event.outcome, &row.event.details)?);
    }
    insert_lineage(&mut *tx, &lineage).await?;
    tx.commit().await?;
    Ok(())
}

/// An exchanged token's place in the lineage: (jti, parent, actor, client, expiry).
type LineageEntry = (
    uuid::Uuid,
    Option<uuid::Uuid>,
    Option<uuid::Uuid>,
    Option<String>,
    OffsetDateTime,
);

/// The lineage an allowed event carries, if it issued an exchanged token.
fn lineage_of(
    outcome: Outcome,
    details: &EventDetails,
) -> Result<Option<LineageEntry>, BatchError> {
    let (Outcome::Allow, Some(jti)) = (outcome, details.jti.as_deref()) else {
        return Ok(None);
    };
    if details.parent_jti.is_none() && details.actor_jti.is_none() {
        return Ok(None);
    }
    let uuid = |id: &str| uuid::Uuid::parse_str(id).map_err(|_| BatchError::Lineage);
    let parent = details.parent_jti.as_deref().map(uuid).transpose()?;
    let actor = details.actor_jti.as_deref().map(uuid).transpose()?;
    let expires_at = details
        .expires_at
        .and_then(|exp| OffsetDateTime::from_unix_timestamp(exp).ok())
        .ok_or(BatchError::Lineage)?;
    Ok(Some((
        uuid(jti)?,
        parent,
        actor,
        details.client_id.clone(),
        expires_at,
    )))
}

async fn insert_lineage<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    lineage: &[LineageEntry],
) -> Result<(), sqlx::Error> {
    if lineage.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO token_lineage (jti, parent_jti, actor_jti, client_id, expires_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[])",
    )
    .bind(lineage.iter().map(|entry| entry.0).collect::<Vec<_>>())
    .bind(lineage.iter().map(|entry| entry.1).collect::<Vec<_>>())
    .bind(lineage.iter().map(|entry| entry.2).collect::<Vec<_>>())
    .bind(
        lineage
            .iter()
            .map(|entry| entry.3.clone())
            .collect::<Vec<_>>(),
    )
    .bind(lineage.iter().map(|entry| entry.4).collect::<Vec<_>>())
    .execute(executor)
    .await?;
    Ok(())
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            event_id: "e".into(),
            chain_id: "c".into(),
            seq: 1,
            recorded_at_us: 1,
            node: "n".into(),
            kind: EventKind::TokenIssued,
            outcome: Outcome::Allow,
            details: EventDetails {
                client_id: Some("client".into()),
                scopes: vec!["a".into()],
                ..EventDetails::default()
            },
        }
    }

    #[test]
    fn hash_covers_every_field_and_the_predecessor() {
        let original = chained_hash(&GENESIS, &record().canonical().unwrap());
        let mut altered = record();
        altered.details.scopes.push("b".into());
        assert_ne!(
            chained_hash(&GENESIS, &altered.canonical().unwrap()),
            original
        );
        assert_ne!(
            chained_hash(&[1; 32], &record().canonical().unwrap()),
            original
        );
    }

    #[test]
    fn the_canonical_text_round_trips() {
        let text = record().canonical().unwrap();
        let reparsed: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed, record());
        assert_eq!(reparsed.canonical().unwrap(), text);
    }
}

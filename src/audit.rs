//! The audit trail: every decision, allow and deny, appended to this node's hash chain.
//!
//! Requests hand their event to one writer task per node and wait; the writer gathers what
//! has arrived meanwhile into one transaction (group commit), so a request is answered only
//! after its record is durable, without every request paying for its own commit.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
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
}

/// One record exactly as hashed: field order here is the canonical order, and every value is
/// a string, integer, boolean, array or object (no floats), so it survives JSONB unchanged.
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
    /// SHA-256(prev_hash || canonical JSON of the record).
    pub fn chained_hash(&self, prev_hash: &[u8]) -> Result<[u8; 32], serde_json::Error> {
        let mut canonical = Vec::with_capacity(512);
        write_canonical(&serde_json::to_value(self)?, &mut canonical)?;
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(prev_hash);
        context.update(&canonical);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(context.finish().as_ref());
        Ok(hash)
    }
}

/// JSONB keeps every value but reorders keys; writing objects with sorted keys and no
/// whitespace makes the bytes the same whether the record comes from memory, the database or
/// an export.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            out.push(b'{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(value, out)?;
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
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

/// The handle requests record through. Cloning is cheap; all clones feed one writer.
#[derive(Clone)]
pub struct AuditLog {
    sender: Option<mpsc::Sender<Pending>>,
}

impl AuditLog {
    /// Starts this node's writer with a new chain.
    pub fn start(pool: PgPool, node: String, batch_max: usize) -> Self {
        let (sender, receiver) = mpsc::channel(batch_max * 4);
        let writer = Writer {
            pool,
            node,
            chain_id: uuid::Uuid::new_v4(),
            next_seq: 1,
            head: GENESIS,
            batch_max,
        };
        tokio::spawn(writer.run(receiver));
        Self {
            sender: Some(sender),
        }
    }

    /// Records nothing; only for measuring what the trail costs (`audit.enabled = false`).
    pub fn disabled() -> Self {
        Self { sender: None }
    }

    /// Returns once the event is committed; an error means it was not, and the caller must
    /// not let whatever it was about to release leave the server.
    pub async fn record(
        &self,
        kind: EventKind,
        outcome: Outcome,
        details: EventDetails,
    ) -> Result<(), AuditError> {
        let Some(sender) = &self.sender else {
            return Ok(());
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

struct Writer {
    pool: PgPool,
    node: String,
    chain_id: uuid::Uuid,
    next_seq: i64,
    head: [u8; 32],
    batch_max: usize,
}

struct Row {
    record: serde_json::Value,
    prev_hash: Vec<u8>,
    hash: [u8; 32],
    recorded_at: OffsetDateTime,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while receiver.recv_many(&mut batch, self.batch_max).await > 0 {
            let result = self.commit(&batch).await;
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
    }

    /// Writes the batch in one transaction; the chain head advances only if it commits, so
    /// a failed batch leaves no gap in the chain.
    async fn commit(&mut self, batch: &[Pending]) -> Result<(), BatchError> {
        let mut head = self.head;
        let mut seq = self.next_seq;
        let mut rows = Vec::with_capacity(batch.len());
        for pending in batch {
            let recorded_at = OffsetDateTime::now_utc();
            let record = AuditRecord {
                event_id: uuid::Uuid::new_v4().to_string(),
                chain_id: self.chain_id.to_string(),
                seq,
                recorded_at_us: micros(recorded_at),
                node: self.node.clone(),
                kind: pending.kind,
                outcome: pending.outcome,
                details: pending.details.clone(),
            };
            let hash = record.chained_hash(&head)?;
            rows.push(Row {
                record: serde_json::to_value(&record)?,
                prev_hash: head.to_vec(),
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
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("audit storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

async fn insert(
    pool: &PgPool,
    chain_id: uuid::Uuid,
    first_seq: i64,
    rows: &[Row],
) -> Result<(), sqlx::Error> {
    let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO audit_events (chain_id, seq, record, prev_hash, hash, recorded_at)
         SELECT $1, $2 + ordinality - 1, record, prev_hash, hash, recorded_at
           FROM UNNEST($3::jsonb[], $4::bytea[], $5::bytea[], $6::timestamptz[])
                WITH ORDINALITY AS batch (record, prev_hash, hash, recorded_at, ordinality)
          WHERE ordinality <= $7",
    )
    .bind(chain_id)
    .bind(first_seq)
    .bind(
        rows.iter()
            .map(|row| row.record.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|row| row.prev_hash.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.hash.to_vec()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.recorded_at).collect::<Vec<_>>())
    .bind(count)
    .execute(pool)
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
        let original = record().chained_hash(&GENESIS).unwrap();
        let mut altered = record();
        altered.details.scopes.push("b".into());
        assert_ne!(altered.chained_hash(&GENESIS).unwrap(), original);
        assert_ne!(record().chained_hash(&[1; 32]).unwrap(), original);
    }

    #[test]
    fn hash_survives_a_round_trip_through_reordered_json() {
        let value = serde_json::to_value(record()).unwrap();
        let text = value.to_string();
        let reparsed: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(
            reparsed.chained_hash(&GENESIS).unwrap(),
            record().chained_hash(&GENESIS).unwrap()
        );
    }
}

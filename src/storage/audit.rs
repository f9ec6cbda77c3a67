//! The audit trail's tables: the hash-chained records (`audit_events`) with the lineage of
//! exchanged tokens written in the same transaction (`token_lineage`), chain registrations
//! (`audit_chains`), signed checkpoints (`audit_checkpoints`), and pruning (`audit_prune`,
//! `audit_prunes`, `audit_retention`).

use std::time::Duration;

use futures_util::stream::BoxStream;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::audit::{AuditRecord, ExportFilter, label};

/// One record as appended: the event, its canonical text and its place in the chain.
pub struct ChainedRecord {
    pub event: AuditRecord,
    pub record: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub recorded_at: OffsetDateTime,
}

/// An exchanged token's place in the lineage: (jti, parent, actor, client, expiry).
pub type LineageEntry = (
    uuid::Uuid,
    Option<uuid::Uuid>,
    Option<uuid::Uuid>,
    Option<String>,
    OffsetDateTime,
);

/// A stored checkpoint: (chain, seq, head hash, signed checkpoint).
pub type CheckpointRow = (uuid::Uuid, i64, Vec<u8>, String);

/// A record of an export segment: (seq, canonical record, prev hash, hash, matches the filter).
pub type SegmentRow = (i64, String, Vec<u8>, Vec<u8>, bool);

/// One stored record with the columns that index it.
#[derive(sqlx::FromRow)]
pub struct StoredEvent {
    pub chain_id: uuid::Uuid,
    pub seq: i64,
    pub record: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub kind: String,
    pub outcome: String,
    pub client_id: Option<String>,
    pub partner: Option<String>,
    pub audience: Option<String>,
    pub consent_id: Option<String>,
    pub txn: Option<String>,
    pub jti: Option<String>,
}

/// Appends `records` to the chain from `first_seq` on.
pub async fn insert_events(
    conn: &mut PgConnection,
    chain_id: uuid::Uuid,
    first_seq: i64,
    records: &[ChainedRecord],
) -> Result<(), sqlx::Error> {
    let column =
        |pick: fn(&ChainedRecord) -> Option<String>| records.iter().map(pick).collect::<Vec<_>>();
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
        records
            .iter()
            .map(|row| row.record.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|row| row.prev_hash.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|row| row.hash.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|row| row.recorded_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|row| label(&row.event.kind))
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|row| label(&row.event.outcome))
            .collect::<Vec<_>>(),
    )
    .bind(column(|row| row.event.details.client_id.clone()))
    .bind(column(|row| row.event.details.partner.clone()))
    .bind(column(|row| row.event.details.audience.clone()))
    .bind(column(|row| row.event.details.consent_id.clone()))
    .bind(column(|row| row.event.details.txn.clone()))
    .bind(column(|row| row.event.details.jti.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the lineage of exchanged tokens, which revocation follows. It is written by the
/// audit writer, in the transaction of the records that issued the tokens.
pub async fn insert_lineage<'e>(
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

/// The chain's last stored record: its seq and hash.
pub async fn chain_head(
    pool: &PgPool,
    chain_id: uuid::Uuid,
) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, hash FROM audit_events WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain_id)
    .fetch_optional(pool)
    .await
}

/// Every stored record, chain by chain in sequence order.
pub fn events_in_chain_order(pool: &PgPool) -> BoxStream<'_, Result<StoredEvent, sqlx::Error>> {
    sqlx::query_as::<_, StoredEvent>(
        "SELECT chain_id, seq, record, prev_hash, hash, kind, outcome, client_id, partner,
                audience, consent_id, txn, jti
           FROM audit_events ORDER BY chain_id, seq",
    )
    .fetch(pool)
}

pub async fn insert_chain(
    pool: &PgPool,
    chain_id: uuid::Uuid,
    node: &str,
    kid: &str,
    jws: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_chains (chain_id, node, kid, jws) VALUES ($1, $2, $3, $4)")
        .bind(chain_id)
        .bind(node)
        .bind(kid)
        .bind(jws)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every chain registration: (chain, node, signed registration).
pub async fn chains(pool: &PgPool) -> Result<Vec<(uuid::Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT chain_id, node, jws FROM audit_chains")
        .fetch_all(pool)
        .await
}

/// Stores a checkpoint; an existing one at `seq` is kept.
pub async fn insert_checkpoint(
    pool: &PgPool,
    chain_id: uuid::Uuid,
    seq: i64,
    head: &[u8; 32],
    kid: &str,
    jws: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, kid, jws)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(chain_id)
    .bind(seq)
    .bind(head.as_slice())
    .bind(kid)
    .bind(jws)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every checkpoint.
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<CheckpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT chain_id, seq, head_hash, jws FROM audit_checkpoints")
        .fetch_all(pool)
        .await
}

/// The chain's checkpoints at or after `first`, in order: (seq, head hash, signed checkpoint).
pub async fn checkpoints_from(
    pool: &PgPool,
    chain_id: uuid::Uuid,
    first: i64,
) -> Result<Vec<(i64, Vec<u8>, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, head_hash, jws FROM audit_checkpoints WHERE chain_id = $1 AND seq >= $2
          ORDER BY seq",
    )
    .bind(chain_id)
    .bind(first)
    .fetch_all(pool)
    .await
}

/// How far each pruned chain was pruned: (chain, last removed seq).
pub async fn pruned_through(pool: &PgPool) -> Result<Vec<(uuid::Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT chain_id, max(through_seq) FROM audit_prunes GROUP BY chain_id")
        .fetch_all(pool)
        .await
}

/// The checkpoints pruning may stop at: signed longer ago than `retention` and than the
/// database owner's minimum retention, and matching a stored record; chain by chain, newest
/// first.
pub fn prune_candidates(
    pool: &PgPool,
    retention: Duration,
) -> BoxStream<'_, Result<CheckpointRow, sqlx::Error>> {
    sqlx::query_as::<_, CheckpointRow>(
        "SELECT c.chain_id, c.seq, c.head_hash, c.jws FROM audit_checkpoints c
           JOIN audit_events e ON e.chain_id = c.chain_id AND e.seq = c.seq
                              AND e.hash = c.head_hash
          WHERE c.signed_at < now() - GREATEST(make_interval(secs => $1),
                                               (SELECT minimum FROM audit_retention))
          ORDER BY c.chain_id, c.seq DESC",
    )
    .bind(retention.as_secs_f64())
    .fetch(pool)
}

/// Removes the chain's records through `seq` (the database function refuses anything younger
/// than the owner's retention); returns how many went.
pub async fn prune(pool: &PgPool, chain_id: uuid::Uuid, seq: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT audit_prune($1, $2)")
        .bind(chain_id)
        .bind(seq)
        .fetch_one(pool)
        .await
}

/// Never NULL: the row query reads it as a boolean, and records without a partner, client,
/// consent or transaction (`=` would yield NULL for them) simply do not match a filter on it.
const MATCHES: &str = "recorded_at >= $1 AND recorded_at < $2
    AND ($3::text IS NULL OR partner IS NOT DISTINCT FROM $3)
    AND ($4::text IS NULL OR client_id IS NOT DISTINCT FROM $4)
    AND ($5::text IS NULL OR consent_id IS NOT DISTINCT FROM $5)
    AND ($6::text IS NULL OR txn IS NOT DISTINCT FROM $6)";

/// Binds `$1`..`$6` of [`MATCHES`].
fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &ExportFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.partner.clone())
        .bind(filter.client.clone())
        .bind(filter.consent.clone())
        .bind(filter.txn.clone())
}

/// For each chain with matching records: (chain, first and last matching seq).
pub async fn matching_spans(
    pool: &PgPool,
    filter: &ExportFilter,
) -> Result<Vec<(uuid::Uuid, i64, i64)>, sqlx::Error> {
    let spans = sqlx::query_as::<_, (uuid::Uuid, i64, i64)>(sqlx::AssertSqlSafe(format!(
        "SELECT chain_id, min(seq), max(seq) FROM audit_events WHERE {MATCHES}
          GROUP BY chain_id ORDER BY chain_id"
    )));
    bind_filter(spans, filter).fetch_all(pool).await
}

/// The chain's records `first..=last` in order, each with whether it matches the filter.
pub fn records_between<'a>(
    pool: &'a PgPool,
    filter: &ExportFilter,
    chain_id: uuid::Uuid,
    first: i64,
    last: i64,
) -> BoxStream<'a, Result<SegmentRow, sqlx::Error>> {
    let rows = sqlx::query_as::<_, SegmentRow>(sqlx::AssertSqlSafe(format!(
        "SELECT seq, record, prev_hash, hash, ({MATCHES}) AS included
               FROM audit_events WHERE chain_id = $7 AND seq BETWEEN $8 AND $9
              ORDER BY seq"
    )));
    bind_filter(rows, filter)
        .bind(chain_id)
        .bind(first)
        .bind(last)
        .fetch(pool)
}

/// How many records of the chain after `seq` match the filter.
pub async fn count_matching_after(
    pool: &PgPool,
    filter: &ExportFilter,
    chain_id: uuid::Uuid,
    seq: i64,
) -> Result<i64, sqlx::Error> {
    let count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM audit_events WHERE {MATCHES} AND chain_id = $7 AND seq > $8"
    )));
    let (count,) = bind_filter(count, filter)
        .bind(chain_id)
        .bind(seq)
        .fetch_one(pool)
        .await?;
    Ok(count)
}

/// Which audit records to read; every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub request_id: Option<String>,
    pub since: Option<time::OffsetDateTime>,
    pub until: Option<time::OffsetDateTime>,
    pub partner: Option<String>,
    pub client: Option<String>,
    pub consent: Option<String>,
    pub txn: Option<String>,
    pub outcome: Option<String>,
    pub kind: Option<String>,
    /// Continue after this record: (recorded_at, chain, seq).
    pub after: Option<(time::OffsetDateTime, uuid::Uuid, i64)>,
    pub limit: i64,
}

/// Records in (recorded_at, chain, seq) order: their canonical text and position.
pub async fn audit_records(
    conn: &mut PgConnection,
    filter: &AuditFilter,
) -> Result<Vec<(String, time::OffsetDateTime, uuid::Uuid, i64)>, sqlx::Error> {
    let (after_at, after_chain, after_seq) = filter.after.unzip3();
    sqlx::query_as(
        "SELECT record, recorded_at, chain_id, seq FROM audit_events
          WHERE ($1::text IS NULL OR (record::jsonb ->> 'request_id') = $1)
            AND ($2::timestamptz IS NULL OR recorded_at >= $2)
            AND ($3::timestamptz IS NULL OR recorded_at < $3)
            AND ($4::text IS NULL OR partner = $4)
            AND ($5::text IS NULL OR client_id = $5)
            AND ($6::text IS NULL OR consent_id = $6)
            AND ($7::text IS NULL OR txn = $7)
            AND ($8::text IS NULL OR outcome = $8)
            AND ($9::text IS NULL OR kind = $9)
            AND ($10::timestamptz IS NULL OR (recorded_at, chain_id, seq) > ($10, $11, $12))
          ORDER BY recorded_at, chain_id, seq
          LIMIT $13",
    )
    .bind(&filter.request_id)
    .bind(filter.since)
    .bind(filter.until)
    .bind(&filter.partner)
    .bind(&filter.client)
    .bind(&filter.consent)
    .bind(&filter.txn)
    .bind(&filter.outcome)
    .bind(&filter.kind)
    .bind(after_at)
    .bind(after_chain)
    .bind(after_seq)
    .bind(filter.limit)
    .fetch_all(conn)
    .await
}

trait Unzip3<A, B, C> {
    fn unzip3(self) -> (Option<A>, Option<B>, Option<C>);
}

impl<A, B, C> Unzip3<A, B, C> for Option<(A, B, C)> {
    fn unzip3(self) -> (Option<A>, Option<B>, Option<C>) {
        match self {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        }
    }
}

//! `tessera audit verify`: walks every chain in the database and every checkpoint, and names
//! the first broken link.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::PgPool;

use super::checkpoint::{encode_hash, verify_checkpoint};
use super::{AuditRecord, GENESIS, chained_hash};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub chain_id: uuid::Uuid,
    pub seq: i64,
    pub problem: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain {} at seq {}: {}",
            self.chain_id, self.seq, self.problem
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifySummary {
    pub chains: usize,
    pub records: u64,
    pub checkpoints: usize,
}

#[derive(sqlx::FromRow)]
struct Row {
    chain_id: uuid::Uuid,
    seq: i64,
    record: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    kind: String,
    outcome: String,
    client_id: Option<String>,
    partner: Option<String>,
    audience: Option<String>,
    consent_id: Option<String>,
    txn: Option<String>,
    jti: Option<String>,
}

struct Checkpoint {
    head: Vec<u8>,
    jws: String,
}

struct ChainState {
    chain_id: uuid::Uuid,
    last_seq: i64,
    last_hash: Vec<u8>,
}

/// `Ok(Err(broken))` names the first problem found; `Err` is a database failure.
pub async fn verify_all(pool: &PgPool) -> Result<Result<VerifySummary, Broken>, sqlx::Error> {
    let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_value(super::audit_jwks(pool).await?)
        .unwrap_or(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
    let mut checkpoints: BTreeMap<(uuid::Uuid, i64), Checkpoint> = BTreeMap::new();
    let rows: Vec<(uuid::Uuid, i64, Vec<u8>, String)> =
        sqlx::query_as("SELECT chain_id, seq, head_hash, jws FROM audit_checkpoints")
            .fetch_all(pool)
            .await?;
    for (chain_id, seq, head, jws) in rows {
        checkpoints.insert((chain_id, seq), Checkpoint { head, jws });
    }
    let mut summary = VerifySummary {
        checkpoints: checkpoints.len(),
        ..VerifySummary::default()
    };
    for ((chain_id, seq), checkpoint) in &checkpoints {
        let broken = |problem: &str| Broken {
            chain_id: *chain_id,
            seq: *seq,
            problem: problem.to_owned(),
        };
        let claims = match verify_checkpoint(&checkpoint.jws, &keys) {
            Ok(claims) => claims,
            Err(problem) => return Ok(Err(broken(problem))),
        };
        if claims.chain_id != chain_id.to_string()
            || claims.seq != *seq
            || claims.head != encode_hash(&checkpoint.head)
        {
            return Ok(Err(broken("checkpoint row differs from what was signed")));
        }
    }

    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT chain_id, seq, record, prev_hash, hash, kind, outcome, client_id, partner,
                audience, consent_id, txn, jti
           FROM audit_events ORDER BY chain_id, seq",
    )
    .fetch(pool);
    let mut state: Option<ChainState> = None;
    while let Some(row) = rows.try_next().await? {
        let broken = |problem: String| Broken {
            chain_id: row.chain_id,
            seq: row.seq,
            problem,
        };
        let continuing = state
            .as_ref()
            .filter(|chain| chain.chain_id == row.chain_id);
        match continuing {
            Some(chain) => {
                if row.seq != chain.last_seq + 1 {
                    return Ok(Err(broken(format!(
                        "records {}..{} are missing",
                        chain.last_seq + 1,
                        row.seq - 1
                    ))));
                }
                if row.prev_hash != chain.last_hash {
                    return Ok(Err(broken(
                        "prev_hash does not match the preceding record's hash".into(),
                    )));
                }
            }
            None => {
                if let Some(problem) = state
                    .as_ref()
                    .and_then(|chain| chain_end(&checkpoints, chain))
                {
                    return Ok(Err(problem));
                }
                summary.chains += 1;
                let anchored = if row.seq == 1 {
                    row.prev_hash == GENESIS
                } else {
                    // Pruned up to a checkpoint, which must vouch for the first remaining link.
                    checkpoints
                        .get(&(row.chain_id, row.seq - 1))
                        .is_some_and(|checkpoint| checkpoint.head == row.prev_hash)
                };
                if !anchored {
                    return Ok(Err(broken(
                        "the chain's first record is not anchored (genesis or a checkpoint)".into(),
                    )));
                }
            }
        }
        if let Some(problem) = check_row(&row) {
            return Ok(Err(broken(problem)));
        }
        if checkpoints
            .get(&(row.chain_id, row.seq))
            .is_some_and(|checkpoint| checkpoint.head != row.hash)
        {
            return Ok(Err(broken(
                "hash differs from the signed checkpoint".into(),
            )));
        }
        summary.records += 1;
        state = Some(ChainState {
            chain_id: row.chain_id,
            last_seq: row.seq,
            last_hash: row.hash,
        });
    }
    if let Some(problem) = state
        .as_ref()
        .and_then(|chain| chain_end(&checkpoints, chain))
    {
        return Ok(Err(problem));
    }
    Ok(Ok(summary))
}

/// A checkpoint past the end of a chain means its tail was removed.
fn chain_end(
    checkpoints: &BTreeMap<(uuid::Uuid, i64), Checkpoint>,
    chain: &ChainState,
) -> Option<Broken> {
    checkpoints
        .range((chain.chain_id, chain.last_seq + 1)..=(chain.chain_id, i64::MAX))
        .next()
        .map(|((chain_id, seq), _)| Broken {
            chain_id: *chain_id,
            seq: *seq,
            problem: format!(
                "a checkpoint vouches for seq {seq} but the chain ends at {}",
                chain.last_seq
            ),
        })
}

/// The record hashes to the stored hash and agrees with the row's columns.
fn check_row(row: &Row) -> Option<String> {
    if chained_hash(&row.prev_hash, &row.record).as_slice() != row.hash.as_slice() {
        return Some("hash does not match the record".into());
    }
    let Ok(record) = serde_json::from_str::<AuditRecord>(&row.record) else {
        return Some("record is not a valid audit record".into());
    };
    let agrees = record.chain_id == row.chain_id.to_string()
        && record.seq == row.seq
        && super::label(&record.kind) == row.kind
        && super::label(&record.outcome) == row.outcome
        && record.details.client_id == row.client_id
        && record.details.partner == row.partner
        && record.details.audience == row.audience
        && record.details.consent_id == row.consent_id
        && record.details.txn == row.txn
        && record.details.jti == row.jti;
    (!agrees).then(|| "columns disagree with the hashed record".into())
}

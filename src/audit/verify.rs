//! `tessera audit verify`: walks every chain in the database and every checkpoint, and names
//! the first broken link. Only audit keys that authenticate under the key-encryption key
//! vouch for anything: every record must be covered by a checkpoint they signed, except a
//! short tail after a chain's newest checkpoint, which is reported; every chain a node
//! registered must be there.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::PgPool;

use super::checkpoint::{encode_hash, verify_chain, verify_checkpoint};
use super::{AuditRecord, GENESIS, chained_hash};
use crate::config::{AuditSettings, KeySettings};
use crate::crypto::keys::KeyError;
use crate::storage::audit::{self as storage, StoredEvent};

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
    /// Chains with records.
    pub chains: usize,
    pub records: u64,
    pub checkpoints: usize,
    /// Records after their chain's newest signed checkpoint, within the allowed bound.
    pub unsigned_tail: u64,
    /// Every chain expected (registered by a node, or vouched for by a checkpoint) and every
    /// chain with records, by chain id.
    pub report: Vec<ChainReport>,
}

/// What verification found for one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub chain_id: uuid::Uuid,
    /// The node named by the signed registration, or by the chain's first record.
    pub node: Option<String>,
    pub records: u64,
    /// First and last sequence numbers present.
    pub span: Option<(i64, i64)>,
    /// The newest signed checkpoint (0: none).
    pub signed_through: i64,
    /// Removed by pruning up to here (0: never pruned).
    pub pruned_through: i64,
    pub unsigned_tail: u64,
}

impl std::fmt::Display for ChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let node = self.node.as_deref().unwrap_or("unknown node");
        write!(f, "chain {} ({node}): ", self.chain_id)?;
        match self.span {
            Some((first, last)) => write!(
                f,
                "records {first}..{last}, signed through {}, {} unsigned at the end",
                self.signed_through, self.unsigned_tail
            )?,
            None if self.pruned_through > 0 => {
                write!(f, "every record pruned (through {})", self.pruned_through)?
            }
            None => write!(f, "no records written")?,
        }
        if self.pruned_through > 0 && self.span.is_some() {
            write!(f, ", pruned through {}", self.pruned_through)?;
        }
        Ok(())
    }
}

/// How many records may follow a chain's newest signed checkpoint: what a writer accumulates
/// before it signs again (by count, or at its next checkpoint tick), so that only a node that
/// stopped without its final checkpoint leaves such a tail.
#[derive(Debug, Clone, Copy)]
struct TailBound {
    records: u64,
    span_us: i64,
}

impl TailBound {
    fn from_settings(audit: &AuditSettings) -> Self {
        let records = u64::try_from(audit.checkpoint_every_records)
            .unwrap_or(0)
            .saturating_add(u64::try_from(audit.batch_max).unwrap_or(u64::MAX));
        // The writer checks on a ticker of the interval and signs once a full interval has
        // passed, so a tail may span up to two intervals, plus slack for a slow commit.
        let span = audit
            .checkpoint_interval
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(10));
        Self {
            records,
            span_us: i64::try_from(span.as_micros()).unwrap_or(i64::MAX),
        }
    }
}

struct Checkpoint {
    head: Vec<u8>,
    jws: String,
}

struct ChainState {
    report: ChainReport,
    last_seq: i64,
    last_hash: Vec<u8>,
    /// Recording times of the first and last record after the newest checkpoint.
    tail_from_us: Option<i64>,
    tail_to_us: i64,
}

/// Checks every chain against the audit keys that authenticate under the configured
/// key-encryption keys. `Ok(Err(broken))` names the first problem found; `Err` is a
/// database or key failure.
pub async fn verify_all(
    pool: &PgPool,
    keys: &KeySettings,
    audit: &AuditSettings,
) -> Result<Result<VerifySummary, Broken>, KeyError> {
    let trusted = super::checkpoint::trusted_keys(pool, keys).await?;
    verify_pinned(pool, &trusted, audit).await
}

/// Checks every chain trusting exactly the audit keys given (pinned by whoever verifies,
/// who then needs no key-encryption key).
pub async fn verify_pinned(
    pool: &PgPool,
    keys: &jsonwebtoken::jwk::JwkSet,
    audit: &AuditSettings,
) -> Result<Result<VerifySummary, Broken>, KeyError> {
    let bound = TailBound::from_settings(audit);

    let mut expected: BTreeMap<uuid::Uuid, ChainReport> = BTreeMap::new();
    let registrations = storage::chains(pool).await?;
    for (chain_id, node, jws) in registrations {
        let broken = |problem: String| Broken {
            chain_id,
            seq: 0,
            problem,
        };
        let claims = match verify_chain(&jws, keys) {
            Ok(claims) => claims,
            Err(problem) => return Ok(Err(broken(problem))),
        };
        if claims.chain_id != chain_id.to_string() || claims.node != node {
            return Ok(Err(broken(
                "chain registration differs from what was signed".into(),
            )));
        }
        expected.insert(
            chain_id,
            ChainReport {
                chain_id,
                node: Some(node),
                ..ChainReport::default()
            },
        );
    }

    let mut checkpoints: BTreeMap<(uuid::Uuid, i64), Checkpoint> = BTreeMap::new();
    let rows = storage::checkpoints(pool).await?;
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
        let claims = match verify_checkpoint(&checkpoint.jws, keys) {
            Ok(claims) => claims,
            Err(problem) => return Ok(Err(broken(&problem))),
        };
        if claims.chain_id != chain_id.to_string()
            || claims.seq != *seq
            || claims.head != encode_hash(&checkpoint.head)
        {
            return Ok(Err(broken("checkpoint row differs from what was signed")));
        }
        let report = expected.entry(*chain_id).or_insert_with(|| ChainReport {
            chain_id: *chain_id,
            ..ChainReport::default()
        });
        report.signed_through = report.signed_through.max(*seq);
    }
    let prunes = storage::pruned_through(pool).await?;
    for (chain_id, through) in prunes {
        if let Some(report) = expected.get_mut(&chain_id) {
            report.pruned_through = through;
        }
    }

    let mut rows = storage::events_in_chain_order(pool);
    let mut state: Option<ChainState> = None;
    let mut seen = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let broken = |problem: String| Broken {
            chain_id: row.chain_id,
            seq: row.seq,
            problem,
        };
        let continuing = state
            .as_ref()
            .is_some_and(|chain| chain.report.chain_id == row.chain_id);
        if continuing {
            if let Some(chain) = &state {
                if Some(row.seq) != chain.last_seq.checked_add(1) {
                    return Ok(Err(broken(format!(
                        "records {}..{} are missing",
                        chain.last_seq.saturating_add(1),
                        row.seq.saturating_sub(1)
                    ))));
                }
                if row.prev_hash != chain.last_hash {
                    return Ok(Err(broken(
                        "prev_hash does not match the preceding record's hash".into(),
                    )));
                }
            }
        } else {
            if let Some(finished) = state.take() {
                match finish_chain(&checkpoints, bound, finished) {
                    Ok(report) => seen.push(report),
                    Err(problem) => return Ok(Err(problem)),
                }
            }
            let Some(report) = expected.remove(&row.chain_id) else {
                return Ok(Err(broken(
                    "the chain was not opened by a Tessera node (no signed registration or checkpoint)"
                        .into(),
                )));
            };
            let anchored = if row.seq == 1 {
                row.prev_hash == GENESIS
            } else {
                // Pruned up to a checkpoint, which must vouch for the first remaining link.
                report.pruned_through == row.seq.saturating_sub(1)
                    && checkpoints
                        .get(&(row.chain_id, row.seq.saturating_sub(1)))
                        .is_some_and(|checkpoint| checkpoint.head == row.prev_hash)
            };
            if !anchored {
                return Ok(Err(broken(
                    "the chain's first record is not anchored (genesis or a checkpoint it was pruned to)".into(),
                )));
            }
            summary.chains += 1;
            state = Some(ChainState {
                report,
                last_seq: 0,
                last_hash: Vec::new(),
                tail_from_us: None,
                tail_to_us: 0,
            });
        }
        let record = match check_row(&row) {
            Ok(record) => record,
            Err(problem) => return Ok(Err(broken(problem))),
        };
        if checkpoints
            .get(&(row.chain_id, row.seq))
            .is_some_and(|checkpoint| checkpoint.head != row.hash)
        {
            return Ok(Err(broken(
                "hash differs from the signed checkpoint".into(),
            )));
        }
        let Some(chain) = state.as_mut() else {
            continue;
        };
        summary.records += 1;
        let report = &mut chain.report;
        report.records += 1;
        report.span = Some((report.span.map_or(row.seq, |(first, _)| first), row.seq));
        if report.node.is_none() {
            report.node = Some(record.node);
        }
        if row.seq > report.signed_through {
            report.unsigned_tail += 1;
            chain.tail_from_us.get_or_insert(record.recorded_at_us);
            chain.tail_to_us = record.recorded_at_us;
        }
        chain.last_seq = row.seq;
        chain.last_hash = row.hash;
    }
    if let Some(finished) = state.take() {
        match finish_chain(&checkpoints, bound, finished) {
            Ok(report) => seen.push(report),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    // Expected chains without a single record: fine if never written or pruned entirely,
    // missing if a checkpoint vouches for records that are gone.
    for report in expected.values() {
        if report.signed_through > report.pruned_through {
            return Ok(Err(Broken {
                chain_id: report.chain_id,
                seq: report.signed_through,
                problem: format!(
                    "the chain is missing: a checkpoint vouches for seq {} but no record remains",
                    report.signed_through
                ),
            }));
        }
    }
    seen.extend(expected.into_values());
    seen.sort_by_key(|report| report.chain_id);
    summary.unsigned_tail = seen.iter().fold(0, |total, report| {
        total.saturating_add(report.unsigned_tail)
    });
    summary.report = seen;
    Ok(Ok(summary))
}

/// The checks that need the whole chain: nothing signed is missing at its end, and what
/// follows the newest checkpoint stays within the bound.
fn finish_chain(
    checkpoints: &BTreeMap<(uuid::Uuid, i64), Checkpoint>,
    bound: TailBound,
    chain: ChainState,
) -> Result<ChainReport, Broken> {
    if let Some(problem) = chain_end(checkpoints, chain.report.chain_id, chain.last_seq) {
        return Err(problem);
    }
    let report = chain.report;
    let first_unsigned = report.signed_through.saturating_add(1);
    let broken = |problem: String| Broken {
        chain_id: report.chain_id,
        seq: first_unsigned,
        problem,
    };
    if report.unsigned_tail > bound.records {
        return Err(broken(format!(
            "{} records follow the newest signed checkpoint (seq {}), more than \
             audit.checkpoint_every_records allows",
            report.unsigned_tail, report.signed_through
        )));
    }
    let within = chain.tail_from_us.is_none_or(|from| {
        chain
            .tail_to_us
            .checked_sub(from)
            .is_some_and(|span| span <= bound.span_us)
    });
    if !within {
        return Err(broken(format!(
            "the records after the newest signed checkpoint (seq {}) span longer than \
             audit.checkpoint_interval_s allows",
            report.signed_through
        )));
    }
    Ok(report)
}

/// A checkpoint past the end of a chain means its tail was removed.
fn chain_end(
    checkpoints: &BTreeMap<(uuid::Uuid, i64), Checkpoint>,
    chain_id: uuid::Uuid,
    last_seq: i64,
) -> Option<Broken> {
    checkpoints
        .range((chain_id, last_seq.saturating_add(1))..=(chain_id, i64::MAX))
        .next()
        .map(|((chain_id, seq), _)| Broken {
            chain_id: *chain_id,
            seq: *seq,
            problem: format!("a checkpoint vouches for seq {seq} but the chain ends at {last_seq}"),
        })
}

/// The record hashes to the stored hash and agrees with the row's columns.
fn check_row(row: &StoredEvent) -> Result<AuditRecord, String> {
    if chained_hash(&row.prev_hash, &row.record).as_slice() != row.hash.as_slice() {
        return Err("hash does not match the record".into());
    }
    let Ok(record) = serde_json::from_str::<AuditRecord>(&row.record) else {
        return Err("record is not a valid audit record".into());
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
    if agrees {
        Ok(record)
    } else {
        Err("columns disagree with the hashed record".into())
    }
}

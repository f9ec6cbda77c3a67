//! Exports that verify offline. For every chain with a matching record the export carries the
//! contiguous run of links from the first match to a signed checkpoint at or after the last
//! one: matching records in full, the others as bare links (sequence and hashes only), and the
//! checkpoint. Changing any byte of a record breaks its hash, every link after it, or the
//! signature that vouches for the head.
//!
//! One JSON object per line:
//! `{"type":"record","chain_id","seq","prev_hash","hash","record"}` (record: canonical text),
//! `{"type":"link","chain_id","seq","prev_hash","hash"}`,
//! `{"type":"checkpoint","chain_id","seq","jws"}`; hashes are base64url.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::checkpoint::{encode_hash, verify_checkpoint, vouches};
use super::{AuditSigner, chained_hash};
use crate::storage::audit as storage;

#[derive(Debug, Clone)]
pub struct ExportFilter {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    pub partner: Option<String>,
    pub client: Option<String>,
    pub consent: Option<String>,
    pub txn: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: u64,
    pub links: u64,
    pub checkpoints: u64,
    /// Matching records left out because no checkpoint a trusted key signed covers them yet
    /// (a chain's tail before its node's next checkpoint).
    pub unsigned: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Record {
        chain_id: String,
        seq: i64,
        prev_hash: String,
        hash: String,
        record: String,
    },
    Link {
        chain_id: String,
        seq: i64,
        prev_hash: String,
        hash: String,
    },
    Checkpoint {
        chain_id: String,
        seq: i64,
        jws: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("audit storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit keys or checkpoint: {0}")]
    Checkpoint(#[from] crate::crypto::keys::KeyError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("encoding the export: {0}")]
    Encode(#[from] serde_json::Error),
}

pub async fn export(
    pool: &PgPool,
    signer: &AuditSigner,
    filter: &ExportFilter,
    out: &mut impl Write,
) -> Result<ExportSummary, ExportError> {
    let spans = storage::matching_spans(pool, filter).await?;
    let mut summary = ExportSummary::default();
    let trusted = signer.trusted_keys(pool).await?;
    for (chain_id, first, last) in spans {
        let checkpoint = covering_checkpoint(pool, &trusted, chain_id, first, last).await?;
        let Some((checkpoint_seq, jws)) = checkpoint else {
            summary.unsigned +=
                matching_after(pool, filter, chain_id, first.saturating_sub(1)).await?;
            continue;
        };
        if checkpoint_seq < last {
            summary.unsigned += matching_after(pool, filter, chain_id, checkpoint_seq).await?;
        }
        let mut rows = storage::records_between(pool, filter, chain_id, first, checkpoint_seq);
        while let Some((seq, record, prev_hash, hash, included)) = rows.try_next().await? {
            let line = if included {
                summary.records += 1;
                Line::Record {
                    chain_id: chain_id.to_string(),
                    seq,
                    prev_hash: encode_hash(&prev_hash),
                    hash: encode_hash(&hash),
                    record,
                }
            } else {
                summary.links += 1;
                Line::Link {
                    chain_id: chain_id.to_string(),
                    seq,
                    prev_hash: encode_hash(&prev_hash),
                    hash: encode_hash(&hash),
                }
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        summary.checkpoints += 1;
        serde_json::to_writer(
            &mut *out,
            &Line::Checkpoint {
                chain_id: chain_id.to_string(),
                seq: checkpoint_seq,
                jws,
            },
        )?;
        out.write_all(b"\n")?;
    }
    Ok(summary)
}

/// The checkpoint that vouches for the most of `first..=last`: the first one at or after
/// `last` that a trusted audit key signed, else the newest trusted one at or after `first`.
/// Export never signs a head itself: the rows are what the database holds, and signing them
/// would vouch for whatever the database role inserted. Only the node that wrote a chain
/// signs it.
async fn covering_checkpoint(
    pool: &PgPool,
    trusted: &jsonwebtoken::jwk::JwkSet,
    chain_id: uuid::Uuid,
    first: i64,
    last: i64,
) -> Result<Option<(i64, String)>, ExportError> {
    let candidates = storage::checkpoints_from(pool, chain_id, first).await?;
    let mut best = None;
    for (seq, head, jws) in candidates {
        if vouches(&jws, trusted, chain_id, seq, &head) {
            let covers_all = seq >= last;
            best = Some((seq, jws));
            if covers_all {
                break;
            }
        }
    }
    Ok(best)
}

/// How many records of the chain after `seq` match the filter.
async fn matching_after(
    pool: &PgPool,
    filter: &ExportFilter,
    chain_id: uuid::Uuid,
    seq: i64,
) -> Result<u64, ExportError> {
    let count = storage::count_matching_after(pool, filter, chain_id, seq).await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Verifies an export with nothing but the published audit key set. On failure, names the
/// line (1-based) and what is wrong with it.
pub fn verify_export(
    input: impl BufRead,
    keys: &jsonwebtoken::jwk::JwkSet,
) -> Result<ExportSummary, String> {
    let mut open: BTreeMap<String, Open> = BTreeMap::new();
    let mut summary = ExportSummary::default();
    let decode = |text: &str| {
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| "hash is not base64url")
    };
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let fail = |problem: &str| format!("line {number}: {problem}");
        let line = line.map_err(|error| fail(&error.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|_| fail("not an export line"))?;
        match parsed {
            Line::Record {
                chain_id,
                seq,
                prev_hash,
                hash,
                record,
            } => {
                let (prev_hash, hash) = (
                    decode(&prev_hash).map_err(fail)?,
                    decode(&hash).map_err(fail)?,
                );
                if chained_hash(&prev_hash, &record).as_slice() != hash.as_slice() {
                    return Err(fail("the record does not match its hash"));
                }
                let parsed: super::AuditRecord = serde_json::from_str(&record)
                    .map_err(|_| fail("the record is not an audit record"))?;
                if parsed.chain_id != chain_id || parsed.seq != seq {
                    return Err(fail("the record names another chain position"));
                }
                link(&open, &chain_id, seq, &prev_hash).map_err(fail)?;
                open.insert(chain_id, Open { seq, hash });
                summary.records += 1;
            }
            Line::Link {
                chain_id,
                seq,
                prev_hash,
                hash,
            } => {
                let (prev_hash, hash) = (
                    decode(&prev_hash).map_err(fail)?,
                    decode(&hash).map_err(fail)?,
                );
                link(&open, &chain_id, seq, &prev_hash).map_err(fail)?;
                open.insert(chain_id, Open { seq, hash });
                summary.links += 1;
            }
            Line::Checkpoint { chain_id, seq, jws } => {
                let claims = verify_checkpoint(&jws, keys).map_err(|problem| fail(&problem))?;
                let current = open
                    .remove(&chain_id)
                    .ok_or_else(|| fail("checkpoint without preceding links"))?;
                if claims.chain_id != chain_id
                    || claims.seq != seq
                    || current.seq != seq
                    || claims.head != encode_hash(&current.hash)
                {
                    return Err(fail("the signed head does not match the chain"));
                }
                summary.checkpoints += 1;
            }
        }
    }
    if let Some(chain) = open.keys().next() {
        return Err(format!("chain {chain} ends without a signed checkpoint"));
    }
    Ok(summary)
}

/// Checks that a link continues its chain (the first link of a chain starts it).
/// The last link read of a chain whose checkpoint has not been reached yet.
struct Open {
    seq: i64,
    hash: Vec<u8>,
}

fn link(
    open: &BTreeMap<String, Open>,
    chain_id: &str,
    seq: i64,
    prev_hash: &[u8],
) -> Result<(), &'static str> {
    match open.get(chain_id) {
        None => Ok(()),
        Some(previous) if previous.seq + 1 != seq => Err("a link is missing before this one"),
        Some(previous) if previous.hash != prev_hash => {
            Err("prev_hash does not match the preceding link")
        }
        Some(_) => Ok(()),
    }
}

//! The audit trail: every decision, allow and deny, appended to this node's hash chain.
//!
//! Requests hand their event to one writer task per node and wait; the writer gathers what
//! has arrived meanwhile into one transaction (group commit), so a request is answered only
//! after its record is durable, without every request paying for its own commit. At
//! intervals the writer signs its chain's head (a checkpoint), so that exported segments can
//! be verified by someone who only has the published audit key.

mod change;
mod checkpoint;
mod export;
mod verify;

pub use change::{Applied, Change, ChangeFailed};
pub use checkpoint::{AuditSigner, audit_jwks};
pub use export::{ExportFilter, ExportSummary, export, verify_export};
pub use verify::{Broken, ChainReport, VerifySummary, verify_all, verify_pinned};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::KeySettings;
use crate::crypto::keys::KeyError;
use crate::storage::audit::{ChainedRecord, LineageEntry, insert_lineage};
use crate::telemetry::metrics::Metrics;
use futures_util::TryStreamExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// Hash of the (absent) predecessor of a chain's first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Longest text an audited field keeps, in characters. Values may come from unauthenticated
/// callers and some land in indexed columns, whose entries PostgreSQL caps at about 2.7 kB.
pub const AUDITED_VALUE_MAX_CHARS: usize = 256;
/// Longest audited reason: not indexed, and an error message (a policy set refused on reload,
/// say) can need more room than an identifier.
const AUDITED_REASON_MAX_CHARS: usize = 1_024;

/// How long readiness reports a failed commit that no successful one has followed.
const FAILURE_REPORTED_MS: u64 = 10_000;

/// How long a request waits for its record by default before it is answered 503.
pub const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(5);

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
    /// A change made through the admin API (or `tessera admin`), with its before and after.
    AdminChange,
    /// An admin request refused: not authenticated, not allowed, or invalid.
    AdminDenied,
    /// A bank token fetched for an audience, or the attempt that failed.
    UpstreamTokenRotated,
    /// A bank token handed to a caller, or the refusal.
    UpstreamTokenUsed,
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
    /// The generation of the upstream bank token concerned (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_generation: Option<i64>,
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
    #[error("the audit writer did not commit in time")]
    TimedOut,
    /// The change that was to be committed with the record refused itself; nothing was written.
    #[error("the change was refused")]
    ChangeRefused,
}

struct Pending {
    kind: EventKind,
    outcome: Outcome,
    details: EventDetails,
    /// A change to commit in the same transaction as this record, which it then describes.
    change: Option<Arc<dyn change::ErasedChange>>,
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
    let mut candidates = crate::storage::audit::prune_candidates(pool, retention);
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
        let count = crate::storage::audit::prune(pool, chain_id, seq).await?;
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
    /// Longest a request waits to hand over its event and hear that it is committed.
    wait_limit: Duration,
}

#[derive(Clone)]
enum Sink {
    Chain(mpsc::Sender<Pending>, Arc<WriterHealth>),
    /// No records, only the lineage of exchanged tokens (benchmark mode).
    LineageOnly(PgPool),
}

/// What readiness needs to know about the writer, kept current by the writer itself.
#[derive(Default)]
struct WriterHealth {
    /// Milliseconds since `epoch` at which a commit last failed for a reason other than the
    /// records in it (the database unreachable, say); zero once a commit succeeds.
    failed_at_ms: AtomicU64,
    /// Milliseconds since `epoch` at which the commit in progress started; zero when idle.
    busy_since_ms: AtomicU64,
    epoch: Option<Instant>,
}

impl WriterHealth {
    fn now_ms(&self) -> u64 {
        self.epoch
            .map(|epoch| u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default()
            .max(1)
    }
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
        let (sender, receiver) = mpsc::channel(batch_max.saturating_mul(4).max(1));
        let (stop, stopped) = oneshot::channel();
        let health = Arc::new(WriterHealth {
            epoch: Some(Instant::now()),
            ..WriterHealth::default()
        });
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
            health: health.clone(),
            unconfirmed: None,
        };
        let task = tokio::spawn(writer.run(receiver, stopped));
        (
            Self {
                sink: Sink::Chain(sender, health),
                wait_limit: DEFAULT_WAIT_LIMIT,
            },
            WriterHandle { stop, task },
        )
    }

    /// Records nothing but the lineage of exchanged tokens, which revocation depends on; only
    /// for measuring what the trail costs (`audit.enabled = false`).
    pub fn disabled(pool: PgPool) -> Self {
        Self {
            sink: Sink::LineageOnly(pool),
            wait_limit: DEFAULT_WAIT_LIMIT,
        }
    }

    /// Bounds how long [`Self::record`] waits for the writer.
    pub fn with_wait_limit(self, wait_limit: Duration) -> Self {
        Self { wait_limit, ..self }
    }

    /// Why the writer cannot be relied on now, if it cannot: stopped, failing to commit, or
    /// stuck in one commit for longer than requests wait for it.
    pub fn unhealthy(&self) -> Option<&'static str> {
        let Sink::Chain(sender, health) = &self.sink else {
            return None;
        };
        if sender.is_closed() {
            return Some("audit writer stopped");
        }
        let now = health.now_ms();
        let failed_at = health.failed_at_ms.load(Ordering::Relaxed);
        // Only a recent failure counts: a node kept out of rotation gets no requests, so no
        // commit would ever clear it.
        if failed_at != 0 && now.saturating_sub(failed_at) < FAILURE_REPORTED_MS {
            return Some("audit writes failing");
        }
        let busy_since = health.busy_since_ms.load(Ordering::Relaxed);
        let wait_limit_ms = u64::try_from(self.wait_limit.as_millis()).unwrap_or(u64::MAX);
        if busy_since != 0 && now.saturating_sub(busy_since) > wait_limit_ms {
            return Some("audit writer stalled");
        }
        None
    }

    /// Returns once the event is committed; an error means it was not (or not yet: after the
    /// wait limit the record may still be committed later), and the caller must not let
    /// whatever it was about to release leave the server.
    pub async fn record(
        &self,
        kind: EventKind,
        outcome: Outcome,
        details: EventDetails,
    ) -> Result<(), AuditError> {
        self.submit(kind, outcome, details, None).await
    }

    async fn submit(
        &self,
        kind: EventKind,
        outcome: Outcome,
        details: EventDetails,
        change: Option<Arc<dyn change::ErasedChange>>,
    ) -> Result<(), AuditError> {
        let sender = match &self.sink {
            Sink::Chain(sender, _) => sender,
            Sink::LineageOnly(pool) => {
                if let Some(change) = change {
                    return change::commit_alone(pool, change.as_ref()).await;
                }
                let entry = lineage_of(outcome, &details).map_err(|_| AuditError::Unavailable)?;
                if let Some(entry) = entry {
                    insert_lineage(pool, &[entry])
                        .await
                        .map_err(|_| AuditError::Unavailable)?;
                }
                return Ok(());
            }
        };
        let handed_over = async {
            let (done, committed) = oneshot::channel();
            sender
                .send(Pending {
                    kind,
                    outcome,
                    details,
                    change,
                    done,
                })
                .await
                .map_err(|_| AuditError::Unavailable)?;
            committed.await.map_err(|_| AuditError::Unavailable)?
        };
        tokio::time::timeout(self.wait_limit, handed_over)
            .await
            .map_err(|_| AuditError::TimedOut)?
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
    health: Arc<WriterHealth>,
    /// The head a commit would have left if it succeeded without the writer hearing so.
    unconfirmed: Option<ChainHead>,
}

/// Where the chain stands after a group of records: its last seq and hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ChainHead {
    seq: i64,
    hash: [u8; 32],
}

/// What the stored chain says after a commit reported failure.
enum AfterFailure {
    /// The group is there: the commit succeeded though its acknowledgement was lost.
    Committed,
    /// The writer now continues from elsewhere: an earlier commit of its own that did
    /// happen after all, or a new chain.
    Moved,
    Unchanged,
}

/// Records committed together; `retried` once the chain head moved under it.
struct Group {
    pending: Vec<Pending>,
    retried: bool,
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

    /// Commits the batch; when that fails because of what is in it, the halves are committed
    /// separately, down to single records, so one unstorable record fails only its own request.
    async fn commit_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let size = batch.len();
        self.health
            .busy_since_ms
            .store(self.health.now_ms(), Ordering::Relaxed);
        let mut groups = change::separated(std::mem::take(batch))
            .into_iter()
            .rev()
            .map(|pending| Group {
                pending,
                retried: false,
            })
            .collect::<Vec<_>>();
        while let Some(mut group) = groups.pop() {
            let error = match self.commit(&group.pending).await {
                Ok(()) => {
                    self.health.failed_at_ms.store(0, Ordering::Relaxed);
                    answer(group.pending, Ok(()));
                    continue;
                }
                Err((error, expected)) => match self.after_failure(expected).await {
                    AfterFailure::Committed => {
                        answer(group.pending, Ok(()));
                        continue;
                    }
                    AfterFailure::Moved if !group.retried => {
                        group.retried = true;
                        groups.push(group);
                        continue;
                    }
                    AfterFailure::Moved | AfterFailure::Unchanged => error,
                },
            };
            if matches!(error, BatchError::Refused) {
                answer(group.pending, Err(AuditError::ChangeRefused));
                continue;
            }
            if error.caused_by_records() && group.pending.len() > 1 {
                let second = group.pending.split_off(group.pending.len() / 2);
                groups.push(Group {
                    pending: second,
                    retried: group.retried,
                });
                groups.push(group);
                continue;
            }
            if !error.caused_by_records() {
                self.health
                    .failed_at_ms
                    .store(self.health.now_ms(), Ordering::Relaxed);
            }
            tracing::error!(%error, events = group.pending.len(), "audit records not committed");
            answer(group.pending, Err(AuditError::Unavailable));
        }
        self.health.busy_since_ms.store(0, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics
                .audit_write_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.audit_batch_size.observe(size as f64);
        }
    }

    /// Writes the records in one transaction; the chain head advances only if it commits, so
    /// a failed group leaves no gap in the chain. A failure comes with the head the chain
    /// would have had.
    async fn commit(&mut self, group: &[Pending]) -> Result<(), (BatchError, Option<ChainHead>)> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|error| (error.into(), None))?;
        // A change comes alone in its group (see `change::separated`); its record describes
        // what it did, as read and written in this transaction.
        let changed = match group {
            [
                Pending {
                    change: Some(change),
                    ..
                },
            ] => Some(change::apply(&mut tx, change.as_ref()).await?),
            _ => None,
        };
        let mut head = self.head;
        let mut seq = self.next_seq;
        let mut rows = Vec::with_capacity(group.len());
        for pending in group {
            let details = changed.as_ref().unwrap_or(&pending.details);
            let recorded_at = OffsetDateTime::now_utc();
            let event = AuditRecord {
                event_id: uuid::Uuid::new_v4().to_string(),
                chain_id: self.chain_id.to_string(),
                seq,
                recorded_at_us: micros(recorded_at),
                node: self.node.clone(),
                kind: pending.kind,
                outcome: pending.outcome,
                details: bounded(details),
            };
            let record = event.canonical().map_err(|error| (error.into(), None))?;
            let hash = chained_hash(&head, &record);
            rows.push(ChainedRecord {
                event,
                record,
                prev_hash: head,
                hash,
                recorded_at,
            });
            head = hash;
            seq += 1;
        }
        let expected = ChainHead {
            seq: seq - 1,
            hash: head,
        };
        insert(&mut tx, self.chain_id, self.next_seq, &rows)
            .await
            .map_err(|error| (error, Some(expected)))?;
        tx.commit()
            .await
            .map_err(|error| (error.into(), Some(expected)))?;
        self.head = head;
        self.next_seq = seq;
        Ok(())
    }

    /// Re-reads the chain's stored head after a failed commit. A commit whose outcome was
    /// lost (the connection dropped while committing) would otherwise leave the writer
    /// appending after a head that is no longer the last record, failing forever. A head the
    /// writer did not write itself is never built on (nor signed over by a checkpoint): the
    /// writer continues on a new chain instead.
    async fn after_failure(&mut self, expected: Option<ChainHead>) -> AfterFailure {
        let stored = match self.stored_head().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "audit chain head not re-read");
                // The commit may still have happened; recognise it when the head is readable.
                self.unconfirmed = expected.or(self.unconfirmed);
                return AfterFailure::Unchanged;
            }
        };
        let believed = ChainHead {
            seq: self.next_seq - 1,
            hash: self.head,
        };
        if stored == Some(believed) {
            self.unconfirmed = None;
            return AfterFailure::Unchanged;
        }
        if let Some(own) = stored.filter(|head| [expected, self.unconfirmed].contains(&Some(*head)))
        {
            self.head = own.hash;
            self.next_seq = own.seq + 1;
            self.unconfirmed = None;
            return if Some(own) == expected {
                AfterFailure::Committed
            } else {
                AfterFailure::Moved
            };
        }
        tracing::error!(
            chain_id = %self.chain_id,
            "audit chain altered outside its writer; continuing on a new chain"
        );
        self.checkpoint().await;
        self.chain_id = uuid::Uuid::new_v4();
        self.head = GENESIS;
        self.next_seq = 1;
        self.checkpointed_seq = 0;
        self.unconfirmed = None;
        // `audit verify` expects every chain a node writes to be registered by that node.
        if let Err(error) = self
            .signer
            .open_chain(&self.pool, self.chain_id, &self.node)
            .await
        {
            tracing::error!(%error, chain_id = %self.chain_id, "audit chain not registered");
        }
        AfterFailure::Moved
    }

    /// The chain's last stored record; `None` if it is not one this writer could have written.
    async fn stored_head(&self) -> Result<Option<ChainHead>, sqlx::Error> {
        let stored = crate::storage::audit::chain_head(&self.pool, self.chain_id).await?;
        Ok(match stored {
            None => Some(ChainHead {
                seq: 0,
                hash: GENESIS,
            }),
            Some((seq, hash)) => <[u8; 32]>::try_from(hash)
                .ok()
                .map(|hash| ChainHead { seq, hash }),
        })
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

fn answer(group: Vec<Pending>, result: Result<(), AuditError>) {
    for pending in group {
        let _ = pending.done.send(result.clone());
    }
}

/// The details as stored: every text escaped (no control characters, which PostgreSQL may
/// refuse) and cut to [`AUDITED_VALUE_MAX_CHARS`], whoever supplied it.
fn bounded(details: &EventDetails) -> EventDetails {
    let text = |value: &Option<String>| value.as_deref().map(bounded_text);
    let texts = |values: &[String]| values.iter().map(|value| bounded_text(value)).collect();
    EventDetails {
        reason: details
            .reason
            .as_deref()
            .map(|reason| truncated(reason, AUDITED_REASON_MAX_CHARS)),
        request_id: text(&details.request_id),
        client_id: text(&details.client_id),
        partner: text(&details.partner),
        subject: text(&details.subject),
        audience: text(&details.audience),
        scopes: texts(&details.scopes),
        consent_id: text(&details.consent_id),
        txn: text(&details.txn),
        jti: text(&details.jti),
        trust_profile_version: details.trust_profile_version,
        policy_set_hash: text(&details.policy_set_hash),
        actor_chain: details.actor_chain.clone().map(escaped_json),
        changes: details.changes.clone().map(escaped_json),
        policies: texts(&details.policies),
        parent_jti: text(&details.parent_jti),
        actor_jti: text(&details.actor_jti),
        expires_at: details.expires_at,
        upstream_generation: details.upstream_generation,
    }
}

/// Control characters become `\u{..}` escapes; anything beyond the limit is replaced by `…`.
pub fn bounded_text(value: &str) -> String {
    truncated(value, AUDITED_VALUE_MAX_CHARS)
}

/// At most `max_chars` characters after escaping, plus the `…` that marks a cut.
fn truncated(value: &str, max_chars: usize) -> String {
    // The writer runs this on every field of every record, inside the group commit.
    if value.len() <= max_chars && !value.chars().any(char::is_control) {
        return value.to_owned();
    }
    let mut bounded = String::new();
    let mut escaped = String::new();
    let mut count = 0usize;
    for character in value.chars() {
        escaped.clear();
        push_escaped(&mut escaped, character);
        count = count.saturating_add(escaped.chars().count());
        if count > max_chars {
            bounded.push('…');
            break;
        }
        bounded.push_str(&escaped);
    }
    bounded
}

fn push_escaped(text: &mut String, character: char) {
    if character.is_control() {
        text.extend(character.escape_unicode());
    } else {
        text.push(character);
    }
}

/// Structured details keep their shape and length; only control characters are escaped
/// (PostgreSQL's `jsonb` refuses `\u0000`).
fn escaped_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let escape = |text: String| {
        if !text.chars().any(char::is_control) {
            return text;
        }
        let mut escaped = String::with_capacity(text.len());
        text.chars()
            .for_each(|character| push_escaped(&mut escaped, character));
        escaped
    };
    match value {
        Value::String(text) => Value::String(escape(text)),
        Value::Array(values) => Value::Array(values.into_iter().map(escaped_json).collect()),
        Value::Object(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(key, value)| (escape(key), escaped_json(value)))
                .collect(),
        ),
        other => other,
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
    #[error("the change refused itself")]
    Refused,
}

impl BatchError {
    /// Whether the records themselves were refused (so a smaller group may succeed), rather
    /// than the database being unreachable, where splitting would only multiply the waiting.
    fn caused_by_records(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(_))
            | Self::Encoding(_)
            | Self::Lineage
            | Self::Refused => true,
            Self::Database(_) => false,
        }
    }
}

/// How an enum is stored in its column: its serialized name.
pub(crate) fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The batch's part of its transaction: the records and, for exchanged tokens, their lineage,
/// which must be as durable as the record before the token leaves.
async fn insert(
    tx: &mut sqlx::PgConnection,
    chain_id: uuid::Uuid,
    first_seq: i64,
    rows: &[ChainedRecord],
) -> Result<(), BatchError> {
    crate::storage::audit::insert_events(&mut *tx, chain_id, first_seq, rows).await?;
    let mut lineage = Vec::new();
    for row in rows {
        lineage.extend(lineage_of(row.event.outcome, &row.event.details)?);
    }
    insert_lineage(&mut *tx, &lineage).await?;
    Ok(())
}

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
    fn audited_text_is_escaped_and_bounded() {
        assert_eq!(bounded_text("a\u{0}b\n"), "a\\u{0}b\\u{a}");
        let long = bounded_text(&"é".repeat(4_000));
        assert_eq!(long.chars().count(), AUDITED_VALUE_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
        let escapes = bounded_text(&"\u{0}".repeat(4_000));
        assert!(escapes.chars().count() <= AUDITED_VALUE_MAX_CHARS + 1);
        assert_eq!(
            bounded_text(&"a".repeat(AUDITED_VALUE_MAX_CHARS)).len(),
            AUDITED_VALUE_MAX_CHARS
        );
        let nested = escaped_json(serde_json::json!({ "k\u{0}": ["x\u{1}"] }));
        assert_eq!(nested, serde_json::json!({ "k\\u{0}": ["x\\u{1}"] }));
    }

    #[test]
    fn the_canonical_text_round_trips() {
        let text = record().canonical().unwrap();
        let reparsed: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed, record());
        assert_eq!(reparsed.canonical().unwrap(), text);
    }
}

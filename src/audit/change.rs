//! Changes committed in the same transaction as the audit record that describes them.
//!
//! The writer owns its chain's head, so a record can only be appended in the writer's own
//! transaction. A change is therefore handed to the writer with its record and run there: the
//! writer opens the transaction, lets the change apply itself and say what it did, appends that
//! as the record and commits both, or neither. Each change is committed in a group of its own,
//! so a refused change never fails other requests' records.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};

use super::{AuditError, AuditLog, BatchError, EventDetails, EventKind, Outcome, Pending};

/// What applying a change yields: its record's details and the caller's result.
pub type Applied<'c, T, E> = BoxFuture<'c, Result<(EventDetails, T), E>>;

/// A change to commit together with its audit record.
pub trait Change: Send + Sync + 'static {
    type Output: Send + 'static;
    type Error: Send + 'static;

    /// Applies the change on `conn` (inside the writer's transaction) and returns the record's
    /// details (before and after) with the caller's result. An error rolls everything back. The
    /// writer may apply a change again in a fresh transaction when a commit's outcome was lost,
    /// so it must read what it depends on here, not before.
    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, Self::Error>;
}

/// Why a change was not committed.
#[derive(Debug)]
pub enum ChangeFailed<E> {
    /// The change refused itself; nothing was written.
    Refused(E),
    /// The change and its record were not committed (or not known to be, after the wait
    /// limit): the caller must report failure.
    Audit(AuditError),
}

/// The writer's view of a change: apply it, keep its outcome for the caller.
pub(super) trait ErasedChange: Send + Sync {
    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<EventDetails, ()>>;
}

struct Erased<C: Change> {
    change: C,
    outcome: Mutex<Option<Result<C::Output, C::Error>>>,
}

impl<C: Change> ErasedChange for Erased<C> {
    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<EventDetails, ()>> {
        Box::pin(async move {
            let applied = self.change.apply(conn).await;
            let (details, outcome) = match applied {
                Ok((details, output)) => (Ok(details), Ok(output)),
                Err(error) => (Err(()), Err(error)),
            };
            *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
            details
        })
    }
}

impl AuditLog {
    /// Commits `change` and its record of `kind` in one transaction; returns the change's
    /// output once both are durable.
    pub async fn commit_change<C: Change>(
        &self,
        kind: EventKind,
        change: C,
    ) -> Result<C::Output, ChangeFailed<C::Error>> {
        let erased = Arc::new(Erased {
            change,
            outcome: Mutex::new(None),
        });
        let submitted = self
            .submit(
                kind,
                Outcome::Allow,
                EventDetails::default(),
                Some(erased.clone()),
            )
            .await;
        let outcome = erased
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match (submitted, outcome) {
            (Ok(()), Some(Ok(output))) => Ok(output),
            (Err(AuditError::ChangeRefused), Some(Err(error))) => Err(ChangeFailed::Refused(error)),
            (Err(error), _) => Err(ChangeFailed::Audit(error)),
            // Committed without the change having run cannot happen; report it as unwritten
            // rather than trust it.
            (Ok(()), _) => Err(ChangeFailed::Audit(AuditError::Unavailable)),
        }
    }
}

/// Runs the change in the writer's transaction, bounded so that it cannot hold up the trail.
pub(super) async fn apply(
    tx: &mut PgConnection,
    change: &dyn ErasedChange,
) -> Result<EventDetails, (BatchError, Option<super::ChainHead>)> {
    // Every other record waits behind this transaction.
    crate::storage::limit_statement_time(tx)
        .await
        .map_err(|error| (error.into(), None))?;
    change
        .apply(tx)
        .await
        .map_err(|()| (BatchError::Refused, None))
}

/// Without a trail (benchmark mode) a change still commits in a transaction of its own.
pub(super) async fn commit_alone(
    pool: &PgPool,
    change: &dyn ErasedChange,
) -> Result<(), AuditError> {
    let mut conn = pool.acquire().await.map_err(|_| AuditError::Unavailable)?;
    let mut tx = conn.begin().await.map_err(|_| AuditError::Unavailable)?;
    if change.apply(&mut tx).await.is_err() {
        return Err(AuditError::ChangeRefused);
    }
    tx.commit().await.map_err(|_| AuditError::Unavailable)
}

/// Splits a batch into groups to commit in order: consecutive plain records together, each
/// change alone.
pub(super) fn separated(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        let alone = pending.change.is_some();
        match groups.last_mut() {
            Some(last) if !alone && last.iter().all(|queued| queued.change.is_none()) => {
                last.push(pending);
            }
            _ => groups.push(vec![pending]),
        }
    }
    groups
}

//! Reading the audit trail through the admin API (auditors): "why was I denied" by the
//! request id a response carried, or by time, partner, client, consent, transaction and
//! outcome, a page at a time.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::admin::{FieldError, Role};
use crate::service::Services;
use crate::storage;
use crate::storage::audit::AuditFilter;

use super::{AdminError, Caller};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// The query string as received.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    pub request_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub partner: Option<String>,
    pub client: Option<String>,
    pub consent: Option<String>,
    pub txn: Option<String>,
    pub outcome: Option<String>,
    pub kind: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub records: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, FieldError> {
    value
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| FieldError::new(field, "rfc3339", "an RFC 3339 time"))
        })
        .transpose()
}

/// The cursor: microseconds since the epoch, chain and seq of the last record of a page.
fn cursor(value: &str) -> Option<(OffsetDateTime, uuid::Uuid, i64)> {
    let mut parts = value.splitn(3, '.');
    let micros: i128 = parts.next()?.parse().ok()?;
    let chain = uuid::Uuid::parse_str(parts.next()?).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1_000)?).ok()?;
    Some((at, chain, seq))
}

pub async fn query(
    services: &Services,
    caller: &Caller,
    query: AuditQuery,
) -> Result<AuditPage, AdminError> {
    caller.require(&services.audit, Role::Auditor).await?;
    if let Some(outcome) = &query.outcome
        && !matches!(outcome.as_str(), "allow" | "deny")
    {
        return Err(FieldError::new("outcome", "enum", "`allow` or `deny`").into());
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(FieldError::new("limit", "range", format!("1 to {MAX_PAGE}")).into());
    }
    let after = query
        .after
        .as_deref()
        .map(|value| {
            cursor(value)
                .ok_or_else(|| FieldError::new("after", "cursor", "the `next` of a previous page"))
        })
        .transpose()?;
    let filter = AuditFilter {
        request_id: query.request_id,
        since: time("since", query.since.as_deref())?,
        until: time("until", query.until.as_deref())?,
        partner: query.partner,
        client: query.client,
        consent: query.consent,
        txn: query.txn,
        outcome: query.outcome,
        kind: query.kind,
        after,
        limit,
    };
    let mut conn = services.pool.acquire().await?;
    let rows = storage::audit::audit_records(&mut conn, &filter).await?;
    let next = (i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit)
        .then(|| rows.last())
        .flatten()
        .map(|(_, at, chain, seq)| format!("{}.{chain}.{seq}", at.unix_timestamp_nanos() / 1_000));
    let records = rows
        .iter()
        .map(|(record, ..)| serde_json::from_str(record).unwrap_or(serde_json::Value::Null))
        .collect();
    Ok(AuditPage { records, next })
}

//! Admins, proposals, and the registry tables as the admin API edits them.

use sqlx::PgConnection;

use crate::domain::admin::{
    Admin, AudienceDoc, ClientDoc, ConsentFilter, ConsentGrant, ConsentRecord, NewPartner, Partner,
    PartnerStatus, Proposal, ProposalStatus, ProposedChange, Role, TrustProfileDoc,
    TrustProfileVersion, Versioned,
};

/// The channel on which every registry change is announced to every node, on commit.
pub const REGISTRY_CHANNEL: &str = "tessera_registry";

/// Bounds every statement of the current transaction: the audit writer runs admin changes in
/// its own transaction, and every other record waits behind it.
pub async fn limit_statement_time(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL statement_timeout = '2s'")
        .execute(conn)
        .await?;
    Ok(())
}

/// Tells every node (on commit) that the registry changed, so that caches are dropped.
pub async fn notify_registry_changed(
    conn: &mut PgConnection,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REGISTRY_CHANNEL)
        .bind(what)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct AdminRow {
    id: String,
    subject_dn: String,
    roles: Vec<String>,
    status: String,
    version: i32,
}

impl From<AdminRow> for Admin {
    fn from(row: AdminRow) -> Self {
        Self {
            id: row.id,
            subject_dn: row.subject_dn,
            // The table's check admits known roles only.
            roles: row
                .roles
                .iter()
                .filter_map(|role| Role::parse(role))
                .collect(),
            active: row.status == "active",
            version: row.version,
        }
    }
}

const ADMIN_COLUMNS: &str = "id, subject_dn, roles, status, version";

pub async fn admin_by_id(conn: &mut PgConnection, id: &str) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

pub async fn admin_by_subject(
    conn: &mut PgConnection,
    subject_dn: &str,
) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE subject_dn = $1"
    )))
    .bind(subject_dn)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

pub async fn admins(conn: &mut PgConnection) -> Result<Vec<Admin>, sqlx::Error> {
    let rows: Vec<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY id"
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Admin::from).collect())
}

/// Registers an admin; refused (unique violation) when the identity is taken, by an admin or
/// by an OAuth client.
pub async fn insert_admin(
    conn: &mut PgConnection,
    id: &str,
    subject_dn: &str,
    san: &[String],
    roles: &[Role],
    created_by: &str,
) -> Result<Admin, sqlx::Error> {
    let row: AdminRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO admins (id, subject_dn, san, roles, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {ADMIN_COLUMNS}"
    )))
    .bind(id)
    .bind(subject_dn)
    .bind(san)
    .bind(roles.iter().map(|role| role.as_str()).collect::<Vec<_>>())
    .bind(created_by)
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

#[derive(sqlx::FromRow)]
struct PartnerRow {
    id: String,
    name: String,
    region: String,
    status: String,
    version: i32,
}

impl From<PartnerRow> for Partner {
    fn from(row: PartnerRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            region: row.region,
            status: if row.status == "active" {
                PartnerStatus::Active
            } else {
                PartnerStatus::Suspended
            },
            version: row.version,
        }
    }
}

pub async fn partners(conn: &mut PgConnection) -> Result<Vec<Partner>, sqlx::Error> {
    let rows: Vec<PartnerRow> =
        sqlx::query_as("SELECT id, name, region, status, version FROM partners ORDER BY id")
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(Partner::from).collect())
}

/// One partner; `for_update` locks its row until the transaction ends.
pub async fn partner(
    conn: &mut PgConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Partner>, sqlx::Error> {
    let statement = if for_update {
        "SELECT id, name, region, status, version FROM partners WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id, name, region, status, version FROM partners WHERE id = $1"
    };
    let row: Option<PartnerRow> = sqlx::query_as(statement)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Partner::from))
}

/// Inserts a partner; `None` when the id is taken.
pub async fn insert_partner(
    conn: &mut PgConnection,
    partner: &NewPartner,
) -> Result<Option<Partner>, sqlx::Error> {
    let row: Option<PartnerRow> = sqlx::query_as(
        "INSERT INTO partners (id, name, region) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING
         RETURNING id, name, region, status, version",
    )
    .bind(&partner.id)
    .bind(&partner.name)
    .bind(&partner.region)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Partner::from))
}

/// Stores `partner` over the row at `partner.version - 1`; false when that version is gone.
pub async fn update_partner(
    conn: &mut PgConnection,
    partner: &Partner,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE partners SET name = $2, region = $3, status = $4, version = $5
          WHERE id = $1 AND version = $5 - 1",
    )
    .bind(&partner.id)
    .bind(&partner.name)
    .bind(&partner.region)
    .bind(partner.status.as_str())
    .bind(partner.version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct ProposalRow {
    id: uuid::Uuid,
    kind: String,
    target: String,
    body: serde_json::Value,
    base_version: Option<i32>,
    diff: serde_json::Value,
    author: String,
    status: String,
    decided_by: Option<String>,
    reason: Option<String>,
    version: i32,
}

impl ProposalRow {
    /// `None` for a row whose change this build cannot read (written by a newer one).
    fn into_proposal(self) -> Option<Proposal> {
        let change: ProposedChange =
            serde_json::from_value(serde_json::json!({ "kind": self.kind, "body": self.body }))
                .ok()?;
        Some(Proposal {
            id: self.id,
            target: self.target,
            change,
            base_version: self.base_version,
            diff: self.diff,
            author: self.author,
            status: ProposalStatus::parse(&self.status)?,
            decided_by: self.decided_by,
            reason: self.reason,
            version: self.version,
        })
    }
}

const PROPOSAL_COLUMNS: &str =
    "id, kind, target, body, base_version, diff, author, status, decided_by, reason, version";

pub async fn insert_proposal(
    conn: &mut PgConnection,
    proposal: &Proposal,
) -> Result<(), sqlx::Error> {
    // Stored as the tagged enum's content, next to its kind.
    let body = serde_json::to_value(&proposal.change)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?
        .get("body")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    sqlx::query(
        "INSERT INTO proposals (id, kind, target, body, base_version, diff, author)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(proposal.id)
    .bind(proposal.change.kind())
    .bind(&proposal.target)
    .bind(body)
    .bind(proposal.base_version)
    .bind(&proposal.diff)
    .bind(&proposal.author)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn proposal(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    for_update: bool,
) -> Result<Option<Proposal>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(ProposalRow::into_proposal))
}

pub async fn proposals(
    conn: &mut PgConnection,
    status: Option<ProposalStatus>,
) -> Result<Vec<Proposal>, sqlx::Error> {
    let rows: Vec<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals
          WHERE $1::text IS NULL OR status = $1 ORDER BY created_at, id"
    )))
    .bind(status.map(ProposalStatus::as_str))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(ProposalRow::into_proposal)
        .collect())
}

/// Records the decision on a pending proposal; false when it was no longer pending.
pub async fn decide_proposal(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    status: ProposalStatus,
    decided_by: &str,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE proposals SET status = $2, decided_by = $3, decided_at = now(), reason = $4,
                version = version + 1
          WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(decided_by)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    partner_id: String,
    version: i32,
    active: bool,
    created_by: String,
    issuers: Vec<String>,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
    algorithms: Vec<String>,
    max_assertion_lifetime_s: i32,
    required_claims: serde_json::Value,
    single_use: bool,
    client_ca_pem: Option<String>,
    audiences: Vec<String>,
    scopes: Vec<String>,
    region: String,
    status: String,
    required_typ: Option<String>,
}

impl From<ProfileRow> for TrustProfileVersion {
    fn from(row: ProfileRow) -> Self {
        Self {
            partner: row.partner_id,
            version: row.version,
            active: row.active,
            created_by: row.created_by,
            profile: TrustProfileDoc {
                issuers: row.issuers,
                jwks: row.jwks,
                jwks_uri: row.jwks_uri,
                algorithms: row.algorithms,
                max_assertion_lifetime_s: row.max_assertion_lifetime_s,
                required_claims: row.required_claims.as_object().cloned().unwrap_or_default(),
                single_use: row.single_use,
                client_ca_pem: row.client_ca_pem,
                audiences: row.audiences,
                scopes: row.scopes,
                region: row.region,
                status: if row.status == "active" {
                    PartnerStatus::Active
                } else {
                    PartnerStatus::Suspended
                },
                required_typ: row.required_typ,
            },
        }
    }
}

const PROFILE_SELECT: &str = "SELECT p.partner_id, p.version,
        COALESCE(h.active_version = p.version, false) AS active, p.created_by, p.issuers,
        p.jwks, p.jwks_uri, p.algorithms, p.max_assertion_lifetime_s, p.required_claims,
        p.single_use, p.client_ca_pem, p.audiences, p.scopes, p.region, p.status,
        p.required_typ
   FROM trust_profiles p LEFT JOIN trust_profile_heads h ON h.partner_id = p.partner_id";

/// Every version of the partner's trust profile, newest first.
pub async fn profile_versions(
    conn: &mut PgConnection,
    partner: &str,
) -> Result<Vec<TrustProfileVersion>, sqlx::Error> {
    let rows: Vec<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PROFILE_SELECT} WHERE p.partner_id = $1 ORDER BY p.version DESC"
    )))
    .bind(partner)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(TrustProfileVersion::from).collect())
}

pub async fn profile_version(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
) -> Result<Option<TrustProfileVersion>, sqlx::Error> {
    let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PROFILE_SELECT} WHERE p.partner_id = $1 AND p.version = $2"
    )))
    .bind(partner)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(TrustProfileVersion::from))
}

/// The partner's active version (0 when it has none), locked against concurrent activation
/// until the transaction ends (through the partner's row, which exists before any head).
pub async fn lock_active_version(
    conn: &mut PgConnection,
    partner: &str,
) -> Result<Option<i32>, sqlx::Error> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM partners WHERE id = $1 FOR UPDATE")
        .bind(partner)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let active: Option<i32> =
        sqlx::query_scalar("SELECT active_version FROM trust_profile_heads WHERE partner_id = $1")
            .bind(partner)
            .fetch_optional(conn)
            .await?;
    Ok(Some(active.unwrap_or(0)))
}

/// Stores the next version (not active); returns its number.
pub async fn insert_profile_version(
    conn: &mut PgConnection,
    partner: &str,
    profile: &TrustProfileDoc,
    by: &str,
) -> Result<i32, sqlx::Error> {
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(max(version), 0) + 1 FROM trust_profiles WHERE partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO trust_profiles
            (partner_id, version, issuers, jwks, jwks_uri, algorithms, max_assertion_lifetime_s,
             required_claims, single_use, client_ca_pem, audiences, scopes, region, status,
             created_by, required_typ)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(partner)
    .bind(version)
    .bind(&profile.issuers)
    .bind(&profile.jwks)
    .bind(&profile.jwks_uri)
    .bind(&profile.algorithms)
    .bind(profile.max_assertion_lifetime_s)
    .bind(serde_json::Value::Object(profile.required_claims.clone()))
    .bind(profile.single_use)
    .bind(&profile.client_ca_pem)
    .bind(&profile.audiences)
    .bind(&profile.scopes)
    .bind(&profile.region)
    .bind(profile.status.as_str())
    .bind(by)
    .bind(&profile.required_typ)
    .execute(conn)
    .await?;
    Ok(version)
}

/// Those of `audiences` that are not registered.
pub async fn unknown_audiences(
    conn: &mut PgConnection,
    audiences: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a FROM unnest($1::text[]) AS a
          WHERE NOT EXISTS (SELECT 1 FROM audiences WHERE id = a)",
    )
    .bind(audiences)
    .fetch_all(conn)
    .await
}

/// Makes `version` the partner's active profile after claiming its issuers; returns the
/// partner that already holds one of them instead, if any (one issuer, one partner).
pub async fn activate_profile(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
    issuers: &[String],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO trust_issuers (issuer, partner_id) SELECT unnest($1::text[]), $2
         ON CONFLICT (issuer) DO NOTHING",
    )
    .bind(issuers)
    .bind(partner)
    .execute(&mut *conn)
    .await?;
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT partner_id FROM trust_issuers WHERE issuer = ANY ($1) AND partner_id <> $2
          LIMIT 1",
    )
    .bind(issuers)
    .bind(partner)
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        return Ok(claimed);
    }
    sqlx::query(
        "INSERT INTO trust_profile_heads (partner_id, active_version) VALUES ($1, $2)
         ON CONFLICT (partner_id) DO UPDATE SET active_version = EXCLUDED.active_version",
    )
    .bind(partner)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(None)
}

#[derive(sqlx::FromRow)]
struct ConsentRow {
    id: uuid::Uuid,
    version: i32,
    grantor: String,
    grantee_partner: String,
    grantee_client: Option<String>,
    scopes: Vec<String>,
    audiences: Vec<String>,
    effective_from: time::OffsetDateTime,
    effective_until: time::OffsetDateTime,
    legal_basis: String,
    constraints: serde_json::Value,
    status: String,
    changed_by: String,
    revocation_reason: Option<String>,
}

impl From<ConsentRow> for ConsentRecord {
    fn from(row: ConsentRow) -> Self {
        Self {
            id: row.id,
            version: row.version,
            grant: ConsentGrant {
                grantor: row.grantor,
                grantee_partner: row.grantee_partner,
                grantee_client: row.grantee_client,
                scopes: row.scopes,
                audiences: row.audiences,
                effective_from: row.effective_from,
                effective_until: row.effective_until,
                legal_basis: row.legal_basis,
                constraints: row.constraints.as_object().cloned().unwrap_or_default(),
            },
            status: row.status,
            changed_by: row.changed_by,
            revocation_reason: row.revocation_reason,
        }
    }
}

const CONSENT_CURRENT: &str = "SELECT DISTINCT ON (id) id, version, grantor, grantee_partner,
        grantee_client, scopes, audiences, effective_from, effective_until, legal_basis,
        constraints, status, changed_by, revocation_reason
   FROM consents";

/// The current version of every consent matching the filter.
pub async fn consents(
    conn: &mut PgConnection,
    filter: &ConsentFilter,
) -> Result<Vec<ConsentRecord>, sqlx::Error> {
    let rows: Vec<ConsentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ({CONSENT_CURRENT} ORDER BY id, version DESC) current
          WHERE ($1::text IS NULL OR grantor = $1)
            AND ($2::text IS NULL OR grantee_partner = $2)
            AND ($3::text IS NULL OR $3 = ANY (audiences))
            AND ($4::text IS NULL OR status = $4)
          ORDER BY effective_from, id"
    )))
    .bind(&filter.grantor)
    .bind(&filter.grantee)
    .bind(&filter.audience)
    .bind(&filter.status)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ConsentRecord::from).collect())
}

/// A consent's current version; `for_update` serialises changes of it (on its first row,
/// which every version shares the id of).
pub async fn consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    for_update: bool,
) -> Result<Option<ConsentRecord>, sqlx::Error> {
    if for_update {
        sqlx::query("SELECT 1 FROM consents WHERE id = $1 AND version = 1 FOR UPDATE")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let row: Option<ConsentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CONSENT_CURRENT} WHERE id = $1 ORDER BY id, version DESC"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(ConsentRecord::from))
}

pub async fn insert_consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    grant: &ConsentGrant,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consents (id, version, grantor, grantee_partner, grantee_client, scopes,
                               audiences, effective_from, effective_until, legal_basis,
                               constraints, status, changed_by)
         VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11)",
    )
    .bind(id)
    .bind(&grant.grantor)
    .bind(&grant.grantee_partner)
    .bind(&grant.grantee_client)
    .bind(&grant.scopes)
    .bind(&grant.audiences)
    .bind(grant.effective_from)
    .bind(grant.effective_until)
    .bind(&grant.legal_basis)
    .bind(serde_json::Value::Object(grant.constraints.clone()))
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the revoked next version of the consent.
pub async fn revoke_consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    by: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consents (id, version, grantor, grantee_partner, grantee_client, scopes,
                               audiences, effective_from, effective_until, legal_basis,
                               constraints, status, changed_by, revocation_reason)
         SELECT id, version + 1, grantor, grantee_partner, grantee_client, scopes, audiences,
                effective_from, effective_until, legal_basis, constraints, 'revoked', $2, $3
           FROM consents WHERE id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .bind(by)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the partner exists and, when given, the client is one of its clients.
pub async fn partner_and_client_exist(
    conn: &mut PgConnection,
    partner: &str,
    client: Option<&str>,
) -> Result<(bool, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1),
                $2::text IS NULL
                OR EXISTS (SELECT 1 FROM clients WHERE id = $2 AND partner_id = $1)",
    )
    .bind(partner)
    .bind(client)
    .fetch_one(conn)
    .await
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    partner_id: String,
    name: String,
    auth_method: String,
    tls_subject_dn: Option<String>,
    tls_san_dns: Option<String>,
    tls_san_uri: Option<String>,
    tls_san_ip: Option<String>,
    tls_san_email: Option<String>,
    tls_anchor: Option<String>,
    jwks: Option<serde_json::Value>,
    grant_types: Vec<String>,
    max_lifetime_s: i32,
    resource_audience: Option<String>,
    audiences: serde_json::Value,
    status: String,
    version: i32,
}

impl From<ClientRow> for Versioned<ClientDoc> {
    fn from(row: ClientRow) -> Self {
        Self {
            doc: ClientDoc {
                id: row.id,
                partner: row.partner_id,
                name: row.name,
                auth_method: row.auth_method,
                tls_subject_dn: row.tls_subject_dn,
                tls_san_dns: row.tls_san_dns,
                tls_san_uri: row.tls_san_uri,
                tls_san_ip: row.tls_san_ip,
                tls_san_email: row.tls_san_email,
                tls_anchor: row.tls_anchor,
                jwks: row.jwks,
                grant_types: row.grant_types,
                max_lifetime_s: row.max_lifetime_s,
                resource_audience: row.resource_audience,
                audiences: serde_json::from_value(row.audiences).unwrap_or_default(),
                status: if row.status == "active" {
                    PartnerStatus::Active
                } else {
                    PartnerStatus::Suspended
                },
            },
            version: row.version,
        }
    }
}

const CLIENT_SELECT: &str = "SELECT c.id, c.partner_id, c.name, c.auth_method, c.tls_subject_dn,
        c.tls_san_dns, c.tls_san_uri, host(c.tls_san_ip) AS tls_san_ip, c.tls_san_email,
        c.tls_anchor, c.jwks, c.grant_types, c.max_lifetime_s, c.resource_audience, c.status,
        c.version,
        COALESCE((SELECT jsonb_object_agg(ca.audience_id, to_jsonb(ca.scopes))
                    FROM client_audiences ca WHERE ca.client_id = c.id), '{}') AS audiences
   FROM clients c";

pub async fn clients(conn: &mut PgConnection) -> Result<Vec<Versioned<ClientDoc>>, sqlx::Error> {
    let rows: Vec<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CLIENT_SELECT} ORDER BY c.id"
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Versioned::from).collect())
}

pub async fn client(
    conn: &mut PgConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Versioned<ClientDoc>>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE OF c" } else { "" };
    let row: Option<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CLIENT_SELECT} WHERE c.id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Versioned::from))
}

/// Inserts the client (version 1) or, with `version`, replaces the one at `version - 1`;
/// false when that version is gone. Refused by the database when the identity is taken
/// (by another client or an admin) or the row breaks a rule of the table.
pub async fn store_client(
    conn: &mut PgConnection,
    client: &ClientDoc,
    version: i32,
) -> Result<bool, sqlx::Error> {
    let written = if version == 1 {
        sqlx::query(
            "INSERT INTO clients
                (id, partner_id, name, auth_method, tls_subject_dn, tls_san_dns, tls_san_uri,
                 tls_san_ip, tls_san_email, tls_anchor, jwks, grant_types, max_lifetime_s,
                 resource_audience, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&client.id)
        .bind(&client.partner)
        .bind(&client.name)
        .bind(&client.auth_method)
        .bind(&client.tls_subject_dn)
        .bind(&client.tls_san_dns)
        .bind(&client.tls_san_uri)
        .bind(&client.tls_san_ip)
        .bind(&client.tls_san_email)
        .bind(&client.tls_anchor)
        .bind(&client.jwks)
        .bind(&client.grant_types)
        .bind(client.max_lifetime_s)
        .bind(&client.resource_audience)
        .bind(client.status.as_str())
        .execute(&mut *conn)
        .await?
    } else {
        sqlx::query(
            "UPDATE clients SET name = $2, status = $3, max_lifetime_s = $4, grant_types = $5,
                    version = $6
              WHERE id = $1 AND version = $6 - 1",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(client.status.as_str())
        .bind(client.max_lifetime_s)
        .bind(&client.grant_types)
        .bind(version)
        .execute(&mut *conn)
        .await?
    };
    if written.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM client_audiences WHERE client_id = $1")
        .bind(&client.id)
        .execute(&mut *conn)
        .await?;
    let (audiences, scopes): (Vec<&String>, Vec<serde_json::Value>) = client
        .audiences
        .iter()
        .map(|(audience, scopes)| (audience, serde_json::json!(scopes)))
        .unzip();
    sqlx::query(
        "INSERT INTO client_audiences (client_id, audience_id, scopes)
         SELECT $1, a, ARRAY(SELECT jsonb_array_elements_text(s))
           FROM UNNEST($2::text[], $3::jsonb[]) AS batch (a, s)",
    )
    .bind(&client.id)
    .bind(audiences)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(true)
}

#[derive(sqlx::FromRow)]
struct AudienceRow {
    id: String,
    name: String,
    scopes: Vec<String>,
    max_lifetime_s: i32,
    require_certificate_bound: bool,
    region: String,
    kind: String,
    cross_region_allowed: bool,
    version: i32,
}

impl From<AudienceRow> for Versioned<AudienceDoc> {
    fn from(row: AudienceRow) -> Self {
        Self {
            doc: AudienceDoc {
                id: row.id,
                name: row.name,
                scopes: row.scopes,
                max_lifetime_s: row.max_lifetime_s,
                require_certificate_bound: row.require_certificate_bound,
                region: row.region,
                kind: row.kind,
                cross_region_allowed: row.cross_region_allowed,
            },
            version: row.version,
        }
    }
}

const AUDIENCE_SELECT: &str = "SELECT id, name, scopes, max_lifetime_s,
        require_certificate_bound, region, kind, cross_region_allowed, version FROM audiences";

pub async fn audiences(
    conn: &mut PgConnection,
) -> Result<Vec<Versioned<AudienceDoc>>, sqlx::Error> {
    let rows: Vec<AudienceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUDIENCE_SELECT} ORDER BY id"
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Versioned::from).collect())
}

pub async fn audience(
    conn: &mut PgConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Versioned<AudienceDoc>>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<AudienceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUDIENCE_SELECT} WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Versioned::from))
}

/// Inserts the audience (version 1; false when the id is taken) or replaces the one at
/// `version - 1` (false when that version is gone).
pub async fn store_audience(
    conn: &mut PgConnection,
    audience: &AudienceDoc,
    version: i32,
) -> Result<bool, sqlx::Error> {
    let statement = if version == 1 {
        "INSERT INTO audiences (id, name, scopes, max_lifetime_s, require_certificate_bound,
                                region, kind, cross_region_allowed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
    } else {
        "UPDATE audiences SET name = $2, scopes = $3, max_lifetime_s = $4,
                require_certificate_bound = $5, cross_region_allowed = $8, version = $9
          WHERE id = $1 AND version = $9 - 1 AND region = $6 AND kind = $7"
    };
    let written = sqlx::query(statement)
        .bind(&audience.id)
        .bind(&audience.name)
        .bind(&audience.scopes)
        .bind(audience.max_lifetime_s)
        .bind(audience.require_certificate_bound)
        .bind(&audience.region)
        .bind(&audience.kind)
        .bind(audience.cross_region_allowed)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(written.rows_affected() == 1)
}

/// A connection listening on [`REGISTRY_CHANNEL`]; it reconnects by itself after a drop.
pub async fn registry_listener(
    pool: &sqlx::PgPool,
) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(REGISTRY_CHANNEL).await?;
    Ok(listener)
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

/// A signing key as admins see it: never its private half.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub algorithm: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retired_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub publish_until: Option<time::OffsetDateTime>,
    pub age_s: i64,
}

pub async fn signing_keys(conn: &mut PgConnection) -> Result<Vec<SigningKeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kid, algorithm, state, created_at, activated_at, retired_at, publish_until,
                extract(epoch FROM now() - created_at)::bigint AS age_s
           FROM signing_keys
          ORDER BY created_at DESC",
    )
    .fetch_all(conn)
    .await
}

/// One admin, its row locked until the transaction ends.
pub async fn admin_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

/// Stores roles and status over the row at `admin.version - 1`; false when that is gone.
pub async fn update_admin(conn: &mut PgConnection, admin: &Admin) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE admins SET roles = $2, status = $3, version = $4
          WHERE id = $1 AND version = $4 - 1",
    )
    .bind(&admin.id)
    .bind(
        admin
            .roles
            .iter()
            .map(|role| role.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(if admin.active { "active" } else { "suspended" })
    .bind(admin.version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

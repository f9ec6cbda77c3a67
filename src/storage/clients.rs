//! The client registry's rows: clients with their partner and per-audience scopes, pinned
//! certificates, and when clients were last seen.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::domain::admin::{ClientDoc, PartnerStatus, Versioned};
use crate::domain::audiences::AudienceId;
use crate::domain::clients::{
    Authentication, CertificateAnchor, CertificateIdentity, Client, Status,
};
use crate::domain::grants::GrantType;
use crate::domain::ids::{ClientId, PartnerId};
use crate::domain::jwks::PublicKeys;
use crate::domain::scopes::ScopeSet;
use crate::tls::DistinguishedName;

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    partner_id: String,
    partner_region: String,
    partner_status: String,
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
    is_admin: bool,
    status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("client registry: {0}")]
    Database(#[from] sqlx::Error),
    #[error("client {0} has an unusable registration")]
    Malformed(String),
}

pub async fn find(conn: &mut PgConnection, id: &ClientId) -> Result<Option<Client>, RegistryError> {
    let row: Option<ClientRow> = sqlx::query_as(
        "SELECT c.id, c.partner_id, p.region AS partner_region, p.status AS partner_status,
                c.name, c.auth_method, c.tls_subject_dn, c.tls_san_dns, c.tls_san_uri,
                host(c.tls_san_ip) AS tls_san_ip, c.tls_san_email, c.tls_anchor, c.jwks, c.grant_types, c.max_lifetime_s,
                c.resource_audience, c.is_admin, c.status
           FROM clients c JOIN partners p ON p.id = c.partner_id
          WHERE c.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let grants: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT audience_id, scopes FROM client_audiences WHERE client_id = $1")
            .bind(id.as_str())
            .fetch_all(&mut *conn)
            .await?;
    let malformed = || RegistryError::Malformed(row.id.clone());
    let jwks = || -> Result<PublicKeys, RegistryError> {
        PublicKeys::from_document(row.jwks.as_ref().ok_or_else(malformed)?).ok_or_else(malformed)
    };
    let authentication = match row.auth_method.as_str() {
        "tls_client_auth" => Authentication::TlsClientAuth(
            match (
                &row.tls_subject_dn,
                &row.tls_san_dns,
                &row.tls_san_uri,
                &row.tls_san_ip,
                &row.tls_san_email,
            ) {
                (Some(dn), None, None, None, None) => CertificateIdentity::SubjectDn(
                    DistinguishedName::parse(dn).ok_or_else(malformed)?,
                ),
                (None, Some(dns), None, None, None) => CertificateIdentity::SanDns(dns.clone()),
                (None, None, Some(uri), None, None) => CertificateIdentity::SanUri(uri.clone()),
                (None, None, None, Some(ip), None) => {
                    CertificateIdentity::SanIp(ip.parse().map_err(|_| malformed())?)
                }
                (None, None, None, None, Some(email)) => {
                    CertificateIdentity::SanEmail(email.clone())
                }
                _ => return Err(malformed()),
            },
            match row.tls_anchor.as_deref() {
                Some("server") => CertificateAnchor::Server,
                Some("partner") => CertificateAnchor::Partner,
                _ => return Err(malformed()),
            },
        ),
        "self_signed_tls_client_auth" => Authentication::SelfSignedTlsClientAuth(jwks()?),
        "private_key_jwt" => Authentication::PrivateKeyJwt(jwks()?),
        _ => return Err(malformed()),
    };
    let audiences = grants
        .into_iter()
        .filter_map(|(audience, scopes)| {
            Some((
                AudienceId::parse(&audience)?,
                ScopeSet::from_stored(&scopes),
            ))
        })
        .collect();
    let status = match (
        Status::parse(&row.status),
        Status::parse(&row.partner_status),
    ) {
        (Status::Active, Status::Active) => Status::Active,
        _ => Status::Suspended,
    };
    Ok(Some(Client {
        id: id.clone(),
        partner: PartnerId::parse(&row.partner_id).ok_or_else(malformed)?,
        partner_region: row.partner_region,
        name: row.name,
        authentication,
        // An unknown grant in a registration grants nothing.
        grant_types: row
            .grant_types
            .iter()
            .filter_map(|grant| GrantType::parse(grant))
            .collect(),
        max_lifetime: Duration::from_secs(
            u64::try_from(row.max_lifetime_s).map_err(|_| malformed())?,
        ),
        audiences,
        resource_audience: row.resource_audience.as_deref().and_then(AudienceId::parse),
        is_admin: row.is_admin,
        status,
    }))
}

/// The registered certificates of active `self_signed_tls_client_auth` clients: the TLS layer
/// accepts exactly these without a CA.
pub async fn self_signed_certificates(pool: &PgPool) -> Result<Vec<Vec<u8>>, RegistryError> {
    use base64::Engine;
    let leaves: Vec<String> = sqlx::query_scalar(
        "SELECT key -> 'x5c' ->> 0
           FROM clients c JOIN partners p ON p.id = c.partner_id,
                jsonb_array_elements(c.jwks -> 'keys') AS key
          WHERE c.auth_method = 'self_signed_tls_client_auth'
            AND c.status = 'active' AND p.status = 'active'
            AND key -> 'x5c' ->> 0 IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(leaves
        .iter()
        .filter_map(|leaf| base64::engine::general_purpose::STANDARD.decode(leaf).ok())
        .collect())
}

/// When clients last authenticated and when their certificates expire, gathered in memory on
/// the hot path and written in one statement every few seconds.
#[derive(Default)]
pub struct UsageTracker {
    seen: std::sync::Mutex<HashMap<ClientId, Option<i64>>>,
}

impl UsageTracker {
    pub fn record(&self, client: &ClientId, certificate_not_after: Option<i64>) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert(client.clone(), certificate_not_after);
    }

    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let seen = std::mem::take(
            &mut *self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if seen.is_empty() {
            return Ok(());
        }
        let (ids, not_after): (Vec<String>, Vec<Option<i64>>) = seen
            .into_iter()
            .map(|(id, not_after)| (String::from(id), not_after))
            .unzip();
        sqlx::query(
            "UPDATE clients c
                SET last_used_at = now(),
                    certificate_not_after = COALESCE(to_timestamp(u.not_after), c.certificate_not_after)
               FROM UNNEST($1::text[], $2::bigint[]) AS u (id, not_after)
              WHERE c.id = u.id",
        )
        .bind(ids)
        .bind(not_after)
        .execute(pool)
        .await?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct ClientDocRow {
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

impl From<ClientDocRow> for Versioned<ClientDoc> {
    fn from(row: ClientDocRow) -> Self {
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
    let rows: Vec<ClientDocRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    let row: Option<ClientDocRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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

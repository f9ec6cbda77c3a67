//! Registry upserts for seed files: partners, audiences, clients and what each client may
//! reach. Applying the same seed twice changes nothing.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use crate::dev::seed::{AudienceSeed, ClientSeed, PartnerSeed};

pub async fn upsert_partner(
    conn: &mut PgConnection,
    partner: &PartnerSeed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO partners (id, name, region, status) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE
           SET name = EXCLUDED.name, region = EXCLUDED.region, status = EXCLUDED.status",
    )
    .bind(&partner.id)
    .bind(&partner.name)
    .bind(&partner.region)
    .bind(&partner.status)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn upsert_audience(
    conn: &mut PgConnection,
    audience: &AudienceSeed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audiences
            (id, name, scopes, max_lifetime_s, require_certificate_bound, region, kind,
             cross_region_allowed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE
           SET name = EXCLUDED.name, scopes = EXCLUDED.scopes,
               max_lifetime_s = EXCLUDED.max_lifetime_s,
               require_certificate_bound = EXCLUDED.require_certificate_bound,
               region = EXCLUDED.region, kind = EXCLUDED.kind,
               cross_region_allowed = EXCLUDED.cross_region_allowed",
    )
    .bind(&audience.id)
    .bind(&audience.name)
    .bind(&audience.scopes)
    .bind(audience.max_lifetime_s)
    .bind(audience.require_certificate_bound)
    .bind(&audience.region)
    .bind(&audience.kind)
    .bind(audience.cross_region_allowed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Upserts the client with its subject DN as given (the caller normalises its spelling).
pub async fn upsert_client(
    conn: &mut PgConnection,
    client: &ClientSeed,
    tls_subject_dn: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO clients
            (id, partner_id, name, auth_method, tls_subject_dn, tls_san_dns, tls_san_uri,
             tls_san_ip, tls_san_email, jwks, grant_types, max_lifetime_s,
             resource_audience, is_admin, status, tls_anchor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet, $9, $10, $11, $12, $13, $14, $15,
                 CASE WHEN $4::text = 'tls_client_auth' THEN COALESCE($16::text, 'server') END)
         ON CONFLICT (id) DO UPDATE
           SET partner_id = EXCLUDED.partner_id, name = EXCLUDED.name,
               auth_method = EXCLUDED.auth_method,
               tls_subject_dn = EXCLUDED.tls_subject_dn,
               tls_san_dns = EXCLUDED.tls_san_dns, tls_san_uri = EXCLUDED.tls_san_uri,
               tls_san_ip = EXCLUDED.tls_san_ip, tls_san_email = EXCLUDED.tls_san_email,
               jwks = EXCLUDED.jwks, grant_types = EXCLUDED.grant_types,
               max_lifetime_s = EXCLUDED.max_lifetime_s,
               resource_audience = EXCLUDED.resource_audience,
               is_admin = EXCLUDED.is_admin, status = EXCLUDED.status,
               tls_anchor = EXCLUDED.tls_anchor",
    )
    .bind(&client.id)
    .bind(&client.partner)
    .bind(&client.name)
    .bind(&client.auth_method)
    .bind(tls_subject_dn)
    .bind(&client.tls_san_dns)
    .bind(&client.tls_san_uri)
    .bind(&client.tls_san_ip)
    .bind(&client.tls_san_email)
    .bind(&client.jwks)
    .bind(&client.grant_types)
    .bind(client.max_lifetime_s)
    .bind(&client.resource_audience)
    .bind(client.is_admin)
    .bind(&client.status)
    .bind(&client.tls_anchor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces the client's audiences and the scopes it may have at each.
pub async fn replace_client_audiences(
    conn: &mut PgConnection,
    client_id: &str,
    audiences: &BTreeMap<String, Vec<String>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM client_audiences WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut *conn)
        .await?;
    for (audience, scopes) in audiences {
        sqlx::query(
            "INSERT INTO client_audiences (client_id, audience_id, scopes) VALUES ($1, $2, $3)",
        )
        .bind(client_id)
        .bind(audience)
        .bind(scopes)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

//! Registry seed files (`seed/dev.toml` for `dev`; tests build the same structure in code):
//! partners, audiences and clients, upserted so that applying a seed twice changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub mod agreements;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seed {
    #[serde(default)]
    pub partners: Vec<PartnerSeed>,
    #[serde(default)]
    pub audiences: Vec<AudienceSeed>,
    #[serde(default)]
    pub clients: Vec<ClientSeed>,
    /// Partners' trust profiles (applied by [`Seed::apply_agreements`]).
    #[serde(default)]
    pub trust_profiles: Vec<agreements::TrustProfileSeed>,
    /// Consents between partners (applied by [`Seed::apply_agreements`]).
    #[serde(default)]
    pub consents: Vec<agreements::ConsentSeed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnerSeed {
    pub id: String,
    pub name: String,
    pub region: String,
    #[serde(default = "active")]
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudienceSeed {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub max_lifetime_s: i32,
    #[serde(default = "yes")]
    pub require_certificate_bound: bool,
    pub region: String,
    #[serde(default = "standard")]
    pub kind: String,
    #[serde(default)]
    pub cross_region_allowed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientSeed {
    pub id: String,
    pub partner: String,
    pub name: String,
    pub auth_method: String,
    pub tls_subject_dn: Option<String>,
    pub tls_san_dns: Option<String>,
    pub tls_san_uri: Option<String>,
    pub tls_san_ip: Option<String>,
    pub tls_san_email: Option<String>,
    /// For `tls_client_auth`: `server` (the operator's client CA, the default) or `partner`
    /// (the client CA of the client's own partner's trust profile).
    pub tls_anchor: Option<String>,
    pub jwks: Option<serde_json::Value>,
    #[serde(default = "client_credentials")]
    pub grant_types: Vec<String>,
    pub max_lifetime_s: i32,
    pub resource_audience: Option<String>,
    #[serde(default)]
    pub is_admin: bool,
    #[serde(default = "active")]
    pub status: String,
    /// Audience id → scopes this client may have there.
    #[serde(default)]
    pub audiences: BTreeMap<String, Vec<String>>,
}

fn active() -> String {
    "active".to_owned()
}

fn standard() -> String {
    "standard".to_owned()
}

fn yes() -> bool {
    true
}

fn client_credentials() -> Vec<String> {
    vec!["client_credentials".to_owned()]
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("reading seed file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("applying seed: {0}")]
    Database(#[from] sqlx::Error),
}

impl Seed {
    pub fn from_file(path: &Path) -> Result<Self, SeedError> {
        let file_error = |reason: String| SeedError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
        toml::from_str(&text).map_err(|error| file_error(error.to_string()))
    }

    /// Upserts everything in one transaction; the database's constraints validate it.
    pub async fn apply(&self, pool: &PgPool) -> Result<(), SeedError> {
        let mut tx = pool.begin().await?;
        for partner in &self.partners {
            sqlx::query(
                "INSERT INTO partners (id, name, region, status) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE
                   SET name = EXCLUDED.name, region = EXCLUDED.region, status = EXCLUDED.status",
            )
            .bind(&partner.id)
            .bind(&partner.name)
            .bind(&partner.region)
            .bind(&partner.status)
            .execute(&mut *tx)
            .await?;
        }
        for audience in &self.audiences {
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
            .execute(&mut *tx)
            .await?;
        }
        for client in &self.clients {
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
            // Stored in one spelling, so that the uniqueness of identities is structural.
            .bind(client.tls_subject_dn.as_deref().map(|dn| {
                crate::tls::DistinguishedName::parse(dn).map_or_else(|| dn.to_owned(), |dn| dn.to_string())
            }))
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
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM client_audiences WHERE client_id = $1")
                .bind(&client.id)
                .execute(&mut *tx)
                .await?;
            for (audience, scopes) in &client.audiences {
                sqlx::query(
                    "INSERT INTO client_audiences (client_id, audience_id, scopes)
                     VALUES ($1, $2, $3)",
                )
                .bind(&client.id)
                .bind(audience)
                .bind(scopes)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

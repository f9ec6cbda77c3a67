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
        use crate::storage::seed;
        let mut tx = pool.begin().await?;
        for partner in &self.partners {
            seed::upsert_partner(&mut tx, partner).await?;
        }
        for audience in &self.audiences {
            seed::upsert_audience(&mut tx, audience).await?;
        }
        for client in &self.clients {
            // Stored in one spelling, so that the uniqueness of identities is structural.
            let subject_dn = client.tls_subject_dn.as_deref().map(|dn| {
                crate::tls::DistinguishedName::parse(dn)
                    .map_or_else(|| dn.to_owned(), |dn| dn.to_string())
            });
            seed::upsert_client(&mut tx, client, subject_dn.as_deref()).await?;
            seed::replace_client_audiences(&mut tx, &client.id, &client.audiences).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

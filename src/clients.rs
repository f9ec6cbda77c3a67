//! Registered clients and the cache nodes read them through.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use sqlx::{PgConnection, PgPool};

use crate::audiences::{self, Audience, AudienceId};
use crate::cache::Cache;
use crate::grants::GrantType;
use crate::scopes::ScopeSet;
use crate::tls::{ClientCertificate, DistinguishedName, SubjectAltName, TrustAnchor};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(value: &str) -> Option<Self> {
        let valid = (1..=128).contains(&value.len())
            && value
                .bytes()
                .next()
                .is_some_and(|first| first.is_ascii_alphanumeric())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        valid.then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartnerId(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
}

impl Status {
    fn parse(value: &str) -> Self {
        // Anything but an explicit "active" fails closed.
        if value == "active" {
            Self::Active
        } else {
            Self::Suspended
        }
    }
}

/// The one certificate identity a `tls_client_auth` client must present (RFC 8705 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateIdentity {
    SubjectDn(DistinguishedName),
    SanDns(String),
    SanUri(String),
    SanIp(IpAddr),
    SanEmail(String),
}

impl CertificateIdentity {
    /// Exact comparison: the whole DN structurally, or one SAN of the registered type equal
    /// to the registered value (DNS names compare case-insensitively, as DNS does).
    pub fn matches(&self, certificate: &ClientCertificate) -> bool {
        let sans = &certificate.subject_alt_names;
        match self {
            Self::SubjectDn(dn) => certificate.subject == *dn,
            Self::SanDns(name) => sans.iter().any(
                |san| matches!(san, SubjectAltName::Dns(value) if value.eq_ignore_ascii_case(name)),
            ),
            Self::SanUri(uri) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Uri(value) if value == uri)),
            Self::SanIp(ip) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Ip(value) if value == ip)),
            Self::SanEmail(email) => sans
                .iter()
                .any(|san| matches!(san, SubjectAltName::Email(value) if value == email)),
        }
    }
}

/// The anchor a `tls_client_auth` client's certificate must chain to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateAnchor {
    /// The operator's client CA.
    Server,
    /// The client CA of the client's own partner's active trust profile.
    Partner,
}

#[derive(Debug, Clone)]
pub enum Authentication {
    /// RFC 8705 §2.1: a certificate with the registered identity, chained to the registered
    /// anchor.
    TlsClientAuth(CertificateIdentity, CertificateAnchor),
    /// RFC 8705 §2.2: a self-signed certificate registered in the client's JWKS (`x5c`).
    SelfSignedTlsClientAuth(JwkSet),
    /// RFC 7523: a JWT signed with a key in the client's JWKS.
    PrivateKeyJwt(JwkSet),
}

impl Authentication {
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::TlsClientAuth(..) => "tls_client_auth",
            Self::SelfSignedTlsClientAuth(_) => "self_signed_tls_client_auth",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub partner: PartnerId,
    pub partner_region: String,
    pub name: String,
    pub authentication: Authentication,
    pub grant_types: Vec<GrantType>,
    pub max_lifetime: Duration,
    /// Allowed audiences, each with the scopes this client may have there.
    pub audiences: HashMap<AudienceId, ScopeSet>,
    pub resource_audience: Option<AudienceId>,
    pub is_admin: bool,
    /// Suspended when either the client or its partner is.
    pub status: Status,
}

impl Client {
    /// Whether the certificate is this client's: for `tls_client_auth`, the registered
    /// identity verified under the client's own anchor (never another partner's CA, never a
    /// pinned certificate); for `self_signed_tls_client_auth`, a pinned certificate that this
    /// client registered. The error is the audited reason.
    pub fn owns_certificate(&self, certificate: &ClientCertificate) -> Result<(), &'static str> {
        match &self.authentication {
            Authentication::TlsClientAuth(identity, anchor) => {
                let anchor = match anchor {
                    CertificateAnchor::Server => TrustAnchor::Server,
                    CertificateAnchor::Partner => TrustAnchor::Partner(self.partner.0.clone()),
                };
                if !identity.matches(certificate) {
                    return Err("certificate does not match the registered identity");
                }
                if !certificate.anchored_by(&anchor) {
                    return Err("certificate is not verified by the client's trust anchor");
                }
                Ok(())
            }
            Authentication::SelfSignedTlsClientAuth(jwks) => {
                if !registered_certificate(jwks, certificate) {
                    return Err("certificate does not match the registered identity");
                }
                if !certificate.anchored_by(&TrustAnchor::Pinned) {
                    return Err("certificate is not pinned");
                }
                Ok(())
            }
            Authentication::PrivateKeyJwt(_) => Err("client is registered for private_key_jwt"),
        }
    }

    pub fn allows_grant(&self, grant_type: GrantType) -> bool {
        self.grant_types.contains(&grant_type)
    }
}

/// RFC 8705 §2.2: the presented certificate is one of the client's registered `x5c` leaves.
fn registered_certificate(jwks: &JwkSet, certificate: &ClientCertificate) -> bool {
    use base64::Engine;
    jwks.keys.iter().any(|jwk| {
        jwk.common
            .x509_chain
            .as_ref()
            .and_then(|chain| chain.first())
            .and_then(|leaf| base64::engine::general_purpose::STANDARD.decode(leaf).ok())
            .is_some_and(|der| der == certificate.der.as_ref())
    })
}

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
    let jwks = || -> Result<JwkSet, RegistryError> {
        serde_json::from_value(row.jwks.clone().ok_or_else(malformed)?).map_err(|_| malformed())
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
        partner: PartnerId(row.partner_id),
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
pub async fn self_signed_certificates(
    pool: &PgPool,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, RegistryError> {
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
        .map(rustls::pki_types::CertificateDer::from)
        .collect())
}

/// Registry entries a node keeps; beyond it the oldest goes first.
const REGISTRY_CACHE_ENTRIES: usize = 10_000;

/// Clients and audiences as this node sees them: read through a short-lived cache so the
/// token hot path rarely touches the database, while a suspension or a change reaches every
/// node within `registry.cache_ttl_ms`. Unknown ids are not cached, so probing cannot grow it.
pub struct Registry {
    pool: PgPool,
    clients: Cache<ClientId, Arc<Client>>,
    audiences: Cache<AudienceId, Arc<Audience>>,
}

impl Registry {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            clients: Cache::new(REGISTRY_CACHE_ENTRIES, Some(ttl)),
            audiences: Cache::new(REGISTRY_CACHE_ENTRIES, Some(ttl)),
        }
    }

    /// Forgets every cached entry: the registry changed (see `service::admin::propagation`).
    pub fn forget_all(&self) {
        self.clients.clear();
        self.audiences.clear();
    }

    pub async fn client(&self, id: &ClientId) -> Result<Option<Arc<Client>>, RegistryError> {
        if let Some(client) = self.clients.get(id) {
            return Ok(Some(client));
        }
        let mut conn = self.pool.acquire().await?;
        let client = find(&mut conn, id).await?.map(Arc::new);
        if let Some(client) = &client {
            self.clients.insert(id.clone(), client.clone());
        }
        Ok(client)
    }

    pub async fn audience(&self, id: &AudienceId) -> Result<Option<Arc<Audience>>, RegistryError> {
        if let Some(audience) = self.audiences.get(id) {
            return Ok(Some(audience));
        }
        let mut conn = self.pool.acquire().await?;
        let audience = audiences::find(&mut conn, id).await?.map(Arc::new);
        if let Some(audience) = &audience {
            self.audiences.insert(id.clone(), audience.clone());
        }
        Ok(audience)
    }
}

#[cfg(test)]
mod tests {
    use super::ClientId;

    #[test]
    fn client_ids_are_plain_tokens() {
        assert!(ClientId::parse("partner-a.settlement").is_some());
        assert!(ClientId::parse("").is_none());
        assert!(ClientId::parse("-lead").is_none());
        assert!(ClientId::parse("a b").is_none());
        assert!(ClientId::parse(&"a".repeat(129)).is_none());
    }
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
            .map(|(id, not_after)| (id.0, not_after))
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

//! Admins, their roles, the resources they edit and the rules for editing them: what is
//! valid, and which changes widen reach (and so wait for a second admin's approval).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What an admin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read the registry.
    Viewer,
    /// Propose changes; make narrowing changes at once.
    Editor,
    /// Approve or reject other admins' proposals.
    Approver,
    /// Read the audit trail.
    Auditor,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Viewer, Self::Editor, Self::Approver, Self::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Approver => "approver",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == value)
    }

    /// Parses a comma-separated list; at least one role, each known, none twice.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, String> {
        let mut roles = Vec::new();
        for name in value.split(',').map(str::trim) {
            let role = Self::parse(name).ok_or_else(|| {
                format!("unknown role `{name}` (viewer, editor, approver or auditor)")
            })?;
            if roles.contains(&role) {
                return Err(format!("role `{name}` given twice"));
            }
            roles.push(role);
        }
        if roles.is_empty() {
            return Err("at least one role is needed".to_owned());
        }
        roles.sort();
        Ok(roles)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin as registered: a certificate identity under the admin trust anchor, with roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admin {
    pub id: String,
    pub subject_dn: String,
    pub roles: Vec<Role>,
    pub active: bool,
    pub version: i32,
}

impl Admin {
    /// Every role but `viewer` includes reading the registry.
    pub fn may(&self, role: Role) -> bool {
        self.active
            && (self.roles.contains(&role) || (role == Role::Viewer && !self.roles.is_empty()))
    }
}

/// Admin and partner ids: lowercase letters, digits, `.`, `_` and `-`, at most 64.
pub fn is_plain_id(value: &str) -> bool {
    let mut chars = value.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && value.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Which input was refused and by which rule; the admin API names both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub rule: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: &str, rule: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            rule,
            detail: detail.into(),
        }
    }
}

/// A JSON object body, read field by field so that every refusal names its field.
pub struct Body(Map<String, Value>);

impl Body {
    pub fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|error| FieldError::new("", "json", format!("not JSON: {error}")))?;
        let Value::Object(map) = value else {
            return Err(FieldError::new(
                "",
                "object",
                "the body must be a JSON object",
            ));
        };
        if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Err(FieldError::new(
                unknown,
                "known_field",
                format!("unknown field (allowed: {})", allowed.join(", ")),
            ));
        }
        Ok(Self(map))
    }

    pub fn text(&self, field: &str) -> Result<Option<String>, FieldError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(FieldError::new(field, "string", "must be a string")),
        }
    }

    pub fn required_text(&self, field: &str) -> Result<String, FieldError> {
        self.text(field)?
            .ok_or_else(|| FieldError::new(field, "required", "is required"))
    }
}

/// A partner's registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub region: String,
    pub status: PartnerStatus,
    pub version: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerStatus {
    Active,
    Suspended,
}

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        match value {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            _ => Err(FieldError::new(
                field,
                "enum",
                "must be `active` or `suspended`",
            )),
        }
    }
}

pub fn validate_name(field: &str, name: &str) -> Result<(), FieldError> {
    let length = name.chars().count();
    if !(1..=200).contains(&length) || name.trim() != name || name.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "name",
            "1 to 200 characters, no control characters or surrounding spaces",
        ));
    }
    Ok(())
}

/// Regions are short lowercase codes (`eu`, `us`, `eu-west`).
pub fn validate_region(field: &str, region: &str) -> Result<(), FieldError> {
    let valid = (2..=32).contains(&region.len())
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(FieldError::new(
            field,
            "region",
            "2 to 32 lowercase letters, digits or `-`, starting with a letter",
        ));
    }
    Ok(())
}

/// A new partner: it reaches nothing until a trust profile or a client is added (each of
/// which is reviewed), so creating it takes effect at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartner {
    pub id: String,
    pub name: String,
    pub region: String,
}

impl NewPartner {
    pub const FIELDS: [&'static str; 3] = ["id", "name", "region"];

    pub fn from_body(body: &Body) -> Result<Self, FieldError> {
        let id = body.required_text("id")?;
        if !is_plain_id(&id) {
            return Err(FieldError::new(
                "id",
                "plain_id",
                "lowercase letters, digits, `.`, `_` or `-`, at most 64, starting with a letter or digit",
            ));
        }
        let name = body.required_text("name")?;
        validate_name("name", &name)?;
        let region = body.required_text("region")?;
        validate_region("region", &region)?;
        Ok(Self { id, name, region })
    }
}

/// Changes to a partner; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<PartnerStatus>,
}

/// Whether a change takes effect at once or waits for a second admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Nothing anybody may do grows: applied at once.
    Narrows,
    /// Somebody may do more afterwards (or somewhere else): a proposal.
    Widens,
}

impl PartnerUpdate {
    pub const FIELDS: [&'static str; 3] = ["name", "region", "status"];

    pub fn from_body(body: &Body) -> Result<Self, FieldError> {
        let name = body.text("name")?;
        if let Some(name) = &name {
            validate_name("name", name)?;
        }
        let region = body.text("region")?;
        if let Some(region) = &region {
            validate_region("region", region)?;
        }
        let status = body
            .text("status")?
            .map(|status| PartnerStatus::parse("status", &status))
            .transpose()?;
        if name.is_none() && region.is_none() && status.is_none() {
            return Err(FieldError::new(
                "",
                "non_empty",
                "name, region or status must be given",
            ));
        }
        Ok(Self {
            name,
            region,
            status,
        })
    }

    pub fn applied_to(&self, partner: &Partner) -> Partner {
        Partner {
            name: self.name.clone().unwrap_or_else(|| partner.name.clone()),
            region: self
                .region
                .clone()
                .unwrap_or_else(|| partner.region.clone()),
            status: self.status.unwrap_or(partner.status),
            version: partner.version.saturating_add(1),
            id: partner.id.clone(),
        }
    }

    /// Reactivating a suspended partner restores its reach, and moving it to another region
    /// changes where its data may go: both wait for approval. Suspending and renaming do not.
    pub fn reach(&self, partner: &Partner) -> Reach {
        let reactivates = self.status == Some(PartnerStatus::Active)
            && partner.status == PartnerStatus::Suspended;
        let moves = self
            .region
            .as_ref()
            .is_some_and(|region| *region != partner.region);
        if reactivates || moves {
            Reach::Widens
        } else {
            Reach::Narrows
        }
    }
}

/// Before and after, field by field, of what differs.
pub fn diff(before: &Value, after: &Value) -> Value {
    let (Value::Object(before), Value::Object(after)) = (before, after) else {
        return serde_json::json!({ "before": before, "after": after });
    };
    let mut changed = Map::new();
    for (key, new) in after {
        let old = before.get(key).unwrap_or(&Value::Null);
        if old != new && key != "version" {
            changed.insert(
                key.clone(),
                serde_json::json!({ "before": old, "after": new }),
            );
        }
    }
    for (key, old) in before {
        if !after.contains_key(key) {
            changed.insert(
                key.clone(),
                serde_json::json!({ "before": old, "after": null }),
            );
        }
    }
    Value::Object(changed)
}

/// What a proposal would do, as stored until it is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum ProposedChange {
    PartnerUpdate(PartnerUpdate),
    /// Make this stored version the partner's active trust profile (a roll-back included).
    ActivateTrustProfile {
        version: i32,
    },
    GrantConsent(ConsentGrant),
    CreateClient(ClientDoc),
    /// Replace the client (at `base_version`) with this state.
    UpdateClient(ClientDoc),
    UpdateAudience(AudienceDoc),
    UpdateAdmin(AdminUpdate),
}

impl ProposedChange {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PartnerUpdate(_) => "partner_update",
            Self::ActivateTrustProfile { .. } => "activate_trust_profile",
            Self::GrantConsent(_) => "grant_consent",
            Self::CreateClient(_) => "create_client",
            Self::UpdateClient(_) => "update_client",
            Self::UpdateAudience(_) => "update_audience",
            Self::UpdateAdmin(_) => "update_admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Pending,
    Approved,
    Rejected,
}

impl ProposalStatus {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// A widening change waiting for (or decided by) an approver other than its author.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposal {
    pub id: uuid::Uuid,
    pub target: String,
    #[serde(flatten)]
    pub change: ProposedChange,
    pub base_version: Option<i32>,
    pub diff: Value,
    pub author: String,
    pub status: ProposalStatus,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub version: i32,
}

/// Algorithms a trust profile may allow: asymmetric only, never `none` or HMAC.
pub const PROFILE_ALGORITHMS: [&str; 6] = ["ES256", "ES384", "EdDSA", "PS256", "PS384", "RS256"];

/// Longest assertion lifetime a profile may allow.
pub const MAX_ASSERTION_LIFETIME_S: i32 = 86_400;

/// One version of a partner's trust profile as the admin API reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustProfileDoc {
    pub issuers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<String>,
    pub max_assertion_lifetime_s: i32,
    #[serde(default)]
    pub required_claims: Map<String, Value>,
    #[serde(default = "single_use_default")]
    pub single_use: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_pem: Option<String>,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub region: String,
    #[serde(default = "active_default")]
    pub status: PartnerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_typ: Option<String>,
}

fn single_use_default() -> bool {
    true
}

fn active_default() -> PartnerStatus {
    PartnerStatus::Active
}

impl TrustProfileDoc {
    pub const FIELDS: [&'static str; 13] = [
        "issuers",
        "jwks",
        "jwks_uri",
        "algorithms",
        "max_assertion_lifetime_s",
        "required_claims",
        "single_use",
        "client_ca_pem",
        "audiences",
        "scopes",
        "region",
        "status",
        "required_typ",
    ];

    /// Reads and checks a profile; PEM and key-set contents are checked by the service, which
    /// has the parsers.
    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::FIELDS)?;
        for required in [
            "issuers",
            "algorithms",
            "max_assertion_lifetime_s",
            "audiences",
            "scopes",
            "region",
        ] {
            if !body.0.contains_key(required) {
                return Err(FieldError::new(required, "required", "is required"));
            }
        }
        let doc: Self = serde_json::from_value(Value::Object(body.0)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        if self.issuers.is_empty() {
            return Err(FieldError::new(
                "issuers",
                "non_empty",
                "at least one issuer",
            ));
        }
        if let Some(issuer) = self.issuers.iter().find(|issuer| !is_https_url(issuer)) {
            return Err(FieldError::new(
                "issuers",
                "https_url",
                format!("`{issuer}` is not an https URL"),
            ));
        }
        match (&self.jwks, &self.jwks_uri) {
            (Some(jwks), None) => {
                if !jwks.get("keys").is_some_and(Value::is_array) {
                    return Err(FieldError::new(
                        "jwks",
                        "jwk_set",
                        "must be a JWK set with `keys`",
                    ));
                }
            }
            (None, Some(uri)) => {
                if !is_https_url(uri) {
                    return Err(FieldError::new(
                        "jwks_uri",
                        "https_url",
                        "must be an https URL",
                    ));
                }
            }
            _ => {
                return Err(FieldError::new(
                    "jwks",
                    "one_key_source",
                    "exactly one of `jwks` and `jwks_uri`",
                ));
            }
        }
        if self.algorithms.is_empty()
            || self
                .algorithms
                .iter()
                .any(|algorithm| !PROFILE_ALGORITHMS.contains(&algorithm.as_str()))
        {
            return Err(FieldError::new(
                "algorithms",
                "asymmetric_algorithms",
                format!("one or more of {}", PROFILE_ALGORITHMS.join(", ")),
            ));
        }
        if !(1..=MAX_ASSERTION_LIFETIME_S).contains(&self.max_assertion_lifetime_s) {
            return Err(FieldError::new(
                "max_assertion_lifetime_s",
                "range",
                format!("1 to {MAX_ASSERTION_LIFETIME_S} seconds"),
            ));
        }
        if let Some(scope) = self.scopes.iter().find(|scope| {
            scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(FieldError::new(
                "scopes",
                "scope_token",
                format!("`{scope}` is not a scope token"),
            ));
        }
        validate_region("region", &self.region)?;
        Ok(())
    }

    /// Why activating `self` in place of `active` widens reach; empty when it only narrows.
    pub fn widens(&self, active: Option<&Self>) -> Vec<&'static str> {
        let Some(active) = active else {
            return vec!["first trust profile of the partner"];
        };
        let not_within =
            |next: &[String], current: &[String]| next.iter().any(|item| !current.contains(item));
        let mut reasons = Vec::new();
        if self.status == PartnerStatus::Active && active.status == PartnerStatus::Suspended {
            reasons.push("reactivates the profile");
        }
        if not_within(&self.issuers, &active.issuers) {
            reasons.push("new issuer");
        }
        if self.jwks != active.jwks || self.jwks_uri != active.jwks_uri {
            reasons.push("new key source");
        }
        if not_within(&self.algorithms, &active.algorithms) {
            reasons.push("more algorithms");
        }
        if self.max_assertion_lifetime_s > active.max_assertion_lifetime_s {
            reasons.push("longer assertion lifetime");
        }
        if active
            .required_claims
            .iter()
            .any(|(claim, value)| self.required_claims.get(claim) != Some(value))
        {
            reasons.push("fewer required claims");
        }
        if active.single_use && !self.single_use {
            reasons.push("assertions no longer single-use");
        }
        if self.client_ca_pem.is_some() && self.client_ca_pem != active.client_ca_pem {
            reasons.push("new client CA");
        }
        if not_within(&self.audiences, &active.audiences) {
            reasons.push("more audiences");
        }
        if not_within(&self.scopes, &active.scopes) {
            reasons.push("more scopes");
        }
        if self.region != active.region {
            reasons.push("another region");
        }
        if active.required_typ.is_some() && self.required_typ != active.required_typ {
            reasons.push("required typ dropped or changed");
        }
        reasons
    }
}

fn is_https_url(value: &str) -> bool {
    value.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty() && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// A stored version with who made it and whether it is the partner's active one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustProfileVersion {
    pub partner: String,
    pub version: i32,
    pub active: bool,
    pub created_by: String,
    #[serde(flatten)]
    pub profile: TrustProfileDoc,
}

/// A consent to grant, as the admin API receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGrant {
    pub grantor: String,
    pub grantee_partner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee_client: Option<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_until: time::OffsetDateTime,
    pub legal_basis: String,
    #[serde(default)]
    pub constraints: Map<String, Value>,
}

impl ConsentGrant {
    pub const FIELDS: [&'static str; 9] = [
        "grantor",
        "grantee_partner",
        "grantee_client",
        "scopes",
        "audiences",
        "effective_from",
        "effective_until",
        "legal_basis",
        "constraints",
    ];

    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::FIELDS)?;
        for required in [
            "grantor",
            "grantee_partner",
            "scopes",
            "audiences",
            "effective_from",
            "effective_until",
            "legal_basis",
        ] {
            if !body.0.contains_key(required) {
                return Err(FieldError::new(required, "required", "is required"));
            }
        }
        for field in ["effective_from", "effective_until"] {
            let valid = body.text(field)?.is_some_and(|text| {
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            });
            if !valid {
                return Err(FieldError::new(field, "rfc3339", "an RFC 3339 time"));
            }
        }
        let grant: Self = serde_json::from_value(Value::Object(body.0)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        if grant.effective_until <= grant.effective_from {
            return Err(FieldError::new(
                "effective_until",
                "after_effective_from",
                "must be later than effective_from",
            ));
        }
        if grant.scopes.is_empty()
            || grant
                .scopes
                .iter()
                .any(|scope| scope.is_empty() || scope.chars().any(char::is_whitespace))
        {
            return Err(FieldError::new(
                "scopes",
                "scope_tokens",
                "one or more scope tokens",
            ));
        }
        if grant.audiences.is_empty() {
            return Err(FieldError::new(
                "audiences",
                "non_empty",
                "one or more audiences",
            ));
        }
        validate_name("legal_basis", &grant.legal_basis)?;
        Ok(grant)
    }
}

/// A consent's current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentRecord {
    pub id: uuid::Uuid,
    pub version: i32,
    #[serde(flatten)]
    pub grant: ConsentGrant,
    pub status: String,
    pub changed_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// Which consents to list; every filter given must match.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConsentFilter {
    pub grantor: Option<String>,
    pub grantee: Option<String>,
    pub audience: Option<String>,
    pub status: Option<String>,
}

/// Grant types a client may be registered for.
pub const GRANT_TYPES: [&str; 2] = [
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
];

/// Longest token lifetime a client or audience may cap at.
pub const MAX_TOKEN_LIFETIME_S: i32 = 86_400;

/// An OAuth client as the admin API registers it: its certificate identity and the anchor
/// that identity must chain to, or its keys; grants, per-audience scopes, lifetime cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDoc {
    pub id: String,
    pub partner: String,
    pub name: String,
    pub auth_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_subject_dn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_san_dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_san_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_san_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_san_email: Option<String>,
    /// `server` (the operator's client CA) or `partner` (the partner's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_anchor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    pub grant_types: Vec<String>,
    pub max_lifetime_s: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_audience: Option<String>,
    #[serde(default)]
    pub audiences: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default = "active_default")]
    pub status: PartnerStatus,
}

impl ClientDoc {
    pub const FIELDS: [&'static str; 16] = [
        "id",
        "partner",
        "name",
        "auth_method",
        "tls_subject_dn",
        "tls_san_dns",
        "tls_san_uri",
        "tls_san_ip",
        "tls_san_email",
        "tls_anchor",
        "jwks",
        "grant_types",
        "max_lifetime_s",
        "resource_audience",
        "audiences",
        "status",
    ];

    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::FIELDS)?;
        for required in [
            "id",
            "partner",
            "name",
            "auth_method",
            "grant_types",
            "max_lifetime_s",
        ] {
            if !body.0.contains_key(required) {
                return Err(FieldError::new(required, "required", "is required"));
            }
        }
        let doc: Self = serde_json::from_value(Value::Object(body.0)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if self.id.is_empty()
            || self.id.len() > 128
            || !self.id.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !self.id.chars().all(plain)
        {
            return Err(FieldError::new(
                "id",
                "client_id",
                "letters, digits, `.`, `_`, `:` or `-`, at most 128",
            ));
        }
        validate_name("name", &self.name)?;
        let identities = [
            &self.tls_subject_dn,
            &self.tls_san_dns,
            &self.tls_san_uri,
            &self.tls_san_ip,
            &self.tls_san_email,
        ]
        .iter()
        .filter(|identity| identity.is_some())
        .count();
        match self.auth_method.as_str() {
            "tls_client_auth" => {
                if identities != 1 || self.jwks.is_some() {
                    return Err(FieldError::new(
                        "tls_subject_dn",
                        "one_certificate_identity",
                        "exactly one of tls_subject_dn, tls_san_dns, tls_san_uri, tls_san_ip, \
                         tls_san_email, and no jwks",
                    ));
                }
                if !matches!(self.tls_anchor.as_deref(), Some("server" | "partner")) {
                    return Err(FieldError::new(
                        "tls_anchor",
                        "enum",
                        "`server` or `partner`: the CA the certificate must chain to",
                    ));
                }
            }
            "self_signed_tls_client_auth" | "private_key_jwt" => {
                if identities != 0 || self.tls_anchor.is_some() {
                    return Err(FieldError::new(
                        "tls_anchor",
                        "no_certificate_identity",
                        "only tls_client_auth clients name a certificate identity",
                    ));
                }
                if !self
                    .jwks
                    .as_ref()
                    .is_some_and(|jwks| jwks.get("keys").is_some_and(Value::is_array))
                {
                    return Err(FieldError::new("jwks", "jwk_set", "a JWK set with `keys`"));
                }
            }
            _ => {
                return Err(FieldError::new(
                    "auth_method",
                    "enum",
                    "tls_client_auth, self_signed_tls_client_auth or private_key_jwt",
                ));
            }
        }
        if let Some(grant) = self
            .grant_types
            .iter()
            .find(|grant| !GRANT_TYPES.contains(&grant.as_str()))
        {
            return Err(FieldError::new(
                "grant_types",
                "enum",
                format!("`{grant}` is not a supported grant type"),
            ));
        }
        validate_lifetime("max_lifetime_s", self.max_lifetime_s)?;
        validate_scope_map(&self.audiences)
    }

    /// Why `self` reaches further than `current`; empty when it does not.
    pub fn widens(&self, current: &Self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.status == PartnerStatus::Active && current.status == PartnerStatus::Suspended {
            reasons.push("reactivates the client");
        }
        if self.max_lifetime_s > current.max_lifetime_s {
            reasons.push("longer lifetime cap");
        }
        if self
            .grant_types
            .iter()
            .any(|grant| !current.grant_types.contains(grant))
        {
            reasons.push("more grant types");
        }
        for (audience, scopes) in &self.audiences {
            match current.audiences.get(audience) {
                None => {
                    reasons.push("more audiences");
                }
                Some(granted) if scopes.iter().any(|scope| !granted.contains(scope)) => {
                    reasons.push("more scopes");
                }
                Some(_) => {}
            }
        }
        reasons.dedup();
        reasons
    }
}

/// Changes to a client; absent fields stay as they are. Identity and partner never change:
/// that is another client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PartnerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_s: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl ClientUpdate {
    pub const FIELDS: [&'static str; 5] = [
        "name",
        "status",
        "max_lifetime_s",
        "grant_types",
        "audiences",
    ];

    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::FIELDS)?;
        if body.0.is_empty() {
            return Err(FieldError::new("", "non_empty", "nothing to change"));
        }
        let update: Self = serde_json::from_value(Value::Object(body.0)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        Ok(update)
    }

    /// The client after the update, validated as a whole.
    pub fn applied_to(&self, client: &ClientDoc) -> Result<ClientDoc, FieldError> {
        let updated = ClientDoc {
            name: self.name.clone().unwrap_or_else(|| client.name.clone()),
            status: self.status.unwrap_or(client.status),
            max_lifetime_s: self.max_lifetime_s.unwrap_or(client.max_lifetime_s),
            grant_types: self
                .grant_types
                .clone()
                .unwrap_or_else(|| client.grant_types.clone()),
            audiences: self
                .audiences
                .clone()
                .unwrap_or_else(|| client.audiences.clone()),
            ..client.clone()
        };
        updated.validate()?;
        Ok(updated)
    }
}

fn validate_lifetime(field: &str, seconds: i32) -> Result<(), FieldError> {
    if !(1..=MAX_TOKEN_LIFETIME_S).contains(&seconds) {
        return Err(FieldError::new(
            field,
            "range",
            format!("1 to {MAX_TOKEN_LIFETIME_S} seconds"),
        ));
    }
    Ok(())
}

fn validate_scope_map(
    audiences: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<(), FieldError> {
    let bad = audiences.values().flatten().find(|scope| {
        scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    match bad {
        Some(scope) => Err(FieldError::new(
            "audiences",
            "scope_token",
            format!("`{scope}` is not a scope token"),
        )),
        None => Ok(()),
    }
}

/// A resource server's audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceDoc {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub max_lifetime_s: i32,
    #[serde(default = "single_use_default")]
    pub require_certificate_bound: bool,
    pub region: String,
    #[serde(default = "standard_kind")]
    pub kind: String,
    #[serde(default)]
    pub cross_region_allowed: bool,
}

fn standard_kind() -> String {
    "standard".to_owned()
}

impl AudienceDoc {
    pub const FIELDS: [&'static str; 8] = [
        "id",
        "name",
        "scopes",
        "max_lifetime_s",
        "require_certificate_bound",
        "region",
        "kind",
        "cross_region_allowed",
    ];
    pub const UPDATABLE: [&'static str; 5] = [
        "name",
        "scopes",
        "max_lifetime_s",
        "require_certificate_bound",
        "cross_region_allowed",
    ];

    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::FIELDS)?;
        for required in ["id", "name", "scopes", "max_lifetime_s", "region"] {
            if !body.0.contains_key(required) {
                return Err(FieldError::new(required, "required", "is required"));
            }
        }
        let doc: Self = serde_json::from_value(Value::Object(body.0)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// The audience with the fields of `body` replaced (only the updatable ones).
    pub fn updated(&self, bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &Self::UPDATABLE)?;
        if body.0.is_empty() {
            return Err(FieldError::new("", "non_empty", "nothing to change"));
        }
        let mut merged = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        merged.extend(body.0);
        let doc: Self = serde_json::from_value(Value::Object(merged)).map_err(|error| {
            FieldError::new("", "type", format!("a field has the wrong type: {error}"))
        })?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        let valid_id = self.id.split_once(':').is_some_and(|(scheme, rest)| {
            scheme.starts_with(|c: char| c.is_ascii_lowercase())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
                && !rest.is_empty()
                && !rest.chars().any(char::is_whitespace)
        });
        if !valid_id {
            return Err(FieldError::new(
                "id",
                "uri",
                "an absolute URI, e.g. https://ledger.example",
            ));
        }
        validate_name("name", &self.name)?;
        if self.scopes.is_empty()
            || self
                .scopes
                .iter()
                .any(|scope| scope.is_empty() || scope.chars().any(char::is_whitespace))
        {
            return Err(FieldError::new(
                "scopes",
                "scope_tokens",
                "one or more scope tokens",
            ));
        }
        validate_lifetime("max_lifetime_s", self.max_lifetime_s)?;
        validate_region("region", &self.region)?;
        if !matches!(self.kind.as_str(), "standard" | "settlement") {
            return Err(FieldError::new(
                "kind",
                "enum",
                "`standard` or `settlement`",
            ));
        }
        Ok(())
    }

    /// Why `self` lets tokens for this audience do more than `current`; empty when not.
    pub fn widens(&self, current: &Self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self
            .scopes
            .iter()
            .any(|scope| !current.scopes.contains(scope))
        {
            reasons.push("more scopes");
        }
        if self.max_lifetime_s > current.max_lifetime_s {
            reasons.push("longer lifetime cap");
        }
        if current.require_certificate_bound && !self.require_certificate_bound {
            reasons.push("bearer tokens accepted");
        }
        if self.cross_region_allowed && !current.cross_region_allowed {
            reasons.push("cross-region use allowed");
        }
        reasons
    }
}

/// A resource with its version (the `ETag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versioned<T> {
    #[serde(flatten)]
    pub doc: T,
    pub version: i32,
}

/// Changes to an admin: roles and status. Adding a role or reactivating widens (a
/// proposal); removing roles and suspending take effect at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PartnerStatus>,
}

impl AdminUpdate {
    pub fn from_body(bytes: &[u8]) -> Result<Self, FieldError> {
        let body = Body::parse(bytes, &["roles", "status"])?;
        let roles = match body.0.get("roles") {
            None => None,
            Some(Value::Array(names)) => {
                let joined = names
                    .iter()
                    .map(|name| name.as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                Some(
                    Role::parse_list(&joined)
                        .map_err(|reason| FieldError::new("roles", "roles", reason))?,
                )
            }
            Some(_) => return Err(FieldError::new("roles", "array", "a list of roles")),
        };
        let status = body
            .text("status")?
            .map(|status| PartnerStatus::parse("status", &status))
            .transpose()?;
        if roles.is_none() && status.is_none() {
            return Err(FieldError::new(
                "",
                "non_empty",
                "roles or status must be given",
            ));
        }
        Ok(Self { roles, status })
    }

    pub fn applied_to(&self, admin: &Admin) -> Admin {
        Admin {
            roles: self.roles.clone().unwrap_or_else(|| admin.roles.clone()),
            active: self
                .status
                .map_or(admin.active, |status| status == PartnerStatus::Active),
            version: admin.version.saturating_add(1),
            ..admin.clone()
        }
    }

    pub fn widens(&self, admin: &Admin) -> Vec<&'static str> {
        let after = self.applied_to(admin);
        let mut reasons = Vec::new();
        if after.roles.iter().any(|role| !admin.roles.contains(role)) {
            reasons.push("more roles");
        }
        if after.active && !admin.active {
            reasons.push("reactivates the admin");
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(status: PartnerStatus) -> Partner {
        Partner {
            id: "p".into(),
            name: "P".into(),
            region: "eu".into(),
            status,
            version: 1,
        }
    }

    #[test]
    fn roles_parse_as_a_list_of_known_names() {
        assert_eq!(
            Role::parse_list("approver, editor").unwrap(),
            [Role::Editor, Role::Approver]
        );
        assert!(Role::parse_list("root").is_err());
        assert!(Role::parse_list("editor,editor").is_err());
    }

    #[test]
    fn reactivating_or_moving_a_partner_widens_and_suspending_narrows() {
        let suspend = PartnerUpdate {
            status: Some(PartnerStatus::Suspended),
            ..PartnerUpdate::default()
        };
        assert_eq!(
            suspend.reach(&partner(PartnerStatus::Active)),
            Reach::Narrows
        );
        let reactivate = PartnerUpdate {
            status: Some(PartnerStatus::Active),
            ..PartnerUpdate::default()
        };
        assert_eq!(
            reactivate.reach(&partner(PartnerStatus::Suspended)),
            Reach::Widens
        );
        let moving = PartnerUpdate {
            region: Some("us".into()),
            ..PartnerUpdate::default()
        };
        assert_eq!(moving.reach(&partner(PartnerStatus::Active)), Reach::Widens);
    }

    #[test]
    fn the_diff_names_only_what_changed() {
        let before = serde_json::json!({"name": "a", "region": "eu", "version": 1});
        let after = serde_json::json!({"name": "b", "region": "eu", "version": 2});
        assert_eq!(
            diff(&before, &after),
            serde_json::json!({"name": {"before": "a", "after": "b"}})
        );
    }

    fn profile() -> TrustProfileDoc {
        TrustProfileDoc::from_body(
            serde_json::json!({
                "issuers": ["https://idp.test"],
                "jwks_uri": "https://idp.test/jwks",
                "algorithms": ["ES256"],
                "max_assertion_lifetime_s": 300,
                "required_claims": {"tenant": "d"},
                "audiences": ["https://ledger.test"],
                "scopes": ["ledger:read"],
                "region": "eu",
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_profile_widens_by_every_listed_kind_of_reach_and_narrowing_does_not() {
        let active = profile();
        assert!(profile().widens(Some(&active)).is_empty());
        assert_eq!(
            profile().widens(None),
            ["first trust profile of the partner"]
        );
        let narrower = TrustProfileDoc {
            scopes: Vec::new(),
            max_assertion_lifetime_s: 60,
            status: PartnerStatus::Suspended,
            ..profile()
        };
        assert!(narrower.widens(Some(&active)).is_empty());
        let wider = TrustProfileDoc {
            issuers: vec!["https://idp.test".into(), "https://other.test".into()],
            jwks_uri: Some("https://idp.test/other-jwks".into()),
            algorithms: vec!["ES256".into(), "RS256".into()],
            max_assertion_lifetime_s: 600,
            required_claims: Map::new(),
            single_use: false,
            client_ca_pem: Some("CA".into()),
            audiences: vec!["https://ledger.test".into(), "https://payments.test".into()],
            scopes: vec!["ledger:read".into(), "ledger:write".into()],
            region: "us".into(),
            ..profile()
        };
        assert_eq!(
            wider.widens(Some(&active)),
            [
                "new issuer",
                "new key source",
                "more algorithms",
                "longer assertion lifetime",
                "fewer required claims",
                "assertions no longer single-use",
                "new client CA",
                "more audiences",
                "more scopes",
                "another region",
            ]
        );
        assert_eq!(
            narrower.widens(Some(&TrustProfileDoc {
                status: PartnerStatus::Suspended,
                ..profile()
            })),
            Vec::<&str>::new()
        );
        assert_eq!(
            profile().widens(Some(&narrower)),
            [
                "reactivates the profile",
                "longer assertion lifetime",
                "more scopes"
            ]
        );
    }

    #[test]
    fn profiles_refuse_symmetric_algorithms_and_plain_http() {
        let refused = |change: serde_json::Value| {
            let mut body = serde_json::to_value(profile()).unwrap();
            for (key, value) in change.as_object().unwrap() {
                body[key] = value.clone();
            }
            TrustProfileDoc::from_body(body.to_string().as_bytes())
                .unwrap_err()
                .field
        };
        assert_eq!(
            refused(serde_json::json!({"algorithms": ["HS256"]})),
            "algorithms"
        );
        assert_eq!(
            refused(serde_json::json!({"algorithms": ["none"]})),
            "algorithms"
        );
        assert_eq!(
            refused(serde_json::json!({"issuers": ["http://idp.test"]})),
            "issuers"
        );
        assert_eq!(
            refused(serde_json::json!({"jwks": {"keys": []}})),
            "jwks",
            "two key sources"
        );
    }
}

//! Policy as code: the Cedar schema and policies in `policies/`, validated strictly against
//! the schema, decided on every issuance and exchange. Anything that goes wrong denies.
//! Reloading keeps the running set when the new one is invalid.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::audiences::Audience;
use crate::domain::clients::Client;
use crate::domain::scopes::ScopeSet;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("schema {path}: {reason}")]
    Schema { path: PathBuf, reason: String },
    #[error("policy file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("policy file {path}: every policy needs a unique @id annotation")]
    MissingId { path: PathBuf },
    #[error("policies do not validate against the schema: {0}")]
    Invalid(String),
    #[error("policy test file {path}: {reason}")]
    Test { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Issue,
    Exchange,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Exchange => "exchange",
        }
    }
}

/// What the request looks like to policy.
#[derive(Debug, Clone)]
pub struct PolicyContext<'a> {
    pub scopes: &'a ScopeSet,
    pub subject_partner: &'a str,
    pub subject_issuer: &'a str,
    pub subject_region: &'a str,
    pub consent: bool,
    pub delegation_depth: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub allowed: bool,
    /// The policies that determined the outcome (permits for allow, forbids for deny).
    pub determining: Vec<String>,
    pub policy_set_hash: String,
}

impl PolicyDecision {
    /// The audit record of a request this decision governed.
    pub fn audited(self, details: crate::audit::EventDetails) -> crate::audit::EventDetails {
        crate::audit::EventDetails {
            policies: self.determining,
            policy_set_hash: Some(self.policy_set_hash),
            ..details
        }
    }
}

/// Distinct requests whose decisions a loaded set remembers; beyond it the oldest goes first.
/// Decisions live as long as the set that made them.
const DECISION_CACHE_ENTRIES: usize = 4096;

struct Loaded {
    schema: Schema,
    policies: PolicySet,
    hash: String,
    decisions: crate::cache::Cache<String, (bool, Vec<String>)>,
}

pub struct PolicyEngine {
    dir: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

impl PolicyEngine {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Ok(Self {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(load(dir)?)),
        })
    }

    /// Loads the directory again; on any error the running set stays and the error is
    /// returned. Returns the new policy-set hash.
    pub fn reload(&self) -> Result<String, PolicyError> {
        let loaded = load(&self.dir)?;
        let hash = loaded.hash.clone();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(hash)
    }

    pub fn hash(&self) -> String {
        self.loaded().hash.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn decide(
        &self,
        action: Action,
        client: &Client,
        audience: &Audience,
        context: &PolicyContext<'_>,
    ) -> PolicyDecision {
        let loaded = self.loaded();
        // A decision is a pure function of these inputs and the loaded set, so it is cached
        // with the set; changed attributes make a different key.
        let key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            action.name(),
            client.id,
            client.partner.as_str(),
            client.partner_region,
            audience.id,
            audience.region,
            audience.kind,
            audience.cross_region_allowed,
            context.scopes,
            context.subject_partner,
            context.subject_issuer,
            context.subject_region,
            context.consent,
            context.delegation_depth,
        );
        let decided = match loaded.decisions.get(&key) {
            Some(decided) => Ok(decided),
            None => {
                let decided = evaluate_request(&loaded, action, client, audience, context);
                if let Ok(decided) = &decided {
                    loaded.decisions.insert(key, decided.clone());
                }
                decided
            }
        };
        match decided {
            Ok((allowed, determining)) => PolicyDecision {
                allowed,
                determining,
                policy_set_hash: loaded.hash.clone(),
            },
            Err(error) => {
                tracing::error!(%error, "policy evaluation failed; denying");
                PolicyDecision {
                    allowed: false,
                    determining: Vec::new(),
                    policy_set_hash: loaded.hash.clone(),
                }
            }
        }
    }

    /// Runs `policies/tests/*.json`; returns the names of failed cases.
    pub fn run_tests(&self) -> Result<(usize, Vec<String>), PolicyError> {
        let loaded = self.loaded();
        let mut files = policy_files(&self.dir.join("tests"), "json")?;
        files.sort();
        let mut total = 0;
        let mut failed = Vec::new();
        for path in files {
            let test_error = |reason: String| PolicyError::Test {
                path: path.clone(),
                reason,
            };
            let text = read(&path)?;
            let suite: TestSuite =
                serde_json::from_str(&text).map_err(|error| test_error(error.to_string()))?;
            for case in suite.cases {
                total += 1;
                let outcome = evaluate(
                    &loaded,
                    &suite.entities,
                    &case.principal,
                    &case.action,
                    &case.resource,
                    case.context,
                )
                .map_err(test_error)?;
                let expected = case.expect == "allow";
                if outcome.0 != expected {
                    failed.push(format!(
                        "{}: {}: expected {}, got {} (determined by {:?})",
                        path.display(),
                        case.name,
                        case.expect,
                        if outcome.0 { "allow" } else { "deny" },
                        outcome.1
                    ));
                }
            }
        }
        Ok((total, failed))
    }
}

#[derive(Deserialize)]
struct TestSuite {
    entities: Value,
    cases: Vec<TestCase>,
}

#[derive(Deserialize)]
struct TestCase {
    name: String,
    principal: String,
    action: String,
    resource: String,
    context: Value,
    expect: String,
}

/// The hot path: entities and context built directly (the policies were validated against the
/// schema when loaded; the policy tests exercise the same shapes through the schema).
fn evaluate_request(
    loaded: &Loaded,
    action: Action,
    client: &Client,
    audience: &Audience,
    context: &PolicyContext<'_>,
) -> Result<(bool, Vec<String>), String> {
    let text = |value: &str| RestrictedExpression::new_string(value.to_owned());
    let partner = uid("Partner", client.partner.as_str())?;
    let principal = uid("Client", client.id.as_str())?;
    let resource = uid("Audience", audience.id.as_str())?;
    let entity =
        |uid: EntityUid, attrs: Vec<(&str, RestrictedExpression)>, parents: Vec<EntityUid>| {
            Entity::new(
                uid,
                attrs
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect::<HashMap<_, _>>(),
                parents.into_iter().collect::<HashSet<_>>(),
            )
            .map_err(|error| error.to_string())
        };
    let entities = Entities::from_entities(
        [
            entity(
                partner.clone(),
                vec![("region", text(&client.partner_region))],
                Vec::new(),
            )?,
            entity(
                principal.clone(),
                vec![
                    ("partner", text(client.partner.as_str())),
                    ("region", text(&client.partner_region)),
                ],
                vec![partner],
            )?,
            entity(
                resource.clone(),
                vec![
                    ("region", text(&audience.region)),
                    ("kind", text(&audience.kind)),
                    (
                        "cross_region_allowed",
                        RestrictedExpression::new_bool(audience.cross_region_allowed),
                    ),
                ],
                Vec::new(),
            )?,
        ],
        None,
    )
    .map_err(|error| error.to_string())?;
    let context = Context::from_pairs([
        (
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                context
                    .scopes
                    .to_vec()
                    .into_iter()
                    .map(RestrictedExpression::new_string),
            ),
        ),
        ("subject_partner".to_owned(), text(context.subject_partner)),
        ("subject_issuer".to_owned(), text(context.subject_issuer)),
        ("subject_region".to_owned(), text(context.subject_region)),
        (
            "consent".to_owned(),
            RestrictedExpression::new_bool(context.consent),
        ),
        (
            "delegation_depth".to_owned(),
            RestrictedExpression::new_long(context.delegation_depth),
        ),
    ])
    .map_err(|error| error.to_string())?;
    let request = Request::new(
        principal,
        uid("Action", action.name())?,
        resource,
        context,
        None,
    )
    .map_err(|error| error.to_string())?;
    authorize(loaded, &request, &entities)
}

fn authorize(
    loaded: &Loaded,
    request: &Request,
    entities: &Entities,
) -> Result<(bool, Vec<String>), String> {
    let response = Authorizer::new().is_authorized(request, &loaded.policies, entities);
    if let Some(error) = response.diagnostics().errors().next() {
        return Err(error.to_string());
    }
    let determining = response
        .diagnostics()
        .reason()
        .map(PolicyId::to_string)
        .collect();
    Ok((response.decision() == Decision::Allow, determining))
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let kind =
        EntityTypeName::from_str(&format!("Tessera::{kind}")).map_err(|error| error.to_string())?;
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

fn evaluate(
    loaded: &Loaded,
    entities: &Value,
    principal: &str,
    action: &str,
    resource: &str,
    context: Value,
) -> Result<(bool, Vec<String>), String> {
    let action = uid("Action", action)?;
    let entities = Entities::from_json_value(entities.clone(), Some(&loaded.schema))
        .map_err(|error| error.to_string())?;
    let context = Context::from_json_value(context, Some((&loaded.schema, &action)))
        .map_err(|error| error.to_string())?;
    let request = Request::new(
        uid("Client", principal)?,
        action,
        uid("Audience", resource)?,
        context,
        Some(&loaded.schema),
    )
    .map_err(|error| error.to_string())?;
    authorize(loaded, &request, &entities)
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

fn policy_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|error| PolicyError::Read {
        path: dir.to_owned(),
        reason: error.to_string(),
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect())
}

fn load(dir: &Path) -> Result<Loaded, PolicyError> {
    let schema_path = dir.join("schema.cedarschema");
    let schema_text = read(&schema_path)?;
    let (schema, _warnings) =
        Schema::from_cedarschema_str(&schema_text).map_err(|error| PolicyError::Schema {
            path: schema_path.clone(),
            reason: error.to_string(),
        })?;
    let mut files = policy_files(dir, "cedar")?;
    files.sort();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    digest.update(schema_text.as_bytes());
    let mut policies = PolicySet::new();
    for path in &files {
        let text = read(path)?;
        digest.update(
            path.file_name()
                .map(|name| name.as_encoded_bytes())
                .unwrap_or_default(),
        );
        digest.update(text.as_bytes());
        let parsed = PolicySet::from_str(&text).map_err(|error| PolicyError::Parse {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        for policy in parsed.policies() {
            let id = policy
                .annotation("id")
                .ok_or_else(|| PolicyError::MissingId { path: path.clone() })?;
            policies
                .add(policy.new_id(PolicyId::new(id)))
                .map_err(|_| PolicyError::MissingId { path: path.clone() })?;
        }
    }
    let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    if !validation.validation_passed() {
        let errors: Vec<String> = validation
            .validation_errors()
            .map(ToString::to_string)
            .collect();
        return Err(PolicyError::Invalid(errors.join("; ")));
    }
    let hash = digest
        .finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Loaded {
        schema,
        policies,
        hash,
        decisions: crate::cache::Cache::new(DECISION_CACHE_ENTRIES, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    #[test]
    fn the_shipped_policies_validate_and_pass_their_tests() {
        let engine = PolicyEngine::load(&shipped()).unwrap();
        let (total, failed) = engine.run_tests().unwrap();
        assert!(total >= 10);
        assert!(failed.is_empty(), "{failed:#?}");
        assert_eq!(engine.hash().len(), 64);
    }

    #[test]
    fn an_invalid_set_is_refused_and_the_running_set_stays() {
        let dir = std::env::temp_dir().join(format!("tessera-policy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("tests")).unwrap();
        for file in ["schema.cedarschema", "tessera.cedar"] {
            std::fs::copy(shipped().join(file), dir.join(file)).unwrap();
        }
        let engine = PolicyEngine::load(&dir).unwrap();
        let before = engine.hash();
        std::fs::write(
            dir.join("broken.cedar"),
            "@id(\"typo\") permit (principal, action, resource) when { resource.regoin == \"eu\" };",
        )
        .unwrap();
        let error = engine.reload().unwrap_err();
        assert!(matches!(error, PolicyError::Invalid(_)), "{error}");
        assert_eq!(engine.hash(), before);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

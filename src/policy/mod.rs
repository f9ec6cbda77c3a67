//! Policy as code: the Cedar schema and policies in `policies/`, validated strictly against
//! the schema, decided on every issuance and exchange. Anything that goes wrong denies.
//! Reloading keeps the running set when the new one is invalid.

mod entities;
mod loading;
mod suite;

use entities::evaluate_request;
use loading::load;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cedar_policy::{PolicySet, Schema};

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
    /// Receiving an audience's upstream bank token.
    ObtainUpstream,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Exchange => "exchange",
            Self::ObtainUpstream => "obtain_upstream",
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
    /// Runs `policies/tests/*.json`; returns the number of cases and the failed ones.
    pub fn run_tests(&self) -> Result<(usize, Vec<String>), PolicyError> {
        suite::run(&self.loaded(), &self.dir)
    }

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

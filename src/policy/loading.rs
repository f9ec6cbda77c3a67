//! Reading and strictly validating the schema and policy files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::{DECISION_CACHE_ENTRIES, Loaded, PolicyError};

pub(super) fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

pub(super) fn policy_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, PolicyError> {
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

pub(super) fn load(dir: &Path) -> Result<Loaded, PolicyError> {
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

//! The policy test cases in `policies/tests/*.json`, run by `tessera policy test` and CI.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::entities::evaluate;
use super::loading::{policy_files, read};
use super::{Loaded, PolicyError};

/// Runs `policies/tests/*.json`; returns the number of cases and the failed ones.
pub fn run(loaded: &Loaded, dir: &Path) -> Result<(usize, Vec<String>), PolicyError> {
    let mut files = policy_files(&dir.join("tests"), "json")?;
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
                loaded,
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

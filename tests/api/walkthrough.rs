//! Issue 13 item 1: the walkthrough `tessera dev` prints works verbatim. The built binary runs
//! `dev` on a database of its own, a fresh dev PKI and a free port; every printed line then
//! runs, in order, in one bash shell, and each step must succeed with the outcome it shows.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{TestDatabase, scratch_dir};

/// A `tessera dev` process; stopped (and waited for) when dropped.
struct DevServer(std::process::Child);

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `tessera dev` and returns it with the walkthrough lines it printed.
fn start_dev(database_url: &str) -> (DevServer, Vec<String>) {
    let dir = scratch_dir().join(format!("walkthrough-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["dev", "--certs-dir"])
        .arg(dir.join("certs"))
        .arg("--kek-file")
        .arg(dir.join("dev-kek"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = DevServer(child);
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let header = line.starts_with("Walkthrough");
        banner.push(line);
        if header {
            break;
        }
    }
    assert!(
        banner
            .last()
            .is_some_and(|line| line.starts_with("Walkthrough")),
        "dev printed no walkthrough:\n{}",
        banner.join("\n")
    );
    let walkthrough: Vec<String> = lines
        .by_ref()
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.trim_start().to_owned())
        .collect();
    // Keep reading what dev prints, so it never writes to a closed or full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (server, walkthrough)
}

#[tokio::test]
async fn every_line_dev_prints_works_verbatim() {
    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let (server, lines) = tokio::task::spawn_blocking(move || start_dev(&url))
        .await
        .unwrap();
    let commands: Vec<&String> = lines.iter().filter(|line| !line.starts_with('#')).collect();
    assert!(commands.len() >= 12, "{lines:#?}");

    // Each command, then a marker that it succeeded; `set -e` stops at the first failure.
    let mut script = String::from("set -euo pipefail\n");
    for (step, line) in lines.iter().enumerate() {
        script.push_str(line);
        script.push('\n');
        if !line.starts_with('#') {
            script.push_str(&format!("echo '@@ step {step} ok'\n"));
        }
    }
    let url = db.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "script:\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        lines.join("\n")
    );
    assert!(output.status.success(), "{report}");
    for (step, line) in lines.iter().enumerate() {
        if !line.starts_with('#') {
            assert!(
                stdout.contains(&format!("@@ step {step} ok")),
                "step {step} did not succeed: {line}\n{report}"
            );
        }
    }

    // The four introspections, in order: the delegated and the settlement token active, then
    // both inactive after the broad token's revocation.
    let answers: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), 4, "{report}");
    let delegated = &answers[0];
    assert_eq!(delegated["active"], true, "{report}");
    assert_eq!(delegated["sub"], "trader-7", "{report}");
    assert_eq!(delegated["aud"], "https://ledger.tessera.test", "{report}");
    assert_eq!(delegated["scope"], "ledger:read", "{report}");
    assert_eq!(delegated["act"]["sub"], "partner-a-treasury", "{report}");
    assert_eq!(delegated["owner_partner"], "partner-b", "{report}");
    assert!(delegated["consent_id"].is_string(), "{report}");
    let settled = &answers[1];
    assert_eq!(settled["active"], true, "{report}");
    assert_eq!(
        settled["aud"], "https://settlement.tessera.test",
        "{report}"
    );
    assert_eq!(settled["scope"], "settlement:instruct", "{report}");
    assert_eq!(settled["client_id"], "partner-a-settlement", "{report}");
    assert_eq!(
        answers[2],
        serde_json::json!({ "active": false }),
        "{report}"
    );
    assert_eq!(
        answers[3],
        serde_json::json!({ "active": false }),
        "{report}"
    );
    assert!(stdout.contains("audit trail intact"), "{report}");
    drop(server);
}

/// Starting `dev` again re-applies its seed: that must publish no second trust-profile version
/// and record no second consent.
#[tokio::test]
async fn seeding_the_dev_agreements_twice_changes_nothing() {
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let seed = tessera::dev::seed::Seed::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seed/dev.toml"),
    )
    .unwrap();
    seed.apply(&pool).await.unwrap();
    let settings = crate::helpers::test_settings(&db.url);
    let signer = tessera::audit::AuditSigner::load(&pool, &settings.keys)
        .await
        .unwrap();
    let (audit, writer) = tessera::audit::AuditLog::start(
        pool.clone(),
        "test-seed".into(),
        8,
        signer,
        tessera::audit::CheckpointPolicy {
            every_records: 100,
            every: std::time::Duration::from_secs(60),
        },
        None,
    );
    for _ in 0..2 {
        seed.apply_agreements(&pool, &audit, &crate::helpers::pki().dir)
            .await
            .unwrap();
    }
    writer.finish().await;
    let (profiles, consents): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM trust_profiles WHERE partner_id = 'partner-b'),
                (SELECT count(*) FROM consents WHERE grantor = 'partner-b')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((profiles, consents), (1, 1));
    pool.close().await;
}
